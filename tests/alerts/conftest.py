"""Fixtures of the alerting tests: set-based signal seeding and an evaluation pass at a fixed clock.

Signals are seeded with SQLAlchemy core multi-row inserts straight into the signal tables (the ingest
endpoint is another domain's work); incidents and anomalies are inserted as rows the same way.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.alerts import evaluator
from prodsentinel.alerts.schemas import EvaluationSummary
from prodsentinel.incidents.models import Anomaly, Incident
from prodsentinel.lib.database import session_scope
from prodsentinel.notifications.models import Channel
from prodsentinel.signals.models import LEVELS, SPAN_STATUSES, LogRecord, MetricPoint, Span
from tests.conftest import Tenant

INTERVAL = 30


class Seeder:
    """Set-based inserts (one multi-row INSERT per call) into the stored-signal tables."""

    def __init__(self, session_maker: async_sessionmaker[AsyncSession], project_id: UUID) -> None:
        self.session_maker = session_maker
        self.project_id = project_id

    async def _insert(self, model: Any, rows: list[dict[str, Any]]) -> None:
        async with session_scope(self.session_maker) as session:
            await session.execute(insert(model), rows)

    async def logs(
        self, *, at: datetime, count: int, service: str = "api", level: str = "ERROR", message: str = "boom"
    ) -> None:
        await self._insert(
            LogRecord,
            [
                {
                    "project_id": self.project_id,
                    "signal_id": uuid.uuid4(),
                    "service_name": service,
                    "timestamp": at - timedelta(milliseconds=i),
                    "level": LEVELS[level],
                    "message": message,
                }
                for i in range(count)
            ],
        )

    async def spans(self, *, at: datetime, ok: int, errors: int, service: str = "api") -> None:
        rows = []
        for i in range(ok + errors):
            start = at - timedelta(milliseconds=i)
            rows.append(
                {
                    "project_id": self.project_id,
                    "signal_id": uuid.uuid4(),
                    "trace_id": uuid.uuid4().hex,
                    "span_id": uuid.uuid4().hex[:16],
                    "service_name": service,
                    "name": "GET /",
                    "start_time": start,
                    "end_time": start + timedelta(milliseconds=5),
                    "duration_ms": 5.0,
                    "status": SPAN_STATUSES["ERROR" if i < errors else "OK"],
                }
            )
        await self._insert(Span, rows)

    async def metrics(
        self,
        *,
        at: datetime,
        values: list[float],
        name: str = "latency_ms",
        service: str = "api",
        labels: dict[str, str] | None = None,
    ) -> None:
        await self._insert(
            MetricPoint,
            [
                {
                    "project_id": self.project_id,
                    "signal_id": uuid.uuid4(),
                    "name": name,
                    "service_name": service,
                    "timestamp": at - timedelta(milliseconds=i),
                    "value": value,
                    "labels": labels or {},
                }
                for i, value in enumerate(values)
            ],
        )

    async def anomalies(
        self, *, at: datetime, count: int, metric: str = "latency_ms", service: str = "api"
    ) -> None:
        await self._insert(
            Anomaly,
            [
                {
                    "id": uuid.uuid4(),
                    "project_id": self.project_id,
                    "metric_name": metric,
                    "service_name": service,
                    "labels": {},
                    "labels_key": "{}",
                    "ts": at - timedelta(seconds=i),
                    "value": 100.0,
                    "expected": 10.0,
                    "score": 9.0,
                }
                for i in range(count)
            ],
        )

    async def incident(self, *, at: datetime, severity: str = "high", status: str = "open") -> UUID:
        incident_id = uuid.uuid4()
        await self._insert(
            Incident,
            [
                {
                    "id": incident_id,
                    "project_id": self.project_id,
                    "fingerprint": uuid.uuid4().hex,
                    "title": "boom",
                    "service_name": "api",
                    "severity": severity,
                    "status": status,
                    "count": 1,
                    "first_seen": at,
                    "last_seen": at,
                    "sample_trace_ids": [],
                    "created_at": at,
                    "updated_at": at,
                }
            ],
        )
        return incident_id

    async def channel(self, *, min_severity: str = "low") -> UUID:
        channel_id = uuid.uuid4()
        await self._insert(
            Channel,
            [
                {
                    "id": channel_id,
                    "project_id": self.project_id,
                    "name": f"hook-{channel_id.hex[:6]}",
                    "url": "http://127.0.0.1:9/hook",
                    "min_severity": min_severity,
                    "enabled": True,
                    "created_at": datetime.now().astimezone(),
                    "updated_at": datetime.now().astimezone(),
                }
            ],
        )
        return channel_id


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
