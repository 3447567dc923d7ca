"""Query benchmark at scale (issue 15): the documented queries timed over HTTP at two table sizes.

    uv run python bench/query.py                                  # 20M logs, 50M points (long: hours)
    uv run python bench/query.py --logs 4000000 --points 10000000  # a smaller fill

One run, on a fresh database on the local PostgreSQL (dropped at the end):
1. fill ``--small-logs`` logs (24 h of timestamps, 12 services) and ``--small-points`` metric points
   (7 days, 2 metrics x 12 services x 2 label sets) set-based (``INSERT … SELECT generate_series`` in
   chunks, secondary indexes dropped and rollup triggers disabled meanwhile, then the indexes built and
   the rollups recomputed, as after any bulk load);
2. start the real service (granian, 1 worker), time each query ``--repeat`` times from outside over
   HTTP (keep-alive), and measure the ingest rate (JSON arrays of 1,000 logs from 4 connections);
3. fill up to ``--logs`` / ``--points`` and do 2. again;
4. with ``--core``, at the first size: the search queries and the ingest rate with the core fallback
   index instead of pg_trgm (what the embedded server uses; building it takes ~60 us per message);
5. the ingest rate again without the rollup triggers, then also without the trigram index (their cost);
6. print p50/p95 per query and size side by side, the ingest rates, and ``EXPLAIN (ANALYZE, BUFFERS)``
   of the search and rollup statements at the full size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # migrations.versions (the core index definition)

CHUNK = 500_000

FILL_LOGS = """
INSERT INTO logs (project_id, signal_id, trace_id, service_name, "timestamp", level, message, attributes)
SELECT $1, gen_random_uuid(),
       CASE WHEN g % 3 = 0 THEN md5(g::text) END,
       'svc-' || (g % 12),
       $2::timestamptz - make_interval(secs => (hashint % 86400000) / 1000.0),
       (ARRAY[10, 20, 20, 20, 30, 40, 50])[1 + (g % 7)::int],
       CASE (g / 7) % 6
           WHEN 0 THEN 'GET /api/v1/orders/' || (hashint % 100000) || ' completed in ' || (g % 900) || ' ms'
           WHEN 1 THEN 'db timeout after ' || (g % 5000) || ' ms on shard ' || (g % 16)
           WHEN 2 THEN 'user ' || (hashint % 50000) || ' logged in from 10.' || (g % 250) || '.'
                       || (g % 7) || '.1'
           WHEN 3 THEN 'cache miss for key session:' || substr(md5((g * 3)::text), 1, 16)
           WHEN 4 THEN 'payment ord-' || (hashint % 1000000) || ' declined: insufficient funds'
           ELSE 'retrying request ' || substr(md5((g * 5)::text), 1, 12) || ' attempt ' || (g % 5)
       END,
       '{}'::jsonb
FROM (SELECT g, abs(hashint8(g)) AS hashint FROM generate_series($3::bigint, $4::bigint) AS g) AS s
"""

FILL_POINTS = """
INSERT INTO metric_points (project_id, signal_id, name, service_name, "timestamp", value, labels)
SELECT $1, gen_random_uuid(),
       CASE WHEN g % 2 = 0 THEN 'http_latency_ms' ELSE 'cpu_percent' END,
       'svc-' || ((g / 2) % 12),
       $2::timestamptz - make_interval(secs => (abs(hashint8(g)) % 604800000) / 1000.0),
       (abs(hashint8(g * 7)) % 100000) / 100.0,
       jsonb_build_object('region', CASE WHEN (g / 24) % 2 = 0 THEN 'eu' ELSE 'us' END)
FROM generate_series($3::bigint, $4::bigint) AS g
"""

ROLLUP_TRIGGERS = ("logs", "spans", "metric_points")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(database_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        "PRODSENTINEL_INPROCESS_WORKERS": "0",
        "PRODSENTINEL_AUTO_MIGRATE": "0",
        "PRODSENTINEL_RATE_LIMIT": "1000000/minute",
        "PYTHONPATH": str(ROOT / "src"),
    }
    command = [
        sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1", "--loop", "uvloop", "--http", "1",
        "--log-level", "warning", "--no-access-log", "prodsentinel.app:create_app",
    ]  # fmt: skip
    server = subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            raise SystemExit("the server exited during start")
        time.sleep(0.3)
    stop_server(server)
    raise SystemExit("the server did not become live within 90 s")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def queries(now: datetime, trace_id: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """The documented queries; every log query covers the last 24 h."""
    day = {"since": iso(now - timedelta(hours=24)), "until": iso(now + timedelta(minutes=5))}
    week = {"since": iso(now - timedelta(days=7)), "until": iso(now)}
    return {
        "logs, no filter": ("/api/v1/logs", day),
        "search common (q=timeout after)": ("/api/v1/logs", {**day, "q": "timeout after"}),
        "search mixed case (q=TIMEOUT)": ("/api/v1/logs", {**day, "q": "TIMEOUT"}),
        "search rare (q=ord-424242 )": ("/api/v1/logs", {**day, "q": "ord-424242 "}),
        "search no match (q=no such needle)": ("/api/v1/logs", {**day, "q": "no such needle"}),
        "search + service + level": (
            "/api/v1/logs",
            {**day, "q": "declined", "service": "svc-3", "level": "error"},
        ),
        "by service": ("/api/v1/logs", {**day, "service": "svc-5"}),
        "by level (critical)": ("/api/v1/logs", {**day, "level": "critical"}),
        "by trace": ("/api/v1/logs", {**day, "trace_id": trace_id}),
        "/services 1 h": ("/api/v1/services", {"window": 3600}),
        "/services 24 h": ("/api/v1/services", {"window": 86400}),
        "series 24 h step 60 (one service)": (
            "/api/v1/metrics/series",
            {
                "name": "http_latency_ms",
                "service": "svc-4",
                "since": iso(now - timedelta(hours=24)),
                "until": iso(now),
                "step": 60,
            },
        ),
        "series 24 h step 300 (all services)": (
            "/api/v1/metrics/series",
            {
                "name": "http_latency_ms",
                "since": iso(now - timedelta(hours=24)),
                "until": iso(now),
                "step": 300,
            },
        ),
        "series 7 d step 3600 (one service)": (
            "/api/v1/metrics/series",
            {"name": "http_latency_ms", "service": "svc-4", **week, "step": 3600, "agg": "max"},
        ),
        "series 7 d step 3600 (all, labels)": (
            "/api/v1/metrics/series",
            {"name": "cpu_percent", "labels": "region:eu", **week, "step": 3600},
        ),
    }


async def time_queries(
    port: int, key: str, now: datetime, trace_id: str, repeat: int, only: str | None = None
) -> dict[str, tuple[float, float, int]]:
    """p50/p95 (ms) and item count per query; each query ``repeat`` times after one warm-up."""
    results: dict[str, tuple[float, float, int]] = {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": key}) as client:
        for name, (path, params) in queries(now, trace_id).items():
            if only and only not in name:
                continue
            response = await client.get(path, params=params, timeout=120)
            assert response.status_code == 200, response.text
            body = response.json()
            count = len(body.get("items", body.get("buckets", [])))
            latencies = []
            for _ in range(repeat):
                started = time.perf_counter()
                response = await client.get(path, params=params, timeout=120)
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200
            results[name] = (percentile(latencies, 0.5), percentile(latencies, 0.95), count)
            print(
                f"  {name:40s} p50 {results[name][0]:8.1f} ms  p95 {results[name][1]:8.1f} ms  items {count}"
            )
    return results


async def ingest_rate(port: int, key: str, seconds: float, clients: int = 4) -> float:
    """Logs/s stored by POSTs of 1,000-log JSON arrays from ``clients`` connections."""
    now = datetime.now(UTC)
    stored = 0
    deadline = time.monotonic() + seconds

    async def worker(n: int) -> None:
        nonlocal stored
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": key}
        ) as client:
            i = 0
            while time.monotonic() < deadline:
                batch = [
                    {
                        "signal_id": str(uuid.uuid4()),
                        "service_name": f"svc-{j % 12}",
                        "timestamp": iso(now - timedelta(seconds=j % 600)),
                        "level": ("INFO", "WARN", "ERROR")[j % 3],
                        "message": f"bench ingest {n}-{i}-{j} db timeout after {j} ms",
                    }
                    for j in range(1000)
                ]
                response = await client.post("/api/v1/ingest/logs", content=json.dumps(batch), timeout=60)
                if response.status_code == 202:
                    stored += response.json()["accepted"]
                i += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(n) for n in range(clients)))
    return stored / (time.monotonic() - started)


def migration() -> Any:
    """This issue's migration module: the index, trigram function and rollup backfill SQL."""
    from importlib import import_module

    return import_module("migrations.versions.2026-12-02_query_scale_7b3e9d1c4a20")


async def fill(dsn: str, project_id: uuid.UUID, now: datetime, logs: range, points: range) -> float:
    """Bulk-load rows set-based in chunks of ``CHUNK``, then rebuild what ingest maintains.

    Like any bulk load: the secondary indexes and unique constraints (the trigram index among them)
    are dropped and the rollup triggers disabled while loading, then the indexes are built once and
    the rollups recomputed from the tables (the migration's backfill SQL), which is what the triggers
    would have produced statement by statement.
    """
    connection = await asyncpg.connect(dsn)
    started = time.monotonic()
    try:
        # every index and unique constraint but the primary key, as the schema defines them now
        indexes = await connection.fetch(
            "SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS definition, "
            "c.conname, c.conrelid::regclass::text AS tbl, pg_get_constraintdef(c.oid) AS condef "
            "FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.contype = 'u' "
            "WHERE i.indrelid IN ('logs'::regclass, 'metric_points'::regclass) AND NOT i.indisprimary"
        )
        for index in indexes:
            if index["conname"]:
                await connection.execute(f'ALTER TABLE {index["tbl"]} DROP CONSTRAINT "{index["conname"]}"')
            else:
                await connection.execute(f"DROP INDEX {index['name']}")
        for table in ROLLUP_TRIGGERS:
            await connection.execute(f"ALTER TABLE {table} DISABLE TRIGGER ps_rollup_{table}")
        for sql, rows in ((FILL_LOGS, logs), (FILL_POINTS, points)):
            for lo in range(rows.start, rows.stop, CHUNK):
                await connection.execute(sql, project_id, now, lo, min(rows.stop, lo + CHUNK) - 1)
        await connection.execute("SET maintenance_work_mem = '256MB'")
        for index in indexes:
            if index["conname"]:
                await connection.execute(
                    f'ALTER TABLE {index["tbl"]} ADD CONSTRAINT "{index["conname"]}" {index["condef"]}'
                )
            else:
                await connection.execute(index["definition"])
        await connection.execute("TRUNCATE service_rollups, metric_rollups")
        await connection.execute(migration().BACKFILL_SERVICE_ROLLUPS)
        await connection.execute(migration().BACKFILL_METRIC_ROLLUPS)
        for table in ROLLUP_TRIGGERS:
            await connection.execute(f"ALTER TABLE {table} ENABLE TRIGGER ps_rollup_{table}")
        await connection.execute("VACUUM ANALYZE logs, metric_points, service_rollups, metric_rollups")
    finally:
        await connection.close()
    return time.monotonic() - started


async def core_search(dsn: str, url: str, port: int, key: str, now: datetime, repeat: int) -> Any:
    """The search queries with the core fallback index instead of pg_trgm (then pg_trgm again)."""
    connection = await asyncpg.connect(dsn)
    try:
        started = time.monotonic()
        await connection.execute("DROP INDEX ix_logs_message_trgm")
        await connection.execute(migration().TRIGRAMS_FUNCTION)
        await connection.execute(
            "CREATE INDEX ix_logs_message_trigrams ON logs USING gin (ps_trigrams(message))"
        )
        await connection.execute("ANALYZE logs")
        print(f"core index built in {time.monotonic() - started:.0f} s", flush=True)
        server = start_server(url, port)
        try:
            results = await time_queries(port, key, now, "", repeat, only="search")
            rate = await ingest_rate(port, key, 10)
            print(f"  ingest with the core index: {rate:,.0f} logs/s", flush=True)
        finally:
            stop_server(server)
        await connection.execute("DROP INDEX ix_logs_message_trigrams")
        await connection.execute("CREATE INDEX ix_logs_message_trgm ON logs USING gin (message gin_trgm_ops)")
    finally:
        await connection.close()
    return results, rate


async def explain(dsn: str, project_id: uuid.UUID, now: datetime) -> str:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of the statements the API sends for search and the rollups."""
    from prodsentinel.signals.rollup_queries import ceil_to

    since = now - timedelta(hours=24)
    search = (
        "SELECT id FROM logs WHERE project_id = $1 AND message ILIKE $2 ESCAPE '\\' "
        'AND "timestamp" >= $3 ORDER BY "timestamp" DESC, id DESC LIMIT 101'
    )
    statements = {
        "search rare (pg_trgm)": (
            search,
            [project_id, "%ord-424242 %", since],
        ),
        "search no match (pg_trgm)": (
            search,
            [project_id, "%no such needle%", since],
        ),
        "search common (pg_trgm)": (
            search,
            [project_id, "%timeout after%", since],
        ),
        "/services 24 h rollup part (hours, then the minutes before the first hour)": (
            "SELECT service_name, signal, code, sum(n), max(last_seen) FROM ("
            "SELECT service_name, signal, code, n, last_seen FROM service_rollups "
            "WHERE project_id = $1 AND width_s = 3600 AND bucket >= $3 UNION ALL "
            "SELECT service_name, signal, code, n, last_seen FROM service_rollups "
            "WHERE project_id = $1 AND width_s = 60 AND bucket >= $2 AND bucket < $3) AS s GROUP BY 1, 2, 3",
            [project_id, ceil_to(since, 60), ceil_to(since, 3600)],
        ),
        "series 7 d hour rollups": (
            "SELECT bucket, sum(n), max(max_value) FROM metric_rollups WHERE project_id = $1 "
            "AND name = 'http_latency_ms' AND width_s = 3600 AND service_name = 'svc-4' "
            "AND bucket >= $2 AND bucket < $3 GROUP BY 1",
            [project_id, ceil_to(now - timedelta(days=7), 3600), now - timedelta(hours=1)],
        ),
    }
    connection = await asyncpg.connect(dsn)
    out = []
    try:
        for name, (sql, args) in statements.items():
            rows = await connection.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
            out.append(f"-- {name}\n" + "\n".join(row[0] for row in rows))
    finally:
        await connection.close()
    return "\n\n".join(out)


async def prepare(admin_url: str) -> tuple[str, str, str, uuid.UUID, str]:
    """A fresh migrated database and a read+ingest key (sqlalchemy url, dsn, key, project id, name)."""
    from prodsentinel.auth import services as auth_services
    from prodsentinel.lib.database import alchemy_config, migrate, session_scope

    name = f"ps_bench_query_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    parts = urlsplit(admin_url)
    url = f"postgresql+asyncpg://{parts.netloc}/{name}"
    config = alchemy_config(url)
    await asyncio.to_thread(migrate, config)
    async with session_scope(config.create_session_maker()) as session:  # type: ignore[arg-type]
        created = await auth_services.create_key(
            session, name="bench", scopes=["read", "ingest"], project="bench"
        )
    await config.get_engine().dispose()
    dsn = f"postgresql://{parts.netloc}/{name}"
    connection = await asyncpg.connect(dsn)
    project_id = await connection.fetchval("SELECT id FROM projects WHERE name = 'bench'")
    await connection.close()
    return url, dsn, created.key, project_id, name


async def run(args: argparse.Namespace) -> None:
    url, dsn, key, project_id, name = await prepare(args.admin_url)
    now = datetime.now(UTC).replace(microsecond=0)
    port = free_port()
    sizes = [(args.small_logs, args.small_points), (args.logs, args.points)]
    results: dict[str, dict[str, tuple[float, float, int]]] = {}
    rates: dict[str, float] = {}
    filled = (0, 0)
    try:
        for logs, points in sizes:
            took = await fill(dsn, project_id, now, range(filled[0], logs), range(filled[1], points))
            filled = (logs, points)
            label = f"{logs / 1e6:g}M logs / {points / 1e6:g}M points"
            print(f"filled {label} in {took:.0f} s", flush=True)
            connection = await asyncpg.connect(dsn)
            trace_id = await connection.fetchval("SELECT md5(3::text)")
            await connection.close()
            server = start_server(url, port)
            try:
                results[label] = await time_queries(port, key, now, trace_id, args.repeat)
                rates[label] = await ingest_rate(port, key, args.ingest_seconds)
                print(f"  ingest (indexes + rollups): {rates[label]:,.0f} logs/s", flush=True)
            finally:
                stop_server(server)
            if args.core and logs == args.small_logs:
                core_label = f"core fallback, {logs / 1e6:g}M logs"
                results[core_label], rates[core_label] = await core_search(
                    dsn, url, port, key, now, args.repeat
                )
        plans = await explain(dsn, project_id, now)
        print("\nEXPLAIN (ANALYZE, BUFFERS) at the full size:\n" + plans, flush=True)
        steps = {
            "full size, without the rollup triggers (trigram index kept)": [
                f"DROP TRIGGER ps_rollup_{table} ON {table}" for table in ROLLUP_TRIGGERS
            ],
            "full size, without the rollup triggers and the trigram index": [
                "DROP INDEX ix_logs_message_trgm"
            ],
        }
        for label, statements in steps.items():
            connection = await asyncpg.connect(dsn)
            try:
                for statement in statements:
                    await connection.execute(statement)
            finally:
                await connection.close()
            server = start_server(url, port)
            try:
                rates[label] = await ingest_rate(port, key, args.ingest_seconds)
                print(f"  ingest, {label}: {rates[label]:,.0f} logs/s", flush=True)
            finally:
                stop_server(server)
    finally:
        admin = await asyncpg.connect(args.admin_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    labels = list(results)
    print("\nquery".ljust(42) + "".join(f"| {label[:34]:34s} p50 / p95 ms " for label in labels))
    for query in queries(now, ""):
        cells = []
        for label in labels:
            p50, p95, _ = results[label].get(query, (float("nan"), float("nan"), 0))
            cells.append(f"| {p50:>38.1f} / {p95:<8.1f}")
        print(query.ljust(41) + "".join(cells))
    print("\ningest rate (JSON arrays of 1,000 logs, 4 connections):")
    for label, rate in rates.items():
        print(f"  {label}: {rate:,.0f} logs/s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--logs", type=int, default=20_000_000)
    parser.add_argument("--points", type=int, default=50_000_000)
    parser.add_argument("--small-logs", type=int, default=1_000_000)
    parser.add_argument("--small-points", type=int, default=2_500_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--ingest-seconds", type=float, default=15.0)
    parser.add_argument("--core", action="store_true", help="also time search with the core fallback index")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
