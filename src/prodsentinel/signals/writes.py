"""Set-based, idempotent writes of signal rows (the ingest hot path). Read queries live in read_queries.py.

Hand-written asyncpg rather than advanced-alchemy: the ORM would build one object per signal, and even a
Core multi-row INSERT costs several times PostgreSQL's binary ``COPY``. The tables are append-only and
partitioned by time (``signals.partitions``); the guarantee to keep is SPEC §4's "one ``signal_id`` per
project is stored once", which the unique constraint on ``(project_id, signal_id, time)`` enforces for
every resend (a resend carries the signal's timestamp, so it lands in the partition that holds the
original; docs/ingest.md "Idempotency" states the guarantee and its measured alternatives). How the
write stays cheap:

1. *Fast path.* Look up which keys of the batch are already stored (one index probe per key in the one
   partition its timestamp selects, usually none found), then ``COPY`` the rest straight into the table:
   no staging table, no ``ON CONFLICT`` speculative insertion. Small batches (up to ``SMALL_BATCH_ROWS``:
   what group commit gathers from single-event requests) skip it and go straight to the one-statement
   exact path below: one round trip instead of four.
2. *Race.* If a concurrent writer stores one of the same keys between the probe and the ``COPY``, the
   unique index rejects the ``COPY`` and the whole transaction rolls back; the batch is then written with
   ``INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING RETURNING``, which is exact under any
   concurrency. Either way nothing is stored twice and the caller learns exactly which keys were new.
3. *Missing partition.* A timestamp outside every partition (a late or early signal, or before the cron
   created today's) fails the statement; the writer then creates the partitions the batch needs
   (``partitions.ensure_sql``) and writes again. Nothing is checked on the common path.

Callers pass rows with unique ``(project_id, signal_id)`` sorted by it: every writer then takes the
unique-index locks in the same order, so concurrent batches with overlapping keys cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any
from uuid import UUID

import asyncpg

from prodsentinel.signals.partitions import (
    DEFAULT_INTERVAL_SECONDS,
    PARTITIONED,
    PartitionedTable,
    ensure_sql,
    ranges_for,
)

__all__ = (
    "DEDUP_WINDOW_HOURS",
    "LOGS",
    "METRIC_POINTS",
    "SMALL_BATCH_ROWS",
    "SPANS",
    "Key",
    "SignalTable",
    "write_rows",
)

#: ``(project_id, signal_id)``: the identity of a stored signal.
Key = tuple[UUID, UUID]
Row = tuple[Any, ...]

#: Up to this many rows a write is one ``INSERT … FROM unnest … ON CONFLICT`` statement (one round trip);
#: above it the probe + ``COPY`` fast path, whose ``BEGIN``/probe/``COPY``/``COMMIT`` round trips only pay
#: off on large batches. Group-committed single-event requests land in the small path (docs/ingest.md).
SMALL_BATCH_ROWS = 200

#: A resend is recognised when the stored copy's timestamp is at most this many hours before the
#: resend's, or later (an exact resend, the case of every retry, has the same timestamp).
#: docs/ingest.md "Idempotency on partitioned tables".
DEDUP_WINDOW_HOURS = 24

_RETRYABLE = (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


@dataclass(frozen=True)
class SignalTable:
    """A signal table as the writer sees it: the written columns (``project_id``, ``signal_id`` first)."""

    name: str
    columns: tuple[str, ...]
    pg_types: tuple[str, ...]
    partitioned: PartitionedTable = field(init=False)
    time_index: int = field(init=False)
    existing_sql: str = field(init=False)
    upsert_sql: str = field(init=False)

    def __post_init__(self) -> None:
        partitioned = PARTITIONED[self.name]
        time_column = f'"{partitioned.time_column}"'
        columns = ", ".join(f'"{column}"' for column in self.columns)
        arrays = ", ".join(f"${n}::{pg_type}[]" for n, pg_type in enumerate(self.pg_types, start=1))
        object.__setattr__(self, "partitioned", partitioned)
        object.__setattr__(self, "time_index", self.columns.index(partitioned.time_column))
        # A stored copy is looked for by signal_id from DEDUP_WINDOW_HOURS before the batch's earliest
        # time on ($lo): the bound prunes the probe to the partitions from there on when the statement
        # starts. Each key is one lookup of the unique index, forced by the shape (a LATERAL / a
        # correlated subquery that is not pulled up, "OFFSET 0") and by the one-sided bound: with a
        # two-sided time range, a partition without statistics yet (every new day's, until autovacuum
        # analyses it) made the planner, generic plans included, read the primary key's time range with
        # signal_id as a filter, per key: 0.5 s to a minute per 1,000-key probe (measured).
        window = f"interval '{DEDUP_WINDOW_HOURS} hours'"
        n = len(self.pg_types)
        found = (
            f"SELECT 1 FROM {self.name} t WHERE t.project_id = {{project}} AND t.signal_id = {{signal}} "
            f"AND t.{time_column} > {{lo}}::timestamptz - {window}"
        )
        object.__setattr__(
            self,
            "existing_sql",
            "SELECT k.signal_id FROM unnest($2::uuid[]) AS k(signal_id) CROSS JOIN LATERAL ("
            + found.format(project="$1", signal="k.signal_id", lo="$3")
            + " LIMIT 1) AS stored",
        )
        object.__setattr__(
            self,
            "upsert_sql",
            f"INSERT INTO {self.name} ({columns}) SELECT * FROM unnest({arrays}) AS u({columns}) "
            "WHERE NOT EXISTS ("
            + found.format(project="u.project_id", signal="u.signal_id", lo=f"${n + 1}")
            + f" OFFSET 0) ON CONFLICT (project_id, signal_id, {time_column}) DO NOTHING "
            "RETURNING project_id, signal_id",
        )


LOGS = SignalTable(
    "logs",
    (
        "project_id",
        "signal_id",
        "trace_id",
        "span_id",
        "service_name",
        "timestamp",
        "level",
        "message",
        "attributes",
    ),
    ("uuid", "uuid", "text", "text", "text", "timestamptz", "int2", "text", "jsonb"),
)
SPANS = SignalTable(
    "spans",
    (
        "project_id",
        "signal_id",
        "trace_id",
        "span_id",
        "parent_span_id",
        "service_name",
        "name",
        "start_time",
        "end_time",
        "duration_ms",
        "status",
        "attributes",
    ),
    (
        "uuid",
        "uuid",
        "text",
        "text",
        "text",
        "text",
        "text",
        "timestamptz",
        "timestamptz",
        "float8",
        "int2",
        "jsonb",
    ),
)
METRIC_POINTS = SignalTable(
    "metric_points",
    ("project_id", "signal_id", "name", "service_name", "timestamp", "value", "labels"),
    ("uuid", "uuid", "text", "text", "timestamptz", "float8", "jsonb"),
)


async def write_rows(
    connection: asyncpg.Connection,
    table: SignalTable,
    rows: Sequence[Row],
    *,
    interval_seconds: int = DEFAULT_INTERVAL_SECONDS,
) -> set[Key]:
    """Store the rows whose key is new and commit; return the keys that were already stored.

    ``rows`` must have unique ``(project_id, signal_id)`` and be sorted by it. Runs its own
    transaction(s): when this returns, the new rows are durably committed. A partition missing for some
    row is created (ranges of ``interval_seconds``) and the write retried.
    """
    if not rows:
        return set()
    try:
        return await _write(connection, table, rows)
    except asyncpg.CheckViolationError as exc:
        if "no partition" not in str(exc):
            raise
    starts = ranges_for((row[table.time_index] for row in rows), interval_seconds)
    await connection.execute(ensure_sql(table.partitioned, starts, interval_seconds))
    return await _write(connection, table, rows)


async def _write(connection: asyncpg.Connection, table: SignalTable, rows: Sequence[Row]) -> set[Key]:
    if len(rows) <= SMALL_BATCH_ROWS:
        return await _upsert(connection, table, rows)
    try:
        async with connection.transaction():
            existing = await _existing_keys(connection, table, rows)
            fresh = [row for row in rows if (row[0], row[1]) not in existing] if existing else rows
            if fresh:
                await connection.copy_records_to_table(table.name, records=fresh, columns=table.columns)
        return existing
    except _RETRYABLE:
        pass  # a concurrent writer stored some of these keys meanwhile: take the exact, slower path
    return await _upsert(connection, table, rows)


async def _upsert(connection: asyncpg.Connection, table: SignalTable, rows: Sequence[Row]) -> set[Key]:
    """One ``INSERT … FROM unnest … ON CONFLICT DO NOTHING RETURNING`` in its own implicit transaction.

    A single round trip (no ``BEGIN``/``COMMIT`` messages): the statement commits when it returns.
    """
    for attempt in range(3):
        try:
            columns = list(zip(*rows, strict=True))
            times = columns[table.time_index]
            inserted = await connection.fetch(table.upsert_sql, *columns, min(times))
            break
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if attempt == 2:
                raise
    new_keys = {(record[0], record[1]) for record in inserted}
    return {(row[0], row[1]) for row in rows if (row[0], row[1]) not in new_keys}


async def _existing_keys(connection: asyncpg.Connection, table: SignalTable, rows: Sequence[Row]) -> set[Key]:
    existing: set[Key] = set()
    at = table.time_index
    for project_id, group in groupby(rows, key=lambda row: row[0]):
        project_rows = list(group)
        times = [row[at] for row in project_rows]
        found = await connection.fetch(
            table.existing_sql, project_id, [row[1] for row in project_rows], min(times)
        )
        existing.update((project_id, record[0]) for record in found)
    return existing
