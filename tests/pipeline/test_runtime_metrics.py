"""RuntimeMetricsProducer: the runtime's own metrics as OTLP, owning their names over the
event-derived ones."""

import json
import os
import subprocess

import numpy as np
import pytest

from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from pipeline import metrics as metrics_mod, runtime_metrics
from receiver.binary import GoBinary


def _run(go_build, version="1.25"):
    proc = subprocess.Popen([str(go_build("rtmetrics", version))], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "GOGC": "120", "GOMAXPROCS": "2", "GOMEMLIMIT": "1073741824"})
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_producer_emits_semconv_metrics_with_the_runtimes_values(go_build):
    proc = _run(go_build)
    try:
        proc.stdin.write("quiesce\n")
        proc.stdin.flush()
        proc.stdout.readline()
        producer = runtime_metrics.create(runtime_metrics.Config(opt_in=runtime_metrics.OPT_IN))
        got = {m.name: m for m in producer.collect(proc.pid, GoBinary.open(proc.pid), 123)}
        proc.stdin.write("metrics\n")
        proc.stdin.flush()
        theirs = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    assert set(got) == {"go.memory.used", "go.memory.limit", "go.memory.allocated", "go.memory.allocations",
                        "go.goroutine.count", "go.processor.limit", "go.config.gogc", "go.schedule.duration",
                        "go.memory.gc.cycles", "go.memory.gc.pause.duration", "go.cpu.time", "go.memory.gc.goal"}
    cpu = {dp.attributes[0].value.string_value: dp.as_double for dp in got["go.cpu.time"].sum.data_points}
    assert cpu["user"] == pytest.approx(theirs["/cpu/classes/user:cpu-seconds"], abs=1e-9)
    assert cpu["gc"] == pytest.approx(theirs["/cpu/classes/gc/total:cpu-seconds"], abs=1e-9)
    value = {name: m.sum.data_points[0].as_int for name, m in got.items() if m.WhichOneof("data") == "sum"}
    assert value["go.config.gogc"] == 120 and got["go.config.gogc"].unit == "%"
    assert value["go.processor.limit"] == 2
    assert value["go.memory.limit"] == 1 << 30
    assert value["go.goroutine.count"] == theirs["/sched/goroutines:goroutines"]
    assert value["go.memory.gc.cycles"] == theirs["/gc/cycles/total:gc-cycles"]
    assert got["go.memory.allocated"].sum.is_monotonic and not got["go.memory.used"].sum.is_monotonic
    types = {dp.attributes[0].value.string_value: dp.as_int for dp in got["go.memory.used"].sum.data_points}
    assert set(types) == {"stack", "other"} and all(v > 0 for v in types.values())
    hist = got["go.schedule.duration"].histogram.data_points[0]
    assert hist.start_time_unix_nano == 123
    assert len(hist.bucket_counts) == len(hist.explicit_bounds) + 1
    assert hist.count == sum(hist.bucket_counts)
    # Waking the program to answer "metrics" is itself a scheduling (sampled 1 in 8): a few more.
    assert hist.count <= sum(theirs["/sched/latencies:seconds"]["counts"]) <= hist.count + 10


def test_memory_metrics_own_their_names_over_event_metrics():
    agg = metrics_mod.create(clock=lambda: 10)
    agg.record_new(np.array([7], np.uint64), np.array([0x401000], np.uint64), np.array([True]))
    own = runtime_metrics.to_metrics(_stats(goroutines=41), 1, 10)
    request = agg.to_request(lambda pid: Resource(), extra={7: own})
    (rm,) = request.resource_metrics
    by_name = {}
    for m in rm.scope_metrics[0].metrics:
        assert m.name not in by_name      # one owner per name
        by_name[m.name] = m
    assert by_name["go.goroutine.count"].sum.data_points[0].as_int == 41
    assert "go.goroutine.created" in by_name       # event-derived names stay


def _stats(**kv):
    from receiver.runtime_stats import RuntimeStats
    return RuntimeStats(**kv)


def test_opt_in_names_are_checked_by_their_yaml_path():
    from pipeline import config
    from receiver.errors import ConfigError

    with pytest.raises(ConfigError, match=r"receivers::goroutines::runtime_metrics::opt_in: unknown metric 'go\.x'"):
        config.loads("""
receivers:
  goroutines: {pids: [1], runtime_metrics: {opt_in: [go.cpu.time, go.x]}}
exporters: {debug: {}}
service: {pipelines: {metrics: {receivers: [goroutines], exporters: [debug]}}}
""")


def test_a_layout_without_the_runtime_structures_is_refused_and_events_keep_their_names(go_build, caplog):
    import dataclasses

    proc = _run(go_build)
    try:
        binary = GoBinary.open(proc.pid)
        binary.__dict__["layout"] = dataclasses.replace(binary.layout, structs={})
        producer = runtime_metrics.create()
        assert producer.collect(proc.pid, binary) == []
        assert producer.collect(proc.pid, binary) == []          # refused once, not retried
        assert sum("no runtime metrics from memory" in r.message for r in caplog.records) == 1
        assert "runtime.mstats" in caplog.text
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.bpf
def test_the_service_exports_them_for_a_traced_process(require_bpf, go_build, tmp_path):
    """gotel trace --pid on a quiet program: every collection carries the runtime's own values, and
    go.goroutine.count once per process (from memory, not from events)."""
    from pipeline import config
    from pipeline.app.runner import run_service

    proc = _run(go_build)
    try:
        proc.stdin.write("quiesce\n")
        proc.stdin.flush()
        proc.stdout.readline()
        out = tmp_path / "metrics.jsonl"
        cfg = config.loads(f"""
receivers:
  goroutines:
    pids: [{proc.pid}]
    collection_interval: 500ms
exporters:
  file: {{path: "{out}"}}
service:
  pipelines:
    metrics: {{receivers: [goroutines], exporters: [file]}}
""")
        run_service(cfg, duration=2.5, summary=False)
        proc.stdin.write("metrics\n")
        proc.stdin.flush()
        theirs = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    last = None
    for line in out.read_text().splitlines():
        for rm in json.loads(line).get("resourceMetrics", ()):
            names = [m["name"] for sm in rm["scopeMetrics"] for m in sm["metrics"]]
            if "go.config.gogc" in names:
                assert names.count("go.goroutine.count") == 1
                last = {m["name"]: m for sm in rm["scopeMetrics"] for m in sm["metrics"]}
    assert last is not None, out.read_text()[:2000]

    def value(name):
        return int(last[name]["sum"]["dataPoints"][0]["asInt"])

    assert value("go.config.gogc") == 120 and value("go.processor.limit") == 2
    assert value("go.memory.limit") == 1 << 30
    assert value("go.goroutine.count") == theirs["/sched/goroutines:goroutines"]
    assert "go.memory.used" in last and "go.schedule.duration" in last
    assert "histogram" in last["go.schedule.duration"]     # the runtime's buckets, not the events'


class _Sink:
    def __init__(self):
        self.payloads = []

    def consume(self, payload):
        self.payloads.append(payload)


def _names(request):
    return [m.name for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]


def test_the_census_receiver_exports_them_with_its_own(go_build):
    from pipeline.receivers import goruntime

    proc = _run(go_build, "1.27")
    try:
        sink = _Sink()
        rx = goruntime.create(None, goruntime.Config(pids=(proc.pid,)), sink)
        rx.collect()
        proc.stdin.write("metrics\n")
        proc.stdin.flush()
        theirs = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    (payload,) = [p for p in sink.payloads if p.signal == "metrics"]
    request = payload.message()
    names = _names(request)
    assert {"gotel.goroutine.count", "go.goroutine.count", "go.memory.used", "go.config.gogc"} <= set(names)
    assert len(names) == len(set(names))
    (count,) = [m for m in request.resource_metrics[0].scope_metrics[0].metrics if m.name == "go.goroutine.count"]
    # The program churns until quiesced: the count moves by the churn goroutine at most.
    assert abs(count.sum.data_points[0].as_int - theirs["/sched/goroutines:goroutines"]) <= 1
    assert set(rx.owned_metric_names) == set(runtime_metrics.NAMES)
    off = goruntime.create(None, goruntime.Config(pids=(1,), runtime_metrics=runtime_metrics.Config(enabled=False)),
                           _Sink())
    assert off.owned_metric_names == () and len(off.producers) == 1


def test_with_a_census_receiver_the_goroutines_receiver_disowns_the_runtime_names():
    from pipeline import config
    from pipeline.service import Service

    cfg = config.loads("""
receivers:
  goroutines: {pids: [1]}
  goruntime: {}
exporters: {debug: {}}
service:
  pipelines:
    metrics: {receivers: [goroutines, goruntime], exporters: [debug]}
""")
    service = Service(cfg)
    assert service.receiver.disowned == frozenset(runtime_metrics.NAMES)
    agg = service.receiver.metrics
    agg.record_new(np.array([7], np.uint64), np.array([0x401000], np.uint64), np.array([True]))
    names = _names(service.receiver.collect(lambda pid: Resource(), None))
    assert "go.goroutine.created" in names and "go.goroutine.count" not in names
