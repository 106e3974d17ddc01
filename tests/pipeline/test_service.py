"""Service assembly without the kernel: spans fed where the decoder's output goes come out of the
configured exporters, with self-telemetry in the Collector's names and the end-of-run summary."""

import json

import numpy as np

import spanfactory
from pipeline import config, service
from pipeline.spans import SpanFlag, SpanKind
from pipeline.stage import Stage


def build(tmp_path, processors="[batch]", level="basic"):
    text = f"""
receivers:
  goroutines: {{pids: [1]}}
processors:
  batch: {{timeout: 10ms}}
  filter: {{min_park: 0}}
exporters:
  file/traces: {{path: {tmp_path}/traces.jsonl}}
  file/metrics: {{path: {tmp_path}/metrics.jsonl}}
  debug: {{}}
service:
  telemetry: {{metrics: {{level: {level}}}}}
  pipelines:
    traces: {{receivers: [goroutines], processors: {processors}, exporters: [file/traces]}}
    traces/debug: {{receivers: [goroutines], exporters: [debug]}}
    metrics: {{receivers: [goroutines], exporters: [file/metrics]}}
"""
    svc = service.Service(config.loads(text))
    svc.start_exporters()
    return svc


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_spans_reach_every_traces_pipeline_and_metrics_hold_self_telemetry(tmp_path, capsys):
    svc = build(tmp_path)
    s = spanfactory.spans(500, pids=(1,))
    s["flags"][s["kind"] == SpanKind.GOROUTINE] = SpanFlag.EXITED
    svc.tap.consume(s)
    svc.shutdown(5)
    spans = [sp for req in lines(tmp_path / "traces.jsonl") for rs in req["resourceSpans"]
             for ss in rs["scopeSpans"] for sp in ss["spans"]]
    assert len(spans) == 500
    assert "traces: 1 resource(s), 500 span(s)" in capsys.readouterr().err     # the debug pipeline
    names = {m["name"]: m for req in lines(tmp_path / "metrics.jsonl") for rm in req["resourceMetrics"]
             for sm in rm["scopeMetrics"] for m in sm["metrics"]}
    for name in ("otelcol_receiver_accepted_spans", "otelcol_receiver_accepted_events",
                 "otelcol_receiver_refused_events", "otelcol_exporter_sent_spans",
                 "otelcol_exporter_send_failed_spans", "otelcol_exporter_enqueue_failed_spans",
                 "otelcol_exporter_queue_size", "otelcol_exporter_queue_capacity",
                 "otelcol_processor_incoming_items"):
        assert name in names, sorted(names)
    accepted = names["otelcol_receiver_accepted_spans"]["sum"]["dataPoints"][0]
    assert accepted["asInt"] == "500"
    assert accepted["attributes"][0] == {"key": "receiver", "value": {"stringValue": "goroutines"}}
    sent = {p["attributes"][0]["value"]["stringValue"]: p["asInt"]
            for p in names["otelcol_exporter_sent_spans"]["sum"]["dataPoints"]}
    assert sent["file/traces"] == "500" and sent["debug"] == "500"
    summary = svc.summary()
    assert sum(summary.tap.created.values()) == np.count_nonzero(s["kind"] == SpanKind.GOROUTINE)
    text = summary.render()
    assert "0x401000" in text and f"{tmp_path}/traces.jsonl" in text   # no process to symbolize
    assert "parks by wait reason" in text


def test_no_self_telemetry_when_level_is_none(tmp_path):
    svc = build(tmp_path, level="none")
    svc.shutdown(5)
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "otelcol_" not in text


def test_a_failing_stage_drops_the_batch_and_the_pipeline_goes_on(tmp_path):
    class Flaky(Stage):
        calls = 0

        def consume(self, batch):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("bad batch")
            self.next.consume(batch)

        def shutdown(self, timeout=5.0):
            raise RuntimeError("bad flush")

    svc = build(tmp_path)
    head = service.Locked(Flaky(svc.tap), svc.lock, rest=svc.tap)
    head.consume(np.zeros(3, dtype=spanfactory.SPAN_DTYPE))
    head.consume(spanfactory.spans(7, pids=(1,)))
    head.shutdown(5)
    svc.shutdown(5)
    assert head.failed == 3
    assert sum(len(ss["spans"]) for req in lines(tmp_path / "traces.jsonl")
               for rs in req["resourceSpans"] for ss in rs["scopeSpans"]) == 7


def test_the_receiver_config_follows_the_receivers_own_fields():
    from receiver import receiver as receiver_mod

    cls = service.receiver_config_class()
    rc = cls(pids=(5,), resource={"service.name": "x"})
    part = service.receiver_part(rc)
    assert isinstance(part, receiver_mod.Config) and part.pids == (5,)
