from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from uuid import UUID

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel import worker
from prodsentinel.settings import Settings
from prodsentinel.signals import retention
from prodsentinel.signals import tasks as signal_tasks
from prodsentinel.signals.models import LogRecord, MetricPoint, Span
from prodsentinel.signals.partition_queries import Partition, PartitionQueries
from prodsentinel.signals.partitions import PARTITIONED
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


async def partitions(session_maker: SessionMaker, table: str) -> list[Partition]:
    async with session_maker() as session:
        return await PartitionQueries(session).attached(PARTITIONED[table])


class TestPurgeExpiredSignals:
    async def test_drops_whole_partitions_older_than_each_tables_retention(
        self, session_maker: SessionMaker, settings: Settings, tenant: Tenant, make_tenant: TenantFactory
    ) -> None:
        other = await make_tenant(f"retention-{tenant.project_id.hex[:8]}")
        await seed_ages(session_maker, tenant.project_id)
        await seed_ages(session_maker, other.project_id)
        config = settings.with_overrides(
            retention_days_logs=14, retention_days_spans=5, retention_days_metrics=30
        )
        before = {table: await partitions(session_maker, table) for table in PARTITIONED}

        report = await retention.run_retention(session_maker, config, now=NOW)

        assert report.complete
        cutoffs = retention.retention_cutoffs(config, NOW)
        for table, cutoff in cutoffs.items():
            expired = {p.name for p in before[table] if p.upper <= cutoff}
            assert expired, table  # the seeded rows made at least one wholly expired partition
            assert set(report.dropped[table]) == expired
            left = await partitions(session_maker, table)
            assert all(p.upper > cutoff for p in left)  # the partition holding the cutoff is kept
            assert {p.name for p in left} == {p.name for p in before[table]} - expired
        for project_id in (tenant.project_id, other.project_id):
            assert await count(session_maker, LogRecord, project_id) == 7  # 10-day and fresh rows kept
            assert await count(session_maker, Span, project_id) == 3  # only fresh rows kept
            assert await count(session_maker, MetricPoint, project_id) == 14  # only the 40-day ones went

        again = await retention.run_retention(session_maker, config, now=NOW)
        assert again.complete
        assert again.dropped == {"logs": [], "spans": [], "metric_points": []}

    async def test_no_row_by_row_delete_happens(
        self, session_maker: SessionMaker, settings: Settings, tenant: Tenant
    ) -> None:
        """Rows of a partition that is not wholly expired stay, even when older than the cutoff."""
        straddling = NOW - timedelta(days=14, minutes=1)  # older than the cutoff, in the cutoff's partition
        await insert_rows(session_maker, LogRecord, [log_row(tenant.project_id, timestamp=straddling)])
        config = settings.with_overrides(retention_days_logs=14)
        await retention.run_retention(session_maker, config, now=NOW)
        kept = [p for p in await partitions(session_maker, "logs") if p.lower <= straddling < p.upper]
        if kept:  # the row's partition straddles the cutoff: it and the row stay until all of it expired
            assert await count(session_maker, LogRecord, tenant.project_id) == 1
        else:  # the cutoff fell on a boundary: the whole partition went
            assert await count(session_maker, LogRecord, tenant.project_id) == 0

    async def test_saq_task_runs_the_pass_with_worker_context(
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


class TestPartitionsAhead:
    async def test_cron_creates_the_next_intervals_of_every_table(
        self, session_maker: SessionMaker, settings: Settings
    ) -> None:
        later = NOW + timedelta(days=30)  # beyond what anything else created
        assert await retention.create_partitions_ahead(session_maker, settings, now=later)
        for table in PARTITIONED:
            covered = await partitions(session_maker, table)
            for day in range(retention.PARTITIONS_AHEAD + 1):
                moment = later + timedelta(days=day)
                assert any(p.lower <= moment < p.upper for p in covered), (table, day)
        # idempotent: a second run (another worker) changes nothing
        names = {table: [p.name for p in await partitions(session_maker, table)] for table in PARTITIONED}
        assert await retention.create_partitions_ahead(session_maker, settings, now=later)
        for table in PARTITIONED:
            assert [p.name for p in await partitions(session_maker, table)] == names[table]

    async def test_a_changed_interval_fills_only_the_gaps(
        self, session_maker: SessionMaker, settings: Settings
    ) -> None:
        day = NOW + timedelta(days=60)
        daily = settings.with_overrides(partition_interval_seconds=86_400)
        hourly = settings.with_overrides(partition_interval_seconds=3_600)
        assert await retention.create_partitions_ahead(session_maker, daily, now=day)
        # hourly ranges inside the existing daily partitions are covered: nothing overlaps, nothing fails
        assert await retention.create_partitions_ahead(session_maker, hourly, now=day)
        covered = await partitions(session_maker, "logs")
        for earlier, later in itertools.pairwise(covered):
            assert earlier.upper <= later.lower

    def test_registered_as_an_hourly_cron(self) -> None:
        [cron] = [
            c for c in worker.cron_jobs(Settings()) if c.function is signal_tasks.create_signal_partitions
        ]
        assert cron.cron == "7 * * * *"
        assert cron.unique
        assert signal_tasks.create_signal_partitions in worker.TASKS
