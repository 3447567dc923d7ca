"""The evaluation cron through a real SAQ Worker, on the PostgreSQL queue and on Redis."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from litestar_saq import SAQPlugin
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.alerts.models import Alert
from prodsentinel.alerts.tasks import cron_jobs, evaluate_alerts
from prodsentinel.audit.models import AuditEvent
from prodsentinel.lib import jobs
from prodsentinel.lib.time import utcnow
from prodsentinel.settings import Settings
from prodsentinel.worker import saq_config
from tests.alerts.conftest import Seeder, Tenant
from tests.alerts.test_evaluate import create_policy


def test_cron_is_built_from_the_interval_setting() -> None:
    [cron] = cron_jobs(Settings(alerts_interval_seconds=15))
    assert cron.function is evaluate_alerts
    assert cron.cron == "* * * * * */15"
    assert cron.timeout
    assert cron.unique


@pytest.mark.parametrize("backend", ["postgres", "redis"])
async def test_cron_evaluates_through_a_real_worker(
    backend: str,
    settings: Settings,
    database_url: str,
    redis_url: str | None,
    client: AsyncTestClient[Litestar],
    tenant: Tenant,
    seed: Seeder,
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    if backend == "redis" and redis_url is None:
        pytest.skip("Redis is not reachable")
    worker_settings = settings.with_overrides(
        alerts_interval_seconds=1,
        queue_name=f"alerts-cron-{uuid.uuid4().hex[:8]}",
        redis_url=redis_url if backend == "redis" else None,
    )
    policy = await create_policy(client, tenant, kind="incident", min_severity="low")
    await seed.incident(at=utcnow() - timedelta(seconds=1))

    worker = SAQPlugin(saq_config(worker_settings, database_url)).get_workers()[worker_settings.queue_name]
    running = asyncio.create_task(worker.start())
    try:
        await asyncio.sleep(1.0)  # SAQ's start race: a job enqueued while the worker starts is "swept"
        state = None
        for _ in range(100):
            async with session_maker() as session:
                state = await session.scalar(
                    select(Alert.state).where(Alert.policy_id == uuid.UUID(policy["id"]))
                )
            if state == "firing":
                break
            await asyncio.sleep(0.1)
        assert state == "firing", "the cron never evaluated the policy"

        # The task is also enqueueable by name (the same service function as the cron).
        job = await worker.queue.enqueue("evaluate_alerts", key=f"manual-{uuid.uuid4().hex}", timeout=60)
        assert job is not None
        await job.refresh(until_complete=10)
        assert job.status == "complete", job.error
        assert job.result["skipped"] in (False, True)
    finally:
        await worker.stop()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await worker.queue.disconnect()
        jobs.bind_queue(None)
        if backend == "postgres":
            # SAQ's PostgreSQL job keys are global across queues (cron:<qualname>): leave none behind.
            async with session_maker() as session, session.begin():
                await session.execute(text("DELETE FROM saq_jobs WHERE key = 'cron:evaluate_alerts'"))

    async with session_maker() as session:
        actors = set(
            await session.scalars(
                select(AuditEvent.actor).where(
                    AuditEvent.project_id == tenant.project_id, AuditEvent.action == "alert.firing"
                )
            )
        )
    assert actors == {"system:scheduler"}
