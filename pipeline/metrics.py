"""GoRuntimeMetrics: Go runtime metrics from every goroutine transition, before any sampling.

The decoder calls the ``record_*`` methods with whole arrays (one call per batch each), so these
metrics count every event the decoder accepted, whatever the filter and sampler later drop.
Cumulative temporality, one series per process (pid) and attribute value:

| name | instrument | unit | attributes |
|---|---|---|---|
| ``go.goroutine.count`` | UpDownCounter (Sum, not monotonic) | ``{goroutine}`` | |
| ``go.goroutine.created`` | Counter | ``{goroutine}`` | ``code.function.name`` (start function) |
| ``go.goroutine.exited`` | Counter | ``{goroutine}`` | ``code.function.name`` |
| ``go.schedule.duration`` | exp. histogram | ``s`` | (runnable -> running) |
| ``go.goroutine.park.duration`` | exp. histogram | ``s`` | ``gotel.wait_reason`` (park -> ready) |
| ``go.goroutine.lifetime`` | exp. histogram | ``s`` | ``code.function.name`` (creation -> exit) |

``go.goroutine.count`` counts the goroutines gotel knows to be alive: created, found at attach
(EXISTING) or first seen through another event, minus exits. Lifetimes are recorded only for
goroutines whose creation was seen. For a process whose memory gotel reads, ``go.goroutine.count``
and ``go.schedule.duration`` are exported from the runtime's own values instead
(``pipeline/runtime_metrics.py``, passed to ``to_request`` as ``extra``): one owner per name.

Histograms are kept at a fixed fine scale (``base_scale``, 16 buckets per power of two, 1 ns to
~12 days) in one numpy row per series, bucketed vectorized (``log2`` then ``ceil``); at export each
series is downscaled just enough to fit ``max_buckets`` (the OpenTelemetry SDK's default of 160), as
the exponential histogram's merge rules allow. Series keys are numeric (start PC, wait reason
number); names are resolved per process only at export, through ``names``:

    names.function(pid, pc) -> str        # e.g. "main.worker"
    names.wait_reason(pid, reason) -> str # e.g. "chan receive" (numbering differs per Go version)

Thread-safety: the pipeline thread records; ``to_request`` may run on any other thread: it copies
the series under ``lock`` (held by every ``record_*`` for the length of one array update) and
resolves names and builds protobufs from the copy, so recording never waits on encoding.
"""

import copy
import threading
import time
from dataclasses import dataclass

import numpy as np
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb

from pipeline.goroutines import HashIndex, RowStore
from receiver.errors import ConfigError

_CUMULATIVE = pb.AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_NS_PER_S = 1e9


@dataclass(frozen=True)
class Config:
    base_scale: int = 4            # recording scale: 2**base_scale buckets per power of two
    max_buckets: int = 160         # per exported data point (the SDK's default)
    scope_name: str = "gotel"

    def validate(self, path="metrics"):
        problems = []
        if not 0 <= self.base_scale <= 8:
            problems.append(f"{path}::base_scale must be in 0..8")
        if self.max_buckets < 2:
            problems.append(f"{path}::max_buckets must be >= 2")
        return problems


class _Series:
    """Series keyed by (pid, attribute key), with per-series columns; vectorized lookup/insert."""

    def __init__(self, columns=None):
        self.store = RowStore({"pid": "<u8", "key": "<u8", **(columns or {})}, 64)
        self.index = HashIndex(self.store, "pid", "key", 128)

    def live(self):
        rows = self.store.live_rows()
        return rows, self.store["pid"][rows], self.store["key"][rows]

    def forget(self, pid):
        rows, pids, _ = self.live()
        gone = rows[pids == pid]
        self.index.delete(gone)
        return gone

    def __getitem__(self, name):
        return self.store[name]


class _Counter(_Series):
    def __init__(self):
        super().__init__({"value": "<i8"})

    def add(self, pid, key, delta=1):
        if len(pid):
            rows, inverse = self.index.intern_distinct(np.asarray(pid, np.uint64),
                                                       np.asarray(key, np.uint64))
            counts = np.bincount(inverse, minlength=rows.size)
            self.store["value"][rows] += delta * counts


class _ExpHistogram(_Series):
    """Exponential histograms, one numpy row of bucket counts per series."""

    def __init__(self, scale):
        super().__init__({"count": "<u8", "zero": "<u8", "sum": "<f8", "min": "<f8", "max": "<f8"})
        self.scale = scale
        per_octave = 1 << scale
        self.lo = -30 * per_octave          # 2**-30 s ~ 0.93 ns
        self.hi = 20 * per_octave           # 2**20 s ~ 12 days
        self.counts = np.zeros((self.store.capacity, self.hi - self.lo), np.uint64)

    def record(self, pid, key, values_ns):
        if len(values_ns) == 0:
            return
        urows, inv = self.index.intern_distinct(np.asarray(pid, np.uint64),
                                                np.asarray(key, np.uint64))
        if self.counts.shape[0] < self.store.capacity:
            grown = np.zeros((self.store.capacity, self.counts.shape[1]), np.uint64)
            grown[: self.counts.shape[0]] = self.counts
            self.counts = grown
        s = self.store
        x = np.asarray(values_ns, np.float64) / _NS_PER_S
        k = urows.size
        s["count"][urows] += np.bincount(inv, minlength=k).astype(np.uint64)
        s["sum"][urows] += np.bincount(inv, weights=x, minlength=k)
        if k == 1:
            lo, hi = x.min(keepdims=True), x.max(keepdims=True)
        else:
            order = np.argsort(inv, kind="stable")
            xs = x[order]
            starts = np.flatnonzero(np.r_[True, inv[order][1:] != inv[order][:-1]])
            lo, hi = np.minimum.reduceat(xs, starts), np.maximum.reduceat(xs, starts)
        fresh = s["count"][urows] == np.bincount(inv, minlength=k)
        s["min"][urows] = np.where(fresh, lo, np.minimum(s["min"][urows], lo))
        s["max"][urows] = np.maximum(s["max"][urows], hi)
        zero = x <= 0
        if zero.any():
            s["zero"][urows] += np.bincount(inv[zero], minlength=k).astype(np.uint64)
            inv, x = inv[~zero], x[~zero]
        # Bucket i holds (2**(i / 2**scale), 2**((i+1) / 2**scale)]: the OTLP convention.
        idx = np.ceil(np.log2(x) * (1 << self.scale)).astype(np.int64) - 1
        np.clip(idx, self.lo, self.hi - 1, out=idx)
        width = self.hi - self.lo
        counts = np.bincount(inv * width + (idx - self.lo), minlength=k * width)
        self.counts[urows] += counts.reshape(k, width).astype(np.uint64)

    def forget(self, pid):
        self.counts[super().forget(pid)] = 0

    def point(self, rows, max_buckets):
        """(scale, offset, bucket counts, count, zero, sum, min, max) of the merged rows."""
        s = self.store
        counts = self.counts[rows].sum(axis=0)
        nz = np.flatnonzero(counts)
        scale, offset, buckets = self.scale, 0, []
        if nz.size:
            lo, hi = nz[0] + self.lo, nz[-1] + self.lo
            k = 0
            while (hi >> k) - (lo >> k) + 1 > max_buckets:
                k += 1
            idx = (nz + self.lo) >> k
            offset = int(lo >> k)
            buckets = np.bincount(idx - offset, weights=counts[nz],
                                  minlength=int((hi >> k) - offset + 1)).astype(np.uint64)
            scale -= k
        return (scale, offset, buckets, int(s["count"][rows].sum()), int(s["zero"][rows].sum()),
                float(s["sum"][rows].sum()), float(s["min"][rows].min()),
                float(s["max"][rows].max()))


def _by_pid_and_name(item):
    (pid, name), _ = item
    return pid, name or ""


def _attrs(**kv):
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in kv.items()]


class _PlainNames:
    """Fallback when no symbolizer is given: hex PCs and wait reason numbers."""

    def function(self, pid, pc):
        return f"0x{pc:x}"

    def wait_reason(self, pid, reason):
        return str(reason)


class GoRuntimeMetrics:
    """Go runtime metrics, updated from arrays by the decoder; ``to_request`` encodes them."""

    def __init__(self, config=Config(), clock=time.time_ns):
        problems = config.validate()
        if problems:
            raise ConfigError(problems)
        self.config = config
        self.clock = clock
        self.start_ns = clock()
        self.live = _Counter()        # key 0
        self.created = _Counter()     # key: start pc
        self.exited = _Counter()
        self.schedule = _ExpHistogram(config.base_scale)   # key 0
        self.park = _ExpHistogram(config.base_scale)       # key: wait reason
        self.lifetime = _ExpHistogram(config.base_scale)   # key: start pc
        self.lock = threading.Lock()

    SERIES = ("live", "created", "exited", "schedule", "park", "lifetime")

    # -------------------------------------------------------------- recording (decoder)
    def record_new(self, pid, start_pc, created):
        """Goroutines gotel starts tracking; ``created``: their creation was seen (not EXISTING or
        first seen through another event)."""
        with self.lock:
            self.live.add(pid, np.zeros(len(pid), np.uint64), 1)
            self.created.add(pid[created], start_pc[created], 1)

    def record_exit(self, pid, start_pc, lifetime_ns, lifetime_known):
        k = np.asarray(lifetime_known, bool)
        with self.lock:
            self.live.add(pid, np.zeros(len(pid), np.uint64), -1)
            self.exited.add(pid, start_pc, 1)
            self.lifetime.record(pid[k], start_pc[k], lifetime_ns[k])

    def record_schedule(self, pid, latency_ns):
        with self.lock:
            self.schedule.record(pid, np.zeros(len(pid), np.uint64), latency_ns)

    def record_park(self, pid, wait_reason, blocked_ns):
        with self.lock:
            self.park.record(pid, wait_reason, blocked_ns)

    def forget(self, pid):
        """Drop every series of a process whose PID now names another process."""
        with self.lock:
            for name in self.SERIES:
                getattr(self, name).forget(pid)

    def frozen(self):
        """A copy of the current series, taken under the lock, to read without it."""
        clone = copy.copy(self)
        with self.lock:
            for name in self.SERIES:
                setattr(clone, name, copy.deepcopy(getattr(self, name)))
        clone.lock = threading.Lock()
        return clone

    # -------------------------------------------------------------- reading
    def goroutine_count(self, pid):
        rows = self.live.index.lookup(np.array([pid], np.uint64), np.zeros(1, np.uint64))
        return int(self.live["value"][rows[0]]) if rows[0] >= 0 else 0

    def snapshot(self, names=None):
        """Plain dicts of every series (names resolved), for tests, summaries and debugging."""
        names = names or _PlainNames()
        out = {}
        for metric, series, label in (("go.goroutine.count", self.live, None),
                                      ("go.goroutine.created", self.created, "function"),
                                      ("go.goroutine.exited", self.exited, "function")):
            d = out.setdefault(metric, {})
            rows, pids, keys = series.live()
            for r, p, k in zip(rows, pids.tolist(), keys.tolist()):
                name = names.function(p, k) if label else None
                d[(p, name)] = d.get((p, name), 0) + int(series["value"][r])
        for metric, hist, label in (("go.schedule.duration", self.schedule, None),
                                    ("go.goroutine.park.duration", self.park, "reason"),
                                    ("go.goroutine.lifetime", self.lifetime, "function")):
            d = out.setdefault(metric, {})
            for (p, name), rows in self._groups(hist, label, names).items():
                d[(p, name)] = {"count": int(hist["count"][rows].sum()),
                                "sum": float(hist["sum"][rows].sum())}
        return out

    @staticmethod
    def _groups(series, label, names):
        groups = {}
        rows, pids, keys = series.live()
        for r, p, k in zip(rows.tolist(), pids.tolist(), keys.tolist()):
            if label == "function":
                name = names.function(p, k)
            elif label == "reason":
                name = names.wait_reason(p, k)
            else:
                name = None
            groups.setdefault((p, name), []).append(r)
        return groups

    # -------------------------------------------------------------- OTLP
    def to_request(self, resource_for, names=None, now_ns=None, extra=None):
        """The current state as one ``ExportMetricsServiceRequest``, a ResourceMetrics per process.

        ``resource_for(pid)`` returns that process's ``Resource`` proto; ``names`` resolves
        (pid, pc) and (pid, reason) (see the module docstring). Series whose start PCs resolve to
        the same function name are merged. Safe from any thread (encodes a frozen copy). ``extra``:
        {pid: [Metric]} from another producer (the runtime's own metrics read from memory); each
        replaces this aggregator's metric of the same name for that process (one owner per name)."""
        return self.frozen()._to_request(resource_for, names, now_ns, extra)

    def _to_request(self, resource_for, names=None, now_ns=None, extra=None):
        names = names or _PlainNames()
        now = self.clock() if now_ns is None else now_ns
        start = self.start_ns
        per_pid = {}

        def metric(pid, name, unit, description):
            m = per_pid.setdefault(pid, {})
            if name not in m:
                m[name] = pb.Metric(name=name, unit=unit, description=description)
            return m[name]

        def sum_points(series, name, unit, description, monotonic, label):
            rows, pids, keys = series.live()
            merged = {}
            for r, p, k in zip(rows.tolist(), pids.tolist(), keys.tolist()):
                attr = names.function(p, k) if label else None
                merged[(p, attr)] = merged.get((p, attr), 0) + int(series["value"][r])
            for (p, attr), value in sorted(merged.items(), key=_by_pid_and_name):
                m = metric(p, name, unit, description)
                m.sum.aggregation_temporality = _CUMULATIVE
                m.sum.is_monotonic = monotonic
                m.sum.data_points.add(
                    start_time_unix_nano=start, time_unix_nano=now, as_int=value,
                    attributes=_attrs(**{"code.function.name": attr}) if label else [])

        def hist_points(hist, name, description, label, attr_key):
            for (p, attr), rows in sorted(self._groups(hist, label, names).items(),
                                          key=_by_pid_and_name):
                scale, offset, buckets, count, zero, total, lo, hi = hist.point(
                    np.array(rows), self.config.max_buckets)
                m = metric(p, name, "s", description)
                m.exponential_histogram.aggregation_temporality = _CUMULATIVE
                dp = m.exponential_histogram.data_points.add(
                    start_time_unix_nano=start, time_unix_nano=now, count=count, sum=total,
                    scale=scale, zero_count=zero, min=lo, max=hi,
                    attributes=_attrs(**{attr_key: attr}) if label else [])
                dp.positive.offset = offset
                dp.positive.bucket_counts.extend(int(c) for c in buckets)

        sum_points(self.live, "go.goroutine.count", "{goroutine}",
                   "Goroutines alive, as far as gotel has seen.", False, None)
        sum_points(self.created, "go.goroutine.created", "{goroutine}",
                   "Goroutines created, by start function.", True, "function")
        sum_points(self.exited, "go.goroutine.exited", "{goroutine}",
                   "Goroutines exited, by start function.", True, "function")
        hist_points(self.schedule, "go.schedule.duration",
                    "Time goroutines spent runnable before running.", None, None)
        hist_points(self.park, "go.goroutine.park.duration",
                    "Time goroutines spent parked before being readied, by wait reason.",
                    "reason", "gotel.wait_reason")
        hist_points(self.lifetime, "go.goroutine.lifetime",
                    "Goroutine lifetimes, creation to exit, by start function.",
                    "function", "code.function.name")

        for pid, produced in (extra or {}).items():
            for m in produced:
                per_pid.setdefault(pid, {})[m.name] = m
        request = ExportMetricsServiceRequest()
        for pid in sorted(per_pid):
            rm = request.resource_metrics.add()
            rm.resource.CopyFrom(resource_for(pid))
            sm = rm.scope_metrics.add()
            sm.scope.CopyFrom(InstrumentationScope(name=self.config.scope_name))
            sm.metrics.extend(per_pid[pid].values())
        return request


def create(config=Config(), clock=time.time_ns):
    return GoRuntimeMetrics(config, clock)
