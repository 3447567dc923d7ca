"""Service statistics and metric series from rollups equal the plain SQL definition (issue 15).

Every signal is ingested through the HTTP API (the real writer, so the rollup triggers run as in
production), on the external PostgreSQL and on the embedded one. Windows deliberately cut minute and
hour buckets, so the raw edges are exercised; re-sent signals must not count twice.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from prodsentinel.lib.time import utcnow
from prodsentinel.settings import Settings
from prodsentinel.signals import retention
from prodsentinel.signals.read_queries import MetricSeriesQuery, SignalReadQueries
from prodsentinel.signals.rollup_queries import plan_rollups
from tests.signals.conftest import Stack

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SERVICES = ("api", "db", "web")
WINDOWS = (100, 3600, 86_400)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _service_items(now: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Logs, spans and points spread over 26 h back and 1 h ahead, none within 4 s of a window start;
    some a few seconds inside each window start (the partial first minute)."""
    rng = random.Random(15)
    edges = [now - timedelta(seconds=w) for w in WINDOWS]
    moments = [now + timedelta(seconds=rng.uniform(-26 * 3600, 3600)) for _ in range(1500)]
    moments = [m for m in moments if all(abs((m - e).total_seconds()) > 4 for e in edges)]
    moments += [e + timedelta(seconds=s) for e in edges for s in (5.5, 9, 30)]
    moments += [e - timedelta(seconds=s) for e in edges for s in (5.5, 30)]
    logs, spans, points = [], [], []
    for i, moment in enumerate(moments):
        service = SERVICES[i % 3]
        if i % 3 == 0:
            logs.append(
                {
                    "signal_id": str(uuid.uuid4()),
                    "service_name": service,
                    "timestamp": _iso(moment),
                    "level": ("DEBUG", "INFO", "WARN", "ERROR", "CRITICAL")[i % 5],
                    "message": "m",
                }
            )
        elif i % 3 == 1:
            spans.append(
                {
                    "signal_id": str(uuid.uuid4()),
                    "trace_id": f"t{i}",
                    "span_id": f"s{i}",
                    "service_name": service,
                    "name": "op",
                    "start_time": _iso(moment),
                    "end_time": _iso(moment + timedelta(milliseconds=5)),
                    "status": ("UNSET", "OK", "ERROR")[i % 3 // 1 % 3 if i % 7 else 2],
                }
            )
        else:
            points.append({"name": "cpu", "value": 1.0, "service_name": service, "timestamp": _iso(moment)})
    return logs, spans, points


async def _services_definition(stack: Stack, since: datetime) -> list[dict[str, Any]]:
    sql = """
SELECT service_name, max(ts) AS last_seen,
       count(*) FILTER (WHERE sig = 1) AS logs, count(*) FILTER (WHERE sig = 2) AS spans,
       count(*) FILTER (WHERE sig = 3) AS metrics, count(*) FILTER (WHERE err) AS errors
FROM (
    SELECT service_name, "timestamp" AS ts, 1 AS sig, level >= 40 AS err FROM logs
    WHERE project_id = :p AND "timestamp" >= :since
    UNION ALL
    SELECT service_name, start_time, 2, status = 2 FROM spans WHERE project_id = :p AND start_time >= :since
    UNION ALL
    SELECT service_name, "timestamp", 3, false FROM metric_points
    WHERE project_id = :p AND "timestamp" >= :since
) AS s
GROUP BY service_name ORDER BY service_name
"""
    async with stack.sessions() as session:
        rows = (await session.execute(text(sql), {"p": stack.project_id, "since": since})).all()
    return [
        {
            "service_name": row.service_name,
            "last_seen": _iso(row.last_seen),
            "logs": row.logs,
            "spans": row.spans,
            "metrics": row.metrics,
            "error_rate": row.errors / (row.logs + row.spans) if row.logs + row.spans else 0.0,
        }
        for row in rows
    ]


class TestServiceStatistics:
    async def test_services_equal_definition(self, stack: Stack) -> None:
        now = utcnow()
        logs, spans, points = _service_items(now)
        await stack.post("logs", logs)
        await stack.post("traces", spans)
        await stack.post("metrics", points)
        await stack.post("logs", logs[:100])  # duplicates: stored once, counted once
        await stack.post("metrics", points[:50])
        for window in WINDOWS:
            expected = await _services_definition(stack, now - timedelta(seconds=window))
            assert expected, window
            body = await stack.get("/api/v1/services", window=window)
            for item in body["items"]:
                item["last_seen"] = _iso(datetime.fromisoformat(item["last_seen"].replace("Z", "+00:00")))
            assert body["items"] == expected, window


def _points(t0: datetime) -> list[dict[str, Any]]:
    """3 h of points every 7 s for two services and two label sets; values are multiples of 0.5 (every
    partial sum is exact, so avg and sum are bit-identical whatever the summation order)."""
    rng = random.Random(7)
    points = []
    for i in range(0, 3 * 3600, 7):
        for service in ("api", "db"):
            for region in ("eu", "us"):
                points.append(
                    {
                        "name": "latency",
                        "service_name": service,
                        "labels": {"region": region, "host": f"h{i % 3}"},
                        "value": rng.randrange(-200, 2000) / 2,
                        "timestamp": _iso(t0 + timedelta(seconds=i, milliseconds=rng.randrange(1000))),
                    }
                )
    return points


async def _series_definition(stack: Stack, params: dict[str, Any]) -> list[dict[str, Any]]:
    agg = {"avg": "avg", "min": "min", "max": "max", "sum": "sum", "count": "count"}[params["agg"]]
    conditions = ["project_id = :p", "name = :name", '"timestamp" >= :since', '"timestamp" < :until']
    values: dict[str, Any] = {
        "p": stack.project_id,
        "name": params["name"],
        "since": datetime.fromisoformat(params["since"].replace("Z", "+00:00")),
        "until": datetime.fromisoformat(params["until"].replace("Z", "+00:00")),
        "step": timedelta(seconds=params["step"]),
    }
    if "service" in params:
        conditions.append("service_name = :service")
        values["service"] = params["service"]
    if "labels" in params:
        key, _, value = params["labels"].partition(":")
        conditions.append("labels ->> :lk = :lv")
        values.update(lk=key, lv=value)
    sql = (
        f"SELECT date_bin(:step, \"timestamp\", timestamptz '1970-01-01 00:00:00+00') AS ts, "
        f"{agg}(value)::float8 AS value FROM metric_points WHERE {' AND '.join(conditions)} "
        "GROUP BY 1 ORDER BY 1"
    )
    async with stack.sessions() as session:
        rows = (await session.execute(text(sql), values)).all()
    return [{"ts": _iso(row.ts), "value": row.value} for row in rows]


T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


class TestMetricSeries:
    async def test_series_equal_definition(self, stack: Stack) -> None:
        await stack.post("metrics", _points(T0))
        windows = [
            (T0, T0 + timedelta(hours=3)),  # aligned: hours and minutes only
            (T0 + timedelta(minutes=7, seconds=13.5), T0 + timedelta(hours=2, minutes=51, seconds=2)),
            (T0 + timedelta(seconds=30), T0 + timedelta(minutes=1, seconds=30)),  # cuts both sides
            (T0 + timedelta(seconds=10), T0 + timedelta(seconds=50)),  # inside one minute: raw
            (T0 - timedelta(hours=1), T0 + timedelta(hours=5)),
        ]
        for since, until in windows:
            for step in (60, 120, 300, 3600, 7200, 90):
                if (until - since).total_seconds() / step > 10_000:
                    continue
                for agg in ("avg", "min", "max", "sum", "count"):
                    for extra in ({}, {"service": "db"}, {"labels": "region:eu"}):
                        params = {
                            "name": "latency",
                            "since": _iso(since),
                            "until": _iso(until),
                            "step": step,
                            "agg": agg,
                            **extra,
                        }
                        body = await stack.get("/api/v1/metrics/series", **params)
                        expected = await _series_definition(stack, params)
                        assert body["buckets"] == expected, params

    async def test_huge_values_equal_the_raw_path(self, stack: Stack) -> None:
        """Values past float8 sums' range take the exact numeric half of the rollup, like the raw path."""
        values = [1.5e308, 1.6e308, -1e200, 3.0, 1e150, -2.5]
        points = [
            {
                "name": "huge",
                "service_name": "api",
                "value": value,
                "timestamp": _iso(T0 + timedelta(minutes=i % 3, seconds=i)),
            }
            for i, value in enumerate(values * 20)
        ]
        await stack.post("metrics", points)
        since, until = T0 - timedelta(seconds=1), T0 + timedelta(hours=2, seconds=1)
        for step in (60, 3600):
            assert plan_rollups(since, until, step) is not None
            for agg in ("avg", "sum", "min", "max", "count"):
                body = await stack.get(
                    "/api/v1/metrics/series",
                    name="huge",
                    since=_iso(since),
                    until=_iso(until),
                    step=step,
                    agg=agg,
                )
                async with stack.sessions() as session:
                    raw = await SignalReadQueries(session).metric_series(
                        MetricSeriesQuery(
                            project_id=stack.project_id,
                            name="huge",
                            agg=agg,
                            step=step,
                            since=since,
                            until=until,
                        )
                    )
                assert body["buckets"] == [{"ts": _iso(row.ts), "value": float(row.value)} for row in raw], (
                    step,
                    agg,
                )


class TestRollupPlan:
    def test_aligned_hours_use_the_hour_rollup(self) -> None:
        plan = plan_rollups(T0, T0 + timedelta(hours=3), 3600)
        assert plan is not None
        assert plan.hours == ((T0, T0 + timedelta(hours=3)),)
        assert all(lo >= hi for lo, hi in plan.raw + plan.minutes)

    def test_cut_edges_read_raw_rows(self) -> None:
        since, until = T0 + timedelta(seconds=90.5), T0 + timedelta(hours=2, seconds=5)
        plan = plan_rollups(since, until, 3600)
        assert plan is not None
        assert plan.raw == ((since, T0 + timedelta(minutes=2)), (T0 + timedelta(hours=2), until))
        assert plan.hours == ((T0 + timedelta(hours=1), T0 + timedelta(hours=2)),)
        assert plan.minutes == (
            (T0 + timedelta(minutes=2), T0 + timedelta(hours=1)),
            (T0 + timedelta(hours=2), T0 + timedelta(hours=2)),
        )

    @pytest.mark.parametrize("step", [1, 30, 90])
    def test_steps_not_made_of_minutes_are_raw(self, step: int) -> None:
        assert plan_rollups(T0, T0 + timedelta(hours=1), step) is None

    def test_window_inside_one_minute_is_raw(self) -> None:
        assert plan_rollups(T0 + timedelta(seconds=1), T0 + timedelta(seconds=59), 60) is None


class TestRollupRetention:
    async def test_retention_drops_old_rollup_buckets(self, stack: Stack) -> None:
        """Expired signals leave no rollup behind: /services over 90 days still equals the definition."""
        now = utcnow()
        old, fresh = now - timedelta(days=20), now - timedelta(hours=2)
        await stack.post(
            "logs",
            [
                {
                    "signal_id": str(uuid.uuid4()),
                    "service_name": "api",
                    "timestamp": _iso(moment + timedelta(seconds=i)),
                    "level": "ERROR",
                    "message": "m",
                }
                for moment in (old, fresh)
                for i in range(5)
            ],
        )
        await stack.post(
            "metrics",
            [
                {"name": "cpu", "value": 1.0, "service_name": "api", "timestamp": _iso(m)}
                for m in (old, fresh)
            ],
        )
        settings = Settings(database_url="unused", retention_days_logs=14, retention_days_metrics=14)
        report = await retention.run_retention(stack.sessions, settings, now=now)
        assert (
            report.rollups_deleted >= 4
        )  # minute and hour buckets of the old logs and point (+ metric rows)
        async with stack.sessions() as session:
            left = await session.scalar(
                text("SELECT count(*) FROM service_rollups WHERE project_id = :p AND bucket < :cutoff"),
                {"p": stack.project_id, "cutoff": now - timedelta(days=14)},
            )
            left_metrics = await session.scalar(
                text("SELECT count(*) FROM metric_rollups WHERE project_id = :p AND bucket < :cutoff"),
                {"p": stack.project_id, "cutoff": now - timedelta(days=14)},
            )
        assert (left, left_metrics) == (0, 0)
        body = await stack.get("/api/v1/services", window=90 * 86_400)
        assert [(i["service_name"], i["logs"], i["metrics"]) for i in body["items"]] == [("api", 5, 1)]
