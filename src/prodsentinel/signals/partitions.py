"""Time partitions of the signal tables: which range holds a timestamp, and the DDL that creates it.

``logs``, ``spans`` and ``metric_points`` are PostgreSQL range-partitioned tables (SPEC §16) on their time
column. A partition covers ``[start, start + interval)`` with ``start`` a multiple of the interval since
the Unix epoch (UTC), so every process computes the same bounds without asking the database. The
interval is ``PRODSENTINEL_PARTITION_INTERVAL`` (default one day).

Why partitions: a btree grows with its table, and once the indexes of a month of telemetry no longer fit
in memory every insert into a random position (``signal_id`` is a random UUID) reads a page from disk.
With one partition per day the indexes that ingest writes are those of today's partition: small, hot,
and the same size on day 1 and day 300. Retention then drops a whole partition (``signals.retention``)
instead of deleting rows one by one.

This module is pure: it computes ranges, names and SQL text. ``signals.partition_queries`` runs them.
The SQL is a ``DO`` block with no bind parameters, so the same text runs on the ingest writer's raw
asyncpg connection and on a SQLAlchemy session; every value interpolated is computed here (table names
from :data:`PARTITIONED`, timestamps formatted from ``datetime``), never taken from a request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = (
    "DEFAULT_INTERVAL_SECONDS",
    "PARTITIONED",
    "PartitionedTable",
    "ensure_sql",
    "range_start",
    "ranges_between",
    "ranges_for",
)

DEFAULT_INTERVAL_SECONDS = 86_400
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class PartitionedTable:
    """A signal table and the column it is partitioned by."""

    name: str
    time_column: str


PARTITIONED: dict[str, PartitionedTable] = {
    "logs": PartitionedTable("logs", "timestamp"),
    "spans": PartitionedTable("spans", "start_time"),
    "metric_points": PartitionedTable("metric_points", "timestamp"),
}


def range_start(ts: datetime, interval_seconds: int) -> datetime:
    """Start of the aligned range holding ``ts`` (a naive ``ts`` is UTC, as on the ingest path)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    offset = (ts - EPOCH) // timedelta(seconds=interval_seconds)
    return EPOCH + timedelta(seconds=offset * interval_seconds)


def ranges_for(timestamps: Iterable[datetime], interval_seconds: int) -> list[datetime]:
    """Distinct range starts holding ``timestamps``, oldest first."""
    return sorted({range_start(ts, interval_seconds) for ts in timestamps})


def ranges_between(since: datetime, until: datetime, interval_seconds: int) -> list[datetime]:
    """Range starts covering ``[since, until]``, oldest first."""
    step = timedelta(seconds=interval_seconds)
    start, last = range_start(since, interval_seconds), range_start(until, interval_seconds)
    starts = []
    while start <= last:
        starts.append(start)
        start += step
    return starts


def _literal(ts: datetime) -> str:
    return f"'{ts.astimezone(UTC).isoformat()}'::timestamptz"


def ensure_sql(table: PartitionedTable, starts: Iterable[datetime], interval_seconds: int) -> str:
    """One ``DO`` block creating the partitions of ``table`` for the ranges at ``starts`` that are missing.

    - A new partition is created as a plain table ``LIKE`` the parent (with its indexes) and then
      ``ATTACH``ed: attaching takes a ``SHARE UPDATE EXCLUSIVE`` lock on the parent, which does not wait
      for (nor block) running queries and inserts, while ``CREATE TABLE .. PARTITION OF`` needs an
      ``ACCESS EXCLUSIVE`` lock that queues behind every running query and blocks ingest meanwhile.
    - Only the parts of a range that no partition covers are created: after a change of
      ``PRODSENTINEL_PARTITION_INTERVAL`` old and new bounds differ, and the gaps are filled instead of
      failing on an overlap.
    - Creators serialise on an advisory lock, so two processes missing the same partition at once
      create it once; the second finds it covered.

    Partition names are ``<table>_p<YYYYMMDD>`` (``_<HHMMSS>`` appended when a range does not start at
    midnight UTC).
    """
    step = timedelta(seconds=interval_seconds)
    values = ", ".join(f"({_literal(start)}, {_literal(start + step)})" for start in sorted(set(starts)))
    if not values:
        return ""
    name = table.name
    return f"""
DO $partitions$
DECLARE
    wanted record;
    existing record;
    cursor_ts timestamptz;
    gaps tstzrange[];
    gap tstzrange;
    part text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('prodsentinel:partitions:{name}'));
    FOR wanted IN SELECT * FROM (VALUES {values}) AS v(lo, hi) LOOP
        gaps := '{{}}';
        cursor_ts := wanted.lo;
        FOR existing IN
            SELECT b.lo, b.hi FROM (
                SELECT m[1]::timestamptz AS lo, m[2]::timestamptz AS hi
                FROM pg_inherits i
                JOIN pg_class c ON c.oid = i.inhrelid
                CROSS JOIN LATERAL regexp_match(
                    pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\) TO \\(''([^'']+)''\\)') AS m
                WHERE i.inhparent = '{name}'::regclass
            ) AS b
            WHERE b.lo < wanted.hi AND b.hi > wanted.lo
            ORDER BY b.lo
        LOOP
            IF existing.lo > cursor_ts THEN
                gaps := gaps || tstzrange(cursor_ts, existing.lo);
            END IF;
            cursor_ts := greatest(cursor_ts, existing.hi);
        END LOOP;
        IF cursor_ts < wanted.hi THEN
            gaps := gaps || tstzrange(cursor_ts, wanted.hi);
        END IF;
        FOREACH gap IN ARRAY gaps LOOP
            part := '{name}_p' || to_char(lower(gap) AT TIME ZONE 'UTC', 'YYYYMMDD')
                || CASE WHEN (lower(gap) AT TIME ZONE 'UTC')::time = '00:00' THEN ''
                        ELSE to_char(lower(gap) AT TIME ZONE 'UTC', '_HH24MISS') END;
            EXECUTE format('CREATE TABLE %I (LIKE {name} INCLUDING DEFAULTS INCLUDING INDEXES)', part);
            EXECUTE format('ALTER TABLE {name} ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           part, lower(gap), upper(gap));
        END LOOP;
    END LOOP;
END
$partitions$"""
