"""OTLP spans straight to stored rows (``ingest.otlp_spans``), pure: the same rows and rules as mapping
onto §4's items and building them with §4's ``span_rows``, and the protobuf decoder that reads span
attributes as their serialized ``KeyValue`` s."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from prodsentinel.ingest.otlp_decoding import JSON, PROTOBUF, PROTOBUF_CODEC, TRACES, decode_request
from prodsentinel.ingest.otlp_mapping import map_spans
from prodsentinel.ingest.otlp_spans import span_rows
from prodsentinel.ingest.services import MAX_ATTRIBUTE_DEPTH
from prodsentinel.ingest.services import span_rows as section4_span_rows
from prodsentinel.lib.errors import BadRequestError

NOW = datetime(2026, 1, 2, tzinfo=UTC)
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in unix nanoseconds
PROJECT = uuid.UUID("00000000-0000-4000-8000-000000000001")


def kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def text(value: str) -> AnyValue:
    return AnyValue(string_value=value)


def span(n: int, **fields: Any) -> Span:
    values: dict[str, Any] = {
        "trace_id": bytes([n + 1]) * 16,
        "span_id": bytes([n + 1]) * 8,
        "name": f"span {n}",
        "kind": Span.SPAN_KIND_SERVER,
        "start_time_unix_nano": T0 + n * 1_000_123,
        "end_time_unix_nano": T0 + n * 1_000_123 + 2_500_999,
    }
    values.update(fields)
    return Span(**values)


def request(*spans: Span, scope_attributes: list[KeyValue] | None = None) -> bytes:
    message = ExportTraceServiceRequest()
    resource_spans = message.resource_spans.add()
    resource_spans.resource.attributes.extend(
        [kv("service.name", text("shop")), kv("tier", text("resource")), kv("region", text("eu"))]
    )
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "shop.http"
    scope_spans.scope.attributes.extend(scope_attributes or [])
    scope_spans.spans.extend(spans)
    encoded: bytes = message.SerializeToString()
    return encoded


def rows_of(body: bytes) -> Any:
    message, codec = decode_request(TRACES, body, PROTOBUF)
    return span_rows(codec, message, PROJECT, NOW)


def every_kind_of_value() -> list[KeyValue]:
    nested = KeyValueList(values=[kv("inner", AnyValue(int_value=7))])
    return [
        kv("s", text("x")),
        kv("empty", text("")),
        kv("unset", AnyValue()),
        kv("b", AnyValue(bool_value=True)),
        kv("f", AnyValue(bool_value=False)),
        kv("i", AnyValue(int_value=-3)),
        kv("zero", AnyValue(int_value=0)),
        kv("d", AnyValue(double_value=0.25)),
        kv("raw", AnyValue(bytes_value=b"\x00\x01")),
        kv("list", AnyValue(array_value=ArrayValue(values=[text("a"), AnyValue(int_value=1)]))),
        kv("map", AnyValue(kvlist_value=nested)),
        kv("tier", text("span")),  # over the resource's
    ]


def test_rows_are_section_4s_rows_of_the_mapped_spans() -> None:
    error = span(1, attributes=every_kind_of_value(), parent_span_id=b"\x09" * 8)
    error.status.code = 2
    error.status.message = "boom"
    body = request(span(0, attributes=[kv("http.route", text("/"))]), error, span(2))
    built = rows_of(body)
    mapped = map_spans(PROTOBUF_CODEC, ExportTraceServiceRequest.FromString(body))
    expected, notify = section4_span_rows(PROJECT, mapped.items, NOW, True)
    assert [row[:11] for row in built.rows] == [row[:11] for row in expected]
    # the attributes column is jsonb: the same value, not necessarily the same text
    assert [json.loads(row[11]) for row in built.rows] == [json.loads(row[11]) for row in expected]
    assert json.loads(built.rows[1][11])["tier"] == "span"
    assert json.loads(built.rows[0][11])["tier"] == "resource"
    assert (built.owners, built.total, built.notify, notify) == ([0, 1, 2], 3, True, True)
    assert built.rejections.count == 0


def test_span_attributes_read_as_bytes_equal_the_official_classes_reading() -> None:
    """Twice: the second request is read from the cache of serialized ``KeyValue`` s."""
    body = request(span(0, attributes=every_kind_of_value()))
    official = map_spans(PROTOBUF_CODEC, ExportTraceServiceRequest.FromString(body)).items[0].attributes
    for _ in range(2):
        (row,) = rows_of(body).rows
        assert json.loads(row[11]) == msgspec.json.decode(msgspec.json.encode(official))


def test_a_span_breaking_section_4s_rules_is_rejected_and_the_others_kept() -> None:
    future = T0 + 3 * 86_400 * 10**9
    deep: AnyValue = text("x")
    for _ in range(MAX_ATTRIBUTE_DEPTH + 1):
        deep = AnyValue(array_value=ArrayValue(values=[deep]))
    body = request(
        span(0, start_time_unix_nano=future, end_time_unix_nano=future),
        span(1),
        span(2, name="nul\x00name"),
        span(3, attributes=[kv("deep", deep)]),
        span(4, attributes=[kv("k", text("nul\x00value"))]),
        span(5, trace_id=b"\x00" * 16),
    )
    built = rows_of(body)
    assert built.owners == [1]
    assert built.rejections.count == 5
    assert built.rejections.first is not None
    assert built.rejections.first.startswith("span 'span 0' (trace_id 01010101")
    assert built.rejections.first.endswith("start_time: Timestamp is more than 24 h in the future")


def test_a_scope_attribute_with_a_nul_rejects_every_span_of_the_scope() -> None:
    built = rows_of(request(span(0), span(1), scope_attributes=[kv("k", text("a\x00b"))]))
    assert (built.rows, built.rejections.count) == ([], 2)
    assert built.rejections.first is not None
    assert built.rejections.first.endswith("attributes: NUL characters (\\u0000) are not allowed")


def test_undecodable_span_attributes_are_a_400_like_any_undecodable_body() -> None:
    body = request(span(0, attributes=[kv("k", text("v"))]))
    bad = body.replace(b"\n\x01k", b"\n\x01\xff")  # the key is no longer UTF-8
    assert bad != body
    with pytest.raises(BadRequestError, match="not a valid ExportTraceServiceRequest protobuf"):
        rows_of(bad)


def test_otlp_json_spans_take_the_same_path() -> None:
    body = request(span(0, attributes=[kv("n", AnyValue(int_value=3))]))
    as_json = msgspec.json.encode(
        {
            "resourceSpans": [
                {
                    "resource": {
                        "attributes": [
                            {"key": "service.name", "value": {"stringValue": "shop"}},
                            {"key": "tier", "value": {"stringValue": "resource"}},
                            {"key": "region", "value": {"stringValue": "eu"}},
                        ]
                    },
                    "scopeSpans": [
                        {
                            "scope": {"name": "shop.http"},
                            "spans": [
                                {
                                    "traceId": "01" * 16,
                                    "spanId": "01" * 8,
                                    "name": "span 0",
                                    "kind": 2,
                                    "startTimeUnixNano": str(T0),
                                    "endTimeUnixNano": str(T0 + 2_500_999),
                                    "attributes": [{"key": "n", "value": {"intValue": "3"}}],
                                }
                            ],
                        }
                    ],
                }
            ]
        }
    )
    message, codec = decode_request(TRACES, as_json, JSON)
    from_json = span_rows(codec, message, PROJECT, NOW).rows
    (row,) = rows_of(body).rows
    assert [r[:11] for r in from_json] == [row[:11]]
    assert json.loads(from_json[0][11]) == json.loads(row[11])


def test_undecodable_attributes_of_an_otherwise_invalid_span_are_still_a_400() -> None:
    body = request(span(0, trace_id=b"\x00" * 16, attributes=[kv("k", text("v"))]))
    bad = body.replace(b"\n\x01k", b"\n\x01\xff")
    with pytest.raises(BadRequestError):
        rows_of(bad)
