"""File exporter writes the Collector's OTLP/JSON lines; the debug exporter prints a summary."""

import base64
import io
import json

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2

import spanfactory
from pipeline.exporters import debug, file
from pipeline.stage import Settings
from pipeline.exporters.base import Payload
from pipeline.spans import SpanFlag


def trace_payload(n=20, seed=0):
    s = spanfactory.spans(n, seed=seed, pids=(7, 8))
    s["flags"][0] = SpanFlag.CONTINUED
    s["link_trace_lo"][0], s["link_span_id"][0] = 1, 2
    data, count = spanfactory.encoder().encode_chunks(s)[0]
    return Payload("traces", data, count)


def metrics_payload():
    return Payload.of("metrics", ExportMetricsServiceRequest(resource_metrics=[
        metrics_pb2.ResourceMetrics(scope_metrics=[metrics_pb2.ScopeMetrics(metrics=[
            metrics_pb2.Metric(name="go.goroutine.count", unit="{goroutine}", sum=metrics_pb2.Sum(
                aggregation_temporality=2,
                data_points=[metrics_pb2.NumberDataPoint(as_int=3, time_unix_nano=5)]))])])]))


def from_otlp_json(line, message_type):
    """Parse an OTLP/JSON line back, turning hex ids into protobuf JSON's base64."""
    d = json.loads(line)

    def fix(obj):
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in obj:
                obj[key] = base64.b64encode(bytes.fromhex(obj[key])).decode()
    for rs in d.get("resourceSpans", ()):
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                fix(span)
                for link in span.get("links", ()):
                    fix(link)
    return json_format.ParseDict(d, message_type())


def write(tmp_path, payloads, name="traces.jsonl", **kw):
    e = file.create(Settings("file"), file.Config(path=str(tmp_path / "out" / name), **kw))
    e.start()
    for p in payloads:
        assert e.export(p)
    e.shutdown(5)
    return (tmp_path / "out" / name).read_text().splitlines()


def test_one_request_per_line_in_otlp_json(tmp_path):
    payloads = [trace_payload(seed=i) for i in range(3)]
    lines = write(tmp_path, payloads)
    assert len(lines) == 3
    for line, p in zip(lines, payloads):
        d = json.loads(line)
        span = d["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        assert len(span["traceId"]) == 32 and len(span["spanId"]) == 16
        int(span["traceId"], 16)
        assert span["kind"] == 1                               # enums as integers
        assert "startTimeUnixNano" in span                     # lowerCamelCase keys
        assert from_otlp_json(line, ExportTraceServiceRequest) == p.message()
    linked = [s for rs in json.loads(lines[0])["resourceSpans"] for ss in rs["scopeSpans"]
              for s in ss["spans"] if s.get("links")]
    assert linked[0]["links"][0]["spanId"] == "0000000000000002"


@pytest.mark.parametrize("n", [50, 2 * file.JSON_SLICE + 7])   # the spans in one slice, or in 3
def test_same_as_protobufs_json_mapping_with_hex_ids(n):
    message = trace_payload(n).message()
    assert sum(len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans) == n
    expected = json_format.MessageToDict(message, use_integers_for_enums=True)
    for rs in expected["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for obj in (span, *span.get("links", ())):
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if key in obj:
                            obj[key] = base64.b64decode(obj[key]).hex()
    assert json.loads(file.to_otlp_json(message)) == expected


def test_metrics_lines(tmp_path):
    p = metrics_payload()
    (line,) = write(tmp_path, [p], name="metrics.jsonl")
    assert json.loads(line)["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["name"] == \
        "go.goroutine.count"
    assert from_otlp_json(line, ExportMetricsServiceRequest) == p.message()


def test_truncates_unless_append(tmp_path):
    write(tmp_path, [trace_payload()])
    assert len(write(tmp_path, [trace_payload()])) == 1
    assert len(write(tmp_path, [trace_payload()], append=True)) == 2


def test_config_problems(tmp_path):
    assert file.Config().validate() == [
        "path is required (the file to write, e.g. ./gotel-out/traces.jsonl)"]
    (tmp_path / "f").write_text("")
    assert file.Config(path=str(tmp_path / "f" / "x.jsonl")).validate() == [
        f"path: {tmp_path / 'f'} is not a directory"]
    assert file.Config(path=str(tmp_path / "new" / "dir" / "x.jsonl")).validate() == []


def test_debug_exporter_verbosities():
    out = io.StringIO()
    e = debug.create(Settings("debug"), debug.Config("basic"))
    e.stream = out
    e.export(trace_payload(5))
    e.export(metrics_payload())
    text = out.getvalue()
    assert "traces: 2 resource(s), 5 span(s)" in text
    assert "metrics: 1 resource(s), 1 metric(s), 1 data point(s)" in text
    lines = debug.describe(trace_payload(5), "normal")
    assert any("goid=" in line and "trace=" in line for line in lines)
    assert any("go.goroutine.count (sum, {goroutine}): 1 point(s)" in line
               for line in debug.describe(metrics_payload(), "normal"))
    assert "resource_spans" in debug.describe(trace_payload(2), "detailed")[-1]
