"""Test fixtures on real services.

PostgreSQL: the server on 127.0.0.1:5432 when reachable (``TEST_POSTGRES_URL`` overrides), otherwise an
embedded one started in a temp dir. Each run creates its own database, migrated to head with the real
migrations, and drops it at the end. Redis (127.0.0.1:6379, ``TEST_REDIS_URL``) is required by the tests
that request ``redis_url``: missing, it is a failure in CI and a skip elsewhere (``unavailable``). Tests
isolate by project: every test makes its own project and keys.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from prodsentinel.app import create_app
from prodsentinel.auth import services as auth_services
from prodsentinel.auth.models import Project
from prodsentinel.lib.database import alchemy_config, migrate, session_scope
from prodsentinel.settings import Settings

os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())

KeyFactory = Callable[..., Awaitable[str]]


def unavailable(what: str, hint: str) -> NoReturn:
    """A test's tool or service is missing: a failure in CI (``CI`` set, as ``.ci/run`` does), so a broken
    install step cannot hide behind skips; a skip on a developer's machine, with how to get it."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI ({hint})", pytrace=False)
    pytest.skip(f"{what} is not available ({hint})")


def require_tool(name: str, package: str) -> str:
    """The path of a command-line tool the test runs (see :func:`unavailable`)."""
    path = shutil.which(name)
    if path is None:
        unavailable(name, f"apt-get install {package}")
    return path


def _reachable(url: str, default_port: int = 5432) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A libpq URL of a maintenance database on a real PostgreSQL server."""
    url = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    if _reachable(url):
        yield url
        return
    from prodsentinel.embedded import embedded_database_url

    embedded = embedded_database_url(Path(tmp_path_factory.mktemp("embedded-pg")))
    yield "postgresql://" + embedded.split("://", 1)[1]


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh database for this run, migrated to head; SQLAlchemy asyncpg URL."""
    name = f"prodsentinel_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(postgres_server_url)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(postgres_server_url)
    url = f"postgresql+asyncpg://{parts.netloc}/{name}" + (f"?{parts.query}" if parts.query else "")
    migrate(alchemy_config(url))
    yield url
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis (``TEST_REDIS_URL``, default 127.0.0.1:6379); missing, it fails under CI (see
    :func:`unavailable`). Request it only in the tests (or parameters) that need Redis."""
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if not _reachable(url, default_port=6379):
        unavailable("Redis", f"nothing answers at {url}; apt-get install redis-server or set TEST_REDIS_URL")
    return url


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings for an app under test: PostgreSQL queue, no in-process workers, a queue of its own."""
    return Settings(
        database_url=database_url,
        inprocess_workers=False,
        auto_migrate=False,
        log_format="console",
        log_level="WARNING",
        rate_limit="100000/minute",
        queue_name=f"test-{uuid.uuid4().hex[:8]}",
    )


@pytest.fixture
def app(settings: Settings) -> Litestar:
    return create_app(settings)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
async def session_maker(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_async_engine(database_url, pool_size=5)
    yield async_sessionmaker(engine, expire_on_commit=False)
    await engine.dispose()


@pytest.fixture
async def db_session(session_maker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A committed unit of work (tests observe what the app committed, so no rollback isolation)."""
    async with session_scope(session_maker) as session:
        yield session


@pytest.fixture
def project_name() -> str:
    """A project of this test alone."""
    return f"p-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_key(session_maker: async_sessionmaker[AsyncSession], project_name: str) -> KeyFactory:
    """Create an API key (default: in this test's project) and return the raw key."""

    async def factory(*scopes: str, project: str | None = None, name: str = "test-key") -> str:
        async with session_scope(session_maker) as session:
            created = await auth_services.create_key(
                session, name=name, scopes=list(scopes or ("admin",)), project=project or project_name
            )
        return created.key

    return factory


@dataclass(frozen=True)
class Tenant:
    """A project seen through one API key per scope (headers ready to send)."""

    project_id: uuid.UUID
    name: str
    admin: dict[str, str]
    operate: dict[str, str]
    read: dict[str, str]
    ingest: dict[str, str]


TenantFactory = Callable[..., Awaitable[Tenant]]


@pytest.fixture
def make_tenant(
    make_key: KeyFactory, session_maker: async_sessionmaker[AsyncSession], project_name: str
) -> TenantFactory:
    """A project (default: this test's) with an admin, an operator, a reader and an ingest key."""

    async def factory(project: str | None = None) -> Tenant:
        name = project or project_name
        keys = {
            scope: await make_key(scope, project=name, name=key_name)
            for scope, key_name in (
                ("admin", "admin-key"),
                ("operate", "operator-key"),
                ("read", "reader-key"),
                ("ingest", "ingest-key"),
            )
        }
        return Tenant(
            project_id=await project_id_of(session_maker, name),
            name=name,
            **{scope: {"X-API-Key": key} for scope, key in keys.items()},
        )

    return factory


@pytest.fixture
async def tenant(make_tenant: TenantFactory) -> Tenant:
    """This test's own project."""
    return await make_tenant()


@pytest.fixture
async def other_tenant(make_tenant: TenantFactory) -> Tenant:
    """A second, unrelated project (isolation tests)."""
    return await make_tenant(f"other-{uuid.uuid4().hex[:10]}")


async def project_id_of(session_maker: async_sessionmaker[AsyncSession], name: str) -> uuid.UUID:
    """The id of the project ``make_key`` created under ``name`` (keys are created by project name)."""
    async with session_maker() as session:
        project_id = await session.scalar(select(Project.id).where(Project.name == name))
    assert project_id is not None, name
    return project_id
