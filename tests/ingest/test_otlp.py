"""OTLP/HTTP ingest (SPEC §11) against the real server under granian, with the real OpenTelemetry SDK
exporters, read back through the query API and checked in PostgreSQL."""

from __future__ import annotations

import asyncio
import gzip
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    InMemoryLogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.system.demo import SERVICES, run_demo
from tests.conftest import KeyFactory
from tests.ingest.test_ingest import stored
from tests.system.servers import granian_server

PROTOBUF = "application/x-protobuf"
DAY_AND_MORE = 25 * 3600 * 10**9  # nanoseconds
SEVERITIES = [
    (SeverityNumber.TRACE, "DEBUG"),
    (SeverityNumber.DEBUG, "DEBUG"),
    (SeverityNumber.INFO, "INFO"),
    (SeverityNumber.WARN, "WARN"),
    (SeverityNumber.ERROR, "ERROR"),
    (SeverityNumber.FATAL, "CRITICAL"),
]


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[str]:
    with granian_server({"DATABASE_URL": database_url}) as base_url:
        yield base_url


def service_name() -> str:
    return f"svc-{uuid.uuid4().hex[:8]}"


def make_spans(service: str) -> tuple[list[ReadableSpan], str]:
    """A SERVER span with a CLIENT child that fails with an exception; the spans and their trace id."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service, "deployment": "test"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("checkout.http")
    with tracer.start_as_current_span("GET /checkout", kind=SpanKind.SERVER) as parent:
        parent.set_attribute("http.route", "/checkout")
        parent.set_attribute("deployment", "canary")  # a span's attribute over the resource's
        with tracer.start_as_current_span("charge card", kind=SpanKind.CLIENT) as child:
            child.record_exception(ValueError("card declined"))
            child.set_status(Status(StatusCode.ERROR, "declined"))
    provider.shutdown()
    spans = list(memory.get_finished_spans())
    return spans, format(spans[0].context.trace_id, "032x")


async def read(base_url: str, key: str, path: str, **params: Any) -> Any:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{base_url}{path}", params=params, headers={"X-API-Key": key})
    assert response.status_code == 200, response.text
    return response.json()


async def post(
    base_url: str, path: str, key: str | None, body: bytes, content_type: str, **headers: str
) -> httpx.Response:
    if key is not None:
        headers["X-API-Key"] = key
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(
            f"{base_url}{path}", content=body, headers={"Content-Type": content_type, **headers}
        )


async def export(exporter: Any, batch: Any) -> Any:
    """The SDK exporter's own result (it is synchronous: run it off the event loop)."""
    return await asyncio.to_thread(exporter.export, batch)


class TestTraces:
    async def test_spans_exported_by_the_sdk_are_stored_once_with_their_tree_and_exception_log(
        self,
        server: str,
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
    ) -> None:
        key = await make_key("ingest", "read")
        service = service_name()
        spans, trace_id = make_spans(service)
        exporter = OTLPSpanExporter(endpoint=f"{server}/v1/traces", headers={"x-api-key": key})
        assert await export(exporter, spans) is SpanExportResult.SUCCESS
        assert await export(exporter, spans) is SpanExportResult.SUCCESS  # a retried export: stored once

        trace = await read(server, key, f"/api/v1/traces/{trace_id}")
        assert trace["services"] == [service]
        (root,) = trace["spans"]
        (child,) = root["children"]
        assert (root["name"], root["status"], root["parent_span_id"]) == ("GET /checkout", "UNSET", None)
        assert (child["name"], child["status"], child["parent_span_id"]) == (
            "charge card",
            "ERROR",
            root["span_id"],
        )
        assert trace["error_span_ids"] == [child["span_id"]]
        assert root["attributes"]["span.kind"] == "SERVER"
        assert child["attributes"]["span.kind"] == "CLIENT"
        assert root["attributes"]["http.route"] == "/checkout"
        assert root["attributes"]["otel.scope.name"] == "checkout.http"
        assert root["attributes"]["deployment"] == "canary"  # the span's own over the resource's
        assert child["attributes"]["deployment"] == "test"  # resource attributes under the span's own
        assert child["attributes"]["otel.status_description"] == "declined"
        (log,) = trace["logs"]
        assert (log["level"], log["message"]) == ("ERROR", "ValueError: card declined")
        assert (log["trace_id"], log["span_id"]) == (trace_id, child["span_id"])
        assert await stored(session_maker, "spans", project_name) == 2
        assert await stored(session_maker, "logs", project_name) == 1

    async def test_gzip_export_is_stored(
        self,
        server: str,
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
    ) -> None:
        key = await make_key("ingest")
        spans, _ = make_spans(service_name())
        exporter = OTLPSpanExporter(
            endpoint=f"{server}/v1/traces", headers={"x-api-key": key}, compression=Compression.Gzip
        )
        assert await export(exporter, spans) is SpanExportResult.SUCCESS
        assert await stored(session_maker, "spans", project_name) == 2

    async def test_otlp_json_with_upper_case_ids_and_string_integers(
        self, server: str, make_key: KeyFactory
    ) -> None:
        key = await make_key("ingest", "read")
        service = service_name()
        trace_id, span_id = uuid.uuid4().hex.upper(), uuid.uuid4().hex[:16].upper()
        start = time.time_ns() - 2_000_000_000
        body = {
            "resourceSpans": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                    "scopeSpans": [
                        {
                            "scope": {"name": "json-client"},
                            "spans": [
                                {
                                    "traceId": trace_id,
                                    "spanId": span_id,
                                    "name": "json span",
                                    "kind": 2,
                                    "startTimeUnixNano": str(start),
                                    "endTimeUnixNano": start + 1_500_000,
                                    "status": {"code": 2},
                                    "attributes": [{"key": "retries", "value": {"intValue": "3"}}],
                                    "someFutureField": {"ignored": True},
                                }
                            ],
                        }
                    ],
                }
            ]
        }
        response = await post(server, "/v1/traces", key, msgspec.json.encode(body), "application/json")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert response.json() == {}
        (span,) = (await read(server, key, f"/api/v1/traces/{trace_id.lower()}"))["spans"]
        assert (span["trace_id"], span["span_id"]) == (trace_id.lower(), span_id.lower())
        assert (span["status"], span["duration_ms"]) == ("ERROR", 1.5)
        assert span["attributes"]["retries"] == 3
        assert span["attributes"]["span.kind"] == "SERVER"

    async def test_one_invalid_span_is_rejected_and_the_other_stored(
        self,
        server: str,
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
    ) -> None:
        key = await make_key("ingest")
        spans, _ = make_spans(service_name())
        request = encode_spans(spans)
        broken = request.resource_spans[0].scope_spans[0].spans[0]
        broken.trace_id = b"\x01\x02"  # not 16 bytes
        response = await post(server, "/v1/traces", key, request.SerializeToString(), PROTOBUF)
        assert response.status_code == 200
        assert response.headers["content-type"] == PROTOBUF
        answer = trace_service_pb2.ExportTraceServiceResponse.FromString(response.content)
        assert answer.partial_success.rejected_spans == 1
        assert "trace_id must be 16 bytes" in answer.partial_success.error_message
        assert await stored(session_maker, "spans", project_name) == 1

    async def test_invalid_span_in_json_answers_partial_success_in_json(
        self, server: str, make_key: KeyFactory
    ) -> None:
        key = await make_key("ingest")
        now = time.time_ns()
        span = {"traceId": uuid.uuid4().hex, "spanId": uuid.uuid4().hex[:16], "name": "late"}
        body = {
            "resourceSpans": [
                {
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    **span,
                                    "startTimeUnixNano": now + DAY_AND_MORE,
                                    "endTimeUnixNano": now + DAY_AND_MORE,
                                },
                                {
                                    **span,
                                    "spanId": uuid.uuid4().hex[:16],
                                    "startTimeUnixNano": now,
                                    "endTimeUnixNano": now,
                                },
                            ]
                        }
                    ]
                }
            ]
        }
        response = await post(server, "/v1/traces", key, msgspec.json.encode(body), "application/json")
        assert response.status_code == 200
        partial = response.json()["partialSuccess"]
        assert partial["rejectedSpans"] == 1
        assert "more than 24 h in the future" in partial["errorMessage"]


class TestLogs:
    async def test_every_severity_with_trace_context(
        self,
        server: str,
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
    ) -> None:
        key = await make_key("ingest", "read")
        service = service_name()
        memory = InMemoryLogRecordExporter()
        provider = LoggerProvider(resource=Resource.create({"service.name": service}))
        provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
        tracer_provider = TracerProvider()
        logger = provider.get_logger("orders.worker")
        with tracer_provider.get_tracer("t").start_as_current_span("job") as span:
            for number, level in SEVERITIES:
                logger.emit(severity_number=number, body=f"{level} happened", attributes={"n": number.value})
            logger.emit(severity_number=SeverityNumber.INFO, body={"order": 7, "ok": True})
        provider.shutdown()
        records = list(memory.get_finished_logs())
        trace_id = format(span.get_span_context().trace_id, "032x")
        exporter = OTLPLogExporter(endpoint=f"{server}/v1/logs", headers={"x-api-key": key})
        assert await export(exporter, records) is LogRecordExportResult.SUCCESS
        assert await export(exporter, records) is LogRecordExportResult.SUCCESS

        items = (await read(server, key, "/api/v1/logs", trace_id=trace_id))["items"]
        assert len(items) == len(SEVERITIES) + 1
        by_message = {item["message"]: item for item in items}
        for number, level in SEVERITIES:
            item = by_message[f"{level} happened"]
            assert item["level"] == level, number
            assert item["span_id"] == format(span.get_span_context().span_id, "016x")
            assert item["attributes"]["otel.scope.name"] == "orders.worker"
        assert by_message['{"order":7,"ok":true}']["level"] == "INFO"
        assert await stored(session_maker, "logs", project_name) == len(SEVERITIES) + 1


class TestMetrics:
    async def test_counter_histogram_and_gauge(self, server: str, make_key: KeyFactory) -> None:
        key = await make_key("ingest", "read")
        service = service_name()
        reader = InMemoryMetricReader()
        provider = MeterProvider(
            resource=Resource.create({"service.name": service}),
            metric_readers=[reader],
            views=[
                View(
                    instrument_name="latency",
                    aggregation=ExplicitBucketHistogramAggregation(boundaries=[0.5, 10, 100]),
                )
            ],
        )
        meter = provider.get_meter("shop")
        meter.create_counter("orders").add(5, {"region": "eu"})
        histogram = meter.create_histogram("latency")
        for value in (0.2, 3, 3, 50, 500):
            histogram.record(value, {"route": "/pay"})
        meter.create_gauge("queue_depth").set(42)
        data = reader.get_metrics_data()
        assert data is not None
        exporter = OTLPMetricExporter(endpoint=f"{server}/v1/metrics", headers={"x-api-key": key})
        assert await export(exporter, data) is MetricExportResult.SUCCESS
        assert await export(exporter, data) is MetricExportResult.SUCCESS

        async def value(name: str, agg: str = "sum", labels: str | None = None) -> float:
            params: dict[str, Any] = {"name": name, "service": service, "agg": agg, "step": 86400}
            if labels:
                params["labels"] = labels
            (bucket,) = (await read(server, key, "/api/v1/metrics/series", **params))["buckets"]
            return float(bucket["value"])

        assert await value("orders", labels="region:eu") == 5
        assert await value("queue_depth") == 42
        assert await value("latency_count") == 5
        assert await value("latency_sum") == pytest.approx(556.2)
        assert await value("latency_bucket", labels="le:0.5") == 1
        assert await value("latency_bucket", labels="le:10") == 3
        assert await value("latency_bucket", labels="le:100") == 4
        assert await value("latency_bucket", labels="le:+Inf") == 5
        assert await value("latency_bucket", "count") == 4  # stored once although exported twice


class TestErrors:
    async def test_undecodable_protobuf_is_400_with_a_status(self, server: str, make_key: KeyFactory) -> None:
        key = await make_key("ingest")
        response = await post(server, "/v1/traces", key, b"\xff\xff\xff not protobuf", PROTOBUF)
        assert response.status_code == 400
        assert response.headers["content-type"] == PROTOBUF
        status = status_pb2.Status.FromString(response.content)
        assert status.code == code_pb2.INVALID_ARGUMENT
        assert "ExportTraceServiceRequest" in status.message
        info = error_details_pb2.RequestInfo()
        assert status.details[0].Unpack(info)
        assert info.request_id == response.headers["x-request-id"]

    async def test_undecodable_json_is_400_with_a_json_status(
        self, server: str, make_key: KeyFactory
    ) -> None:
        key = await make_key("ingest")
        response = await post(server, "/v1/logs", key, b'{"resourceLogs": [', "application/json")
        assert response.status_code == 400
        body = response.json()
        assert body["code"] == code_pb2.INVALID_ARGUMENT
        assert "ExportLogsServiceRequest" in body["message"]
        assert body["details"][0]["requestId"] == response.headers["x-request-id"]

    @pytest.mark.parametrize(
        "body",
        [
            b'{"resourceSpans": ' + b"[" * 100_000,
            b'{"resourceSpans": [{"resource": {"attributes": [{"key": "k", "value": '
            + b'{"kvlistValue": {"values": [{"key": "k", "value": ' * 5_000
            + b'{"stringValue": "x"}'
            + b"}]}}" * 5_000
            + b"}]}}]}",
        ],
        ids=["100000-brackets", "5000-deep-kvlist"],
    )
    async def test_json_nested_too_deeply_is_400_and_the_server_stays_healthy(
        self, server: str, make_key: KeyFactory, body: bytes
    ) -> None:
        key = await make_key("ingest")
        response = await post(server, "/v1/traces", key, body, "application/json")
        assert response.status_code == 400
        assert response.json()["message"].startswith("The body is ")
        assert (await post(server, "/v1/traces", key, b"{}", "application/json")).status_code == 200

    async def test_protobuf_nested_too_deeply_is_400(self, server: str, make_key: KeyFactory) -> None:
        # Built on the wire by hand: the protobuf classes themselves refuse to hold such a message.
        def field(number: int, payload: bytes) -> bytes:  # a length-delimited field
            length, size = b"", len(payload)
            while True:
                byte, size = size & 0x7F, size >> 7
                length += bytes([byte | (0x80 if size else 0)])
                if not size:
                    break
            return bytes([number << 3 | 2]) + length + payload

        value = common_pb2.AnyValue(string_value="x").SerializeToString()
        for _ in range(200):  # protobuf's decoder stops at a depth of 100
            key_value = field(1, b"k") + field(2, value)  # KeyValue(key, value)
            value = field(6, field(1, key_value))  # AnyValue(kvlist_value=KeyValueList(values=[...]))
        body = field(
            1, field(1, field(1, field(1, b"k") + field(2, value)))
        )  # request/resource_spans/resource
        key = await make_key("ingest")
        response = await post(server, "/v1/traces", key, body, PROTOBUF)
        assert response.status_code == 400
        status = status_pb2.Status.FromString(response.content)
        assert status.code == code_pb2.INVALID_ARGUMENT
        assert "MaxDepth" in status.message

    async def test_other_content_type_is_415(self, server: str, make_key: KeyFactory) -> None:
        key = await make_key("ingest")
        response = await post(server, "/v1/metrics", key, b"x", "text/plain")
        assert response.status_code == 415
        assert "application/x-protobuf" in response.json()["message"]

    async def test_inflated_body_over_the_limit_is_413(self, server: str, make_key: KeyFactory) -> None:
        key = await make_key("ingest")
        body = gzip.compress(b"\x00" * (10 * 1024 * 1024 + 1))  # default PRODSENTINEL_MAX_BODY_BYTES + 1
        response = await post(server, "/v1/traces", key, body, PROTOBUF, **{"Content-Encoding": "gzip"})
        assert response.status_code == 413
        assert status_pb2.Status.FromString(response.content).code == code_pb2.RESOURCE_EXHAUSTED

    async def test_missing_key_is_401_and_wrong_scope_403_as_section_3(
        self, server: str, make_key: KeyFactory
    ) -> None:
        response = await post(server, "/v1/traces", None, b"", PROTOBUF)
        assert response.status_code == 401
        assert set(response.json()) >= {"detail", "request_id"}
        key = await make_key("read")
        response = await post(server, "/v1/traces", key, b"", PROTOBUF)
        assert response.status_code == 403
        assert set(response.json()) >= {"detail", "request_id"}


class _Retrying(logging.Handler):
    """Sets ``seen`` when the SDK exporter logs that it will retry after a transient error."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Transient error" in message:
            self.messages.append(message)
            self.seen.set()


async def test_overloaded_server_answers_503_and_the_sdk_retries_after_retry_after(
    database_url: str,
    postgres_server_url: str,
    make_key: KeyFactory,
    session_maker: async_sessionmaker[AsyncSession],
    project_name: str,
) -> None:
    """A real stall: a transaction holds the spans table locked, so the first export waits for the database
    holding the whole (small) ingest budget; the second is refused with 503 + Retry-After, the SDK exporter
    logs its retry, the lock goes, and both exports end in SUCCESS."""
    key = await make_key("ingest")
    first, _ = make_spans(service_name())
    second, _ = make_spans(service_name())
    size = len(encode_spans(first).SerializeToString())
    env = {"DATABASE_URL": database_url, "PRODSENTINEL_INGEST_MAX_PENDING_BYTES": str(size + size // 2)}
    handler = _Retrying()
    sdk_logger = logging.getLogger("opentelemetry.exporter")
    sdk_logger.addHandler(handler)
    dsn = "postgresql://" + database_url.split("://", 1)[1]
    locker = await asyncpg.connect(dsn)
    results: dict[str, SpanExportResult] = {}
    try:
        with granian_server(env) as base_url:
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute("LOCK TABLE spans IN ACCESS EXCLUSIVE MODE")

            def run(name: str, spans: list[ReadableSpan]) -> None:
                exporter = OTLPSpanExporter(
                    endpoint=f"{base_url}/v1/traces", headers={"x-api-key": key}, timeout=30
                )
                results[name] = exporter.export(spans)

            blocked = threading.Thread(target=run, args=("first", first))
            blocked.start()
            await _wait_for_lock_waiter(locker)
            refused = threading.Thread(target=run, args=("second", second))
            refused.start()
            assert handler.seen.wait(20), "the exporter never retried"
            await transaction.rollback()
            blocked.join(30)
            refused.join(30)
    finally:
        sdk_logger.removeHandler(handler)
        await locker.close()
    assert results == {"first": SpanExportResult.SUCCESS, "second": SpanExportResult.SUCCESS}
    # a 503, and the wait is the server's Retry-After (1 s), not the SDK's jittered backoff
    assert "Service Unavailable" in handler.messages[0]
    assert "retrying in 1.00s" in handler.messages[0]
    assert await stored(session_maker, "spans", project_name) == 4


async def _wait_for_lock_waiter(connection: asyncpg.Connection) -> None:
    """Until a backend waits for the lock on ``spans`` (the first export reached the database)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        waiting = await connection.fetchval(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname = 'spans' AND NOT l.granted "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        if waiting:
            return
        await asyncio.sleep(0.05)  # polling the real signal (pg_locks), not sleeping for it
    raise AssertionError("no export reached the database")


async def test_demo_otlp_exports_the_fake_services_through_the_sdk(
    server: str, make_key: KeyFactory, session_maker: async_sessionmaker[AsyncSession], project_name: str
) -> None:
    """`prodsentinel demo --otlp`: the demo services, instrumented with the real SDK, reach the query API."""
    key = await make_key("admin", "ingest")
    report = await run_demo(
        url=server,
        api_key=key,
        duration=2,
        rate=2,
        failure_after=1.0,
        seed=3,
        settle=0,
        say=lambda _: None,
        otlp=True,
    )
    assert report.sent["spans"] > 0
    services = {item["service_name"] for item in (await read(server, key, "/api/v1/services"))["items"]}
    assert services == set(SERVICES)
    spans = (await read(server, key, "/api/v1/spans", service="payments", status="ERROR"))["items"]
    assert spans, "the failing payments spans"
    trace = await read(server, key, f"/api/v1/traces/{spans[0]['trace_id']}")
    assert set(trace["services"]) >= {"frontend", "payments"}
    assert any(log["level"] == "ERROR" for log in trace["logs"])  # logs carry the SDK spans' ids
    assert await stored(session_maker, "spans", project_name) == report.sent["spans"]
    assert await stored(session_maker, "logs", project_name) == report.sent["logs"]
    assert await stored(session_maker, "metric_points", project_name) > 0
