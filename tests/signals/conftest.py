"""Fixtures of the query tests: API keys together with the project id the seed helpers need."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from uuid import UUID

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.conftest import KeyFactory, project_id_of


@dataclass(frozen=True)
class Tenant:
    """A project seen through one API key."""

    project_id: UUID
    headers: dict[str, str]


TenantFactory = Callable[..., Awaitable[Tenant]]


@pytest.fixture
def make_tenant(
    make_key: KeyFactory, session_maker: async_sessionmaker[AsyncSession], project_name: str
) -> TenantFactory:
    """A key with ``scopes`` (default read) of ``project`` (default: this test's) and its project id."""

    async def factory(*scopes: str, project: str | None = None) -> Tenant:
        key = await make_key(*(scopes or ("read",)), project=project)
        project_id = await project_id_of(session_maker, project or project_name)
        return Tenant(project_id=project_id, headers={"X-API-Key": key})

    return factory


@pytest.fixture
async def tenant(make_tenant: TenantFactory) -> Tenant:
    """A read key of this test's own project."""
    return await make_tenant("read")


@pytest.fixture
async def other_tenant(make_tenant: TenantFactory) -> Tenant:
    """A read key of a second, unrelated project."""
    return await make_tenant("read", project=f"other-{uuid.uuid4().hex[:10]}")
