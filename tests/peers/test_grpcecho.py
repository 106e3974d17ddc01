"""A gRPC-go echo service (google.golang.org/grpc v1.85.0, tests/go/grpcecho), traced by gotel while
its own load generator calls it: a real program beyond the standard library, the case users
reported losing 75% of its throughput to another Go tracer. Its modules come from the module cache
`make peers` fills; the build itself is offline."""

import collections
import json
import subprocess

import pytest

import realpeers as peers
from pipeline import config
from pipeline.service import Service

pytestmark = [pytest.mark.bpf, pytest.mark.slow]


def test_a_traced_grpc_service_answers_every_call_and_shows_grpcs_goroutines(
        require_bpf, go_build, tmp_path):
    peers.binary("grpcecho.modules")                   # set-up downloaded the modules
    binary = go_build("grpcecho", "1.26")
    server = subprocess.Popen([str(binary), "serve"], stdout=subprocess.PIPE, text=True)
    try:
        addr = server.stdout.readline().strip()
        cfg = config.loads(f"""
receivers:
  goroutines: {{pids: [{server.pid}], collection_interval: 1s, ring_bytes: 67108864}}
processors:
  batch: {{timeout: 100ms}}
exporters:
  file/traces: {{path: "{tmp_path}/traces.jsonl"}}
  file/metrics: {{path: "{tmp_path}/metrics.jsonl"}}
service:
  pipelines:
    traces: {{receivers: [goroutines], processors: [batch], exporters: [file/traces]}}
    metrics: {{receivers: [goroutines], exporters: [file/metrics]}}
""")
        service = Service(cfg)
        service.start()
        try:
            load = subprocess.run([str(binary), "load", addr, "2", "16", "3"], capture_output=True,
                                  text=True, timeout=60)
        finally:
            service.shutdown(10.0)
    finally:
        server.kill()
        server.wait()
    # the 64 MiB ring holds the whole run's events even when a loaded machine stalls the poller
    assert service.receiver.source.lost == 0
    fields = load.stdout.split()
    requests, errors = int(fields[1]), int(fields[3])
    assert requests > 100 and errors == 0, load.stdout + load.stderr
    names, reasons = collections.Counter(), collections.Counter()
    for request in peers.read_jsonl(tmp_path / "traces.jsonl"):
        for rs in request["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    attrs = {kv["key"]: kv["value"] for kv in span.get("attributes", ())}
                    if "gotel.wait_reason" in attrs:
                        reasons[attrs["gotel.wait_reason"]["stringValue"]] += 1
                    else:
                        names[span["name"]] += 1
    grpc_goroutines = {n: c for n, c in names.items() if n.startswith("google.golang.org/grpc")}
    print(json.dumps({"requests": requests, "grpc goroutines": grpc_goroutines,
                      "parks": dict(reasons.most_common(6))}, indent=1))
    # grpc-go serves each call on a goroutine of its own (serveStreams' handler), so the spans
    # carry at least one per call, named by grpc's start functions
    assert sum(grpc_goroutines.values()) >= requests, grpc_goroutines
    assert reasons["IO wait"] > 0 and (reasons["select"] + reasons["chan receive"]) > 0, reasons
