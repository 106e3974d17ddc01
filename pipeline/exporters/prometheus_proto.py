"""The Prometheus protobuf exposition (``io.prometheus.client.MetricFamily``, length-delimited), for
the prometheus exporter's native histograms.

A scraper that asks for it (Prometheus with ``--enable-feature=native-histograms`` sends
``Accept: application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily;
encoding=delimited`` first) gets gotel's exponential histograms as native histograms: the OTLP
scale is the native schema, and OTLP bucket ``i``, which covers ``(base**i, base**(i+1)]``, is native
bucket ``i + 1``, which covers the same interval. The classic power-of-two buckets are sent along, as
client_golang does for histograms that have both.

The message classes are built at import from a descriptor written here (the subset of Prometheus's
``io/prometheus/client/metrics.proto`` that gotel writes, same field numbers), so gotel needs no
generated code.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.internal.encoder import _VarintBytes

CONTENT_TYPE = ("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; "
                "encoding=delimited")

_F = descriptor_pb2.FieldDescriptorProto
_TYPES = {"string": _F.TYPE_STRING, "double": _F.TYPE_DOUBLE, "uint64": _F.TYPE_UINT64,
          "sint32": _F.TYPE_SINT32, "sint64": _F.TYPE_SINT64, "uint32": _F.TYPE_UINT32,
          "int64": _F.TYPE_INT64, "enum": _F.TYPE_ENUM}
# message -> [(field, number, type or message name, repeated)]
_MESSAGES = {
    "LabelPair": [("name", 1, "string", False), ("value", 2, "string", False)],
    "Gauge": [("value", 1, "double", False)],
    "Counter": [("value", 1, "double", False)],
    "Bucket": [("cumulative_count", 1, "uint64", False), ("upper_bound", 2, "double", False)],
    "BucketSpan": [("offset", 1, "sint32", False), ("length", 2, "uint32", False)],
    "Histogram": [
        ("sample_count", 1, "uint64", False), ("sample_sum", 2, "double", False),
        ("bucket", 3, "Bucket", True), ("schema", 5, "sint32", False),
        ("zero_threshold", 6, "double", False), ("zero_count", 7, "uint64", False),
        ("negative_span", 9, "BucketSpan", True), ("negative_delta", 10, "sint64", True),
        ("positive_span", 12, "BucketSpan", True), ("positive_delta", 13, "sint64", True)],
    "Metric": [("label", 1, "LabelPair", True), ("gauge", 2, "Gauge", False),
               ("counter", 3, "Counter", False), ("histogram", 7, "Histogram", False)],
    "MetricFamily": [("name", 1, "string", False), ("help", 2, "string", False),
                     ("type", 3, "enum", False), ("metric", 4, "Metric", True)],
}
METRIC_TYPES = {"counter": 0, "gauge": 1, "histogram": 4}


def _build():
    fd = descriptor_pb2.FileDescriptorProto(name="gotel/prometheus_metrics.proto",
                                            package="io.prometheus.client", syntax="proto2")
    enum = fd.enum_type.add(name="MetricType")
    for name, number in (("COUNTER", 0), ("GAUGE", 1), ("SUMMARY", 2), ("UNTYPED", 3),
                         ("HISTOGRAM", 4), ("GAUGE_HISTOGRAM", 5)):
        enum.value.add(name=name, number=number)
    for message, fields in _MESSAGES.items():
        m = fd.message_type.add(name=message)
        for name, number, type_, repeated in fields:
            f = m.field.add(name=name, number=number,
                            label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if type_ in _TYPES:
                f.type = _TYPES[type_]
                if type_ == "enum":
                    f.type_name = ".io.prometheus.client.MetricType"
            else:
                f.type = _F.TYPE_MESSAGE
                f.type_name = f".io.prometheus.client.{type_}"
            if repeated and type_ in ("sint64",):
                f.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"io.prometheus.client.{name}")) for name in _MESSAGES}


CLASSES = _build()
Metric = CLASSES["Metric"]
MetricFamily = CLASSES["MetricFamily"]


def wants_protobuf(accept):
    """True when an Accept header prefers the delimited MetricFamily protobuf to text."""
    for part in (accept or "").split(","):
        media = part.strip()
        if media.startswith("application/vnd.google.protobuf") and \
                "io.prometheus.client.MetricFamily" in media and "delimited" in media:
            return True
        if media.startswith("text/plain") or media.startswith("application/openmetrics-text"):
            return False
    return False


def native_spans(offset, counts):
    """(spans [(offset, length)], deltas) of OTLP buckets (first index ``offset``) as native ones:
    runs of non-empty buckets, each span's offset the gap since the previous span's end (the first
    one absolute, in native indices), counts as deltas from the previous non-empty bucket."""
    spans, deltas = [], []
    previous_end = None            # native index after the last bucket of the last span
    last = 0
    for j, count in enumerate(counts):
        if not count:
            continue
        index = offset + j + 1
        if previous_end is not None and index == previous_end:
            spans[-1][1] += 1
        else:
            spans.append([index if previous_end is None else index - previous_end, 1])
        previous_end = index + 1
        deltas.append(int(count) - last)
        last = int(count)
    return [tuple(s) for s in spans], deltas


def metric(labels, kind, value=None, classic=None, dp=None):
    """One ``Metric`` as bytes. ``kind`` "counter"/"gauge" with ``value``; "histogram" with
    ``classic`` [(upper bound, cumulative count)], and ``dp`` an OTLP ExponentialHistogramDataPoint
    for the native part (None: classic only)."""
    m = Metric(label=[CLASSES["LabelPair"](name=k, value=v) for k, v in labels])
    if kind == "counter":
        m.counter.value = float(value)
    elif kind == "gauge":
        m.gauge.value = float(value)
    else:
        h = m.histogram
        count, total = value
        h.sample_count, h.sample_sum = int(count), float(total)
        for bound, cumulative in classic or ():
            h.bucket.add(upper_bound=float(bound), cumulative_count=int(cumulative))
        if dp is not None and -4 <= dp.scale <= 8:      # the schemas native histograms have
            h.schema = dp.scale
            h.zero_threshold = dp.zero_threshold
            h.zero_count = dp.zero_count
            for side, spans_field, deltas_field in ((dp.positive, h.positive_span, h.positive_delta),
                                                    (dp.negative, h.negative_span, h.negative_delta)):
                spans, deltas = native_spans(side.offset, side.bucket_counts)
                for off, length in spans:
                    spans_field.add(offset=off, length=length)
                deltas_field.extend(deltas)
            if not h.positive_span and not h.negative_span and not h.zero_count:
                # an empty native histogram still needs a span to be read as native
                h.positive_span.add(offset=0, length=0)
    return m.SerializeToString()


def family(name, help_, kind, metrics):
    """One length-delimited MetricFamily holding already serialized Metrics."""
    fam = MetricFamily(name=name, help=help_, type=METRIC_TYPES[kind])
    for data in metrics:
        fam.metric.add().MergeFromString(data)
    body = fam.SerializeToString()
    return _VarintBytes(len(body)) + body   # length-delimited, as Prometheus reads it

