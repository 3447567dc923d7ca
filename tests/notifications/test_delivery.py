"""The dispatcher against real receivers on 127.0.0.1 and the real PostgreSQL outbox."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib.database import session_scope
from prodsentinel.notifications import dispatcher
from prodsentinel.settings import Settings
from tests.notifications.conftest import (
    CHANNELS,
    add_events,
    all_status,
    create_channel,
    dispatch_until,
    ledger,
    outbox,
)
from tests.receivers import Receiver, Reply

ROOT = Path(__file__).resolve().parents[2]
SessionMaker = async_sessionmaker[AsyncSession]
Client = AsyncTestClient[Litestar]


class TestSignedDelivery:
    async def test_headers_and_signature_verify_independently(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: SessionMaker,
        fast_settings: Settings,
        receivers: Callable[..., Receiver],
    ) -> None:
        receiver = receivers()
        secret = "whsec-test-0123456789-abcd"
        await create_channel(client, admin_key, url=receiver.url, secret=secret)
        [event_id] = await add_events(session_maker, project_id)

        counts = await dispatcher.run_dispatch(session_maker, fast_settings, project_id=project_id)

        assert counts.delivered == 1
        [request] = receiver.wait_for(1)
        [item] = await outbox(session_maker, project_id)
        assert item.status == "delivered"
        assert item.attempts == 1
        assert item.delivered_at is not None
        assert request.method == "POST"
        assert request.path == "/hook"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["x-prodsentinel-delivery-id"] == str(item.delivery_id)
        assert request.headers["x-prodsentinel-event-id"] == str(event_id)
        timestamp = request.headers["x-prodsentinel-timestamp"]
        assert abs(int(timestamp) - time.time()) < 10
        # Recomputed here from the raw bytes received, not with the code under test.
        expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256)
        assert request.headers["x-prodsentinel-signature"] == "sha256=" + expected.hexdigest()
        body = json.loads(request.body)
        assert body["event_id"] == str(event_id)
        assert body["event_type"] == "ALERT_FIRING"
        assert body["severity"] == "high"
        assert body["project_id"] == str(project_id)
        assert body["alert"]["labels"] == {"service": "api"}
        [attempt] = await ledger(session_maker, project_id)
        assert (attempt.outcome, attempt.http_status, attempt.error_code) == ("delivered", 200, None)
        assert attempt.attempt_number == 1
        assert attempt.duration_ms > 0

    async def test_no_secret_means_no_signature_header(
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
        await add_events(session_maker, project_id)
        await dispatcher.run_dispatch(session_maker, fast_settings, project_id=project_id)
        [request] = receiver.wait_for(1)
        assert "x-prodsentinel-signature" not in request.headers
        assert "x-prodsentinel-event-id" in request.headers

    async def test_secret_env_is_read_at_send_time(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: SessionMaker,
        fast_settings: Settings,
        receivers: Callable[..., Receiver],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        receiver = receivers()
        env_name = f"PS_TEST_SECRET_{project_id.hex[:8].upper()}"
        await create_channel(client, admin_key, url=receiver.url, secret_env=env_name)
        await add_events(session_maker, project_id)

        # Unset: nothing is sent (an unsigned request would fail verification), the item retries.
        monkeypatch.delenv(env_name, raising=False)
        await dispatcher.dispatch_batch(session_maker, fast_settings, project_id=project_id)
        [item] = await outbox(session_maker, project_id)
        assert receiver.count == 0
        assert (item.status, item.last_error_code) == ("retrying", "secret_unavailable")

        monkeypatch.setenv(env_name, "rotated-secret-value")
        await dispatch_until(session_maker, fast_settings, project_id, all_status("delivered"))
        [request] = receiver.wait_for(1)
        ts = request.headers["x-prodsentinel-timestamp"]
        mac = hmac.new(b"rotated-secret-value", f"{ts}.".encode() + request.body, hashlib.sha256)
        assert request.headers["x-prodsentinel-signature"] == f"sha256={mac.hexdigest()}"

    async def test_severity_and_event_type_filters_pick_channels(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: SessionMaker,
        receivers: Callable[..., Receiver],
    ) -> None:
        receiver = receivers()
        critical_only = await create_channel(client, admin_key, url=receiver.url, min_severity="critical")
        resolved_only = await create_channel(
            client, admin_key, url=receiver.url, event_types=["ALERT_RESOLVED"]
        )
        everything = await create_channel(client, admin_key, url=receiver.url)
        disabled = await create_channel(client, admin_key, url=receiver.url, enabled=False)
        await add_events(session_maker, project_id, event_type="ALERT_FIRING", severity="high")
        await add_events(session_maker, project_id, event_type="ALERT_RESOLVED", severity="critical")
        items = await outbox(session_maker, project_id)
        pairs = sorted((str(i.channel_id), i.event_type) for i in items)
        assert pairs == sorted(
            [
                (everything["id"], "ALERT_FIRING"),
                (everything["id"], "ALERT_RESOLVED"),
                (critical_only["id"], "ALERT_RESOLVED"),
                (resolved_only["id"], "ALERT_RESOLVED"),
            ]
        )
        assert disabled["id"] not in {p[0] for p in pairs}


class TestRetries:
    async def test_500_then_200_is_retried_and_delivered(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: SessionMaker,
        fast_settings: Settings,
        receivers: Callable[..., Receiver],
    ) -> None:
        receiver = receivers(Reply(500))
        await create_channel(client, admin_key, url=receiver.url, secret="0123456789abcdef")
        await add_events(session_maker, project_id)

        [item] = await dispatch_until(session_maker, fast_settings, project_id, all_status("delivered"))

        assert item.attempts == 2
        assert item.last_http_status == 200
        assert item.last_error_code is None
        rows = await ledger(session_maker, project_id)
        assert [(r.attempt_number, r.outcome, r.http_status, r.error_code) for r in rows] == [
            (1, "retry", 500, "http_5xx"),
            (2, "delivered", 200, None),
        ]
        requests = receiver.wait_for(2)
        assert {r.headers["x-prodsentinel-delivery-id"] for r in requests} == {str(item.delivery_id)}
        assert {r.headers["x-prodsentinel-event-id"] for r in requests} == {str(item.event_id)}

    async def test_429_retry_after_sets_next_attempt(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: SessionMaker,
        fast_settings: Settings,
        receivers: Callable[..., Receiver],
    ) -> None:
        receiver = receivers(Reply(429, headers={"Retry-After": "7"}))
        await create_channel(client, admin_key, url=receiver.url)
        await add_events(session_maker, project_id)

        await dispatcher.run_dispatch(session_maker, fast_settings, project_id=project_id)

        [item] = await outbox(session_maker, project_id)
        [attempt] = await ledger(session_maker, project_id)
        assert (item.status, item.last_http_status, item.last_error_code) == ("retrying", 429, "http_429")
        wait = (item.next_attempt_at - attempt.started_at).total_seconds()
        assert 7.0 <= wait <= 9.0, wait  # not the 0.01 s jitter backoff
        # Not due yet: another pass sends nothing.
        counts = await dispatcher.run_dispatch(session_maker, fast_settings, project_id=project_id)
        assert counts.claimed == 0
        assert receiver.count == 1

    async def test_always_failing_goes_dead_after_max_attempts(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: SessionMaker,
        fast_settings: Settings,
        receivers: Callable[..., Receiver],
    ) -> None:
        receiver = receivers(default=Reply(503))
        await create_channel(client, admin_key, url=receiver.url)
        await add_events(session_maker, project_id)

        [item] = await dispatch_until(session_maker, fast_settings, project_id, all_status("dead"))

        assert item.attempts == fast_settings.notify_max_attempts == 3
        rows = await ledger(session_maker, project_id)
        assert [(r.attempt_number, r.outcome) for r in rows] == [(1, "retry"), (2, "retry"), (3, "dead")]
        assert receiver.count == 3
        # Dead stays dead: nothing more is sent.
        await dispatcher.run_dispatch(session_maker, fast_settings, project_id=project_id)
        assert receiver.count == 3

    async def test_404_is_dead_at_once(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: SessionMaker,
        fast_settings: Settings,
        receivers: Callable[..., Receiver],
    ) -> None:
        receiver = receivers(default=Reply(404))
        await create_channel(client, admin_key, url=receiver.url)
        await add_events(session_maker, project_id)

        await dispatcher.run_dispatch(session_maker, fast_settings, project_id=project_id)

        [item] = await outbox(session_maker, project_id)
        assert (item.status, item.attempts, item.last_http_status, item.last_error_code) == (
            "dead",
            1,
            404,
            "http_4xx",
        )
        [row] = await ledger(session_maker, project_id)
        assert row.outcome == "dead"
        assert receiver.count == 1

    async def test_timeout_is_recorded_as_timeout(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: SessionMaker,
        settings: Settings,
        receivers: Callable[..., Receiver],
    ) -> None:
        receiver = receivers(default=Reply(200, delay=3.0))
        quick = settings.with_overrides(notify_timeout_seconds=0.3, notify_backoff_seconds=0.01)
        await create_channel(client, admin_key, url=receiver.url)
        await add_events(session_maker, project_id)

        began = time.monotonic()
        await dispatcher.dispatch_batch(session_maker, quick, project_id=project_id)
        assert time.monotonic() - began < 2.5

        [item] = await outbox(session_maker, project_id)
        [row] = await ledger(session_maker, project_id)
        assert (item.status, item.last_error_code, item.last_http_status) == ("retrying", "timeout", None)
        assert (row.error_code, row.outcome, row.http_status) == ("timeout", "retry", None)
        assert 250 <= row.duration_ms < 2000

    async def test_connection_refused_is_connect_error(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: SessionMaker,
        fast_settings: Settings,
    ) -> None:
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        await create_channel(client, admin_key, url=f"http://127.0.0.1:{port}/hook")
        await add_events(session_maker, project_id)
        await dispatcher.dispatch_batch(session_maker, fast_settings, project_id=project_id)
        [item] = await outbox(session_maker, project_id)
        assert (item.status, item.last_error_code) == ("retrying", "connect_error")


class TestConcurrency:
    async def test_two_dispatchers_never_send_one_item_twice(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: SessionMaker,
        settings: Settings,
        receivers: Callable[..., Receiver],
    ) -> None:
        receiver = receivers(default=Reply(200, delay=0.005))
        small_batches = settings.with_overrides(notify_batch_size=20, notify_concurrency=10)
        await create_channel(client, admin_key, url=receiver.url)
        await add_events(session_maker, project_id, 200)

        first, second = await asyncio.gather(
            dispatcher.run_dispatch(session_maker, small_batches, project_id=project_id),
            dispatcher.run_dispatch(session_maker, small_batches, project_id=project_id),
        )

        assert first.claimed > 0
        assert second.claimed > 0
        assert first.claimed + second.claimed == 200
        assert first.delivered + second.delivered == 200
        assert len(receiver.delivery_counts) == 200
        assert set(receiver.delivery_counts.values()) == {1}
        assert receiver.overlaps == 0
        assert len(await ledger(session_maker, project_id)) == 200

    async def test_a_channel_deleted_mid_send_does_not_lose_the_other_channels_results(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: SessionMaker,
        settings: Settings,
        receivers: Callable[..., Receiver],
    ) -> None:
        """Deleting a channel cascades to its outbox items; results of the same batch for other channels
        must still be recorded (their ledger rows used to fail the whole batch on the foreign key)."""
        slow, fast = receivers(Reply(200, hold=True)), receivers()
        doomed = await create_channel(client, admin_key, url=slow.url)
        await create_channel(client, admin_key, url=fast.url)
        await add_events(session_maker, project_id)  # one event: one item per channel

        dispatch = asyncio.create_task(
            dispatcher.run_dispatch(session_maker, settings, project_id=project_id)
        )
        await slow.wait_for_async(1, timeout=30)  # both items claimed; the slow send is in flight
        deleted = await client.delete(f"{CHANNELS}/{doomed['id']}", headers={"X-API-Key": admin_key})
        assert deleted.status_code == 204, deleted.text
        slow.release()
        counts = await asyncio.wait_for(dispatch, timeout=30)

        assert counts.delivered == 2  # both sends succeeded; only the surviving item is recorded
        [item] = await outbox(session_maker, project_id)
        assert (item.status, item.attempts) == ("delivered", 1)
        [attempt] = await ledger(session_maker, project_id)
        assert attempt.outbox_id == item.id

    async def test_worker_killed_mid_send_is_redelivered_after_visibility_timeout(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: SessionMaker,
        settings: Settings,
        database_url: str,
        receivers: Callable[..., Receiver],
    ) -> None:
        receiver = receivers(Reply(200, hold=True), default=Reply(200))
        await create_channel(client, admin_key, url=receiver.url)
        await add_events(session_maker, project_id)
        recovery = settings.with_overrides(notify_timeout_seconds=3.0, notify_visibility_seconds=4.0)

        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).with_name("dispatcher_proc.py")),
            database_url,
            str(project_id),
            "3.0",
            "4.0",
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
        try:
            # The worker claimed the item, committed, and is now inside the HTTP request.
            [held] = await receiver.wait_for_async(1, timeout=30)
            os.kill(worker.pid, signal.SIGKILL)
            assert await asyncio.wait_for(worker.wait(), timeout=10) == -signal.SIGKILL
        finally:
            if worker.returncode is None:
                worker.kill()

        [item] = await outbox(session_maker, project_id)
        assert item.status == "delivering"
        assert item.attempts == 1
        assert item.locked_until is not None
        # Still invisible to other dispatchers until the visibility timeout passes.
        early = await dispatcher.run_dispatch(session_maker, recovery, project_id=project_id)
        assert early.claimed == 0

        # Poll the database's clock until the lease has run out (the visibility timeout is seconds).
        for _ in range(200):
            async with session_scope(session_maker) as session:
                expired = await session.scalar(
                    text("SELECT locked_until <= now() FROM outbox_items WHERE id = :id"), {"id": item.id}
                )
            if expired:
                break
            await asyncio.sleep(0.05)
        assert expired, "the lease never ran out"
        counts = await dispatcher.run_dispatch(session_maker, recovery, project_id=project_id)
        receiver.release()

        assert counts.delivered == 1
        assert counts.lost == 1
        [item] = await outbox(session_maker, project_id)
        assert item.status == "delivered"
        assert item.attempts == 2
        requests = receiver.wait_for(2)
        # The receiver saw the same delivery twice; event_id lets it deduplicate.
        assert {r.headers["x-prodsentinel-delivery-id"] for r in requests} == {str(item.delivery_id)}
        assert held.headers["x-prodsentinel-event-id"] == requests[1].headers["x-prodsentinel-event-id"]
        rows = await ledger(session_maker, project_id)
        assert [(r.attempt_number, r.outcome, r.error_code) for r in rows] == [
            (1, "retry", "worker_lost"),
            (2, "delivered", None),
        ]
