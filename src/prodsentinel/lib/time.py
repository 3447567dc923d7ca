"""The clock, in one place so tests and jobs agree on "now" (always timezone-aware UTC)."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ("as_utc", "utcnow")


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Naive datetimes are UTC (SPEC §4); aware ones are converted."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
