"""The evaluation cron through a real SAQ Worker, on the PostgreSQL queue and on Redis."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from litestar_saq import SAQPlugin
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.alerts.models import Alert
from prodsentinel.alerts.tasks import cron_jobs, evaluate_alerts
from prodsentinel.audit.models import AuditEvent
from prodsentinel.lib.time import utcnow
from prodsentinel.settings import Settings
from prodsentinel.worker import saq_config
from tests.alerts.conftest import Seeder
from tests.alerts.test_evaluate import create_policy
from tests.conftest import Tenant
from tests.workers import running_worker


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
    request: pytest.FixtureRequest,
    client: AsyncTestClient[Litestar],
    tenant: Tenant,
    seed: Seeder,
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    worker_settings = settings.with_overrides(
        alerts_interval_seconds=1,
        queue_name=f"alerts-cron-{uuid.uuid4().hex[:8]}",
        redis_url=request.getfixturevalue("redis_url") if backend == "redis" else None,
    )
    policy = await create_policy(client, tenant, kind="incident", min_severity="low")
    await seed.incident(at=utcnow() - timedelta(seconds=1))

    worker = SAQPlugin(saq_config(worker_settings, database_url)).get_workers()[worker_settings.queue_name]
    async with running_worker(worker.queue, worker=worker):
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
        assert isinstance(job.result["skipped"], bool)

    async with session_maker() as session:
        actors = set(
            await session.scalars(
                select(AuditEvent.actor).where(
                    AuditEvent.project_id == tenant.project_id, AuditEvent.action == "alert.firing"
                )
            )
        )
    assert actors == {"system:scheduler"}
