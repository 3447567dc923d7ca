"""Webhook headers and their HMAC signature (pure, no I/O).

The signature covers ``"<timestamp>.<raw body>"`` so a receiver can reject a
captured request replayed later with a new timestamp: the timestamp cannot
be changed without the secret. Receivers should:

1. read ``X-ProdSentinel-Timestamp`` and the raw body bytes (before any JSON
   parsing: re-serialising changes the bytes);
2. compute ``"sha256=" + hex(HMAC-SHA256(secret, f"{timestamp}." + body))`` and
   compare it with ``X-ProdSentinel-Signature`` in constant time;
3. reject timestamps too far from their clock (``verify(..., now=...,
   tolerance_seconds=300)`` does both);
4. deduplicate on ``X-ProdSentinel-Event-Id`` (stable across retries and
   replays), not on the delivery id (new for every replay).

The secret is used as UTF-8 bytes.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final
from uuid import UUID

__all__ = [
    "CONTENT_TYPE_HEADER",
    "DELIVERY_ID_HEADER",
    "EVENT_ID_HEADER",
    "SIGNATURE_HEADER",
    "SIGNATURE_PREFIX",
    "TIMESTAMP_HEADER",
    "delivery_headers",
    "signature",
    "verify",
]

DELIVERY_ID_HEADER: Final = "X-ProdSentinel-Delivery-Id"
EVENT_ID_HEADER: Final = "X-ProdSentinel-Event-Id"
TIMESTAMP_HEADER: Final = "X-ProdSentinel-Timestamp"
SIGNATURE_HEADER: Final = "X-ProdSentinel-Signature"
CONTENT_TYPE_HEADER: Final = "Content-Type"
SIGNATURE_PREFIX: Final = "sha256="


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-ProdSentinel-Signature`` value for one request."""
    mac = hmac.new(secret.encode(), f"{int(timestamp)}.".encode() + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def delivery_headers(
    *,
    delivery_id: str | UUID,
    event_id: str | UUID,
    timestamp: int,
    body: bytes,
    secret: str | None,
) -> dict[str, str]:
    """Headers of one delivery attempt; signed only when the channel has a secret.

    An empty-string secret counts as "no secret": signing with an empty key
    would look authenticated while proving nothing.
    """
    headers = {
        CONTENT_TYPE_HEADER: "application/json",
        DELIVERY_ID_HEADER: str(delivery_id),
        EVENT_ID_HEADER: str(event_id),
        TIMESTAMP_HEADER: str(int(timestamp)),
    }
    if secret:
        headers[SIGNATURE_HEADER] = signature(secret, timestamp, body)
    return headers


def verify(
    secret: str,
    timestamp: int | str,
    body: bytes,
    header_value: str | None,
    *,
    now: int | None = None,
    tolerance_seconds: int = 300,
) -> bool:
    """Receiver-side check of a signature, in constant time.

    ``timestamp`` may be the raw header string. When ``now`` (unix seconds) is
    given, timestamps more than ``tolerance_seconds`` away are rejected too.
    """
    if not header_value or not secret:
        return False
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if now is not None and abs(now - ts) > tolerance_seconds:
        return False
    expected = signature(secret, ts, body)
    return hmac.compare_digest(expected.encode(), header_value.strip().encode())
