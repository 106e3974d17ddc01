"""receivers::goruntime: every ``collection_interval``, a census of each target's goroutines read
from its memory (no probe, no signal: ``receiver.census``), turned into metrics and leak log records.

Metrics (gotel's own names; OpenTelemetry's Go semantic conventions have no goroutine state):
- ``gotel.goroutine.count`` {goroutine}, gauge, by ``gotel.goroutine.state`` and ``gotel.wait_reason``;
- ``gotel.goroutine.group.count`` {goroutine} and ``gotel.goroutine.group.oldest_wait`` (s), gauges by
  group (``code.function.name`` = start function, ``gotel.goroutine.created_by``, state, wait reason);
  the ``max_groups`` biggest groups each, the rest folded into one series with
  ``gotel.goroutine.group`` = ``other`` (cardinality stays bounded whatever the program does);
- ``gotel.goroutine.leak_suspects`` and ``gotel.goroutine.leaked`` {goroutine}, gauges;
- ``gotel.census.duration`` (s, gauge) and ``gotel.census.dropped`` {goroutine} (counter, by reason).

Logs: one record per leak (``receiver.groups.LeakTracker``) per census, severity WARN (definite:
ERROR), body naming the group, attributes with its count history and ``code.stacktrace`` (the
group's stack in Go's format).

The metric producers are a list (``GoRuntimeReceiver.producers``): each is called with
(target, census, groups) and returns OTLP ``Metric`` messages. The Go runtime metrics (go.* semantic
conventions, ``pipeline.runtime_metrics``, read from the same process memory) are one of them unless
``runtime_metrics::enabled`` is false; they are then this receiver's alone
(``owned_metric_names``): the service has the goroutines receiver drop its own of those names.

Thread: one collector thread; ``next`` receives ``Payload``s (``consume(payload)``). A target that
exits is dropped from the census, logged once; nothing else stops collection.
"""

import dataclasses
import logging
import threading
import time

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

from pipeline import runtime_metrics as memory_metrics
from pipeline.exporters.base import Payload
from pipeline.exporters.encode import GOTEL_VERSION, Resources, key_value
from receiver import census as census_mod, groups as groups_mod, processes as processes_mod
from receiver.errors import GotelError

TYPE = "goruntime"
SIGNALS = ("metrics", "logs")
SCOPE = common_pb2.InstrumentationScope(name="gotel.goruntime", version=GOTEL_VERSION)
log = logging.getLogger("gotel.goruntime")


@dataclasses.dataclass(frozen=True)
class Config:
    """receivers::goruntime in gotel's YAML."""

    pids: tuple = ()
    collection_interval: float = dataclasses.field(default=10.0, metadata={"duration": "s"})
    stacks: bool = True
    max_depth: int = census_mod.DEFAULT_DEPTH
    max_groups: int = 20
    # how long a leak suspect's oldest member has been blocked, at least
    leak_threshold: float = dataclasses.field(default=60.0, metadata={"duration": "s"})
    leak_censuses: int = 3                 # censuses in a row its count must rise
    runtime_metrics: memory_metrics.Config = dataclasses.field(default_factory=memory_metrics.Config)

    def validate(self, path="receivers::goruntime"):
        problems = self.runtime_metrics.validate(f"{path}::runtime_metrics")
        for pid in self.pids:
            if not isinstance(pid, int) or pid <= 0:
                problems.append(f"{path}::pids: {pid!r} is not a process id")
        if not self.collection_interval > 0:
            problems.append(f"{path}::collection_interval must be > 0")
        if not 1 <= self.max_depth <= 1024:
            problems.append(f"{path}::max_depth must be 1 to 1024")
        if not 1 <= self.max_groups <= 1000:
            problems.append(f"{path}::max_groups must be 1 to 1000")
        if self.leak_threshold < 0 or self.leak_censuses < 1:
            problems.append(f"{path}: leak_threshold must be >= 0 and leak_censuses >= 1")
        return problems


def _gauge(name, unit, points, now, description=""):
    return metrics_pb2.Metric(name=name, unit=unit, description=description, gauge=metrics_pb2.Gauge(
        data_points=[metrics_pb2.NumberDataPoint(
            attributes=[key_value(k, v) for k, v in attrs.items()], time_unix_nano=now,
            **({"as_double": value} if isinstance(value, float) else {"as_int": int(value)}))
            for attrs, value in points]))


def _counter(name, unit, points, start, now):
    return metrics_pb2.Metric(name=name, unit=unit, sum=metrics_pb2.Sum(
        aggregation_temporality=metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE, is_monotonic=True,
        data_points=[metrics_pb2.NumberDataPoint(
            attributes=[key_value(k, v) for k, v in attrs.items()], as_int=int(value),
            start_time_unix_nano=start, time_unix_nano=now) for attrs, value in points]))


def goroutine_metrics(target, census, gs, max_groups):
    """The census's own metrics (see the module docstring) as OTLP Metric messages."""
    now = census.time_ns
    by_state = {}
    for g in gs:
        k = (g.state, g.wait_reason)
        by_state[k] = by_state.get(k, 0) + g.count
    out = [_gauge("gotel.goroutine.count", "{goroutine}", [
        ({"gotel.goroutine.state": s, **({"gotel.wait_reason": w} if w else {})}, n)
        for (s, w), n in sorted(by_state.items())], now, "Goroutines by state and wait reason")]
    counts, oldest = [], []
    top, rest = gs[:max_groups], gs[max_groups:]
    for g in top:
        attrs = {"code.function.name": g.start, "gotel.goroutine.created_by": g.created_by,
                 "gotel.goroutine.state": g.state}
        if g.wait_reason:
            attrs["gotel.wait_reason"] = g.wait_reason
        counts.append((attrs, g.count))
        oldest.append((attrs, g.oldest_wait_ns / 1e9))
    if rest:
        attrs = {"gotel.goroutine.group": "other"}
        counts.append((attrs, sum(g.count for g in rest)))
        oldest.append((attrs, max(g.oldest_wait_ns for g in rest) / 1e9))
    out.append(_gauge("gotel.goroutine.group.count", "{goroutine}", counts, now,
                      "Goroutines by group (start function, creation site, state, wait reason)"))
    out.append(_gauge("gotel.goroutine.group.oldest_wait", "s", oldest, now,
                      "Longest wait in the group (g.waitsince: right to within one GC cycle)"))
    out.append(_gauge("gotel.census.duration", "s", [({}, float(census.duration_s))], now))
    out.append(_counter("gotel.census.dropped", "{goroutine}",
                        [({"reason": k}, v) for k, v in sorted(target.dropped.items())],
                        target.started_ns, now))
    return out


def format_stack(stack):
    return "\n".join(f"{f}(...)\n\t{file}:{line}" for f, file, line in stack)


def leak_records(leaks, now):
    out = []
    for leak in leaks:
        g = leak.group
        kind = "definite goroutine leak" if leak.definite else "goroutine leak suspect"
        body = (f"{kind}: {g.count} goroutines started by {g.start}, created by {g.created_by}, "
                f"{g.wait_reason or g.state} for at least {g.oldest_wait_ns / 1e9:.0f} s "
                f"(example goroutine {g.example_goid})")
        attrs = {"gotel.goroutine.leak": "definite" if leak.definite else "suspect",
                 "code.function.name": g.start, "gotel.goroutine.created_by": g.created_by,
                 "gotel.wait_reason": g.wait_reason, "gotel.goroutine.count": g.count,
                 "gotel.goroutine.count_history": list(leak.history),
                 "gotel.goroutine.oldest_wait_s": g.oldest_wait_ns / 1e9,
                 "gotel.goroutine.id": g.example_goid, "code.stacktrace": format_stack(g.stack)}
        out.append(logs_pb2.LogRecord(
            time_unix_nano=now, observed_time_unix_nano=now,
            severity_number=logs_pb2.SEVERITY_NUMBER_ERROR if leak.definite else logs_pb2.SEVERITY_NUMBER_WARN,
            severity_text="ERROR" if leak.definite else "WARN",
            body=common_pb2.AnyValue(string_value=body),
            attributes=[key_value(k, v) for k, v in attrs.items()]))
    return out


class _Target:
    def __init__(self, pid, config):
        from receiver.binary import GoBinary

        self.pid = pid
        self.binary = GoBinary.open(pid)
        self.process = processes_mod.Process.found(pid, self.binary, None)
        self.reader = census_mod.CensusReader(self.binary, pid)
        self.tracker = groups_mod.LeakTracker(config.leak_threshold, config.leak_censuses)
        self.dropped = {"unreadable": 0, "inconsistent": 0, "moved": 0}
        self.started_ns = time.time_ns()
        self.last_groups = []
        self.last_leaks = []


class GoRuntimeReceiver:
    """The goruntime receiver (see the module docstring)."""

    def __init__(self, settings, config, next_stage):
        problems = config.validate()
        if problems:
            from receiver.errors import ConfigError

            raise ConfigError(problems)
        self.id = getattr(settings, "id", TYPE)
        self.config = config
        self.next = next_stage
        self.processes = getattr(settings, "processes", None)   # receiver.processes.Processes
        self.producers = [self._goroutine_metrics]
        self.memory_metrics = memory_metrics.create(config.runtime_metrics)
        self.owned_metric_names = ()
        if config.runtime_metrics.enabled:
            self.producers.append(self._runtime_metrics)
            self.owned_metric_names = memory_metrics.NAMES
        self.targets = {}
        self.censuses = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = None
        self.resources = Resources(self._describe)

    def _describe(self, pid):
        """The process's attributes from the one owner of process facts when it traces this pid,
        else from the facts this receiver found itself."""
        if self.processes is not None and pid in self.processes:
            return self.processes.describe(pid)
        t = self.targets.get(pid)
        return processes_mod.describe(pid, t.process if t else None,
                                      getattr(self.processes, "host_name", "") or _host())

    def _goroutine_metrics(self, target, census, gs):
        return goroutine_metrics(target, census, gs, self.config.max_groups)

    def _runtime_metrics(self, target, census, gs):
        return self.memory_metrics.collect(target.pid, target.binary, target.started_ns)

    def pids(self):
        found = list(self.config.pids)
        if self.processes is not None:
            found += [p.pid for p in self.processes.alive()]
        return sorted(set(found))

    def start(self):
        for pid in self.pids():
            self._target(pid)   # TargetError for a bad pid surfaces here, before anything runs
        self._thread = threading.Thread(target=self._loop, name="gotel-goruntime", daemon=True)
        self._thread.start()
        return self

    def _target(self, pid):
        t = self.targets.get(pid)
        if t is None:
            t = self.targets[pid] = _Target(pid, self.config)
        return t

    def _loop(self):
        while not self._stop.is_set():
            start = time.monotonic()
            self.collect()
            self._stop.wait(max(0.0, self.config.collection_interval - (time.monotonic() - start)))

    def collect(self):
        """One census of every target; hands the metrics and leak logs to ``next``. Returns the
        payloads."""
        resource_metrics, resource_logs = [], []
        for pid in self.pids():
            try:
                t = self._target(pid)
                census = t.reader.read(stacks=self.config.stacks, max_depth=self.config.max_depth)
            except GotelError as e:
                self.failures += 1
                self.memory_metrics.forget(pid)
                if self.targets.pop(pid, None) is not None:
                    log.warning("goruntime: process %d: %s; no more censuses of it", pid, e)
                continue
            self.censuses += 1
            for k, v in census.dropped.items():
                t.dropped[k] += v
            gs = groups_mod.groups(census, t.binary)
            leaks = t.tracker.update(gs)
            t.last_groups, t.last_leaks = gs, leaks
            metrics = []
            for produce in self.producers:
                metrics += produce(t, census, gs)
            suspects = sum(lk.group.count for lk in leaks if not lk.definite)
            definite = sum(lk.group.leaked for lk in leaks if lk.definite)
            metrics.append(_gauge("gotel.goroutine.leak_suspects", "{goroutine}", [({}, suspects)],
                                  census.time_ns))
            metrics.append(_gauge("gotel.goroutine.leaked", "{goroutine}", [({}, definite)], census.time_ns))
            resource = self.resources.resource_for(pid)
            resource_metrics.append(metrics_pb2.ResourceMetrics(resource=resource, scope_metrics=[
                metrics_pb2.ScopeMetrics(scope=SCOPE, metrics=metrics)]))
            records = leak_records(leaks, census.time_ns)
            if records:
                resource_logs.append(logs_pb2.ResourceLogs(resource=resource, scope_logs=[
                    logs_pb2.ScopeLogs(scope=SCOPE, log_records=records)]))
        payloads = []
        if resource_metrics:
            payloads.append(Payload.of("metrics", metrics_service_pb2.ExportMetricsServiceRequest(
                resource_metrics=resource_metrics)))
        if resource_logs:
            payloads.append(Payload.of("logs", logs_service_pb2.ExportLogsServiceRequest(
                resource_logs=resource_logs)))
        for p in payloads:
            try:
                self.next.consume(p)
            except Exception:  # noqa: BLE001  (a failing consumer never stops the census)
                log.exception("goruntime: the next consumer failed on a %s payload", p.signal)
        return payloads

    def shutdown(self, timeout=5.0):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def summary_lines(self):
        """Leaks and the biggest groups of the last census, for the end-of-run summary."""
        lines = []
        for pid, t in sorted(self.targets.items()):
            shown = [g for g in t.last_groups if not g.system][:3]
            for g in shown:
                age = f", oldest {g.oldest_wait_ns / 1e9:.0f} s" if g.oldest_wait_ns else ""
                lines.append(f"    pid {pid}: {g.count:>6}  {g.title()}{age}")
            for lk in t.last_leaks:
                kind = "LEAK" if lk.definite else "leak suspect"
                lines.append(f"    {kind} pid {pid}: {lk.group.title()} x{lk.group.count} "
                             f"(counts {list(lk.history)})")
        return lines


def _host():
    import socket

    return socket.gethostname()


def create(settings, config, next_stage):
    return GoRuntimeReceiver(settings, config, next_stage)
