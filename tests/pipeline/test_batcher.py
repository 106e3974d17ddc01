"""Batcher: the Collector batch processor's semantics, on a fake clock."""

import numpy as np
from hypothesis import given, settings, strategies as st

from pipeline.processors import batch as batcher
from pipeline.spans import SPAN_DTYPE
from pipeline.stage import Stage


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Sink(Stage):
    def __init__(self):
        super().__init__()
        self.batches = []

    def consume(self, batch):
        self.batches.append(batch.copy())


def spans(n, start=0):
    s = np.zeros(n, SPAN_DTYPE)
    s["span_id"] = np.arange(start + 1, start + n + 1)
    return s


def make(**kw):
    clock, sink = Clock(), Sink()
    return batcher.Batcher(batcher.Config(**kw), sink, clock=clock), sink, clock


def test_sends_as_soon_as_send_batch_size_is_reached():
    b, sink, _ = make(send_batch_size=100)
    b.consume(spans(60))
    assert sink.batches == []
    b.consume(spans(60, 60))
    assert [len(x) for x in sink.batches] == [120]
    assert b.held() == 0


def test_holds_until_the_timeout_after_the_first_span():
    b, sink, clock = make(send_batch_size=100, timeout=0.25)
    b.consume(spans(10))
    clock.now += 0.125
    b.consume(spans(10, 10))
    b.tick()
    assert sink.batches == []
    clock.now += 0.125
    b.tick()
    assert [len(x) for x in sink.batches] == [20]
    clock.now += 5
    b.tick()
    assert len(sink.batches) == 1          # nothing held, nothing sent


def test_the_timer_also_fires_on_consume():
    b, sink, clock = make(send_batch_size=100, timeout=0.2)
    b.consume(spans(10))
    clock.now += 0.3
    b.consume(spans(10, 10))
    assert [len(x) for x in sink.batches] == [20]
    assert b.sent_by_timeout == 1


def test_timeout_zero_sends_every_input():
    b, sink, _ = make(send_batch_size=100, timeout=0)
    b.consume(spans(3))
    b.consume(spans(4, 3))
    assert [len(x) for x in sink.batches] == [3, 4]


def test_send_batch_max_size_splits_and_keeps_the_rest_for_later():
    b, sink, clock = make(send_batch_size=100, send_batch_max_size=150, timeout=0.2)
    b.consume(spans(420))
    # 150, 150 are sent; 120 >= 100 so it goes too; nothing below send_batch_size remains.
    assert [len(x) for x in sink.batches] == [150, 150, 120]
    b.consume(spans(90, 420))
    b.consume(spans(80, 510))
    assert [len(x) for x in sink.batches][3:] == [150]
    assert b.held() == 20
    clock.now += 0.2
    b.tick()
    assert [len(x) for x in sink.batches][4:] == [20]


def test_byte_cap_limits_a_request_and_learns_the_real_size():
    b, sink, _ = make(send_batch_size=8192, send_batch_max_bytes=100_000, bytes_per_span=100)
    assert b.max_items == 1000
    b.consume(spans(8192))
    assert max(len(x) for x in sink.batches) == 1000
    b.observe_size(1000, 400_000)      # the encoder saw 400 bytes a span: the cap tightens at once
    assert b.max_items == 250
    for _ in range(50):
        b.observe_size(1000, 100_000)  # and loosens slowly
    assert 250 < b.max_items <= 1000


def test_shutdown_flushes_everything_in_capped_requests():
    b, sink, _ = make(send_batch_size=100, send_batch_max_size=100)
    b.consume(spans(30))
    b.shutdown(1.0)
    assert [len(x) for x in sink.batches] == [30]


def test_config_validation():
    assert batcher.Config().validate() == []
    assert batcher.Config(send_batch_size=100, send_batch_max_size=10).validate() == [
        "send_batch_max_size must be >= send_batch_size"]
    problems = batcher.Config(send_batch_size=0, timeout=-1, send_batch_max_size=-1,
                              send_batch_max_bytes=10, bytes_per_span=1).validate()
    assert problems == ["send_batch_size must be >= 1", "timeout must be >= 0",
                        "send_batch_max_size must be >= 0 (0: no limit)",
                        "send_batch_max_bytes must be >= 65536", "bytes_per_span must be >= 16"]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.floats(0, 0.5)), max_size=30),
       st.integers(1, 200), st.integers(0, 3))
def test_every_span_goes_out_once_in_order_and_within_the_caps(inputs, size, extra):
    max_size = size * extra                       # 0: no limit, else >= size
    b, sink, clock = make(send_batch_size=size, send_batch_max_size=max_size, timeout=0.2)
    start = 0
    for n, dt in inputs:
        clock.now += dt
        b.tick()
        b.consume(spans(n, start))
        start += n
    b.shutdown(1.0)
    out = np.concatenate([x["span_id"] for x in sink.batches]) if sink.batches else np.zeros(0)
    assert out.tolist() == list(range(1, start + 1))
    if max_size:
        assert all(len(x) <= max_size for x in sink.batches)
