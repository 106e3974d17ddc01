"""The span record that moves between the decoder, filter, sampler, batcher and exporters.

One row is either a goroutine's span or one park interval of it. A goroutine span runs from the
goroutine's creation (or, for a CONTINUED part, from the moment its previous part was closed) to its
exit. Links: a CONTINUED span links to the goroutine's previous part, a SPLIT root to its creator's
span (``link_*``, zero when there is no link). A PARK row with AS_EVENT is not a span: the encoder
attaches it as a span event to the row whose ``span_id`` is its ``parent_span_id`` (always in the same
batch). ``blocked_ns + runnable_ns`` is a park's true length, ``end_ns - start_ns`` too (a park open
across a roll-over starts before its goroutine part). IDs are split into unsigned
64-bit halves so that sampling decisions and joins stay vectorized. Names and source locations are
not stored: exporters symbolize ``start_pc``/``create_pc`` per process (few distinct PCs, cached).
"""

import enum

import numpy as np


class SpanKind(enum.IntEnum):
    GOROUTINE = 0   # a goroutine's whole life (or a continuation of it in a new trace)
    PARK = 1        # one park: from park to running again
    FUNCTION = 2    # one call of a probed function (pipeline/funcspans.py), start_pc = its entry


class SpanFlag(enum.IntFlag):
    ENDED_AT_SHUTDOWN = 1      # still alive when gotel stopped
    STARTED_BEFORE_ATTACH = 2  # existed before gotel attached: start time is the attach time
    PARENT_UNSEEN = 4          # creator's creation was not seen: root of a new trace
    CONTINUED = 8              # continuation of a long-lived goroutine in a new trace (linked)
    ANOMALY = 16               # kept by the sampler as an anomaly
    EXITED = 32                # the goroutine's exit was seen
    SPLIT = 64                 # creator's trace was full: root of a new trace, linked to the creator
    AS_EVENT = 128             # PARK row to attach as a span event to its parent (park_mode "events")
    UNWOUND = 512              # FUNCTION: left without a RET (panic, Goexit) or open at goroutine exit
    TRACE_END = 256            # the trace's last goroutine part ended: no more rows of this trace
    EXIT_UNSEEN = 1024         # exited while untraced (between windows): ends when last known alive


SPAN_DTYPE = np.dtype(
    [
        ("trace_hi", "<u8"),
        ("trace_lo", "<u8"),
        ("span_id", "<u8"),
        ("parent_span_id", "<u8"),     # 0: root span
        ("start_ns", "<u8"),           # Unix ns
        ("end_ns", "<u8"),
        ("goid", "<u8"),
        ("parent_goid", "<u8"),
        ("start_pc", "<u8"),
        ("create_pc", "<u8"),
        ("blocked_ns", "<u8"),         # PARK: park -> ready
        ("runnable_ns", "<u8"),        # PARK: ready -> running
        ("link_trace_hi", "<u8"),      # CONTINUED: previous part of the goroutine; SPLIT: the creator
        ("link_trace_lo", "<u8"),
        ("link_span_id", "<u8"),
        ("sample_threshold", "<u8"),   # OTEP 235 rejection threshold (56 bits); 0 = all kept
        ("pid", "<u4"),
        ("n_parks", "<u4"),
        ("kind", "u1"),
        ("wait_reason", "u1"),
        ("flags", "<u2"),
        ("born_ns", "<u8"),            # the goroutine's creation (first sight if STARTED_BEFORE_ATTACH)
    ]
)


def empty_spans(n=0):
    """A zeroed span array of length n."""
    return np.zeros(n, dtype=SPAN_DTYPE)
