"""The migration to partitioned signal tables on a database filled by the old schema (no row lost).

Its own database: migrated to the revision before the conversion, filled through the old plain tables,
upgraded to head, checked row for row (ids and contents), then downgraded and checked again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import asyncpg
import pytest
from advanced_alchemy.alembic.commands import AlembicCommands

from prodsentinel.lib.database import alchemy_config, libpq_url, migrate
from prodsentinel.signals.writes import LOGS, write_rows

BEFORE = "601dda65e8d3"  # the last revision with plain signal tables
PROJECT = uuid.UUID("00000000-0000-4000-8000-00000000a11d")

# Rows over six days (0..5 days old) and one 40 days old, per table.
FILL = [
    """
    INSERT INTO logs (project_id, signal_id, trace_id, span_id, service_name, timestamp, level, message,
                      attributes)
    SELECT $1::uuid, gen_random_uuid(), CASE WHEN n % 3 = 0 THEN 't' || (n % 50) END, NULL, 'svc-' || (n % 4),
           now() - make_interval(hours => n % 144) - interval '1 minute',
           (ARRAY[10, 20, 30, 40, 50])[1 + n % 5],
           'message ' || n, CASE WHEN n % 2 = 0 THEN jsonb_build_object('n', n) END
    FROM generate_series(1, 3000) AS n
    UNION ALL
    SELECT $1::uuid, gen_random_uuid(), NULL, NULL, 'old', now() - interval '40 days', 40, 'old one', NULL
    """,
    """
    INSERT INTO spans (project_id, signal_id, trace_id, span_id, parent_span_id, service_name, name,
                       start_time, end_time, duration_ms, status, attributes)
    SELECT $1::uuid, gen_random_uuid(), 't' || (n % 50), 's' || n, NULL, 'svc-' || (n % 4), 'op',
           now() - make_interval(hours => n % 144), now() - make_interval(hours => n % 144) + interval '5 ms',
           5.0, n % 3, NULL
    FROM generate_series(1, 2000) AS n
    """,
    """
    INSERT INTO metric_points (project_id, signal_id, name, service_name, timestamp, value, labels)
    SELECT $1::uuid, gen_random_uuid(), 'latency', 'svc-' || (n % 4), now() - make_interval(mins => n * 7),
           n * 0.5, jsonb_build_object('route', '/r' || (n % 3))
    FROM generate_series(1, 2000) AS n
    """,
]
TABLES = ("logs", "spans", "metric_points")


@pytest.fixture
def fresh_database(postgres_server_url: str) -> Iterator[str]:
    name = f"prodsentinel_migration_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(postgres_server_url)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(postgres_server_url)
    yield f"postgresql+asyncpg://{parts.netloc}/{name}" + (f"?{parts.query}" if parts.query else "")
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def snapshot(dsn: str) -> dict[str, tuple[str, int, str]]:
    """Per table: relkind, row count and an md5 over every row (ids included) in id order."""
    connection = await asyncpg.connect(dsn)
    try:
        result = {}
        for table in TABLES:
            kind = await connection.fetchval(
                "SELECT relkind::text FROM pg_class WHERE oid = $1::regclass", table
            )
            count = await connection.fetchval(f"SELECT count(*) FROM {table}")
            digest = await connection.fetchval(
                f"SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) FROM {table} t"
            )
            result[table] = (kind, count, digest)
        return result
    finally:
        await connection.close()


async def fill(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        for sql in FILL:
            await connection.execute(sql, PROJECT)
    finally:
        await connection.close()


async def check_partitioned(dsn: str) -> None:
    """Keys, identity and idempotency on the converted tables."""
    connection = await asyncpg.connect(dsn)
    try:
        for table in TABLES:
            days = await connection.fetchval(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = $1::regclass", table
            )
            assert days >= 7, table  # six days of data and days ahead, each its own partition
            keys = await connection.fetch(
                "SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint "
                "WHERE conrelid = $1::regclass AND contype IN ('p', 'u')",
                table,
            )
            assert all("project_id" in key["definition"] for key in keys), keys
        old_max = await connection.fetchval("SELECT max(id) FROM logs")
        stored = await connection.fetchrow(
            "SELECT signal_id, timestamp FROM logs WHERE message = 'message 7' AND project_id = $1", PROJECT
        )
        fresh = uuid.uuid4()
        row = (PROJECT, stored["signal_id"], None, None, "svc", stored["timestamp"], 40, "resent", None)
        moved = (
            PROJECT,
            stored["signal_id"],
            None,
            None,
            "svc",
            stored["timestamp"] + timedelta(hours=2),
            40,
            "x",
            None,
        )
        new = (PROJECT, fresh, None, None, "svc", datetime.now(UTC), 40, "new", None)
        for attempt in ([row, new], [moved]):
            rows = sorted(attempt, key=lambda r: (r[0].int, r[1].int))
            existing = await write_rows(connection, LOGS, rows)
            assert existing == {(PROJECT, stored["signal_id"])}
        assert (
            await connection.fetchval("SELECT count(*) FROM logs WHERE signal_id = $1", stored["signal_id"])
            == 1
        )
        assert await connection.fetchval("SELECT id FROM logs WHERE signal_id = $1", fresh) > old_max
    finally:
        await connection.close()


def test_upgrade_keeps_every_row_and_downgrade_restores_plain_tables(fresh_database: str) -> None:
    config = alchemy_config(fresh_database)
    dsn = libpq_url(fresh_database)
    migrate(config, BEFORE)
    asyncio.run(fill(dsn))
    before = asyncio.run(snapshot(dsn))
    assert {kind for kind, _, _ in before.values()} == {"r"}

    migrate(config)

    after = asyncio.run(snapshot(dsn))
    for table in TABLES:
        assert after[table][0] == "p", table  # partitioned
        assert after[table][1:] == before[table][1:], table  # same rows, same ids, same contents
    asyncio.run(check_partitioned(dsn))
    upgraded = asyncio.run(snapshot(dsn))

    AlembicCommands(sqlalchemy_config=config).downgrade(revision=BEFORE)

    restored = asyncio.run(snapshot(dsn))
    for table in TABLES:
        assert restored[table] == ("r", *upgraded[table][1:]), table
