"""Opaque keyset cursors.

A cursor is the sort key of the last row of a page (e.g. ``(timestamp, id)``), JSON-encoded and
urlsafe-base64'd. Keyset pagination never skips or repeats a row while new rows arrive, unlike OFFSET.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from prodsentinel.lib.errors import BadRequestError
from prodsentinel.lib.time import in_time_range

__all__ = ("DEFAULT_LIMIT", "MAX_LIMIT", "BadRequestError", "check_limit", "decode_cursor", "encode_cursor")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: What a cursor may hold: scalars only, so a nested array is refused at its first bracket instead of being
#: decoded (a client-built cursor of thousands of ``[`` would otherwise exhaust the decoder's recursion).
_CursorValue = str | int | float | bool | None


def check_limit(limit: int) -> int:
    """SPEC §5: ``limit`` outside 1..1000 is a 400."""
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequestError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}.")
    return limit


def encode_cursor(values: Sequence[Any]) -> str:
    raw = msgspec.json.encode(list(values))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, types: Sequence[type]) -> tuple[Any, ...]:
    """Decode a cursor made by :func:`encode_cursor`, checking each element against ``types``.

    A ``datetime`` element must carry an offset and lie in the supported range (``lib.time``); it is
    returned in UTC. Anything else is the same 400 as any other bad cursor.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = msgspec.json.decode(raw, type=list[_CursorValue])
        if len(values) != len(types):
            raise ValueError("wrong arity")
        return tuple(_convert(value, kind) for value, kind in zip(values, types, strict=True))
    except (ValueError, binascii.Error, msgspec.DecodeError, msgspec.ValidationError):
        raise BadRequestError("cursor is not valid; use next_cursor from a previous page.") from None


def _convert(value: Any, kind: type) -> Any:
    if kind is datetime:
        when = msgspec.convert(value, datetime)
        # The server's cursors always hold aware, in-range times; anything else was not made by it (and
        # would overflow or become a PostgreSQL infinity further on).
        if when.tzinfo is None or not in_time_range(when):
            raise ValueError("naive or out-of-range datetime")
        return when.astimezone(UTC)
    return msgspec.convert(value, kind)
