"""The prometheus exporter: OTLP -> Prometheus names, units, labels and histograms, served over real
HTTP and linted by Debian's promtool (the exposition format's own checker)."""

import shutil
import subprocess
import urllib.request

import numpy as np
import pytest
from google.protobuf.internal.decoder import _DecodeVarint
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb

from pipeline import config as config_mod
from pipeline.exporters import prometheus
from pipeline.exporters.base import Payload
from pipeline.stage import Settings


def kv(key, value):
    v = AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)
    return KeyValue(key=key, value=v)


@pytest.mark.parametrize("name, unit, kind, expected", [
    ("go.goroutine.count", "{goroutine}", "gauge", "go_goroutine_count"),
    ("go.goroutine.created", "{goroutine}", "counter", "go_goroutine_created_total"),
    ("go.schedule.duration", "s", "histogram", "go_schedule_duration_seconds"),
    ("go.memory.used", "By", "gauge", "go_memory_used_bytes"),
    ("http.server.request.duration", "ms", "histogram", "http_server_request_duration_milliseconds"),
    ("system.cpu.utilization", "1", "gauge", "system_cpu_utilization_ratio"),
    ("requests", "1", "counter", "requests_total"),
    ("otelcol_exporter_sent_spans", "{span}", "counter", "otelcol_exporter_sent_spans_total"),
    ("throughput", "By/s", "gauge", "throughput_bytes_per_second"),
    ("latency_seconds", "s", "gauge", "latency_seconds"),
    ("jobs_total", "", "counter", "jobs_total"),
])
def test_names_are_translated_like_the_collector(name, unit, kind, expected):
    assert prometheus.metric_name(name, unit, kind) == expected
    assert prometheus.metric_name(name, unit, kind, "gotel") == "gotel_" + expected


def exp_histogram_point(values, scale):
    """An exponential histogram data point of positive values at ``scale``, built by brute force."""
    base = 2.0 ** (2.0 ** -scale)
    idx = [int(np.ceil(np.log(v) / np.log(base))) - 1 for v in values]
    offset = min(idx)
    counts = [0] * (max(idx) - offset + 1)
    for i in idx:
        counts[i - offset] += 1
    dp = pb.ExponentialHistogramDataPoint(count=len(values), sum=float(sum(values)), scale=scale)
    dp.positive.offset = offset
    dp.positive.bucket_counts.extend(counts)
    return dp


@pytest.mark.parametrize("scale", [-1, 0, 3, 4])
def test_exponential_buckets_become_exact_power_of_two_buckets(scale):
    rng = np.random.default_rng(scale + 10)
    values = np.exp(rng.uniform(np.log(1e-7), np.log(1e3), 500)).tolist()
    dp = exp_histogram_point(values, scale)
    for k, cumulative in prometheus.classic_buckets(dp):
        # at scale < 0 boundaries are every 2**(2**-scale) powers of two: the count is that of the
        # largest boundary at or below 2**k
        step = 2 ** max(0, -scale)
        bound = 2.0 ** ((k // step) * step)
        assert cumulative == sum(v <= bound for v in values), (k, scale)


SCOPE = 'otel_scope_name="gotel",otel_scope_schema_url="",otel_scope_version="1.0"'


def request_of(resource, metrics):
    from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope

    return ExportMetricsServiceRequest(resource_metrics=[pb.ResourceMetrics(
        resource=resource, scope_metrics=[pb.ScopeMetrics(
            scope=InstrumentationScope(name="gotel", version="1.0"), metrics=metrics)])])


def sample_request(pid=42):
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    resource = Resource(attributes=[kv("service.name", "shop"), kv("service.instance.id", "i-1"),
                                    kv("process.pid", pid), kv("host.name", "h")])
    count = pb.Metric(name="go.goroutine.count", unit="{goroutine}", description="Goroutines.",
                      sum=pb.Sum(is_monotonic=False, aggregation_temporality=2,
                                 data_points=[pb.NumberDataPoint(as_int=7)]))
    created = pb.Metric(name="go.goroutine.created", unit="{goroutine}",
                        sum=pb.Sum(is_monotonic=True, aggregation_temporality=2, data_points=[
                            pb.NumberDataPoint(as_int=3, attributes=[
                                kv("code.function.name", 'main."quoted"\\fn')])]))
    dp = exp_histogram_point([1e-6, 2e-6, 0.5], 4)
    dp.attributes.append(kv("gotel.wait_reason", "chan receive"))
    park = pb.Metric(name="go.goroutine.park.duration", unit="s",
                     exponential_histogram=pb.ExponentialHistogram(aggregation_temporality=2,
                                                                   data_points=[dp]))
    return request_of(resource, [count, created, park])


def scrape(exporter):
    with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"] == prometheus.CONTENT_TYPE
        return r.read().decode()


@pytest.fixture
def exporter():
    cfg = config_mod.build_dataclass(prometheus.Config, {"endpoint": "127.0.0.1:0"}, ("x",), [])
    e = prometheus.create(Settings("prometheus"), cfg)
    e.start()
    yield e
    e.shutdown(2.0)


def test_serves_translated_series_over_http(exporter):
    exporter.export(Payload.of("metrics", sample_request()))
    assert exporter.flush(10.0)
    text = scrape(exporter)
    lines = text.splitlines()
    assert "# TYPE go_goroutine_count gauge" in lines
    assert f'go_goroutine_count{{instance="i-1",job="shop",{SCOPE}}} 7' in lines
    assert "# TYPE go_goroutine_created_total counter" in lines
    assert ('go_goroutine_created_total{code_function_name="main.\\"quoted\\"\\\\fn",'
            f'instance="i-1",job="shop",{SCOPE}}} 3') in lines
    assert "# TYPE go_goroutine_park_duration_seconds histogram" in lines
    park = ('go_goroutine_park_duration_seconds_bucket{gotel_wait_reason="chan receive",'
            f'instance="i-1",job="shop",{SCOPE},')
    assert park + 'le="9.5367431640625e-07"} 0' in lines       # 2**-20
    assert park + 'le="1.9073486328125e-06"} 1' in lines       # 2**-19
    assert park + 'le="3.814697265625e-06"} 2' in lines
    assert park + 'le="0.5"} 3' in lines
    assert park + 'le="+Inf"} 3' in lines
    assert 'target_info{host_name="h",instance="i-1",job="shop",process_pid="42"} 1' in lines
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool (Debian's prometheus package) is missing: run `make setup`")
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)
    # promtool exits 1 on a parse error, 3 on naming advice only (go_goroutine_count is the
    # semantic conventions' name, kept as the Collector keeps it; no HELP where OTLP had none)
    assert lint.returncode in (0, 3), lint.stdout + lint.stderr
    assert "error" not in (lint.stdout + lint.stderr).lower(), lint.stdout + lint.stderr


def test_resource_to_telemetry_conversion_and_namespace():
    cfg = prometheus.Config(endpoint="127.0.0.1:0", namespace="gotel",
                            resource_to_telemetry_conversion=prometheus.ResourceToTelemetry(True))
    e = prometheus.PrometheusExporter("p", cfg)
    e.update(sample_request())
    text = e.render()
    assert ('gotel_go_goroutine_count{host_name="h",instance="i-1",job="shop",'
            f'{SCOPE},process_pid="42"}} 7') in text.splitlines()
    assert "target_info" not in text


def test_series_expire_and_processes_stay_apart():
    now = [0.0]
    e = prometheus.PrometheusExporter("p", prometheus.Config(metric_expiration=60),
                                      clock=lambda: now[0])
    e.update(sample_request(pid=1))
    request = sample_request(pid=2)
    request.resource_metrics[0].resource.attributes[1].value.string_value = "i-2"
    now[0] = 30.0
    e.update(request)
    assert e.render().count("go_goroutine_count{") == 2
    now[0] = 61.0
    text = e.render()
    assert f'go_goroutine_count{{instance="i-2",job="shop",{SCOPE}}} 7' in text
    assert 'instance="i-1"' not in text


def test_config_problems_name_the_key():
    problems = []
    config_mod.build_dataclass(prometheus.Config, {"endpoint": "nowhere", "namespace": "1x"},
                               ("exporters", "prometheus"), problems)
    assert any("endpoint must be host:port" in p for p in problems), problems
    assert any("namespace must match" in p for p in problems), problems


def test_native_spans_and_deltas_rebuild_the_otlp_buckets():
    from pipeline.exporters import prometheus_proto

    counts = [3, 0, 0, 5, 5, 0, 1, 0, 0, 0, 2]
    spans, deltas = prometheus_proto.native_spans(-7, counts)
    rebuilt, index, value, k = {}, None, 0, 0
    for offset, length in spans:
        index = offset if index is None else index + offset
        for _ in range(length):
            value += deltas[k]
            rebuilt[index] = value
            index += 1
            k += 1
    # native bucket i + 1 is OTLP bucket i: the same interval
    assert rebuilt == {-7 + j + 1: c for j, c in enumerate(counts) if c}


def test_a_protobuf_scrape_gets_delimited_families_with_native_histograms(exporter):
    from pipeline.exporters import prometheus_proto

    exporter.export(Payload.of("metrics", sample_request()))
    assert exporter.flush(10.0)
    request = urllib.request.Request(f"http://127.0.0.1:{exporter.port}/metrics", headers={
        "Accept": prometheus_proto.CONTENT_TYPE + ";q=0.5,text/plain;version=0.0.4;q=0.4"})
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.headers["Content-Type"] == prometheus_proto.CONTENT_TYPE
        body = r.read()
    families, pos = {}, 0
    while pos < len(body):
        length, pos = _DecodeVarint(body, pos)
        fam = prometheus_proto.MetricFamily.FromString(body[pos:pos + length])
        pos += length
        families[fam.name] = fam
    assert families["go_goroutine_created_total"].metric[0].counter.value == 3
    hist = families["go_goroutine_park_duration_seconds"].metric[0].histogram
    assert (hist.schema, hist.sample_count) == (4, 3)
    assert sum(hist.positive_delta[:1]) == 1 and len(hist.bucket) == len(prometheus.BUCKET_EXPONENTS)


def test_a_taken_port_is_one_clear_config_error():
    import socket

    from receiver.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        e = prometheus.create(Settings("prometheus/x"),
                              prometheus.Config(endpoint=f"127.0.0.1:{port}"))
        with pytest.raises(ConfigError, match=r"exporters::prometheus/x::endpoint: cannot listen on "
                                              r"127\.0\.0\.1:\d+: .*; choose another endpoint"):
            e.start()
