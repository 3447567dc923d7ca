"""The clock and the supported time range, in one place so tests, jobs and every edge agree.

Supported range (docs/query.md, docs/ingest.md): every time a client sends (query ``since``/``until``,
a datetime inside a cursor, a request body's datetime) must lie, once converted to UTC, in
``MIN_TIME .. MAX_TIME`` = 1970-01-01T00:00:00Z .. 9999-12-31T23:59:59Z, both inclusive. Outside it:

- the conversion to UTC may overflow Python's ``datetime`` (year 1 with a positive offset, year 9999
  with a negative one), which would be an ``OverflowError`` (a 500);
- asyncpg stores 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z as PostgreSQL ``-infinity`` /
  ``infinity`` and reads them back as naive datetimes, which breaks arithmetic, cursors and the
  SPEC's "times are UTC" answers;
- no signal can be there anyway: ingest refuses timestamps before the epoch (``ingest.services``).

:func:`as_utc` enforces the range at the edges and never raises ``OverflowError``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prodsentinel.lib.errors import BadRequestError, DomainError

__all__ = ("MAX_TIME", "MIN_TIME", "TIME_RANGE", "as_utc", "in_time_range", "utcnow")

#: Earliest supported time (inclusive): the Unix epoch.
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
#: Latest supported time (inclusive); one microsecond short of asyncpg's ``infinity`` sentinel.
MAX_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
#: The supported range as written in error messages.
TIME_RANGE = "between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z"


def utcnow() -> datetime:
    return datetime.now(UTC)


def in_time_range(value: datetime) -> bool:
    """Whether an aware ``value`` lies in ``MIN_TIME .. MAX_TIME``.

    Comparing aware datetimes with different offsets subtracts them (a ``timedelta``), it never builds
    the UTC datetime, so this cannot overflow whatever the value.
    """
    return MIN_TIME <= value <= MAX_TIME


def as_utc(
    value: datetime, name: str = "timestamp", *, error: type[DomainError] = BadRequestError
) -> datetime:
    """``value`` in UTC: naive datetimes are UTC (SPEC §4), aware ones are converted.

    A value outside the supported range raises ``error`` (a 400 by default: query parameters; pass
    ``ValidationError`` for a body field, a 422) naming ``name``; never ``OverflowError``.
    """
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    if not in_time_range(aware):
        raise error(f"{name} must be {TIME_RANGE} (UTC), got {value.isoformat()}.")
    return aware.astimezone(UTC)
