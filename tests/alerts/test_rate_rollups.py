"""The ``error_rate`` value read from span rollups equals the raw definition at every window edge.

``(now - window, now]``: the start is exclusive, the end inclusive. Spans sit exactly on both edges, a
few microseconds inside and outside, and spread over whole minutes; windows shorter than a minute,
cutting minutes, and long ones. The clock is explicit, so the comparison is exact.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.alerts.value_queries import ValueQueries
from prodsentinel.signals.models import Span
from tests.conftest import Tenant
from tests.factories import insert_rows, span_row

NOW = datetime(2026, 11, 30, 10, 0, 37, 500_000, tzinfo=UTC)
WINDOWS = (1, 30, 60, 90, 300, 3600, 86_400)


def _offsets() -> list[timedelta]:
    tiny = timedelta(microseconds=1)
    offsets = [timedelta(seconds=s) for s in range(0, 4000, 7)]
    for window in WINDOWS:
        edge = timedelta(seconds=window)
        offsets += [edge, edge - tiny, edge + tiny]
    return [*offsets, timedelta(0), -tiny, tiny, timedelta(seconds=-30)]


async def _definition(session: AsyncSession, project_id: uuid.UUID, service: str, window: int) -> Any:
    row = (
        await session.execute(
            text(
                "SELECT count(*) AS total, count(*) FILTER (WHERE status = 2) AS errors FROM spans "
                "WHERE project_id = :p AND service_name = :s AND start_time > :since AND start_time <= :now"
            ),
            {"p": project_id, "s": service, "now": NOW, "since": NOW - timedelta(seconds=window)},
        )
    ).one()
    return row.errors / row.total if row.total else None


@pytest.mark.parametrize("service", ["api", "db"])
async def test_error_rate_equals_definition(
    tenant: Tenant, session_maker: async_sessionmaker[AsyncSession], service: str
) -> None:
    rows = [
        span_row(
            tenant.project_id,
            service_name=("api", "db")[i % 2],
            start_time=NOW - offset,
            status=2 if i % 3 == 0 else 1,
        )
        for i, offset in enumerate(_offsets())
    ]
    await insert_rows(session_maker, Span, rows)
    policies = [
        {
            "policy_id": str(uuid.uuid4()),
            "project_id": str(tenant.project_id),
            "window_s": w,
            "service": service,
        }
        for w in WINDOWS
    ]
    async with session_maker() as session:
        values = await ValueQueries(session).error_rate(policies, NOW)
        for policy in policies:
            expected = await _definition(session, tenant.project_id, policy["service"], policy["window_s"])
            assert values[uuid.UUID(policy["policy_id"])] == expected, policy
