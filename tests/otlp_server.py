"""A real OTLP/gRPC server for tests: opentelemetry-proto's Trace, Metrics and Logs service servicers
on 127.0.0.1, port 0, recording every request and answering from a script."""

import contextlib
import threading
import time
from concurrent import futures

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Collector(trace_service_pb2_grpc.TraceServiceServicer,
                metrics_service_pb2_grpc.MetricsServiceServicer):
    """Answers calls from a script: "ok", ("fail", code, retry_delay_s or None),
    ("partial", rejected, message), or ("block",) (waits for release)."""

    def __init__(self):
        self.script = []
        self.requests = []
        self.metadata = []
        self.calls = 0
        self.times = []
        self.release = threading.Event()
        self.got_call = threading.Event()
        self.lock = threading.Lock()

    def _answer(self, request, context, response_type, rejected_field):
        with self.lock:
            self.calls += 1
            self.times.append(time.monotonic())
            action = self.script.pop(0) if self.script else "ok"
            self.metadata.append(dict(context.invocation_metadata()))
        self.got_call.set()
        if action == "ok" or action[0] == "block":
            if action != "ok":
                self.release.wait(10)
            self.requests.append(request)
            return response_type()
        if action[0] == "partial":
            self.requests.append(request)
            response = response_type()
            setattr(response.partial_success, rejected_field, action[1])
            response.partial_success.error_message = action[2]
            return response
        _, code, delay = action
        if delay is not None:
            info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
                seconds=int(delay), nanos=int((delay % 1) * 1e9)))
            status = status_pb2.Status(code=code.value[0], message="slow down")
            status.details.add().Pack(info)
            context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
        context.abort(code, f"scripted {code.name}")

    def Export(self, request, context):
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            return self._answer(request, context, trace_service_pb2.ExportTraceServiceResponse,
                                "rejected_spans")
        if isinstance(request, logs_service_pb2.ExportLogsServiceRequest):
            return self._answer(request, context, logs_service_pb2.ExportLogsServiceResponse,
                                "rejected_log_records")
        return self._answer(request, context, metrics_service_pb2.ExportMetricsServiceResponse,
                            "rejected_data_points")


class MetricsCollector(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, collector):
        self.collector = collector

    def Export(self, request, context):
        return self.collector.Export(request, context)


class LogsCollector(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, collector):
        self.collector = collector

    def Export(self, request, context):
        return self.collector.Export(request, context)


@contextlib.contextmanager
def serve(port=0, collector=None):
    """A started Collector (or the given one, e.g. back after an outage) on 127.0.0.1:port (0: any
    free port); its ``endpoint`` is host:port."""
    c = collector or Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(c, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsCollector(c), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(LogsCollector(c), server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    c.endpoint = f"127.0.0.1:{port}"
    try:
        yield c
    finally:
        c.release.set()
        server.stop(0).wait(5)


def free_port():
    """A TCP port nothing listens on now (for a collector that is down, then comes up)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spans_received(collector):
    return sum(len(ss.spans) for r in collector.requests if hasattr(r, "resource_spans")
               for rs in r.resource_spans for ss in rs.scope_spans)
