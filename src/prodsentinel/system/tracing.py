"""OpenTelemetry tracing of requests, SQL (asyncpg), Redis and SAQ jobs, exported over OTLP/HTTP.

Decision: tracing is **off entirely** unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set: no tracer
provider, no ASGI middleware, no asyncpg/redis patching, so the ingest hot path pays nothing. When it
is set:

- one SDK ``TracerProvider`` per process, resource ``service.name=prodsentinel`` (plus the version),
  batching spans to ``<endpoint>/v1/traces`` (OTLP/HTTP protobuf); it is also installed as the global
  provider, which is where litestar-saq's job spans and any library instrumentation find it;
- Litestar's ``OpenTelemetryPlugin`` makes a server span per request (``GET /api/v1/incidents``);
- ``AsyncPGInstrumentor`` / ``RedisInstrumentor`` add client spans, children of the active span;
- SAQ jobs get a consumer span each (litestar-saq, ``enable_otel`` set in worker.py: its auto-detection
  cannot see the app's plugin list when it builds the workers, so it is switched on explicitly) and
  enqueues carry the trace context into the job.

The standard ``OTEL_*`` variables of the exporter (headers, timeout, compression) still apply.
"""

from __future__ import annotations

import structlog
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from prodsentinel import __version__
from prodsentinel.settings import Settings

__all__ = (
    "SERVICE_NAME",
    "instrument_libraries",
    "instrument_worker",
    "opentelemetry_plugin",
    "tracer_provider",
    "uninstrument_libraries",
)

logger = structlog.get_logger("prodsentinel.tracing")

SERVICE_NAME = "prodsentinel"
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


def uninstrument_libraries() -> None:
    """Undo :func:`instrument_libraries` (app shutdown; lets the next app of a test run re-instrument)."""
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    for instrumentor in (AsyncPGInstrumentor(), RedisInstrumentor()):  # type: ignore[no-untyped-call]
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
