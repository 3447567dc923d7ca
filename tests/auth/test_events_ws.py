"""``/api/v1/events/ws`` on a real granian server: a person's token or cookie, or a key; project-scoped."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from prodsentinel.lib import events
from prodsentinel.lib.database import libpq_url
from prodsentinel.settings import Settings
from tests.auth.conftest import PASSWORD, UserFactory
from tests.conftest import KeyFactory, project_id_of
from tests.system.servers import granian_server


async def _next(socket: ClientConnection) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(socket.recv(), timeout=20)))


async def _receives_own_event(socket: ClientConnection, mine: uuid.UUID, theirs: uuid.UUID) -> dict[str, Any]:
    connected = await _next(socket)  # sent once the server's subscription is in place
    assert connected["type"] == "connected"
    # The other project's event goes first: if isolation leaked, it would be the first one received.
    assert await events.publish_event("incident_opened", theirs, {"id": "theirs"})
    assert await events.publish_event("incident_opened", mine, {"id": "mine", "severity": "high"})
    return await _next(socket)


async def test_websocket_events_by_token_cookie_and_key(
    database_url: str,
    settings: Settings,
    session_maker: async_sessionmaker[AsyncSession],
    make_user: UserFactory,
    make_key: KeyFactory,
    project_name: str,
) -> None:
    email = await make_user("viewer")
    key = await make_key("read")
    other = f"other-{uuid.uuid4().hex[:8]}"
    await make_key("read", project=other)
    mine, theirs = await project_id_of(session_maker, project_name), await project_id_of(session_maker, other)
    publisher = await events.start_publisher(settings, libpq_url(database_url))  # the test plays the worker
    try:
        with granian_server({"DATABASE_URL": database_url}) as base_url:
            async with httpx.AsyncClient(base_url=base_url, timeout=20) as http:
                login = await http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
                assert login.status_code == 200, login.text
            token = login.json()["access_token"]
            url = base_url.replace("http://", "ws://") + "/api/v1/events/ws"
            for headers in (
                {"Authorization": f"Bearer {token}"},
                {"Cookie": f"prodsentinel_session={token}", "Origin": base_url},
                {"X-API-Key": key},
            ):
                async with connect(url, additional_headers=headers) as socket:
                    event = await _receives_own_event(socket, mine, theirs)
                assert event == {"type": "incident_opened", "data": {"id": "mine", "severity": "high"}}, (
                    headers
                )

            with pytest.raises(InvalidStatus):
                async with connect(url):
                    pass
            with pytest.raises(InvalidStatus):  # another site's page cannot ride on the cookie
                async with connect(
                    url,
                    additional_headers={
                        "Cookie": f"prodsentinel_session={token}",
                        "Origin": "http://evil.example",
                    },
                ):
                    pass
    finally:
        await events.stop_publisher(publisher)
