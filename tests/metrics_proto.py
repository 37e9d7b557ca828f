"""An independent decoder of the Prometheus protobuf exposition: the message
types of client_model's metrics.proto (io.prometheus.client), declared here
field by field with the `protobuf` package's descriptors, so that the tests
decode what the exporter sends without the Rust side's types."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.internal.decoder import _DecodeVarint32

F = descriptor_pb2.FieldDescriptorProto
OPTIONAL, REPEATED = F.LABEL_OPTIONAL, F.LABEL_REPEATED

# message -> [(name, number, type, label, type_name)]; proto2 semantics, as
# client_model declares them.
MESSAGES = {
    "LabelPair": [("name", 1, F.TYPE_STRING, OPTIONAL, None),
                  ("value", 2, F.TYPE_STRING, OPTIONAL, None)],
    "Timestamp": [("seconds", 1, F.TYPE_INT64, OPTIONAL, None),
                  ("nanos", 2, F.TYPE_INT32, OPTIONAL, None)],
    "Gauge": [("value", 1, F.TYPE_DOUBLE, OPTIONAL, None)],
    "Exemplar": [("label", 1, F.TYPE_MESSAGE, REPEATED, "LabelPair"),
                 ("value", 2, F.TYPE_DOUBLE, OPTIONAL, None),
                 ("timestamp", 3, F.TYPE_MESSAGE, OPTIONAL, "Timestamp")],
    "Counter": [("value", 1, F.TYPE_DOUBLE, OPTIONAL, None),
                ("exemplar", 2, F.TYPE_MESSAGE, OPTIONAL, "Exemplar"),
                ("start_timestamp", 3, F.TYPE_MESSAGE, OPTIONAL, "Timestamp")],
    "Quantile": [("quantile", 1, F.TYPE_DOUBLE, OPTIONAL, None),
                 ("value", 2, F.TYPE_DOUBLE, OPTIONAL, None)],
    "Summary": [("sample_count", 1, F.TYPE_UINT64, OPTIONAL, None),
                ("sample_sum", 2, F.TYPE_DOUBLE, OPTIONAL, None),
                ("quantile", 3, F.TYPE_MESSAGE, REPEATED, "Quantile"),
                ("start_timestamp", 4, F.TYPE_MESSAGE, OPTIONAL, "Timestamp")],
    "Untyped": [("value", 1, F.TYPE_DOUBLE, OPTIONAL, None)],
    "Bucket": [("cumulative_count", 1, F.TYPE_UINT64, OPTIONAL, None),
               ("cumulative_count_float", 4, F.TYPE_DOUBLE, OPTIONAL, None),
               ("upper_bound", 2, F.TYPE_DOUBLE, OPTIONAL, None),
               ("exemplar", 3, F.TYPE_MESSAGE, OPTIONAL, "Exemplar")],
    "BucketSpan": [("offset", 1, F.TYPE_SINT32, OPTIONAL, None),
                   ("length", 2, F.TYPE_UINT32, OPTIONAL, None)],
    "Histogram": [("sample_count", 1, F.TYPE_UINT64, OPTIONAL, None),
                  ("sample_count_float", 4, F.TYPE_DOUBLE, OPTIONAL, None),
                  ("sample_sum", 2, F.TYPE_DOUBLE, OPTIONAL, None),
                  ("bucket", 3, F.TYPE_MESSAGE, REPEATED, "Bucket"),
                  ("start_timestamp", 15, F.TYPE_MESSAGE, OPTIONAL, "Timestamp"),
                  ("schema", 5, F.TYPE_SINT32, OPTIONAL, None),
                  ("zero_threshold", 6, F.TYPE_DOUBLE, OPTIONAL, None),
                  ("zero_count", 7, F.TYPE_UINT64, OPTIONAL, None),
                  ("zero_count_float", 8, F.TYPE_DOUBLE, OPTIONAL, None),
                  ("negative_span", 9, F.TYPE_MESSAGE, REPEATED, "BucketSpan"),
                  ("negative_delta", 10, F.TYPE_SINT64, REPEATED, None),
                  ("negative_count", 11, F.TYPE_DOUBLE, REPEATED, None),
                  ("positive_span", 12, F.TYPE_MESSAGE, REPEATED, "BucketSpan"),
                  ("positive_delta", 13, F.TYPE_SINT64, REPEATED, None),
                  ("positive_count", 14, F.TYPE_DOUBLE, REPEATED, None),
                  ("exemplars", 16, F.TYPE_MESSAGE, REPEATED, "Exemplar")],
    "Metric": [("label", 1, F.TYPE_MESSAGE, REPEATED, "LabelPair"),
               ("gauge", 2, F.TYPE_MESSAGE, OPTIONAL, "Gauge"),
               ("counter", 3, F.TYPE_MESSAGE, OPTIONAL, "Counter"),
               ("summary", 4, F.TYPE_MESSAGE, OPTIONAL, "Summary"),
               ("untyped", 5, F.TYPE_MESSAGE, OPTIONAL, "Untyped"),
               ("histogram", 7, F.TYPE_MESSAGE, OPTIONAL, "Histogram"),
               ("timestamp_ms", 6, F.TYPE_INT64, OPTIONAL, None)],
    "MetricFamily": [("name", 1, F.TYPE_STRING, OPTIONAL, None),
                     ("help", 2, F.TYPE_STRING, OPTIONAL, None),
                     ("type", 3, F.TYPE_ENUM, OPTIONAL, "MetricType"),
                     ("metric", 4, F.TYPE_MESSAGE, REPEATED, "Metric"),
                     ("unit", 5, F.TYPE_STRING, OPTIONAL, None)],
}
METRIC_TYPES = ["COUNTER", "GAUGE", "SUMMARY", "UNTYPED", "HISTOGRAM", "GAUGE_HISTOGRAM"]
PACKAGE = "io.prometheus.client.test"


def _build():
    fdp = descriptor_pb2.FileDescriptorProto(name="metrics_test.proto", package=PACKAGE,
                                             syntax="proto2")
    enum = fdp.enum_type.add(name="MetricType")
    for i, name in enumerate(METRIC_TYPES):
        enum.value.add(name=name, number=i)
    for message, fields in MESSAGES.items():
        m = fdp.message_type.add(name=message)
        for name, number, ftype, label, type_name in fields:
            f = m.field.add(name=name, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = f".{PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.MetricFamily"))


MetricFamily = _build()


def decode_delimited(body: bytes) -> list:
    """The MetricFamily messages of a `encoding=delimited` body."""
    families = []
    pos = 0
    while pos < len(body):
        length, pos = _DecodeVarint32(body, pos)
        family = MetricFamily()
        family.ParseFromString(body[pos:pos + length])
        families.append(family)
        pos += length
    return families


def labels(metric) -> dict[str, str]:
    return {pair.name: pair.value for pair in metric.label}


def native_buckets(histogram) -> dict[int, int]:
    """Index -> count of the positive native buckets (spans and deltas undone)."""
    out: dict[int, int] = {}
    deltas = iter(histogram.positive_delta)
    index, count = 0, 0
    for i, span in enumerate(histogram.positive_span):
        index = span.offset if i == 0 else index + span.offset
        for _ in range(span.length):
            count += next(deltas)
            if count:
                out[index] = count
            index += 1
    return out
