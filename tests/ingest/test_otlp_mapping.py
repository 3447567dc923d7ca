"""SPEC §11's mapping, pure: protobuf messages and OTLP/JSON structs onto §4's items, no server."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from uuid import UUID

import msgspec
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import HistogramDataPoint, Metric, SummaryDataPoint
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from prodsentinel.ingest import otlp_json
from prodsentinel.ingest.otlp_decoding import JSON_CODEC, PROTOBUF_CODEC
from prodsentinel.ingest.otlp_mapping import (
    SPAN_ID_NAMESPACE,
    format_bound,
    map_logs,
    map_metrics,
    map_spans,
    severity_level,
    span_signal_id,
)

NOW = datetime(2026, 1, 2, tzinfo=UTC)
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in unix nanoseconds


def kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


@pytest.mark.parametrize(
    ("number", "text", "level"),
    [
        (1, "", "DEBUG"), (4, "", "DEBUG"), (5, "", "DEBUG"), (8, "", "DEBUG"), (9, "", "INFO"),
        (12, "", "INFO"), (13, "", "WARN"), (16, "", "WARN"), (17, "", "ERROR"), (20, "", "ERROR"),
        (21, "", "CRITICAL"), (24, "", "CRITICAL"), (0, "warning", "WARN"), (0, "Error", "ERROR"),
        (0, "notice", "INFO"), (0, "", "INFO"),
    ],
)  # fmt: skip
def test_severity_numbers_and_text(number: int, text: str, level: str) -> None:
    assert severity_level(number, text) == level


@pytest.mark.parametrize(
    ("bound", "text"),
    [(10.0, "10"), (0.5, "0.5"), (1e-05, "0.00001"), (0.0, "0"), (250.0, "250"),
     (1e21, "1000000000000000000000"), (float("inf"), "+Inf"), (0.1, "0.1")],
)  # fmt: skip
def test_le_is_written_as_prometheus_writes_it(bound: float, text: str) -> None:
    assert format_bound(bound) == text


def _trace_request(*spans: Span) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(
        [kv("service.name", "shop"), kv("region", "eu"), kv("tier", "r")]
    )
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "shop.http"
    scope_spans.scope.attributes.append(kv("tier", "scope"))
    scope_spans.spans.extend(spans)
    return request


def test_span_mapping_overlays_attributes_and_maps_kind_status_and_exception_events() -> None:
    span = Span(
        trace_id=bytes(range(1, 17)),
        span_id=bytes(range(1, 9)),
        parent_span_id=bytes(range(9, 17)),
        name="GET /",
        kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=T0,
        end_time_unix_nano=T0 + 2_500_000,
        attributes=[kv("tier", "span")],
    )
    span.status.code = 2
    event = span.events.add(name="exception", time_unix_nano=T0 + 1000)
    event.attributes.extend([kv("exception.type", "KeyError"), kv("exception.message", "'sku'")])
    mapped = map_spans(PROTOBUF_CODEC, _trace_request(span))
    (item,) = mapped.items
    assert item.trace_id == bytes(range(1, 17)).hex()
    assert item.parent_span_id == bytes(range(9, 17)).hex()
    assert (item.service_name, item.status) == ("shop", "ERROR")
    assert item.attributes == {
        "service.name": "shop",
        "region": "eu",
        "tier": "span",
        "otel.scope.name": "shop.http",
        "span.kind": "CLIENT",
    }
    assert item.signal_id == span_signal_id(item.trace_id, item.span_id)
    assert (item.end_time - item.start_time).total_seconds() == 0.0025
    (log,) = mapped.logs
    assert (log.level, log.message, log.trace_id, log.span_id) == (
        "ERROR",
        "KeyError: 'sku'",
        item.trace_id,
        item.span_id,
    )
    assert mapped.log_owners == [0]


def test_invalid_spans_are_counted_with_the_first_problem() -> None:
    good = Span(
        trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="ok", start_time_unix_nano=T0, end_time_unix_nano=T0
    )
    bad_id = Span(
        trace_id=b"\x00" * 16,
        span_id=b"\x02" * 8,
        name="zero",
        start_time_unix_nano=T0,
        end_time_unix_nano=T0,
    )
    no_time = Span(trace_id=b"\x01" * 16, span_id=b"\x03" * 8, name="no time")
    mapped = map_spans(PROTOBUF_CODEC, _trace_request(bad_id, good, no_time))
    assert [item.name for item in mapped.items] == ["ok"]
    assert mapped.owners == [1]
    assert mapped.rejections.count == 2
    assert mapped.rejections.first == "span 0 ('zero'): trace_id is missing or all zero"


def test_otlp_json_and_protobuf_map_to_the_same_items() -> None:
    span = Span(
        trace_id=bytes(range(16)), span_id=bytes(range(8)), name="x", kind=2,
        start_time_unix_nano=T0, end_time_unix_nano=T0 + 1,
    )  # fmt: skip
    from_protobuf = map_spans(PROTOBUF_CODEC, _trace_request(span)).items
    resource = [("service.name", "shop"), ("region", "eu"), ("tier", "r")]
    json_span = {
        "traceId": bytes(range(16)).hex().upper(),
        "spanId": bytes(range(8)).hex().upper(),
        "name": "x",
        "kind": 2,
        "startTimeUnixNano": str(T0),
        "endTimeUnixNano": T0 + 1,
    }
    scope = {"name": "shop.http", "attributes": [{"key": "tier", "value": {"stringValue": "scope"}}]}
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": k, "value": {"stringValue": v}} for k, v in resource]},
                "scopeSpans": [{"scope": scope, "spans": [json_span]}],
            }
        ]
    }
    request = msgspec.json.decode(msgspec.json.encode(body), type=otlp_json.ExportTraceServiceRequest)
    assert map_spans(JSON_CODEC, request).items == from_protobuf


def test_log_bodies_times_and_deterministic_ids() -> None:
    request = ExportLogsServiceRequest()
    scope_logs = request.resource_logs.add().scope_logs.add()
    text = LogRecord(time_unix_nano=T0, severity_number=9, body=AnyValue(string_value="hello"))
    structured = LogRecord(observed_time_unix_nano=T0 + 5000, severity_number=13)
    structured.body.kvlist_value.values.extend([kv("order", "7")])
    timeless = LogRecord(severity_text="ERROR", body=AnyValue(int_value=3))
    scope_logs.log_records.extend([text, structured, timeless])
    first = map_logs(PROTOBUF_CODEC, request, NOW).items
    again = map_logs(PROTOBUF_CODEC, request, NOW).items
    assert [(i.message, i.level, i.service_name) for i in first] == [
        ("hello", "INFO", "unknown_service"),
        ('{"order":"7"}', "WARN", "unknown_service"),
        ("3", "ERROR", "unknown_service"),
    ]
    assert first[1].timestamp == datetime(2026, 1, 1, 0, 0, 0, 5, tzinfo=UTC)
    assert first[2].timestamp == NOW
    assert [i.signal_id for i in first] == [i.signal_id for i in again]
    assert len({i.signal_id for i in first}) == 3


def test_histogram_and_summary_points_as_prometheus_names() -> None:
    request = ExportMetricsServiceRequest()
    scope = request.resource_metrics.add().scope_metrics.add()
    histogram = Metric(name="latency")
    histogram.histogram.data_points.append(
        HistogramDataPoint(
            time_unix_nano=T0, count=6, sum=42.0, bucket_counts=[1, 2, 0, 3], explicit_bounds=[0.5, 10, 100],
            attributes=[kv("route", "/")],
        )
    )  # fmt: skip
    broken = Metric(name="broken")
    broken.histogram.data_points.append(
        HistogramDataPoint(time_unix_nano=T0, count=1, bucket_counts=[1], explicit_bounds=[1.0])
    )
    summary = Metric(name="rpc")
    point = SummaryDataPoint(time_unix_nano=T0, count=4, sum=2.0)
    point.quantile_values.add(quantile=0.99, value=1.5)
    summary.summary.data_points.append(point)
    scope.metrics.extend([histogram, broken, summary])
    mapped = map_metrics(PROTOBUF_CODEC, request)
    rows = [(item.name, item.value, item.labels) for item in mapped.items]
    assert rows == [
        ("latency_count", 6.0, {"route": "/"}),
        ("latency_sum", 42.0, {"route": "/"}),
        ("latency_bucket", 1.0, {"route": "/", "le": "0.5"}),
        ("latency_bucket", 3.0, {"route": "/", "le": "10"}),
        ("latency_bucket", 3.0, {"route": "/", "le": "100"}),
        ("latency_bucket", 6.0, {"route": "/", "le": "+Inf"}),
        ("rpc_count", 4.0, {}),
        ("rpc_sum", 2.0, {}),
        ("rpc", 1.5, {"quantile": "0.99"}),
    ]
    assert mapped.owners == [0, 0, 0, 0, 0, 0, 2, 2, 2]
    assert mapped.rejections.count == 1
    assert "1 bucket_counts for 1 explicit_bounds" in (mapped.rejections.first or "")
    assert all(item.signal_id is None for item in mapped.items)  # derived by §4's metric_rows


def test_span_ids_are_uuid5_of_the_trace_and_span_ids() -> None:
    trace_id, span_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    digest = hashlib.sha1(SPAN_ID_NAMESPACE.bytes + (trace_id + span_id).encode()).digest()
    expected = UUID(bytes=digest[:16], version=5)
    made = span_signal_id(trace_id, span_id)
    assert made == expected
    assert (made.version, made.variant, hash(made), str(made)) == (
        5,
        expected.variant,
        hash(expected),
        str(expected),
    )
