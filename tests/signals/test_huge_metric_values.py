"""Anomaly scoring over huge but finite metric values (SPEC §4: a metric value is any finite float).

PostgreSQL's float8 ``avg`` keeps a sum of squares that overflows for values above ~1e154, and the
detector scores every project's series in one statement: one such series used to fail it for all.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.incidents.anomaly_queries import AnomalyQueries
from prodsentinel.lib.database import session_scope
from prodsentinel.signals.anomalies import DEFAULT_PARAMS, baseline, robust_zscores, sustained_flags
from prodsentinel.signals.models import MetricPoint
from tests.conftest import Tenant
from tests.factories import insert_rows, metric_row

CLOCK = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
HISTORY_OFFSETS = [3540 - 60 * i for i in range(54)]  # every minute, inside the history window
SCORE_OFFSETS = [240, 180, 120, 60, 0]  # inside the 5-minute score window


async def test_mean_absolute_deviation_of_huge_values_scores_like_the_reference(
    tenant: Tenant, session_maker: async_sessionmaker[AsyncSession]
) -> None:
    # Mostly zero (so MAD = 0 and the scale is the mean absolute deviation), deviations of 1e200.
    history = [0.0 if i % 9 < 5 else 1e200 for i in range(len(HISTORY_OFFSETS))]
    recent = [1e201] * len(SCORE_OFFSETS)
    rows = [
        metric_row(
            tenant.project_id,
            name="huge",
            service_name="api",
            timestamp=CLOCK - timedelta(seconds=o),
            value=v,
        )
        for o, v in zip(HISTORY_OFFSETS + SCORE_OFFSETS, history + recent, strict=True)
    ]
    await insert_rows(session_maker, MetricPoint, rows)
    reference = baseline(history)
    assert reference is not None
    assert reference.median == 0.0
    assert reference.scale > 1e199  # the MeanAD fallback

    async with session_scope(session_maker) as session:
        found = await AnomalyQueries(session).detect(now=CLOCK, params=DEFAULT_PARAMS)

    mine = sorted((row for row in found if row.project_id == tenant.project_id), key=lambda row: row.ts)
    scores = robust_zscores(history, recent)
    flags = sustained_flags(scores)
    assert flags == [False, False, True, True, True]
    assert [row.ts for row in mine] == [
        CLOCK - timedelta(seconds=o) for o, flag in zip(SCORE_OFFSETS, flags, strict=True) if flag
    ]
    for row, score in zip(mine, [s for s, f in zip(scores, flags, strict=True) if f], strict=True):
        assert row.score == pytest.approx(score, rel=1e-9)
        assert row.expected == 0.0
