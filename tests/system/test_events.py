"""GET /api/v1/events/stream: a real SSE client on a real granian server, events published from another
process's connection (the SAQ-worker path), per-project isolation, keep-alives, both backends."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib import events
from prodsentinel.lib.database import libpq_url
from prodsentinel.settings import Settings
from tests.conftest import KeyFactory, project_id_of
from tests.system.servers import granian_server


async def sse_messages(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Parse an SSE byte stream into messages: {"event", "data", "comments"}."""
    message: dict[str, Any] = {"event": None, "data": [], "comments": []}
    async for line in response.aiter_lines():
        if line == "":
            if message["event"] or message["data"] or message["comments"]:
                yield {**message, "data": "\n".join(message["data"])}
            message = {"event": None, "data": [], "comments": []}
        elif line.startswith(":"):
            message["comments"].append(line[1:].strip())
        else:
            field, _, content = line.partition(":")
            content = content.removeprefix(" ")
            if field == "event":
                message["event"] = content
            elif field == "data":
                message["data"].append(content)


class TestEventStreamAuth:
    async def test_needs_read_scope(self, client: AsyncTestClient[Litestar], make_key: KeyFactory) -> None:
        assert (await client.get("/api/v1/events/stream")).status_code == 401
        ingest = await make_key("ingest")
        response = await client.get("/api/v1/events/stream", headers={"X-API-Key": ingest})
        assert response.status_code == 403


class TestEnvelope:
    def test_round_trip(self) -> None:
        payload = events.encode_event("alert_firing", {"id": "x", "value": 1.5})
        event_type, data = events.decode_event(payload)
        assert event_type == "alert_firing"
        assert json.loads(data) == {"id": "x", "value": 1.5}

    async def test_publish_without_a_publisher_is_a_logged_no_op(self) -> None:
        assert await events.publish_event("incident_opened", uuid.uuid4(), {}) is False


@pytest.fixture(params=["postgres", "redis"])
def backend(request: pytest.FixtureRequest) -> str | None:
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    return None


class TestEventStream:
    async def test_subscriber_gets_own_project_events_from_another_process(
        self,
        backend: str | None,
        database_url: str,
        settings: Settings,
        session_maker: async_sessionmaker[AsyncSession],
        make_key: KeyFactory,
        project_name: str,
    ) -> None:
        key = await make_key("read")
        other_project = f"other-{uuid.uuid4().hex[:8]}"
        await make_key("read", project=other_project)
        mine, theirs = (
            await project_id_of(session_maker, project_name),
            await project_id_of(session_maker, other_project),
        )
        env = {"DATABASE_URL": database_url, "PRODSENTINEL_SSE_KEEPALIVE_SECONDS": "0.5"}
        if backend:
            env["REDIS_URL"] = backend
        # The test process plays the SAQ worker: no Litestar app, the same backend class started on its own.
        publisher = await events.start_publisher(
            settings.with_overrides(redis_url=backend), libpq_url(database_url)
        )
        try:
            with granian_server(env) as base_url:
                async with (
                    httpx.AsyncClient(base_url=base_url, timeout=20) as http,
                    http.stream(
                        "GET", "/api/v1/events/stream", headers={"Authorization": f"Bearer {key}"}
                    ) as response,
                ):
                    assert response.status_code == 200
                    assert response.headers["content-type"].startswith("text/event-stream")
                    received = await asyncio.wait_for(
                        self._exchange(sse_messages(response), mine, theirs), timeout=20
                    )
        finally:
            await events.stop_publisher(publisher)
        connected, keepalives, event = received
        assert connected["comments"] == ["connected"]
        assert keepalives >= 1
        assert event["event"] == "incident_opened"
        assert json.loads(event["data"]) == {"id": "mine", "title": "Database timeout", "severity": "high"}

    async def _exchange(
        self, messages: AsyncIterator[dict[str, Any]], mine: uuid.UUID, theirs: uuid.UUID
    ) -> tuple[dict[str, Any], int, dict[str, Any]]:
        connected = await anext(messages)  # sent once the server's subscription is in place
        # The other project's event goes first: if isolation leaked it would be the first one received.
        assert await events.publish_event("incident_opened", theirs, {"id": "theirs"})
        assert await events.publish_event(
            "incident_opened", mine, {"id": "mine", "title": "Database timeout", "severity": "high"}
        )
        keepalives = 0
        async for message in messages:
            if message["event"] is None:
                keepalives += "keepalive" in message["comments"]
                continue
            if keepalives == 0:  # wait for one idle keep-alive as well before returning
                async for more in messages:
                    if "keepalive" in more["comments"]:
                        keepalives += 1
                        break
                    assert more["event"] is None, more  # nothing else (no other project's event) arrives
            return connected, keepalives, message
        raise AssertionError("stream ended")


class TestPostgresListenerRecovery:
    async def test_listen_connection_is_reopened_after_it_is_killed(self, database_url: str) -> None:
        dsn = libpq_url(database_url)
        backend = events.PooledAsyncPgChannelsBackend(dsn=dsn)
        await backend.on_startup()
        try:
            channel = events.channel_for(uuid.uuid4())
            await backend.subscribe([channel])
            stream = backend.stream_events().__aiter__()
            killed_pid = backend._listener_conn.get_server_pid()
            admin = await asyncpg.connect(dsn)
            try:
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", killed_pid)
            finally:
                await admin.close()
            for _ in range(100):  # reconnected: a new server process listens
                await asyncio.sleep(0.05)
                if (
                    not backend._listener_conn.is_closed()
                    and backend._listener_conn.get_server_pid() != killed_pid
                ):
                    break
            else:
                raise AssertionError("listener was not reopened")
            await backend.publish(b'{"type":"x","data":{}}', [channel])
            assert await asyncio.wait_for(anext(stream), timeout=5) == (channel, b'{"type":"x","data":{}}')
        finally:
            await backend.on_shutdown()
