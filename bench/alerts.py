"""Benchmark: one alert-evaluation pass over 1,000 enabled policies and 1M stored logs.

    uv run python bench/alerts.py [--logs 1000000] [--policies 1000] [--passes 3]
    uv run python bench/alerts.py --routing [--passes 5]   # the routing case (SPEC §13), see below

Creates a fresh database on the PostgreSQL server of ``BENCH_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``; the embedded server when that is unreachable),
migrates it, seeds it set-based with ``generate_series`` (1M logs over the last hour in one project,
plus 200k spans, 200k metric points, anomalies and incidents), creates the policies (mixed kinds), one
webhook channel (so every notifying transition also writes its outbox row), and times
``alerts.services.run_evaluation`` - the exact code path of the cron job - several times. The
database is dropped at the end. Runtime is bounded: about a minute on a 2-core machine.

``--routing``: 1,000 alerts that all fire in one evaluation pass, spread over 100 groups (label
``group``), measured side by side in one run: a project routed as before (one webhook channel) and a
project with routing (the same webhook, a channel grouping by ``group``, 50 escalations whose
matchers split the alerts between them, each with two steps over two channels). Each pass uses a
fresh pair of projects (so every pass fires 1,000 alerts) and alternates which one goes first. It
reports the evaluation + routing pass of each, the added cost, and the first group flush (100 group
notifications) timed on its own. The routed pass includes issue 11's 20 inhibit rules (``add_inhibit_rules``).
"""

# ruff: noqa: E501  (long SQL literals read better unwrapped)
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import socket
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import structlog
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from prodsentinel.alerts import services
from prodsentinel.alerts.models import AlertPolicy
from prodsentinel.alerts.policies import normalise
from prodsentinel.lib.database import alchemy_config, migrate

SERVICES = [f"svc-{i}" for i in range(20)]
MESSAGES = [
    "request timeout after 30s",
    "db connection refused",
    "GET /api/orders 200",
    "cache miss for key user:42",
    "payment declined by upstream",
    "retrying publish to queue",
    "slow query detected",
]
METRICS = [f"metric_{i}" for i in range(10)]


def server_url() -> str:
    url = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=1):
            return url
    except OSError:
        os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
        from prodsentinel.embedded import embedded_database_url

        embedded = embedded_database_url(Path(tempfile.mkdtemp(prefix="ps-bench-")))
        return "postgresql://" + embedded.split("://", 1)[1]


async def seed(dsn: str, project_id: uuid.UUID, now: datetime, logs: int) -> dict[str, float]:
    """Set-based seeding: each table is filled by one INSERT ... SELECT FROM generate_series."""
    timings: dict[str, float] = {}
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "INSERT INTO projects (id, name, created_at, updated_at) VALUES ($1, 'bench', now(), now())",
            project_id,
        )
        statements = {
            "logs": f"""
                INSERT INTO logs (project_id, signal_id, service_name, timestamp, level, message)
                SELECT $1, gen_random_uuid(), 'svc-' || (g % 20),
                       $2::timestamptz - (g::float8 * 3600000 / {logs}) * interval '1 millisecond',
                       (ARRAY[10, 20, 20, 20, 30, 40, 50])[1 + (g % 7)],
                       (ARRAY{MESSAGES!r})[1 + (g / 7) % {len(MESSAGES)}]
                FROM generate_series(1, {logs}) g
            """,
            "spans": """
                INSERT INTO spans (project_id, signal_id, trace_id, span_id, service_name, name, start_time,
                                   end_time, duration_ms, status)
                SELECT $1, gen_random_uuid(), md5(g::text), left(md5(g::text), 16), 'svc-' || (g % 20), 'GET /',
                       $2::timestamptz - (g * 18) * interval '1 millisecond',
                       $2::timestamptz - (g * 18) * interval '1 millisecond' + interval '5 milliseconds',
                       5, CASE WHEN g % 17 = 0 THEN 2 ELSE 1 END
                FROM generate_series(1, 200000) g
            """,
            "metric_points": """
                INSERT INTO metric_points (project_id, signal_id, name, service_name, timestamp, value, labels)
                SELECT $1, gen_random_uuid(), 'metric_' || (g % 10), 'svc-' || ((g / 10) % 20),
                       $2::timestamptz - (g * 18) * interval '1 millisecond',
                       (g % 1000)::float8, jsonb_build_object('route', '/r' || (g % 5))
                FROM generate_series(1, 200000) g
            """,
            "anomalies": """
                INSERT INTO anomalies (id, project_id, metric_name, service_name, labels, labels_key, ts, value,
                                       expected, score, method, detected_at)
                SELECT gen_random_uuid(), $1, 'metric_' || (g % 10), 'svc-' || (g % 20), '{}', '{}',
                       $2::timestamptz - g * interval '3 seconds', 100, 10, 9, 'mad', $2::timestamptz
                FROM generate_series(1, 1000) g
            """,
            "incidents": """
                INSERT INTO incidents (id, project_id, fingerprint, title, service_name, source, severity, status,
                                       count, first_seen, last_seen, sample_trace_ids, reopened_count,
                                       created_at, updated_at)
                SELECT gen_random_uuid(), $1, md5(g::text), 'boom', 'svc-' || (g % 20), 'log',
                       (ARRAY['low', 'medium', 'high', 'critical'])[1 + g % 4],
                       (ARRAY['open', 'acknowledged', 'resolved'])[1 + g % 3], 1,
                       $2::timestamptz - interval '1 hour', $2::timestamptz, '{}', 0, now(), now()
                FROM generate_series(1, 50) g
            """,
        }
        for table, sql in statements.items():
            started = time.perf_counter()
            await connection.execute(sql, project_id, now)
            timings[table] = time.perf_counter() - started
        await connection.execute(
            """INSERT INTO notification_channels (id, project_id, name, url, min_severity, enabled, created_at,
                                                  updated_at)
               VALUES (gen_random_uuid(), $1, 'bench-hook', 'http://127.0.0.1:9/hook', 'low', true, now(), now())""",
            project_id,
        )
        started = time.perf_counter()
        await connection.execute("ANALYZE")
        timings["analyze"] = time.perf_counter() - started
    finally:
        await connection.close()
    return timings


def policies(project_id: uuid.UUID, count: int, rng: random.Random) -> list[dict[str, Any]]:
    """Mixed kinds: 40% log_rate, 20% error_rate, 20% metric_threshold, 10% anomaly, 10% incident."""
    rows = []
    for i in range(count):
        share = i % 10
        raw: dict[str, Any] = {"name": f"policy-{i}", "severity": rng.choice(["low", "medium", "high"])}
        raw["window_seconds"] = rng.choice([60, 300, 900])
        raw["for_seconds"] = rng.choice([0, 0, 60])
        if share < 4:
            raw.update(kind="log_rate", threshold=rng.choice([10, 1000, 100000]))
            if rng.random() < 0.7:
                raw["service"] = rng.choice(SERVICES)
            raw["level"] = rng.choice(["WARN", "ERROR", "CRITICAL"])
            if rng.random() < 0.25:
                raw["q"] = rng.choice(["timeout", "refused", "declined", "/^db conn.*$/", "/(slow|retry)/"])
        elif share < 6:
            raw.update(kind="error_rate", service=rng.choice(SERVICES), threshold=rng.choice([0.01, 0.5]))
        elif share < 8:
            raw.update(
                kind="metric_threshold",
                metric=rng.choice(METRICS),
                agg=rng.choice(["avg", "min", "max", "sum", "count", "p50", "p95", "p99"]),
                threshold=rng.choice([10.0, 500.0, 990.0]),
            )
            if rng.random() < 0.5:
                raw["service"] = rng.choice(SERVICES)
            if rng.random() < 0.3:
                raw["match_labels"] = {"route": f"/r{rng.randrange(5)}"}
        elif share < 9:
            raw.update(kind="anomaly", metric=rng.choice(METRICS))
            if rng.random() < 0.5:
                raw["service"] = rng.choice(SERVICES)
        else:
            raw.update(kind="incident", min_severity=rng.choice(["low", "medium", "high", "critical"]))
        spec = normalise(raw)
        rows.append({"id": uuid.uuid4(), "project_id": project_id, **spec.columns()})
    return rows


async def profile(session_maker: async_sessionmaker[Any], now: datetime) -> None:
    """Time each kind's value query alone (diagnostics for ``--profile``)."""
    from sqlalchemy import select

    async with session_maker() as session:
        loaded = list(await session.scalars(select(AlertPolicy)))
        for kind in ("log_rate", "error_rate", "metric_threshold", "anomaly", "incident"):
            group = [p for p in loaded if p.kind == kind]
            started = time.perf_counter()
            await services._VALUE_QUERIES[kind](session, services._policy_rows(kind, group), now)
            print(f"  {kind}: {len(group)} policies in {(time.perf_counter() - started) * 1000:.0f} ms")


async def run(args: argparse.Namespace) -> None:
    server = server_url()
    name = f"ps_bench_alerts_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    parts = urlsplit(server)
    query = f"?{parts.query}" if parts.query else ""
    dsn = f"postgresql://{parts.netloc}/{name}{query}"
    url = f"postgresql+asyncpg://{parts.netloc}/{name}{query}"
    try:
        await asyncio.to_thread(migrate, alchemy_config(url))
        now = datetime.now(UTC).replace(microsecond=0)
        project_id = uuid.uuid4()
        started = time.perf_counter()
        timings = await seed(dsn, project_id, now, args.logs)
        print(
            f"seeded in {time.perf_counter() - started:.1f}s: "
            + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        )

        engine = create_async_engine(url, pool_size=2)
        session_maker = async_sessionmaker(engine, expire_on_commit=False)
        async with session_maker() as session, session.begin():
            await session.execute(insert(AlertPolicy), policies(project_id, args.policies, random.Random(7)))
        if args.profile:
            await profile(session_maker, now)
        durations = []
        for n in range(args.passes):
            summary = await services.run_evaluation(
                session_maker, interval_seconds=30, now=now + timedelta(seconds=n)
            )
            durations.append(summary.duration_ms)
            print(
                f"pass {n + 1}: {summary.duration_ms:.0f} ms - {summary.evaluated} policies, "
                f"{summary.transitions} transitions ({summary.fired} fired, {summary.notified} outbox events)"
            )
        await engine.dispose()
        print(
            f"RESULT: {args.policies} enabled policies over {args.logs:,} logs: "
            f"median {statistics.median(durations):.0f} ms, min {min(durations):.0f} ms, max {max(durations):.0f} ms"
        )
    finally:
        admin = await asyncpg.connect(server)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# --- the routing case (--routing) ----------------------------------------------------------------------

GROUPS = 100
ESCALATIONS = 50
INHIBIT_RULES = 20


async def seed_routing_project(
    connection: asyncpg.Connection,
    session_maker: async_sessionmaker[Any],
    *,
    routed: bool,
    alerts: int,
    now: datetime,
) -> uuid.UUID:
    """A project whose ``alerts`` policies (kind ``incident``, one open incident) all fire at once."""
    project_id = uuid.uuid4()
    await connection.execute(
        "INSERT INTO projects (id, name, created_at, updated_at) VALUES ($1, $2, now(), now())",
        project_id,
        f"bench-{'routed' if routed else 'plain'}-{project_id.hex[:8]}",
    )
    await connection.execute(
        """INSERT INTO incidents (id, project_id, fingerprint, title, service_name, source, severity, status, count,
                                  first_seen, last_seen, sample_trace_ids, reopened_count, created_at, updated_at)
           VALUES (gen_random_uuid(), $1, 'f', 'boom', 'svc-0', 'log', 'high', 'open', 1, $2, $2, '{}', 0, $2, $2)""",
        project_id,
        now - timedelta(seconds=5),
    )
    channel = """INSERT INTO notification_channels (id, project_id, name, url, min_severity, enabled, group_by,
                                                     created_at, updated_at)
                 VALUES ($1, $2, $3, 'http://127.0.0.1:9/hook', 'low', true, $4, now(), now())"""
    await connection.execute(channel, uuid.uuid4(), project_id, "bench-hook", None)
    if routed:
        await connection.execute(channel, uuid.uuid4(), project_id, "grouped", ["group"])
        oncall, manager = uuid.uuid4(), uuid.uuid4()
        await connection.execute(channel, oncall, project_id, "oncall", None)
        await connection.execute(channel, manager, project_id, "manager", None)
        steps = [
            {"after_seconds": 0, "channel_ids": [str(oncall)]},
            {"after_seconds": 300, "channel_ids": [str(manager)]},
        ]
        for j in range(ESCALATIONS):  # escalation j takes groups j and j + 50: each alert matches one
            matchers = [{"name": "group", "op": "=~", "value": f"g{j}|g{j + ESCALATIONS}"}]
            await connection.execute(
                """INSERT INTO escalation_policies (project_id, id, name, matchers, steps, repeat, repeat_after_seconds,
                                                    created_at, updated_at)
                   VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, 1, 300, now(), now())""",
                project_id, uuid.uuid4(), f"esc-{j}", json.dumps(matchers), json.dumps(steps),
            )  # fmt: skip
        await add_inhibit_rules(connection, project_id)
    rows = []
    for i in range(alerts):
        raw = {
            "name": f"policy-{i}",
            "kind": "incident",
            "severity": "high",
            "min_severity": "low",
            "labels": {"group": f"g{i % GROUPS}", "instance": f"i{i}"},
        }
        rows.append({"id": uuid.uuid4(), "project_id": project_id, **normalise(raw).columns()})
    async with session_maker() as session, session.begin():
        await session.execute(insert(AlertPolicy), rows)
    return project_id


async def add_inhibit_rules(connection: asyncpg.Connection, project_id: uuid.UUID) -> None:
    """Issue 11's 20 inhibit rules: rule k's source is the one alert ``instance=i<k>`` of group ``g<k>``, its
    targets the rest of that group (``equal: [group]``), so 20 groups of 10 have 9 alerts held back each and
    every alert of the pass is checked against every rule."""
    from prodsentinel.alerts.inhibition import parse_rule, rule_fingerprint

    for k in range(INHIBIT_RULES):
        spec = parse_rule(
            [
                {"name": "group", "op": "=", "value": f"g{k}"},
                {"name": "instance", "op": "=", "value": f"i{k}"},
            ],
            [{"name": "group", "op": "=", "value": f"g{k}"}],
            ["group"],
        )
        wire = spec.wire()
        await connection.execute(
            """INSERT INTO inhibit_rules (project_id, id, source_matchers, target_matchers, equal, fingerprint,
                                          origin, created_by, created_at)
               VALUES ($1, $2, $3::jsonb, $4::jsonb, $5::jsonb, $6, 'api', 'bench', now())""",
            project_id, uuid.uuid4(), json.dumps(wire["source_matchers"]), json.dumps(wire["target_matchers"]),
            json.dumps(wire["equal"]), rule_fingerprint(spec),
        )  # fmt: skip


async def run_routing(args: argparse.Namespace) -> None:
    from prodsentinel.alerts import evaluator
    from prodsentinel.lib.database import session_scope
    from prodsentinel.notifications import group_flush

    server = server_url()
    name = f"ps_bench_routing_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    parts = urlsplit(server)
    query = f"?{parts.query}" if parts.query else ""
    dsn = f"postgresql://{parts.netloc}/{name}{query}"
    url = f"postgresql+asyncpg://{parts.netloc}/{name}{query}"
    try:
        await asyncio.to_thread(migrate, alchemy_config(url))
        engine = create_async_engine(url, pool_size=2)
        session_maker = async_sessionmaker(engine, expire_on_commit=False)
        connection = await asyncpg.connect(dsn)
        results: dict[str, list[float]] = {"plain": [], "routed": [], "flush": []}
        try:
            for n in range(args.passes):
                now = datetime.now(UTC)
                projects = {
                    kind: await seed_routing_project(
                        connection, session_maker, routed=kind == "routed", alerts=args.alerts, now=now
                    )
                    for kind in ("plain", "routed")
                }
                await connection.execute("ANALYZE")
                order = ["plain", "routed"] if n % 2 == 0 else ["routed", "plain"]
                line = []
                for kind in order:
                    summary = await evaluator.run_evaluation(
                        session_maker, interval_seconds=30, now=now, project_id=projects[kind]
                    )
                    assert summary.fired == args.alerts, summary
                    results[kind].append(summary.duration_ms)
                    line.append(f"{kind} {summary.duration_ms:.0f} ms ({summary.fired} fired)")
                started = time.perf_counter()
                async with session_scope(session_maker) as session:
                    flushed, notified = await group_flush.flush_batch(
                        session, now=datetime.now(UTC) + timedelta(seconds=31), limit=1000
                    )
                results["flush"].append((time.perf_counter() - started) * 1000)
                counts = await connection.fetchrow(
                    """SELECT (SELECT count(*) FROM outbox_items WHERE project_id = $1) AS items,
                              (SELECT count(*) FROM escalation_steps WHERE project_id = $1) AS steps,
                              (SELECT count(*) FROM notification_group_alerts WHERE project_id = $1) AS grouped""",
                    projects["routed"],
                )
                print(
                    f"pass {n + 1}: " + ", ".join(line) + f"; routed wrote {counts['items']} outbox items, "
                    f"{counts['steps']} escalation steps, {counts['grouped']} group members; "
                    f"first flush {results['flush'][-1]:.0f} ms ({flushed} groups, {notified} notifications)"
                )
        finally:
            await connection.close()
            await engine.dispose()
        plain, routed = statistics.median(results["plain"]), statistics.median(results["routed"])
        print(
            f"RESULT: {args.alerts} firing alerts, {GROUPS} groups, {ESCALATIONS} escalations: "
            f"evaluation without routing median {plain:.0f} ms, with routing median {routed:.0f} ms "
            f"(+{(routed / plain - 1) * 100:.0f} %); first group flush median "
            f"{statistics.median(results['flush']):.0f} ms"
        )
    finally:
        admin = await asyncpg.connect(server)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    # The services log through structlog; without the app's config it would print debug lines.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--logs", type=int, default=1_000_000)
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also time each kind's query alone")
    parser.add_argument("--routing", action="store_true", help="the routing case (grouping + escalations)")
    parser.add_argument("--alerts", type=int, default=1000, help="--routing: alerts firing per pass")
    args = parser.parse_args()
    asyncio.run(run_routing(args) if args.routing else run(args))


if __name__ == "__main__":
    sys.exit(main())
