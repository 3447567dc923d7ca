"""The operability wiring of the API process (SPEC §9 and the §6 event stream), as Litestar plugins.

``SystemPlugin(...).plugins()`` is listed in ``app.py``'s plugins; it yields Litestar's
``ChannelsPlugin`` (SSE fan-out over Redis or PostgreSQL), Litestar's ``OpenTelemetryPlugin`` when
tracing is configured, and this module's :class:`SystemPlugin`, which adds ``/metrics`` and the event
stream, the HTTP-metrics middleware, and the start/stop hooks (event publisher, library tracing).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from litestar import Litestar
from litestar.channels import ChannelsPlugin
from litestar.config.app import AppConfig
from litestar.middleware import DefineMiddleware
from litestar.middleware.logging import LoggingMiddleware, LoggingMiddlewareConfig
from litestar.plugins import InitPluginProtocol
from litestar.types import ASGIApp
from opentelemetry.sdk.trace import TracerProvider
from redis.asyncio import Redis

from prodsentinel.lib import events
from prodsentinel.lib.database import libpq_url
from prodsentinel.lib.observability import RequestContextMiddleware
from prodsentinel.settings import Settings
from prodsentinel.system import metrics, tracing
from prodsentinel.system.controllers import EventStreamController

__all__ = ("TRACER_PROVIDER_STATE_KEY", "RequestLoggingMiddleware", "SystemPlugin")

TRACER_PROVIDER_STATE_KEY = "tracer_provider"
#: Events a slow SSE client may lag behind before the oldest are dropped (memory stays bounded).
SUBSCRIBER_BACKLOG = 1000


class SystemPlugin(InitPluginProtocol):
    def __init__(self, settings: Settings, database_url: str, redis: Redis | None) -> None:
        self.settings = settings
        self.channels = ChannelsPlugin(
            backend=events.channels_backend(settings, libpq_url(database_url), redis),
            arbitrary_channels_allowed=True,
            subscriber_max_backlog=SUBSCRIBER_BACKLOG,
            subscriber_backlog_strategy="dropleft",
        )
        self.tracer_provider: TracerProvider | None = tracing.tracer_provider(settings)

    def plugins(self) -> Sequence[InitPluginProtocol]:
        """Every plugin of the operability work, for ``app.py``'s plugin list."""
        extra = [] if self.tracer_provider is None else [tracing.opentelemetry_plugin(self.tracer_provider)]
        return [self.channels, *extra, self]

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.route_handlers.extend([metrics.metrics_controller(self.settings), EventStreamController])
        # Outermost of the app's own middleware: it times and counts auth and rate-limit refusals too.
        app_config.middleware.insert(0, metrics.http_metrics_config().middleware)
        _log_refusals_too(app_config)
        app_config.state[TRACER_PROVIDER_STATE_KEY] = self.tracer_provider
        app_config.on_startup.append(self._on_startup)
        app_config.on_shutdown.append(self._on_shutdown)
        return app_config

    async def _on_startup(self, app: Litestar) -> None:
        # The ChannelsPlugin (a lifespan manager) has started its backend before on_startup hooks run.
        events.bind_publisher(self.channels.wait_published)
        if self.tracer_provider is not None:
            tracing.instrument_libraries(self.tracer_provider)

    async def _on_shutdown(self, app: Litestar) -> None:
        events.unbind_publisher(self.channels.wait_published)
        if self.tracer_provider is not None:
            tracing.uninstrument_libraries()
            await asyncio.to_thread(self.tracer_provider.force_flush)
        if metrics.multiprocess_dir():
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


class RequestLoggingMiddleware(LoggingMiddleware):
    """Litestar's request-logging middleware, also logging what the middleware below it refuses.

    The structlog plugin appends the logging middleware last (innermost), so a request refused by the
    API-key middleware (401) or the rate limiter (429) was never logged. Placed right inside
    ``RequestContextMiddleware`` (so ``request_id`` is bound) with the rest of the stack wrapped in
    Litestar's exception handler, every request gets its "HTTP Request"/"HTTP Response" lines.
    """

    def __init__(self, app: ASGIApp, config: LoggingMiddlewareConfig) -> None:
        from litestar._asgi.utils import wrap_in_exception_handler  # the helper Litestar's router uses

        super().__init__(app=wrap_in_exception_handler(app), config=config)


def _log_refusals_too(app_config: AppConfig) -> None:
    """Move the structlog plugin's logging middleware just inside RequestContextMiddleware (see above)."""
    middleware = app_config.middleware
    logging_index = next(
        (
            i
            for i, item in enumerate(middleware)
            if isinstance(item, DefineMiddleware) and item.middleware is LoggingMiddleware
        ),
        None,
    )
    context_index = next(
        (i for i, item in enumerate(middleware) if isinstance(item, RequestContextMiddleware)), None
    )
    if logging_index is None or context_index is None or logging_index < context_index:
        return
    logging_middleware = middleware.pop(logging_index)
    assert isinstance(logging_middleware, DefineMiddleware)
    replacement = DefineMiddleware(
        RequestLoggingMiddleware, *logging_middleware.args, **logging_middleware.kwargs
    )
    middleware.insert(context_index + 1, replacement)
