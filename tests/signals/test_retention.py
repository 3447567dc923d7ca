from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel import worker
from prodsentinel.settings import Settings
from prodsentinel.signals import retention
from prodsentinel.signals import tasks as signal_tasks
from prodsentinel.signals.models import LogRecord, MetricPoint, Span
from tests.conftest import Tenant, TenantFactory
from tests.factories import insert_rows, log_row, metric_row, span_row

SessionMaker = async_sessionmaker[AsyncSession]
# A "now" far in the future of every other test's rows would purge them too: keep the clock real and
# place this test's rows relative to it, in projects of its own.
NOW = datetime.now(UTC)


async def count(session_maker: SessionMaker, model: type, project_id: UUID) -> int:
    async with session_maker() as session:
        return int(
            await session.scalar(
                select(func.count()).select_from(model).where(model.project_id == project_id)
            )  # type: ignore[attr-defined]
            or 0
        )


async def seed_ages(session_maker: SessionMaker, project_id: UUID) -> None:
    """Per table: 7 rows 20 days old, 4 rows 10 days old, 3 fresh rows; and 2 metrics 40 days old."""
    ages = [20] * 7 + [10] * 4 + [0] * 3
    await insert_rows(
        session_maker,
        LogRecord,
        [log_row(project_id, timestamp=NOW - timedelta(days=d, minutes=1)) for d in ages],
    )
    await insert_rows(
        session_maker,
        Span,
        [span_row(project_id, start_time=NOW - timedelta(days=d, minutes=1)) for d in ages],
    )
    await insert_rows(
        session_maker,
        MetricPoint,
        [metric_row(project_id, timestamp=NOW - timedelta(days=d, minutes=1)) for d in [*ages, 40, 40]],
    )


class TestPurgeExpiredSignals:
    async def test_deletes_only_rows_older_than_each_tables_retention_in_chunks(
        self, session_maker: SessionMaker, settings: Settings, tenant: Tenant, make_tenant: TenantFactory
    ) -> None:
        other = await make_tenant(f"retention-{tenant.project_id.hex[:8]}")
        await seed_ages(session_maker, tenant.project_id)
        await seed_ages(session_maker, other.project_id)
        config = settings.with_overrides(
            retention_days_logs=14, retention_days_spans=5, retention_days_metrics=30
        )

        report = await retention.run_retention(session_maker, config, now=NOW, chunk_size=3)

        assert report.complete
        # at least this test's rows (other tests' rows are all fresh); the chunk loop ran past 3 each
        assert report.deleted["logs"] >= 14
        assert report.deleted["spans"] >= 22
        assert report.deleted["metric_points"] >= 4
        for project_id in (tenant.project_id, other.project_id):
            assert await count(session_maker, LogRecord, project_id) == 7  # 10-day and fresh rows kept
            assert await count(session_maker, Span, project_id) == 3  # only fresh rows kept
            assert await count(session_maker, MetricPoint, project_id) == 14  # only the 40-day ones went

        again = await retention.run_retention(session_maker, config, now=NOW, chunk_size=3)
        assert again.complete
        assert again.deleted == {"logs": 0, "spans": 0, "metric_points": 0}

    async def test_time_budget_stops_a_run_and_the_next_run_continues(
        self, session_maker: SessionMaker, settings: Settings, tenant: Tenant
    ) -> None:
        await seed_ages(session_maker, tenant.project_id)
        config = settings.with_overrides(retention_days_logs=14)
        first = await retention.run_retention(
            session_maker, config, now=NOW, chunk_size=2, time_budget_seconds=0
        )
        assert not first.complete
        assert first.deleted == {"logs": 2, "spans": 0, "metric_points": 0}  # one chunk, then out of time
        assert await count(session_maker, LogRecord, tenant.project_id) >= 12
        second = await retention.run_retention(session_maker, config, now=NOW, chunk_size=2)
        assert second.complete
        assert await count(session_maker, LogRecord, tenant.project_id) == 7

    async def test_saq_task_runs_the_service_with_worker_context(
        self, session_maker: SessionMaker, settings: Settings, tenant: Tenant
    ) -> None:
        await seed_ages(session_maker, tenant.project_id)
        ctx = {"session_maker": session_maker, "settings": settings}  # defaults: 14/14/30 days
        result = await signal_tasks.purge_expired_signals(ctx)
        assert result["complete"] is True
        assert await count(session_maker, LogRecord, tenant.project_id) == 7
        assert await count(session_maker, Span, tenant.project_id) == 7
        assert await count(session_maker, MetricPoint, tenant.project_id) == 14

    def test_registered_as_an_hourly_cron_with_a_timeout(self) -> None:
        [cron] = [c for c in worker.cron_jobs(Settings()) if c.function is signal_tasks.purge_expired_signals]
        assert cron.cron == "17 * * * *"
        assert cron.timeout is not None
        assert cron.timeout > retention.PURGE_TIME_BUDGET_SECONDS
        assert cron.unique
        assert signal_tasks.purge_expired_signals in worker.TASKS
