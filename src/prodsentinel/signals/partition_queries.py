"""SQL of partition management on a SQLAlchemy connection: create ahead, list, and drop whole partitions.

The ingest writer runs the same creation SQL (``partitions.ensure_sql``) on its own asyncpg connection
when a row finds no partition; this module serves the cron, retention and the tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from prodsentinel.signals.partitions import PartitionedTable, ensure_sql

__all__ = ("Partition", "PartitionQueries", "drop_partition")

#: A retention DDL statement waits at most this long for a lock, then gives up until the next run.
LOCK_TIMEOUT = "5s"


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    lower: datetime
    upper: datetime


class PartitionQueries:
    """Partition DDL and catalog reads on one session (the caller's unit of work commits)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def ensure(
        self, table: PartitionedTable, starts: Iterable[datetime], interval_seconds: int
    ) -> None:
        """Create the missing partitions of ``table`` for the ranges starting at ``starts``."""
        sql = ensure_sql(table, starts, interval_seconds)
        if sql:
            await self.session.execute(text(sql))

    async def attached(self, table: PartitionedTable) -> list[Partition]:
        """The attached partitions of ``table``, oldest first (bounds read from the catalog).

        ``pg_get_expr`` prints the bounds with their UTC offset, so parsing them back does not depend on
        the session's time zone.
        """
        rows = await self.session.execute(
            text(
                r"""
                SELECT c.relname AS name, m[1]::timestamptz AS lower, m[2]::timestamptz AS upper
                FROM pg_inherits i
                JOIN pg_class c ON c.oid = i.inhrelid
                CROSS JOIN LATERAL regexp_match(
                    pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\) TO \(''([^'']+)''\)') AS m
                WHERE i.inhparent = CAST(:parent AS regclass) AND NOT i.inhdetachpending
                ORDER BY 2
                """
            ),
            {"parent": table.name},
        )
        return [Partition(name=r.name, lower=r.lower, upper=r.upper) for r in rows]

    async def pending_detach(self, table: PartitionedTable) -> list[str]:
        """Partitions left half-detached by an interrupted ``DETACH .. CONCURRENTLY``."""
        rows = await self.session.scalars(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = CAST(:parent AS regclass) AND i.inhdetachpending"
            ),
            {"parent": table.name},
        )
        return list(rows)


async def drop_partition(
    connection: AsyncConnection, table: PartitionedTable, name: str, *, pending: bool
) -> None:
    """Detach partition ``name`` from ``table`` and drop it; ``connection`` must be in autocommit mode.

    ``DETACH PARTITION .. CONCURRENTLY`` neither waits for running queries and inserts on the parent nor
    blocks them (a plain ``DROP TABLE`` of a partition takes an ``ACCESS EXCLUSIVE`` lock on the parent,
    which queues every new ingest behind the longest running query). It cannot run in a transaction,
    hence autocommit. A detach interrupted half-way is finished with ``FINALIZE`` (``pending``).
    Dropping the detached table then locks only itself.
    """
    names = {"table": table.name, "part": name}
    assert all(part.replace("_", "").isalnum() for part in names.values())  # catalog names, never input
    await connection.execute(text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
    try:
        mode = "FINALIZE" if pending else "CONCURRENTLY"
        await connection.execute(text(f'ALTER TABLE {table.name} DETACH PARTITION "{name}" {mode}'))
        await connection.execute(text(f'DROP TABLE "{name}"'))
    finally:
        await connection.execute(text("RESET lock_timeout"))
