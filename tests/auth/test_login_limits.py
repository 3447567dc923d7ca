"""Brute force hits 429 + Retry-After, per email and per address; CORS for the frontend origins."""

from __future__ import annotations

import uuid

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from prodsentinel.app import create_app
from prodsentinel.settings import Settings, SettingsError, load_settings
from tests.auth.conftest import PASSWORD, UserFactory

LOGIN = "/api/v1/auth/login"


async def _attempt(client: AsyncTestClient[Litestar], email: str, password: str) -> int:
    return (await client.post(LOGIN, json={"email": email, "password": password})).status_code


async def test_failed_logins_per_email_hit_429_even_with_the_right_password(
    settings: Settings, make_user: UserFactory
) -> None:
    email = await make_user("viewer")
    limited = settings.with_overrides(login_limit_email="3/minute", login_limit_address="1000/minute")
    async with AsyncTestClient(app=create_app(limited)) as client:
        assert [await _attempt(client, email, f"guess-{n}") for n in range(3)] == [401, 401, 401]
        refused = await client.post(LOGIN, json={"email": email, "password": PASSWORD})
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "Too many failed logins" in refused.json()["detail"]
        assert refused.json()["request_id"]
        # Another email from the same address is not limited by this one's failures.
        assert await _attempt(client, await make_user("viewer"), PASSWORD) == 200


async def test_failed_logins_per_address_hit_429_across_emails(settings: Settings) -> None:
    limited = settings.with_overrides(login_limit_email="1000/minute", login_limit_address="4/minute")
    async with AsyncTestClient(app=create_app(limited)) as client:
        statuses = [
            await _attempt(client, f"u{n}-{uuid.uuid4().hex[:6]}@example.com", "nope-nope") for n in range(5)
        ]
        assert statuses == [401, 401, 401, 401, 429]


async def test_limits_are_shared_by_instances_through_redis(
    settings: Settings, redis_url: str, make_user: UserFactory
) -> None:
    email = await make_user("viewer")
    shared = settings.with_overrides(
        redis_url=redis_url, login_limit_email="2/minute", login_limit_address="1000/minute"
    )
    async with (
        AsyncTestClient(app=create_app(shared)) as first,
        AsyncTestClient(app=create_app(shared)) as second,
    ):
        assert await _attempt(first, email, "wrong-one") == 401
        assert await _attempt(second, email, "wrong-two") == 401
        assert await _attempt(first, email, PASSWORD) == 429


async def test_cors_allows_the_configured_origins_with_credentials(settings: Settings) -> None:
    origin = "http://127.0.0.1:5173"
    async with AsyncTestClient(app=create_app(settings.with_overrides(cors_origins=(origin,)))) as client:
        preflight = await client.options(
            LOGIN,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-csrf-token",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == origin
        assert preflight.headers["access-control-allow-credentials"] == "true"
        other = await client.get("/health/live", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PRODSENTINEL_JWT_SECRET", "too-short"),
        ("PRODSENTINEL_CORS_ORIGINS", "*"),
        ("PRODSENTINEL_CORS_ORIGINS", "x"),
    ],
)
def test_invalid_people_settings_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings({variable: value})
