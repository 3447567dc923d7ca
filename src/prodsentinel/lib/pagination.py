"""Keyset pagination and the list endpoints' common query parameters, in one place.

Every list endpoint takes the same ``since``, ``until``, ``limit`` and ``cursor`` parameters
(:data:`Since`, :data:`Until`, :data:`Limit`, :data:`Cursor`), parses them with the same functions
(:func:`time_range`, :func:`check_limit`) and pages with one :class:`Keyset`:

- a cursor is the sort key of the last row of a page behind the keyset's tag (e.g. ``["logs",
  "2026-…", 42]``), JSON-encoded and urlsafe-base64'd, so a cursor of one endpoint is a 400 on
  another instead of a silently wrong page;
- the repository fetches ``limit + 1`` rows and :meth:`Keyset.page` keeps ``limit`` of them, so
  ``next_cursor`` is set exactly when another row exists (no empty last page when exactly ``limit``
  rows remain).

Keyset pagination never skips or repeats a row while new rows arrive, unlike OFFSET.

Times are taken as strings, not Litestar ``datetime`` parameters, so that a bad value answers a 400
naming the parameter, and so that ``+02:00`` sent unencoded in a query string (it arrives as
`` 02:00``) still parses.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

import msgspec
from litestar.params import QueryParameter

from prodsentinel.lib.errors import BadRequestError
from prodsentinel.lib.time import as_utc, in_time_range

__all__ = (
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "Cursor",
    "Keyset",
    "Limit",
    "Since",
    "Until",
    "check_limit",
    "decode_cursor",
    "encode_cursor",
    "parse_time",
    "time_range",
)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: What a cursor may hold: scalars only, so a nested array is refused at its first bracket instead of being
#: decoded (a client-built cursor of thousands of ``[`` would otherwise exhaust the decoder's recursion).
_CursorValue = str | int | float | bool | None

_DATE_TIME = {"format": "date-time"}

Since = Annotated[
    str | None,
    QueryParameter(description="Inclusive lower bound, RFC 3339 (naive = UTC).", schema_extra=_DATE_TIME),
]
Until = Annotated[
    str | None,
    QueryParameter(description="Exclusive upper bound, RFC 3339 (naive = UTC).", schema_extra=_DATE_TIME),
]
Limit = Annotated[
    int,
    QueryParameter(
        description=f"Page size, 1..{MAX_LIMIT} (anything else is a 400).",
        # documented bounds only: the service checks them so the 400 says what was wrong
        schema_extra={"minimum": 1, "maximum": MAX_LIMIT},
    ),
]
Cursor = Annotated[
    str | None,
    QueryParameter(description="Opaque: the next_cursor of the previous page with the same filters."),
]

# "+02:00" sent unencoded in a query string arrives as " 02:00": put the plus back.
_SPACE_OFFSET = re.compile(r"^(.+\d) (\d{2}:?\d{2})$")


def check_limit(limit: int) -> int:
    """SPEC §5: ``limit`` outside 1..1000 is a 400."""
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequestError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}.")
    return limit


def parse_time(name: str, raw: str | None) -> datetime | None:
    """An RFC 3339 timestamp (naive = UTC) or None; anything else is a 400 naming the parameter.

    The result is in UTC and in the supported range (``lib.time``, 1970 .. 9999): outside it is a 400
    too, so range arithmetic never overflows.
    """
    if raw is None or raw.strip() == "":
        return None
    value = raw.strip()
    match = _SPACE_OFFSET.match(value)
    if match:
        value = f"{match.group(1)}+{match.group(2)}"
    try:
        parsed = msgspec.convert(value, datetime)
    except msgspec.ValidationError:
        raise BadRequestError(
            f"{name} must be an RFC 3339 timestamp such as 2026-01-31T12:00:00Z, got {raw!r}."
        ) from None
    return as_utc(parsed, name)


def time_range(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    """``since``/``until`` parsed; ``since`` later than ``until`` is a 400."""
    start, end = parse_time("since", since), parse_time("until", until)
    if start is not None and end is not None and start > end:
        raise BadRequestError("since must not be later than until.")
    return start, end


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


Row = TypeVar("Row")


@dataclass(frozen=True, slots=True)
class Keyset(Generic[Row]):
    """One endpoint's keyset: its cursor tag, the types of its sort key and how to read it off a row.

    Repositories order by the sort key descending and take ``after`` as "strictly below this key"
    (``tuple_(ts, id) < tuple_(*after)``), fetching :meth:`fetch_size` rows.
    """

    tag: str
    types: tuple[type, ...]
    key: Callable[[Row], Sequence[Any]]

    def after(self, cursor: str | None) -> tuple[Any, ...] | None:
        """The sort key a cursor points after, or None for the first page; a foreign cursor is a 400."""
        if cursor is None or cursor == "":
            return None
        tag, *values = decode_cursor(cursor, (str, *self.types))
        if tag != self.tag:
            raise BadRequestError("cursor is not valid; use next_cursor from a previous page.")
        return tuple(values)

    @staticmethod
    def fetch_size(limit: int) -> int:
        """Rows to fetch for a page of ``limit``: one more tells whether a next page exists."""
        return check_limit(limit) + 1

    def page(self, rows: Sequence[Row], limit: int) -> tuple[list[Row], str | None]:
        """The page's rows and its ``next_cursor`` (None on the last page)."""
        items = list(rows[:limit])
        if len(rows) <= limit or not items:
            return items, None
        return items, encode_cursor([self.tag, *map(_jsonable, self.key(items[-1]))])


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str | int | float) or value is None:
        return value
    return str(value)  # UUIDs
