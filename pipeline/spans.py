"""The span record that moves between the decoder, filter, sampler, batcher and exporters.

One row is either a goroutine's span or one park interval of it. IDs are split into unsigned
64-bit halves so that sampling decisions and joins stay vectorized. Names and source locations are
not stored: exporters symbolize ``start_pc``/``create_pc`` per process (few distinct PCs, cached).
"""

import enum

import numpy as np


class SpanKind(enum.IntEnum):
    GOROUTINE = 0   # a goroutine's whole life (or a continuation of it in a new trace)
    PARK = 1        # one park: from park to running again


class SpanFlag(enum.IntFlag):
    ENDED_AT_SHUTDOWN = 1      # still alive when gotel stopped
    STARTED_BEFORE_ATTACH = 2  # existed before gotel attached: start time is the attach time
    PARENT_UNSEEN = 4          # creator's creation was not seen: root of a new trace
    CONTINUED = 8              # continuation of a long-lived goroutine in a new trace (linked)
    ANOMALY = 16               # kept by the sampler as an anomaly
    EXITED = 32                # the goroutine's exit was seen


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
        ("link_trace_hi", "<u8"),      # CONTINUED: the previous part of this goroutine
        ("link_trace_lo", "<u8"),
        ("link_span_id", "<u8"),
        ("sample_threshold", "<u8"),   # OTEP 235 rejection threshold (56 bits); 0 = all kept
        ("pid", "<u4"),
        ("n_parks", "<u4"),
        ("kind", "u1"),
        ("wait_reason", "u1"),
        ("flags", "<u2"),
    ]
)
