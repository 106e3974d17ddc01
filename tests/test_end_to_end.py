"""End to end: a real Go program, launched and traced by gotel with real uprobes, exported over
OTLP/gRPC to a real server on a loopback port; the spans are checked against the Go runtime's own
execution tracer of the same run (tests/oracle.py)."""

import collections
import os
import signal
import subprocess
import sys
import time

import pytest

import oracle
import otlp_server
from pipeline import config
from pipeline.app import demo
from pipeline.app.runner import run_service

REQUIRED_METRICS = {
    "go.goroutine.count", "go.schedule.duration", "go.goroutine.created", "go.goroutine.exited",
    "go.goroutine.park.duration", "go.goroutine.lifetime",
    "otelcol_receiver_accepted_events", "otelcol_receiver_accepted_spans",
    "otelcol_exporter_sent_spans", "otelcol_exporter_queue_size",
}


def attrs(kvs):
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in kvs}


@pytest.fixture(scope="module")
def run(require_bpf, go_build, tmp_path_factory):
    """Trace the oracle program (every scenario, with its own runtime/trace on) into a server."""
    binary = go_build("oracle", "1.25")
    trace_file = tmp_path_factory.mktemp("e2e") / "oracle.trace"
    with otlp_server.serve() as server:
        cfg = config.loads(f"""
receivers:
  goroutines:
    command: ["{binary}", -trace, "{trace_file}", all]
processors:
  batch: {{timeout: 50ms}}
exporters:
  otlp:
    endpoint: {server.endpoint}
    tls: {{insecure: true}}
service:
  pipelines:
    traces: {{receivers: [goroutines], processors: [batch], exporters: [otlp]}}
    metrics: {{receivers: [goroutines], exporters: [otlp]}}
""")
        service = run_service(cfg, duration=120, summary=False)
    return binary, trace_file, service, server


def spans_of(server):
    out = []
    for request in server.requests:
        for rs in getattr(request, "resource_spans", ()):
            res = attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                out += [(res, span) for span in ss.spans]
    return out


@pytest.mark.bpf
@pytest.mark.slow
def test_spans_arrive_with_the_process_resource(run):
    binary, _, service, server = run
    spans = spans_of(server)
    assert len(spans) > 1000
    (proc,) = list(service.processes)
    for res, _ in spans[:50]:
        assert res["service.name"] == "example.com/gotel/oracle"
        assert res["process.pid"] == proc.pid
        assert res["process.executable.path"] == str(binary)
        assert res["process.runtime.name"] == "go"
        assert res["process.runtime.version"].startswith("go1.25")
        assert res["telemetry.sdk.name"] == "gotel"
        assert res["process.creation.time"].endswith("Z") and res["host.name"]
    assert service.receiver.source.lost == 0
    sent = service.exporters["otlp"].counters
    assert sent.get("sent_spans", "traces") == len(spans)
    assert sent.get("send_failed_spans", "traces") == 0


@pytest.mark.bpf
@pytest.mark.slow
def test_every_parent_resolves_within_its_trace_or_is_a_link_and_times_are_ordered(run):
    spans = [span for _, span in spans_of(run[3])]
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    assert len(by_id) == len(spans)                                  # ids unique
    roots = 0
    for s in spans:
        assert len(s.trace_id) == 16 and len(s.span_id) == 8 and any(s.trace_id) and any(s.span_id)
        assert s.kind == s.SPAN_KIND_INTERNAL
        assert s.start_time_unix_nano <= s.end_time_unix_nano
        for link in s.links:
            assert (link.trace_id, link.span_id) in by_id
        if not s.parent_span_id:
            roots += 1
            continue
        parent = by_id.get((s.trace_id, s.parent_span_id))
        assert parent is not None, s.name
        assert parent.start_time_unix_nano <= s.start_time_unix_nano
        if "gotel.wait_reason" in attrs(s.attributes):            # a park inside its goroutine
            assert s.end_time_unix_nano <= parent.end_time_unix_nano
    assert 0 < roots < len(spans) / 10


@pytest.mark.bpf
@pytest.mark.slow
def test_the_span_tree_is_the_go_tracers_goroutine_tree(run):
    _, trace_file, service, server = run
    trace = oracle.go_tool_trace(trace_file)
    spans = [span for _, span in spans_of(server)]
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    goroutines, parks = {}, collections.defaultdict(list)
    for s in spans:
        a = attrs(s.attributes)
        if "gotel.wait_reason" in a:
            parks[a["gotel.goroutine.id"]].append((s.start_time_unix_nano, a))
        elif not a.get("gotel.goroutine.continued"):
            goroutines[a["gotel.goroutine.id"]] = (s, a)
    compared = same_tree = same_parks = 0
    offset = service.receiver.source.clock.offset_ns
    for goid, t in trace.goroutines.items():
        compared += 1
        span, a = goroutines[goid]
        parent = by_id.get((span.trace_id, span.parent_span_id))
        parent_goid = attrs(parent.attributes)["gotel.goroutine.id"] if parent else a[
            "gotel.goroutine.parent_id"]
        same_tree += a["gotel.goroutine.parent_id"] == t.parent and parent_goid == t.parent
        # Parks the tracer logs: not the runtime's internal waits (no ready: no runnable time),
        # and inside the tracer's window.
        mine = [p["gotel.wait_reason"] for ts, p in sorted(parks[goid], key=lambda park: park[0])
                if p["gotel.park.runnable_ns"] > 0 and (trace.mono_end is None
                                                        or ts - offset <= trace.mono_end)]
        same_parks += len(mine) == len(t.parks) and all(
            oracle.same_reason(x, y) for x, y in zip(t.parks, mine))
    print(f"oracle: {compared} goroutines, same tree {same_tree}, same parks {same_parks}")
    assert compared >= 370
    assert same_tree == compared
    assert same_parks >= 0.99 * compared, (same_parks, compared)


@pytest.mark.bpf
@pytest.mark.slow
def test_metrics_are_present_with_the_required_names(run):
    names = set()
    for request in run[3].requests:
        for rm in getattr(request, "resource_metrics", ()):
            for sm in rm.scope_metrics:
                names.update(m.name for m in sm.metrics)
    assert REQUIRED_METRICS <= names, REQUIRED_METRICS - names


@pytest.mark.bpf
@pytest.mark.slow
def test_the_traced_program_behaves_as_untraced(run, tmp_path):
    binary = run[0]
    plain = subprocess.run([str(binary), "-trace", str(tmp_path / "t.out"), "all"],
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and run[2].receiver.command.popen.returncode == 0


@pytest.mark.bpf
@pytest.mark.slow
def test_sigterm_flushes_prints_the_summary_and_exits(require_bpf, tmp_path):
    binary = demo.build()
    out_dir = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.app.cli", "trace", "--out", str(out_dir), "--", str(binary),
         "-duration", "60s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(demo.SOURCE.parents[1])})
    traces = out_dir / "traces.jsonl"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (traces.exists() and traces.stat().st_size):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "gotel summary" in out and "net/http.(*conn).serve" in out
    assert f"wrote       {traces}" in out
    lines = traces.read_text().splitlines()
    assert lines and all(line.startswith('{"resourceSpans":[') for line in lines)
    assert (out_dir / "metrics.jsonl").read_text().count("go.goroutine.count") >= 1
