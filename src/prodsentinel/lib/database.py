"""Database configuration, migrations and session scopes shared by the app, the workers and the CLI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from advanced_alchemy.alembic.commands import AlembicCommands
from advanced_alchemy.extensions.litestar import (
    AlembicAsyncConfig,
    AsyncSessionConfig,
    EngineConfig,
    SQLAlchemyAsyncConfig,
)
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib.after_commit import run_committed, with_after_commit
from prodsentinel.settings import Settings

__all__ = (
    "SESSION_MAKER_STATE_KEY",
    "alchemy_config",
    "asyncpg_pool_args",
    "engine_connect_args",
    "libpq_url",
    "migrate",
    "resolve_database_url",
    "resolve_direct_url",
    "session_scope",
    "session_scope_for_app",
)

#: ``app.state`` key of the app's ``async_sessionmaker`` (units of work outside a request's session).
SESSION_MAKER_STATE_KEY = "session_maker"
MIGRATIONS_DIR = Path(__file__).resolve().parents[3] / "migrations"
VERSION_TABLE = "alembic_versions"
#: Seconds to open one database connection (the ORM engine and the ingest pool) before giving up.
CONNECT_TIMEOUT_SECONDS = 5


def resolve_database_url(settings: Settings) -> str:
    """The SQLAlchemy (asyncpg) URL: ``DATABASE_URL`` normalised, or the embedded server's."""
    if settings.database_url is None:
        from prodsentinel.embedded import embedded_database_url

        return embedded_database_url(settings.data_dir)
    scheme, rest = settings.database_url.split("://", 1)
    del scheme
    return f"postgresql+asyncpg://{rest}"


def resolve_direct_url(settings: Settings) -> str:
    """The SQLAlchemy (asyncpg) URL of a direct connection: ``PRODSENTINEL_DATABASE_DIRECT_URL``, else the
    database URL. For what needs a session of its own and must bypass a transaction pooler: migrations
    (session advisory lock), SAQ's PostgreSQL queue (LISTEN, session advisory locks) and the LISTEN/NOTIFY
    events backend."""
    if settings.database_direct_url is None:
        return resolve_database_url(settings)
    return "postgresql+asyncpg://" + settings.database_direct_url.split("://", 1)[1]


def engine_connect_args(pooler: str = "none") -> dict[str, Any]:
    """asyncpg ``connect_args`` of every SQLAlchemy engine of the service.

    Behind PgBouncer in transaction pooling mode (``pooler="pgbouncer"``) consecutive transactions of one
    client connection may run on different server connections, so a named prepared statement made in one
    transaction can be missing (or, made by another client under the same name, already present) in the
    next. Both caches off: asyncpg's own (``statement_cache_size``) and SQLAlchemy's
    (``prepared_statement_cache_size``). With both at 0 SQLAlchemy prepares with ``name=None``, which
    asyncpg (>= 0.29) turns into the *unnamed* statement, re-parsed at execution inside the same
    transaction (SQLAlchemy's asyncpg dialect always opens one). That is the documented setting without
    its sharp edge: the alternative, unique names from ``prepared_statement_name_func``, leaves a named
    statement behind on a server connection per query (PgBouncer 1.18, Debian's, runs no ``DISCARD`` in
    transaction mode) and asyncpg closes a collected named statement lazily, possibly through another
    server connection. The cost: every statement is parsed again at each execution (docs/scaling.md).
    """
    args: dict[str, Any] = {"timeout": CONNECT_TIMEOUT_SECONDS}
    if pooler == "pgbouncer":
        args |= {"statement_cache_size": 0, "prepared_statement_cache_size": 0}
    return args


def asyncpg_pool_args(pooler: str = "none") -> dict[str, Any]:
    """Keyword arguments for a raw ``asyncpg.create_pool`` behind ``pooler`` (see
    :func:`engine_connect_args`): asyncpg >= 0.30 then also runs ``COPY`` with the unnamed statement."""
    return {"statement_cache_size": 0} if pooler == "pgbouncer" else {}


def libpq_url(sqlalchemy_url: str) -> str:
    """The same database as a plain ``postgresql://`` URL (psycopg, SAQ, asyncpg.connect)."""
    return "postgresql://" + sqlalchemy_url.split("://", 1)[1]


def alchemy_config(database_url: str, *, pool_size: int = 10, pooler: str = "none") -> SQLAlchemyAsyncConfig:
    config = SQLAlchemyAsyncConfig(
        connection_string=database_url,
        session_config=AsyncSessionConfig(expire_on_commit=False),
        # Pre-ping: after a database restart the pool still holds connections the server dropped; the
        # ping (one ``;`` round trip per checkout) finds them and reconnects instead of failing the
        # request with "connection is closed". A bounded connect timeout turns an unreachable host into a
        # prompt 503 (lib.unavailable) instead of a request hanging for asyncpg's default 60 s.
        engine_config=EngineConfig(
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            connect_args=engine_connect_args(pooler),
        ),
        alembic_config=AlembicAsyncConfig(
            script_location=str(MIGRATIONS_DIR),
            version_table_name=VERSION_TABLE,
            compare_type=True,
            render_as_batch=False,
        ),
        before_send_handler="autocommit",  # a 4xx/5xx answer rolls the request's transaction back
        # Its handler for RepositoryError would win over the app's (more specific type) and answer
        # without the SPEC §3 body; lib/errors.py maps repository errors itself.
        set_default_exception_handler=False,
        create_all=False,
    )
    # Then the work the committed transaction registered (lib.after_commit): the one after-commit path.
    config.before_send_handler = with_after_commit(config.before_send_handler, config.session_scope_key)  # type: ignore[arg-type]
    return config


def migrate(config: SQLAlchemyAsyncConfig, revision: str = "head") -> None:
    """Apply migrations (blocking; concurrent callers serialise on an advisory lock in env.py)."""
    AlembicCommands(sqlalchemy_config=config).upgrade(revision=revision)


@asynccontextmanager
async def session_scope(session_maker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A unit of work: commit when the block succeeds, roll back when it raises."""
    async with session_maker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
        await run_committed(session)


@asynccontextmanager
async def session_scope_for_app(app: Litestar) -> AsyncIterator[AsyncSession]:
    """A unit of work on the app's database, for CLI commands (one event loop, engine disposed after)."""
    config: SQLAlchemyAsyncConfig = app.state["alchemy_config"]
    engine = config.get_engine()
    try:
        session_maker: async_sessionmaker[AsyncSession] = config.create_session_maker()  # type: ignore[assignment]
        async with session_scope(session_maker) as session:
            yield session
    finally:
        await engine.dispose()
        config.engine_instance = None
        _forget_session_maker(config)


def _forget_session_maker(config: Any) -> None:
    config.session_maker = None
