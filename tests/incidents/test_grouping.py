"""Grouping of error signals into incidents: folding, severity, escalation, crash-safety of the mark."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

from saq import Queue
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.audit.models import AuditEvent
from prodsentinel.incidents import grouping, tasks
from prodsentinel.incidents.grouping_queries import SOURCES
from prodsentinel.incidents.models import GroupingCursor, IncidentOccurrence
from prodsentinel.lib import jobs
from prodsentinel.lib.database import session_scope
from prodsentinel.notifications.models import OutboxItem
from prodsentinel.settings import Settings
from prodsentinel.signals.models import LogRecord
from tests.conftest import Tenant
from tests.incidents.conftest import add_channel, drain, incidents_of
from tests.incidents.seed import log_row, seed, span_row


class TestFolding:
    async def test_1000_errors_with_varying_ids_make_one_incident(
        self, session_maker: async_sessionmaker[AsyncSession], tenant: Tenant, clock: datetime
    ) -> None:
        rows = [
            log_row(
                tenant.project_id,
                service="checkout",
                message=(
                    f"Payment {uuid.uuid4()} failed for user {1000 + i}: upstream 10.0.{i % 250}.7:8443 "
                    f"timed out after {i * 3} ms (request 0x{i * 7919:08x})"
                ),
                ts=clock - timedelta(minutes=59) + timedelta(seconds=i * 3),
                trace_id=f"t{i:04d}",
            )
            for i in range(1000)
        ]
        await seed(session_maker, "log", rows)
        await grouping.run_grouping(session_maker, now=clock)

        incidents = await incidents_of(session_maker, tenant.project_id)
        assert len(incidents) == 1
        incident = incidents[0]
        assert incident.count == 1000
        assert incident.service_name == "checkout"
        assert incident.source == "log"
        assert incident.status == "open"
        assert incident.first_seen == rows[0]["timestamp"]
        assert incident.last_seen == rows[-1]["timestamp"]
        assert len(incident.sample_trace_ids) == 10
        assert incident.title.startswith("checkout: Payment <uuid> failed for user <num>")
        # 100 occurrences in the last 5 minutes (one every 3 s) -> critical
        assert incident.severity == "critical"

    async def test_services_and_messages_split_incidents_and_spans_group_by_name(
        self, session_maker: async_sessionmaker[AsyncSession], tenant: Tenant, clock: datetime
    ) -> None:
        await seed(
            session_maker,
            "log",
            [
                log_row(tenant.project_id, service="a", message="disk full on /dev/sda1", ts=clock),
                log_row(tenant.project_id, service="b", message="disk full on /dev/sda1", ts=clock),
                log_row(tenant.project_id, service="a", message="connection refused", ts=clock),
                log_row(tenant.project_id, service="a", message="ignored", ts=clock, level="WARN"),
            ],
        )
        await seed(
            session_maker,
            "span",
            [
                span_row(
                    tenant.project_id,
                    service="a",
                    name="GET /users/42",
                    trace_id="x1",
                    span_id="s1",
                    start=clock,
                ),
                span_row(
                    tenant.project_id,
                    service="a",
                    name="GET /users/43",
                    trace_id="x2",
                    span_id="s2",
                    start=clock,
                ),
                span_row(
                    tenant.project_id,
                    service="a",
                    name="GET /ok",
                    trace_id="x3",
                    span_id="s3",
                    start=clock,
                    status="OK",
                ),
            ],
        )
        await grouping.run_grouping(session_maker, now=clock)
        incidents = await incidents_of(session_maker, tenant.project_id)
        by_title = {i.title: i for i in incidents}
        assert set(by_title) == {
            "a: disk full on /dev/sda1",
            "b: disk full on /dev/sda1",
            "a: connection refused",
            "a: GET /users/<num>",
        }
        span_incident = by_title["a: GET /users/<num>"]
        assert span_incident.count == 2
        assert span_incident.source == "span"
        assert span_incident.severity == "medium"
        assert sorted(span_incident.sample_trace_ids) == ["x1", "x2"]

    async def test_critical_log_opens_a_critical_incident(
        self, session_maker: async_sessionmaker[AsyncSession], tenant: Tenant, clock: datetime
    ) -> None:
        await seed(
            session_maker,
            "log",
            [log_row(tenant.project_id, service="db", message="out of memory", ts=clock, level="CRITICAL")],
        )
        await grouping.run_grouping(session_maker, now=clock)
        [incident] = await incidents_of(session_maker, tenant.project_id)
        assert incident.severity == "critical"


class TestEscalation:
    async def test_rate_escalates_medium_to_high_to_critical_and_never_drops(
        self, session_maker: async_sessionmaker[AsyncSession], tenant: Tenant, clock: datetime
    ) -> None:
        await add_channel(session_maker, tenant.project_id)

        async def burst(n: int, start: datetime) -> None:
            await seed(
                session_maker,
                "log",
                [
                    log_row(
                        tenant.project_id,
                        service="api",
                        message=f"timeout {i}",
                        ts=start + timedelta(seconds=i),
                    )
                    for i in range(n)
                ],
            )
            await grouping.run_grouping(session_maker, now=clock)

        await burst(5, clock)
        [incident] = await incidents_of(session_maker, tenant.project_id)
        assert incident.severity == "medium"
        await burst(5, clock + timedelta(seconds=30))  # 10 in 5 min
        [incident] = await incidents_of(session_maker, tenant.project_id)
        assert incident.severity == "high"
        await burst(90, clock + timedelta(seconds=60))  # 100 in 5 min
        [incident] = await incidents_of(session_maker, tenant.project_id)
        assert incident.severity == "critical"
        assert incident.count == 100
        await burst(1, clock + timedelta(hours=1))  # a lone occurrence later: severity stays
        [incident] = await incidents_of(session_maker, tenant.project_id)
        assert incident.severity == "critical"

        async with session_maker() as session:
            events = list(
                await session.execute(
                    select(OutboxItem.event_type, OutboxItem.severity, OutboxItem.payload)
                    .where(OutboxItem.project_id == tenant.project_id)
                    .order_by(OutboxItem.created_at, OutboxItem.id)
                )
            )
            audit = list(
                await session.scalars(
                    select(AuditEvent.action)
                    .where(AuditEvent.project_id == tenant.project_id, AuditEvent.subject_type == "incident")
                    .order_by(AuditEvent.at, AuditEvent.id)  # every pass ran at now=clock: `at` ties
                )
            )
        assert [(e.event_type, e.severity) for e in events] == [
            ("INCIDENT_OPENED", "medium"),
            ("INCIDENT_ESCALATED", "high"),
            ("INCIDENT_ESCALATED", "critical"),
        ]
        assert events[1].payload["previous_severity"] == "medium"
        assert events[1].payload["incident"]["id"] == str(incident.id)
        assert events[0].payload["event_type"] == "INCIDENT_OPENED"
        assert audit == ["incident_opened", "incident_escalated", "incident_escalated"]

    async def test_same_trace_failing_in_two_services_raises_one_level(
        self, session_maker: async_sessionmaker[AsyncSession], tenant: Tenant, clock: datetime
    ) -> None:
        await seed(
            session_maker,
            "log",
            [
                log_row(
                    tenant.project_id, service="frontend", message="upstream error", ts=clock, trace_id="T1"
                ),
                log_row(
                    tenant.project_id, service="lonely", message="unrelated error", ts=clock, trace_id="T2"
                ),
            ],
        )
        await seed(
            session_maker,
            "span",
            [
                span_row(
                    tenant.project_id,
                    service="payments",
                    name="charge",
                    trace_id="T1",
                    span_id="p1",
                    start=clock,
                )
            ],
        )
        await grouping.run_grouping(session_maker, now=clock)
        severities = {
            i.service_name: i.severity for i in await incidents_of(session_maker, tenant.project_id)
        }
        assert severities == {"frontend": "high", "payments": "high", "lonely": "medium"}

    async def test_no_outbox_item_without_a_channel(
        self, session_maker: async_sessionmaker[AsyncSession], tenant: Tenant, clock: datetime
    ) -> None:
        await seed(session_maker, "log", [log_row(tenant.project_id, service="s", message="boom", ts=clock)])
        await grouping.run_grouping(session_maker, now=clock)
        async with session_maker() as session:
            items = list(
                await session.scalars(select(OutboxItem).where(OutboxItem.project_id == tenant.project_id))
            )
        assert items == []
        assert len(await incidents_of(session_maker, tenant.project_id)) == 1


class TestCrashSafety:
    async def test_rolled_back_batch_is_redone_once_and_reruns_do_not_double_count(
        self, session_maker: async_sessionmaker[AsyncSession], tenant: Tenant, clock: datetime
    ) -> None:
        await seed(
            session_maker,
            "log",
            [log_row(tenant.project_id, service="w", message=f"job {i} failed", ts=clock) for i in range(50)],
        )
        # A worker that dies before committing: everything of the batch rolls back together.
        async with session_maker() as session:
            outcome = await grouping.group_batch(session, SOURCES["log"], now=clock)
            assert outcome.signals >= 50
            await session.rollback()
        assert await incidents_of(session_maker, tenant.project_id) == []

        await grouping.run_grouping(session_maker, now=clock)
        await grouping.run_grouping(session_maker, now=clock)
        [incident] = await incidents_of(session_maker, tenant.project_id)
        assert incident.count == 50

        # The same batch seen again (e.g. the mark did not advance yet) is not counted twice.
        async with session_scope(session_maker) as session:
            again = await grouping.group_batch(session, SOURCES["log"], now=clock)
        assert again.signals == 0
        await seed(
            session_maker,
            "log",
            [log_row(tenant.project_id, service="w", message=f"job {i} failed", ts=clock) for i in range(7)],
        )
        await grouping.run_grouping(session_maker, now=clock)
        [incident] = await incidents_of(session_maker, tenant.project_id)
        assert incident.count == 57

    async def test_row_committed_late_with_a_smaller_id_is_not_skipped(
        self, session_maker: async_sessionmaker[AsyncSession], tenant: Tenant, clock: datetime
    ) -> None:
        # Transaction A takes an id and stays open while B commits a larger id.
        slow = session_maker()
        await slow.execute(
            insert(LogRecord),
            [log_row(tenant.project_id, service="late", message="slow writer failed", ts=clock)],
        )
        await seed(
            session_maker,
            "log",
            [log_row(tenant.project_id, service="fast", message="fast writer failed", ts=clock)],
        )
        for _ in range(3):  # several runs: checkpoints taken and (not) settled while A is open
            await grouping.run_grouping(session_maker, now=clock)
        async with session_maker() as session:
            cursor = await session.scalar(select(GroupingCursor).where(GroupingCursor.source == "logs"))
            slow_id = await slow.scalar(
                select(LogRecord.id).where(
                    LogRecord.project_id == tenant.project_id, LogRecord.service_name == "late"
                )
            )
        assert cursor is not None
        assert slow_id is not None
        assert cursor.high_water_id < slow_id, "the mark must not pass an id still in flight"
        await slow.commit()
        await slow.close()

        await grouping.run_grouping(session_maker, now=clock)
        services_seen = {
            i.service_name: i.count for i in await incidents_of(session_maker, tenant.project_id)
        }
        assert services_seen == {"fast": 1, "late": 1}
        # and eventually the mark passes both, with each signal recorded exactly once
        high_water = 0
        for _ in range(40):
            await grouping.run_grouping(session_maker, now=clock)
            async with session_maker() as session:
                high_water = (
                    await session.scalar(
                        select(GroupingCursor.high_water_id).where(GroupingCursor.source == "logs")
                    )
                    or 0
                )
            if high_water >= slow_id:
                break
            await asyncio.sleep(0.25)
        assert high_water >= slow_id
        async with session_maker() as session:
            recorded = list(
                await session.scalars(
                    select(IncidentOccurrence.id).where(IncidentOccurrence.signal_pk == slow_id)
                )
            )
        assert len(recorded) == 1
        assert {i.service_name: i.count for i in await incidents_of(session_maker, tenant.project_id)} == {
            "fast": 1,
            "late": 1,
        }


class TestJobs:
    def test_task_and_cron_names_are_registered(self) -> None:
        from prodsentinel import worker

        names = {getattr(task, "__qualname__", "") for task in worker.TASKS}
        assert {"group_new_errors", "analyse_incident"} <= names
        crons = {getattr(cron.function, "__qualname__", ""): cron for cron in worker.cron_jobs(Settings())}
        assert {"group_new_errors_cron", "auto_resolve_incidents", "detect_anomalies"} <= set(crons)
        assert all(crons[name].timeout for name in crons)

    async def test_ingest_style_enqueue_runs_the_grouping_job(
        self,
        queue: Queue,
        database_url: str,
        session_maker: async_sessionmaker[AsyncSession],
        settings: Settings,
        tenant: Tenant,
        clock: datetime,
    ) -> None:
        await seed(
            session_maker,
            "log",
            [log_row(tenant.project_id, service="q", message="enqueued error", ts=clock)],
        )
        assert await jobs.enqueue("group_new_errors", key="group_new_errors", timeout=120) is True
        assert await jobs.enqueue("group_new_errors", key="group_new_errors", timeout=120) is False

        await drain(
            queue,
            database_url,
            "group_new_errors",
            functions=[tasks.group_new_errors],
            session_maker=session_maker,
            settings=settings,
        )
        [incident] = await incidents_of(session_maker, tenant.project_id)
        assert incident.count == 1
