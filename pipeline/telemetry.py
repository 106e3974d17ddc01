"""gotel's own metrics, with the Collector's names (``otelcol_receiver_accepted_spans``,
``otelcol_exporter_sent_spans``, ``otelcol_exporter_queue_size``, ...), exported with the metrics
under a Resource whose ``service.name`` is ``gotel`` (unless ``service::telemetry::metrics::level``
is ``none``).

Receiver side: events accepted (read from the kernel's event buffers), refused (lost: a buffer was full) and
failed (a stage raised on their batch); spans accepted (made by the decoder) and refused (could not be
encoded as OTLP); the decoder's own drop counters. Then each processor's items in and out, and per
processor its own counters (``gotel_processor_spans_dropped``, ...), and per exporter the Collector's
sent / send_failed / enqueue_failed and queue size.
"""

import os
import time
import uuid

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from pipeline.exporters.encode import GOTEL_VERSION, key_value

GAUGES = ("otelcol_exporter_queue_size", "otelcol_exporter_queue_capacity")
UNITS = {"events": "{event}", "spans": "{span}", "items": "{item}", "points": "{datapoint}",
         "size": "{request}", "capacity": "{request}"}


def counters(service):
    """Self-telemetry of a built Service as {(name, ((attribute, value), ...)): value}."""
    out = {}
    rid = service.receiver_id
    attrs = (("receiver", rid),)
    rc = service.receiver.counters()
    out[("otelcol_receiver_accepted_events", attrs)] = rc.pop("accepted_events")
    out[("otelcol_receiver_refused_events", attrs)] = rc.pop("refused_events")
    out[("gotel_pipeline_failed_events", attrs)] = rc.pop("failed_events")
    out[("otelcol_receiver_accepted_spans", attrs)] = service.tap.spans
    out[("otelcol_receiver_refused_spans", attrs)] = sum(f.encode_errors for f in service.fanouts)
    for name, value in rc.items():
        out[(f"gotel_{name}", attrs)] = value
    for pipeline_id, pid, stage in service.processors:
        attrs = (("processor", pid), ("pipeline", pipeline_id))
        out[("otelcol_processor_incoming_items", attrs)] = stage.items_in
        out[("otelcol_processor_outgoing_items", attrs)] = stage.items_out
        for name, value in stage.counters().items():
            out[(f"gotel_processor_{name}", attrs)] = value
    for eid, exporter in service.exporters.items():
        attrs = (("exporter", eid),)
        for signal, item in (("traces", "spans"), ("metrics", "metric_points")):
            for what in ("sent", "send_failed", "enqueue_failed"):
                out[(f"otelcol_exporter_{what}_{item}", attrs)] = exporter.counters.get(
                    f"{what}_{item}", signal)
        out[("otelcol_exporter_queue_size", attrs)] = exporter.queue_size()
        out[("otelcol_exporter_queue_capacity", attrs)] = exporter.queue_capacity()
    return out


def request(service, host_name, start_ns):
    """gotel's own metrics as an ExportMetricsServiceRequest (Resource service.name=gotel)."""
    now = time.time_ns()
    by_name = {}
    for (name, attrs), value in counters(service).items():
        by_name.setdefault(name, []).append((dict(attrs), value))
    metrics = []
    for name, points in sorted(by_name.items()):
        unit = UNITS.get(name.rsplit("_", 1)[-1], "1")
        data_points = [metrics_pb2.NumberDataPoint(
            attributes=[key_value(k, v) for k, v in attrs.items()], as_int=int(value),
            time_unix_nano=now, start_time_unix_nano=0 if name in GAUGES else start_ns)
            for attrs, value in points]
        metric = metrics_pb2.Metric(name=name, unit=unit)
        if name in GAUGES:
            metric.gauge.data_points.extend(data_points)
        else:
            metric.sum.aggregation_temporality = \
                metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
            metric.sum.is_monotonic = True
            metric.sum.data_points.extend(data_points)
        metrics.append(metric)
    resource = resource_pb2.Resource(attributes=[key_value(k, v) for k, v in {
        "service.name": "gotel", "service.version": GOTEL_VERSION,
        "service.instance.id": str(uuid.uuid5(uuid.NAMESPACE_URL,
                                              f"gotel://{host_name}/{os.getpid()}")),
        "host.name": host_name, "process.pid": os.getpid(),
        "telemetry.sdk.name": "gotel", "telemetry.sdk.version": GOTEL_VERSION}.items()])
    return metrics_service_pb2.ExportMetricsServiceRequest(resource_metrics=[
        metrics_pb2.ResourceMetrics(resource=resource, scope_metrics=[metrics_pb2.ScopeMetrics(
            scope=common_pb2.InstrumentationScope(name="gotel.telemetry", version=GOTEL_VERSION),
            metrics=metrics)])])
