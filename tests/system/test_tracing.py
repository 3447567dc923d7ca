"""OpenTelemetry: request -> server span with SQL child spans, OTLP/HTTP export to a real receiver, SAQ job
spans with the job's SQL inside, and no tracing at all when no endpoint is configured."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from litestar_saq import SAQPlugin
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import text

from prodsentinel.app import create_app
from prodsentinel.lib.database import session_scope
from prodsentinel.settings import Settings
from prodsentinel.system import tracing
from prodsentinel.system.plugin import TRACER_PROVIDER_STATE_KEY
from prodsentinel.worker import saq_config
from tests.conftest import KeyFactory
from tests.system.servers import free_port
from tests.workers import running_worker


class OtlpReceiver:
    """A real OTLP/HTTP endpoint on 127.0.0.1 that keeps what it receives."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((self.path, self.headers.get("Content-Type", ""), body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        found = []
        for _, _, body in self.requests:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    found.extend((resource, span) for span in scope_spans.spans)
        return found


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.thread.start()
    yield receiver
    # Flush and stop the provider made for this endpoint while the receiver still answers.
    provider = tracing._providers.pop(receiver.url, None)
    if provider is not None:
        provider.shutdown()
    receiver.server.shutdown()
    receiver.server.server_close()


def _ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    chain = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        chain.append(span)
    return chain


class TestRequestTracing:
    async def test_request_has_server_span_with_sql_children_and_is_exported(
        self, settings: Settings, make_key: KeyFactory, receiver: OtlpReceiver
    ) -> None:
        key = await make_key("admin")
        app = create_app(settings.with_overrides(otel_exporter_otlp_endpoint=receiver.url))
        provider: TracerProvider = app.state[TRACER_PROVIDER_STATE_KEY]
        memory = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        async with AsyncTestClient(app=app) as client:
            response = await client.get("/api/v1/keys", headers={"X-API-Key": key})
            assert response.status_code == 200
        # The app's shutdown flushed the batch processor to the receiver.

        spans = memory.get_finished_spans()
        by_id = {span.context.span_id: span for span in spans}
        [server] = [s for s in spans if s.kind == SpanKind.SERVER and s.name.startswith("GET /api/v1/keys")]
        sql = [s for s in spans if (s.attributes or {}).get("db.system") in {"postgresql", "postgres"}]
        assert sql, [s.name for s in spans]
        assert all(s.context.trace_id == server.context.trace_id for s in sql)
        assert all(server in _ancestors(s, by_id) for s in sql)  # the key lookup and the listing query
        assert server.resource.attributes["service.name"] == "prodsentinel"

        exported = receiver.spans()
        assert any(path == "/v1/traces" and "protobuf" in ctype for path, ctype, _ in receiver.requests)
        assert {resource["service.name"] for resource, _ in exported} == {"prodsentinel"}
        exported_names = {span.name for _, span in exported}
        assert server.name in exported_names
        assert any(span.trace_id == server.context.trace_id.to_bytes(16, "big") for _, span in exported)

    async def test_no_endpoint_means_no_tracing(self, app: Litestar) -> None:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        assert app.state[TRACER_PROVIDER_STATE_KEY] is None
        assert "OpenTelemetryPlugin" not in {type(p).__name__ for p in app.plugins}
        async with AsyncTestClient(app=app) as client:
            assert (await client.get("/health/live")).status_code == 200
            assert not AsyncPGInstrumentor().is_instrumented_by_opentelemetry  # type: ignore[no-untyped-call]
            assert not RedisInstrumentor().is_instrumented_by_opentelemetry  # type: ignore[no-untyped-call]


async def probe_job(ctx: Any) -> int:
    """A job that runs one SQL statement through the worker's session maker."""
    async with session_scope(ctx["session_maker"]) as session:
        return int(await session.scalar(text("SELECT 41 + 1")) or 0)


class TestJobTracing:
    async def test_saq_job_has_a_consumer_span_with_its_sql_inside(
        self, settings: Settings, database_url: str, receiver: OtlpReceiver
    ) -> None:
        traced = settings.with_overrides(otel_exporter_otlp_endpoint=receiver.url)
        config = saq_config(traced, database_url)
        assert config.enable_otel is True
        config.queue_configs[0].tasks = [*config.queue_configs[0].tasks, probe_job]  # type: ignore[list-item]
        config.queue_configs[0].separate_process = False
        memory = InMemorySpanExporter()
        app_provider = tracing.tracer_provider(traced)
        assert app_provider is not None
        app_provider.add_span_processor(SimpleSpanProcessor(memory))
        global_provider = trace.get_tracer_provider()
        if global_provider is not app_provider and isinstance(global_provider, TracerProvider):
            global_provider.add_span_processor(
                SimpleSpanProcessor(memory)
            )  # litestar-saq's tracer lives here

        plugin = SAQPlugin(config)
        worker = plugin.get_workers()[traced.queue_name]
        try:
            async with running_worker(worker.queue, worker=worker):
                job = await worker.queue.enqueue("probe_job", timeout=30)
                assert job is not None
                await job.refresh(until_complete=20)
                assert job.result == 42
        finally:
            tracing.uninstrument_libraries()

        spans = memory.get_finished_spans()
        by_id = {span.context.span_id: span for span in spans}
        [consumer] = [
            s
            for s in spans
            if s.kind == SpanKind.CONSUMER and (s.attributes or {}).get("saq.job.function") == "probe_job"
        ]
        assert consumer.name == f"{traced.queue_name} process"
        sql = [s for s in spans if "41 + 1" in str((s.attributes or {}).get("db.statement", ""))]
        assert sql, [s.name for s in spans]
        assert consumer in _ancestors(sql[0], by_id)
