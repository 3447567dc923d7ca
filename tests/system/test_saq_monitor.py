"""SAQ's web monitor at /saq: admin only, static assets public."""

from __future__ import annotations

from litestar import Litestar
from litestar.testing import AsyncTestClient

from prodsentinel.settings import Settings
from tests.conftest import KeyFactory


class TestSaqMonitor:
    async def test_api_needs_admin_and_lists_the_queue(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory, settings: Settings
    ) -> None:
        unauthenticated = await client.get("/saq/api/queues")
        assert unauthenticated.status_code == 401
        assert unauthenticated.json()["request_id"]
        for scopes in (("read",), ("operate",), ("ingest",)):
            key = await make_key(*scopes)
            assert (await client.get("/saq/api/queues", headers={"X-API-Key": key})).status_code == 403, (
                scopes
            )
        admin = await make_key("admin")
        response = await client.get("/saq/api/queues", headers={"Authorization": f"Bearer {admin}"})
        assert response.status_code == 200
        names = [queue["name"] for queue in response.json()["queues"]]
        assert settings.queue_name in names
        detail = await client.get(f"/saq/api/queues/{settings.queue_name}", headers={"X-API-Key": admin})
        assert detail.status_code == 200
        assert detail.json()["queue"]["name"] == settings.queue_name

    async def test_page_is_protected_but_static_assets_are_public(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        assert (await client.get("/saq/")).status_code == 401
        admin = await make_key("admin")
        page = await client.get("/saq/", headers={"X-API-Key": admin})
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "/saq/static/app.js" in page.text
        asset = await client.get("/saq/static/app.js")
        assert asset.status_code == 200
        assert len(asset.content) > 100
        # Only the assets: the rest of /saq stays behind the key.
        assert (await client.get("/saq/health")).status_code == 401


class TestBrowserAccess:
    """Browsers cannot send X-API-Key: the monitor challenges for Basic auth with the key as password."""

    async def test_basic_auth_with_the_key_as_password(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        challenge = await client.get("/saq/")
        assert challenge.status_code == 401
        assert challenge.headers["www-authenticate"].startswith("Basic ")
        admin, reader = await make_key("admin"), await make_key("read")
        assert (await client.get("/saq/api/queues", auth=("ops", admin))).status_code == 200
        assert (await client.get("/saq/api/queues", auth=("ops", reader))).status_code == 403
        wrong = await client.get("/saq/api/queues", auth=("ops", admin + "x"))
        assert wrong.status_code == 401
        assert "www-authenticate" in wrong.headers

    async def test_basic_auth_is_only_for_the_monitor(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        response = await client.get("/api/v1/keys", auth=("ops", await make_key("admin")))
        assert response.status_code == 401
        assert "www-authenticate" not in response.headers
