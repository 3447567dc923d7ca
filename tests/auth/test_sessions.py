"""Login, logout, me, revocation across instances, CSRF and the uniform 401 (SPEC §15), over HTTP."""

from __future__ import annotations

from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.app import create_app
from prodsentinel.auth.models import ServerSecret
from prodsentinel.settings import Settings
from tests.auth.conftest import PASSWORD, UserFactory, bearer, login
from tests.conftest import Tenant

LOGIN = "/api/v1/auth/login"


class TestLogin:
    async def test_login_me_logout(
        self, client: AsyncTestClient[Litestar], make_user: UserFactory, project_name: str
    ) -> None:
        email = await make_user("operator")
        response = await client.post(LOGIN, json={"email": email.upper(), "password": PASSWORD})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["token_type"] == "bearer"
        assert body["project"] == project_name
        assert body["role"] == "operator"
        assert body["expires_in"] == 12 * 3600
        assert body["csrf_token"]
        cookie = response.headers["set-cookie"].lower()
        assert cookie.startswith("prodsentinel_session=")
        assert "httponly" in cookie
        assert "samesite=lax" in cookie

        me = await client.get("/api/v1/auth/me", headers=bearer(body))
        assert me.status_code == 200, me.text
        assert me.json() == {
            "kind": "user",
            "name": email,
            "project": project_name,
            "scopes": ["operate", "read"],
            "role": "operator",
        }
        # The cookie alone (the test client kept it) authenticates reads too.
        assert (await client.get("/api/v1/auth/me")).json()["name"] == email

        out = await client.post("/api/v1/auth/logout", headers=bearer(body))
        assert out.status_code == 200, out.text
        assert (await client.get("/api/v1/auth/me", headers=bearer(body))).status_code == 401
        client.cookies.clear()
        assert (await client.get("/api/v1/incidents")).status_code == 401

    async def test_me_of_an_api_key(self, client: AsyncTestClient[Litestar], tenant: Tenant) -> None:
        me = await client.get("/api/v1/auth/me", headers=tenant.read)
        assert me.status_code == 200
        assert me.json() == {
            "kind": "key",
            "name": "reader-key",
            "project": tenant.name,
            "scopes": ["read"],
            "role": None,
        }

    async def test_unknown_email_and_wrong_password_answer_the_same_401(
        self, client: AsyncTestClient[Litestar], make_user: UserFactory
    ) -> None:
        email = await make_user("viewer")
        wrong_password = await client.post(LOGIN, json={"email": email, "password": "not the password"})
        unknown_email = await client.post(LOGIN, json={"email": "nobody@example.com", "password": PASSWORD})
        assert wrong_password.status_code == unknown_email.status_code == 401
        assert (
            wrong_password.json()["detail"] == unknown_email.json()["detail"] == "Invalid email or password."
        )
        assert "set-cookie" not in wrong_password.headers

    async def test_login_chooses_the_project(
        self, client: AsyncTestClient[Litestar], make_user: UserFactory, project_name: str
    ) -> None:
        email = await make_user("viewer")
        await make_user("admin", email=email, project=f"{project_name}-b")
        assert (await login(client, email))["project"] == project_name  # default: the first membership
        chosen = await login(client, email, project=f"{project_name}-b")
        assert (chosen["project"], chosen["role"]) == (f"{project_name}-b", "admin")
        refused = await client.post(
            LOGIN, json={"email": email, "password": PASSWORD, "project": "elsewhere"}
        )
        assert refused.status_code == 401

    async def test_a_disabled_user_is_refused_at_once(
        self, client: AsyncTestClient[Litestar], make_user: UserFactory, session_maker: object
    ) -> None:
        from prodsentinel.auth.users import UserService
        from prodsentinel.lib.database import session_scope

        email = await make_user("admin")
        body = await login(client, email)
        async with session_scope(session_maker) as session:  # type: ignore[arg-type]
            await UserService(session=session).disable(email)
        assert (await client.get("/api/v1/auth/me", headers=bearer(body))).status_code == 401
        assert (await client.post(LOGIN, json={"email": email, "password": PASSWORD})).status_code == 401

    async def test_a_tampered_token_is_401(
        self, client: AsyncTestClient[Litestar], make_user: UserFactory
    ) -> None:
        body = await login(client, await make_user("viewer"))
        client.cookies.clear()
        token = body["access_token"]
        tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
        response = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {tampered}"})
        assert response.status_code == 401
        assert "session" in response.json()["detail"]


async def test_logout_on_one_instance_is_refused_on_the_next_request_on_another(
    settings: Settings, make_user: UserFactory, db_session: AsyncSession
) -> None:
    """Two app instances on one database: the generated secret is shared, and so is the revocation."""
    email = await make_user("viewer")
    async with (
        AsyncTestClient(app=create_app(settings)) as first,
        AsyncTestClient(app=create_app(settings)) as second,
    ):
        body = await login(first, email)
        first.cookies.clear()
        assert (await second.get("/api/v1/incidents", headers=bearer(body))).status_code == 200
        assert (await first.get("/api/v1/incidents", headers=bearer(body))).status_code == 200
        assert (await second.post("/api/v1/auth/logout", headers=bearer(body))).status_code == 200
        assert (await first.get("/api/v1/incidents", headers=bearer(body))).status_code == 401
    secrets = (await db_session.execute(select(ServerSecret.name))).scalars().all()
    assert list(secrets) == ["jwt"]


async def test_configured_secret_is_used_and_validated(settings: Settings, make_user: UserFactory) -> None:
    email = await make_user("viewer")
    signed = settings.with_overrides(jwt_secret="x" * 40)
    async with (
        AsyncTestClient(app=create_app(signed)) as configured,
        AsyncTestClient(app=create_app(settings)) as generated,
    ):
        body = await login(configured, email)
        configured.cookies.clear()
        assert (await configured.get("/api/v1/auth/me", headers=bearer(body))).status_code == 200
        # Signed with another secret: the instance using the database's secret refuses it.
        assert (await generated.get("/api/v1/auth/me", headers=bearer(body))).status_code == 401


class TestCsrf:
    async def test_cookie_changes_need_the_csrf_header(
        self, client: AsyncTestClient[Litestar], make_user: UserFactory
    ) -> None:
        body = await login(client, await make_user("admin"))
        silence = {
            "matchers": [
                {"name": "alertname", "op": "=", "value": "x"},
                {"name": "service", "op": "=", "value": "y"},
            ],
            "ends_at": "2999-01-01T00:00:00Z",
            "comment": "csrf",
        }
        missing = await client.post("/api/v1/alerts/silences", json=silence)
        assert missing.status_code == 403
        assert "X-CSRF-Token" in missing.json()["detail"]
        wrong = await client.post("/api/v1/alerts/silences", json=silence, headers={"X-CSRF-Token": "nope"})
        assert wrong.status_code == 403
        ok = await client.post(
            "/api/v1/alerts/silences", json=silence, headers={"X-CSRF-Token": body["csrf_token"]}
        )
        assert ok.status_code == 201, ok.text
        # A bearer token is not sent by a browser on its own: no CSRF header needed.
        client.cookies.clear()
        assert (
            await client.post("/api/v1/alerts/silences", json=silence, headers=bearer(body))
        ).status_code == 201
