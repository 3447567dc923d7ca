"""Request ids, timing headers and structlog configuration.

The request-id/timing middleware is plain ASGI because it must wrap every response, including errors
and the ingest hot path, at the lowest cost: it only touches headers and a contextvar.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import structlog
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.logging.config import (
    LoggingConfig,
    StructLoggingConfig,
    default_logger_factory,
    default_structlog_processors,
    default_structlog_standard_lib_processors,
)
from litestar.middleware import ASGIMiddleware
from litestar.middleware.logging import LoggingMiddlewareConfig
from litestar.plugins.structlog import StructlogConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from prodsentinel.settings import Settings

__all__ = ("RequestContextMiddleware", "add_response_headers", "ensure_request_id", "structlog_config")

REQUEST_ID_KEY = "request_id"
_STARTED_KEY = "started_at_perf"
_MAX_REQUEST_ID = 128


class RequestContextMiddleware(ASGIMiddleware):
    """Assign the request id early (so logs carry it) and note when the request started."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        request_id = ensure_request_id(scope)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await next_app(scope, receive, send)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")


async def add_response_headers(message: Message, scope: Scope) -> None:
    """App-level ``before_send`` hook: every response, routing 404s included, gets both headers."""
    if message["type"] == "http.response.start":
        headers = MutableScopeHeaders.from_message(message)
        headers["X-Request-ID"] = ensure_request_id(scope)
        started = scope.get("state", {}).get(_STARTED_KEY)
        elapsed_ms = (time.perf_counter() - started) * 1000 if started else 0.0
        headers["X-Process-Time-Ms"] = f"{elapsed_ms:.2f}"


def ensure_request_id(scope: Scope) -> str:
    """The request's id: the client's ``X-Request-ID`` when sane, else a new one; stored in scope state."""
    state: dict[str, Any] = scope.setdefault("state", {})  # type: ignore[assignment,typeddict-item]
    request_id = state.get(REQUEST_ID_KEY)
    if request_id is None:
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        state[REQUEST_ID_KEY] = request_id
        state.setdefault(_STARTED_KEY, time.perf_counter())
    return str(request_id)


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1").strip()
            if text and len(text) <= _MAX_REQUEST_ID and text.isprintable():
                return text
    return None


def structlog_config(settings: Settings) -> StructlogConfig:
    """JSON (or console) structlog output; request logging skips the ingest and health hot paths."""
    as_json = settings.log_format == "json"
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        *default_structlog_processors(as_json=as_json),
    ]
    return StructlogConfig(
        structlog_logging_config=StructLoggingConfig(
            processors=processors,
            # Litestar derives the output factory and the stdlib formatter from "is stderr a TTY", not
            # from our format: without these, LOG_FORMAT=console crashed (str to a bytes logger) and
            # stdlib loggers' exceptions (SAQ's job errors) crashed the JSON formatter (exc_info tuple).
            logger_factory=default_logger_factory(as_json=as_json),
            standard_lib_logging_config=_stdlib_logging_config(as_json, settings.log_level),
            wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(settings.log_level)),
            log_exceptions="debug",  # 5xx are logged once by lib.errors; 4xx are not errors of ours
        ),
        middleware_logging_config=LoggingMiddlewareConfig(
            exclude=["^/api/v1/ingest", "^/health", "^/saq/static"],
            request_log_fields=["path", "method", "query"],
            response_log_fields=["status_code"],
        ),
    )


def _stdlib_logging_config(as_json: bool, level: str) -> LoggingConfig:
    """Stdlib loggers (SAQ, granian, asyncio) through structlog's formatter, in the same format and at
    ``LOG_LEVEL`` (Litestar's default root level is INFO whatever structlog filters).

    Context variables are merged, so a stdlib line logged during a request carries its ``request_id``;
    exceptions are rendered to text before the JSON renderer sees them.
    """
    chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
        *default_structlog_standard_lib_processors(as_json),
    ]
    if as_json:
        chain.insert(len(chain) - 1, structlog.processors.format_exc_info)
    return LoggingConfig(
        formatters={"standard": {"()": structlog.stdlib.ProcessorFormatter, "processors": chain}},
        filters={"heartbeat_stop": {"()": HeartbeatStopFilter}},
        root={"handlers": ["queue_listener"], "level": level},
        loggers={
            "litestar": {"level": level, "handlers": ["queue_listener"], "propagate": False},
            "litestar_saq.heartbeat": {"filters": ["heartbeat_stop"]},
        },
    )


class HeartbeatStopFilter(logging.Filter):
    """Drop litestar-saq's "HeartbeatManager thread crashed" record when it is only a normal stop.

    ``HeartbeatManager.stop()`` stops the thread's event loop under ``run_until_complete``, which raises
    "Event loop stopped before Future completed" and is logged as a crash with a traceback at every stop
    of in-process workers (litestar-saq#110, fixed by the still-open PR #111). Any other exception of
    that thread is still logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (
            isinstance(error, RuntimeError) and "Event loop stopped before Future completed" in str(error)
        )
