"""GoRuntimeMetrics: vectorized exponential histograms and counters, encoded as OTLP."""

import math

import numpy as np
import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from pipeline.metrics import Config, GoRuntimeMetrics

U8 = np.uint64


class Names:
    def function(self, pid, pc):
        return {0x10: "main.worker", 0x11: "main.worker", 0x20: "net/http.(*conn).serve"}.get(pc, "?")

    def wait_reason(self, pid, reason):
        return {14: "chan receive", 9: "select"}.get(reason, f"waitReason({reason})")


def resource_for(pid):
    return Resource(attributes=[KeyValue(key="process.pid", value=AnyValue(int_value=pid))])


def metrics_by_name(request):
    out = {}
    for rm in request.resource_metrics:
        pid = rm.resource.attributes[0].value.int_value
        for m in rm.scope_metrics[0].metrics:
            out[(pid, m.name)] = m
    return out


def expected_index(x, scale):
    """OTLP: bucket i holds (base**i, base**(i+1)], base = 2**(2**-scale)."""
    return math.ceil(math.log2(x) * 2**scale) - 1


def test_exponential_histogram_buckets_follow_otlp():
    m = GoRuntimeMetrics(clock=lambda: 1000)
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.integers(1_000, 50_000, 500), [0, 0, 4096]]).astype(U8)  # ns
    m.record_schedule(np.full(values.size, 7, np.uint32), values)
    dp = metrics_by_name(m.to_request(resource_for, Names(), now_ns=2000))[
        (7, "go.schedule.duration")].exponential_histogram.data_points[0]
    assert dp.count == values.size and dp.zero_count == 2
    assert dp.sum == pytest.approx(values.sum() / 1e9)
    assert dp.min == 0 and dp.max == pytest.approx(values.max() / 1e9)
    assert dp.start_time_unix_nano == 1000 and dp.time_unix_nano == 2000
    assert len(dp.positive.bucket_counts) <= 160
    expect = {}
    for v in values[values > 0]:
        i = expected_index(v / 1e9, dp.scale)
        expect[i] = expect.get(i, 0) + 1
    got = {dp.positive.offset + i: c for i, c in enumerate(dp.positive.bucket_counts) if c}
    assert got == expect


def test_wide_ranges_are_downscaled_to_fit():
    m = GoRuntimeMetrics(Config(max_buckets=20))
    values = np.array([1_000, 10**6, 10**9, 10**12], U8)   # 1 us .. 1000 s
    m.record_park(np.full(4, 1, np.uint32), np.full(4, 14, np.uint8), values)
    dp = metrics_by_name(m.to_request(resource_for, Names()))[
        (1, "go.goroutine.park.duration")].exponential_histogram.data_points[0]
    assert len(dp.positive.bucket_counts) <= 20 and dp.scale < 4
    got = {dp.positive.offset + i: c for i, c in enumerate(dp.positive.bucket_counts) if c}
    assert got == {expected_index(v / 1e9, dp.scale): 1 for v in values}
    assert dp.attributes[0].key == "gotel.wait_reason"
    assert dp.attributes[0].value.string_value == "chan receive"


def test_counters_by_start_function_and_goroutine_count_per_process():
    m = GoRuntimeMetrics()
    pid = np.array([1, 1, 1, 2], np.uint32)
    pcs = np.array([0x10, 0x11, 0x20, 0x10], U8)
    m.record_new(pid, pcs, np.array([True, True, True, False]))
    m.record_exit(pid[:2], pcs[:2], np.array([10**9, 3 * 10**9], U8), np.array([True, True]))
    by = metrics_by_name(m.to_request(resource_for, Names()))
    count = by[(1, "go.goroutine.count")]
    assert count.unit == "{goroutine}" and not count.sum.is_monotonic
    assert count.sum.data_points[0].as_int == 1 and by[(2, "go.goroutine.count")].sum.data_points[0].as_int == 1
    created = {dp.attributes[0].value.string_value: dp.as_int
               for dp in by[(1, "go.goroutine.created")].sum.data_points}
    assert created == {"main.worker": 2, "net/http.(*conn).serve": 1}    # two PCs, one function
    assert (2, "go.goroutine.created") not in by                        # EXISTING is not a creation
    life = by[(1, "go.goroutine.lifetime")].exponential_histogram.data_points[0]
    assert life.count == 2 and life.sum == pytest.approx(4.0)
    assert life.attributes[0].value.string_value == "main.worker"
    assert m.goroutine_count(1) == 1 and m.goroutine_count(99) == 0
    assert {rm.resource.attributes[0].value.int_value
            for rm in m.to_request(resource_for, Names()).resource_metrics} == {1, 2}


def test_recording_accumulates_across_batches():
    m = GoRuntimeMetrics()
    for _ in range(3):
        m.record_park(np.array([1, 1, 1], np.uint32), np.array([14, 9, 14], np.uint8),
                      np.array([100, 200, 300], U8))
    snap = m.snapshot(Names())["go.goroutine.park.duration"]
    assert snap[(1, "chan receive")]["count"] == 6 and snap[(1, "select")]["count"] == 3
    assert snap[(1, "chan receive")]["sum"] == pytest.approx(1200 / 1e9)


def test_empty_metrics_encode_to_an_empty_request():
    assert len(GoRuntimeMetrics().to_request(resource_for, Names()).resource_metrics) == 0


def test_a_forgotten_process_leaves_no_series():
    m = GoRuntimeMetrics()
    for pid in (1, 2):
        m.record_new(np.array([pid], np.uint32), np.array([0x10], U8), np.array([True]))
        m.record_park(np.array([pid], np.uint32), np.array([14], np.uint8), np.array([500], U8))
    m.forget(1)
    assert {rm.resource.attributes[0].value.int_value
            for rm in m.to_request(resource_for, Names()).resource_metrics} == {2}
    m.record_park(np.array([3], np.uint32), np.array([14], np.uint8), np.array([700], U8))
    dp = metrics_by_name(m.to_request(resource_for, Names()))[
        (3, "go.goroutine.park.duration")].exponential_histogram.data_points[0]
    assert dp.count == 1 and sum(dp.positive.bucket_counts) == 1    # no counts left from pid 1
