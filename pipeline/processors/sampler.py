"""AdaptiveSampler: keeps whole traces, at a probability that holds exported spans/s near a target.

Decisions are per trace and consistent (OTEP 235): a trace is kept when the randomness in its trace
ID (the low 56 bits) is at least the rejection threshold T, i.e. with probability 1 - T / 2**56. T
is fixed for a trace at the first of its spans this stage sees and remembered (16 bytes of key and
12 of decision, in a vectorized hash table) until the trace's last row (TRACE_END, set by the
decoder) or, as a backstop for rows that never arrive, ``decision_ttl_s`` after it was last seen. So
a kept trace is complete and a dropped trace leaves nothing behind, even when T moves while it is
live. Every kept row carries its trace's T in ``sample_threshold``; the encoder writes it to
tracestate as ``ot=th:<format_threshold(T)>``.

Rate control: the first batch, when it alone holds more than a window's target, sets the keep
probability from the rate its spans' end times show. Then every ``window_s`` (of the injected
clock; sooner, after ``EARLY_FRACTION`` of it, when the spans it kept already exceed its target)
the stage measures the spans/s it was offered, smooths it (``smoothing`` = weight of the newest
window) and sets the keep probability to (target - anomaly rate) / (offered rate - anomaly rate),
clamped to [min_probability, 1], then rounds T to ``threshold_digits`` hex digits (short
tracestate). Spans of traces already decided keep their old T, so the exported rate follows a load
change within about one trace lifetime plus one window.

Anomalies (``anomaly_park_s``, 1 s by default: a park at least that long, with its goroutine's
span when that is in the same batch, as it is for a goroutine still parked when tracing ends, a
leak suspect; ``anomaly_lifetime_s``, off by default: a goroutine span whose goroutine has lived at
least that long) are always exported, flagged ANOMALY. In a kept trace
that changes nothing. A dropped trace cannot be completed after the fact (its earlier rows are
gone), so an anomaly there is exported as a standalone root of the same trace: ``parent_span_id`` is
cleared, the original parent is kept as its link (``link_*``, when the row had no link), threshold 0
(kept with certainty). Such a trace holds only anomaly roots, so it still has no dangling parents.
With park_mode "events", an anomalous park event brings its goroutine span (same batch) and that
span's other park events along.

Cost: one vectorized hash lookup per batch plus an insert for new traces. Not thread-safe.
"""

import time
import dataclasses
from dataclasses import dataclass

import numpy as np

from pipeline.goroutines import HashIndex, RowStore, unique_pairs
from pipeline.ids import randomness
from pipeline.spans import SpanFlag, SpanKind, empty_spans
from pipeline.stage import Stage

_NS = 1_000_000_000


def threshold_for(probability, digits=14):
    """The OTEP 235 rejection threshold (56-bit int) for a keep probability, rounded to ``digits``
    hex digits of precision (rounded towards keeping more)."""
    p = min(1.0, max(0.0, float(probability)))
    t = int(round((1.0 - p) * (1 << 56)))
    step = 1 << (4 * (14 - digits))
    t = (t // step) * step
    return min(t, (1 << 56) - step)


def probability_of(threshold):
    return 1.0 - int(threshold) / (1 << 56)


TYPE = "sampler"
SIGNALS = ("traces",)


@dataclass(frozen=True)
class Config:
    target_spans_per_second: float = 5000.0
    window_s: float = dataclasses.field(default=1.0, metadata={"duration": "s"})
    smoothing: float = 0.5
    min_probability: float = 1e-4
    threshold_digits: int = 4
    # 0: off; long waits and leak suspects (still parked at the end) are always kept
    anomaly_park_s: float = dataclasses.field(default=1.0, metadata={"duration": "s"})
    # 0: off
    anomaly_lifetime_s: float = dataclasses.field(default=0.0, metadata={"duration": "s"})
    decision_ttl_s: float = dataclasses.field(default=60.0, metadata={"duration": "s"})
    max_traces: int = 1_000_000        # remembered decisions; the least recently seen go first

    def validate(self, path="sampler"):
        problems = []
        if not self.target_spans_per_second > 0:
            problems.append(f"{path}::target_spans_per_second must be > 0")
        if not self.window_s > 0:
            problems.append(f"{path}::window_s must be > 0")
        if not 0 < self.smoothing <= 1:
            problems.append(f"{path}::smoothing must be in (0, 1]")
        if not 0 < self.min_probability <= 1:
            problems.append(f"{path}::min_probability must be in (0, 1]")
        if not 1 <= self.threshold_digits <= 14:
            problems.append(f"{path}::threshold_digits must be in 1..14")
        if self.anomaly_park_s < 0 or self.anomaly_lifetime_s < 0:
            problems.append(f"{path}::anomaly_park_s and anomaly_lifetime_s must be >= 0")
        if not self.decision_ttl_s > 0:
            problems.append(f"{path}::decision_ttl_s must be > 0")
        if self.max_traces < 1:
            problems.append(f"{path}::max_traces must be >= 1")
        return problems


class AdaptiveSampler(Stage):
    """Per-trace consistent sampling with an adaptive threshold and always-kept anomalies."""

    COUNTERS = ("spans_kept", "spans_dropped", "anomalies_kept", "traces_decided",
                "decisions_expired")

    # A window closes early, after this share of it, once the spans it kept exceed the whole
    # window's target: at gotel's start (keep probability 1) a loaded target otherwise has every
    # span of a full window kept and encoded, ~3x the CPU the rest of the pipeline needs at
    # 1 M events/s (benchmarks row 4), which made the pipeline fall seconds behind the ring.
    EARLY_FRACTION = 0.05

    def __init__(self, config=Config(), next_stage=None, clock=time.monotonic):
        super().__init__(next_stage, config)
        self.clock = clock
        self.decisions = RowStore({"hi": "<u8", "lo": "<u8", "threshold": "<u8",
                                   "seen": "<f4"}, 4096)
        self.index = HashIndex(self.decisions, "hi", "lo", 8192)
        self.threshold = 0
        self.offered_rate = None     # smoothed spans/s offered
        self.anomaly_rate = 0.0
        self.exported_rate = 0.0     # spans/s exported in the last window
        self._t0 = None              # clock origin ("seen" is float32 seconds since it)
        self._window_start = None
        self._in = self._out = self._anomalies = 0
        self._park_ns = int(config.anomaly_park_s * _NS)
        self._life_ns = int(config.anomaly_lifetime_s * _NS)

    @property
    def probability(self):
        return probability_of(self.threshold)

    def _adjust(self, now, spans):
        c = self.config
        if self._window_start is None:
            self._t0 = self._window_start = now
            self._first_guess(spans)
            return
        elapsed = now - self._window_start
        if elapsed < c.window_s and not (
                elapsed >= c.window_s * self.EARLY_FRACTION
                and self._out > c.target_spans_per_second * c.window_s):
            return
        rate = self._in / elapsed
        anomalies = self._anomalies / elapsed
        a = c.smoothing
        if self.offered_rate is None:
            self.offered_rate = rate
        else:
            self.offered_rate = a * rate + (1 - a) * self.offered_rate
        self.anomaly_rate = a * anomalies + (1 - a) * self.anomaly_rate
        self.exported_rate = self._out / elapsed
        sampled = max(self.offered_rate - self.anomaly_rate, 1e-9)
        p = (c.target_spans_per_second - self.anomaly_rate) / sampled
        p = min(1.0, max(c.min_probability, p))
        self.threshold = threshold_for(p, c.threshold_digits)
        self._window_start = now
        self._in = self._out = self._anomalies = 0
        self._expire(now)

    def _first_guess(self, spans):
        """The first batch holds more spans than a window's target (gotel started on a busy
        target): the keep probability starts from the rate its spans' end times show, not at 1."""
        c = self.config
        if len(spans) <= c.target_spans_per_second * c.window_s:
            return
        ends = spans["end_ns"]
        seconds = max((int(ends.max()) - int(ends.min())) / _NS, c.window_s * self.EARLY_FRACTION)
        p = c.target_spans_per_second * seconds / len(spans)
        guess = threshold_for(min(1.0, max(c.min_probability, p)), c.threshold_digits)
        self.threshold = max(self.threshold, guess)     # never above a probability set before

    def _expire(self, now):
        d = self.decisions
        if d.live == 0:
            return
        rows = d.live_rows()
        age = (now - self._t0) - d["seen"][rows]
        old = age > self.config.decision_ttl_s
        excess = rows.size - np.count_nonzero(old) - self.config.max_traces
        if excess > 0:
            young = np.flatnonzero(~old)
            old[young[np.argsort(age[young])[::-1][:excess]]] = True
        if old.any():
            self.decisions_expired += int(np.count_nonzero(old))
            self.index.delete(rows[old])

    def _decide(self, hi, lo, now):
        """Each row's trace threshold: remembered, or the current one for traces first seen now."""
        rows = self.index.lookup(hi, lo)
        missing = rows < 0
        if missing.any():
            uh, ul, inverse = unique_pairs(hi[missing], lo[missing])
            new = self.index.insert(uh, ul)
            self.decisions["threshold"][new] = self.threshold
            rows[missing] = new[inverse]
            self.traces_decided += new.size
        self.decisions["seen"][rows] = now - self._t0
        return rows

    def process(self, spans):
        n = len(spans)
        if n == 0:
            return spans
        now = self.clock()
        self._adjust(now, spans)
        self._in += n
        hi, lo = spans["trace_hi"], spans["trace_lo"]
        rows = self._decide(hi, lo, now)
        threshold = self.decisions["threshold"][rows]
        kept = randomness(lo) >= threshold
        anomaly = self._anomalies_of(spans)
        out_mask = kept | anomaly
        out = spans[out_mask]
        if out.size:
            k = kept[out_mask]
            out["sample_threshold"] = np.where(k, threshold[out_mask], np.uint64(0))
            a = anomaly[out_mask]
            out["flags"][a] |= np.uint16(SpanFlag.ANOMALY)
            self._reroot(out, a & ~k)
        n_anom = int(np.count_nonzero(anomaly & ~kept))
        self._anomalies += int(np.count_nonzero(anomaly))
        self.anomalies_kept += n_anom
        self.spans_kept += out.size
        self.spans_dropped += n - out.size
        self._out += out.size
        ended = (spans["flags"] & SpanFlag.TRACE_END) != 0
        if ended.any():
            done = np.unique(rows[ended])
            self.index.delete(done)
        return out if out.size else empty_spans()

    def _anomalies_of(self, spans):
        anomaly = np.zeros(len(spans), bool)
        if self._park_ns:
            anomaly |= (spans["kind"] == SpanKind.PARK) & (
                spans["blocked_ns"] + spans["runnable_ns"] >= np.uint64(self._park_ns))
        if self._life_ns:
            born = spans["born_ns"]
            anomaly |= (spans["kind"] == SpanKind.GOROUTINE) & (born > 0) & (
                spans["end_ns"] - born >= np.uint64(self._life_ns))
        events = (spans["flags"] & SpanFlag.AS_EVENT) != 0
        parks = anomaly & (spans["kind"] == SpanKind.PARK)
        if parks.any():
            # A long park brings its goroutine span when that is in the batch (always for a park
            # event, and for a park still open when its goroutine's span ended: a leak suspect),
            # and that span its park events.
            owners = spans["parent_span_id"][parks]
            goroutine = spans["kind"] == SpanKind.GOROUTINE
            anomaly |= goroutine & np.isin(spans["span_id"], owners)
        if events.any() and anomaly.any():
            spans_kept = spans["span_id"][anomaly & ~events]
            anomaly |= events & np.isin(spans["parent_span_id"], spans_kept)
        return anomaly

    @staticmethod
    def _reroot(out, standalone):
        """Anomalies of dropped traces become roots; the parent they had becomes their link."""
        events = (out["flags"] & SpanFlag.AS_EVENT) != 0
        # A park whose goroutine span is exported with it keeps its parent.
        r = standalone & ~events & (out["parent_span_id"] != 0) & ~np.isin(
            out["parent_span_id"], out["span_id"][standalone])
        unlinked = r & (out["link_span_id"] == 0)
        out["link_trace_hi"][unlinked] = out["trace_hi"][unlinked]
        out["link_trace_lo"][unlinked] = out["trace_lo"][unlinked]
        out["link_span_id"][unlinked] = out["parent_span_id"][unlinked]
        out["parent_span_id"][r] = 0


def create(settings, config, next_stage):
    return AdaptiveSampler(config, next_stage)
