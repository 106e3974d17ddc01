"""Row 3: user-space throughput: events/s through gotel's decoder and whole pipeline, against a
per-event bcc callback consumer and the OpenTelemetry Python SDK, in one run on one machine.

A real event stream is recorded first: gotel's receiver (kernel probe, per-CPU event buffers, numpy reader)
traces ``spawn`` (goroutine-heavy: one span per 3 events), ``pingpong`` (park-heavy) and the
``httpserver`` under ``wrk``, keeping every event. That stream is then replayed from memory, in
time order, in batches of 16384 events (when the pipeline is the bottleneck the reader hands over
whatever accumulated during the previous batch, up to a CPU buffer's 131k events, so the batches of a
saturated gotel are at least this large), on one thread pinned to one CPU:

- ``decode``: ``EventDecoder`` with its Go runtime metrics, spans dropped after it;
- ``pipeline (default)``: the shipped ``Service`` chain built from the embedded default
  configuration (decoder, summary tap, filter, adaptive sampler at its default target, batcher,
  encoder to OTLP protobuf bytes); the exporters are replaced by a counter of the encoded bytes:
  encode only, no network and no file, for gotel and for the SDK alike;
- ``pipeline (every span)``: the same with no filter and no sampler, so every span is encoded:
  the worst case, and the one compared with the SDK.

Both rates are events (and spans) per second of the replaying thread's CPU time.

(a) ``bcc callback``: the consumer a bcc tool would write, ``open_ring_buffer(cb)`` +
``ring_buffer_poll``, where ``cb`` only casts each record to a ctypes struct, reads its kind and
counts it (bcc's own ``table.event()`` cannot parse the ``__u64`` fields of struct gotel_event; bcc
tools define such structs with ctypes by hand, as here), on gotel's probe made to write a BPF ring
buffer (``benchmarks/bpf_parts.py``'s ``ring`` variant), against gotel's ``EventBufferReader``
draining the shipped probe's per-CPU buffers, each on a live ``pingpong``, in events per second of
the consumer thread's CPU time.
(b) ``SDK``: the OpenTelemetry Python SDK creating the spans that gotel's decoder produced from the
stream (same names, parents, times and attributes, links left out; all of it precomputed outside the
timing, which favours the SDK), collected by a span processor and encoded with the OTLP exporter's
own encoder (``encode_spans(...).SerializeToString()``) in batches of 512, the SDK batch processor's
export size; and gotel's ``TraceEncoder`` on the very same spans.

Trust ``pipeline (every span)`` spans/s over ``SDK`` spans/s as the SDK comparison: gotel's side also
decodes the events, filters and batches, the SDK's side starts from finished names and attributes,
so the ratio understates gotel's advantage. The bcc comparison counts consumer CPU only (the probe
side is the same program but for where it writes); a consumer that falls behind loses events, reported with it.
"""

import ctypes
import threading
import time

import numpy as np

from benchmarks import harness
from benchmarks.bench_http import start_server, wrk
from receiver.receiver import Config as ReceiverConfig
from receiver.receiver import GoroutineReceiver

SDK_BATCH = 512
# Replay batch size: what the reader hands over when the pipeline is the bottleneck is whatever
# accumulated meanwhile, up to a CPU buffer's 8 MiB (131k events); 16384 is well inside that range.
REPLAY_BATCH = 16384
REPLAYS = ("decode", "pipeline_default", "pipeline_all")


class Keep:
    """Last stage that keeps every batch."""

    def __init__(self):
        self.batches = []

    def start(self):
        pass

    def consume(self, batch):
        self.batches.append(batch)

    def shutdown(self, timeout=5.0):
        pass


class CountingExporter:
    """Stands in for the exporters after the encoder: counts requests, spans and bytes."""

    def __init__(self):
        self.requests = self.spans = self.bytes = 0

    def export(self, payload):
        self.requests += 1
        self.spans += payload.count
        self.bytes += len(payload.data)
        return True


# --- recording ----------------------------------------------------------------------------------
def record(quick):
    """(batches, registry, lost): a real event stream of three workloads, as gotel's reader gave it.

    One receiver traces them all (one BPF compile): spawn and pingpong wait on stdin until the
    probes are in place, the server is idle until wrk starts."""
    n = 5000 if quick else 100_000
    spawn = harness.start_waiting(harness.workload("spawn"), ["-n", n])
    pingpong = harness.start_waiting(harness.workload("pingpong"), ["-n", n])
    server, addr = start_server()
    sink = Keep()
    try:
        rx = GoroutineReceiver(ReceiverConfig(pids=(spawn.pid, pingpong.pid, server.pid)), sink)
        rx.start()
        try:
            harness.release(spawn)
            harness.release(pingpong)
            wrk(addr, 1 if quick else 2, 8)
        finally:
            server.kill()
            server.wait()
            rx.shutdown()
    finally:
        for proc in (spawn, pingpong, server):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return sink.batches, rx.registry, rx.lost


# --- replays ------------------------------------------------------------------------------------
def _config(every_span):
    from pipeline import config

    text = config.DEFAULT_PATH.read_text()
    if every_span:
        text = text.replace("processors: [filter, sampler, batch]", "processors: [batch]")
    return config.loads(text, overrides={"GOTEL_OUT": "/nonexistent"},
                        receiver_settings={"pids": [1]})


def build_service(registry, every_span):
    """The shipped Service chain, exporters replaced by a CountingExporter; returns (service, counter)."""
    from pipeline.service import Service

    service = Service(_config(every_span), processes=registry)
    counter = CountingExporter()
    for fanout in service.fanouts:
        fanout.exporters = [counter]
    return service, counter


def build_decoder():
    from pipeline import decoder, metrics

    class Spans(harness.Discard):
        def consume(self, batch):
            self.events += len(batch)   # spans, here

    sink = Spans()
    return decoder.create(decoder.Config(), sink, metrics=metrics.create(metrics.Config())), sink


def replay(kind, batches, registry):
    """{"cpu_s", "wall_s", "events", "spans", "encoded_spans", "bytes"} for one replay."""
    if kind == "decode":
        head, sink = build_decoder()
        service = counter = None
    else:
        service, counter = build_service(registry, kind == "pipeline_all")
        head = service.receiver.head
    copies = [b.copy() for b in batches]
    head.start()
    t0, c0 = time.perf_counter(), time.thread_time()
    for b in copies:
        head.consume(b)
    head.shutdown(30.0)
    cpu, wall = time.thread_time() - c0, time.perf_counter() - t0
    events = sum(len(b) for b in copies)
    if service is None:
        return {"cpu_s": cpu, "wall_s": wall, "events": events, "spans": sink.events,
                "encoded_spans": 0, "bytes": 0}
    return {"cpu_s": cpu, "wall_s": wall, "events": events, "spans": service.tap.spans,
            "encoded_spans": counter.spans, "bytes": counter.bytes}


def decoded_spans(batches, registry, limit):
    """The first ``limit`` spans the shipped decoder makes of the stream, and the Service whose
    encoder names them."""
    from pipeline.spans import SPAN_DTYPE

    service, _ = build_service(registry, True)
    kept = []

    class Collect(harness.Discard):
        def consume(self, batch):
            kept.append(batch.copy())

    service.tap.next = Collect()
    service.receiver.head.start()
    for b in batches:
        service.receiver.head.consume(b.copy())
        if sum(len(k) for k in kept) >= limit:
            break
    spans = np.concatenate(kept)[:limit] if kept else np.zeros(0, SPAN_DTYPE)
    return spans, service


# --- (b) the OpenTelemetry SDK ----------------------------------------------------------------------
def sdk_inputs(spans, service):
    """Per span: (name, parent context, attributes, start, end), from gotel's own symbolization."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from pipeline.spans import SpanKind

    enc = service.encoder
    out = []
    for s in spans.tolist():
        row = dict(zip(spans.dtype.names, s))
        pid = row["pid"]
        if row["kind"] == SpanKind.PARK:
            name = enc.wait_reason(pid, row["wait_reason"])
            attrs = {"gotel.goroutine.id": row["goid"], "gotel.wait_reason": name,
                     "gotel.park.blocked_ns": row["blocked_ns"], "gotel.park.runnable_ns": row["runnable_ns"]}
        else:
            name, start_fn, creator_fn, file, line = enc.names(pid, row["start_pc"], row["create_pc"])
            attrs = {"gotel.goroutine.id": row["goid"], "gotel.goroutine.parent_id": row["parent_goid"],
                     "code.function.name": start_fn, "code.file.path": file, "code.line.number": line,
                     "gotel.goroutine.created_by": creator_fn, "gotel.goroutine.parks": row["n_parks"]}
        parent = None
        if row["parent_span_id"]:
            ctx = SpanContext(trace_id=(row["trace_hi"] << 64) | row["trace_lo"],
                              span_id=row["parent_span_id"], is_remote=False,
                              trace_flags=TraceFlags(TraceFlags.SAMPLED))
            parent = trace.set_span_in_context(NonRecordingSpan(ctx))
        out.append((name or "goroutine", parent, attrs, row["start_ns"], row["end_ns"]))
    return out


def sdk_run(inputs, resource_attrs):
    """(seconds of thread CPU, serialized bytes) for the SDK creating and encoding every span."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.trace import SpanKind as OtelKind

    class Collect(SpanProcessor):
        def __init__(self):
            self.done = []

        def on_end(self, span):
            self.done.append(span)

    collect = Collect()
    provider = TracerProvider(resource=Resource.create(resource_attrs))
    provider.add_span_processor(collect)
    tracer = provider.get_tracer("gotel.benchmark")
    size = 0
    c0 = time.thread_time()
    for name, parent, attrs, start, end in inputs:
        span = tracer.start_span(name, context=parent, kind=OtelKind.INTERNAL, attributes=attrs,
                                 start_time=start)
        span.end(end_time=end)
        if len(collect.done) >= SDK_BATCH:
            size += len(encode_spans(collect.done).SerializeToString())
            collect.done = []
    if collect.done:
        size += len(encode_spans(collect.done).SerializeToString())
    cpu = time.thread_time() - c0
    provider.shutdown()
    return cpu, size


def gotel_encode_run(spans, service):
    """(seconds of thread CPU, bytes) for gotel's encoder on the same spans, in batches of 8192."""
    c0 = time.thread_time()
    size = 0
    for i in range(0, len(spans), 8192):
        for data, _count in service.encoder.encode_chunks(spans[i:i + 8192]):
            size += len(data)
    return time.thread_time() - c0, size


def resource_attributes(service, pid):
    from google.protobuf.json_format import MessageToDict

    res = MessageToDict(service.resources.resource_for(pid))
    out = {}
    for kv in res.get("attributes", []):
        value = kv.get("value", {})
        out[kv["key"]] = next(iter(value.values()), "") if value else ""
    return out


# --- (a) consumers on a live stream -------------------------------------------------------------
class Event(ctypes.Structure):
    """struct gotel_event for ctypes, as a bcc tool defines it by hand."""

    _fields_ = [("ts_ns", ctypes.c_uint64), ("g", ctypes.c_uint64), ("goid", ctypes.c_uint64),
                ("aux_goid", ctypes.c_uint64), ("pc_start", ctypes.c_uint64),
                ("pc_create", ctypes.c_uint64), ("pid", ctypes.c_uint32), ("tid", ctypes.c_uint32),
                ("kind", ctypes.c_uint8), ("wait_reason", ctypes.c_uint8),
                ("old_status", ctypes.c_uint16), ("new_status", ctypes.c_uint16),
                ("cpu", ctypes.c_uint16)]


class LiveConsumers:
    """gotel's probe compiled twice, as shipped and writing a ring buffer; ``run(style, n)`` traces
    one pingpong and drains the ring with a bcc per-event callback or the shipped probe's buffers
    with gotel's numpy reader, on a thread of its own."""

    def __init__(self):
        from benchmarks import bpf_parts
        from receiver import probes
        from receiver.binary import GoBinary

        self.binary = harness.workload("pingpong")
        self.gobinary = GoBinary.open(str(self.binary))
        self.probes = {"numpy_reader": probes.Probes(probes.Config()),
                       "bcc_callback": bpf_parts.load("ring")}
        self.reader = self.probes["numpy_reader"].reader()
        self.events = 0
        self.probes["bcc_callback"].bpf["ring_events"].open_ring_buffer(self._callback)

    def _callback(self, ctx, data, size):
        event = ctypes.cast(data, ctypes.POINTER(Event)).contents
        if event.kind:
            self.events += 1

    def _drain_bcc(self, stop):
        ring = self.probes["bcc_callback"].bpf
        while not stop.is_set():
            ring.ring_buffer_poll(50)
        ring.ring_buffer_consume()

    def _drain_numpy(self, stop):
        while not stop.is_set():
            self.events += len(self.reader.poll(0.05))
        self.events += len(self.reader.read(everything=True))

    def run(self, style, n):
        """{"events", "cpu_s", "lost"} of one consumer ("bcc_callback" or "numpy_reader")."""
        drain = self._drain_bcc if style == "bcc_callback" else self._drain_numpy
        probes = self.probes[style]
        lost_before = probes.counters()["lost"]
        proc = harness.start_waiting(self.binary, ["-n", n])
        attachment = probes.attach(self.gobinary, proc.pid)
        self.events, cpu, stop = 0, {}, threading.Event()

        def loop():
            c0 = time.thread_time()
            drain(stop)
            cpu["s"] = time.thread_time() - c0

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        try:
            harness.release(proc)
        finally:
            stop.set()
            t.join()
            probes.detach(attachment)
        return {"events": self.events, "cpu_s": cpu["s"],
                "lost": probes.counters()["lost"] - lost_before}

    def close(self):
        self.reader.close()
        for probes in self.probes.values():
            probes.close()


# --- the row ------------------------------------------------------------------------------------
def run(quick=False):
    started = time.monotonic()
    repeats = 1 if quick else 5
    recorded, registry, record_lost = record(quick)
    stream = np.concatenate(recorded)
    batches = [stream[i:i + REPLAY_BATCH] for i in range(0, len(stream), REPLAY_BATCH)]
    events = len(stream)
    n_sdk = 1000 if quick else 20_000
    spans, service = decoded_spans(batches, registry, n_sdk)
    inputs = sdk_inputs(spans, service)
    resource = resource_attributes(service, int(spans["pid"][0])) if len(spans) else {}
    live_n = 5000 if quick else 300_000
    consumers = LiveConsumers()
    results = {k: [] for k in (*REPLAYS, "sdk", "encoder", "bcc_callback", "numpy_reader")}
    try:
        for _, kind in harness.interleaved(tuple(results), repeats):
            if kind in REPLAYS:
                results[kind].append(replay(kind, batches, registry))
            elif kind == "sdk":
                results[kind].append(sdk_run(inputs, resource))
            elif kind == "encoder":
                results[kind].append(gotel_encode_run(spans, service))
            else:
                results[kind].append(consumers.run(kind, live_n))
    finally:
        consumers.close()
    sdk, enc = results["sdk"], results["encoder"]
    live = {k: results[k] for k in ("bcc_callback", "numpy_reader")}

    figs = {"recorded.batch_events": harness.figure(
        "events per batch the reader delivered while recording (all batches)", "events",
        [len(b) for b in recorded], 0)}
    for kind, label in (("decode", "decode alone"), ("pipeline_default", "whole pipeline, default config"),
                        ("pipeline_all", "whole pipeline, every span encoded")):
        rs = results[kind]
        figs[f"{kind}.events_per_s"] = harness.figure(f"{label}: events/s (CPU time)", "events/s",
                                                      [r["events"] / r["cpu_s"] for r in rs], 0)
        figs[f"{kind}.spans_per_s"] = harness.figure(f"{label}: spans/s made (CPU time)", "spans/s",
                                                     [r["spans"] / r["cpu_s"] for r in rs], 0)
        if kind != "decode":
            figs[f"{kind}.encoded_spans"] = harness.figure(f"{label}: spans encoded", "spans",
                                                           [r["encoded_spans"] for r in rs], 0)
            figs[f"{kind}.bytes_per_span"] = harness.figure(
                f"{label}: OTLP bytes per encoded span", "B",
                [r["bytes"] / r["encoded_spans"] if r["encoded_spans"] else None for r in rs], 1)
    sdk_rate = [len(spans) / c for c, _ in sdk]
    enc_rate = [len(spans) / c for c, _ in enc]
    figs["sdk.spans_per_s"] = harness.figure("OpenTelemetry SDK: spans created + OTLP-encoded /s", "spans/s",
                                             sdk_rate, 0)
    figs["sdk.bytes_per_span"] = harness.figure("OpenTelemetry SDK: OTLP bytes per span", "B",
                                                [b / len(spans) for _, b in sdk], 1)
    figs["encoder.spans_per_s"] = harness.figure("gotel TraceEncoder on the same spans: spans/s", "spans/s",
                                                 enc_rate, 0)
    pipe_rate = [r["spans"] / r["cpu_s"] for r in results["pipeline_all"]]
    figs["ratio.pipeline_vs_sdk"] = harness.figure(
        "pipeline (every span) spans/s / SDK spans/s (per repetition)", "x",
        [p / s for p, s in zip(pipe_rate, sdk_rate)], 1)
    figs["ratio.encoder_vs_sdk"] = harness.figure(
        "gotel encoder / SDK create+encode, same spans (per repetition)", "x",
        [e / s for e, s in zip(enc_rate, sdk_rate)], 1)
    for style, label in (("bcc_callback", "bcc per-event callback consumer"),
                         ("numpy_reader", "gotel EventBufferReader")):
        figs[f"live.{style}.events_per_s"] = harness.figure(
            f"{label}: events/s (consumer CPU time)", "events/s",
            [s["events"] / s["cpu_s"] if s["cpu_s"] else None for s in live[style]], 0)
        figs[f"live.{style}.lost"] = harness.figure(f"{label}: events lost", "events",
                                                    [s["lost"] for s in live[style]], 0)
    figs["ratio.pipeline_vs_bcc_callback"] = harness.figure(
        "whole pipeline (default) events/s / bcc callback events/s (per repetition)", "x",
        [r["events"] / r["cpu_s"] / (c["events"] / c["cpu_s"]) if c["events"] and c["cpu_s"] else None
         for r, c in zip(results["pipeline_default"], live["bcc_callback"])], 2)

    pipe_default = figs["pipeline_default.events_per_s"]["median"]
    pipe_all = figs["pipeline_all.events_per_s"]["median"]
    ratio = figs["ratio.pipeline_vs_sdk"]["median"]
    goals = [
        harness.goal(">= 2,000,000 events/s through the pipeline on one core (default config)",
                     "pipeline_default.events_per_s", pipe_default, 2_000_000,
                     pipe_default is not None and pipe_default >= 2_000_000,
                     "one Python thread does it all: the decoder's per-batch numpy work (sorts, "
                     "state machine, table lookups) and, for the spans the sampler keeps, the "
                     "encoder's per-span Python slice-and-join"),
        harness.goal(">= 2,000,000 events/s through the pipeline with every span encoded",
                     "pipeline_all.events_per_s", pipe_all, 2_000_000,
                     pipe_all is not None and pipe_all >= 2_000_000,
                     "the OTLP encoder builds each span's bytes with a Python slice and join; with "
                     "every span kept that is most of the time, on top of decoding"),
        harness.goal(">= 5x the SDK's spans/s", "ratio.pipeline_vs_sdk", ratio, 5,
                     ratio is not None and ratio >= 5, "the encoder's per-span Python work"),
    ]
    sizes = [len(b) for b in recorded]
    notes = [f"Stream: {events} events recorded from spawn, pingpong and httpserver under wrk "
             f"({record_lost} lost while recording), replayed in batches of {REPLAY_BATCH} events (the "
             f"reader delivered them in {len(recorded)} batches, median {int(np.median(sizes))} events, "
             f"to a sink that kept up at once). {repeats} repetitions on CPU {harness.GOTEL_CPU}, each "
             f"running every kind once, in this order: {', '.join(results)}; ratios pair the kinds "
             "of one repetition.",
             f"SDK comparison on the first {len(spans)} spans the decoder produced; encode only, no "
             "network, on both sides.",
             f"Live consumers: pingpong -n {live_n} on CPU {harness.TARGET_CPU}, consumer on CPU "
             f"{harness.GOTEL_CPU}.",
             f"Row wall time {time.monotonic() - started:.0f} s."]
    return harness.row(3, "User-space throughput", __doc__, figs, goals, notes,
                       {"repeats": repeats, "events": events, "sdk_spans": len(spans)})


if __name__ == "__main__":
    raise SystemExit(harness.main(run, __doc__))
