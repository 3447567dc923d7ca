"""The project-keys migration (7c1e2d9a4b60) converts an installation of the previous schema in place.

A fresh database is migrated to the revision before it, filled through plain SQL the way the old code
wrote rows (two projects, a child row of every converted foreign key), upgraded, checked (rows, the
backfilled ``project_id``, the new keys), then downgraded and checked again: no row is lost either way.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import asyncpg
import pytest
from advanced_alchemy.alembic.commands import AlembicCommands

from prodsentinel.lib.database import alchemy_config, migrate

BEFORE = "51cd6369386a"
REVISION = "7c1e2d9a4b60"

#: Rows written per table before the upgrade (two projects).
TABLES = (
    "alert_policies",
    "alerts",
    "silences",
    "audit_events",
    "incidents",
    "anomalies",
    "incident_occurrences",
    "notification_channels",
    "notification_channel_state",
    "outbox_items",
    "delivery_attempts",
)

_KEYS_SQL = """
SELECT conrelid::regclass::text || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint
WHERE connamespace = 'public'::regnamespace AND contype IN ('p', 'u', 'f')
  AND conrelid::regclass::text = ANY($1::text[])
"""


@pytest.fixture
def empty_database(postgres_server_url: str) -> Iterator[tuple[str, str]]:
    """A new empty database: ``(SQLAlchemy URL, libpq URL)``; dropped afterwards."""
    name = f"prodsentinel_mig_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(postgres_server_url)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(postgres_server_url)
    query = f"?{parts.query}" if parts.query else ""
    try:
        yield (
            f"postgresql+asyncpg://{parts.netloc}/{name}{query}",
            f"postgresql://{parts.netloc}/{name}{query}",
        )
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _fill(url: str, projects: list[uuid.UUID]) -> None:
    """The old schema's rows: per project one policy + alert, silence, audit row, incident + occurrence,
    anomaly, and a channel with state, an outbox item and its attempt."""
    connection = await asyncpg.connect(url)
    try:
        for n, project in enumerate(projects):
            policy, alert, channel, item = (uuid.uuid4() for _ in range(4))
            await connection.execute(
                "INSERT INTO projects (id, name, created_at, updated_at) VALUES ($1, $2, now(), now())",
                project,
                f"migration-{project.hex[:8]}",
            )
            await connection.execute(
                """
                INSERT INTO alert_policies (id, project_id, name, kind, severity, for_seconds,
                                            window_seconds, operator, threshold, labels, params, enabled,
                                            created_at, updated_at)
                VALUES ($1, $2, 'errors', 'error_rate', 'high', 0, 300, '>', 1, '{}', '{}', true,
                        now(), now())
                """,
                policy,
                project,
            )
            await connection.execute(
                """
                INSERT INTO alerts (id, project_id, policy_id, labels, labels_key, state, severity,
                                    created_at, updated_at)
                VALUES ($1, $2, $3, '{}', '{}', 'firing', 'high', now(), now())
                """,
                alert,
                project,
                policy,
            )
            await connection.execute(
                """
                INSERT INTO silences (id, project_id, matchers, starts_at, ends_at, comment, created_by,
                                      created_at, updated_at)
                VALUES ($1, $2, '[]', now(), now() + interval '1 hour', '', 'test', now(), now())
                """,
                uuid.uuid4(),
                project,
            )
            await connection.execute(
                """
                INSERT INTO audit_events (id, project_id, actor, action, subject_type, details)
                VALUES ($1, $2, 'test', 'alert.firing', 'alert', '{}')
                """,
                uuid.uuid4(),
                project,
            )
            await connection.execute(
                """
                INSERT INTO incidents (id, project_id, fingerprint, title, service_name, source, severity,
                                       status, count, first_seen, last_seen, sample_trace_ids,
                                       reopened_count, created_at, updated_at)
                VALUES ($1, $2, 'fp', 'api: failed', 'api', 'log', 'high', 'open', 1, now(), now(), '{}', 0,
                        now(), now())
                """,
                uuid.uuid4(),
                project,
            )
            await connection.execute(
                """
                INSERT INTO incident_occurrences (project_id, fingerprint, source, signal_pk, ts,
                                                  service_name, level)
                VALUES ($1, 'fp', 'log', $2, now(), 'api', 50)
                """,
                project,
                1000 + n,
            )
            await connection.execute(
                """
                INSERT INTO anomalies (id, project_id, metric_name, service_name, labels_key, ts, value,
                                       expected, score, method)
                VALUES ($1, $2, 'latency', 'api', '{}', now(), 9, 1, 8, 'mad')
                """,
                uuid.uuid4(),
                project,
            )
            await connection.execute(
                """
                INSERT INTO notification_channels (id, project_id, name, url, min_severity, enabled,
                                                   created_at, updated_at)
                VALUES ($1, $2, 'hook', 'http://127.0.0.1:9/hook', 'low', true, now(), now())
                """,
                channel,
                project,
            )
            await connection.execute(
                """
                INSERT INTO notification_channel_state (channel_id, subject, data, updated_at)
                VALUES ($1, $2, $3, now())
                """,
                channel,
                f"alert:{alert}",
                json.dumps({"ts": "1.0"}),
            )
            await connection.execute(
                """
                INSERT INTO outbox_items (id, project_id, channel_id, event_id, delivery_id, event_type,
                                          severity, payload, status, attempts, next_attempt_at, created_at,
                                          updated_at)
                VALUES ($1, $2, $3, $4, $5, 'ALERT_FIRING', 'high', '{}', 'delivered', 1, now(), now(),
                        now())
                """,
                item,
                project,
                channel,
                uuid.uuid4(),
                uuid.uuid4(),
            )
            await connection.execute(
                """
                INSERT INTO delivery_attempts (id, project_id, outbox_id, channel_id, delivery_id, event_id,
                                               attempt_number, started_at, duration_ms, outcome)
                SELECT $1, project_id, id, channel_id, delivery_id, event_id, 1, now(), 12.5, 'delivered'
                FROM outbox_items WHERE id = $2
                """,
                uuid.uuid4(),
                item,
            )
    finally:
        await connection.close()


async def _snapshot(url: str) -> dict[str, object]:
    """Row counts per table, the state rows with their channel's project, and the keys (as DDL text)."""
    connection = await asyncpg.connect(url)
    try:
        counts = {table: await connection.fetchval(f"SELECT count(*) FROM {table}") for table in TABLES}
        keys = sorted(
            await connection.fetchval("SELECT array_agg(x) FROM (" + _KEYS_SQL + ") AS k(x)", TABLES)
        )
        state_columns = await connection.fetchval(
            "SELECT array_agg(column_name::text ORDER BY ordinal_position) FROM information_schema.columns "
            "WHERE table_name = 'notification_channel_state'"
        )
        backfilled = None
        if "project_id" in state_columns:
            backfilled = await connection.fetchval(
                "SELECT count(*) FROM notification_channel_state s JOIN notification_channels c "
                "ON c.project_id = s.project_id AND c.id = s.channel_id"
            )
        return {"counts": counts, "keys": keys, "state_columns": state_columns, "backfilled": backfilled}
    finally:
        await connection.close()


def test_upgrade_keeps_every_row_and_leads_the_keys_with_project_id_and_downgrade_restores(
    empty_database: tuple[str, str],
) -> None:
    sqlalchemy_url, url = empty_database
    migrate(alchemy_config(sqlalchemy_url), BEFORE)
    projects = [uuid.uuid4(), uuid.uuid4()]
    asyncio.run(_fill(url, projects))
    before = asyncio.run(_snapshot(url))
    assert before["counts"] == dict.fromkeys(TABLES, 2)

    migrate(alchemy_config(sqlalchemy_url), REVISION)
    after = asyncio.run(_snapshot(url))
    assert after["counts"] == before["counts"]
    assert after["backfilled"] == 2, "every state row got its channel's project_id"
    keys = set(after["keys"])  # type: ignore[arg-type]
    assert {
        "alerts PRIMARY KEY (project_id, id)",
        "alerts UNIQUE (project_id, policy_id, labels_key)",
        "alerts FOREIGN KEY (project_id, policy_id) "
        "REFERENCES alert_policies(project_id, id) ON DELETE CASCADE",
        "incident_occurrences UNIQUE (project_id, source, signal_pk)",
        "notification_channel_state PRIMARY KEY (project_id, channel_id, subject)",
        "notification_channel_state FOREIGN KEY (project_id, channel_id) "
        "REFERENCES notification_channels(project_id, id) ON DELETE CASCADE",
        "outbox_items UNIQUE (project_id, delivery_id)",
        "delivery_attempts FOREIGN KEY (project_id, outbox_id) "
        "REFERENCES outbox_items(project_id, id) ON DELETE CASCADE",
    } <= keys
    primary_keys = {key for key in keys if " PRIMARY KEY " in key}
    assert all("(project_id" in key for key in primary_keys), primary_keys
    assert all("(project_id" in key for key in keys if " UNIQUE " in key)

    async def cascade() -> int:
        """The composite foreign keys still cascade: deleting a channel takes its items and attempts."""
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("DELETE FROM notification_channels WHERE project_id = $1", projects[0])
            return int(await connection.fetchval("SELECT count(*) FROM delivery_attempts"))
        finally:
            await connection.close()

    AlembicCommands(sqlalchemy_config=alchemy_config(sqlalchemy_url)).downgrade(revision=BEFORE)
    restored = asyncio.run(_snapshot(url))
    assert restored["counts"] == before["counts"]
    assert restored["keys"] == before["keys"]
    assert restored["state_columns"] == before["state_columns"]

    migrate(alchemy_config(sqlalchemy_url), REVISION)  # and up again, as an operator retrying would
    assert asyncio.run(_snapshot(url))["keys"] == after["keys"]
    assert asyncio.run(cascade()) == 1
