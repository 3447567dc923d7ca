"""Alembic environment (async, asyncpg).

Differences from advanced-alchemy's template, on purpose:
- the target metadata is ``prodsentinel.db.metadata`` (importing it registers every domain's models);
- SAQ's own tables (``saq_*``) live in the same database and are never touched by autogenerate;
- migrations run under a transaction-scoped advisory lock, so several processes starting at once
  (granian workers, replicas) apply them once;
- a fresh NullPool engine is always used: the app's pooled engine belongs to another event loop;
- behind PgBouncer (``PRODSENTINEL_DATABASE_POOLER=pgbouncer``) it connects to
  ``PRODSENTINEL_DATABASE_DIRECT_URL`` instead: the migration lock is session-level.
"""

import asyncio
from typing import TYPE_CHECKING, Any

from alembic import context
from alembic.autogenerate import rewriter
from sqlalchemy import pool, text
from sqlalchemy.ext.asyncio import async_engine_from_config

from prodsentinel.db import metadata

if TYPE_CHECKING:
    from advanced_alchemy.alembic.commands import AlembicCommandConfig
    from sqlalchemy.engine import Connection

__all__ = ("do_run_migrations", "run_migrations_offline", "run_migrations_online")


# this is the Alembic Config object, which provides
# access to the values within the .ini file in use.
config: "AlembicCommandConfig" = context.config  # type: ignore
writer = rewriter.Rewriter()
MIGRATION_LOCK = "prodsentinel:migrations"


def _include_name(name: "str | None", type_: str, parent_names: "dict[str, Any]") -> bool:
    """Keep SAQ's tables (saq_jobs, saq_stats, saq_versions) out of autogenerate."""
    return not (type_ == "table" and name is not None and name.startswith("saq_"))


def _migration_url() -> str:
    """The configured URL, or the direct one when the configured one is a transaction pooler."""
    from prodsentinel.lib.database import resolve_direct_url
    from prodsentinel.settings import get_settings

    settings = get_settings()
    if settings.database_pooler == "pgbouncer":
        return resolve_direct_url(settings)
    return config.db_url


def run_migrations_offline() -> None:
    """Run migrations in 'offline' mode.

    This configures the context with just a URL
    and not an Engine, though an Engine is acceptable
    here as well.  By skipping the Engine creation
    we don't even need a DBAPI to be available.

    Calls to context.execute() here emit the given string to the
    script output.
    """
    context.configure(
        url=config.db_url,
        target_metadata=metadata,
        include_name=_include_name,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        compare_type=config.compare_type,
        version_table=config.version_table_name,
        version_table_schema=config.version_table_schema,
        version_table_pk=config.version_table_pk,
        user_module_prefix=config.user_module_prefix,
        render_as_batch=config.render_as_batch,
        process_revision_directives=writer,
    )

    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: "Connection") -> None:
    """Run migrations."""
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_name=_include_name,
        compare_type=config.compare_type,
        version_table=config.version_table_name,
        version_table_schema=config.version_table_schema,
        version_table_pk=config.version_table_pk,
        user_module_prefix=config.user_module_prefix,
        render_as_batch=config.render_as_batch,
        process_revision_directives=writer,
    )

    # A session-level lock (not xact): it must outlive any autocommit block inside a migration.
    connection.execute(text("SELECT pg_advisory_lock(hashtext(:name))"), {"name": MIGRATION_LOCK})
    connection.commit()
    try:
        with context.begin_transaction():
            context.run_migrations()
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(hashtext(:name))"), {"name": MIGRATION_LOCK})
        connection.commit()


async def run_migrations_online() -> None:
    """Run migrations in 'online' mode.

    In this scenario we need to create an Engine and associate a
    connection with the context.

    Raises:
        RuntimeError: If the engine cannot be created from the config.
    """
    configuration = config.get_section(config.config_ini_section) or {}
    configuration["sqlalchemy.url"] = _migration_url()

    connectable = async_engine_from_config(configuration, prefix="sqlalchemy.", poolclass=pool.NullPool)

    async with connectable.connect() as connection:
        await connection.run_sync(do_run_migrations)

    await connectable.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
