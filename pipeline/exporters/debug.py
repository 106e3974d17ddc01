"""Debug exporter: a human summary of what would be exported, on stderr (the Collector's ``debug``).

``verbosity: basic`` prints one line per request (resources, spans or data points); ``normal`` adds
one line per span (name, ids, duration, goroutine, wait reason) or per metric; ``detailed`` prints
the whole request in protobuf text format. Writes on the caller's thread: meant for small runs.
"""

import dataclasses
import sys
import threading
import typing

from google.protobuf import text_format

from pipeline.exporters.base import Exporter, QueueConfig


TYPE = "debug"
SIGNALS = ("traces", "metrics", "logs")


@dataclasses.dataclass(frozen=True)
class Config:
    verbosity: typing.Literal["basic", "normal", "detailed"] = "basic"


def _attrs(kvs):
    out = {}
    for kv in kvs:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


def describe(payload, verbosity="basic"):
    """The lines the debug exporter prints for one payload."""
    msg = payload.message()
    if payload.signal == "traces":
        lines = [f"traces: {len(msg.resource_spans)} resource(s), {payload.count} span(s)"]
        if verbosity == "normal":
            for rs in msg.resource_spans:
                res = _attrs(rs.resource.attributes)
                lines.append(f"  resource pid={res.get('process.pid')} service.name="
                             f"{res.get('service.name')}")
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        a = _attrs(span.attributes)
                        dur = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
                        extra = f" reason={a['gotel.wait_reason']!r}" if "gotel.wait_reason" in a else ""
                        lines.append(f"    {span.name} trace={span.trace_id.hex()} span="
                                     f"{span.span_id.hex()} parent={span.parent_span_id.hex() or '-'} "
                                     f"{dur:.3f}ms goid={a.get('gotel.goroutine.id')}{extra}")
    elif payload.signal == "logs":
        lines = [f"logs: {len(msg.resource_logs)} resource(s), {payload.count} log record(s)"]
        if verbosity == "normal":
            for rl in msg.resource_logs:
                for sl in rl.scope_logs:
                    for rec in sl.log_records:
                        lines.append(f"    {rec.severity_text} {rec.body.string_value}")
    else:
        n_metrics = sum(len(sm.metrics) for rm in msg.resource_metrics for sm in rm.scope_metrics)
        lines = [f"metrics: {len(msg.resource_metrics)} resource(s), {n_metrics} metric(s), "
                 f"{payload.count} data point(s)"]
        if verbosity == "normal":
            for rm in msg.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        lines.append(f"    {m.name} ({kind}, {m.unit or '1'}): "
                                     f"{len(getattr(m, kind).data_points) if kind else 0} point(s)")
    if verbosity == "detailed":
        lines.append(text_format.MessageToString(msg))
    return lines


class DebugExporter(Exporter):
    def __init__(self, name, config=Config(), stream=None):
        super().__init__(name, QueueConfig(enabled=False))
        self.config = config
        self.stream = stream
        self._lock = threading.Lock()

    def send(self, payload):
        stream = self.stream or sys.stderr
        with self._lock:
            for line in describe(payload, self.config.verbosity):
                print(f"gotel debug {self.name}: {line}", file=stream)
        return True


def create(settings, config, next_stage=None):
    return DebugExporter(settings.id, config)
