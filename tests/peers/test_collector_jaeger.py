"""gotel against the real OpenTelemetry Collector and Jaeger v2 (built by `make peers`).

One traced run of a real Go program (tests/go/oracle, every scenario twice, with small trace bounds
so that traces roll over and split) feeds four places at once: gotel's own file exporter (what gotel
meant), a Collector (OTLP receiver, batch processor, file exporter, and an OTLP exporter to a second
Jaeger: the gateway), and a Jaeger directly. Then:

- every span and metric data point the Collector wrote is the one gotel wrote, field for field;
- both Jaegers, asked over their HTTP query API, hold every trace with the tree gotel meant:
  operation names, parents, park children, attributes as tags, and links between the parts of a
  rolled-over goroutine (FOLLOWS_FROM references).
"""

import collections
import json
import time
import urllib.request

import pytest
from google.protobuf.internal.decoder import _DecodeVarint

import realpeers as peers
from pipeline import config
from pipeline.exporters import prometheus_proto
from pipeline.app.runner import run_service

pytestmark = [pytest.mark.bpf, pytest.mark.slow]


@pytest.fixture(scope="module")
def run(require_bpf, go_build, tmp_path_factory):
    base = tmp_path_factory.mktemp("peers")
    binary = go_build("oracle", "1.25")
    with peers.jaeger(base / "jaeger") as direct, peers.jaeger(base / "jaeger-gw") as behind:
        col = peers.collector(base / "collector", prometheus=True, exporters={
            "otlp/jaeger": {"endpoint": behind.endpoint(), "tls": {"insecure": True}}})
        try:
            cfg = config.loads(f"""
receivers:
  goroutines:
    command: ["{binary}", -repeat, "2", all]
    collection_interval: 1s
    spans: {{max_spans_per_trace: 40, max_trace_duration: 500ms, sweep_interval: 100ms}}
processors:
  batch: {{timeout: 100ms}}
exporters:
  file/traces: {{path: "{base}/gotel/traces.jsonl"}}
  file/metrics: {{path: "{base}/gotel/metrics.jsonl"}}
  otlp/collector: {{endpoint: "{col.endpoint()}", tls: {{insecure: true}}}}
  otlp/jaeger: {{endpoint: "{direct.endpoint()}", tls: {{insecure: true}}}}
  prometheus: {{endpoint: "127.0.0.1:0"}}
service:
  pipelines:
    traces:
      receivers: [goroutines]
      processors: [batch]
      exporters: [file/traces, otlp/collector, otlp/jaeger]
    metrics:
      receivers: [goroutines]
      exporters: [file/metrics, otlp/collector, prometheus]
""")
            service = run_service(cfg, duration=120, summary=False)
            # the Collector's prometheus exporter once it holds gotel's last export (its batch
            # processor forwards within 200 ms): two equal scrapes in a row
            scrape = lambda: urllib.request.urlopen(col.url("prometheus", "/metrics"),  # noqa: E731
                                                    timeout=10).read().decode()
            last, collector_metrics = None, scrape()
            while collector_metrics != last:
                time.sleep(1.0)
                last, collector_metrics = collector_metrics, scrape()
            request = urllib.request.Request(col.url("prometheus", "/metrics"),
                                             headers={"Accept": prometheus_proto.CONTENT_TYPE})
            collector_protobuf = urllib.request.urlopen(request, timeout=10).read()
        finally:
            assert col.stop() == 0, col.log.read_text()[-3000:]   # SIGTERM flushes the file exporter
        yield {"service": service, "base": base, "jaeger": direct, "jaeger-gw": behind,
               "collector": col, "collector_metrics": collector_metrics,
               "gotel_metrics": service.exporters["prometheus"].render(),
               "collector_protobuf": collector_protobuf,
               "gotel_protobuf": service.exporters["prometheus"].render_protobuf()}


# --- OTLP/JSON, flattened -----------------------------------------------------------------------
def normalize(value):
    """An OTLP/JSON value without default fields (writers differ only in which defaults they omit)."""
    if isinstance(value, dict):
        out = {k: normalize(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in ("", 0, "0", {}, [], None, False)}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


def attributes(kvs):
    return {kv["key"]: json.dumps(normalize(kv["value"]), sort_keys=True) for kv in kvs or ()}


def spans_of(requests):
    """(traceId, spanId) -> (resource attributes, scope, span) over OTLP/JSON trace requests."""
    out = {}
    for request in requests:
        for rs in request.get("resourceSpans", ()):
            res = attributes(rs.get("resource", {}).get("attributes"))
            for ss in rs.get("scopeSpans", ()):
                scope = normalize(ss.get("scope", {}))
                for span in ss.get("spans", ()):
                    key = (span["traceId"], span["spanId"])
                    assert key not in out, f"span {key} twice"
                    out[key] = (res, scope, normalize(span))
    return out


def points_of(requests):
    """(resource, scope, metric, point attributes, time) -> (metric fields, point)."""
    out = {}
    for request in requests:
        for rm in request.get("resourceMetrics", ()):
            res = json.dumps(attributes(rm.get("resource", {}).get("attributes")), sort_keys=True)
            for sm in rm.get("scopeMetrics", ()):
                scope = json.dumps(normalize(sm.get("scope", {})), sort_keys=True)
                for m in sm.get("metrics", ()):
                    kind = next(k for k in ("sum", "gauge", "histogram", "exponentialHistogram",
                                            "summary") if k in m)
                    fields = normalize({k: v for k, v in m[kind].items() if k != "dataPoints"})
                    head = {"unit": m.get("unit", ""), "description": m.get("description", ""),
                            "kind": kind, **fields}
                    for dp in m[kind].get("dataPoints", ()):
                        key = (res, scope, m["name"],
                               json.dumps(attributes(dp.get("attributes")), sort_keys=True),
                               dp.get("timeUnixNano"))
                        out[key] = (head, normalize(dp))
    return out


def test_every_span_reaches_the_collector_unchanged(run):
    mine = spans_of(peers.read_jsonl(run["base"] / "gotel/traces.jsonl"))
    theirs = spans_of(peers.read_jsonl(run["base"] / "collector/traces.json"))
    assert len(mine) > 1000
    assert theirs.keys() == mine.keys()
    differ = [k for k in mine if mine[k] != theirs[k]]
    assert not differ, (mine[differ[0]], theirs[differ[0]])
    sent = run["service"].exporters["otlp/collector"].counters
    assert sent.get("sent_spans", "traces") == len(mine)
    assert sent.get("send_failed_spans", "traces") == 0


def test_every_metric_point_reaches_the_collector_unchanged(run):
    mine = points_of(peers.read_jsonl(run["base"] / "gotel/metrics.jsonl"))
    theirs = points_of(peers.read_jsonl(run["base"] / "collector/metrics.json"))
    names = {k[2] for k in mine}
    assert {"go.goroutine.count", "go.schedule.duration", "go.goroutine.park.duration",
            "otelcol_exporter_sent_spans"} <= names
    assert theirs.keys() == mine.keys()
    differ = [k for k in mine if mine[k] != theirs[k]]
    assert not differ, (differ[0], mine[differ[0]], theirs[differ[0]])


# --- Jaeger -------------------------------------------------------------------------------------
def jaeger_traces(peer, trace_ids):
    """{trace id (int): {span id (int): span}} from Jaeger's HTTP query API (/api/traces/{id})."""
    out = {}
    for tid in trace_ids:
        got = peers.get_json(peer.url("http", f"/api/traces/{tid}"))
        (trace,) = got["data"]
        spans = {int(s["spanID"], 16): dict(s, process=trace["processes"][s["processID"]])
                 for s in trace["spans"]}
        out[int(tid, 16)] = spans
    return out


def tag_value(tag):
    return tag["value"]


def expected_tag(value):
    """An OTLP/JSON AnyValue as Jaeger shows it in a tag."""
    (kind, v), = value.items() if value else (("stringValue", ""),)
    return {"intValue": lambda x: int(x), "boolValue": bool, "doubleValue": float,
            "stringValue": str}.get(kind, lambda x: json.dumps(x))(v)


@pytest.mark.parametrize("which", ["jaeger", "jaeger-gw"])
def test_jaeger_shows_the_goroutine_tree_gotel_meant(run, which):
    requests = peers.read_jsonl(run["base"] / "gotel/traces.jsonl")
    mine = {}
    for request in requests:
        for rs in request["resourceSpans"]:
            service_name = next(kv["value"]["stringValue"] for kv in rs["resource"]["attributes"]
                                if kv["key"] == "service.name")
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    mine[(int(span["traceId"], 16), int(span["spanId"], 16))] = (service_name, span)
    trace_ids = sorted({f"{t:032x}" for t, _ in mine})
    peer = run[which]
    # The gateway's Collector flushed before it stopped; Jaeger stores what it receives at once,
    # but give its own batch processor a moment.
    peers.wait_for(lambda: peers.get_json(peer.url("http", "/api/services")).get("data"), 10)
    theirs = jaeger_traces(peer, trace_ids)
    parks = links = children = 0
    for (tid, sid), (service_name, span) in mine.items():
        got = theirs[tid].get(sid)
        assert got is not None, f"{which} lacks span {span['name']} {tid:032x}/{sid:016x}"
        assert got["operationName"] == span["name"]
        assert got["process"]["serviceName"] == service_name
        start_us = int(span["startTimeUnixNano"]) // 1000
        assert got["startTime"] == start_us
        assert abs(got["duration"] - (int(span["endTimeUnixNano"]) // 1000 - start_us)) <= 1
        refs = collections.defaultdict(set)
        for ref in got["references"]:
            refs[ref["refType"]].add((int(ref["traceID"], 16), int(ref["spanID"], 16)))
        parent = span.get("parentSpanId")
        assert refs["CHILD_OF"] == ({(tid, int(parent, 16))} if parent else set()), span["name"]
        want_links = {(int(link["traceId"], 16), int(link["spanId"], 16))
                      for link in span.get("links", ())}
        assert refs["FOLLOWS_FROM"] == want_links, span["name"]
        tags = {t["key"]: tag_value(t) for t in got["tags"]}
        for kv in span.get("attributes", ()):
            assert tags.get(kv["key"]) == expected_tag(kv["value"]), (kv, tags.get(kv["key"]))
        children += bool(parent)
        links += len(want_links)
        if "gotel.wait_reason" in tags:
            parks += 1
            parent_span = theirs[tid][int(parent, 16)]
            assert "gotel.wait_reason" not in {t["key"] for t in parent_span["tags"]}
    counts = {"spans": len(mine), "traces": len(trace_ids), "children": children, "parks": parks,
              "links": links}
    print(which, counts)
    assert sum(len(t) for t in theirs.values()) == len(mine)
    assert parks > 100 and links > 10 and len(trace_ids) > 10, counts


# --- OTLP -> Prometheus, gotel's exporter against the Collector's ------------------------------
def exposition(text):
    """{(name, frozenset(labels)): value} and {family: type} of a text exposition."""
    import re

    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, type_ = line.split(" ", 3)
            types[name] = type_
        elif line and not line.startswith("#"):
            m = re.match(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$', line)
            labels = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:\\.|[^"\\])*)"',
                                          m.group(2) or ""))
            samples[(m.group(1), labels)] = float(m.group(3))
    return samples, types


def test_prometheus_names_labels_and_values_match_the_collectors_exporter(run):
    """The same OTLP metrics, through gotel's prometheus exporter and through the Collector's
    (contrib v0.165.1): every family, type, label set and value the Collector shows, gotel shows."""
    theirs, their_types = exposition(run["collector_metrics"])
    mine, my_types = exposition(run["gotel_metrics"])
    assert len(their_types) > 20 and my_types == their_types, \
        set(their_types.items()) ^ set(my_types.items())
    missing = [k for k in theirs if k not in mine]
    assert not missing, missing[:5]
    differ = [(k, theirs[k], mine[k]) for k in theirs if theirs[k] != mine[k]]
    assert not differ, differ[:5]
    extra = collections.Counter(k[0] for k in mine if k not in theirs)
    print("only gotel's:", dict(extra))
    # the Collector writes exponential histograms as native histograms only, which the text format
    # shows as _sum and _count: gotel's classic power-of-two buckets are its only extra samples
    assert all(name.endswith("_bucket") and my_types[name[:-len("_bucket")]] == "histogram"
               for name in extra), extra


def families(body):
    """{(family, frozenset(labels)): Metric} of a delimited protobuf exposition."""
    out, pos = {}, 0
    while pos < len(body):
        length, pos = _DecodeVarint(body, pos)
        fam = prometheus_proto.MetricFamily.FromString(body[pos:pos + length])
        pos += length
        for m in fam.metric:
            out[(fam.name, frozenset((lp.name, lp.value) for lp in m.label))] = m
    return out


def native_buckets(h):
    """{native bucket index: count} of a Histogram's positive spans and deltas, empty ones left out."""
    out, index, count, k = {}, None, 0, 0
    for span in h.positive_span:
        index = span.offset if index is None else index + span.offset
        for _ in range(span.length):
            count += h.positive_delta[k]
            if count:
                out[index] = count
            index += 1
            k += 1
    return out


def test_native_histograms_match_the_collectors(run):
    """Asked for protobuf, the Collector's prometheus exporter sends gotel's exponential histograms
    as native histograms; gotel's own exporter sends the same schema, zero bucket, buckets, count
    and sum for every series (the Collector's spans also cover empty buckets, gotel's skip them:
    the same histogram)."""
    theirs = families(run["collector_protobuf"])
    mine = families(run["gotel_protobuf"])
    compared = 0
    for key, m in theirs.items():
        h = m.histogram
        if not m.HasField("histogram") or not (h.positive_span or h.zero_count):
            continue
        g = mine[key].histogram
        fields = ("schema", "zero_count", "sample_count", "sample_sum")
        assert [getattr(g, f) for f in fields] == [getattr(h, f) for f in fields], key
        assert native_buckets(g) == native_buckets(h), key
        compared += 1
    print("native histograms compared:", compared)
    assert compared > 20
