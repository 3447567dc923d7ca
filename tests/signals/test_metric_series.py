from __future__ import annotations

import math
import random
import sys
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.signals.models import MetricPoint
from tests.conftest import Tenant
from tests.factories import insert_rows, metric_row

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SINCE = "2026-03-01T12:00:00Z"
UNTIL = "2026-03-01T12:10:00Z"
Client = AsyncTestClient[Litestar]


def percentile_cont(values: list[float], fraction: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


AGGS: dict[str, Callable[[list[float]], float]] = {
    "avg": lambda v: sum(v) / len(v),
    "min": min,
    "max": max,
    "sum": sum,
    "count": lambda v: float(len(v)),
    "p50": lambda v: percentile_cont(v, 0.5),
    "p95": lambda v: percentile_cont(v, 0.95),
    "p99": lambda v: percentile_cont(v, 0.99),
}


def expected_buckets(points: list[tuple[datetime, float]], step: int, agg: str) -> list[tuple[str, float]]:
    groups: dict[int, list[float]] = defaultdict(list)
    for ts, value in points:
        epoch = ts.timestamp()
        groups[int(epoch // step) * step].append(value)
    return [
        (datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), AGGS[agg](values))
        for start, values in sorted(groups.items())
    ]


async def series(client: Client, tenant: Tenant, **params: Any) -> Any:
    response = await client.get("/api/v1/metrics/series", params=params, headers=tenant.read)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
async def latency(
    tenant: Tenant, session_maker: async_sessionmaker[AsyncSession]
) -> list[tuple[datetime, float]]:
    """latency{service=api}: ~150 points over 10 minutes, with gaps, plus noise the filters must drop."""
    rng = random.Random(7)
    points: list[tuple[datetime, float]] = []
    rows = []
    for _ in range(150):
        offset = rng.uniform(0, 600)
        if 180 <= offset < 300:  # minutes 3 and 4 stay empty: empty buckets are omitted
            continue
        ts = T0 + timedelta(seconds=offset)
        value = round(rng.lognormvariate(3, 1), 3)
        points.append((ts, value))
        rows.append(
            metric_row(
                tenant.project_id,
                name="latency",
                service_name="api",
                timestamp=ts,
                value=value,
                labels={"route": "/x" if rng.random() < 0.5 else "/y", "region": "eu"},
            )
        )
    # noise: other service, other metric, outside the range (until is exclusive)
    rows.append(metric_row(tenant.project_id, name="latency", service_name="web", timestamp=T0, value=1e6))
    rows.append(metric_row(tenant.project_id, name="cpu", service_name="api", timestamp=T0, value=1e6))
    rows.append(
        metric_row(
            tenant.project_id,
            name="latency",
            service_name="api",
            timestamp=T0 + timedelta(minutes=10),
            value=1e6,
        )
    )
    rows.append(
        metric_row(
            tenant.project_id,
            name="latency",
            service_name="api",
            timestamp=T0 - timedelta(microseconds=1),
            value=1e6,
        )
    )
    await insert_rows(session_maker, MetricPoint, rows)
    return points


class TestAggregates:
    @pytest.mark.parametrize("agg", sorted(AGGS))
    async def test_each_aggregate_matches_a_computation_in_the_test(
        self, client: Client, tenant: Tenant, latency: list[tuple[datetime, float]], agg: str
    ) -> None:
        body = await series(
            client, tenant, name="latency", service="api", since=SINCE, until=UNTIL, step=60, agg=agg
        )
        assert body["name"] == "latency"
        assert body["service"] == "api"
        assert body["agg"] == agg
        assert body["step"] == 60
        expected = expected_buckets(latency, 60, agg)
        assert [b["ts"] for b in body["buckets"]] == [ts for ts, _ in expected]
        assert len(expected) == 8  # 10 minutes minus the two empty ones
        for bucket, (_, value) in zip(body["buckets"], expected, strict=True):
            assert bucket["value"] == pytest.approx(value, rel=1e-9)

    async def test_percentiles_interpolate_on_a_known_set(
        self, client: Client, tenant: Tenant, session_maker: async_sessionmaker[AsyncSession]
    ) -> None:
        values = [1.0, 2.0, 3.0, 4.0, 10.0]
        await insert_rows(
            session_maker,
            MetricPoint,
            [
                metric_row(
                    tenant.project_id,
                    name="q",
                    service_name="s",
                    timestamp=T0 + timedelta(seconds=i),
                    value=v,
                )
                for i, v in enumerate(values)
            ],
        )
        expected = {"p50": 3.0, "p95": 8.8, "p99": 9.76, "avg": 4.0, "count": 5.0, "sum": 20.0}
        for agg, value in expected.items():
            body = await series(client, tenant, name="q", since=SINCE, until=UNTIL, step=3600, agg=agg)
            assert body["buckets"] == [{"ts": "2026-03-01T12:00:00Z", "value": pytest.approx(value)}], agg

    async def test_without_service_all_services_are_aggregated(
        self, client: Client, tenant: Tenant, latency: list[tuple[datetime, float]]
    ) -> None:
        body = await series(client, tenant, name="latency", since=SINCE, until=UNTIL, step=600, agg="count")
        assert body["service"] is None
        assert body["buckets"] == [{"ts": "2026-03-01T12:00:00Z", "value": len(latency) + 1}]

    async def test_agg_is_case_insensitive(
        self, client: Client, tenant: Tenant, latency: list[tuple[datetime, float]]
    ) -> None:
        body = await series(
            client, tenant, name="latency", service="api", since=SINCE, until=UNTIL, agg="P95"
        )
        assert body["agg"] == "p95"


class TestBuckets:
    @pytest.mark.parametrize("step", [1, 7, 45, 60, 300, 86_400])
    async def test_buckets_align_to_multiples_of_step_since_the_epoch(
        self, client: Client, tenant: Tenant, latency: list[tuple[datetime, float]], step: int
    ) -> None:
        body = await series(
            client, tenant, name="latency", service="api", since=SINCE, until=UNTIL, step=step, agg="count"
        )
        expected = expected_buckets(latency, step, "count")
        assert [(b["ts"], b["value"]) for b in body["buckets"]] == expected
        for bucket in body["buckets"]:
            start = datetime.fromisoformat(bucket["ts"].replace("Z", "+00:00"))
            assert start.timestamp() % step == 0
        assert sum(b["value"] for b in body["buckets"]) == len(latency)

    async def test_default_range_is_the_last_hour(
        self, client: Client, tenant: Tenant, session_maker: async_sessionmaker[AsyncSession]
    ) -> None:
        now = datetime.now(UTC)
        await insert_rows(
            session_maker,
            MetricPoint,
            [
                metric_row(
                    tenant.project_id, name="recent", service_name="s", timestamp=now - timedelta(minutes=30)
                ),
                metric_row(
                    tenant.project_id, name="recent", service_name="s", timestamp=now - timedelta(hours=2)
                ),
            ],
        )
        body = await series(client, tenant, name="recent", step=3600, agg="count")
        assert sum(b["value"] for b in body["buckets"]) == 1


class TestLabels:
    async def test_labels_filter_keeps_points_carrying_all_pairs(
        self, client: Client, tenant: Tenant, session_maker: async_sessionmaker[AsyncSession]
    ) -> None:
        rows = [
            metric_row(
                tenant.project_id,
                name="req",
                service_name="api",
                timestamp=T0,
                value=1,
                labels={"route": "/x", "code": "200"},
            ),
            metric_row(
                tenant.project_id,
                name="req",
                service_name="api",
                timestamp=T0,
                value=10,
                labels={"route": "/x", "code": "500"},
            ),
            metric_row(
                tenant.project_id,
                name="req",
                service_name="api",
                timestamp=T0,
                value=100,
                labels={"route": "/y", "code": "500"},
            ),
            metric_row(
                tenant.project_id, name="req", service_name="api", timestamp=T0, value=1000, labels={}
            ),
            metric_row(
                tenant.project_id,
                name="req",
                service_name="api",
                timestamp=T0,
                value=10000,
                labels={"route": "a:b"},
            ),
        ]
        await insert_rows(session_maker, MetricPoint, rows)
        cases = {
            None: 11111.0,
            "route:/x": 11.0,
            "code:500": 110.0,
            "route:/x,code:500": 10.0,
            " route : /x ": 0.0,  # keys are trimmed, values are exact
            "route:/z": 0.0,
            "route:a:b": 10000.0,
        }
        for labels, total in cases.items():
            params: dict[str, Any] = {"name": "req", "since": SINCE, "until": UNTIL, "step": 60, "agg": "sum"}
            if labels is not None:
                params["labels"] = labels
            body = await series(client, tenant, **params)
            assert sum(b["value"] for b in body["buckets"]) == total, labels


class TestValidation:
    @pytest.mark.parametrize(
        ("params", "fragment"),
        [
            ({"agg": "median"}, "agg must be one of"),
            ({"step": "0"}, "step must be between"),
            ({"step": "-60"}, "step must be between"),
            ({"step": "99999999"}, "step must be between"),
            ({"labels": "route"}, "labels must look like"),
            ({"labels": ":x"}, "labels must look like"),
            ({"labels": "a:1,,b:2"}, "labels must look like"),
            ({"labels": "a:1,a:2"}, "twice"),
            ({"since": "12:00"}, "since must be an RFC 3339 timestamp"),
            ({"until": "tomorrow"}, "until must be an RFC 3339 timestamp"),
            ({"since": UNTIL, "until": SINCE}, "since must not be later"),
            ({"step": "1", "since": "2026-01-01T00:00:00Z", "until": "2026-02-01T00:00:00Z"}, "buckets"),
        ],
    )
    async def test_bad_parameters_are_400(
        self, client: Client, tenant: Tenant, params: dict[str, str], fragment: str
    ) -> None:
        response = await client.get(
            "/api/v1/metrics/series", params={"name": "latency", **params}, headers=tenant.read
        )
        assert response.status_code == 400, response.text
        assert fragment in response.json()["detail"]

    async def test_name_is_required(self, client: Client, tenant: Tenant) -> None:
        response = await client.get("/api/v1/metrics/series", headers=tenant.read)
        assert response.status_code == 400
        response = await client.get("/api/v1/metrics/series", params={"name": " "}, headers=tenant.read)
        assert response.status_code == 400

    async def test_step_not_a_number_is_400(self, client: Client, tenant: Tenant) -> None:
        response = await client.get(
            "/api/v1/metrics/series", params={"name": "x", "step": "1m"}, headers=tenant.read
        )
        assert response.status_code == 400


FLOAT8_MAX = sys.float_info.max


def exact_aggregate(agg: str, values: list[float]) -> float:
    """The aggregate computed exactly (rationals), then rounded to a float; a sum beyond float8's range
    clamps to +-FLOAT8_MAX. Percentile positions are computed in floating point, as PostgreSQL does."""
    exact = [Fraction(v) for v in values]
    if agg == "count":
        return float(len(values))
    if agg in ("min", "max"):
        return float(min(exact) if agg == "min" else max(exact))
    if agg in ("sum", "avg"):
        total = sum(exact, Fraction(0)) / (len(exact) if agg == "avg" else 1)
        return float(max(-Fraction(FLOAT8_MAX), min(Fraction(FLOAT8_MAX), total)))
    ordered = sorted(exact)
    position = {"p50": 0.5, "p95": 0.95, "p99": 0.99}[agg] * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return float(ordered[low] + Fraction(position - low) * (ordered[high] - ordered[low]))


#: Finite values near float8's limits, one bucket (minute) each. PostgreSQL's float8 avg keeps a sum of
#: squares (overflows above ~1e154), float8 sum overflows past FLOAT8_MAX and percentile_cont's
#: ``lo + (hi - lo) * f`` overflows to Infinity when hi - lo does.
HUGE_BUCKETS: list[list[float]] = [
    [1e200, 0.0],
    [1.7e308, 1.7e308],
    [-1.7e308, 1.7e308],
    [FLOAT8_MAX, 5e-324],
    [-FLOAT8_MAX, -FLOAT8_MAX, -1.0],
    [1e155, -1e155, 3.0, 0.5],
    [1.5, 2.5, 1e-310],  # ordinary and subnormal values: the float8 path, exactly as before
]


class TestHugeValues:
    """Any finite value is valid (SPEC §4): aggregates answer finite values and never fail."""

    @pytest.fixture
    async def huge(self, tenant: Tenant, session_maker: async_sessionmaker[AsyncSession]) -> None:
        rows = [
            metric_row(
                tenant.project_id,
                name="huge",
                service_name="svc",
                timestamp=T0 + timedelta(minutes=minute, seconds=i),
                value=value,
                labels={"i": str(i)},
            )
            for minute, values in enumerate(HUGE_BUCKETS)
            for i, value in enumerate(values)
        ]
        await insert_rows(session_maker, MetricPoint, rows)

    @pytest.mark.parametrize("agg", sorted(AGGS))
    @pytest.mark.usefixtures("huge")
    async def test_every_aggregate_is_finite_and_correct(
        self, client: Client, tenant: Tenant, agg: str
    ) -> None:
        body = await series(
            client, tenant, name="huge", service="svc", since=SINCE, until=UNTIL, step=60, agg=agg
        )
        values = [bucket["value"] for bucket in body["buckets"]]
        assert len(values) == len(HUGE_BUCKETS)
        for points, value in zip(HUGE_BUCKETS, values, strict=True):
            assert isinstance(value, float | int), (points, value)
            assert math.isfinite(value), (points, value)
            assert value == pytest.approx(exact_aggregate(agg, points), rel=1e-12, abs=1e-300), points

    @pytest.mark.usefixtures("huge")
    async def test_a_sum_beyond_float8_clamps_to_its_largest_finite_value(
        self, client: Client, tenant: Tenant
    ) -> None:
        body = await series(client, tenant, name="huge", since=SINCE, until=UNTIL, step=60, agg="sum")
        sums = [bucket["value"] for bucket in body["buckets"]]
        assert sums[1] == FLOAT8_MAX  # 1.7e308 + 1.7e308
        assert sums[3] == FLOAT8_MAX  # the largest float8 (its 15-digit numeric cast is above it)
        assert sums[4] == -FLOAT8_MAX
        assert sums[5] == 3.5  # exact: the huge values cancel (float8 would absorb 3.5 into 1e155)
        avg = await series(client, tenant, name="huge", since=SINCE, until=UNTIL, step=60, agg="avg")
        assert avg["buckets"][1]["value"] == 1.7e308  # the exact mean, not clamped sum / 2

    async def test_fuzzed_ingest_case(self, client: Client, tenant: Tenant) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        points = [
            {"name": "big3", "value": 1e200, "service_name": "svc", "timestamp": now},
            {"name": "big3", "value": 0, "service_name": "svc", "timestamp": now, "labels": {"a": "b"}},
        ]
        response = await client.post("/api/v1/ingest/metrics", json=points, headers=tenant.ingest)
        assert response.status_code == 202, response.text
        for agg, expected in {"avg": 5e199, "sum": 1e200, "p50": 5e199, "p99": 9.9e199, "max": 1e200}.items():
            body = await series(client, tenant, name="big3", step=3600, agg=agg)
            assert sum(b["value"] for b in body["buckets"]) == pytest.approx(expected, rel=1e-12), agg
