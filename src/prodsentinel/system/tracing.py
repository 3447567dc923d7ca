"""OpenTelemetry tracing of requests, SQL (asyncpg), Redis and SAQ jobs, exported over OTLP/HTTP.

Decision: tracing is **off entirely** unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set: no tracer
provider, no ASGI middleware, no asyncpg/redis patching, so the ingest hot path pays nothing. When it
is set:

- one SDK ``TracerProvider`` per process, resource ``service.name=prodsentinel`` (plus the version),
  batching spans to ``<endpoint>/v1/traces`` (OTLP/HTTP protobuf); it is also installed as the global
  provider, which is where litestar-saq's job spans and any library instrumentation find it;
- Litestar's ``OpenTelemetryPlugin`` makes a server span per request (``GET /api/v1/incidents``);
- ``AsyncPGInstrumentor`` / ``RedisInstrumentor`` add client spans, children of the active span;
- SAQ jobs get a consumer span each (``<queue> process``, attribute ``saq.job.function``) from
  litestar-saq. Its auto-detection ("on when the OpenTelemetryPlugin is present") never sees the app
  when the plugin builds its workers (0.8.0 calls ``should_enable_otel()`` without the app), so
  worker.py switches ``enable_otel`` on explicitly; and litestar-saq only *starts* that span, so
  :func:`attach_job_span` makes it the current span of the job (SQL and Redis spans of the job become
  its children). Enqueues do not carry the caller's trace context: a job's span is a trace root.

The standard ``OTEL_*`` variables of the exporter (headers, timeout, compression) still apply.
"""

from __future__ import annotations

import contextlib
from typing import Any

import structlog
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from prodsentinel import __version__
from prodsentinel.settings import Settings

__all__ = (
    "SERVICE_NAME",
    "attach_job_span",
    "detach_job_span",
    "instrument_libraries",
    "instrument_worker",
    "opentelemetry_plugin",
    "tracer_provider",
    "uninstrument_libraries",
)

logger = structlog.get_logger("prodsentinel.tracing")

SERVICE_NAME = "prodsentinel"
_SAQ_SPAN_KEY = "_otel_span"  # where litestar_saq.base.Worker keeps the job's span in the SAQ context
_TOKEN_KEY = "_prodsentinel_otel_token"
_providers: dict[str, TracerProvider] = {}


def tracer_provider(settings: Settings) -> TracerProvider | None:
    """This process's tracer provider for the configured endpoint, or None when tracing is off."""
    endpoint = settings.otel_exporter_otlp_endpoint
    if not endpoint:
        return None
    if endpoint not in _providers:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider = TracerProvider(
            resource=Resource.create({"service.name": SERVICE_NAME, "service.version": __version__})
        )
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=_traces_url(endpoint))))
        if not isinstance(trace.get_tracer_provider(), TracerProvider):
            trace.set_tracer_provider(provider)
        _providers[endpoint] = provider
    return _providers[endpoint]


def _traces_url(endpoint: str) -> str:
    """OTLP/HTTP convention: the base endpoint gets ``/v1/traces`` appended (unless already there)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"


def opentelemetry_plugin(provider: TracerProvider) -> OpenTelemetryPlugin:
    """Server spans for every request but the scrape and health probes (noise, every few seconds)."""
    return OpenTelemetryPlugin(
        OpenTelemetryConfig(tracer_provider=provider, exclude=["^/metrics$", "^/health"])
    )


def instrument_libraries(provider: TracerProvider) -> None:
    """Patch asyncpg and redis-py to emit client spans through ``provider`` (idempotent per process)."""
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    for instrumentor in (AsyncPGInstrumentor(), RedisInstrumentor()):  # type: ignore[no-untyped-call]
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=provider)


def instrument_worker(settings: Settings) -> None:
    """SAQ worker startup: SQL and Redis spans inside jobs (a no-op when tracing is off)."""
    provider = tracer_provider(settings)
    if provider is not None:
        instrument_libraries(provider)


async def attach_job_span(ctx: Any) -> None:
    """SAQ ``before_process`` hook (after litestar-saq's): make the job's span current.

    Async on purpose: SAQ runs sync hooks in a thread, where attaching would not reach the job. SAQ
    creates the job's task right after these hooks, copying the current context, so everything the job
    does runs under the span. The token is detached in :func:`detach_job_span`.
    """
    span = ctx.get(_SAQ_SPAN_KEY)
    if span is not None:
        ctx[_TOKEN_KEY] = otel_context.attach(trace.set_span_in_context(span))


async def detach_job_span(ctx: Any) -> None:
    """SAQ ``after_process`` hook: undo :func:`attach_job_span`."""
    token = ctx.pop(_TOKEN_KEY, None)
    if token is not None:
        # A token from another context raises ValueError: harmless, the process task ends anyway.
        with contextlib.suppress(ValueError):
            otel_context.detach(token)


def uninstrument_libraries() -> None:
    """Undo :func:`instrument_libraries` (app shutdown; lets the next app of a test run re-instrument)."""
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    for instrumentor in (AsyncPGInstrumentor(), RedisInstrumentor()):  # type: ignore[no-untyped-call]
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
