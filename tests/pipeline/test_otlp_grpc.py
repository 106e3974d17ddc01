"""The OTLP/gRPC exporter against a real gRPC server on 127.0.0.1, port 0, built from
opentelemetry-proto's servicers, scripted to answer each call with success or a status."""

import logging
import socket
import subprocess
import time
from concurrent import futures

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

import otlp_server
import spanfactory
from pipeline.exporters import otlp_grpc
from pipeline.stage import Settings
from pipeline.exporters.base import Payload, QueueConfig

FAST_RETRY = otlp_grpc.RetryConfig(initial_interval=0.01, max_interval=0.05, max_elapsed_time=5.0)


@pytest.fixture
def collector():
    with otlp_server.serve() as c:
        yield c


def exporter(endpoint, retry=FAST_RETRY, queue=QueueConfig(num_consumers=2, queue_size=10), **kw):
    cfg = otlp_grpc.Config(endpoint=endpoint, tls=otlp_grpc.TLSConfig(insecure=True),
                           retry_on_failure=retry, sending_queue=queue, **kw)
    assert cfg.validate() == []
    e = otlp_grpc.create(Settings("otlp"), cfg)
    e.start()
    return e


def payload(n=10):
    data, count = spanfactory.encoder().encode_chunks(spanfactory.spans(n))[0]
    return Payload("traces", data, count)


def sent(e):
    c = e.counters
    return (c.get("sent_spans", "traces"), c.get("send_failed_spans", "traces"),
            c.get("enqueue_failed_spans", "traces"))


def test_success_with_headers_and_gzip(collector):
    e = exporter(collector.endpoint, headers={"X-Tenant": "blue"})
    e.export(payload(25))
    e.shutdown(5)
    assert sent(e) == (25, 0, 0)
    (request,) = collector.requests
    assert sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans) == 25
    assert collector.metadata[0]["x-tenant"] == "blue"
    assert otlp_grpc.Config().compression == "gzip" and e.compression == grpc.Compression.Gzip


def test_metrics_go_to_the_metrics_service(collector):
    from opentelemetry.proto.metrics.v1 import metrics_pb2

    request = metrics_service_pb2.ExportMetricsServiceRequest(resource_metrics=[
        metrics_pb2.ResourceMetrics(scope_metrics=[metrics_pb2.ScopeMetrics(metrics=[
            metrics_pb2.Metric(name="go.goroutine.count", sum=metrics_pb2.Sum(
                data_points=[metrics_pb2.NumberDataPoint(as_int=3)]))])])])
    e = exporter(collector.endpoint)
    e.export(Payload.of("metrics", request))
    e.shutdown(5)
    assert e.counters.get("sent_metric_points", "metrics") == 1
    assert collector.requests[0] == request


@pytest.mark.parametrize("code", sorted(otlp_grpc.RETRYABLE, key=lambda c: c.name))
def test_retryable_codes_are_retried_until_success(collector, code):
    collector.script = [("fail", code, None), ("fail", code, None), "ok"]
    e = exporter(collector.endpoint)
    e.export(payload())
    e.shutdown(5)
    assert sent(e) == (10, 0, 0)
    assert collector.calls == 3 and e.retries == 2


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED,
                                  grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INTERNAL,
                                  grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND])
def test_other_codes_are_not_retried(collector, code, caplog):
    collector.script = [("fail", code, None)]
    e = exporter(collector.endpoint)
    with caplog.at_level(logging.ERROR, "gotel.exporter"):
        e.export(payload())
        e.shutdown(5)
    assert sent(e) == (0, 10, 0)
    assert collector.calls == 1
    assert f"{code.name}" in caplog.text and "not retryable" in caplog.text


def test_resource_exhausted_without_retry_info_is_not_retried(collector):
    collector.script = [("fail", grpc.StatusCode.RESOURCE_EXHAUSTED, None)]
    e = exporter(collector.endpoint)
    e.export(payload())
    e.shutdown(5)
    assert sent(e) == (0, 10, 0) and collector.calls == 1


def test_resource_exhausted_with_retry_info_waits_the_given_delay(collector):
    collector.script = [("fail", grpc.StatusCode.RESOURCE_EXHAUSTED, 0.3), "ok"]
    e = exporter(collector.endpoint)
    e.export(payload())
    e.shutdown(5)
    assert sent(e) == (10, 0, 0) and collector.calls == 2
    assert collector.times[1] - collector.times[0] >= 0.29


def test_partial_success_is_logged_and_the_rest_counted_sent(collector, caplog):
    collector.script = [("partial", 3, "3 spans too old")]
    e = exporter(collector.endpoint)
    with caplog.at_level(logging.WARNING, "gotel.exporter"):
        e.export(payload())
        e.shutdown(5)
    assert sent(e) == (10, 0, 0) and e.rejected["traces"] == 3
    assert "rejected 3 of 10 spans: 3 spans too old" in caplog.text


def test_gives_up_after_max_elapsed_time(collector):
    collector.script = [("fail", grpc.StatusCode.UNAVAILABLE, None)] * 100
    retry = otlp_grpc.RetryConfig(initial_interval=0.05, max_interval=0.05, max_elapsed_time=0.3)
    e = exporter(collector.endpoint, retry=retry)
    e.export(payload())
    e.shutdown(5)
    assert sent(e) == (0, 10, 0)
    assert 3 <= collector.calls <= 9


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_collector_logs_one_line_keeps_data_queued_and_never_raises(caplog):
    retry = otlp_grpc.RetryConfig(initial_interval=0.02, max_interval=0.05, max_elapsed_time=60)
    e = exporter(f"127.0.0.1:{free_port()}", retry=retry,
                 queue=QueueConfig(num_consumers=1, queue_size=10))
    with caplog.at_level(logging.WARNING, "gotel.exporter"):
        for _ in range(4):
            assert e.export(payload())
        deadline = time.monotonic() + 5
        while e.queue_size() != 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert e.queue_size() == 3            # one in the retry loop, the rest queued
        assert sent(e) == (0, 0, 0)
        t0 = time.monotonic()
        e.shutdown(0.5)
        assert time.monotonic() - t0 < 2.0
    lines = [r.getMessage() for r in caplog.records]
    unreachable = [m for m in lines if "cannot reach the collector" in m]
    assert len(unreachable) == 1, lines
    assert "127.0.0.1" in unreachable[0] and "\n" not in unreachable[0]
    assert sent(e) == (0, 40, 0)               # nothing lost silently


def test_a_full_queue_drops_and_counts(collector):
    collector.script = [("block",)]
    e = exporter(collector.endpoint, queue=QueueConfig(num_consumers=1, queue_size=2))
    assert e.export(payload())
    assert collector.got_call.wait(5)          # the only worker is busy with the first request
    results = [e.export(payload()) for _ in range(4)]
    assert results == [True, True, False, False]
    assert e.queue_size() == 2 and e.queue_capacity() == 2
    collector.release.set()
    e.shutdown(5)
    assert sent(e) == (30, 0, 20)


def test_shutdown_interrupts_a_retry_and_is_idempotent(collector):
    collector.script = [("fail", grpc.StatusCode.UNAVAILABLE, None)] * 10
    retry = otlp_grpc.RetryConfig(initial_interval=30, max_interval=30, max_elapsed_time=300)
    e = exporter(collector.endpoint, retry=retry)
    e.export(payload())
    assert collector.got_call.wait(5)
    time.sleep(0.1)                            # now waiting out a 15-45 s back-off
    t0 = time.monotonic()
    e.shutdown(0.3)
    assert time.monotonic() - t0 < 1.5
    e.shutdown(0.3)
    assert sent(e) == (0, 10, 0) and collector.calls == 1
    assert not e.export(payload())             # after shutdown: refused and counted
    assert sent(e)[2] == 10


def test_shutdown_flushes_what_is_queued(collector):
    e = exporter(collector.endpoint, queue=QueueConfig(num_consumers=1, queue_size=100))
    for _ in range(20):
        e.export(payload(5))
    e.shutdown(10)
    assert sent(e) == (100, 0, 0) and len(collector.requests) == 20


def test_retry_delay_parser_reads_only_retry_info():
    class Err:
        def __init__(self, details):
            self.details = details

        def trailing_metadata(self):
            return (("grpc-status-details-bin", self.details),)

    status = status_pb2.Status(code=8)
    status.details.add().Pack(error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000)))
    assert otlp_grpc.retry_delay(Err(status.SerializeToString())) == 2.5
    other = status_pb2.Status(code=8)
    other.details.add().Pack(error_details_pb2.DebugInfo(detail="x"))
    assert otlp_grpc.retry_delay(Err(other.SerializeToString())) is None
    assert otlp_grpc.retry_delay(Err(b"\xff\xff")) is None


@pytest.mark.parametrize("kw,problem", [
    ({"endpoint": "nohost"}, "endpoint must be host:port"),
    ({"endpoint": "localhost:99999"}, "endpoint must be host:port"),
    ({"endpoint": "localhost:4317/v1/traces"}, "must not have a path"),
    ({"timeout": 0}, "timeout must be > 0"),
    ({"headers": {"bad key": "v"}}, "invalid header name"),
])
def test_config_problems(kw, problem):
    problems = otlp_grpc.Config(**kw).validate()
    assert any(problem in p for p in problems), problems


def test_endpoint_schemes():
    assert otlp_grpc.Config(endpoint="http://c:4317").target() == ("c:4317", False)
    assert otlp_grpc.Config(endpoint="https://c:4317").target() == ("c:4317", True)
    assert otlp_grpc.Config(endpoint="c:4317").target() == ("c:4317", True)
    assert otlp_grpc.Config(endpoint="c:4317", tls=otlp_grpc.TLSConfig(insecure=True)).target() \
        == ("c:4317", False)


def test_tls_with_a_ca_file(tmp_path):
    """A TLS server with a self-signed certificate for localhost; the exporter trusts it via ca_file."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    c = otlp_server.Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(c, server)
    creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = server.add_secure_port("localhost:0", creds)
    server.start()
    try:
        cfg = otlp_grpc.Config(endpoint=f"localhost:{port}", tls=otlp_grpc.TLSConfig(ca_file=str(cert)),
                               retry_on_failure=FAST_RETRY)
        assert cfg.validate() == [] and cfg.target() == (f"localhost:{port}", True)
        e = otlp_grpc.create(Settings("otlp"), cfg)
        e.start()
        e.export(payload())
        e.shutdown(5)
        assert sent(e) == (10, 0, 0) and len(c.requests) == 1
        plain = exporter(f"localhost:{port}", retry=otlp_grpc.RetryConfig(enabled=False))
        plain.export(payload())                    # plaintext to a TLS server: refused, counted
        plain.shutdown(5)
        assert sent(plain) == (0, 10, 0)
    finally:
        server.stop(0)
