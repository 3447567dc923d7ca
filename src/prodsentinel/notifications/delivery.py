"""One webhook attempt over HTTP -> its facts (status, duration, error code, Retry-After).

No database here: the dispatcher (``services``) claims items, calls :func:`send_batch`, then records the
results. One ``httpx.AsyncClient`` is shared per worker process (and event loop), so keep-alive
connections to a receiver are reused across batches and jobs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import httpx
import structlog

from prodsentinel import __version__
from prodsentinel.lib.time import utcnow
from prodsentinel.notifications import retry, signing
from prodsentinel.notifications.repositories import ClaimedItem

__all__ = ("SECRET_UNAVAILABLE", "AttemptFacts", "close_client", "send_batch", "send_one", "shared_client")

logger = structlog.get_logger("prodsentinel.notifications")
# httpx logs every request at INFO; at hundreds of deliveries a second that drowns the logs, and the
# attempt ledger already records each one.
logging.getLogger("httpx").setLevel(logging.WARNING)

#: Error code when a channel's ``secret_env`` names a variable that is unset in the sending process.
#: Nothing is sent (an unsigned request would be rejected by a verifying receiver and would leak the
#: payload to one that does not verify); the attempt is retried, so fixing the environment recovers.
SECRET_UNAVAILABLE = "secret_unavailable"
USER_AGENT = f"ProdSentinel-Webhook/{__version__}"

_client: httpx.AsyncClient | None = None
_client_loop: asyncio.AbstractEventLoop | None = None


@dataclass(frozen=True, slots=True)
class AttemptFacts:
    """What happened on one attempt; ``retry_after_seconds`` only when the receiver sent one."""

    item: ClaimedItem
    started_at: datetime
    duration_ms: float
    http_status: int | None
    error_code: str | None
    retry_after_seconds: float | None


def shared_client() -> httpx.AsyncClient:
    """The process's client, created on first use in the running event loop.

    httpx clients are bound to the loop that opened their connections; a new loop (tests, a CLI run)
    gets a new client. Redirects are not followed (a 3xx is an answer: ``http_3xx``, dead).
    """
    global _client, _client_loop
    loop = asyncio.get_running_loop()
    if _client is None or _client_loop is not loop or _client.is_closed:
        _client = httpx.AsyncClient(
            follow_redirects=False,
            limits=httpx.Limits(max_connections=500, max_keepalive_connections=100, keepalive_expiry=30),
            headers={"User-Agent": USER_AGENT},
        )
        _client_loop = loop
    return _client


async def close_client() -> None:
    """Close the shared client (app shutdown); a no-op when none was opened in this loop."""
    global _client, _client_loop
    if _client is not None and _client_loop is asyncio.get_running_loop():
        await _client.aclose()
    _client, _client_loop = None, None


def _resolve_secret(item: ClaimedItem) -> tuple[str | None, bool]:
    """``(secret, available)``: ``secret_env`` is read at send time, so rotation needs no restart."""
    if item.secret_env:
        value = os.environ.get(item.secret_env)
        return (value, True) if value else (None, False)
    return item.secret, True


def _exc_kind(exc: BaseException) -> retry.ExcKind:
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect_error"
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return "invalid_request"
    return "network_error"


async def send_one(client: httpx.AsyncClient, item: ClaimedItem, *, timeout_seconds: float) -> AttemptFacts:
    """POST one item; never raises for delivery failures (they become facts).

    ``timeout_seconds`` bounds the whole attempt, connect to last byte (httpx's per-phase timeouts
    plus an overall deadline), so a claim's visibility timeout larger than it is never overrun by a live
    worker.
    """
    started_at = utcnow()
    began = time.perf_counter()
    secret, available = _resolve_secret(item)
    if not available:
        logger.warning("webhook_secret_unavailable", channel=item.channel_name, secret_env=item.secret_env)
        return AttemptFacts(item, started_at, 0.0, None, SECRET_UNAVAILABLE, None)
    headers = signing.delivery_headers(
        delivery_id=item.delivery_id,
        event_id=item.event_id,
        timestamp=int(time.time()),
        body=item.body,
        secret=secret,
    )
    status: int | None = None
    kind: retry.ExcKind | None = None
    retry_after: float | None = None
    try:
        async with asyncio.timeout(timeout_seconds):
            response = await client.post(
                item.url, content=item.body, headers=headers, timeout=httpx.Timeout(timeout_seconds)
            )
        status = response.status_code
        retry_after = retry.parse_retry_after(response.headers.get("retry-after"), utcnow())
    except (httpx.HTTPError, TimeoutError, OSError) as exc:
        kind = _exc_kind(exc)
    duration_ms = (time.perf_counter() - began) * 1000.0
    return AttemptFacts(
        item, started_at, duration_ms, status, retry.error_code_for(status, kind), retry_after
    )


async def send_batch(
    items: Sequence[ClaimedItem], *, timeout_seconds: float, concurrency: int
) -> list[AttemptFacts]:
    """Send a claimed batch concurrently, at most ``concurrency`` requests in flight."""
    client = shared_client()
    gate = asyncio.Semaphore(concurrency)

    async def bounded(item: ClaimedItem) -> AttemptFacts:
        async with gate:
            return await send_one(client, item, timeout_seconds=timeout_seconds)

    return list(await asyncio.gather(*(bounded(item) for item in items)))
