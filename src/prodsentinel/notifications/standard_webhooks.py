"""Standard Webhooks signing (https://www.standardwebhooks.com), pure: a ``webhook`` channel with
``signing: standard``.

Headers: ``webhook-id`` (the event_id: stable across retries and replays, the receiver's dedup key),
``webhook-timestamp`` (unix seconds of this attempt) and ``webhook-signature``: ``v1,<base64
HMAC-SHA256(key, "<id>.<timestamp>.<body>")>``. A secret is ``whsec_<base64 key>``; several secrets
separated by spaces sign with each (``v1,a v1,b``), so a receiver can rotate: add the new secret, move
the receiver over, drop the old one. Any receiver using a Standard Webhooks library verifies these.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Final

__all__ = ("SECRET_PREFIX", "headers", "parse_secrets", "signature")

SECRET_PREFIX: Final = "whsec_"


def parse_secrets(secrets: str) -> list[bytes]:
    """The keys of a space-separated ``whsec_...`` list; ValueError names what is wrong."""
    keys: list[bytes] = []
    for index, part in enumerate(secrets.split()):
        if not part.startswith(SECRET_PREFIX):
            raise ValueError(f"secret {index + 1} must start with {SECRET_PREFIX!r} (Standard Webhooks)")
        encoded = part[len(SECRET_PREFIX) :]
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"secret {index + 1} is not {SECRET_PREFIX}<base64>") from None
        if not key:
            raise ValueError(f"secret {index + 1} is empty")
        keys.append(key)
    if not keys:
        raise ValueError("a standard-signed channel needs at least one whsec_ secret")
    return keys


def signature(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one ``v1,<base64>`` per key, space-separated."""
    signed = f"{msg_id}.{int(timestamp)}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode() for key in keys
    )


def headers(*, msg_id: str, timestamp: int, body: bytes, keys: list[bytes] | None) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (unsigned when there is no key)."""
    result = {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
    }
    if keys:
        result["webhook-signature"] = signature(keys, msg_id, timestamp, body)
    return result
