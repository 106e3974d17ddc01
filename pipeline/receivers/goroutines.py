"""receivers::goroutines: every goroutine status change of the traced Go processes, from eBPF
uprobes, as goroutine spans (traces) and Go runtime metrics (metrics).

    GoroutineReceiver (receiver/, poller thread) ─▶ ExitedProcesses ─▶ EventDecoder ─▶ [FunctionCalls] ─▶ next
                                                                          └─▶ GoRuntimeMetrics
                                                                              (read by collect())
    RuntimeMetricsProducer (pipeline/runtime_metrics.py): the runtime's own metrics, read from each
    live target's memory in collect(); they own go.goroutine.count and go.schedule.duration.

With ``functions::patterns``, ``pipeline.funcspans.FunctionCalls`` adds a span per call of the
probed Go functions (its own probes and ring buffer, read at each tick on the same thread).

The poller thread drives everything after it: each batch of events, and between batches ``tick()``,
where the goroutines of processes that exited are ended (a process that dies sends no EXIT for
them) and timers downstream fire. ``collect()`` is called from the service's metrics thread: it
encodes a frozen copy of the metrics, so the poller never waits on it. When a PID that a traced
process held names a new process, ``Processes`` forgets the old one: its goroutines are ended and
its metric series dropped here.
"""

import dataclasses
import time

from pipeline import decoder as span_decoder, funcspans, metrics as runtime_metrics, overhead
from pipeline import runtime_metrics as memory_metrics
from pipeline.stage import Stage
from receiver import receiver

TYPE = "goroutines"
SIGNALS = ("traces", "metrics")


@dataclasses.dataclass(frozen=True)
class Config(receiver.Config):
    """The receiver's targets and probes (``receiver.receiver.Config``), then: extra Resource
    attributes, how often metrics are collected, the decoder's span settings and the metrics'."""

    resource: dict[str, str] = dataclasses.field(default_factory=dict)
    collection_interval: float = dataclasses.field(default=10.0, metadata={"duration": "s"})
    spans: span_decoder.Config = dataclasses.field(default_factory=span_decoder.Config)
    metrics: runtime_metrics.Config = dataclasses.field(default_factory=runtime_metrics.Config)
    runtime_metrics: memory_metrics.Config = dataclasses.field(default_factory=memory_metrics.Config)
    functions: funcspans.Config = dataclasses.field(default_factory=funcspans.Config)

    def validate(self, path="receivers::goroutines"):
        problems = super().validate(path)
        if self.collection_interval <= 0:
            problems.append(f"{path}::collection_interval must be > 0")
        return problems

    def source_config(self):
        """The part that ``receiver.receiver.GoroutineReceiver`` takes."""
        names = {f.name for f in dataclasses.fields(receiver.Config)}
        return receiver.Config(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                  if f.name in names})


class ExitedProcesses(Stage):
    """Ends, at each tick, the goroutines of processes that exited: the receiver marks a process
    exited only after draining its last events, so its spans are complete. Its metric series stay
    (cumulative series of a process that ended, as the Collector keeps them)."""

    def __init__(self, events_decoder, processes):
        super().__init__(events_decoder)
        self.processes = processes
        self._ended = set()        # Process objects whose goroutines were ended

    def tick(self):
        for proc in self.processes:
            if not proc.alive and proc not in self._ended:
                self._ended.add(proc)
                self.next.emit(self.next.end_process(proc.pid))
        super().tick()


class GoroutinesReceiver:
    """The component: owns the event source, the decoder and the Go runtime metrics."""

    def __init__(self, settings, config, next_stage, launch_options=None):
        self.id = settings.id
        self.start_ns = time.time_ns()
        self.config = config
        self.processes = settings.processes
        self.metrics = runtime_metrics.create(config.metrics)
        self.memory_metrics = memory_metrics.create(config.runtime_metrics)
        self.disowned = frozenset()     # metric names another component exports for our processes
        self.functions = None            # funcspans.FunctionCalls, made at start() (it attaches)
        self._next = next_stage
        self.decoder = span_decoder.create(config.spans, next_stage, metrics=self.metrics)
        self.head = ExitedProcesses(self.decoder, self.processes)
        self.source = receiver.GoroutineReceiver(config.source_config(), self.head,
                                                 self.processes, launch_options)
        self.processes.on_forget(self._forget)

    def _forget(self, pid):
        # Called on the poller thread (a new process adopted under an old PID), before its events.
        self.decoder.emit(self.decoder.end_process(pid))
        self.metrics.forget(pid)
        self.memory_metrics.forget(pid)

    # the service's control path
    def start(self):
        """Attach to every target and start the poller; raises TargetError / ProbeError. Function
        probes go on first, so that a launched command's first calls are seen."""
        if self.config.functions.patterns:
            self.functions = funcspans.FunctionCalls(self.config.functions, self.config,
                                                     self.processes, self._next)
            self.functions.set_decoder(self.decoder)
            self.decoder.next = self.functions
        try:
            self.source.start()
        except BaseException:
            if self.functions is not None:
                self.functions.close()
            raise
        return self

    @property
    def extra_attributes(self):
        """span_id -> serialized attributes of function spans (arguments), for the encoder."""
        if self.functions is not None and self.functions.values is not None:
            return self.functions.take_arguments
        return None

    def wait(self, timeout=None):
        return self.source.wait(timeout)

    def finished(self):
        return self.source.finished.is_set()

    @property
    def command(self):
        return self.source.command

    def shutdown(self, timeout=5.0):
        """Drain the ring, end every goroutine (at this moment), flush the stages after it
        (idempotent)."""
        self.decoder.stop_at(time.time_ns())
        self.source.shutdown(timeout)
        if self.functions is not None:
            self.functions.close()

    def collect(self, resource_for, names):
        """The Go runtime metrics now, and each target's estimated probe overhead
        (``gotel.target.overhead``), as an ExportMetricsServiceRequest (any thread). The runtime's
        own metrics are read from each live target's memory here; for a target they cannot be read
        from, the event-derived go.goroutine.count and go.schedule.duration remain."""
        extra = {}
        for proc in list(self.processes):
            if proc.alive and not self.disowned:
                extra[proc.pid] = self.memory_metrics.collect(proc.pid, proc.binary, proc.start_time_ns)
            else:
                self.memory_metrics.forget(proc.pid)
        request = self.metrics.to_request(resource_for, names=names, extra=extra)
        if self.functions is not None:
            funcspans.add_to_request(request, self.functions.metrics(self.start_ns, time.time_ns()),
                                     resource_for)
        if self.disowned:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    keep = [m for m in sm.metrics if m.name not in self.disowned]
                    del sm.metrics[:]
                    sm.metrics.extend(keep)
        return overhead.add_to_request(request, self.source.levels, resource_for, time.time_ns())

    def disown(self, names):
        """Stop exporting these metric names: another component (the goruntime receiver, which
        censuses every process this one traces) exports them from the runtime's own memory."""
        self.disowned = frozenset(names)

    def counters(self):
        """{name: value} of what this receiver accepted and dropped (self-telemetry)."""
        out = {"accepted_events": self.source.events, "refused_events": self.source.refused,
               "failed_events": self.source.failed_events}
        out.update({f"decoder_{k}": v for k, v in self.decoder.counters().items()})
        if self.functions is not None:
            out.update(self.functions.counters())
        return out


def create(settings, config, next_stage, launch_options=None):
    return GoroutinesReceiver(settings, config, next_stage, launch_options)
