"""OTLP/gRPC exporter (type ``otlp_grpc``, alias ``otlp``), configured like the Collector's.

Sends already-serialized export requests (the channel's request serializer is the identity), from a
bounded sending queue drained by ``sending_queue::num_consumers`` threads. Failures are retried as
the OTLP specification says: only CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE
and DATA_LOSS, and RESOURCE_EXHAUSTED only when the status carries a ``google.rpc.RetryInfo``, whose
delay is honoured. Back-off is exponential with jitter (``retry_on_failure``: initial_interval,
multiplier, randomization_factor, max_interval, max_elapsed_time; the Collector's defaults), and
waits on ``stop_event`` so that shutdown interrupts it. Partial success is logged. An unreachable
collector gives one clear, rate-limited error line while the data stays queued (or is dropped and
counted when the queue is full); nothing is raised into the pipeline. With the queue on disk
(``sending_queue::storage``) a retryable failure is retried until the collector is back, whatever
``max_elapsed_time`` says (the data has somewhere to wait), and what shutdown interrupts stays on
disk for the next start; ``shutdown_timeout`` is how long shutdown waits for a queue that
stopped draining (one that drains is drained).
"""

import dataclasses
import logging
import random
import re
import time
import typing
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from pipeline.exporters.base import ITEM_NAMES, KEEP, Exporter, QueueConfig

METHODS = {
    "traces": ("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
               trace_service_pb2.ExportTraceServiceResponse),
    "metrics": ("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                metrics_service_pb2.ExportMetricsServiceResponse),
    "logs": ("/opentelemetry.proto.collector.logs.v1.LogsService/Export",
             logs_service_pb2.ExportLogsServiceResponse),
}
REJECTED_FIELD = {"traces": "rejected_spans", "metrics": "rejected_data_points",
                  "logs": "rejected_log_records"}

RETRYABLE = frozenset({
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
})


def _fmt_duration(seconds):
    if seconds >= 60:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m}m{s}s"
    return f"{seconds:g}s"


TYPE = "otlp_grpc"
SIGNALS = ("traces", "metrics", "logs")


@dataclasses.dataclass(frozen=True)
class TLSConfig:
    insecure: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name_override: str = ""

    def validate(self):
        problems = []
        if bool(self.cert_file) != bool(self.key_file):
            problems.append("cert_file and key_file must be given together")
        if self.insecure and (self.ca_file or self.cert_file or self.key_file):
            problems.append("insecure must be false when ca_file, cert_file or key_file is set")
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, key)
            if path and not Path(path).is_file():
                problems.append(f"{key}: no such file: {path}")
        return problems


@dataclasses.dataclass(frozen=True)
class RetryConfig:
    enabled: bool = True
    initial_interval: float = dataclasses.field(default=5.0, metadata={"duration": "s"})
    randomization_factor: float = 0.5
    multiplier: float = 1.5
    max_interval: float = dataclasses.field(default=30.0, metadata={"duration": "s"})
    max_elapsed_time: float = dataclasses.field(default=300.0, metadata={"duration": "s"})

    def validate(self):
        problems = []
        if self.initial_interval <= 0:
            problems.append("initial_interval must be > 0")
        if not 0 <= self.randomization_factor < 1:
            problems.append("randomization_factor must be in [0, 1)")
        if self.multiplier < 1:
            problems.append("multiplier must be >= 1")
        if self.max_interval < self.initial_interval:
            problems.append("max_interval must be >= initial_interval")
        if self.max_elapsed_time < 0:
            problems.append("max_elapsed_time must be >= 0 (0: retry without limit)")
        return problems


@dataclasses.dataclass(frozen=True)
class Config:
    endpoint: str = "localhost:4317"
    tls: TLSConfig = TLSConfig()
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    compression: typing.Literal["gzip", "none", ""] = "gzip"
    timeout: float = dataclasses.field(default=5.0, metadata={"duration": "s"})
    retry_on_failure: RetryConfig = RetryConfig()
    sending_queue: QueueConfig = QueueConfig()
    # How long gotel's shutdown lets the queue drain; then what is left stays on disk
    # (sending_queue::storage) or is dropped, and the summary says which.
    shutdown_timeout: float = dataclasses.field(default=5.0, metadata={"duration": "s"})

    def target(self):
        """(host:port, use TLS) from the endpoint; an http:// scheme means plaintext."""
        endpoint = self.endpoint.strip()
        secure = not self.tls.insecure
        for scheme, tls in (("http://", False), ("https://", True)):
            if endpoint.startswith(scheme):
                endpoint, secure = endpoint[len(scheme):], tls and not self.tls.insecure
        return endpoint.rstrip("/"), secure

    def validate(self):
        problems = []
        target, _ = self.target()
        host, sep, port = target.rpartition(":")
        scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", target)
        if scheme:
            problems.append(f"endpoint: scheme {scheme.group(1)}:// is not supported (OTLP/gRPC "
                            f"takes host:port, http://host:port or https://host:port), not "
                            f"{self.endpoint!r}")
            return problems + ([] if self.timeout > 0 else ["timeout must be > 0"])
        if self.shutdown_timeout < 0:
            problems.append("shutdown_timeout must be >= 0")
        if not target:
            problems.append("endpoint must not be empty")
        elif not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(f"endpoint must be host:port (e.g. localhost:4317), not {self.endpoint!r}")
        if "/" in target:
            problems.append(f"endpoint must not have a path for gRPC, not {self.endpoint!r}")
        if self.timeout <= 0:
            problems.append("timeout must be > 0")
        for key in self.headers:
            if not key or key != key.strip() or any(c.isspace() for c in key):
                problems.append(f"headers: invalid header name {key!r}")
        return problems


def retry_delay(error):
    """The delay (s) of a google.rpc.RetryInfo in a gRPC error's status details, or None."""
    try:
        trailers = error.trailing_metadata() or ()
    except Exception:  # noqa: BLE001
        return None
    for key, value in trailers:
        if key != "grpc-status-details-bin":
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return None
        for detail in status.details:
            info = error_details_pb2.RetryInfo()
            if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
                return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


class OTLPGrpcExporter(Exporter):
    """Exports payloads to an OTLP/gRPC endpoint; see the module docstring."""

    def __init__(self, name, config=Config(), sleep_jitter=random.random):
        super().__init__(name, config.sending_queue)
        self.config = config
        self.shutdown_timeout = config.shutdown_timeout
        # With the queue on disk, an outage of any length is waited out (max_elapsed_time does
        # not drop data that has somewhere to stay); shutdown leaves it there.
        self.persistent = bool(config.sending_queue.enabled and config.sending_queue.storage)
        self.target, self.secure = config.target()
        self._random = sleep_jitter
        self._channel = None
        self._calls = {}
        self.metadata = tuple((k.lower(), v) for k, v in config.headers.items())
        self.compression = grpc.Compression.Gzip if config.compression == "gzip" else \
            grpc.Compression.NoCompression
        self.retries = 0
        self.rejected = {"traces": 0, "metrics": 0, "logs": 0}

    def start(self):
        """Create the channel (it connects lazily, on the first export), then the workers."""
        if self._channel is None:
            self._channel = self._make_channel()
            for signal, (method, response) in METHODS.items():
                self._calls[signal] = self._channel.unary_unary(
                    method, request_serializer=None, response_deserializer=response.FromString)
        super().start()

    def _call(self, signal):
        if not self._calls:
            self.start()
        return self._calls[signal]

    def _make_channel(self):
        options = [("grpc.enable_retries", 0), ("grpc.primary_user_agent", "gotel")]
        if not self.secure:
            return grpc.insecure_channel(self.target, options=options)
        tls = self.config.tls
        read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
        creds = grpc.ssl_channel_credentials(read(tls.ca_file), read(tls.key_file),
                                             read(tls.cert_file))
        if tls.server_name_override:
            options.append(("grpc.ssl_target_name_override", tls.server_name_override))
        return grpc.secure_channel(self.target, creds, options=options)

    def send(self, payload):
        """One export with retries; True when the collector accepted it."""
        retry = self.config.retry_on_failure
        call = self._call(payload.signal)
        started = time.monotonic()
        interval = retry.initial_interval
        item = ITEM_NAMES[payload.signal].replace("_", " ")
        while True:
            try:
                response = call(payload.data, timeout=self.config.timeout, metadata=self.metadata,
                                compression=self.compression)
            except grpc.RpcError as error:
                code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
                delay = None
                if code in RETRYABLE:
                    jitter = retry.randomization_factor * interval
                    delay = interval - jitter + 2 * jitter * self._random()
                    interval = min(interval * retry.multiplier, retry.max_interval)
                elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    delay = retry_delay(error)
                detail = (error.details() or "") if hasattr(error, "details") else str(error)
                detail = detail.splitlines()[0][:200] if detail else ""
                elapsed = time.monotonic() - started
                out_of_time = (retry.max_elapsed_time and not self.persistent
                               and elapsed + delay > retry.max_elapsed_time) if delay else False
                if delay is None or not retry.enabled or self.stop_event.is_set() or out_of_time:
                    why = ("not retryable" if delay is None else
                           "retries disabled" if not retry.enabled else
                           "shutting down" if self.stop_event.is_set() else
                           f"gave up after {_fmt_duration(elapsed)}")
                    self.last_failure = f"{self.target}: {code.name}" + (
                        f" ({detail})" if detail else "") + f"; {why}"
                    if delay is not None and retry.enabled and self.stop_event.is_set():
                        return KEEP         # on disk for the next start, or counted as failed
                    self.log_limited(logging.ERROR, ("failed", code),
                                     "exporter %s: export of %d %s to %s failed (%s: %s); %s, "
                                     "data dropped", self.name, payload.count, item, self.target,
                                     code.name, detail, why)
                    return False
                self.last_failure = f"{self.target}: {code.name}" + (f" ({detail})" if detail else "")
                if code == grpc.StatusCode.UNAVAILABLE:
                    self.log_limited(logging.ERROR, "unavailable",
                                     "exporter %s: cannot reach the collector at %s (%s); "
                                     "retrying %s, %d requests queued%s", self.name,
                                     self.target, detail or "UNAVAILABLE",
                                     "until it is back" if self.persistent else
                                     f"for up to {_fmt_duration(retry.max_elapsed_time)}",
                                     self.queue_size(),
                                     f" on disk in {self._queue.where}" if self.persistent and
                                     self._queue is not None else "")
                else:
                    self.log_limited(logging.WARNING, ("retry", code),
                                     "exporter %s: export to %s failed (%s: %s); retrying in "
                                     "%.1fs", self.name, self.target, code.name, detail, delay)
                self.retries += 1
                if self.stop_event.wait(delay):
                    self.last_failure += "; gotel was stopping"
                    return KEEP         # shutdown: kept on disk, or counted as failed
                continue
            self._partial_success(payload, response)
            return True

    def _partial_success(self, payload, response):
        partial = response.partial_success
        rejected = getattr(partial, REJECTED_FIELD[payload.signal], 0)
        if rejected or partial.error_message:
            self.rejected[payload.signal] += rejected
            self.log_limited(logging.WARNING, "partial",
                             "exporter %s: the collector rejected %d of %d %s: %s", self.name,
                             rejected, payload.count, ITEM_NAMES[payload.signal].replace("_", " "),
                             partial.error_message or "(no message)")

    def close(self):
        if self._channel is not None:
            self._channel.close()
            self._channel = None


def create(settings, config, next_stage=None):
    return OTLPGrpcExporter(settings.id, config)
