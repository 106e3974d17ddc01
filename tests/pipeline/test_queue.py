"""Sending queues: the on-disk queue survives a crash (a request is wholly there or absent) and a
restart, keeps its order, and is locked by one gotel at a time; with it, the OTLP exporter waits
out a collector outage longer than max_elapsed_time, leaves what it could not send on disk at
shutdown, and a new exporter (gotel restarted) sends it when the collector is back. Without it,
what is left at shutdown is counted as failed, with the reason."""

import time

import pytest

import otlp_server
import spanfactory
from pipeline.exporters import otlp_grpc
from pipeline.exporters.base import Payload
from pipeline.exporters.queue import PersistentQueue, QueueConfig, storage_folder
from pipeline.stage import Settings
from receiver.errors import ConfigError

FAST_RETRY = otlp_grpc.RetryConfig(initial_interval=0.05, max_interval=0.2, max_elapsed_time=0.5)


def payload(n=10, signal="traces"):
    data, count = spanfactory.encoder().encode_chunks(spanfactory.spans(n))[0]
    return Payload(signal, data, count)


def test_persistent_queue_survives_a_crash_in_order(tmp_path):
    q = PersistentQueue(10, tmp_path, Payload)
    sent = [payload(n) for n in (3, 5, 7)]
    for p in sent:
        assert q.put(p)
    taken = q.get(0)                         # a worker held it when gotel died: not acked
    assert taken.payload.data == sent[0].data
    (tmp_path / "0000000000000099.traces.4.tmp").write_bytes(b"half a reque")  # a cut write
    q.close()                                # the process ends without acking anything
    q2 = PersistentQueue(10, tmp_path, Payload)
    assert q2.recovered == (3, 15)
    got = [q2.get(0) for _ in range(3)]
    assert [g.payload.data for g in got] == [p.data for p in sent]
    assert [g.payload.count for g in got] == [3, 5, 7]
    assert not list(tmp_path.glob("*.tmp"))
    for g in got:
        q2.ack(g)
    assert not list(tmp_path.glob("*.req"))
    assert q2.put(payload(2))                # numbering continues after the recovered ones
    q2.close()


def test_persistent_queue_is_bounded_and_locked(tmp_path):
    q = PersistentQueue(2, tmp_path, Payload)
    assert q.put(payload()) and q.put(payload())
    assert not q.put(payload())
    with pytest.raises(ConfigError, match="in use by another gotel"):
        PersistentQueue(2, tmp_path, Payload)
    item = q.get(0)
    q.keep(item)                             # back at the head, still on disk
    assert q.get(0).path == item.path
    q.close()


def test_storage_must_be_a_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    assert any("not a directory" in p for p in QueueConfig(storage=str(tmp_path / "f")).validate())


def exporter(endpoint, storage="", timeout=0.5):
    cfg = otlp_grpc.Config(endpoint=endpoint, tls=otlp_grpc.TLSConfig(insecure=True),
                           retry_on_failure=FAST_RETRY, timeout=1.0, shutdown_timeout=timeout,
                           sending_queue=QueueConfig(num_consumers=2, queue_size=100,
                                                     storage=storage))
    assert cfg.validate() == []
    e = otlp_grpc.create(Settings("otlp/primary"), cfg)
    e.start()
    return e


def test_outage_across_a_restart_loses_nothing(tmp_path):
    """Collector down longer than max_elapsed_time; gotel stops (requests stay on disk), starts
    again, and the collector comes back: every span arrives exactly once."""
    port = otlp_server.free_port()
    storage = tmp_path / "queue"
    e = exporter(f"127.0.0.1:{port}", str(storage))
    total = 0
    for n in range(1, 21):
        assert e.export(payload(n))
        total += n
    time.sleep(1.5)                          # 3x max_elapsed_time: no request is given up
    e.shutdown(0.5)
    assert e.counters.get("sent_spans", "traces") == 0
    assert e.counters.get("send_failed_spans", "traces") == 0
    assert e.left == {"traces": (20, total)}
    assert "UNAVAILABLE" in e.last_failure
    assert len(list(storage_folder(storage, "otlp/primary").glob("*.req"))) == 20
    with otlp_server.serve(port) as collector:
        e2 = exporter(collector.endpoint, str(storage), timeout=10)
        deadline = time.monotonic() + 30
        while otlp_server.spans_received(collector) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        e2.shutdown(10)
        assert otlp_server.spans_received(collector) == total
    assert e2.counters.get("sent_spans", "traces") == total
    assert e2.left == {}
    assert not list(storage_folder(storage, "otlp/primary").glob("*.req"))


def test_without_storage_what_is_left_is_counted_with_its_reason():
    port = otlp_server.free_port()
    e = exporter(f"127.0.0.1:{port}")
    for _ in range(5):
        e.export(payload(4))
    e.shutdown(0.3)
    assert e.counters.get("send_failed_spans", "traces") == 20
    assert e.counters.get("sent_spans", "traces") == 0
    assert "UNAVAILABLE" in e.last_failure and e.left == {}
