"""Anomaly detection in SQL (median/MAD) against the reference scorer, anomaly incidents and the list API."""

from __future__ import annotations

import json
import random
import statistics
from datetime import datetime, timedelta, timezone
from uuid import UUID

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.incidents.anomaly_detection import run_anomaly_detection
from prodsentinel.incidents.models import Anomaly
from prodsentinel.signals.anomalies import DEFAULT_PARAMS, robust_zscores, sustained_flags
from tests.conftest import Tenant
from tests.incidents.conftest import incidents_of
from tests.incidents.seed import metric_row, seed

HISTORY_OFFSETS = [3540 - 60 * i for i in range(54)]  # every minute, inside the history window
SCORE_OFFSETS = [240, 180, 120, 60, 0]  # inside the 5-minute score window


async def detect(session_maker: async_sessionmaker[AsyncSession], now: datetime) -> list[Anomaly]:
    return (await run_anomaly_detection(session_maker, now=now)).anomalies


async def stored(session_maker: async_sessionmaker[AsyncSession], project: UUID) -> list[Anomaly]:
    async with session_maker() as session:
        return list(
            await session.scalars(select(Anomaly).where(Anomaly.project_id == project).order_by(Anomaly.ts))
        )


class TestDetection:
    async def test_step_change_is_flagged_like_the_reference_and_opens_an_incident(
        self, session_maker: async_sessionmaker[AsyncSession], tenant: Tenant, clock: datetime
    ) -> None:
        rng = random.Random(7)
        labels = {"region": "eu", "az": "1"}
        history = [100 + rng.gauss(0, 1) for _ in HISTORY_OFFSETS]
        recent = [150.0, 151.0, 149.0, 150.5, 152.0]
        rows = [
            metric_row(
                tenant.project_id,
                name="latency_ms",
                service="api",
                ts=clock - timedelta(seconds=o),
                value=v,
                labels=labels,
            )
            for o, v in zip(HISTORY_OFFSETS + SCORE_OFFSETS, history + recent, strict=True)
        ]
        await seed(session_maker, "metric", rows)

        await detect(session_maker, clock)
        found = await stored(session_maker, tenant.project_id)
        expected_scores = robust_zscores(history, recent)
        flags = sustained_flags(expected_scores)
        assert flags == [False, False, True, True, True]
        assert [a.ts for a in found] == [
            clock - timedelta(seconds=o) for o, f in zip(SCORE_OFFSETS, flags, strict=True) if f
        ]
        for anomaly, score in zip(
            found, [s for s, f in zip(expected_scores, flags, strict=True) if f], strict=True
        ):
            assert anomaly.score == pytest.approx(score, rel=1e-9)
            assert anomaly.labels == labels
            assert anomaly.labels_key == json.dumps(dict(sorted(labels.items())))
            assert anomaly.expected == pytest.approx(statistics.median(history), rel=1e-12)

        [incident] = await incidents_of(session_maker, tenant.project_id)
        assert incident.source == "anomaly"
        assert incident.service_name == "api"
        assert incident.count == 3
        assert incident.severity == "medium"
        assert "latency_ms" in incident.title

        # idempotent: the same window scored again records nothing new and counts nothing twice
        await detect(session_maker, clock)
        assert len(await stored(session_maker, tenant.project_id)) == 3
        [incident] = await incidents_of(session_maker, tenant.project_id)
        assert incident.count == 3

    async def test_noisy_stable_series_has_no_false_positive(
        self, session_maker: async_sessionmaker[AsyncSession], tenant: Tenant, clock: datetime
    ) -> None:
        rng = random.Random(11)
        offsets = HISTORY_OFFSETS + SCORE_OFFSETS
        rows = [
            metric_row(
                tenant.project_id,
                name="rps",
                service=f"svc{k}",
                ts=clock - timedelta(seconds=o),
                value=rng.gauss(500, 50),
            )
            for k in range(20)
            for o in offsets
        ]
        # a one-off spike is an outlier, not a sustained anomaly
        rows.append(
            metric_row(
                tenant.project_id, name="rps", service="svc0", ts=clock - timedelta(seconds=30), value=5000.0
            )
        )
        await seed(session_maker, "metric", rows)
        await detect(session_maker, clock)
        assert await stored(session_maker, tenant.project_id) == []
        assert await incidents_of(session_maker, tenant.project_id) == []

    async def test_short_history_is_not_scored(
        self, session_maker: async_sessionmaker[AsyncSession], tenant: Tenant, clock: datetime
    ) -> None:
        offsets = HISTORY_OFFSETS[: DEFAULT_PARAMS.min_history - 1] + SCORE_OFFSETS
        values = [1.0] * (DEFAULT_PARAMS.min_history - 1) + [1000.0] * len(SCORE_OFFSETS)
        await seed(
            session_maker,
            "metric",
            [
                metric_row(tenant.project_id, name="q", service="s", ts=clock - timedelta(seconds=o), value=v)
                for o, v in zip(offsets, values, strict=True)
            ],
        )
        await detect(session_maker, clock)
        assert await stored(session_maker, tenant.project_id) == []


class TestAnomalyApi:
    async def test_list_filters_and_pages(
        self,
        client: AsyncTestClient[Litestar],
        other_tenant: Tenant,
        session_maker: async_sessionmaker[AsyncSession],
        tenant: Tenant,
        clock: datetime,
    ) -> None:
        rows = []
        for metric in ("cpu", "mem"):
            rows += [
                metric_row(
                    tenant.project_id,
                    name=metric,
                    service="node",
                    ts=clock - timedelta(seconds=o),
                    value=10.0 + (o % 7) * 0.1,
                )
                for o in HISTORY_OFFSETS
            ]
            rows += [
                metric_row(
                    tenant.project_id,
                    name=metric,
                    service="node",
                    ts=clock - timedelta(seconds=o),
                    value=90.0,
                )
                for o in SCORE_OFFSETS
            ]
        await seed(session_maker, "metric", rows)
        await detect(session_maker, clock)
        headers = tenant.read

        everything = (await client.get("/api/v1/anomalies", headers=headers)).json()
        assert len(everything["items"]) == 6
        first = everything["items"][0]
        assert set(first) >= {"id", "metric", "service_name", "labels", "ts", "value", "expected", "score"}
        assert first["value"] == 90.0

        cpu = (await client.get("/api/v1/anomalies", params={"metric": "cpu"}, headers=headers)).json()
        assert {i["metric"] for i in cpu["items"]} == {"cpu"}
        assert len(cpu["items"]) == 3
        since = (clock - timedelta(seconds=90)).isoformat()
        recent = (await client.get("/api/v1/anomalies", params={"since": since}, headers=headers)).json()
        assert len(recent["items"]) == 4
        # "+02:00" sent unencoded arrives as " 02:00": the offset still counts, as for /logs
        local = (clock - timedelta(seconds=90)).astimezone(timezone(timedelta(hours=2))).isoformat()
        assert local.endswith("+02:00")
        unencoded = await client.get(f"/api/v1/anomalies?since={local}", headers=headers)
        assert unencoded.status_code == 200, unencoded.text
        assert [i["id"] for i in unencoded.json()["items"]] == [i["id"] for i in recent["items"]]
        # until is exclusive, like every list endpoint's
        newest = everything["items"][0]["ts"]
        before = (await client.get("/api/v1/anomalies", params={"until": newest}, headers=headers)).json()
        assert newest not in {i["ts"] for i in before["items"]}
        assert len(before["items"]) == 4

        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": "4", **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/api/v1/anomalies", params=params, headers=headers)).json()
            seen += [i["id"] for i in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert sorted(seen) == sorted(i["id"] for i in everything["items"])

        other = other_tenant.read
        assert (await client.get("/api/v1/anomalies", headers=other)).json()["items"] == []
        assert (
            await client.get("/api/v1/anomalies", params={"limit": "0"}, headers=headers)
        ).status_code == 400
