"""Prometheus exporter (type ``prometheus``): serves the latest metrics on ``/metrics``, like the
Collector's ``prometheus`` exporter.

Each metrics export request replaces the series it carries (cumulative data, so the last point is
the value); a scrape renders them in the Prometheus text format 0.0.4. Names and units are
translated as the Collector translates OTLP (its ``add_metric_suffixes`` default):

- every character outside ``[a-zA-Z0-9_:]`` becomes ``_`` (``go.goroutine.count`` ->
  ``go_goroutine_count``), ``namespace`` is prepended with ``_``;
- the unit becomes a suffix unless the name already ends with it: ``s`` -> ``_seconds``,
  ``By`` -> ``_bytes``, ``ms`` -> ``_milliseconds``, ``1`` on a gauge -> ``_ratio``, ``%`` ->
  ``_percent``, ``X/Y`` -> ``_X_per_Y``; annotations in braces (``{goroutine}``) give no suffix;
- a monotonic cumulative sum is a counter with ``_total``; a non-monotonic sum is a gauge;
- attributes become labels with ``.`` and other invalid characters as ``_``; every series also
  carries its instrumentation scope (``otel_scope_name``, ``otel_scope_version``,
  ``otel_scope_schema_url``);
- the Resource gives ``job`` (``service.namespace/service.name``) and ``instance``
  (``service.instance.id``) on every series, and its other attributes one ``target_info`` series
  per Resource; ``resource_to_telemetry_conversion::enabled`` puts them on every series instead.

Exponential histograms (gotel's durations) are rendered as classic histograms: one ``le`` bucket per
power of two from 2^-24 s (~60 ns) to 2^16 s (~18 h), plus ``+Inf``. Powers of two are bucket
boundaries of an exponential histogram at every scale >= 0, so these cumulative counts are exact
(a scale < 0 is widened to the nearest power-of-two boundary below). A scraper that negotiates the
protobuf exposition (Prometheus with native histograms enabled) gets them as native histograms as
well, bucket for bucket (``prometheus_proto``).

Series not updated for ``metric_expiration`` (default 5m, as the Collector) are dropped, so an
exited process's series disappear. Two metrics that translate to one name with different types keep
the first; the rest are counted in ``conflicts`` and logged once. Thread-safety: export workers and
the HTTP server threads share the series under one lock; a scrape copies nothing but what it prints.
Cost: one protobuf parse per export request; a scrape renders every series (about 1 us per sample).
"""

import base64
import dataclasses
import http.server
import json
import logging
import math
import re
import socketserver
import threading
import time

from pipeline.exporters import prometheus_proto
from pipeline.exporters.base import Exporter, QueueConfig
from receiver.errors import ConfigError

TYPE = "prometheus"
SIGNALS = ("metrics",)

log = logging.getLogger("gotel.exporter.prometheus")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Classic bucket upper bounds for exponential histograms: powers of two, 2^-24 .. 2^16.
BUCKET_EXPONENTS = range(-24, 17)


@dataclasses.dataclass(frozen=True)
class ResourceToTelemetry:
    """resource_to_telemetry_conversion: Resource attributes as labels on every series."""

    enabled: bool = False

    def validate(self):
        return []


@dataclasses.dataclass(frozen=True)
class Config:
    """exporters::prometheus: the Collector's keys (``add_metric_suffixes`` as its default)."""

    endpoint: str = "localhost:8889"
    namespace: str = ""
    const_labels: dict[str, str] = dataclasses.field(default_factory=dict)
    resource_to_telemetry_conversion: ResourceToTelemetry = ResourceToTelemetry()
    metric_expiration: float = dataclasses.field(default=300.0, metadata={"duration": "s"})
    add_metric_suffixes: bool = True

    def address(self):
        host, _, port = self.endpoint.strip().rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)

    def validate(self):
        problems = []
        host, sep, port = self.endpoint.strip().rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            problems.append(f"endpoint must be host:port (e.g. localhost:8889), not {self.endpoint!r}")
        if self.namespace and not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", self.namespace):
            problems.append(f"namespace must match [a-zA-Z_:][a-zA-Z0-9_:]*, not {self.namespace!r}")
        for key in self.const_labels:
            if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", key):
                problems.append(f"const_labels: invalid label name {key!r}")
        if self.metric_expiration <= 0:
            problems.append("metric_expiration must be > 0")
        return problems


# --- names --------------------------------------------------------------------------------------
_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]")
UNITS = {
    "d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds",
    "us": "microseconds", "ns": "nanoseconds", "By": "bytes", "KiBy": "kibibytes",
    "MiBy": "mebibytes", "GiBy": "gibibytes", "TiBy": "tibibytes", "KBy": "kilobytes",
    "MBy": "megabytes", "GBy": "gigabytes", "TBy": "terabytes", "m": "meters", "V": "volts",
    "A": "amperes", "J": "joules", "W": "watts", "g": "grams", "Cel": "celsius", "Hz": "hertz",
    "%": "percent",
}
PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month",
             "y": "year"}


def unit_suffix(unit, gauge):
    """The name suffix a UCUM unit gives ("" for none), as the Collector's translator."""
    unit = re.sub(r"\{[^}]*\}", "", unit or "").strip()
    if not unit:
        return ""
    if unit == "1":
        return "ratio" if gauge else ""
    main, _, per = unit.partition("/")
    words = []
    if main:
        words.append(UNITS.get(main, main))
    if per:
        words += ["per", PER_UNITS.get(per, UNITS.get(per, per))]
    return _INVALID_NAME.sub("_", "_".join(words)).strip("_")


def metric_name(name, unit, kind, namespace="", suffixes=True):
    """The Prometheus name of an OTLP metric. ``kind``: "counter", "gauge" or "histogram"."""
    out = _INVALID_NAME.sub("_", name)
    out = re.sub(r"__+", "_", out).strip("_") or "_"
    if suffixes:
        tokens = out.split("_")
        suffix = unit_suffix(unit, kind == "gauge")
        if suffix and tokens[-len(suffix.split("_")):] != suffix.split("_"):
            out += "_" + suffix
        if kind == "counter":
            if out.endswith("_total"):
                pass
            else:
                out += "_total"
    if namespace:
        out = f"{namespace}_{out}"
    if out[0].isdigit():
        out = "_" + out
    return out


def label_name(key):
    out = _INVALID_LABEL.sub("_", key)
    if out and out[0].isdigit():
        out = "key_" + out
    return out or "_"


def _escape(value):
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _value(v):
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "+Inf" if v > 0 else "-Inf"
        return repr(v)
    return str(v)


def _any_value(v):
    """An attribute value as the Collector's pdata ``AsString`` writes it (arrays and maps as JSON)."""
    kind = v.WhichOneof("value")
    if kind is None:
        return ""
    value = getattr(v, kind)
    if kind == "bool_value":
        return "true" if value else "false"
    if kind in ("string_value", "int_value", "double_value"):
        return str(value)
    if kind == "bytes_value":
        return base64.b64encode(value).decode()
    return json.dumps(_plain(v), separators=(",", ":"), ensure_ascii=False)


def _plain(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_plain(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return getattr(v, kind) if kind else None


def _attributes(kvs):
    return {kv.key: _any_value(kv.value) for kv in kvs}


# --- exponential histogram -> classic buckets ---------------------------------------------------
def classic_buckets(dp):
    """Cumulative counts at the BUCKET_EXPONENTS boundaries (le = 2**k) of an exponential histogram
    data point. Bucket i of scale s covers (2**(i / 2**s), 2**((i+1) / 2**s)]."""
    below = dp.zero_count + sum(dp.negative.bucket_counts)
    counts = list(dp.positive.bucket_counts)
    offset = dp.positive.offset
    scale = dp.scale
    out = []
    cumulative = below
    j = 0
    for k in BUCKET_EXPONENTS:
        # buckets whose upper bound 2**((i+1)/2**scale) <= 2**k, i.e. i + 1 <= k * 2**scale
        limit = math.floor(k * 2.0 ** scale) - offset      # index of first bucket not included
        while j < len(counts) and j < limit:
            cumulative += counts[j]
            j += 1
        out.append((k, cumulative))
    return out


# --- the series store ---------------------------------------------------------------------------
class _Family:
    __slots__ = ("name", "type", "help", "samples")

    def __init__(self, name, type_, help_):
        self.name = name
        self.type = type_
        self.help = help_
        self.samples = {}          # label tuple -> (text lines, updated monotonic time, protobuf)


class PrometheusExporter(Exporter):
    """Keeps the latest series of every metrics request and serves them on ``/metrics``."""

    def __init__(self, name, config=Config(), clock=time.monotonic):
        super().__init__(name, QueueConfig(True, 1, 1000))
        self.config = config
        self.clock = clock
        self.lock = threading.Lock()
        self.families = {}
        self.conflicts = 0
        self.scrapes = 0
        self._server = None
        self._thread = None

    @property
    def port(self):
        return self._server.server_address[1] if self._server else None

    def start(self):
        if self._server is None:
            exporter = self

            class Handler(http.server.BaseHTTPRequestHandler):
                def do_GET(self):  # noqa: N802
                    if self.path.split("?")[0] != "/metrics":
                        self.send_error(404, "gotel serves /metrics")
                        return
                    if prometheus_proto.wants_protobuf(self.headers.get("Accept")):
                        body, content_type = exporter.render_protobuf(), prometheus_proto.CONTENT_TYPE
                    else:
                        body, content_type = exporter.render().encode(), CONTENT_TYPE
                    self.send_response(200)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

                def log_message(self, *args):
                    pass

            class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
                daemon_threads = True
                allow_reuse_address = True

            host, port = self.config.address()
            try:
                self._server = Server((host, port), Handler)
            except OSError as e:
                raise ConfigError([f"exporters::{self.name}::endpoint: cannot listen on "
                                   f"{self.config.endpoint}: {e.strerror or e}; choose another "
                                   "endpoint"]) from e
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            name=f"gotel-prometheus-{self.name}", daemon=True)
            self._thread.start()
        super().start()

    def send(self, payload):
        if payload.signal != "metrics":
            return False
        self.update(payload.message())
        return True

    # translation
    def update(self, request):
        """Replace the series carried by an ExportMetricsServiceRequest."""
        cfg = self.config
        now = self.clock()
        with self.lock:
            for rm in request.resource_metrics:
                res = _attributes(rm.resource.attributes)
                job = res.get("service.name", "")
                if res.get("service.namespace"):
                    job = f"{res['service.namespace']}/{job}"
                base = {}
                if job:
                    base["job"] = job
                if res.get("service.instance.id"):
                    base["instance"] = res["service.instance.id"]
                base.update(cfg.const_labels)
                rest = {label_name(k): v for k, v in res.items()
                        if k not in ("service.name", "service.namespace", "service.instance.id")}
                if cfg.resource_to_telemetry_conversion.enabled:
                    base = {**rest, **base}
                elif rest:
                    self._put("target_info", "gauge", "Target metadata",
                              {**base, **rest}, [("", (), 1)], now)
                for sm in rm.scope_metrics:
                    # the instrumentation scope, as the Collector labels every series with it
                    scoped = {**base, "otel_scope_name": sm.scope.name,
                              "otel_scope_version": sm.scope.version,
                              "otel_scope_schema_url": sm.schema_url}
                    for m in sm.metrics:
                        self._metric(m, scoped, now)
            self._expire(now)

    def _metric(self, m, base, now):
        kind = m.WhichOneof("data")
        ns, suffixes = self.config.namespace, self.config.add_metric_suffixes
        if kind == "sum":
            counter = m.sum.is_monotonic and m.sum.aggregation_temporality == 2
            type_ = "counter" if counter else "gauge"
            name = metric_name(m.name, m.unit, type_, ns, suffixes)
            for dp in m.sum.data_points:
                self._put(name, type_, m.description, {**base, **self._labels(dp)},
                          [("", (), dp.as_double if dp.HasField("as_double") else dp.as_int)], now)
        elif kind == "gauge":
            name = metric_name(m.name, m.unit, "gauge", ns, suffixes)
            for dp in m.gauge.data_points:
                self._put(name, "gauge", m.description, {**base, **self._labels(dp)},
                          [("", (), dp.as_double if dp.HasField("as_double") else dp.as_int)], now)
        elif kind == "histogram" and m.histogram.aggregation_temporality == 2:
            name = metric_name(m.name, m.unit, "histogram", ns, suffixes)
            for dp in m.histogram.data_points:
                samples, cumulative = [], 0
                for bound, count in zip(dp.explicit_bounds, dp.bucket_counts):
                    cumulative += count
                    samples.append(("_bucket", (("le", _value(float(bound))),), cumulative))
                samples.append(("_bucket", (("le", "+Inf"),), dp.count))
                samples += [("_sum", (), dp.sum), ("_count", (), dp.count)]
                self._put(name, "histogram", m.description, {**base, **self._labels(dp)},
                          samples, now)
        elif kind == "exponential_histogram" and m.exponential_histogram.aggregation_temporality == 2:
            name = metric_name(m.name, m.unit, "histogram", ns, suffixes)
            for dp in m.exponential_histogram.data_points:
                samples = [("_bucket", (("le", _value(2.0 ** k)),), c)
                           for k, c in classic_buckets(dp)]
                samples.append(("_bucket", (("le", "+Inf"),), dp.count))
                samples += [("_sum", (), dp.sum), ("_count", (), dp.count)]
                self._put(name, "histogram", m.description, {**base, **self._labels(dp)},
                          samples, now, dp)
        # delta histograms and summaries: not produced by gotel, and the Collector drops delta too

    @staticmethod
    def _labels(dp):
        return {label_name(kv.key): _any_value(kv.value) for kv in dp.attributes}

    def _put(self, name, type_, help_, labels, samples, now, native=None):
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = _Family(name, type_, help_)
        elif family.type != type_:
            self.conflicts += 1
            if self.conflicts == 1:
                log.warning("exporter %s: %s is both a %s and a %s; keeping the %s", self.name,
                            name, family.type, type_, family.type)
            return
        key = tuple(sorted(labels.items()))
        label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in key)
        lines = []
        for suffix, extra, value in samples:
            text = label_text
            if extra:
                more = ",".join(f'{k}="{_escape(v)}"' for k, v in extra)
                text = f"{label_text},{more}" if label_text else more
            braces = f"{{{text}}}" if text else ""
            lines.append(f"{name}{suffix}{braces} {_value(value)}")
        if type_ == "histogram":
            tail = {suffix: value for suffix, _, value in samples if suffix != "_bucket"}
            classic = [(float(extra[0][1]), value) for suffix, extra, value in samples
                       if suffix == "_bucket" and extra[0][1] != "+Inf"]
            proto = prometheus_proto.metric(key, "histogram", (tail["_count"], tail["_sum"]),
                                            classic, native)
        else:
            proto = prometheus_proto.metric(key, type_, samples[0][2])
        family.samples[key] = (lines, now, proto)

    def _expire(self, now):
        limit = now - self.config.metric_expiration
        for name in list(self.families):
            family = self.families[name]
            for key in [k for k, (_, t, _) in family.samples.items() if t < limit]:
                del family.samples[key]
            if not family.samples:
                del self.families[name]

    def render(self):
        """The text exposition of every live series."""
        out = []
        with self.lock:
            self.scrapes += 1
            self._expire(self.clock())
            for name in sorted(self.families):
                family = self.families[name]
                if family.help:
                    help_ = family.help.replace("\\", "\\\\").replace("\n", "\\n")
                    out.append(f"# HELP {name} {help_}")
                out.append(f"# TYPE {name} {family.type}")
                for lines, _, _ in family.samples.values():
                    out.extend(lines)
        out.append("")
        return "\n".join(out)

    def render_protobuf(self):
        """The delimited protobuf exposition of every live series (native histograms included)."""
        with self.lock:
            self.scrapes += 1
            self._expire(self.clock())
            return b"".join(
                prometheus_proto.family(name, f.help, f.type, [p for _, _, p in f.samples.values()])
                for name, f in sorted(self.families.items()))

    def close(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def create(settings, config, next_stage=None):
    return PrometheusExporter(settings.id, config)
