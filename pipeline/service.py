"""Service: builds and runs gotel's pipelines from a validated Config, like the Collector's service.

    GoroutineReceiver ─▶ decoder ─▶ SummaryTap ─┬─▶ [filter ─▶ sampler ─▶ batch] ─▶ TraceFanout ─▶ exporters
       (poller thread)   (+ Go runtime metrics)  └─▶ ... one chain per traces pipeline
    ticker thread: batch timers, metrics every collection_interval ─▶ metrics pipelines' exporters

This module is the one place that knows the other parts' APIs (receiver, decoder, metrics, filter,
sampler): when one of them changes, only the adapters here change. The receiver's poller thread
drives the pipeline; a ticker thread fires batch timers and metric collections; both hold
``self.lock``, so stages stay single-threaded. Exporters own their worker threads.

Self-telemetry uses the Collector's names (``otelcol_receiver_accepted_spans``,
``otelcol_exporter_sent_spans``, ``otelcol_exporter_queue_size``, ...), exported with the metrics
under a Resource whose ``service.name`` is ``gotel``, unless ``service::telemetry::metrics::level``
is ``none``.
"""

import dataclasses
import functools
import importlib
import logging
import os
import re
import socket
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

from pipeline import batcher as batcher_mod
from pipeline import decoder as decoder_mod
from pipeline import metrics as metrics_mod
from pipeline import encode
from pipeline.exporters.base import Payload, RateLimitedLog
from pipeline.stage import Stage
from pipeline.summary import Summary, SummaryTap

log = logging.getLogger("gotel.service")

EXPORTER_MODULES = {
    "otlp_grpc": "pipeline.exporters.otlp_grpc",
    "file": "pipeline.exporters.file",
    "debug": "pipeline.exporters.debug",
}
PROCESSOR_MODULES = {
    "filter": "pipeline.filter",
    "sampler": "pipeline.sampler",
    "batch": "pipeline.batcher",
}


# --- the receiver's configuration ---------------------------------------------------------------
@functools.cache
def receiver_config_class():
    """receivers::goroutines: the receiver's own Config, plus the decoder's (``spans``), the Go
    runtime metrics' (``metrics``) and extra Resource attributes (``resource``), built from those
    modules' Config dataclasses so that the schema follows them."""
    from receiver import receiver as receiver_mod

    extra = [("resource", dict[str, str], dataclasses.field(default_factory=dict)),
             ("collection_interval", float, dataclasses.field(default=10.0,
                                                              metadata={"duration": "s"}))]
    for key, module in (("spans", "pipeline.decoder"), ("metrics", "pipeline.metrics")):
        cls = importlib.import_module(module).Config
        extra.append((key, cls, dataclasses.field(default_factory=cls)))
    return dataclasses.make_dataclass("ReceiverConfig", extra, bases=(receiver_mod.Config,),
                                      frozen=True)


def receiver_part(config):
    """The receiver.receiver.Config inside a ReceiverConfig."""
    from receiver import receiver as receiver_mod

    names = {f.name for f in dataclasses.fields(receiver_mod.Config)}
    return receiver_mod.Config(**{k: v for k, v in dataclasses.asdict(config).items() if k in names
                                  and not dataclasses.is_dataclass(getattr(config, k))})


def __getattr__(name):
    if name == "ReceiverConfig":
        return receiver_config_class()
    raise AttributeError(name)


# --- names -------------------------------------------------------------------------------------
_GOWRAP = re.compile(r"\.gowrap\d+$")


def wrapped_function(binary, pc):
    """The function a compiler-made ``go`` statement wrapper calls, or None.

    Since Go 1.21 ``go f(x)`` starts ``pkg.caller.gowrapN``, a closure that calls ``f(x)``: the
    goroutine's start PC names the wrapper, not ``f``. The wrapper's first direct call outside the
    runtime (its prologue calls ``runtime.morestack*``) is ``f``. amd64 only (as gotel); None when
    the code cannot be read or holds no such call (``f`` was inlined into the wrapper).
    """
    try:
        import capstone

        tab = binary.pclntab
        i = int(tab.find(np.array([pc], dtype=np.uint64))[0])
        if i < 0:
            return None
        entry, end = int(tab.entries[i]), int(tab.entries[i + 1])
        code = binary.image.read(entry, min(end - entry, 4096))
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        targets = [int(insn.op_str, 16) for insn in md.disasm(code, entry)
                   if insn.mnemonic == "call" and insn.op_str.startswith("0x")]
        if not targets:
            return None
        names = binary.symbolizer().function_names(np.array(targets, dtype=np.uint64))
        return next((n for n in names.tolist() if n != "?" and not n.startswith("runtime.")), None)
    except Exception:  # noqa: BLE001  (a name is a nicety: never fail the spans for it)
        return None


# --- stages the service adds --------------------------------------------------------------------
class Locked(Stage):
    """The pipeline's entry: runs the next stage under a lock shared with the ticker thread, and
    contains failures. A batch a stage fails on is dropped and counted (``failed``), logged at a
    limited rate; the pipeline goes on with the next batch, as after start-up nothing may crash."""

    def __init__(self, next_stage, lock, rest=None, before=None):
        super().__init__(next_stage)
        self.lock = lock
        self.rest = rest          # shut down directly when the next stage fails to shut down
        self.before = before      # called with each batch, under the lock, before the next stage
        self.failed = 0
        self.log_limited = RateLimitedLog(log)

    def consume(self, batch):
        self.items_in += len(batch)
        with self.lock:
            try:
                if self.before is not None:
                    self.before(batch)
                self.next.consume(batch)
            except Exception as e:  # noqa: BLE001
                self.failed += len(batch)
                self.log_limited(logging.ERROR, "pipeline",
                                 "a batch of %d events was dropped: %s: %s", len(batch),
                                 type(e).__name__, e)

    def shutdown(self, timeout=5.0):
        with self.lock:
            try:
                self.next.shutdown(timeout)
            except Exception as e:  # noqa: BLE001
                log.error("flushing the pipeline at shutdown failed: %s: %s", type(e).__name__, e)
                if self.rest is not None:
                    self.rest.shutdown(timeout)


class Fork(Stage):
    """Hands every batch to several stages (one per traces pipeline)."""

    def __init__(self, stages):
        super().__init__(None)
        self.stages = list(stages)

    def start(self):
        for s in self.stages:
            s.start()

    def consume(self, batch):
        self.items_in += len(batch)
        for s in self.stages:
            s.consume(batch)

    def shutdown(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        for s in self.stages:
            s.shutdown(max(0.0, deadline - time.monotonic()))


class TraceFanout(Stage):
    """The end of a traces pipeline: encodes a span batch once, hands it to every exporter.

    Requests are cut under the batcher's byte cap, and their real size is fed back to the batcher.
    Exporters are shut down by the service (they may serve several pipelines), not here.
    """

    def __init__(self, encoder, exporters, batcher=None, max_bytes=None, watch=None):
        super().__init__(None)
        self.watch = watch        # called with each batch before encoding (process changes)
        self.encoder = encoder
        self.exporters = list(exporters)
        self.batcher = batcher
        self.max_bytes = max_bytes or batcher_mod.Config().send_batch_max_bytes
        self.requests = 0
        self.encode_errors = 0

    def consume(self, batch):
        self.items_in += len(batch)
        if self.watch is not None:
            self.watch(batch)
        try:
            chunks = self.encoder.encode_chunks(batch, self.max_bytes)
        except Exception:  # noqa: BLE001  (bad data is dropped and counted, never a crash)
            self.encode_errors += len(batch)
            log.exception("could not encode %d spans; dropped", len(batch))
            return
        for data, count in chunks:
            self.requests += 1
            self.items_out += count
            if self.batcher is not None:
                self.batcher.observe_size(count, len(data))
            payload = Payload("traces", data, count)
            for exporter in self.exporters:
                exporter.export(payload)

    def shutdown(self, timeout=5.0):
        pass


class Discard(Stage):
    """The end of the span path when no traces pipeline is configured."""

    def consume(self, batch):
        self.items_in += len(batch)


# --- self-telemetry -----------------------------------------------------------------------------
def _attrs(**kv):
    return [encode.key_value(k.replace("__", "."), v) for k, v in kv.items()]


def _sum_metric(name, unit, description, points, monotonic=True, start_ns=0, now_ns=0):
    return metrics_pb2.Metric(name=name, unit=unit, description=description, sum=metrics_pb2.Sum(
        aggregation_temporality=metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE,
        is_monotonic=monotonic,
        data_points=[metrics_pb2.NumberDataPoint(
            attributes=_attrs(**attrs), as_int=int(value), start_time_unix_nano=start_ns,
            time_unix_nano=now_ns) for attrs, value in points]))


def _gauge_metric(name, unit, description, points, now_ns=0):
    return metrics_pb2.Metric(name=name, unit=unit, description=description, gauge=metrics_pb2.Gauge(
        data_points=[metrics_pb2.NumberDataPoint(attributes=_attrs(**attrs), as_int=int(value),
                                                 time_unix_nano=now_ns) for attrs, value in points]))


# --- the service --------------------------------------------------------------------------------
class Service:
    """Builds every component from a validated Config (one receiver, as config.py ensures);
    ``start()``, ``wait()``, ``shutdown()``, ``summary()``."""

    TICK_S = 0.05

    def __init__(self, config, registry=None, host_name=None):
        from receiver import targets

        self.config = config
        self.registry = registry if registry is not None else targets.ProcessRegistry()
        self.lock = threading.RLock()
        self.host_name = host_name or socket.gethostname()
        self.start_ns = time.time_ns()
        self.receiver = None
        self.decoder = None
        self.metrics = None
        self.exporters = {}
        self.traces_exporters = set()
        self.metrics_exporters = set()
        self.batchers = []
        self.fanouts = []
        self.processors = []          # (pipeline id, component id, stage)
        self.tap = SummaryTap()
        self._processes = {}          # pid -> the registry's Process whose facts are cached
        self._retired = set()         # exited Processes whose goroutines were ended
        self._decoding = {}           # pid -> the Process the decoder's state of that pid is of
        self._stop = threading.Event()
        self._ticker = None
        self._shut = False
        self._next_collection = None
        self.collection_interval = 10.0
        self.build()

    # building
    def build(self):
        (self.receiver_id,) = {r for p in self.config.pipelines.values() for r in p.receivers}
        rc = self.config.receivers[self.receiver_id].config
        self.receiver_config = rc
        self.resources = encode.Resources(self.process_info, rc.resource,
                                          self.host_name)
        self.symbols = encode.Symbols(self.symbolize)
        self.encoder = encode.TraceEncoder(self.resources, self.symbols, self.wait_reasons)
        for pipeline in self.config.pipelines.values():
            for eid in pipeline.exporters:
                if eid not in self.exporters:
                    comp = self.config.exporters[eid]
                    module = importlib.import_module(EXPORTER_MODULES[comp.type])
                    self.exporters[eid] = module.create(comp.config, eid)
                (self.traces_exporters if pipeline.signal == "traces"
                 else self.metrics_exporters).add(eid)
        chains = [self._trace_chain(p) for p in self.config.pipelines_for("traces")]
        spans_head = chains[0] if len(chains) == 1 else Fork(chains) if chains else Discard()
        self.tap.next = spans_head
        self.metrics = self._make_metrics(rc)
        self.decoder = self._make_decoder(rc, self.tap, self.metrics)
        self.head = Locked(self.decoder, self.lock, rest=self.tap, before=self.sort_out_reused_pids)

    def _trace_chain(self, pipeline):
        """processors of one traces pipeline, in order, ending in a TraceFanout."""
        batcher = None
        for pid in pipeline.processors:
            if self.config.processors[pid].type == "batch":
                batcher = pid
        fanout = TraceFanout(self.encoder, [self.exporters[e] for e in pipeline.exporters],
                             watch=self.watch_processes)
        self.fanouts.append(fanout)
        stage = fanout
        for pid in reversed(pipeline.processors):
            comp = self.config.processors[pid]
            module = importlib.import_module(PROCESSOR_MODULES[comp.type])
            if comp.type == "filter":
                stage = module.create(comp.config, stage, names=self)
            else:
                stage = module.create(comp.config, stage)
            self.processors.append((pipeline.id, pid, stage))
            if pid == batcher:
                fanout.batcher = stage
                fanout.max_bytes = comp.config.send_batch_max_bytes
                self.batchers.append(stage)
        return stage

    def _make_metrics(self, rc):
        """The Go runtime metrics aggregator, fed by the decoder from every event."""
        self.collection_interval = float(rc.collection_interval)
        return metrics_mod.create(rc.metrics)

    def _make_decoder(self, rc, next_stage, metrics):
        return decoder_mod.create(rc.spans, next_stage, metrics=metrics)

    # adapters over the receiver's ProcessRegistry
    def _process(self, pid):
        """The Process whose spans are in the pipeline for pid: the one the decoder works on, which
        stays the old one until its spans are sent on when the PID is reused."""
        pid = int(pid)
        return self._decoding.get(pid) or self.registry.get(pid)

    def sort_out_reused_pids(self, batch):
        """Before the decoder sees a batch: for a PID now owned by a new process (the receiver
        registered it after the old one exited), end the old process's goroutines and send its
        spans on while they are still named from the old binary, then switch to the new one."""
        for pid in np.unique(batch["pid"]).tolist():
            proc = self.registry.get(pid)
            old = self._decoding.get(pid)
            if old is proc:
                continue
            if old is not None:
                if old not in self._retired:
                    self._retired.add(old)
                    self.decoder.emit(self.decoder.end_process(pid))
                for b in self.batchers:
                    b.flush()
                self.encoder.forget(pid)
                self.symbols.forget(pid)
            self._decoding[pid] = proc

    def process_info(self, pid):
        proc = self._process(pid)
        if proc is None:
            return None
        b = proc.binary
        args = ()
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            args = tuple(cmdline.decode(errors="replace").split("\0")[:-1])
        except OSError:
            if proc.target.kind == "command":
                args = tuple(proc.target.value)
        return encode.ProcessInfo(pid, proc.exe, b.go_version, b.module, b.info.module_version,
                                  b.build_settings, proc.start_time_ns, args)

    def symbolize(self, pid, pcs):
        proc = self._process(pid)
        if proc is None:
            return None
        # PCs are the process's addresses; the symbolizer knows the file's (they differ for PIE).
        file_pcs = np.asarray(pcs, dtype=np.uint64) - np.uint64(proc.pc_bias())
        frames = proc.binary.symbolizer().symbolize(file_pcs)
        out = []
        for pc, fn, file, line in zip(file_pcs.tolist(), frames.function.tolist(),
                                      frames.file.tolist(), frames.line.tolist()):
            if _GOWRAP.search(fn):
                fn = wrapped_function(proc.binary, pc) or fn
            out.append(("" if fn == "?" else fn, "" if file == "?" else file, int(line)))
        return out

    def watch_processes(self, batch):
        """Forget what is cached for a pid that now belongs to another process (pid reuse)."""
        for pid in np.unique(batch["pid"]).tolist():
            proc = self.registry.get(pid)
            known = self._processes.get(pid)
            if known is not proc:
                if known is not None:
                    self.encoder.forget(pid)
                self._processes[pid] = proc

    def wait_reasons(self, pid):
        proc = self._process(pid)
        return proc.binary.layout.wait_reasons if proc is not None else ()

    # running
    def start(self):
        """Start exporters, then the receiver (attaches; raises TargetError/ProbeError), then the
        ticker."""
        from receiver.receiver import GoroutineReceiver

        self.start_exporters()
        self.receiver = GoroutineReceiver(receiver_part(self.receiver_config), self.head,
                                          self.registry)
        try:
            self.receiver.start()
        except BaseException:
            self._shutdown_exporters(2.0)
            raise
        self._next_collection = time.monotonic() + self.collection_interval
        self._ticker = threading.Thread(target=self._tick_loop, name="gotel-ticker", daemon=True)
        self._ticker.start()
        return self

    def start_exporters(self):
        """Start the exporters and the stages after the receiver (idempotent)."""
        for exporter in self.exporters.values():
            exporter.start()
        self.head.start()

    def _tick_loop(self):
        while not self._stop.wait(self.TICK_S):
            try:
                with self.lock:
                    self._retire_exited()
                    for b in self.batchers:
                        b.tick()
                if time.monotonic() >= self._next_collection:
                    self._next_collection += self.collection_interval
                    self.export_metrics()
            except Exception:  # noqa: BLE001
                log.exception("ticker error")

    def _retire_exited(self):
        """End the goroutines of processes that exited: a process that dies sends no EXIT for
        them. The receiver retires a process only after draining its last events, so its spans
        are complete. Its metrics stay: cumulative series of a process that ended, as the
        Collector keeps them, and the end-of-run summary reads them."""
        for proc in self.registry:
            if not proc.alive and proc not in self._retired:
                self._retired.add(proc)
                self.decoder.emit(self.decoder.end_process(proc.pid))

    def wait(self, timeout=None):
        """Until every target exited, or timeout; returns the launched command's exit status."""
        return self.receiver.wait(timeout) if self.receiver is not None else None

    def finished(self):
        return self.receiver is not None and self.receiver.finished.is_set()

    def export_metrics(self):
        """Collect the Go runtime metrics and self-telemetry; hand them to the metrics exporters."""
        if not self.metrics_exporters:
            return
        payloads = []
        with self.lock:
            if self.metrics is not None:
                request = self._runtime_metrics_request()
                if request is not None and request.resource_metrics:
                    payloads.append(Payload.of("metrics", request))
        if self.config.telemetry.level != "none":
            payloads.append(Payload.of("metrics", self.telemetry_request()))
        for payload in payloads:
            for eid in self.metrics_exporters:
                self.exporters[eid].export(payload)

    def _runtime_metrics_request(self):
        return self.metrics.to_request(self.resources.resource_for, names=self)

    # the names resolver GoRuntimeMetrics asks at export
    def function(self, pid, pc):
        return self.encoder.names(int(pid), int(pc), 0)[1] or f"0x{int(pc):x}"

    def wait_reason(self, pid, number):
        return self.encoder.wait_reason(int(pid), int(number))

    def shutdown(self, timeout=5.0):
        """Flush everything within timeout: receiver drain, decoder end-of-run spans, batches, last
        metrics, exporter queues. Idempotent."""
        if self._shut:
            return
        self._shut = True
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(1.0)
        left = lambda share=1.0: max(0.0, (deadline - time.monotonic()) * share)  # noqa: E731
        if self.receiver is not None:
            self.receiver.shutdown(left(0.4))
        else:
            self.head.shutdown(left(0.4))
        # Let the span exporters drain first, so that the last self-telemetry counts what they sent.
        # Each exporter may drain for its own shutdown_timeout, when longer than what is left.
        drain_start = time.monotonic()
        for eid in self.traces_exporters - self.metrics_exporters:
            self.exporters[eid].flush(max(left(0.5), self._drain_time(eid) - 0.5 * (
                time.monotonic() - drain_start)))
        try:
            self.export_metrics()
        except Exception:  # noqa: BLE001
            log.exception("final metrics collection failed")
        self._shutdown_exporters(left(), drain_start)

    def _drain_time(self, eid):
        return float(getattr(self.exporters[eid], "shutdown_timeout", 0.0) or 0.0)

    def _shutdown_exporters(self, timeout, start=None):
        start = time.monotonic() if start is None else start
        deadline = time.monotonic() + timeout
        for eid, exporter in self.exporters.items():
            own = start + self._drain_time(eid)
            exporter.shutdown(max(0.0, max(deadline, own) - time.monotonic()))

    def abort(self):
        """At a second signal, just before gotel exits without draining: let a file exporter
        finish the line it is writing (at most a second), so that the files stay whole."""
        for exporter in self.exporters.values():
            hold = getattr(exporter, "hold", None)
            if hold is not None:
                hold(1.0)

    def losses(self):
        """What this run lost, one phrase per cause with its count and why (empty: nothing)."""
        out = []
        rx = self.receiver
        if getattr(rx, "lost", 0):
            out.append(f"{rx.lost} events (the kernel's ring buffer was full: raise ring_bytes)")
        if getattr(rx, "overflowed", 0):
            out.append(f"{rx.overflowed} events (the pipeline fell behind and gotel's event "
                       f"buffer was full: raise buffer_events)")
        if self.head.failed:
            out.append(f"{self.head.failed} events (a pipeline stage failed on them; see the log)")
        for eid, exporter in self.exporters.items():
            for signal, item in (("traces", "spans"), ("metrics", "metric points")):
                key = item.replace(" ", "_")
                n = (exporter.counters.get(f"send_failed_{key}", signal)
                     + exporter.counters.get(f"enqueue_failed_{key}", signal))
                if n:
                    why = getattr(exporter, "last_failure", "") or "send failed"
                    out.append(f"{n} {item} not delivered by exporter {eid} ({why})")
        return out

    # reporting
    def counters(self):
        """Self-telemetry as {(name, ((attribute, value), ...)): value}.

        Receiver side: events accepted (read from the ring buffer) and refused (lost: the ring was
        full); spans accepted (made by the decoder) and refused (could not be encoded as OTLP). Then
        the decoder's own drop counters, batches the pipeline failed on, each processor's items in
        and out, and per exporter the Collector's sent / send_failed / enqueue_failed and queue size.
        """
        out = {}
        rid = self.receiver_id
        events = getattr(self.receiver, "events", 0)
        lost = getattr(self.receiver, "refused", 0)     # ring full + receiver buffer full
        out[("otelcol_receiver_accepted_events", (("receiver", rid),))] = events
        out[("otelcol_receiver_refused_events", (("receiver", rid),))] = lost
        out[("otelcol_receiver_accepted_spans", (("receiver", rid),))] = self.tap.spans
        out[("otelcol_receiver_refused_spans", (("receiver", rid),))] = sum(
            f.encode_errors for f in self.fanouts)
        counters = getattr(self.decoder, "counters", None)
        for name, value in (counters() if callable(counters) else {}).items():
            out[(f"gotel_decoder_{name}", (("receiver", rid),))] = value
        out[("gotel_pipeline_failed_events", (("receiver", rid),))] = self.head.failed
        for pipeline_id, pid, stage in self.processors:
            attrs = (("processor", pid), ("pipeline", pipeline_id))
            out[("otelcol_processor_incoming_items", attrs)] = stage.items_in
            out[("otelcol_processor_outgoing_items", attrs)] = stage.items_out
        for eid, exporter in self.exporters.items():
            attrs = (("exporter", eid),)
            for signal, item in (("traces", "spans"), ("metrics", "metric_points")):
                for what in ("sent", "send_failed", "enqueue_failed"):
                    out[(f"otelcol_exporter_{what}_{item}", attrs)] = exporter.counters.get(
                        f"{what}_{item}", signal)
            out[("otelcol_exporter_queue_size", attrs)] = exporter.queue_size()
            out[("otelcol_exporter_queue_capacity", attrs)] = exporter.queue_capacity()
        return out

    GAUGES = ("otelcol_exporter_queue_size", "otelcol_exporter_queue_capacity")
    UNITS = {"events": "{event}", "spans": "{span}", "items": "{item}", "points": "{datapoint}"}

    def telemetry_request(self):
        """gotel's own metrics as an ExportMetricsServiceRequest (Resource service.name=gotel)."""
        now = time.time_ns()
        by_name = {}
        for (name, attrs), value in self.counters().items():
            by_name.setdefault(name, []).append((dict(attrs), value))
        metrics = []
        for name, points in sorted(by_name.items()):
            unit = self.UNITS.get(name.rsplit("_", 1)[-1], "1")
            if name in self.GAUGES:
                metrics.append(_gauge_metric(name, unit, "", points, now))
            else:
                metrics.append(_sum_metric(name, unit, "", points, True, self.start_ns, now))
        resource = encode.resource_pb2.Resource(attributes=_attrs(**{
            "service__name": "gotel", "service__version": encode.GOTEL_VERSION,
            "service__instance__id": str(uuid.uuid5(uuid.NAMESPACE_URL,
                                                    f"gotel://{self.host_name}/{os.getpid()}")),
            "host__name": self.host_name, "process__pid": os.getpid(),
            "telemetry__sdk__name": "gotel", "telemetry__sdk__version": encode.GOTEL_VERSION}))
        return metrics_service_pb2.ExportMetricsServiceRequest(resource_metrics=[
            metrics_pb2.ResourceMetrics(resource=resource, scope_metrics=[metrics_pb2.ScopeMetrics(
                scope=common_pb2.InstrumentationScope(name="gotel.telemetry",
                                                      version=encode.GOTEL_VERSION),
                metrics=metrics)])])

    def output_paths(self):
        return [str(e.path) for e in self.exporters.values() if hasattr(e, "path")]

    def summary(self):
        sent = {}
        for signal, item, eids in (("traces", "spans", self.traces_exporters),
                                   ("metrics", "metric_points", self.metrics_exporters)):
            for eid in eids:
                c = self.exporters[eid].counters
                s = sent.setdefault(f"{signal} ({eid})", [0, 0])
                s[0] += c.get(f"sent_{item}", signal)
                s[1] += c.get(f"send_failed_{item}", signal) + c.get(f"enqueue_failed_{item}", signal)
        return Summary(self.tap, self.encoder, lost_events=getattr(self.receiver, "refused", 0),
                       events=getattr(self.receiver, "events", 0), outputs=self.output_paths(),
                       exported={k: tuple(v) for k, v in sent.items()},
                       processes=list(self.registry))

