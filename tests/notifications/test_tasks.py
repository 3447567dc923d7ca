"""The dispatch job through a real SAQ Worker, on the PostgreSQL queue and on Redis when reachable."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from uuid import UUID

from litestar import Litestar
from litestar.testing import AsyncTestClient
from saq import Queue, Worker
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.notifications import tasks
from prodsentinel.notifications.models import OutboxItem
from prodsentinel.notifications.outbox import DISPATCH_JOB
from prodsentinel.settings import Settings
from tests import workers
from tests.notifications.conftest import add_events, create_channel, outbox
from tests.receivers import Receiver

Client = AsyncTestClient[Litestar]


def running_worker(
    queue: Queue, session_maker: async_sessionmaker[AsyncSession], settings: Settings
) -> contextlib.AbstractAsyncContextManager[Worker]:
    """A real SAQ worker running the notification tasks (no crons); the process's enqueue target."""
    return workers.running_worker(
        queue, functions=tasks.TASKS, session_maker=session_maker, settings=settings
    )


async def _deliver_through_worker(
    queue: Queue,
    client: Client,
    admin_key: str,
    project_id: UUID,
    session_maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    receiver: Receiver,
) -> None:
    await create_channel(client, admin_key, url=receiver.url, secret="0123456789abcdef")
    async with running_worker(queue, session_maker, settings.with_overrides(notify_timeout_seconds=2.0)):
        # add_event registers the dispatcher's wake-up on the session; the commit runs it (no cron tick
        # within the timeout below: the worker has no cron jobs).
        await add_events(session_maker, project_id, 3)
        requests = await receiver.wait_for_async(3, timeout=20)
        for _ in range(200):  # the worker records the results right after the responses
            items = await outbox(session_maker, project_id)
            if all(i.status == "delivered" for i in items):
                break
            await asyncio.sleep(0.05)
    assert len({r.headers["x-prodsentinel-delivery-id"] for r in requests}) == 3
    assert [i.status for i in items] == ["delivered"] * 3


async def _when_all_delivered(
    session_maker: async_sessionmaker[AsyncSession], project_id: UUID, count: int
) -> list[OutboxItem]:
    """The project's items once ``count`` of them are all delivered (the worker records the results
    right after the responses)."""
    for _ in range(200):
        items = await outbox(session_maker, project_id)
        if len(items) == count and all(i.status == "delivered" for i in items):
            return items
        await asyncio.sleep(0.05)
    raise AssertionError(f"not delivered: {[(i.status, i.attempts) for i in items]}")


class TestDispatchJob:
    async def test_on_the_postgresql_queue(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: async_sessionmaker[AsyncSession],
        settings: Settings,
        database_url: str,
        receivers: Callable[..., Receiver],
    ) -> None:
        queue = workers.postgres_queue(database_url, "notify-test")
        await _deliver_through_worker(
            queue, client, admin_key, project_id, session_maker, settings, receivers()
        )

    async def test_on_redis(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: async_sessionmaker[AsyncSession],
        settings: Settings,
        redis_url: str,
        receivers: Callable[..., Receiver],
    ) -> None:
        queue = Queue.from_url(redis_url, name=f"notify-test-{uuid.uuid4().hex[:8]}")
        await _deliver_through_worker(
            queue, client, admin_key, project_id, session_maker, settings, receivers()
        )

    async def test_a_replay_wakes_the_dispatcher_once_the_request_commits(
        self,
        client: Client,
        admin_key: str,
        project_id: UUID,
        session_maker: async_sessionmaker[AsyncSession],
        settings: Settings,
        database_url: str,
        receivers: Callable[..., Receiver],
    ) -> None:
        """The replay endpoints register the wake-up on the request's session (``lib.after_commit``), like
        ``add_event``: the worker has no cron, so only that wake-up can deliver the replay."""
        receiver = receivers()
        queue = workers.postgres_queue(database_url, "notify-test")
        await create_channel(client, admin_key, url=receiver.url)
        async with running_worker(queue, session_maker, settings.with_overrides(notify_timeout_seconds=2.0)):
            await add_events(session_maker, project_id, 1)
            [first] = await receiver.wait_for_async(1, timeout=20)
            [item] = await _when_all_delivered(session_maker, project_id, 1)
            # The first dispatch job may still be finishing its loop: a wake-up enqueued meanwhile is
            # deduplicated against it (the cron is the net in production; this worker has none).
            await workers.wait_until_done(queue, f"{queue.name}:{DISPATCH_JOB}")

            response = await client.post(
                f"/api/v1/notifications/outbox/{item.id}/replay", headers={"X-API-Key": admin_key}
            )

            assert response.status_code == 201, response.text
            _, second = await receiver.wait_for_async(2, timeout=20)
        assert second.headers["x-prodsentinel-event-id"] == first.headers["x-prodsentinel-event-id"]
        assert second.headers["x-prodsentinel-delivery-id"] == response.json()["delivery_id"]

    def test_registered_with_the_worker_and_cron(self) -> None:
        from prodsentinel.settings import Settings
        from prodsentinel.worker import TASKS, cron_jobs

        assert tasks.dispatch_due in TASKS
        [cron] = [c for c in cron_jobs(Settings()) if c.function is tasks.dispatch_due_cron]
        assert cron.timeout
        assert cron.unique
