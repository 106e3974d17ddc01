"""gotel's prometheus exporter scraped by a real Prometheus (Debian's 2.42), and the health_check
extension asked over HTTP, while gotel traces a real Go program.

Prometheus scrapes gotel every second (config written here); the test then asks Prometheus's HTTP
API for the goroutine, scheduling and park series, and checks every query of the Grafana dashboard
(config/grafana-dashboard.json) against the series Prometheus holds. The health check's /readyz
turns 503 once an exporter (an OTLP exporter to a closed port, retries off) has failed for longer
than its threshold, and /healthz stays 200.
"""

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

import realpeers as peers
from pipeline import config
from pipeline.service import Service

pytestmark = [pytest.mark.bpf, pytest.mark.slow]

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana-dashboard.json"
THRESHOLD_S = 5


def http_get(url):
    """(status, JSON body) of a GET, also for 4xx/5xx answers."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def gotel(require_bpf, go_build, tmp_path_factory):
    base = tmp_path_factory.mktemp("prom")
    binary = go_build("oracle", "1.25")
    closed = peers.free_port()          # nothing listens there: that exporter's sends fail
    cfg = config.loads(f"""
receivers:
  goroutines:
    command: ["{binary}", -repeat, "0", pool, tree, chan, select, mutex, timer]
    collection_interval: 1s
  goruntime: {{collection_interval: 1s}}
processors:
  batch: {{timeout: 100ms}}
exporters:
  prometheus: {{endpoint: "127.0.0.1:0"}}
  otlp/dead:
    endpoint: "127.0.0.1:{closed}"
    tls: {{insecure: true}}
    timeout: 1s
    retry_on_failure: {{enabled: false}}
extensions:
  health_check: {{endpoint: "127.0.0.1:0", exporter_failure_threshold: {THRESHOLD_S}s}}
service:
  extensions: [health_check]
  pipelines:
    traces: {{receivers: [goroutines], processors: [batch], exporters: [otlp/dead]}}
    metrics: {{receivers: [goroutines, goruntime], exporters: [prometheus]}}
""")
    service = Service(cfg)
    service.start()
    health = f"http://127.0.0.1:{service.extensions['health_check'].port}"
    first_ready = http_get(health + "/readyz")
    metrics_port = service.exporters["prometheus"].port
    try:
        target = [f"127.0.0.1:{metrics_port}"]
        with peers.prometheus(base / "classic", target) as prom, \
                peers.prometheus(base / "native", target,
                                 flags=["--enable-feature=native-histograms"]) as native:
            yield {"service": service, "prom": prom, "native": native, "health": health,
                   "first_ready": first_ready, "metrics_port": metrics_port}
    finally:
        command = service.receiver.command
        service.shutdown(5.0)
        command.popen.terminate()
        command.popen.wait(10)


def query(prom, expr):
    url = prom.url("http", "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    got = peers.get_json(url)
    assert got["status"] == "success", got
    return got["data"]["result"]


def wait_query(prom, expr, timeout=60):
    return peers.wait_for(lambda: query(prom, expr), timeout, 0.5)


def test_prometheus_scrapes_goroutine_scheduling_and_park_series(gotel):
    prom = gotel["prom"]
    count = wait_query(prom, 'go_goroutine_count{job="example.com/gotel/oracle"}')
    assert count and float(count[0]["value"][1]) >= 1
    assert query(prom, 'up')[0]["value"][1] == "1"
    created = wait_query(prom, 'go_goroutine_created_total{code_function_name=~"main\\\\..*"}')
    assert created, "no goroutine creations by a main.* start function"
    buckets = wait_query(prom, 'go_schedule_duration_seconds_bucket{le="+Inf"}')
    assert buckets and float(buckets[0]["value"][1]) > 0
    reasons = {r["metric"]["gotel_wait_reason"] for r in wait_query(
        prom, 'go_goroutine_park_duration_seconds_count')}
    assert {"chan receive", "sync.Mutex.Lock", "sleep"} & reasons, reasons
    # classic buckets make quantiles work: the median schedule latency is a real number of seconds
    p50 = wait_query(prom, 'histogram_quantile(0.5, sum by (le) '
                           '(go_schedule_duration_seconds_bucket))')
    assert 0 < float(p50[0]["value"][1]) < 10
    info = wait_query(prom, 'target_info{job="example.com/gotel/oracle"}')
    assert info[0]["metric"]["process_runtime_name"] == "go"
    states = {r["metric"]["gotel_goroutine_state"] for r in wait_query(
        prom, 'gotel_goroutine_count{job="example.com/gotel/oracle"}')}
    assert states, "the census's goroutines by state are scraped"
    sent = wait_query(prom, 'otelcol_exporter_send_failed_spans_total{exporter="otlp/dead"}')
    assert sent, "gotel's own telemetry is scraped too"


def test_a_prometheus_with_native_histograms_gets_them_bucket_for_bucket(gotel):
    """Prometheus negotiates the protobuf exposition and stores gotel's exponential histograms as
    native histograms: every bucket count is non-negative, they add up to the count, and every
    boundary is a power of 2**(1/16) (gotel records at scale 4 and only ever halves it)."""
    import math

    native = gotel["native"]
    # park durations are gotel's own exponential histograms (go.schedule.duration comes from the
    # runtime's explicit buckets when receivers::goruntime runs: a classic histogram)
    got = peers.wait_for(lambda: [r for r in query(native, "go_goroutine_park_duration_seconds")
                                  if "histogram" in r], 60, 0.5)
    assert got, query(native, "go_goroutine_park_duration_seconds")
    _, hist = got[0]["histogram"]
    buckets = hist["buckets"]
    assert buckets and float(hist["count"]) > 0
    assert all(float(count) >= 0 for *_, count in buckets)
    assert abs(sum(float(count) for *_, count in buckets) - float(hist["count"])) < 1e-6
    for _, left, right, _ in buckets:
        for bound in (float(left), float(right)):
            if bound > 0:
                assert abs(math.log2(bound) * 16 - round(math.log2(bound) * 16)) < 1e-6, bound
    # the native Prometheus keeps them as native only: no _bucket series
    assert not query(native, "go_goroutine_park_duration_seconds_bucket")
    park = wait_query(native, 'histogram_quantile(0.5, sum by (gotel_wait_reason) '
                              '(rate(go_goroutine_park_duration_seconds[1m])))')
    assert park and all(float(r["value"][1]) > 0 for r in park if r["value"][1] != "NaN")


def test_health_check_answers_alive_and_turns_unready_when_an_exporter_keeps_failing(gotel):
    status, body = gotel["first_ready"]
    assert (status, body["status"]) == (200, "ready"), body
    assert http_get(gotel["health"] + "/healthz") == (200, {"status": "alive"})
    unready = peers.wait_for(lambda: http_get(gotel["health"] + "/readyz")[0] == 503, 60, 0.25)
    assert unready
    status, body = http_get(gotel["health"] + "/readyz")
    assert status == 503 and any(p.startswith("exporter otlp/dead failing for")
                                 for p in body["problems"]), body
    assert http_get(gotel["health"] + "/healthz")[0] == 200
    assert http_get(gotel["health"] + "/nothing")[0] == 404


# --- the Grafana dashboard ----------------------------------------------------------------------
PROMQL_WORDS = {
    "sum", "rate", "irate", "increase", "by", "without", "histogram_quantile", "topk", "bottomk",
    "avg", "max", "min", "count", "le", "on", "ignoring", "group_left", "group_right", "and", "or",
    "unless", "offset", "clamp_min", "clamp_max", "delta", "deriv", "abs", "label_replace",
    "max_over_time", "min_over_time", "avg_over_time", "sum_over_time", "time", "vector", "bool",
    "sort_desc", "sort", "count_values", "quantile", "scalar", "absent", "changes", "resets",
}


def metric_names(expr):
    """Metric names an expression selects: identifiers outside strings, label matchers, grouping
    clauses and ranges that are not PromQL functions or keywords."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)                  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)                            # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)                           # ranges
    expr = re.sub(r"\$\w+", "", expr)                                # dashboard variables
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)) - PROMQL_WORDS
    return {n for n in names if not re.fullmatch(r"\d.*|e\d*|Inf|NaN", n)}


def dashboard_targets():
    board = json.loads(DASHBOARD.read_text())
    for panel in board["panels"]:
        for target in panel.get("targets", ()):
            yield panel, target


def test_metric_names_are_parsed_out_of_promql():
    expr = ('histogram_quantile(0.99, sum by (le, gotel_wait_reason) '
            '(rate(go_goroutine_park_duration_seconds_bucket{job=~"$job", le!="x"}[5m]))) '
            '/ on (job) group_left topk(5, otelcol_exporter_sent_spans_total)')
    assert metric_names(expr) == {"go_goroutine_park_duration_seconds_bucket",
                                  "otelcol_exporter_sent_spans_total"}


def test_every_dashboard_query_selects_series_prometheus_holds(gotel):
    """Each expression's metric names exist in Prometheus after scraping gotel, and the expression
    itself evaluates (its variables replaced by match-all). Panels for metrics that other gotel
    components add later are not in the dashboard, so every name must exist now."""
    prom = gotel["prom"]
    wait_query(prom, "go_goroutine_park_duration_seconds_bucket")
    targets = list(dashboard_targets())
    assert len(targets) >= 8
    missing = {}
    for panel, target in targets:
        expr = target["expr"]
        names = metric_names(expr)
        assert names, (panel["title"], expr)
        for name in names:
            if not query(prom, f"count({{__name__={json.dumps(name)}}})"):
                missing.setdefault(panel["title"], []).append(name)
        evaluated = expr.replace("$__rate_interval", "1m").replace("$__range", "5m")
        evaluated = re.sub(r'=~?"\$\w+"', '=~".*"', evaluated)
        query(prom, evaluated)                       # a PromQL syntax error fails here
    assert not missing, f"dashboard panels query metrics Prometheus does not hold: {missing}"
