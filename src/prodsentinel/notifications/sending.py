"""What every kind's sender shares: the attempt's facts, the send context, one guarded HTTP call.

A sender (``webhook.send``, ``slack.send``, ...) turns one claimed item into :class:`AttemptFacts` and
never raises for a delivery failure: failures are facts (an HTTP status and/or an error code, see
``retry``), which the dispatcher records in the ledger and turns into delivered / retrying / dead.
``state`` is what the channel must remember about the item's subject from now on (Slack ``ts``, root
``Message-ID``, PagerDuty ``dedup_key``); the dispatcher stores it with the attempt's result.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import msgspec

from prodsentinel.lib.time import utcnow
from prodsentinel.notifications import egress, retry
from prodsentinel.notifications.repositories import ClaimedItem
from prodsentinel.settings import Settings

__all__ = (
    "SECRET_UNAVAILABLE",
    "AttemptFacts",
    "HttpReply",
    "KindConfig",
    "SendContext",
    "Timer",
    "event_of",
    "exc_kind",
    "http_call",
    "resolve_secret",
)

#: Error code when a channel's ``*_env`` names a variable that is unset in the sending process.
#: Nothing is sent (an unsigned webhook would be rejected by a verifying receiver and would leak the
#: payload to one that does not verify; an API call without its token fails anyway); the attempt is
#: retried, so fixing the environment recovers.
SECRET_UNAVAILABLE = "secret_unavailable"


@dataclass(frozen=True, slots=True)
class AttemptFacts:
    """What happened on one attempt; ``retry_after_seconds`` only when the receiver sent one."""

    item: ClaimedItem
    started_at: datetime
    duration_ms: float
    http_status: int | None
    error_code: str | None
    retry_after_seconds: float | None
    #: The subject's new channel state to store (None: leave it as it is).
    state: dict[str, Any] | None = None
    #: A non-HTTP transport (SMTP) accepted it: delivered with no status to classify.
    accepted: bool = False


@dataclass(frozen=True, slots=True)
class KindConfig:
    """The settings the senders need, read once per batch."""

    timeout_seconds: float
    block_private: bool
    slack_api_url: str
    pagerduty_url: str
    smtp_host: str | None
    smtp_port: int
    smtp_user: str | None
    smtp_password: str | None = field(repr=False)
    smtp_from: str
    smtp_starttls: bool

    @classmethod
    def of(cls, settings: Settings) -> KindConfig:
        return cls(
            timeout_seconds=settings.notify_timeout_seconds,
            block_private=settings.notify_block_private,
            slack_api_url=settings.slack_api_url.rstrip("/"),
            pagerduty_url=settings.pagerduty_url,
            smtp_host=settings.smtp_host,
            smtp_port=settings.smtp_port,
            smtp_user=settings.smtp_user,
            smtp_password=settings.smtp_password,
            smtp_from=settings.smtp_from,
            smtp_starttls=settings.smtp_starttls,
        )


@dataclass(slots=True)
class SendContext:
    """One batch's senders' shared things: the HTTP client, the config, per-kind resources (the SMTP
    connection pool lives in ``resources["smtp"]`` and is closed at the end of the batch)."""

    client: httpx.AsyncClient
    config: KindConfig
    resources: dict[str, Any] = field(default_factory=dict)


class Timer:
    """Start time and duration of one attempt."""

    def __init__(self, item: ClaimedItem) -> None:
        self.item = item
        self.started_at = utcnow()
        self._began = time.perf_counter()

    def facts(
        self,
        http_status: int | None,
        error_code: str | None,
        retry_after: float | None = None,
        state: dict[str, Any] | None = None,
        *,
        accepted: bool = False,
    ) -> AttemptFacts:
        duration_ms = (time.perf_counter() - self._began) * 1000.0
        return AttemptFacts(
            self.item, self.started_at, duration_ms, http_status, error_code, retry_after, state, accepted
        )


def event_of(item: ClaimedItem) -> dict[str, Any]:
    """The event body as a dict (the human-facing kinds render it)."""
    event: dict[str, Any] = msgspec.json.decode(item.body)
    return event


def resolve_secret(item: ClaimedItem) -> tuple[str | None, bool]:
    """``(credential, available)``: ``*_env`` is read at send time, so rotation needs no restart."""
    if item.secret_env:
        value = os.environ.get(item.secret_env)
        return (value, True) if value else (None, False)
    return item.secret, True


def exc_kind(exc: BaseException) -> retry.ExcKind:
    if isinstance(exc, egress.BlockedDestinationError):
        return "blocked_destination"
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timeout"
    if isinstance(exc, httpx.ConnectError | socket.gaierror):
        return "connect_error"
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return "invalid_request"
    return "network_error"


@dataclass(frozen=True, slots=True)
class HttpReply:
    """One HTTP call's outcome: a status (and body) or a transport failure's error code."""

    status: int | None
    error_code: str | None
    retry_after: float | None
    body: bytes

    def json(self) -> dict[str, Any]:
        """The body as a JSON object; ``{}`` when it is not one."""
        try:
            decoded = msgspec.json.decode(self.body)
        except msgspec.DecodeError:
            return {}
        return decoded if isinstance(decoded, dict) else {}


async def http_call(
    ctx: SendContext, url: str, body: bytes, headers: dict[str, str], *, method: str = "POST"
) -> HttpReply:
    """One request through the guarded client; never raises for a delivery failure.

    The timeout bounds the whole call, connect to last byte (httpx's per-phase timeouts plus an overall
    deadline), so a claim's visibility timeout larger than it is never overrun by a live worker.
    """
    timeout = ctx.config.timeout_seconds
    try:
        async with asyncio.timeout(timeout):
            response = await ctx.client.request(
                method, url, content=body, headers=headers, timeout=httpx.Timeout(timeout)
            )
    except (httpx.HTTPError, TimeoutError, OSError) as exc:
        return HttpReply(None, retry.error_code_for(None, exc_kind(exc)), None, b"")
    status = response.status_code
    retry_after = retry.parse_retry_after(response.headers.get("retry-after"), utcnow())
    return HttpReply(status, retry.error_code_for(status, None), retry_after, response.content)
