"""The JSON ingest endpoints served below Litestar's request cycle: the single-event hot path.

Why: profiled under 32 single-event clients, about half of the Python work per ingest request was
Litestar's request cycle around a handler that takes nothing but the raw request: the app-level
exception middleware, routing, four middleware layers (each building connection objects), the handler's
signature/response machinery and the ``before_send`` hooks (docs/ingest.md, "Per-request CPU"). The
handler itself (key lookup, body read, decode, validation, group commit) is the same code either way.

So :class:`IngestFastPath` answers ``POST /api/v1/ingest/{logs,traces,metrics}`` straight from the ASGI
call, with the same parts the Litestar route uses and the same answers:

- the same key check: the coalesced per-request lookup (``auth.lookup``; no cache, so a revoked key is
  refused by the next request) and the ``ingest`` scope;
- the same body limit, decoding, atomic validation, group commit and 202-after-commit
  (``ingest.decoding``, ``Ingestor.ingest``);
- the same error answers: any exception is rendered by the app's one handler
  (``lib.errors.exception_to_response``), so 400/413/415/422/503 bodies and ``Retry-After`` are identical;
- the same headers (``X-Request-ID``, ``X-Process-Time-Ms`` from ``lib.observability``) and the same
  HTTP metrics (``system.metrics.HttpMetricsMiddleware.observe``, route template as ``path``).

It hands the request to Litestar untouched (nothing has been read) whenever it is not the plain case:
another method or path, no API key (a person's session token or cookie), a key the lookup refuses or
without the ``ingest`` scope (Litestar then answers the 401/403), an ``Origin`` header (CORS), or
tracing configured (Litestar's OpenTelemetry middleware makes the request span). Ingest is excluded
from rate limiting and request logging on the Litestar path too, so nothing else differs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from litestar import Request
from litestar.exceptions import ClientException
from litestar.types import HTTPScope, Message, Receive, Scope, Send

from prodsentinel.auth.guards import key_in
from prodsentinel.auth.lookup import KEY_LOOKUP_STATE_KEY, KeyLookup
from prodsentinel.auth.scopes import Scope as KeyScope
from prodsentinel.ingest.decoding import read_body
from prodsentinel.ingest.plugin import INGESTOR_STATE_KEY
from prodsentinel.lib.errors import exception_to_response
from prodsentinel.lib.observability import add_response_headers, ensure_request_id
from prodsentinel.system.metrics import HttpMetricsMiddleware, http_metrics_config

if TYPE_CHECKING:
    from litestar import Litestar

    from prodsentinel.ingest.services import Ingestor

__all__ = ("INGEST_PATHS", "IngestFastPath")

#: Path -> the ``Ingestor`` kind; the same routes as ``ingest.controllers.IngestController``.
INGEST_PATHS = {
    "/api/v1/ingest/logs": "logs",
    "/api/v1/ingest/traces": "spans",
    "/api/v1/ingest/metrics": "metrics",
}

_encode = msgspec.json.Encoder().encode


class _DisconnectedError(Exception):
    """The client went away before its body arrived: there is nobody to answer."""


async def _noop_app(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover - never run
    raise AssertionError("the fast path passes its own app to HttpMetricsMiddleware.observe")


class IngestFastPath:
    """``await fast_path(scope, receive, send)`` -> True when answered, False to let Litestar serve it."""

    def __init__(self, app: Litestar, *, enabled: bool) -> None:
        self._app = app
        self._enabled = enabled
        self._metrics = HttpMetricsMiddleware(app=_noop_app, config=http_metrics_config())

    async def __call__(self, scope: HTTPScope, receive: Receive, send: Send) -> bool:
        if not self._enabled or scope["method"] != "POST":
            return False
        kind = INGEST_PATHS.get(scope["path"])
        if kind is None:
            return False
        state = self._app.state
        ingestor: Ingestor | None = state.get(INGESTOR_STATE_KEY)
        lookup: KeyLookup | None = state.get(KEY_LOOKUP_STATE_KEY)
        if ingestor is None or lookup is None:
            return False
        headers = _first_values(scope)
        if b"origin" in headers:
            return False
        raw_key = key_in(headers.get(b"x-api-key"), headers.get(b"authorization", ""))
        if raw_key is None:
            return False
        request_id = ensure_request_id(
            scope
        )  # before the lookup, so its timing header covers it as on Litestar's path
        scope["path_template"] = scope["path"]  # type: ignore[typeddict-unknown-key]  # the metrics label
        try:
            principal = await lookup(raw_key)
        except Exception as exc:  # e.g. the database is away: the 503 Litestar's path would give
            error = exc

            async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
                await self._error(scope, receive, send, error)

            await self._metrics.observe(scope, receive, send, refuse)
            return True
        if principal is None or not principal.has(KeyScope.INGEST):
            return False  # Litestar answers the 401/403 (the lookup runs again there; rare)

        async def serve(scope: Scope, receive: Receive, send: Send) -> None:
            await self._serve(scope, receive, send, ingestor, kind, principal.project_id, headers)

        # the request id on every log line of the request, as RequestContextMiddleware binds it
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self._metrics.observe(scope, receive, send, serve)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")
        return True

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        ingestor: Ingestor,
        kind: str,
        project_id: Any,
        headers: dict[bytes, str],
    ) -> None:
        try:
            length = headers.get(b"content-length")
            body = await _read_body(receive, ingestor.settings.max_body_bytes, length)
            accepted = await ingestor.ingest(
                kind,
                project_id,
                body,
                content_type=headers.get(b"content-type", ""),
                content_encoding=headers.get(b"content-encoding", ""),
            )
        except _DisconnectedError:
            return
        except Exception as exc:
            await self._error(scope, receive, send, exc)
            return
        payload = _encode(accepted)
        start: Message = {
            "type": "http.response.start",
            "status": 202,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
        await add_response_headers(start, scope)
        await send(start)
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    async def _error(self, scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
        """The answer Litestar's exception handling would give: the app's handler, our headers."""
        scope["app"] = scope["litestar_app"] = self._app  # type: ignore[typeddict-unknown-key]
        request: Request[Any, Any, Any] = Request(scope, receive, send)
        response = exception_to_response(request, exc).to_asgi_response(app=None, request=request)

        async def send_with_headers(message: Message) -> None:
            await add_response_headers(message, scope)
            await send(message)

        await response(scope, receive, send_with_headers)


def _first_values(scope: Scope) -> dict[bytes, str]:
    """The first value of each request header (names are lower-case in ASGI), as Litestar reads them."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name not in found:
            found[name] = value.decode("latin-1")
    return found


async def _read_body(receive: Receive, limit: int, content_length: str | None) -> bytes:
    """The raw body with ``ingest.decoding.read_body``'s 413 rules (Content-Length first, then counted)."""
    declared: int | None = None
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:  # what Litestar's Request.content_length answers
            raise ClientException(f"Invalid content-length: {content_length!r}") from None
    return await read_body(_chunks(receive), limit=limit, content_length=declared)


async def _chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _DisconnectedError
        body = message.get("body", b"")
        if body:
            yield body  # type: ignore[misc]
        if not message.get("more_body", False):
            return
