"""Distributed-PostgreSQL readiness (SPEC §16): every key of a project-owned table includes ``project_id``.

Read from the catalog of the database migrated by the real migrations (not from the ORM metadata), so
whatever a migration creates is checked. A table is *project-owned* when it has a ``project_id`` column;
every other table must be listed in :data:`GLOBAL_TABLES`, so a table added later is covered (or has to
be declared global) without anyone remembering this test. docs/scaling.md gives the Citus distribution
these keys make possible.
"""

from __future__ import annotations

import asyncpg
import pytest

#: Tables without ``project_id``: Citus reference tables (replicated to every node) or node-local.
GLOBAL_TABLES = frozenset(
    {
        "projects",  # the tenants themselves
        "users",  # a person may belong to several projects
        "server_secrets",  # generated JWT secret, shared by every instance
        "scheduler_ticks",  # one row per cron loop
        "incident_grouping_cursors",  # the grouping pass's high-water marks, one row per signal table
        "alembic_versions",  # migration bookkeeping
    }
)
#: SAQ's own tables (saq_jobs, saq_stats, saq_versions): the job queue, not application data.
GLOBAL_PREFIXES = ("saq_",)

#: Tables *with* ``project_id`` that are reference tables on purpose: they resolve a credential (an API
#: key prefix, a session id) to its project on every request, before the project is known, so they are
#: read from every node without a fan-out; their keys are global (a prefix or a session id is unique
#: across all projects). Small and rarely written. See docs/scaling.md.
CREDENTIAL_TABLES = frozenset({"api_keys", "memberships", "user_sessions"})

#: No exclusion left: the time-partitioned signal tables key on (project_id, ..., partition key) too.
NOT_YET_CONVERTED: frozenset[str] = frozenset()

_TABLES_SQL = """
SELECT c.oid, c.relname,
       EXISTS (SELECT 1 FROM pg_attribute a
               WHERE a.attrelid = c.oid AND a.attname = 'project_id' AND NOT a.attisdropped) AS has_project
FROM pg_class c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY c.relname
"""

# Every unique index: primary keys, unique constraints and bare unique indexes (partial ones too).
_UNIQUE_SQL = """
SELECT i.indexrelid::regclass::text AS name, i.indisprimary AS is_primary,
       EXISTS (SELECT 1 FROM pg_attribute a
               WHERE a.attrelid = i.indrelid AND a.attname = 'project_id'
                 AND a.attnum = ANY(i.indkey::int2[])) AS has_project
FROM pg_index i
WHERE i.indrelid = $1 AND i.indisunique
"""

# Foreign keys to another table that has project_id: both sides must carry it (co-location).
_FK_SQL = """
SELECT con.conname, con.confrelid::regclass::text AS parent,
       EXISTS (SELECT 1 FROM pg_attribute a
               WHERE a.attrelid = con.conrelid AND a.attname = 'project_id'
                 AND a.attnum = ANY(con.conkey)) AS child_has_project,
       EXISTS (SELECT 1 FROM pg_attribute a
               WHERE a.attrelid = con.confrelid AND a.attname = 'project_id'
                 AND a.attnum = ANY(con.confkey)) AS parent_has_project
FROM pg_constraint con
WHERE con.conrelid = $1 AND con.contype = 'f'
"""


def _is_global(name: str) -> bool:
    return name in GLOBAL_TABLES or name.startswith(GLOBAL_PREFIXES)


async def key_violations(connection: asyncpg.Connection, *, skip: frozenset[str] = frozenset()) -> list[str]:
    """Every way the schema breaks the rule, as readable lines (empty when it holds)."""
    problems: list[str] = []
    for table in await connection.fetch(_TABLES_SQL):
        name = table["relname"]
        if name in skip:
            continue
        if not table["has_project"]:
            if not _is_global(name):
                problems.append(f"{name}: no project_id and not listed in GLOBAL_TABLES")
            continue
        if name in CREDENTIAL_TABLES:
            continue
        uniques = await connection.fetch(_UNIQUE_SQL, table["oid"])
        if not any(row["is_primary"] for row in uniques):
            problems.append(f"{name}: no primary key")
        problems.extend(
            f"{name}: {'primary key' if row['is_primary'] else 'unique index'} {row['name']} lacks project_id"
            for row in uniques
            if not row["has_project"]
        )
        for fk in await connection.fetch(_FK_SQL, table["oid"]):
            parent = fk["parent"]
            if _is_global(parent) or parent in CREDENTIAL_TABLES:
                continue
            if not (fk["child_has_project"] and fk["parent_has_project"]):
                problems.append(
                    f"{name}: foreign key {fk['conname']} to {parent} is not on (project_id, ...)"
                )
    return problems


def _libpq(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def test_every_key_of_a_project_owned_table_includes_project_id(database_url: str) -> None:
    connection = await asyncpg.connect(_libpq(database_url))
    try:
        assert await key_violations(connection, skip=NOT_YET_CONVERTED) == []
    finally:
        await connection.close()


async def test_project_owned_tables_have_a_non_null_project_id(database_url: str) -> None:
    connection = await asyncpg.connect(_libpq(database_url))
    try:
        nullable = await connection.fetch(
            """
            SELECT c.relname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
            WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
              AND a.attname = 'project_id' AND NOT a.attnotnull
            """
        )
        assert [row["relname"] for row in nullable] == []
    finally:
        await connection.close()


@pytest.mark.parametrize(
    ("ddl", "expected"),
    [
        ("CREATE TABLE zz_new_owned (project_id uuid NOT NULL, id uuid PRIMARY KEY)", "primary key"),
        (
            "CREATE TABLE zz_new_owned (project_id uuid NOT NULL, id uuid, name text UNIQUE,"
            " PRIMARY KEY (project_id, id))",
            "unique index",
        ),
        (
            "CREATE TABLE zz_new_owned (project_id uuid NOT NULL, id uuid, PRIMARY KEY (project_id, id));"
            " CREATE UNIQUE INDEX zz_new_owned_name ON zz_new_owned (id) WHERE id IS NOT NULL",
            "unique index",
        ),
        (
            # The composite key of the parent, but the child's side is not its own project_id.
            "CREATE TABLE zz_new_owned (project_id uuid NOT NULL, id uuid, owner uuid, outbox_id uuid,"
            " PRIMARY KEY (project_id, id),"
            " FOREIGN KEY (project_id) REFERENCES projects (id),"  # to a reference table: fine
            " FOREIGN KEY (owner, outbox_id) REFERENCES outbox_items (project_id, id))",
            "foreign key",
        ),
        ("CREATE TABLE zz_new_global (id uuid PRIMARY KEY)", "not listed in GLOBAL_TABLES"),
    ],
)
async def test_a_table_added_later_is_checked_without_being_listed(
    database_url: str, ddl: str, expected: str
) -> None:
    """The check finds what a future migration might get wrong (in a transaction rolled back after)."""
    connection = await asyncpg.connect(_libpq(database_url))
    try:
        transaction = connection.transaction()
        await transaction.start()
        try:
            await connection.execute(ddl)
            problems = await key_violations(connection, skip=NOT_YET_CONVERTED)
        finally:
            await transaction.rollback()
    finally:
        await connection.close()
    assert any(expected in problem and "zz_new_" in problem for problem in problems), problems
