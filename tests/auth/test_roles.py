"""Roles over HTTP: viewer reads only, operator acks, admin administers; projects stay apart (SPEC §15)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.auth.models import User
from prodsentinel.lib.time import utcnow
from tests.alerts.conftest import Seeder, evaluate_at
from tests.auth.conftest import UserFactory, bearer, login
from tests.conftest import Tenant

#: Changes anyone signed in may make to their own session.
SESSION_CHANGES = {("post", "/api/v1/auth/login"), ("post", "/api/v1/auth/logout")}
#: POSTs that change nothing: a viewer (read) may call them.
READ_POSTS = {("post", "/api/v1/alerts/silences/preview")}


@pytest.fixture
def seed(session_maker: async_sessionmaker[AsyncSession], tenant: Tenant) -> Seeder:
    return Seeder(session_maker, tenant.project_id)


async def _changes(client: AsyncTestClient[Litestar]) -> list[tuple[str, str]]:
    """Every non-read operation of the published API, path parameters filled with a random uuid."""
    schema = (await client.get("/schema/openapi.json")).json()
    found = []
    for path, operations in schema["paths"].items():
        for method in operations:
            if (
                method in {"get", "head", "options", "parameters"}
                or (method, path) in SESSION_CHANGES | READ_POSTS
            ):
                continue
            filled = path
            for name in [part[1:-1] for part in path.split("/") if part.startswith("{")]:
                filled = filled.replace("{" + name + "}", str(uuid.uuid4()))
            found.append((method, filled))
    return found


async def test_a_viewer_gets_403_on_every_change(
    client: AsyncTestClient[Litestar], make_user: UserFactory
) -> None:
    headers = bearer(await login(client, await make_user("viewer")))
    changes = await _changes(client)
    assert len(changes) > 15
    for method, path in changes:
        response = await client.request(method.upper(), path, headers=headers, json={})
        assert response.status_code == 403, (method, path, response.text)
    assert (await client.get("/api/v1/incidents", headers=headers)).status_code == 200


async def test_operator_acks_admin_creates_policies_audited_as_the_user(
    client: AsyncTestClient[Litestar],
    tenant: Tenant,
    make_user: UserFactory,
    seed: Seeder,
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    admin_email, operator_email = await make_user("admin"), await make_user("operator")
    admin, operator = bearer(await login(client, admin_email)), bearer(await login(client, operator_email))
    client.cookies.clear()
    policy = {"name": "any-incident", "kind": "incident", "min_severity": "low", "severity": "high"}
    assert (await client.post("/api/v1/alerts/policies", json=policy, headers=operator)).status_code == 403
    created = await client.post("/api/v1/alerts/policies", json=policy, headers=admin)
    assert created.status_code == 201, created.text

    await seed.incident(at=utcnow() - timedelta(seconds=1))
    await evaluate_at(session_maker, tenant, utcnow())
    active = (await client.get("/api/v1/alerts/active", headers=operator)).json()["items"]
    [alert] = [item for item in active if item["policy_id"] == created.json()["id"]]
    acked = await client.post(f"/api/v1/alerts/{alert['id']}/ack", headers=operator)
    assert acked.status_code == 200, acked.text
    assert acked.json()["acked_by"] == f"user:{operator_email}"

    audit = (await client.get("/api/v1/alerts/audit", headers=operator)).json()["items"]
    actors = {(row["action"], row["actor"]) for row in audit}
    assert ("alert.ack", f"user:{operator_email}") in actors
    assert ("policy.create", f"user:{admin_email}") in actors


async def test_a_user_of_project_a_gets_404_for_project_b_ids(
    client: AsyncTestClient[Litestar], make_user: UserFactory, other_tenant: Tenant
) -> None:
    theirs = await client.post(
        "/api/v1/alerts/policies",
        json={"name": "theirs", "kind": "incident", "min_severity": "low", "severity": "high"},
        headers=other_tenant.admin,
    )
    assert theirs.status_code == 201, theirs.text
    mine = bearer(await login(client, await make_user("admin")))
    client.cookies.clear()
    path = f"/api/v1/alerts/policies/{theirs.json()['id']}"
    assert (await client.get(path, headers=mine)).status_code == 404
    assert (await client.delete(path, headers=mine)).status_code == 404
    assert (await client.get(path, headers=other_tenant.read)).status_code == 200


async def test_admins_manage_the_users_of_their_project_only(
    client: AsyncTestClient[Litestar], make_user: UserFactory, project_name: str, db_session: AsyncSession
) -> None:
    admin = bearer(await login(client, await make_user("admin")))
    client.cookies.clear()
    email = f"new-{uuid.uuid4().hex[:8]}@example.com"
    added = await client.post(
        "/api/v1/users", json={"email": email, "role": "viewer", "password": "long-enough-pw"}, headers=admin
    )
    assert added.status_code == 200, added.text
    changed = await client.post("/api/v1/users", json={"email": email, "role": "operator"}, headers=admin)
    assert changed.json()["role"] == "operator"
    listed = {
        row["email"]: row["role"]
        for row in (await client.get("/api/v1/users", headers=admin)).json()["items"]
    }
    assert listed[email] == "operator"

    new_user = bearer(
        (await client.post("/api/v1/auth/login", json={"email": email, "password": "long-enough-pw"})).json()
    )
    client.cookies.clear()
    assert (await client.get("/api/v1/auth/me", headers=new_user)).json()["project"] == project_name
    outsider = await make_user("viewer", project=f"{project_name}-x")
    outsider_id = (await db_session.execute(select(User.id).where(User.email == outsider))).scalar_one()
    assert (await client.delete(f"/api/v1/users/{outsider_id}", headers=admin)).status_code == 404
    removed = await client.delete(f"/api/v1/users/{added.json()['id']}", headers=admin)
    assert removed.status_code == 204
    assert (await client.get("/api/v1/auth/me", headers=new_user)).status_code == 401  # its session ended
    new_without_password = await client.post(
        "/api/v1/users", json={"email": "fresh@example.com", "role": "viewer"}, headers=admin
    )
    assert new_without_password.status_code == 422
