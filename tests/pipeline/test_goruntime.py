"""receivers::goruntime on real Go programs: goroutine metrics, groups, and the leak oracle.

The leak program (tests/go/blocked -leak) runs healthy request-like churn (a goroutine per call that
sleeps 1 ms and answers) and, once every 20 calls, a handler whose worker goroutine can never send
its reply: exactly one leaking site, main.leakyWorker blocked on "chan send". The receiver must
report that group, with its stack, and nothing else.
"""

import json
import time

import pytest

from pipeline.exporters import file as file_exporter, otlp_grpc
from pipeline.stage import Settings
from pipeline.receivers import goruntime
from tests.otlp_server import serve


class Sink:
    def __init__(self):
        self.payloads = []

    def consume(self, payload):
        self.payloads.append(payload)


@pytest.fixture
def program(blocked_program):
    return blocked_program


def metric(payload, name):
    for rm in payload.message().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    return m
    raise KeyError(name)


def attrs(point):
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in point.attributes}


@pytest.mark.parametrize("version", ["1.21", "1.25", "1.27"])
def test_the_one_leaking_site_is_reported_and_healthy_churn_is_not(program, version):
    proc = program("-leak", version=version)
    sink = Sink()
    rx = goruntime.create(None, goruntime.Config(pids=(proc.pid,), leak_threshold=0.2, leak_censuses=3), sink)
    for _ in range(8):     # 3 rising censuses and a GC-stamped wait >= 0.2 s, with room to spare
        time.sleep(0.4)
        rx.collect()
    leaks = rx.targets[proc.pid].last_leaks
    assert len(leaks) == 1, [lk.group.title() for lk in leaks]
    g = leaks[0].group
    functions = [f for f, _, _ in g.stack]
    assert "main.leakyWorker" in functions and g.wait_reason == "chan send"
    assert g.created_by.startswith("main.leakyHandler ")
    assert not leaks[0].definite and list(leaks[0].history) == sorted(set(leaks[0].history))
    logs = [p for p in sink.payloads if p.signal == "logs"]
    record = logs[-1].message().resource_logs[0].scope_logs[0].log_records[0]
    a = attrs(record)
    assert record.severity_text == "WARN" and "main.leakyWorker" in a["code.stacktrace"]
    assert a["gotel.goroutine.leak"] == "suspect" and a["gotel.wait_reason"] == "chan send"
    suspects = metric([p for p in sink.payloads if p.signal == "metrics"][-1], "gotel.goroutine.leak_suspects")
    assert suspects.gauge.data_points[0].as_int == g.count


def test_metrics_by_state_and_bounded_groups(program):
    proc = program("-n", "300", "-depth", "2")
    sink = Sink()
    rx = goruntime.create(None, goruntime.Config(pids=(proc.pid,), max_groups=3), sink)
    (payload,) = rx.collect()
    census = rx.targets[proc.pid].reader.read(stacks=False)
    by_state = metric(payload, "gotel.goroutine.count").gauge.data_points
    assert sum(p.as_int for p in by_state) == len(census.goroutines)
    chan = [p for p in by_state if attrs(p).get("gotel.wait_reason") == "chan receive"]
    assert chan and chan[0].as_int >= 301
    groups = metric(payload, "gotel.goroutine.group.count").gauge.data_points
    assert len(groups) == 4 and attrs(groups[-1]) == {"gotel.goroutine.group": "other"}
    biggest = attrs(groups[0])
    assert groups[0].as_int == 300 and biggest["gotel.wait_reason"] == "chan receive"
    res = {kv.key: kv.value for kv in payload.message().resource_metrics[0].resource.attributes}
    assert res["process.pid"].int_value == proc.pid and res["process.runtime.name"].string_value == "go"


def test_logs_go_through_the_file_and_otlp_exporters(program, tmp_path):
    proc = program("-leak")
    path = tmp_path / "logs.jsonl"
    fexp = file_exporter.create(Settings("file/logs"), file_exporter.Config(path=str(path)))
    with serve() as collector:
        gexp = otlp_grpc.create(Settings("otlp"), otlp_grpc.Config(endpoint=f"http://{collector.endpoint}"))

        class Fan:
            def consume(self, payload):
                fexp.export(payload)
                gexp.export(payload)

        for e in (fexp, gexp):
            e.start()
        rx = goruntime.create(None, goruntime.Config(pids=(proc.pid,), leak_threshold=0.2,
                                                     collection_interval=0.3), Fan())
        rx.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
                type(r).__name__ == "ExportLogsServiceRequest" for r in collector.requests):
            time.sleep(0.2)
        rx.shutdown()
        for e in (fexp, gexp):
            e.shutdown(5)
        logs = [r for r in collector.requests if type(r).__name__ == "ExportLogsServiceRequest"]
        assert logs and gexp.counters.get("sent_log_records", "logs") >= 1
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    records = [r for line in lines for rl in line.get("resourceLogs", [])
               for sl in rl["scopeLogs"] for r in sl["logRecords"]]
    assert records and "main.leakyWorker" in json.dumps(records[0])


def test_config_problems_are_listed():
    problems = goruntime.Config(pids=(-1,), collection_interval=0, max_depth=0).validate()
    assert len(problems) == 3 and all(p.startswith("receivers::goruntime") for p in problems)


def test_a_goruntime_only_configuration_runs_without_probes(program, tmp_path):
    """`gotel run -c` with only receivers::goruntime: no uprobe, metrics and leak logs in files,
    leaks in the summary."""
    from pipeline import config
    from pipeline.service import Service

    proc = program("-leak")
    cfg = config.loads(f"""
receivers:
  goruntime:
    pids: [{proc.pid}]
    collection_interval: 300ms
    leak_threshold: 200ms
exporters:
  file/metrics: {{path: {tmp_path}/metrics.jsonl}}
  file/logs: {{path: {tmp_path}/logs.jsonl}}
service:
  pipelines:
    metrics: {{receivers: [goruntime], exporters: [file/metrics]}}
    logs: {{receivers: [goruntime], exporters: [file/logs]}}
""")
    service = Service(cfg)
    service.start()
    try:
        assert service.receiver is None
        time.sleep(3.5)
    finally:
        service.shutdown(5)
    metrics = (tmp_path / "metrics.jsonl").read_text()
    assert "gotel.goroutine.count" in metrics and "gotel.goroutine.group.count" in metrics
    assert "main.leakyWorker" in (tmp_path / "logs.jsonl").read_text()
    text = service.summary().render()
    assert "leak suspect pid" in text and "main.leakyHandler" in text
    assert "logs (file/logs)" in text
