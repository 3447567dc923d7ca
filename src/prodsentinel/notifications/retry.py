"""Webhook retry policy: outcome classes, error codes and delays (pure).

Outcome of one attempt (``classify``):

- ``delivered``: any 2xx;
- ``retry``: 408, 429, any 5xx, and failures without a response (timeout,
  connection error, connection dropped mid-request). A failure with no status
  and an unknown or missing error code is retried too: losing an event is
  worse than one more attempt, and ``max_attempts`` bounds it;
- ``dead``: every other status (1xx, 3xx, other 4xx: redirects are not
  followed, a receiver answering 4xx will answer it again) and
  ``invalid_request`` (the URL itself is unusable).

Error codes stored in ``last_error_code`` and the attempt ledger
(``error_code_for``), ``None`` on success:

==================  ====================================================
``timeout``         no response within the timeout (connect, read, write)
``connect_error``   DNS failure, refused, unreachable, TLS handshake
``network_error``   connection broken after it was established
``invalid_request`` the request could not be built (bad URL or scheme)
``http_408``        request timeout answered by the receiver
``http_429``        rate limited by the receiver
``http_5xx``        server error (500..599)
``http_3xx``        redirect (not followed)
``http_4xx``        other client error
``http_other``      a status outside 200..599 that is not 2xx
==================  ====================================================

Codes of the other kinds and of the egress guard (SPEC §12), classified by code before any status:

========================  ==============================================================
``blocked_destination``   the destination resolves to a refused address: dead
``api_rejected``          an API answered 2xx with a permanent error (Slack ``ok: false``)
``api_unavailable``       an API answered 2xx with a transient error: retried
``smtp_5xx``              the SMTP server refused the mail permanently: dead
``smtp_4xx``              the SMTP server refused it for now: retried
``smtp_not_configured``   no ``PRODSENTINEL_SMTP_HOST`` in the sending process: retried
``secret_unavailable``    the channel's ``*_env`` variable is unset: retried
========================  ==============================================================

Delays: the n-th retry (n = 1 after the first failed attempt) waits a
uniformly random time in ``[0, min(cap, base * 2**(n-1))]`` ("full jitter",
which spreads retries of many failing items instead of synchronising them).
When a 429 or 503 carries ``Retry-After``, that value *is* the delay (clamped
to ``[0, cap]``): the receiver told us when it can take the request, and
retrying earlier would be refused. ``MAX_ATTEMPTS`` counts every attempt, so
``decide`` turns a retryable failure into ``dead`` once ``attempt >=
max_attempts``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final, Literal

__all__ = [
    "DEAD_CODES",
    "DEFAULT_CAP_SECONDS",
    "RETRY_AFTER_STATUSES",
    "RETRY_CODES",
    "ErrorCode",
    "ExcKind",
    "Outcome",
    "RetryDecision",
    "backoff_delay",
    "classify",
    "decide",
    "error_code_for",
    "next_delay",
    "parse_retry_after",
]

Outcome = Literal["delivered", "retry", "dead"]
ExcKind = Literal["timeout", "connect_error", "network_error", "invalid_request", "blocked_destination"]
ErrorCode = Literal[
    "blocked_destination",
    "timeout",
    "connect_error",
    "network_error",
    "invalid_request",
    "http_408",
    "http_429",
    "http_5xx",
    "http_3xx",
    "http_4xx",
    "http_other",
]

DEFAULT_CAP_SECONDS: Final = 3600.0
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
#: Error codes that end an item whatever the status (a refused destination is refused next time too).
DEAD_CODES: Final = frozenset({"invalid_request", "blocked_destination", "api_rejected", "smtp_5xx"})
#: Error codes that are retried even with a 2xx status (an API that reports errors in its body).
RETRY_CODES: Final = frozenset({"api_unavailable"})
# 2**1000 is still a finite float; beyond it base * 2**n would overflow.
_MAX_EXPONENT: Final = 1000


def backoff_delay(
    retry_number: int,
    *,
    base_seconds: float,
    cap_seconds: float = DEFAULT_CAP_SECONDS,
    rng: random.Random | None = None,
) -> float:
    """Full-jitter delay before retry number ``retry_number`` (1-based)."""
    if retry_number < 1:
        raise ValueError("retry_number starts at 1 (the first retry)")
    if base_seconds < 0 or cap_seconds < 0:
        raise ValueError("base_seconds and cap_seconds must be >= 0")
    ceiling = min(cap_seconds, base_seconds * 2.0 ** min(retry_number - 1, _MAX_EXPONENT))
    return (rng or random).uniform(0.0, ceiling)


def parse_retry_after(
    value: str | None, now: datetime, *, cap_seconds: float = DEFAULT_CAP_SECONDS
) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, or ``None`` if absent/unparseable.

    Accepts delta-seconds (decimals tolerated) and HTTP-dates; a date in the
    past gives 0, anything beyond ``cap_seconds`` gives the cap. A naive
    ``now`` or date is taken as UTC.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    seconds: float
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        seconds = (when - current).total_seconds()
    else:
        if not math.isfinite(seconds):
            return None
    return min(max(seconds, 0.0), cap_seconds)


def error_code_for(http_status: int | None, exc_kind: ExcKind | str | None) -> ErrorCode | None:
    """Short, aggregatable code for one attempt's failure (``None``: delivered).

    A transport failure (``exc_kind``) wins over a status. Unknown
    ``exc_kind`` strings map to ``network_error``.
    """
    if exc_kind is not None:
        if exc_kind in (
            "timeout",
            "connect_error",
            "network_error",
            "invalid_request",
            "blocked_destination",
        ):
            return exc_kind  # type: ignore[return-value]
        return "network_error"
    if http_status is None:
        raise ValueError("an attempt has either an HTTP status or a transport failure kind")
    if 200 <= http_status <= 299:
        return None
    if http_status == 408:
        return "http_408"
    if http_status == 429:
        return "http_429"
    if 500 <= http_status <= 599:
        return "http_5xx"
    if 300 <= http_status <= 399:
        return "http_3xx"
    if 400 <= http_status <= 499:
        return "http_4xx"
    return "http_other"


def classify(http_status: int | None, error_code: str | None) -> Outcome:
    """What to do with the outbox item after one attempt (rules in the module docstring)."""
    if error_code in DEAD_CODES:
        return "dead"
    if error_code in RETRY_CODES:
        return "retry"
    if http_status is not None:
        if 200 <= http_status <= 299:
            return "delivered"
        if http_status in (408, 429) or 500 <= http_status <= 599:
            return "retry"
        return "dead"
    return "retry"


def next_delay(
    retry_number: int,
    *,
    http_status: int | None,
    retry_after_seconds: float | None,
    base_seconds: float,
    cap_seconds: float = DEFAULT_CAP_SECONDS,
    rng: random.Random | None = None,
) -> float:
    """Delay before retry ``retry_number``: Retry-After on 429/503, else full jitter."""
    if http_status in RETRY_AFTER_STATUSES and retry_after_seconds is not None:
        return min(max(retry_after_seconds, 0.0), cap_seconds)
    return backoff_delay(retry_number, base_seconds=base_seconds, cap_seconds=cap_seconds, rng=rng)


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """``delay_seconds`` is set only when ``outcome == "retry"``."""

    outcome: Outcome
    delay_seconds: float | None = None


def decide(
    *,
    attempt: int,
    max_attempts: int,
    http_status: int | None,
    error_code: str | None,
    retry_after_seconds: float | None = None,
    base_seconds: float,
    cap_seconds: float = DEFAULT_CAP_SECONDS,
    rng: random.Random | None = None,
) -> RetryDecision:
    """Outcome and delay after attempt number ``attempt`` (1 = the first send).

    The retry that follows attempt n is retry number n, so its jitter ceiling
    is ``base * 2**(n-1)``.
    """
    if attempt < 1:
        raise ValueError("attempt starts at 1 (the first send)")
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    outcome = classify(http_status, error_code)
    if outcome != "retry":
        return RetryDecision(outcome)
    if attempt >= max_attempts:
        return RetryDecision("dead")
    delay = next_delay(
        attempt,
        http_status=http_status,
        retry_after_seconds=retry_after_seconds,
        base_seconds=base_seconds,
        cap_seconds=cap_seconds,
        rng=rng,
    )
    return RetryDecision("retry", delay)
