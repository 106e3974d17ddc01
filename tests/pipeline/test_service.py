"""Service assembly without the kernel: spans fed where the decoder's output goes come out of the
configured exporters, with self-telemetry in the Collector's names and the end-of-run summary."""

import dataclasses
import inspect
import json

import numpy as np
import pytest

import spanfactory
from pipeline import config, service
from pipeline.spans import SpanFlag, SpanKind
from receiver.errors import ConfigError


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
                 "otelcol_processor_incoming_items", "gotel_processor_batches_sent"):
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


def test_components_come_from_the_one_registry_with_one_create_signature():
    from pipeline import components

    for kind, modules in components.REGISTRY.items():
        for module in modules:
            assert module.TYPE and set(module.SIGNALS) <= {"traces", "metrics", "logs"}, module
            params = list(inspect.signature(module.create).parameters)
            assert params[:3] == ["settings", "config", "next_stage"], (module, params)
            assert dataclasses.is_dataclass(module.Config)
            assert components.module(kind, module.TYPE) is module
    assert components.module("exporters", "otlp") is components.module("exporters", "otlp_grpc")
    assert components.module("processors", "nope") is None


def test_the_receiver_config_holds_the_receivers_own_fields():
    from pipeline.receivers import goroutines
    from receiver import receiver as receiver_mod

    rc = goroutines.Config(pids=(5,), resource={"service.name": "x"})
    part = rc.source_config()
    assert isinstance(part, receiver_mod.Config) and part.pids == (5,)
    assert {f.name for f in dataclasses.fields(receiver_mod.Config)} <= {
        f.name for f in dataclasses.fields(goroutines.Config)}


def test_a_new_processor_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    """What adding a component takes: a module in the house shape, and its line in the registry."""
    import types

    from pipeline import components

    truncate = types.ModuleType("truncate")
    exec('''
import dataclasses
from pipeline.stage import Stage

TYPE = "truncate"
SIGNALS = ("traces",)


@dataclasses.dataclass(frozen=True)
class Config:
    keep: int = 10

    def validate(self):
        return [] if self.keep > 0 else ["keep must be > 0"]


class Truncate(Stage):
    def process(self, batch):
        return batch[:self.config.keep]


def create(settings, config, next_stage):
    return Truncate(next_stage, config)
''', truncate.__dict__)
    registry = dict(components.REGISTRY, processors=(*components.REGISTRY["processors"], truncate))
    monkeypatch.setattr(components, "REGISTRY", registry)
    monkeypatch.setattr(components, "BY_TYPE", {**components.BY_TYPE, ("processors", "truncate"): truncate})
    svc = service.Service(config.loads(f"""
receivers: {{goroutines: {{pids: [1]}}}}
processors: {{truncate: {{keep: 10}}, batch: {{}}}}
exporters: {{file: {{path: {tmp_path}/traces.jsonl}}}}
service: {{pipelines: {{traces: {{receivers: [goroutines], processors: [truncate, batch],
                                exporters: [file]}}}}}}
"""))
    svc.start_exporters()
    svc.tap.consume(spanfactory.spans(500, pids=(1,)))
    svc.shutdown(5)
    spans = [sp for req in lines(tmp_path / "traces.jsonl") for rs in req["resourceSpans"]
             for ss in rs["scopeSpans"] for sp in ss["spans"]]
    assert len(spans) == 10
    with pytest.raises(ConfigError, match="processors::truncate::keep must be > 0"):
        config.loads("""
receivers: {goroutines: {pids: [1]}}
processors: {truncate: {keep: 0}}
exporters: {debug: {}}
service: {pipelines: {traces: {receivers: [goroutines], processors: [truncate], exporters: [debug]}}}
""")
