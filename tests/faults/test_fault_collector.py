"""Collector faults: down for 10 s while a real Go program is traced, down across a gotel restart
(the queue on disk), answering UNAVAILABLE, RESOURCE_EXHAUSTED with and without RetryInfo, and never
answering. The oracle is the file exporter fed by the same pipeline: spans the collector received
must equal spans written to the file, or the shortfall must be exactly what gotel counted."""

import time

import grpc
import pytest

from faultkit import config_text, file_spans, service_for  # first: it puts tests/pipeline on the path
import otlp_server  # noqa: E402
import spanfactory  # noqa: E402
from pipeline.exporters import otlp_grpc
from pipeline.exporters.base import Payload
from pipeline.exporters.queue import QueueConfig
from pipeline.stage import Settings


def counts(service, eid="otlp"):
    c = service.exporters[eid].counters
    return (c.get("sent_spans", "traces"), c.get("send_failed_spans", "traces")
            + c.get("enqueue_failed_spans", "traces"))


@pytest.mark.bpf
def test_collector_down_10s_then_back(require_bpf, go_build, tmp_path, figure):
    binary = go_build("lingerer")
    port = otlp_server.free_port()
    service = service_for(config_text(tmp_path, otlp=f"127.0.0.1:{port}"),
                          command=[str(binary), "-for", "14s"])
    service.start()
    try:
        time.sleep(10)                              # the collector is down all this time
        with otlp_server.serve(port) as collector:
            service.wait(60)
            service.shutdown(20)
            received = otlp_server.spans_received(collector)
    finally:
        service.shutdown(5)
    written = len(file_spans(tmp_path / "traces.jsonl"))
    sent, failed = counts(service)
    figure("collector down 10 s: spans produced (file)", written)
    figure("collector down 10 s: spans received by the collector", received)
    figure("collector down 10 s: spans lost (counted)", failed)
    assert written > 100
    assert received == sent == written and failed == 0
    assert service.losses() == []


@pytest.mark.bpf
def test_collector_down_across_a_gotel_restart(require_bpf, go_build, tmp_path, figure):
    """gotel stops while the collector is down (its queue stays on disk), starts again, and the
    collector comes back: both runs' spans arrive, once each."""
    binary = go_build("lingerer")
    port = otlp_server.free_port()
    storage = tmp_path / "queue"
    first = service_for(config_text(tmp_path / "run1", otlp=f"127.0.0.1:{port}", storage=storage),
                        command=[str(binary), "-for", "3s"])
    first.start()
    first.wait(60)
    first.shutdown(5)
    left = first.exporters["otlp"].left.get("traces", (0, 0))[1]
    run1 = len(file_spans(tmp_path / "run1" / "traces.jsonl"))
    assert left == run1 > 0 and first.losses() == []
    with otlp_server.serve(port) as collector:
        second = service_for(config_text(tmp_path / "run2", otlp=f"127.0.0.1:{port}",
                                         storage=storage, shutdown_timeout="20s"),
                             command=[str(binary), "-for", "1s"])
        second.start()
        second.wait(60)
        second.shutdown(20)
        received = otlp_server.spans_received(collector)
    run2 = len(file_spans(tmp_path / "run2" / "traces.jsonl"))
    figure("across a restart: spans left on disk by the first run", left)
    figure("across a restart: spans produced by both runs (files)", run1 + run2)
    figure("across a restart: spans received", received)
    assert received == run1 + run2
    assert second.exporters["otlp"].left == {} and second.losses() == []


def exporter(endpoint, **kw):
    cfg = otlp_grpc.Config(endpoint=endpoint, tls=otlp_grpc.TLSConfig(insecure=True),
                           timeout=kw.pop("timeout", 1.0),
                           retry_on_failure=otlp_grpc.RetryConfig(
                               initial_interval=0.05, max_interval=0.2,
                               max_elapsed_time=kw.pop("max_elapsed", 5.0)),
                           sending_queue=QueueConfig(num_consumers=2, queue_size=100))
    e = otlp_grpc.create(Settings("otlp"), cfg)
    e.start()
    return e


def payloads(n, spans=7):
    data, count = spanfactory.encoder().encode_chunks(spanfactory.spans(spans))[0]
    return [Payload("traces", data, count) for _ in range(n)]


@pytest.mark.parametrize("answer,delivered", [
    (("fail", grpc.StatusCode.UNAVAILABLE, None), True),
    (("fail", grpc.StatusCode.RESOURCE_EXHAUSTED, 0.1), True),      # with RetryInfo: retried
    (("fail", grpc.StatusCode.RESOURCE_EXHAUSTED, None), False),    # without: dropped, counted
], ids=["unavailable", "resource_exhausted_retry_info", "resource_exhausted"])
def test_collector_answers_with_errors(answer, delivered, figure):
    with otlp_server.serve() as collector:
        collector.script = [answer] * 6
        e = exporter(collector.endpoint)
        batch = payloads(10)
        for p in batch:
            assert e.export(p)
        e.shutdown(15)
        received = otlp_server.spans_received(collector)
    total = sum(p.count for p in batch)
    sent = e.counters.get("sent_spans", "traces")
    failed = e.counters.get("send_failed_spans", "traces")
    figure(f"{answer[1].name}: spans exported / received / counted lost", f"{total} / {received} / {failed}")
    assert received == sent and sent + failed == total
    if delivered:
        assert received == total
    else:
        assert failed == 6 * 7 and answer[1].name in e.last_failure


def test_collector_never_answers(figure):
    """Every call hangs: each attempt times out (DEADLINE_EXCEEDED, retried) until
    max_elapsed_time; shutdown is not held up, and every span is counted as not delivered."""
    with otlp_server.serve() as collector:
        collector.script = [("block",)] * 1000
        e = exporter(collector.endpoint, timeout=0.3, max_elapsed=1.0)
        batch = payloads(4)
        for p in batch:
            e.export(p)
        started = time.monotonic()
        e.shutdown(3)
        took = time.monotonic() - started
        collector.release.set()
    failed = e.counters.get("send_failed_spans", "traces")
    figure("never answering: spans counted lost", failed)
    figure("never answering: shutdown took", round(took, 2), "s")
    assert failed == sum(p.count for p in batch)
    assert "DEADLINE_EXCEEDED" in e.last_failure
    assert took < 15                   # bounded by the shutdown timeout, not by the collector
