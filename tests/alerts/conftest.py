"""Fixtures of the alerting tests: set-based seeding and an evaluation pass at a fixed clock.

Signals, incidents, anomalies and channels are rows from the shared factories (``tests/factories.py``),
inserted straight into their tables (the ingest endpoint is another domain's work).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.alerts import evaluator
from prodsentinel.alerts.schemas import EvaluationSummary
from prodsentinel.incidents.models import Anomaly, Incident
from prodsentinel.notifications.models import Channel
from prodsentinel.signals.models import LEVELS, SPAN_STATUSES, LogRecord, MetricPoint, Span
from tests.conftest import Tenant
from tests.factories import anomaly_row, channel_row, incident_row, insert_rows, log_row, metric_row, span_row

INTERVAL = 30


class Seeder:
    """Rows of one project, built by the shared factories and written with one multi-row INSERT per call."""

    def __init__(self, session_maker: async_sessionmaker[AsyncSession], project_id: UUID) -> None:
        self.session_maker = session_maker
        self.project_id = project_id

    async def logs(
        self, *, at: datetime, count: int, service: str = "api", level: str = "ERROR", message: str = "boom"
    ) -> None:
        rows = [
            log_row(
                self.project_id,
                service_name=service,
                timestamp=at - timedelta(milliseconds=i),
                level=LEVELS[level],
                message=message,
            )
            for i in range(count)
        ]
        await insert_rows(self.session_maker, LogRecord, rows)

    async def spans(self, *, at: datetime, ok: int, errors: int, service: str = "api") -> None:
        rows = [
            span_row(
                self.project_id,
                service_name=service,
                name="GET /",
                start_time=at - timedelta(milliseconds=i),
                duration_ms=5.0,
                status=SPAN_STATUSES["ERROR" if i < errors else "OK"],
            )
            for i in range(ok + errors)
        ]
        await insert_rows(self.session_maker, Span, rows)

    async def metrics(
        self,
        *,
        at: datetime,
        values: list[float],
        name: str = "latency_ms",
        service: str = "api",
        labels: dict[str, str] | None = None,
    ) -> None:
        rows = [
            metric_row(
                self.project_id,
                name=name,
                service_name=service,
                timestamp=at - timedelta(milliseconds=i),
                value=value,
                labels=labels or {},
            )
            for i, value in enumerate(values)
        ]
        await insert_rows(self.session_maker, MetricPoint, rows)

    async def anomalies(
        self, *, at: datetime, count: int, metric: str = "latency_ms", service: str = "api"
    ) -> None:
        rows = [
            anomaly_row(
                self.project_id, metric_name=metric, service_name=service, ts=at - timedelta(seconds=i)
            )
            for i in range(count)
        ]
        await insert_rows(self.session_maker, Anomaly, rows)

    async def incident(self, *, at: datetime, severity: str = "high", status: str = "open") -> UUID:
        row = incident_row(
            self.project_id,
            service_name="api",
            severity=severity,
            status=status,
            first_seen=at,
            last_seen=at,
            created_at=at,
            updated_at=at,
        )
        [incident_id] = await insert_rows(self.session_maker, Incident, [row])
        return UUID(str(incident_id))

    async def channel(self, *, min_severity: str = "low") -> UUID:
        [channel_id] = await insert_rows(
            self.session_maker, Channel, [channel_row(self.project_id, min_severity=min_severity)]
        )
        return UUID(str(channel_id))


@pytest.fixture
def seed(session_maker: async_sessionmaker[AsyncSession], tenant: Tenant) -> Seeder:
    return Seeder(session_maker, tenant.project_id)


async def evaluate_at(
    session_maker: async_sessionmaker[AsyncSession], tenant: Tenant, now: datetime, **kwargs: Any
) -> EvaluationSummary:
    """One evaluation pass of the tenant's project at an explicit clock (no sleeping in tests)."""
    return await evaluator.run_evaluation(
        session_maker, interval_seconds=INTERVAL, now=now, project_id=tenant.project_id, **kwargs
    )
