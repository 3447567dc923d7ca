"""The read and admin endpoints of /api/v1/notifications on real deliveries."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.notifications import dispatcher
from prodsentinel.settings import Settings
from tests.conftest import KeyFactory
from tests.notifications.conftest import add_events, all_status, create_channel, dispatch_until, outbox
from tests.receivers import Receiver, Reply

Client = AsyncTestClient[Litestar]
SessionMaker = async_sessionmaker[AsyncSession]
BASE = "/api/v1/notifications"


def auth(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


async def get(client: Client, key: str, path: str, **params: Any) -> Any:
    response = await client.get(f"{BASE}{path}", params=params, headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()


class TestReplay:
    async def test_replay_is_a_new_delivery_of_the_same_event(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: SessionMaker,
        fast_settings: Settings,
        receivers: Callable[..., Receiver],
        make_key: KeyFactory,
    ) -> None:
        receiver = receivers()
        await create_channel(client, admin_key, url=receiver.url)
        await add_events(session_maker, project_id)
        [original] = await dispatch_until(session_maker, fast_settings, project_id, all_status("delivered"))

        response = await client.post(f"{BASE}/outbox/{original.id}/replay", headers=auth(admin_key))

        assert response.status_code == 201, response.text
        replay = response.json()
        assert replay["id"] != str(original.id)
        assert replay["delivery_id"] != str(original.delivery_id)
        assert replay["event_id"] == str(original.event_id)
        assert replay["replayed_from_id"] == str(original.id)
        assert (replay["status"], replay["attempts"]) == ("pending", 0)
        assert replay["payload"] == original.payload
        await dispatch_until(session_maker, fast_settings, project_id, all_status("delivered"))
        first, second = receiver.wait_for(2)
        assert first.headers["x-prodsentinel-event-id"] == second.headers["x-prodsentinel-event-id"]
        assert second.headers["x-prodsentinel-delivery-id"] == replay["delivery_id"]
        assert first.body == second.body

        # Not allowed: an item still in flight, another project's item, a read key.
        pending = await client.post(f"{BASE}/outbox/{replay['id']}/replay", headers=auth(admin_key))
        assert pending.status_code == 201  # the replay was delivered meanwhile: replayable
        in_flight = pending.json()["id"]
        assert (
            await client.post(f"{BASE}/outbox/{in_flight}/replay", headers=auth(admin_key))
        ).status_code == 409
        stranger = await make_key("admin", project=f"other-{uuid4().hex[:8]}")
        url = f"{BASE}/outbox/{original.id}/replay"
        assert (await client.post(url, headers=auth(stranger))).status_code == 404
        assert (await client.post(url, headers=auth(await make_key("read")))).status_code == 403
        assert (
            await client.post(f"{BASE}/outbox/{uuid4()}/replay", headers=auth(admin_key))
        ).status_code == 404

    async def test_replay_dead_replays_each_dead_item_once(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: SessionMaker,
        fast_settings: Settings,
        receivers: Callable[..., Receiver],
    ) -> None:
        receiver = receivers(Reply(404), Reply(404), Reply(404), default=Reply(200))
        await create_channel(client, admin_key, url=receiver.url)
        await add_events(session_maker, project_id, 3)
        dead = await dispatch_until(session_maker, fast_settings, project_id, all_status("dead"))

        first = await client.post(f"{BASE}/outbox/replay-dead", params={"limit": 2}, headers=auth(admin_key))
        assert first.status_code == 200, first.text
        assert first.json()["count"] == 2
        second = (await client.post(f"{BASE}/outbox/replay-dead", headers=auth(admin_key))).json()
        assert second["count"] == 1
        third = (await client.post(f"{BASE}/outbox/replay-dead", headers=auth(admin_key))).json()
        assert third["count"] == 0
        assert set(first.json()["replayed_from_ids"] + second["replayed_from_ids"]) == {
            str(d.id) for d in dead
        }

        items = await dispatch_until(
            session_maker,
            fast_settings,
            project_id,
            lambda items: sum(i.status == "delivered" for i in items) == 3,
        )
        replays = [i for i in items if i.replayed_from_id is not None]
        assert {i.event_id for i in replays} == {d.event_id for d in dead}
        assert not {i.delivery_id for i in replays} & {d.delivery_id for d in dead}


class TestReads:
    async def test_outbox_history_attempts_stats_trends(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: SessionMaker,
        fast_settings: Settings,
        receivers: Callable[..., Receiver],
        make_key: KeyFactory,
    ) -> None:
        ok = receivers(Reply(500), default=Reply(200))
        broken = receivers(default=Reply(404))
        good = await create_channel(client, admin_key, url=ok.url, secret="0123456789abcdef")
        bad = await create_channel(client, admin_key, url=broken.url)
        await add_events(session_maker, project_id, 2)
        await add_events(session_maker, project_id, 1, event_type="INCIDENT_OPENED", severity="critical")
        await dispatch_until(
            session_maker,
            fast_settings,
            project_id,
            lambda items: all(i.status in ("delivered", "dead") for i in items),
        )
        reader = await make_key("read")

        page = await get(client, reader, "/outbox", limit=4)
        assert len(page["items"]) == 4
        assert page["next_cursor"]
        rest = await get(client, reader, "/outbox", limit=4, cursor=page["next_cursor"])
        assert len(rest["items"]) == 2
        assert rest["next_cursor"] is None
        ids = [i["id"] for i in page["items"] + rest["items"]]
        assert len(set(ids)) == 6
        assert {i["channel_name"] for i in page["items"]} <= {good["name"], bad["name"]}
        dead = await get(client, reader, "/outbox", status="dead")
        assert {i["channel_id"] for i in dead["items"]} == {bad["id"]}
        assert len(dead["items"]) == 3
        incidents = await get(client, reader, "/outbox", event_type="INCIDENT_OPENED", channel_id=good["id"])
        assert len(incidents["items"]) == 1
        bad_filter = await client.get(f"{BASE}/outbox", params={"status": "lost"}, headers=auth(reader))
        assert bad_filter.status_code == 400
        too_many = await client.get(f"{BASE}/outbox", params={"limit": 5000}, headers=auth(reader))
        assert too_many.status_code == 400
        bad_cursor = await client.get(f"{BASE}/outbox", params={"cursor": "zz"}, headers=auth(reader))
        assert bad_cursor.status_code == 400

        history = await get(client, reader, "/history")
        assert {i["status"] for i in history["items"]} == {"delivered", "dead"}
        finished = [i["updated_at"] for i in history["items"]]
        assert finished == sorted(finished, reverse=True)
        assert len((await get(client, reader, "/history", status="delivered"))["items"]) == 3

        attempts = await get(client, reader, "/attempts")
        # good: 3 items, the first one failed once (500) -> 4 attempts; bad: 3 dead at once.
        assert len(attempts["items"]) == 7
        assert sorted(a["outcome"] for a in attempts["items"]).count("delivered") == 3
        one = await get(client, reader, "/attempts", limit=1, outcome="retry")
        [retry_row] = one["items"]
        assert (retry_row["http_status"], retry_row["error_code"]) == (500, "http_5xx")
        detail = await get(client, reader, f"/attempts/{retry_row['id']}")
        assert detail == retry_row
        by_channel = await get(client, reader, "/attempts", channel_id=bad["id"], error_code="http_4xx")
        assert len(by_channel["items"]) == 3
        paged = await get(client, reader, "/attempts", limit=5)
        more = await get(client, reader, "/attempts", limit=5, cursor=paged["next_cursor"])
        assert len(paged["items"]) + len(more["items"]) == 7

        stats = await get(client, reader, "/stats")
        assert stats["totals"]["delivered"] == 3
        assert stats["totals"]["dead"] == 3
        assert stats["total"] == 6
        assert stats["success_rate"] == 0.5
        assert stats["attempts"] == 7
        assert abs(stats["attempt_success_rate"] - 3 / 7) < 1e-9
        assert stats["latency_ms"]["p50"] > 0
        assert stats["latency_ms"]["p95"] >= stats["latency_ms"]["p50"]
        assert stats["pending"] == 0
        assert stats["oldest_pending_age_seconds"] is None

        hourly = await get(client, reader, "/trends", bucket="hour")
        assert hourly["bucket"] == "hour"
        assert len(hourly["items"]) in (24, 25)
        assert sum(b["sent"] for b in hourly["items"]) == 3
        assert sum(b["retry"] for b in hourly["items"]) == 1
        assert sum(b["dead"] for b in hourly["items"]) == 3
        daily = await get(client, reader, "/trends", bucket="day")
        assert sum(b["sent"] for b in daily["items"]) == 3
        assert (
            await client.get(f"{BASE}/trends", params={"bucket": "week"}, headers=auth(reader))
        ).status_code == 400

        channels = {c["name"]: c["health"] for c in (await get(client, reader, "/channels"))["items"]}
        assert channels[good["name"]]["status"] == "degraded"  # 3 of 4 attempts succeeded
        assert channels[good["name"]]["success_rate"] == 0.75
        assert channels[good["name"]]["last_success_at"] is not None
        assert channels[bad["name"]]["status"] == "failing"
        assert channels[bad["name"]]["top_error_codes"] == [{"code": "http_4xx", "count": 3}]
        assert channels[bad["name"]]["dead"] == 3

        # Another project sees none of it.
        stranger = await make_key("read", project=f"other-{uuid4().hex[:8]}")
        assert (await get(client, stranger, "/outbox"))["items"] == []
        assert (await get(client, stranger, "/attempts"))["items"] == []
        assert (await get(client, stranger, "/stats"))["total"] == 0
        assert (
            await client.get(f"{BASE}/attempts/{retry_row['id']}", headers=auth(stranger))
        ).status_code == 404
        assert (await client.get(f"{BASE}/outbox/{ids[0]}", headers=auth(stranger))).status_code == 404

    async def test_pending_age_and_trend_replays(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: SessionMaker,
        fast_settings: Settings,
        receivers: Callable[..., Receiver],
    ) -> None:
        receiver = receivers()
        channel = await create_channel(client, admin_key, url=receiver.url, enabled=False)
        await add_events(session_maker, project_id)  # none: the channel is disabled
        assert await outbox(session_maker, project_id) == []
        patched = await client.patch(
            f"{BASE}/channels/{channel['id']}", json={"enabled": True}, headers=auth(admin_key)
        )
        assert patched.status_code == 200
        await add_events(session_maker, project_id)
        stats = await get(client, admin_key, "/stats")
        assert stats["pending"] == 1
        assert stats["oldest_pending_age_seconds"] >= 0
        await client.patch(
            f"{BASE}/channels/{channel['id']}", json={"enabled": False}, headers=auth(admin_key)
        )
        # A disabled channel pauses delivery: its items wait.
        assert (
            await dispatcher.run_dispatch(session_maker, fast_settings, project_id=project_id)
        ).claimed == 0
        await client.patch(
            f"{BASE}/channels/{channel['id']}", json={"enabled": True}, headers=auth(admin_key)
        )
        [item] = await dispatch_until(session_maker, fast_settings, project_id, all_status("delivered"))
        await client.post(f"{BASE}/outbox/{item.id}/replay", headers=auth(admin_key))
        since = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
        trend = await get(client, admin_key, "/trends", bucket="hour", since=since)
        assert sum(b["replay"] for b in trend["items"]) == 1


class TestDispatchEndpoint:
    async def test_dispatch_now_delivers_the_callers_project_only(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: SessionMaker,
        receivers: Callable[..., Receiver],
        make_key: KeyFactory,
    ) -> None:
        receiver = receivers()
        await create_channel(client, admin_key, url=receiver.url)
        await add_events(session_maker, project_id, 3)
        other_key = await make_key("admin", project=f"other-{uuid4().hex[:8]}")
        other = await client.post(f"{BASE}/dispatch", headers=auth(other_key))
        assert other.status_code == 200
        assert other.json()["claimed"] == 0
        assert (
            await client.post(f"{BASE}/dispatch", headers=auth(await make_key("read")))
        ).status_code == 403

        response = await client.post(f"{BASE}/dispatch", headers=auth(admin_key))

        assert response.status_code == 200, response.text
        assert response.json()["delivered"] == 3
        assert response.json()["claimed"] == 3
        assert len(receiver.wait_for(3)) == 3
        assert all(i.status == "delivered" for i in await outbox(session_maker, project_id))


class TestPagination:
    async def test_no_cursor_when_exactly_limit_rows_remain(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: SessionMaker,
        fast_settings: Settings,
        receivers: Callable[..., Receiver],
    ) -> None:
        """Four rows in each list: a page of 4, or a second page of 2 after a first of 2, is the last
        one. The lists used to hand out a cursor to an empty page whenever exactly ``limit`` rows were
        left."""
        receiver = receivers()
        await create_channel(client, admin_key, url=receiver.url)
        await add_events(session_maker, project_id, 4)
        await dispatch_until(session_maker, fast_settings, project_id, all_status("delivered"))
        cursors: dict[str, str] = {}
        for path in ("/outbox", "/history", "/attempts"):
            whole = await get(client, admin_key, path, limit=4)
            assert len(whole["items"]) == 4, path
            assert whole["next_cursor"] is None, path
            first = await get(client, admin_key, path, limit=2)
            assert len(first["items"]) == 2, path
            assert first["next_cursor"], path
            second = await get(client, admin_key, path, limit=2, cursor=first["next_cursor"])
            assert len(second["items"]) == 2, path
            assert second["next_cursor"] is None, path
            assert {i["id"] for i in first["items"] + second["items"]} == {i["id"] for i in whole["items"]}
            cursors[path] = first["next_cursor"]
        # Each list has its own cursors: one list's cursor is a 400 on another, never a wrong page.
        for path, other in (("/outbox", "/history"), ("/history", "/attempts"), ("/attempts", "/outbox")):
            response = await client.get(
                f"{BASE}{path}", params={"cursor": cursors[other]}, headers=auth(admin_key)
            )
            assert response.status_code == 400, (path, response.text)

    async def test_since_until_bound_each_list(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: SessionMaker,
        fast_settings: Settings,
        receivers: Callable[..., Receiver],
    ) -> None:
        receiver = receivers()
        await create_channel(client, admin_key, url=receiver.url)
        await add_events(session_maker, project_id, 2)
        await dispatch_until(session_maker, fast_settings, project_id, all_status("delivered"))
        past = "2020-01-01T00:00:00Z"
        future = "2999-01-01T00:00:00+02:00"
        for path in ("/outbox", "/history", "/attempts"):
            assert len((await get(client, admin_key, path, since=past, until=future))["items"]) == 2, path
            assert (await get(client, admin_key, path, until=past))["items"] == [], path
            assert (await get(client, admin_key, path, since=future))["items"] == [], path
            reversed_range = await client.get(
                f"{BASE}{path}", params={"since": future, "until": past}, headers=auth(admin_key)
            )
            assert reversed_range.status_code == 400, path
