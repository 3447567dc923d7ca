from __future__ import annotations

import asyncio
from uuid import UUID

from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.auth import services as auth_services
from prodsentinel.auth.models import ApiKey
from prodsentinel.lib.database import session_scope
from tests.conftest import KeyFactory, project_id_of


class TestAuthentication:
    async def test_missing_key_is_401_with_json_error(self, client: AsyncTestClient[Litestar]) -> None:
        response = await client.get("/api/v1/keys", headers={"X-Request-ID": "req-123"})
        assert response.status_code == 401
        body = response.json()
        assert "API key" in body["detail"]
        assert body["request_id"] == "req-123"
        assert response.headers["x-request-id"] == "req-123"
        assert float(response.headers["x-process-time-ms"]) >= 0

    async def test_invalid_key_is_401(self, client: AsyncTestClient[Litestar]) -> None:
        for bad in ("nonsense", "ps_deadbeef0000_wrong", ""):
            response = await client.get("/api/v1/keys", headers={"X-API-Key": bad})
            assert response.status_code == 401, bad

    async def test_wrong_secret_with_real_prefix_is_401(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        key = await make_key("admin")
        tampered = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
        assert (await client.get("/api/v1/keys", headers={"X-API-Key": tampered})).status_code == 401

    async def test_bearer_header_is_accepted(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        key = await make_key("admin")
        response = await client.get("/api/v1/keys", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200

    async def test_key_without_scope_is_403(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        for scopes in (("read",), ("operate",), ("ingest",)):
            key = await make_key(*scopes)
            response = await client.get("/api/v1/keys", headers={"X-API-Key": key})
            assert response.status_code == 403, scopes
            assert "admin" in response.json()["detail"]
            assert response.json()["request_id"]

    async def test_generated_request_id_is_returned(self, client: AsyncTestClient[Litestar]) -> None:
        response = await client.get("/health/live")
        assert len(response.headers["x-request-id"]) == 32


class TestKeyEndpoints:
    async def test_create_list_revoke(self, client: AsyncTestClient[Litestar], make_key: KeyFactory) -> None:
        admin = {"X-API-Key": await make_key("admin")}
        created = await client.post(
            "/api/v1/keys", json={"name": "ci", "scopes": ["ingest", "read"]}, headers=admin
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["key"].startswith("ps_")
        assert body["scopes"] == ["ingest", "read"]
        assert body["revoked_at"] is None

        listed = (await client.get("/api/v1/keys", headers=admin)).json()["items"]
        assert {item["name"] for item in listed} == {"test-key", "ci"}
        assert all("key" not in item for item in listed)

        new_key = {"X-API-Key": body["key"]}
        assert (await client.get("/health/live", headers=new_key)).status_code == 200
        revoked = await client.delete(f"/api/v1/keys/{body['id']}", headers=admin)
        assert revoked.status_code == 200
        assert revoked.json()["revoked_at"] is not None
        response = await client.post("/api/v1/keys", json={"name": "x", "scopes": ["read"]}, headers=new_key)
        assert response.status_code == 401

    async def test_unknown_scope_is_422(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        admin = {"X-API-Key": await make_key("admin")}
        response = await client.post("/api/v1/keys", json={"name": "x", "scopes": ["root"]}, headers=admin)
        assert response.status_code == 422
        assert "root" in response.json()["detail"]

    async def test_other_projects_key_is_404(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        mine = {"X-API-Key": await make_key("admin")}
        theirs = {"X-API-Key": await make_key("admin", project="someone-else-" + mine["X-API-Key"][3:9])}
        created = (
            await client.post("/api/v1/keys", json={"name": "t", "scopes": ["read"]}, headers=theirs)
        ).json()
        assert (await client.delete(f"/api/v1/keys/{created['id']}", headers=mine)).status_code == 404
        names = {item["name"] for item in (await client.get("/api/v1/keys", headers=mine)).json()["items"]}
        assert "t" not in names

    async def test_a_key_creates_keys_in_its_own_project_only(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory, project_name: str
    ) -> None:
        admin = {"X-API-Key": await make_key("admin")}
        elsewhere = {"name": "x", "scopes": ["read"], "project": f"{project_name}-other"}
        refused = await client.post("/api/v1/keys", json=elsewhere, headers=admin)
        assert refused.status_code == 422
        assert "own project" in refused.json()["detail"]
        own = await client.post("/api/v1/keys", json={**elsewhere, "project": project_name}, headers=admin)
        assert own.status_code == 201
        assert own.json()["project"] == project_name
        names = [item["name"] for item in (await client.get("/api/v1/keys", headers=admin)).json()["items"]]
        assert names.count("x") == 1


class TestProjects:
    async def test_concurrent_keys_for_a_new_project_share_one_project(
        self, session_maker: async_sessionmaker[AsyncSession], project_name: str
    ) -> None:
        """Instances that start together (policies/channels files) or operators creating keys at once
        must not race on the project's unique name: every caller gets the same project."""

        async def create() -> UUID:
            async with session_scope(session_maker) as session:
                created = await auth_services.create_key(
                    session, name="k", scopes=["read"], project=project_name
                )
                return created.id

        key_ids = await asyncio.gather(*(create() for _ in range(10)))  # none fails on the unique name
        async with session_maker() as session:
            owners = set(await session.scalars(select(ApiKey.project_id).where(ApiKey.id.in_(key_ids))))
        assert owners == {await project_id_of(session_maker, project_name)}
