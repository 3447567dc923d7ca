"""Growth benchmark: does ingest slow down as the log table fills? (SPEC §16, issue 14)

    uv run python bench/growth.py                        # 20 million stored logs (~30-40 min on 2 cores)
    uv run python bench/growth.py --fill 5000000         # a smaller fill
    uv run python bench/growth.py --fill 0 --batches 20  # a smoke run

One run, one fresh database on the local PostgreSQL, the real service on granian (``bench/ingest.py``'s
server and load generator, one worker like its default):
1. *empty*: batch ingest (``--batches`` POSTs of ``--batch-size`` logs from ``--batch-clients``
   connections) and single-event ingest (``--clients`` connections for ``--single-seconds``);
2. *fill*: ``--fill`` logs written set-based (``INSERT … SELECT … FROM generate_series``, in chunks of
   one million, one transaction each) spread evenly over the last ``--days`` days, oldest first, as
   ingest would have written them; then ``VACUUM ANALYZE`` (what autovacuum does on its own);
3. *side by side*: a second server on a second, empty database starts, and the same two measurements
   run on the full and the empty database in ``--rounds`` alternating rounds (order flipped every
   round), so both see the same background load on a shared machine; the ratio full/empty printed
   first is this one (the before/after ratio on the one database is printed too);
4. the ways of finding already stored keys, timed at full size (``dedup_options``);
5. one retention pass (``--days`` - 1 days of retention: the oldest day's partition goes) timed;
6. latency (p50/p95 over ``--query-repeats`` requests each) of the documented queries through the API.

Every acknowledged signal of both ingest phases is then checked to be stored exactly once (as in
``bench/ingest.py``). Prints rates, ratios full/empty, fill speed, and the table and index sizes. The
benchmark database is dropped at the end unless ``--keep-db``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import ingest as load  # noqa: E402  (bench/ingest.py: server, load generator, verification)

FILL_CHUNK = 1_000_000
SERVICES = load.SERVICES

FILL_SQL = """
INSERT INTO logs
    (project_id, signal_id, trace_id, span_id, service_name, timestamp, level, message, attributes)
SELECT $1::uuid, gen_random_uuid(), md5(n::text), left(md5((n + 1)::text), 16),
       (ARRAY['checkout', 'payments', 'inventory', 'gateway', 'search', 'auth'])[1 + n % 6],
       $2::timestamptz + make_interval(secs => (n - $3) * $4::float8),
       (ARRAY[10, 20, 20, 20, 30, 40])[1 + (n / 7) % 6],  -- not in step with the service
       'request ' || n || ' handled in ' || (n % 900) || ' ms for user ' || (n % 10000),
       '{"http.method": "GET", "http.status_code": 200, "region": "eu-west-1"}'::jsonb
FROM generate_series($3::bigint, $5::bigint) AS n
"""


async def fill(dsn: str, project: uuid.UUID, rows: int, days: int) -> dict[str, float]:
    """``rows`` logs evenly over ``[now - days, now - 1 min]``, oldest first, in committed chunks."""
    from prodsentinel.signals.partitions import PARTITIONED, ensure_sql, ranges_between

    connection = await asyncpg.connect(dsn)
    try:
        end = datetime.now(UTC) - timedelta(minutes=1)
        start = end - timedelta(days=days)
        interval = 86_400
        await connection.execute(
            ensure_sql(PARTITIONED["logs"], ranges_between(start, end, interval), interval)
        )
        step = (end - start).total_seconds() / max(1, rows)
        started = time.perf_counter()
        for low in range(0, rows, FILL_CHUNK):
            high = min(rows, low + FILL_CHUNK) - 1
            await connection.execute(
                FILL_SQL, project, start + timedelta(seconds=low * step), low, step, high
            )
            done = high + 1
            elapsed = time.perf_counter() - started
            print(f"  filled {done:,} logs in {elapsed:.0f} s ({done / elapsed:,.0f} rows/s)", flush=True)
        fill_seconds = time.perf_counter() - started
        started = time.perf_counter()
        await connection.execute("VACUUM ANALYZE logs")
        return {"fill": fill_seconds, "vacuum": time.perf_counter() - started}
    finally:
        await connection.close()


async def sizes(dsn: str) -> dict[str, Any]:
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            """
            SELECT count(*) AS partitions,
                   sum(pg_table_size(i.inhrelid)) AS heap, sum(pg_indexes_size(i.inhrelid)) AS indexes
            FROM pg_inherits i WHERE i.inhparent = 'logs'::regclass
            """
        )
        per_index = await connection.fetch(
            """
            SELECT pi.relname AS name, sum(pg_relation_size(c.oid)) AS bytes
            FROM pg_class pi
            JOIN pg_inherits h ON h.inhparent = pi.oid
            JOIN pg_class c ON c.oid = h.inhrelid
            WHERE pi.relkind = 'I'
              AND pi.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'logs'::regclass)
            GROUP BY pi.relname ORDER BY 2 DESC
            """
        )
        return {**dict(row), "per_index": [(r["name"], r["bytes"]) for r in per_index]}
    finally:
        await connection.close()


def ingest_phase(
    label: str, args: argparse.Namespace, server_pid: int, port: int, key: str
) -> dict[str, Any]:
    now = datetime.now(UTC)
    bodies = []
    for b in range(args.batches):
        logs = [load.make_log(now, b * args.batch_size + i) for i in range(args.batch_size)]
        bodies.append((msgspec.json.encode(logs), [log["signal_id"] for log in logs]))
    batch = load.run_client("batch", server_pid, port, key, bodies, args.batch_clients)
    single = load.run_client("single", server_pid, port, key, args.single_seconds, args.clients)
    result = {
        "batch_logs": len(batch["acked"]),
        "batch_s": batch["elapsed"],
        "single_n": len(single["latencies"]),
        "single_s": single["elapsed"],
        "batch_rate": len(batch["acked"]) / batch["elapsed"],
        "batch_p99": load.percentile(batch["latencies"], 0.99),
        "batch_statuses": batch["statuses"],
        "single_rate": len(single["latencies"]) / single["elapsed"],
        "single_p99": load.percentile(single["latencies"], 0.99),
        "single_statuses": single["statuses"],
        "machine_busy": (
            batch["machine_busy"] * batch["elapsed"] + single["machine_busy"] * single["elapsed"]
        )
        / (batch["elapsed"] + single["elapsed"]),
        "postgres_us_per_log": batch["postgres_cpu"] / max(1, len(batch["acked"])) * 1e6,
        "acked": batch["acked"] + single["acked"],
    }
    print(
        f"{label:6}  batch {result['batch_rate']:,.0f} logs/s (p99 {result['batch_p99']:.0f} ms, "
        f"{result['batch_statuses']}), single {result['single_rate']:,.0f} req/s "
        f"(p99 {result['single_p99']:.0f} ms,"
        f" {result['single_statuses']}); postgres {result['postgres_us_per_log']:.0f} µs CPU per batch log; "
        f"machine {result['machine_busy']:.0%} busy",
        flush=True,
    )
    return result


async def query_latencies(port: int, key: str, dsn: str, repeats: int) -> dict[str, tuple[float, float, int]]:
    """p50/p95 (ms) and status of each documented query, ``repeats`` times over one keep-alive connection."""
    connection = await asyncpg.connect(dsn)
    try:
        trace_id = await connection.fetchval(
            "SELECT trace_id FROM logs WHERE timestamp > now() - interval '2 hours' "
            "AND trace_id IS NOT NULL LIMIT 1"
        )
    finally:
        await connection.close()
    since = quote((datetime.now(UTC) - timedelta(hours=24)).isoformat())
    queries = {
        "logs newest page": "/api/v1/logs?limit=100",
        "logs service+level": "/api/v1/logs?service=payments&level=ERROR&limit=100",
        "logs q over 24 h": f"/api/v1/logs?q=user%204242&since={since}&limit=100",
        "trace": f"/api/v1/traces/{trace_id}",
        "services 1 h": "/api/v1/services?window=3600",
        "services 24 h": "/api/v1/services?window=86400",
    }
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    results: dict[str, tuple[float, float, int]] = {}
    try:
        for name, path in queries.items():
            timings, status = [], 0
            for _ in range(repeats):
                request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nX-API-Key: {key}\r\n\r\n".encode()
                started = time.perf_counter()
                status, _ = await load._exchange(reader, writer, request)
                timings.append(time.perf_counter() - started)
            results[name] = (load.percentile(timings, 0.5), load.percentile(timings, 0.95), status)
    finally:
        writer.close()
    return results


async def dedup_options(dsn: str, project: uuid.UUID, repeats: int) -> dict[str, float]:
    """Milliseconds per batch of 1,000 new keys for each way of finding already stored signal ids.

    - window (chosen): the writer's probe, ``signal_id`` from 24 h before the batch's time on (pruned
      to the partitions from there);
    - every partition: ``signal_id`` anywhere (one index descent per key in every partition);
    - key table: ``INSERT .. ON CONFLICT DO NOTHING`` of the keys into one global
      ``(project_id, signal_id)`` table holding every stored key (built here from ``logs``), committed
      per batch as ingest would.
    """
    from prodsentinel.signals.writes import LOGS

    connection = await asyncpg.connect(dsn)
    try:
        timings: dict[str, list[float]] = {"window": [], "every partition": [], "key table": []}
        await connection.execute(
            "CREATE UNLOGGED TABLE IF NOT EXISTS bench_keys AS SELECT project_id, signal_id FROM logs"
        )
        await connection.execute("ALTER TABLE bench_keys SET LOGGED")
        await connection.execute("ALTER TABLE bench_keys ADD PRIMARY KEY (project_id, signal_id)")
        await connection.execute("CHECKPOINT")
        for _ in range(repeats):
            ids = [uuid.uuid4() for _ in range(1000)]
            now = datetime.now(UTC)
            started = time.perf_counter()
            await connection.fetch(LOGS.existing_sql, project, ids, now)
            timings["window"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await connection.fetch(
                "SELECT signal_id FROM logs WHERE project_id = $1 AND signal_id = ANY($2::uuid[])",
                project,
                ids,
            )
            timings["every partition"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await connection.execute(
                "INSERT INTO bench_keys SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING", project, ids
            )
            timings["key table"].append(time.perf_counter() - started)
        await connection.execute("DROP TABLE bench_keys")
        return {name: load.percentile(values, 0.5) for name, values in timings.items()}
    finally:
        await connection.close()


async def read_key(dsn_url: str) -> str:
    from prodsentinel.auth import services as auth_services
    from prodsentinel.lib.database import alchemy_config, session_scope

    config = alchemy_config(dsn_url)
    async with session_scope(config.create_session_maker()) as session:  # type: ignore[arg-type]
        created = await auth_services.create_key(session, name="bench-read", scopes=["read"], project="bench")
    await config.get_engine().dispose()
    return created.key


async def retention_pass(url: str, days: int) -> tuple[float, dict[str, list[str]]]:
    from prodsentinel.lib.database import alchemy_config
    from prodsentinel.settings import Settings
    from prodsentinel.signals.retention import run_retention

    config = alchemy_config(url)
    settings = Settings(database_url=url).with_overrides(retention_days_logs=days - 1)
    started = time.perf_counter()
    report = await run_retention(config.create_session_maker(), settings)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    await config.get_engine().dispose()
    return elapsed, report.dropped


def interleaved(
    args: argparse.Namespace, servers: dict[str, tuple[int, int, str]]
) -> dict[str, dict[str, Any]]:
    """Batch and single-event rates of each server, measured in alternating rounds.

    The machine is shared: a measurement before the fill and one after it can see different background
    load. Alternating the full and the empty database round by round (the order flipped every round)
    exposes both to the same load, so their ratio is the one to trust.
    """
    rounds = max(1, args.rounds)
    totals: dict[str, dict[str, Any]] = {
        name: {"batch_logs": 0, "batch_s": 0.0, "single_n": 0, "single_s": 0.0, "acked": [], "lat": []}
        for name in servers
    }
    sub = argparse.Namespace(**vars(args))
    sub.batches = max(1, args.batches // rounds)
    sub.single_seconds = args.single_seconds / rounds
    for r in range(rounds):
        order = list(servers) if r % 2 == 0 else list(reversed(servers))
        for name in order:
            pid, port, key = servers[name]
            result = ingest_phase(f"{name}#{r + 1}", sub, pid, port, key)
            total = totals[name]
            total["batch_logs"] += result["batch_logs"]
            total["batch_s"] += result["batch_s"]
            total["single_n"] += result["single_n"]
            total["single_s"] += result["single_s"]
            total["acked"] += result["acked"]
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--fill", type=int, default=20_000_000, help="logs stored before the second phase")
    parser.add_argument("--days", type=int, default=14, help="days the fill is spread over (default 14)")
    parser.add_argument("--batches", type=int, default=60, help="batch requests per phase (default 60)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--batch-clients", type=int, default=4)
    parser.add_argument("--single-seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds after the fill (default 4)")
    parser.add_argument("--workers", type=int, default=1, help="granian worker processes (default 1)")
    parser.add_argument("--query-repeats", type=int, default=20)
    parser.add_argument(
        "--dedup-options",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time the ways of finding stored keys at full size (default on)",
    )
    parser.add_argument("--keep-db", action="store_true", help="do not drop the benchmark databases")
    args = parser.parse_args()

    url, dsn, key = asyncio.run(load.prepare_database(args.postgres))
    empty_url, empty_dsn, empty_key = asyncio.run(load.prepare_database(args.postgres))
    reader_key = asyncio.run(read_key(url))
    project = asyncio.run(load._project_id(dsn))
    print(f"database {dsn.rsplit('/', 1)[1]}; load average {os.getloadavg()[0]:.2f} at start", flush=True)
    port, empty_port = load.free_port(), load.free_port()
    server = load.start_server(url, port, args.workers)
    empty_server = None
    try:
        asyncio.run(load.checkpoint(dsn))
        before = ingest_phase("empty", args, server.pid, port, key)
        print(f"fill    {args.fill:,} logs over {args.days} days", flush=True)
        filled = asyncio.run(fill(dsn, project, args.fill, args.days))
        asyncio.run(load.checkpoint(dsn))
        size = asyncio.run(sizes(dsn))
        empty_server = load.start_server(empty_url, empty_port, args.workers)
        side = interleaved(
            args, {"full": (server.pid, port, key), "empty": (empty_server.pid, empty_port, empty_key)}
        )
        queries = asyncio.run(query_latencies(port, reader_key, dsn, args.query_repeats))
    finally:
        load.stop_server(server)
        if empty_server is not None:
            load.stop_server(empty_server)
    check = asyncio.run(load.verify(dsn, before["acked"] + side["full"]["acked"]))
    empty_check = asyncio.run(load.verify(empty_dsn, side["empty"]["acked"]))
    options = asyncio.run(dedup_options(dsn, project, args.query_repeats)) if args.dedup_options else {}
    retention_seconds, dropped = asyncio.run(retention_pass(url, args.days))
    if not args.keep_db:
        for name in (dsn, empty_dsn):
            asyncio.run(load._drop(args.postgres, name.rsplit("/", 1)[1]))

    gib = 1024**3
    rate = {name: (t["batch_logs"] / t["batch_s"], t["single_n"] / t["single_s"]) for name, t in side.items()}
    print()
    print(
        f"fill    {args.fill:,} logs in {filled['fill']:.0f} s "
        f"({args.fill / max(filled['fill'], 1e-9):,.0f} rows/s); VACUUM ANALYZE {filled['vacuum']:.0f} s"
    )
    print(
        f"size    {size['partitions']} partitions, heap {size['heap'] / gib:.2f} GiB, indexes "
        f"{size['indexes'] / gib:.2f} GiB: "
        + ", ".join(f"{name} {value / gib:.2f}" for name, value in size["per_index"])
    )
    print(
        f"side    {args.rounds} alternating rounds: empty batch {rate['empty'][0]:,.0f} logs/s, single "
        f"{rate['empty'][1]:,.0f} req/s; full batch {rate['full'][0]:,.0f} logs/s, "
        f"single {rate['full'][1]:,.0f} req/s"
    )
    print(
        f"ratio   side by side: batch full/empty {rate['full'][0] / rate['empty'][0]:.2f}x (target >= 0.8), "
        f"single {rate['full'][1] / rate['empty'][1]:.2f}x (target >= 0.9)"
    )
    print(
        f"ratio   before/after the fill (same database, load may differ): batch "
        f"{rate['full'][0] / before['batch_rate']:.2f}x, "
        f"single {rate['full'][1] / before['single_rate']:.2f}x"
    )
    print(f"retain  one retention pass {retention_seconds:.2f} s, dropped {dropped['logs']}")
    for name, (p50, p95, status) in queries.items():
        print(f"query   {name:20} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  (status {status})")
    for name, ms in options.items():
        print(f"dedup   {name:20} {ms:7.1f} ms per 1,000 new keys (median)")
    acked = len(before["acked"]) + len(side["full"]["acked"]) + len(side["empty"]["acked"])
    print(
        f"verify  acknowledged {acked}; full database: missing {check['missing']}, stored twice "
        f"{check['duplicated']}; empty database: missing {empty_check['missing']}, stored twice "
        f"{empty_check['duplicated']}; load average {os.getloadavg()[0]:.2f} at end"
    )
    ok = all(c["missing"] == 0 and c["duplicated"] == 0 for c in (check, empty_check))
    print("RESULT  " + ("every acknowledged signal is stored exactly once" if ok else "VERIFICATION FAILED"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
