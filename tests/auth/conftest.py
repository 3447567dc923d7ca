"""People fixtures: users created through the service the CLI uses, logged in through the HTTP API."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.auth.users import UserService
from prodsentinel.lib.database import session_scope

PASSWORD = "correct horse battery staple"
UserFactory = Callable[..., Awaitable[str]]


@pytest.fixture
def make_user(session_maker: async_sessionmaker[AsyncSession], project_name: str) -> UserFactory:
    """Create a user with ``role`` in ``project`` (default: this test's) and return its email."""

    async def factory(role: str, *, project: str | None = None, email: str | None = None) -> str:
        email = email or f"{role}-{uuid.uuid4().hex[:8]}@example.com"
        async with session_scope(session_maker) as session:
            await UserService(session=session).create_in_project(
                email=email, role=role, project=project or project_name, password=PASSWORD
            )
        return email

    return factory


async def login(client: AsyncTestClient[Litestar], email: str, **extra: str) -> dict[str, str]:
    """Log in; returns the login body (access_token, csrf_token, …)."""
    response = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD, **extra})
    assert response.status_code == 200, response.text
    return dict(response.json())


def bearer(body: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {body['access_token']}"}
