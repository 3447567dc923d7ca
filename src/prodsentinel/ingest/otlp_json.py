"""OTLP/JSON request bodies as msgspec structs (SPEC §11), decoded in one strict pass like §4's bodies.

Hand-written because the official classes only decode JSON through ``google.protobuf.json_format``, which
builds a dict of the whole body first and then walks it (STACK_FACTS: ingest decoding goes through msgspec,
never dicts), and because OTLP/JSON differs from the proto3 JSON mapping: trace and span ids are hex (not
base64) and enums are integers.

The Python attribute names are the protobuf field names (``rename="camel"`` gives the JSON spelling), and
every default equals the protobuf default, so ``ingest.otlp_mapping`` reads a decoded JSON request exactly
like a protobuf message (``span.status.code``, ``point.time_unix_nano``): one mapping for both. What still
differs (ids, ``AnyValue``, the ``oneof`` fields) is read through ``ingest.otlp_decoding``'s codecs.

64-bit integers may be JSON strings or numbers (proto3 JSON writes them as strings): typed ``int | str``
and converted by the mapping, where a bad string rejects one item rather than the body. Unknown fields
are ignored (msgspec's default).
"""

from __future__ import annotations

import msgspec

__all__ = (
    "AnyValue",
    "ArrayValue",
    "ExportLogsServiceRequest",
    "ExportMetricsServiceRequest",
    "ExportTraceServiceRequest",
    "KeyValue",
    "KeyValueList",
)

#: A 64-bit integer in OTLP/JSON: a decimal string or a number.
Int64 = int | str
#: A double in OTLP/JSON: a number, or "NaN" / "Infinity" / "-Infinity" as proto3 JSON writes them.
Double = float | str


class _Otlp(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=False):
    """lowerCamelCase on the wire, snake_case (the protobuf field names) in Python."""


class ArrayValue(_Otlp):
    values: list[AnyValue] = []


class KeyValueList(_Otlp):
    values: list[KeyValue] = []


class AnyValue(_Otlp):
    """``oneof value``: at most one field is set (the codec takes the first one present)."""

    string_value: str | None = None
    bool_value: bool | None = None
    int_value: Int64 | None = None
    double_value: Double | None = None
    array_value: ArrayValue | None = None
    kvlist_value: KeyValueList | None = None
    bytes_value: str | None = None  # base64, as in proto3 JSON


class KeyValue(_Otlp):
    key: str = ""
    value: AnyValue = msgspec.field(default_factory=AnyValue)


class Resource(_Otlp):
    attributes: list[KeyValue] = []


class InstrumentationScope(_Otlp):
    name: str = ""
    version: str = ""
    attributes: list[KeyValue] = []


# ------------------------------------------------------------------------------------------- traces
class Status(_Otlp):
    code: int = 0
    message: str = ""


class Event(_Otlp):
    time_unix_nano: Int64 = 0
    name: str = ""
    attributes: list[KeyValue] = []


class Span(_Otlp):
    trace_id: str = ""
    span_id: str = ""
    parent_span_id: str = ""
    name: str = ""
    kind: int = 0
    start_time_unix_nano: Int64 = 0
    end_time_unix_nano: Int64 = 0
    attributes: list[KeyValue] = []
    events: list[Event] = []
    status: Status = msgspec.field(default_factory=Status)


class ScopeSpans(_Otlp):
    scope: InstrumentationScope = msgspec.field(default_factory=InstrumentationScope)
    spans: list[Span] = []


class ResourceSpans(_Otlp):
    resource: Resource = msgspec.field(default_factory=Resource)
    scope_spans: list[ScopeSpans] = []


class ExportTraceServiceRequest(_Otlp):
    resource_spans: list[ResourceSpans] = []


# --------------------------------------------------------------------------------------------- logs
class LogRecord(_Otlp):
    time_unix_nano: Int64 = 0
    observed_time_unix_nano: Int64 = 0
    severity_number: int = 0
    severity_text: str = ""
    body: AnyValue = msgspec.field(default_factory=AnyValue)
    attributes: list[KeyValue] = []
    trace_id: str = ""
    span_id: str = ""


class ScopeLogs(_Otlp):
    scope: InstrumentationScope = msgspec.field(default_factory=InstrumentationScope)
    log_records: list[LogRecord] = []


class ResourceLogs(_Otlp):
    resource: Resource = msgspec.field(default_factory=Resource)
    scope_logs: list[ScopeLogs] = []


class ExportLogsServiceRequest(_Otlp):
    resource_logs: list[ResourceLogs] = []


# ------------------------------------------------------------------------------------------ metrics
class NumberDataPoint(_Otlp):
    attributes: list[KeyValue] = []
    time_unix_nano: Int64 = 0
    as_double: Double | None = None
    as_int: Int64 | None = None


class HistogramDataPoint(_Otlp):
    attributes: list[KeyValue] = []
    time_unix_nano: Int64 = 0
    count: Int64 = 0
    sum: Double | None = None
    bucket_counts: list[Int64] = []
    explicit_bounds: list[Double] = []


class ExponentialHistogramDataPoint(_Otlp):
    attributes: list[KeyValue] = []
    time_unix_nano: Int64 = 0
    count: Int64 = 0
    sum: Double | None = None


class ValueAtQuantile(_Otlp):
    quantile: Double = 0.0
    value: Double = 0.0


class SummaryDataPoint(_Otlp):
    attributes: list[KeyValue] = []
    time_unix_nano: Int64 = 0
    count: Int64 = 0
    sum: Double = 0.0
    quantile_values: list[ValueAtQuantile] = []


class Gauge(_Otlp):
    data_points: list[NumberDataPoint] = []


class Sum(_Otlp):
    data_points: list[NumberDataPoint] = []


class Histogram(_Otlp):
    data_points: list[HistogramDataPoint] = []


class ExponentialHistogram(_Otlp):
    data_points: list[ExponentialHistogramDataPoint] = []


class Summary(_Otlp):
    data_points: list[SummaryDataPoint] = []


class Metric(_Otlp):
    """``oneof data``: at most one of the five is set."""

    name: str = ""
    gauge: Gauge | None = None
    sum: Sum | None = None
    histogram: Histogram | None = None
    exponential_histogram: ExponentialHistogram | None = None
    summary: Summary | None = None


class ScopeMetrics(_Otlp):
    scope: InstrumentationScope = msgspec.field(default_factory=InstrumentationScope)
    metrics: list[Metric] = []


class ResourceMetrics(_Otlp):
    resource: Resource = msgspec.field(default_factory=Resource)
    scope_metrics: list[ScopeMetrics] = []


class ExportMetricsServiceRequest(_Otlp):
    resource_metrics: list[ResourceMetrics] = []
