"""Channels through the HTTP API and from PRODSENTINEL_CHANNELS_FILE."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.app import create_app
from prodsentinel.lib import vocabulary
from prodsentinel.lib.database import session_scope
from prodsentinel.notifications.models import Channel
from prodsentinel.settings import Settings
from tests.conftest import KeyFactory, project_id_of
from tests.notifications.conftest import CHANNELS, create_channel

Client = AsyncTestClient[Litestar]
SECRET = "super-secret-signing-key-XYZW"


def auth(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


class TestChannelApi:
    async def test_create_defaults_and_list(self, client: Client, admin_key: str) -> None:
        created = await create_channel(client, admin_key, name="ops", url="https://hooks.example.com/ps")
        assert created["name"] == "ops"
        assert created["min_severity"] == "low"
        assert created["enabled"] is True
        assert created["event_types"] == list(vocabulary.EVENT_TYPES)
        assert created["kind"] == "webhook"
        assert created["signing"] == "prodsentinel"
        assert created["has_secret"] is False
        assert created["secret_hint"] is None
        response = await client.get(CHANNELS, headers=auth(admin_key))
        assert response.status_code == 200
        [listed] = response.json()["items"]
        assert listed["id"] == created["id"]
        assert listed["health"]["status"] == "unknown"
        assert listed["health"]["attempts"] == 0

    async def test_secret_is_never_returned(
        self, client: Client, admin_key: str, make_key: KeyFactory
    ) -> None:
        created = await create_channel(client, admin_key, url="https://h.example.com/x", secret=SECRET)
        assert created["has_secret"] is True
        assert created["secret_hint"] == "****XYZW"
        reader = await make_key("read")
        channel_url = f"{CHANNELS}/{created['id']}"
        bodies = [
            created,
            (await client.get(CHANNELS, headers=auth(reader))).json(),
            (await client.get(channel_url, headers=auth(reader))).json(),
            (await client.patch(channel_url, json={"min_severity": "high"}, headers=auth(admin_key))).json(),
            (await client.get("/api/v1/notifications/outbox", headers=auth(reader))).json(),
            (await client.get("/api/v1/notifications/attempts", headers=auth(reader))).json(),
            (await client.get("/api/v1/notifications/stats", headers=auth(reader))).json(),
        ]
        for body in bodies:
            assert SECRET not in str(body)
            assert "secret" not in _keys(body) - {"secret_hint", "secret_env", "has_secret"}

    async def test_short_secret_hint_reveals_nothing(self, client: Client, admin_key: str) -> None:
        created = await create_channel(client, admin_key, url="https://h.example.com/x", secret="short")
        assert created["secret_hint"] == "****"

    async def test_secret_env_and_password_in_url(self, client: Client, admin_key: str) -> None:
        created = await create_channel(
            client, admin_key, url="https://user:pa55word@h.example.com/x", secret_env="OPS_WEBHOOK_SECRET"
        )
        assert created["has_secret"] is True
        assert created["secret_env"] == "OPS_WEBHOOK_SECRET"
        assert "pa55word" not in created["url"]

    @pytest.mark.parametrize(
        "body",
        [
            {"name": "x", "url": "ftp://example.com/hook"},
            {"name": "x", "url": "not a url"},
            {"name": "x", "url": "https://"},
            {"name": "x", "url": "http://xn--/"},  # an IDNA label httpx only decodes on access
            {"name": "x", "url": "https://h.example.com", "event_types": ["ALERT_EXPLODED"]},
            {"name": "x", "url": "https://h.example.com", "event_types": []},
            {"name": "x", "url": "https://h.example.com", "secret": "a", "secret_env": "B"},
            {"name": "x", "url": "https://h.example.com", "secret_env": "not a var"},
            {"name": "x", "url": "https://h.example.com", "min_severity": "urgent"},
            {"name": "", "url": "https://h.example.com"},
            {"url": "https://h.example.com"},
            {"name": "x", "url": "https://h.example.com", "enabled": "maybe"},
            {"name": "   ", "url": "https://h.example.com"},
            {"name": "n" * 101, "url": "https://h.example.com"},
            {"name": "x", "url": "https://h.example.com/" + "p" * 2000},
            {"name": "x", "url": "https://h.example.com/a b"},
            {"name": "x", "url": "https://user@/hook"},  # an authority without a host
            {"name": "x", "url": "https://h.example.com", "secret": ""},
            {"name": "x", "url": "https://h.example.com", "secret": "s" * 501},
            {"name": "x", "url": "https://h.example.com", "min_severity": "HIGH"},
            {"name": "x", "url": "https://h.example.com", "event_types": ["alert_firing"]},
        ],
    )
    async def test_invalid_channel_is_422(self, client: Client, admin_key: str, body: dict[str, Any]) -> None:
        response = await client.post(CHANNELS, json=body, headers=auth(admin_key))
        assert response.status_code == 422, response.text
        assert response.json()["detail"]
        assert response.json()["request_id"]

    @pytest.mark.parametrize(
        "body",
        [
            {"name": ""},
            {"url": "gopher://x"},
            {"url": "http://xn--/"},
            {"secret": "a", "secret_env": "B"},
            {"secret_env": "not a var"},
            {"min_severity": "urgent"},
            {"event_types": []},
            {"event_types": ["ALERT_EXPLODED"]},
            {"enabled": None},
        ],
    )
    async def test_invalid_patch_is_422_and_changes_nothing(
        self, client: Client, admin_key: str, body: dict[str, Any]
    ) -> None:
        created = await create_channel(client, admin_key, url="https://h.example.com/x", secret=SECRET)
        url = f"{CHANNELS}/{created['id']}"
        response = await client.patch(url, json=body, headers=auth(admin_key))
        assert response.status_code == 422, response.text
        assert response.json()["detail"]
        after = (await client.get(url, headers=auth(admin_key))).json()
        assert {k: v for k, v in after.items() if k != "health"} == {
            k: v for k, v in created.items() if k != "health"
        }

    async def test_values_are_normalised(self, client: Client, admin_key: str) -> None:
        created = await create_channel(
            client,
            admin_key,
            name="  spaced  ",
            url="HTTPS://h.example.com/x",
            event_types=["INCIDENT_OPENED", "ALERT_FIRING", "INCIDENT_OPENED"],
        )
        assert created["name"] == "spaced"
        assert created["event_types"] == ["INCIDENT_OPENED", "ALERT_FIRING"]

    async def test_the_schema_publishes_the_constraints(self, client: Client) -> None:
        """What the API enforces is what /schema/openapi.json says, so a generated client knows it."""
        schemas = (await client.get("/schema/openapi.json")).json()["components"]["schemas"]
        for name in ("ChannelCreate", "ChannelUpdate"):
            fields = schemas[name]["properties"]
            assert (fields["name"]["minLength"], fields["name"]["maxLength"]) == (1, 100), name
            assert fields["url"]["maxLength"] == 2000, name
            assert fields["url"]["format"] == "uri", name
            assert fields["url"]["pattern"].startswith("^[Hh][Tt][Tt][Pp][Ss]?://"), name
            assert (fields["secret"]["minLength"], fields["secret"]["maxLength"]) == (1, 500), name
            assert fields["secret_env"]["pattern"] == "^[A-Za-z_][A-Za-z0-9_]*$", name
            assert _enum(fields["min_severity"]) == [s.value for s in vocabulary.SEVERITIES], name
            assert fields["event_types"]["minItems"] == 1, name
            [array] = [arm for arm in fields["event_types"]["oneOf"] if arm.get("type") == "array"]
            assert array["items"]["enum"] == list(vocabulary.EVENT_TYPES), name
        assert schemas["ChannelCreate"]["required"] == ["name"]

    async def test_duplicate_name_is_409(self, client: Client, admin_key: str) -> None:
        await create_channel(client, admin_key, name="dup", url="https://h.example.com/1")
        response = await client.post(
            CHANNELS, json={"name": "dup", "url": "https://h.example.com/2"}, headers=auth(admin_key)
        )
        assert response.status_code == 409

    async def test_scopes(self, client: Client, make_key: KeyFactory) -> None:
        reader = await make_key("read")
        operator = await make_key("operate")
        body = {"name": "x", "url": "https://h.example.com"}
        assert (await client.post(CHANNELS, json=body, headers=auth(reader))).status_code == 403
        assert (await client.post(CHANNELS, json=body, headers=auth(operator))).status_code == 403
        assert (await client.get(CHANNELS, headers=auth(reader))).status_code == 200
        assert (await client.get(CHANNELS, headers=auth(await make_key("ingest")))).status_code == 403
        assert (await client.get(CHANNELS)).status_code == 401

    async def test_patch_and_delete(self, client: Client, admin_key: str) -> None:
        created = await create_channel(client, admin_key, url="https://h.example.com/x", secret=SECRET)
        url = f"{CHANNELS}/{created['id']}"
        patched = await client.patch(
            url,
            json={"enabled": False, "event_types": ["INCIDENT_OPENED"], "secret_env": "NEW_SECRET"},
            headers=auth(admin_key),
        )
        assert patched.status_code == 200, patched.text
        body = patched.json()
        assert body["enabled"] is False
        assert body["event_types"] == ["INCIDENT_OPENED"]
        # Switching to secret_env drops the inline secret.
        assert body["secret_env"] == "NEW_SECRET"
        assert body["secret_hint"] is None
        assert body["has_secret"]
        bad = await client.patch(url, json={"url": "gopher://x"}, headers=auth(admin_key))
        assert bad.status_code == 422
        cleared = await client.patch(url, json={"secret_env": None}, headers=auth(admin_key))
        assert cleared.json()["has_secret"] is False
        assert (await client.delete(url, headers=auth(admin_key))).status_code == 204
        assert (await client.get(url, headers=auth(admin_key))).status_code == 404

    async def test_other_projects_channels_are_404(
        self, client: Client, admin_key: str, make_key: KeyFactory
    ) -> None:
        created = await create_channel(client, admin_key, url="https://h.example.com/x")
        stranger = await make_key("admin", project=f"other-{uuid4().hex[:8]}")
        url = f"{CHANNELS}/{created['id']}"
        assert (await client.get(url, headers=auth(stranger))).status_code == 404
        assert (await client.patch(url, json={"enabled": False}, headers=auth(stranger))).status_code == 404
        assert (await client.delete(url, headers=auth(stranger))).status_code == 404
        assert (await client.get(CHANNELS, headers=auth(stranger))).json()["items"] == []


def _enum(schema: dict[str, Any]) -> list[str]:
    """The enum of a property, whether it is the schema itself or its one string arm (PATCH: optional)."""
    if "enum" in schema:
        return list(schema["enum"])
    [arm] = [arm for arm in schema["oneOf"] if "enum" in arm]
    return list(arm["enum"])


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


class TestChannelsFile:
    async def test_loaded_at_start_and_upserted(
        self,
        settings: Settings,
        tmp_path: Path,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        project = f"file-{uuid4().hex[:8]}"
        path = tmp_path / "channels.yaml"
        path.write_text(
            f"""
- project: {project}
  name: pager
  url: https://pager.example.com/hook
  secret_env: PAGER_SECRET
  min_severity: high
  event_types: [ALERT_FIRING, ALERT_RESOLVED]
- project: {project}
  name: chat
  url: https://chat.example.com/hook
  secret: chat-secret-123456
"""
        )
        app = create_app(settings.with_overrides(channels_file=path))
        async with AsyncTestClient(app=app):
            pass
        channels = await _channels_of(session_maker, project)
        assert sorted(channels) == ["chat", "pager"]
        assert channels["pager"].min_severity == "high"
        assert channels["pager"].event_types == ["ALERT_FIRING", "ALERT_RESOLVED"]
        assert channels["chat"].secret == "chat-secret-123456"

        path.write_text(
            f"""
- project: {project}
  name: pager
  url: https://pager2.example.com/hook
  enabled: false
"""
        )
        async with AsyncTestClient(app=create_app(settings.with_overrides(channels_file=path))):
            pass
        again = await _channels_of(session_maker, project)
        assert sorted(again) == ["chat", "pager"]  # upsert by (project, name), nothing removed
        assert again["pager"].id == channels["pager"].id
        assert again["pager"].url == "https://pager2.example.com/hook"
        assert again["pager"].enabled is False
        assert again["pager"].secret_env is None
        assert again["pager"].event_types is None

    @pytest.mark.parametrize(
        "content",
        [
            "- {project: p, name: a, url: 'ftp://x'}",
            "- {project: p, name: a, url: 'https://x.example.com', colour: blue}",
            "- {name: a, url: 'https://x.example.com'}",
            "{project: p}",
            "- [unclosed",
        ],
    )
    def test_invalid_file_stops_the_start_with_one_line(
        self, settings: Settings, tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = tmp_path / "channels.yaml"
        path.write_text(content)
        with pytest.raises(SystemExit) as exit_info:
            create_app(settings.with_overrides(channels_file=path))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert "PRODSENTINEL_CHANNELS_FILE" in err


async def _channels_of(session_maker: async_sessionmaker[AsyncSession], project: str) -> dict[str, Channel]:
    project_id = await project_id_of(session_maker, project)
    async with session_scope(session_maker) as session:
        rows = await session.scalars(select(Channel).where(Channel.project_id == project_id))
        return {row.name: row for row in rows}
