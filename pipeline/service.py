"""Service: builds gotel's pipelines from a validated Config and runs them, like the Collector's.

    receiver ─▶ SummaryTap ─┬─▶ [processors of traces pipeline 1] ─▶ TraceFanout ─▶ its exporters
    (poller thread)         └─▶ ... one chain per traces pipeline
    metrics thread: every collection_interval, the receiver's metrics and gotel's own ─▶ the
    metrics pipelines' exporters
    goruntime receivers (a census thread each): metrics and leak logs ─▶ their pipelines' exporters

Every component comes from its module in ``pipeline.components`` through the same
``create(settings, config, next)``; the service knows no component's internals. The receiver's
poller thread drives the span path (batches, and ``tick()`` between them for timers); the metrics
thread only reads frozen copies; exporters own their worker threads (docs/architecture.md has the
thread map). ``Processes`` is the one owner of per-process facts, shared by every component.
"""

import logging
import socket
import threading
import time

from pipeline import components, telemetry
from pipeline.exporters.encode import Resources, TraceEncoder
from pipeline.exporters.base import Payload
from pipeline.exporters.fanout import PayloadRoute, TraceFanout
from pipeline.stage import Discard, Fork, Settings
from pipeline.summary import Summary, SummaryTap
from receiver.processes import Processes

log = logging.getLogger("gotel.service")


class Service:
    """Builds every component from a validated Config (one receiver, as config.py ensures);
    ``start()``, ``wait()``, ``shutdown()``, ``summary()``."""

    def __init__(self, config, processes=None, host_name=None, launch_options=None):
        self.config = config
        self.host_name = host_name or socket.gethostname()
        self.processes = processes if processes is not None else Processes(self.host_name)
        self.start_ns = time.time_ns()
        self.exporters = {}
        self.traces_exporters = set()
        self.metrics_exporters = set()
        self.fanouts = []
        self.processors = []          # (pipeline id, component id, stage)
        self.tap = SummaryTap()
        self._stop = threading.Event()
        self._metrics_thread = None
        self._shut = False
        self.extensions = {}
        self.attached = False         # the receiver's probes are in place (health_check readiness)
        self._build(launch_options)

    # building
    def _settings(self, cid):
        return Settings(cid, self.processes)

    def _build(self, launch_options):
        used = {r for p in self.config.pipelines.values() for r in p.receivers}
        census_ids = sorted(r for r in used if self.config.receivers[r].type == "goruntime")
        probed = sorted(used - set(census_ids))
        # Without a goroutines receiver nothing is probed: census receivers run alone.
        self.receiver_id = probed[0] if probed else None
        rc = self.config.receivers[self.receiver_id] if probed else None
        self.resources = Resources(self.processes.describe, rc.config.resource if rc else {})
        self.processes.on_forget(self.resources.forget)
        self.encoder = TraceEncoder(self.resources, self.processes)
        self.processes.on_forget(self.encoder.forget)
        self.encoder.windows = self.windows
        for pipeline in self.config.pipelines.values():
            for eid in pipeline.exporters:
                if eid not in self.exporters:
                    comp = self.config.exporters[eid]
                    self.exporters[eid] = components.module("exporters", comp.type).create(
                        self._settings(eid), comp.config, None)
                if self.receiver_id in pipeline.receivers:
                    (self.traces_exporters if pipeline.signal == "traces"
                     else self.metrics_exporters).add(eid)
        chains = [self._trace_chain(p) for p in self.config.pipelines_for("traces")]
        self.tap.next = chains[0] if len(chains) == 1 else Fork(chains) if chains else Discard()
        self.receiver = None if rc is None else components.module("receivers", rc.type).create(
            self._settings(self.receiver_id), rc.config, self.tap, launch_options=launch_options)
        self.collection_interval = float(rc.config.collection_interval) if rc else 10.0
        self.census_receivers = [self._census_receiver(cid) for cid in census_ids]
        # One owner per metric name: the census reads every traced process's runtime metrics.
        owned = {n for c in self.census_receivers for n in getattr(c, "owned_metric_names", ())}
        if owned and self.receiver is not None:
            self.receiver.disown(owned)
        for xid in self.config.service_extensions:
            comp = self.config.extensions[xid]
            self.extensions[xid] = components.module("extensions", comp.type).create(
                self._settings(xid), comp.config, None)

    def _census_receiver(self, cid):
        """A goruntime receiver: its payloads go to the exporters of the pipelines naming it; it
        takes censuses of its own pids and of every process the goroutines receiver traces."""
        routes = {}
        for pipeline in self.config.pipelines.values():
            if cid in pipeline.receivers:
                routes.setdefault(pipeline.signal, []).extend(
                    self.exporters[e] for e in pipeline.exporters)
        comp = self.config.receivers[cid]
        return components.module("receivers", comp.type).create(
            self._settings(cid), comp.config, PayloadRoute(routes))

    def _trace_chain(self, pipeline):
        """The processors of one traces pipeline, in order, ending in a TraceFanout."""
        stages = []
        fanout = TraceFanout(self.encoder, [self.exporters[e] for e in pipeline.exporters])
        self.fanouts.append(fanout)
        stage = fanout
        for cid in reversed(pipeline.processors):
            comp = self.config.processors[cid]
            stage = components.module("processors", comp.type).create(
                self._settings(cid), comp.config, stage)
            stages.append((pipeline.id, cid, stage))
            if comp.type == "batch":
                fanout.batcher = stage
                fanout.max_bytes = comp.config.send_batch_max_bytes
        self.processors += reversed(stages)
        return stage

    # running
    def start(self):
        """Start exporters, then the receiver (attaches; raises TargetError/ProbeError), then the
        metrics thread. Extensions start first and stop last, as in the Collector."""
        try:
            for extension in self.extensions.values():
                extension.start(self)
            self.start_exporters()
            if self.receiver is not None:
                self.receiver.start()
                # Arguments of function spans (receivers::goroutines::functions::arguments).
                self.encoder.extra_attributes = getattr(self.receiver, "extra_attributes", None)
            for census in self.census_receivers:
                census.start()
        except BaseException:
            if self.receiver is not None:
                self.receiver.shutdown(1.0)
            for exporter in self.exporters.values():
                exporter.shutdown(2.0)
            self._shutdown_extensions()
            raise
        self.attached = True
        self._metrics_thread = threading.Thread(target=self._collect_loop, name="gotel-metrics",
                                                daemon=True)
        self._metrics_thread.start()
        return self

    def start_exporters(self):
        """Start the exporters and the stages after the receiver (idempotent)."""
        for exporter in self.exporters.values():
            exporter.start()
        self.tap.start()

    def _collect_loop(self):
        while not self._stop.wait(self.collection_interval):
            try:
                self.export_metrics()
            except Exception:  # noqa: BLE001
                log.exception("metrics collection failed")

    def wait(self, timeout=None):
        """Until every target exited, or timeout; returns the launched command's exit status."""
        if self.receiver is None:
            self._stop.wait(timeout)
            return None
        return self.receiver.wait(timeout)

    def finished(self):
        return self.receiver is not None and self.receiver.finished()

    def export_metrics(self):
        """Collect the Go runtime metrics and self-telemetry; hand them to the metrics exporters."""
        if not self.metrics_exporters:
            return
        payloads = []
        request = None if self.receiver is None else self.receiver.collect(
            self.resources.resource_for, self.processes)
        if request is not None and request.resource_metrics:
            payloads.append(Payload.of("metrics", request))
        if self.config.telemetry.level != "none":
            payloads.append(Payload.of("metrics", self.telemetry_request()))
        for payload in payloads:
            for eid in self.metrics_exporters:
                self.exporters[eid].export(payload)

    def windows(self, pid):
        """The receiver's windows of full tracing of process pid (receiver.levels), or None."""
        levels = getattr(getattr(self.receiver, "source", None), "levels", None)
        return levels.windows_of(pid) if levels is not None else None

    def shutdown(self, timeout=5.0):
        """Flush everything: receiver drain, decoder end-of-run spans, batches, last metrics,
        exporter queues. What was collected is all processed however long it takes (a second
        signal stops gotel at once); ``timeout`` bounds the waits on what may never end (a thread
        stuck on the kernel, a peer that does not answer: each exporter waits at least its own
        shutdown_timeout for one). Idempotent."""
        if self._shut:
            return
        self._shut = True
        self.attached = False
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._metrics_thread is not None:
            self._metrics_thread.join(1.0)

        def left(share=1.0):
            return max(0.0, (deadline - time.monotonic()) * share)

        for census in self.census_receivers:
            census.shutdown(left(0.2))
        if self.receiver is not None:
            self.receiver.shutdown(left(0.4))
        # Let the span exporters drain first, so that the last self-telemetry counts what they sent.
        # An exporter drains while its requests go out; it gives up once none did for its own
        # shutdown_timeout, or for what is left of timeout when that is longer.
        stalled = {eid for eid in self.traces_exporters - self.metrics_exporters
                   if not self.exporters[eid].flush(max(left(0.5), self._drain_time(eid)))}
        try:
            self.export_metrics()
        except Exception:  # noqa: BLE001
            log.exception("final metrics collection failed")
        for eid, exporter in self.exporters.items():    # a stalled one is not waited for twice
            exporter.shutdown(0.0 if eid in stalled else max(left(), self._drain_time(eid)))
        self._shutdown_extensions()

    def health_state(self):
        """For the health check: receiver attached, and per exporter how long every send failed."""
        now = time.monotonic()
        return {"attached": self.attached and not self._shut,
                "exporters": {eid: None if e.failing_since is None else now - e.failing_since
                              for eid, e in self.exporters.items()}}

    def _shutdown_extensions(self):
        for extension in self.extensions.values():
            extension.shutdown()

    def _drain_time(self, eid):
        return float(getattr(self.exporters[eid], "shutdown_timeout", 0.0) or 0.0)

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
        source = getattr(self.receiver, "source", None)
        if source is None:
            pass
        elif source.lost:
            out.append(f"{source.lost} events (the kernel's event buffers were full: raise ring_bytes)")
        if source is not None and source.overflowed:
            out.append(f"{source.overflowed} events (the pipeline fell behind and gotel's event "
                       f"buffer was full: raise buffer_events)")
        if source is not None and source.failed_events:
            out.append(f"{source.failed_events} events (a pipeline stage failed on them; see the "
                       f"log)")
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
        return telemetry.counters(self)

    def telemetry_request(self):
        return telemetry.request(self, self.host_name, self.start_ns)

    def output_paths(self):
        return [str(e.path) for e in self.exporters.values() if hasattr(e, "path")]

    def summary(self):
        return Summary.of(self)
