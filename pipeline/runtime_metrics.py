"""RuntimeMetricsProducer: the Go runtime's own metrics, read from each target's memory
(``receiver.runtime_stats``), as OTLP metrics named per the OpenTelemetry semantic conventions for Go
(v1.44): one ``collect(pid, binary, start_ns) -> [Metric]`` per process and collection.

| name | instrument | unit | from |
|---|---|---|---|
| ``go.memory.used`` (``go.memory.type`` = stack, other) | UpDownCounter | By | /memory/classes/total - heap/released |
| ``go.memory.limit`` (only when a limit is set) | UpDownCounter | By | gcController.memoryLimit |
| ``go.memory.allocated`` | Counter | By | heapStats x size classes |
| ``go.memory.allocations`` | Counter | {allocation} | heapStats |
| ``go.memory.gc.goal`` | UpDownCounter | By | gcController (GOGC and memory-limit goals) |
| ``go.goroutine.count`` | UpDownCounter | {goroutine} | allglen - free - system (as runtime/metrics) |
| ``go.processor.limit`` | UpDownCounter | {thread} | runtime.gomaxprocs |
| ``go.config.gogc`` (absent with GOGC=off) | UpDownCounter | % | gcController.gcPercent |
| ``go.schedule.duration`` | Histogram (the runtime's buckets) | s | sched.timeToRun |
| opt-in ``go.memory.gc.cycles`` | Counter | {gc_cycle} | memstats.numgc |
| opt-in ``go.memory.gc.pause.duration`` | Histogram | s | sched.stwTotalTimeGC / memstats.gcPauseDist |
| opt-in ``go.cpu.time`` (``go.cpu.state`` = gc, scavenge, idle, user; Go 1.20+) | Counter | s | work.cpuStats |

One owner per name. With a ``goruntime`` (census) receiver in the service, this producer runs
there, on the census thread, for every process the census reads, and the ``goroutines`` receiver
exports none of ``NAMES`` (``GoroutinesReceiver.disown``). Without one, it runs in the
``goroutines`` receiver's ``collect()``: for a process it reads, its ``go.goroutine.count`` and
``go.schedule.duration`` replace the ones ``pipeline.metrics`` derives from events (``OWNED``); for
a process it cannot read (unknown layout, no permission) the event-derived ones stay.

Thread-safety: ``collect`` (the metrics thread) and ``forget`` (the poller thread, when a PID is
reused) take one lock. Cost: ~0.2 ms per process and
collection (a few preads of /proc/PID/mem), nothing in the traced process.
"""

import logging
import threading
from dataclasses import dataclass

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb

from receiver.errors import GotelError, TargetError
from receiver.runtime_stats import MAX_INT64, RuntimeStatsReader

log = logging.getLogger(__name__)
_CUMULATIVE = pb.AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
OPT_IN = ("go.memory.gc.cycles", "go.memory.gc.pause.duration", "go.cpu.time")
# Names this producer owns for the processes it reads (pipeline.metrics drops its own for them).
OWNED = ("go.goroutine.count", "go.schedule.duration")
# Every name it can export.
NAMES = ("go.memory.used", "go.memory.limit", "go.memory.allocated", "go.memory.allocations",
         "go.memory.gc.goal", "go.goroutine.count", "go.processor.limit", "go.config.gogc",
         "go.schedule.duration") + OPT_IN


@dataclass(frozen=True)
class Config:
    enabled: bool = True
    opt_in: tuple = ()          # any of OPT_IN

    def validate(self, path="runtime_metrics"):
        return [f"{path}::opt_in: unknown metric {n!r} (known: {', '.join(OPT_IN)})"
                for n in self.opt_in if n not in OPT_IN]


class RuntimeMetricsProducer:
    def __init__(self, config=Config(), clock=None):
        import time

        self.config = config
        self.clock = clock or time.time_ns
        self.readers = {}        # pid -> RuntimeStatsReader, or None when the process cannot be read
        self.lock = threading.Lock()   # guards readers

    def collect(self, pid, binary, start_ns=0):
        """OTLP Metrics of one process now; [] when it cannot be read (said once in the log)."""
        if not self.config.enabled:
            return []
        with self.lock:
            return self._collect(pid, binary, start_ns)

    def _collect(self, pid, binary, start_ns):
        if pid not in self.readers:
            try:
                self.readers[pid] = RuntimeStatsReader(binary, pid)
            except Exception as e:  # noqa: BLE001  (GotelError says why; anything else is a damaged binary)
                detail = str(e) if isinstance(e, GotelError) else f"{type(e).__name__}: {e}"
                log.warning("process %d: no runtime metrics from memory: %s", pid, detail)
                self.readers[pid] = None
        reader = self.readers[pid]
        if reader is None:
            return []
        try:
            stats = reader.read()
        except TargetError:
            self.readers.pop(pid, None)
            reader.close()
            return []
        except Exception as e:  # noqa: BLE001  (nothing read from another process may stop collection)
            log.warning("process %d: runtime metrics dropped: %s: %s", pid, type(e).__name__, e)
            self.readers[pid] = None      # not retried for this process: said once
            reader.close()
            return []
        if stats.rejected:
            log.debug("process %d: implausible runtime values left out: %s", pid, stats.rejected)
        return to_metrics(stats, start_ns, self.clock(), self.config.opt_in)

    def forget(self, pid):
        with self.lock:
            reader = self.readers.pop(pid, None)
        if reader is not None:
            reader.close()


def to_metrics(stats, start_ns, now_ns, opt_in=()):
    """[Metric] of a ``receiver.runtime_stats.RuntimeStats``; values that are None are left out."""
    out = []

    def number(name, unit, description, points, monotonic=None):
        points = [(v, attrs) for v, attrs in points if v is not None]
        if not points:
            return
        m = pb.Metric(name=name, unit=unit, description=description)
        m.sum.aggregation_temporality = _CUMULATIVE
        m.sum.is_monotonic = bool(monotonic)
        for value, attrs in points:
            m.sum.data_points.add(start_time_unix_nano=start_ns, time_unix_nano=now_ns, as_int=int(value),
                                  attributes=[KeyValue(key=k, value=AnyValue(string_value=v))
                                              for k, v in attrs.items()])
        out.append(m)

    def histogram(name, description, hist):
        if hist is None:
            return
        m = pb.Metric(name=name, unit="s", description=description)
        m.histogram.aggregation_temporality = _CUMULATIVE
        counts = hist.counts.tolist()
        m.histogram.data_points.add(start_time_unix_nano=start_ns, time_unix_nano=now_ns, count=sum(counts),
                                    explicit_bounds=hist.bounds[1:-1].tolist(), bucket_counts=counts)
        out.append(m)

    number("go.memory.used", "By", "Memory used by the Go runtime.",
           [(stats.memory_stack, {"go.memory.type": "stack"}), (stats.memory_other, {"go.memory.type": "other"})])
    if stats.memory_limit != MAX_INT64:
        number("go.memory.limit", "By", "Go runtime memory limit configured by the user, if a limit exists.",
               [(stats.memory_limit, {})])
    number("go.memory.allocated", "By", "Memory allocated to the heap by the application.",
           [(stats.allocated_bytes, {})], monotonic=True)
    number("go.memory.allocations", "{allocation}", "Count of allocations to the heap by the application.",
           [(stats.allocations, {})], monotonic=True)
    number("go.memory.gc.goal", "By", "Heap size target for the end of the GC cycle.", [(stats.heap_goal, {})])
    number("go.goroutine.count", "{goroutine}", "Count of live goroutines.", [(stats.goroutines, {})])
    number("go.processor.limit", "{thread}", "The number of OS threads that can execute user-level Go code "
           "simultaneously.", [(stats.gomaxprocs, {})])
    number("go.config.gogc", "%", "Heap size target percentage configured by the user, otherwise 100.",
           [(stats.gogc, {})])
    histogram("go.schedule.duration", "The time goroutines have spent in the scheduler in a runnable state "
              "before actually running (sampled by the runtime: 1 transition in 8).", stats.sched_latency)
    if "go.memory.gc.cycles" in opt_in:
        number("go.memory.gc.cycles", "{gc_cycle}", "Completed GC cycles.", [(stats.gc_cycles, {})],
               monotonic=True)
    if "go.memory.gc.pause.duration" in opt_in:
        histogram("go.memory.gc.pause.duration", "Stop-the-world pauses of the GC.", stats.gc_pauses)
    if "go.cpu.time" in opt_in and stats.cpu_ns:
        m = pb.Metric(name="go.cpu.time", unit="s", description="Estimated CPU time spent by the Go runtime "
                      "(as of the last GC: the runtime updates it at each GC).")
        m.sum.aggregation_temporality = _CUMULATIVE
        m.sum.is_monotonic = True
        for state, ns in stats.cpu_ns.items():
            m.sum.data_points.add(start_time_unix_nano=start_ns, time_unix_nano=now_ns, as_double=ns / 1e9,
                                  attributes=[KeyValue(key="go.cpu.state", value=AnyValue(string_value=state))])
        out.append(m)
    return out


def create(config=Config(), clock=None):
    return RuntimeMetricsProducer(config, clock)
