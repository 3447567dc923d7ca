"""Outbox delivery benchmark: deliveries/s with 1 and 2 dispatcher processes to a local receiver.

    uv run python bench/outbox.py                     # 5,000 items per run, runs with 1 and 2 workers
    uv run python bench/outbox.py --items 20000 --workers 1,2,4

Each run, on a fresh database on the local PostgreSQL (``BENCH_POSTGRES_URL``, default
``postgresql://postgres@127.0.0.1:5432/postgres``), migrated with the real migrations:

1. writes ``--items`` pending outbox items for one signed channel (set-based, shaped as ``add_event``
   writes them; not timed);
2. starts a receiver process on 127.0.0.1 (``tests/receivers.py``: HTTP/1.1 keep-alive, answers 200
   after ``--receiver-delay`` seconds) and N dispatcher processes, each running the real
   ``dispatcher.run_dispatch`` loop (claim with SKIP LOCKED + commit, concurrent signed httpx POSTs,
   ledger insert + fenced result update) until nothing is due;
3. times from the start signal to the last worker finishing, checks every item is ``delivered`` with
   one ledger row, and asks the receiver how often it saw each delivery id and whether one id ever
   arrived while the same id was still in flight (must be never).

Bounded: each worker stops after ``--max-seconds``; the whole run takes well under a minute by default.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.connection
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

SECRET = "bench-signing-secret-0123456789"


def _receiver_process(conn: multiprocessing.connection.Connection, delay: float) -> None:
    from tests.receivers import Receiver, Reply

    receiver = Receiver(default=Reply(200, delay=delay), record_bodies=False).start()
    conn.send(receiver.url)
    conn.recv()  # "stop"
    counts = dict(receiver.delivery_counts)
    conn.send({"requests": receiver.count, "counts": counts, "overlaps": receiver.overlaps})
    receiver.stop()


def _worker_process(
    database_url: str,
    settings_overrides: dict[str, Any],
    max_seconds: float,
    ready: Any,
    start: Any,
    results: Any,
) -> None:
    async def main() -> None:
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

        from prodsentinel.notifications import delivery, dispatcher
        from prodsentinel.settings import Settings

        settings = Settings(database_url=database_url, **settings_overrides)
        engine = create_async_engine(database_url, pool_size=4)
        session_maker = async_sessionmaker(engine, expire_on_commit=False)
        async with session_maker() as session:  # warm the pool and the imports before the clock starts
            await session.execute(text("SELECT 1"))
        delivery.shared_client()
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, start.wait)
        began = time.perf_counter()
        counts = await dispatcher.run_dispatch(session_maker, settings, max_seconds=max_seconds)
        results.put(
            {
                "pid": os.getpid(),
                "ended": time.time(),
                "elapsed": time.perf_counter() - began,
                **{name: getattr(counts, name) for name in counts.__struct_fields__},
            }
        )
        await delivery.close_client()
        await engine.dispose()

    asyncio.run(main())


async def _admin(server_url: str, sql: str) -> None:
    connection = await asyncpg.connect(server_url)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def _seed(libpq_url: str, receiver_url: str, items: int) -> None:
    """One project, one signed channel, ``items`` pending items (as ``add_event`` writes them)."""
    connection = await asyncpg.connect(libpq_url)
    try:
        await connection.execute("DELETE FROM outbox_items; DELETE FROM notification_channels")
        project_id = await connection.fetchval(
            """INSERT INTO projects (id, name, created_at, updated_at)
               VALUES (gen_random_uuid(), 'bench', now(), now())
               ON CONFLICT (name) DO UPDATE SET updated_at = now() RETURNING id"""
        )
        channel_id = await connection.fetchval(
            """INSERT INTO notification_channels (id, project_id, name, url, secret, min_severity, enabled,
                                                  created_at, updated_at)
               VALUES (gen_random_uuid(), $1, 'bench', $2, $3, 'low', true, now(), now()) RETURNING id""",
            project_id,
            receiver_url,
            SECRET,
        )
        await connection.execute(
            """
            INSERT INTO outbox_items (id, project_id, channel_id, event_id, delivery_id, event_type,
                                      severity, payload, status, attempts, next_attempt_at, created_at,
                                      updated_at)
            SELECT gen_random_uuid(), $1::uuid, $2::uuid, e.event_id, gen_random_uuid(), 'ALERT_FIRING',
                   'high',
                   jsonb_build_object(
                       'event_id', e.event_id, 'event_type', 'ALERT_FIRING', 'severity', 'high',
                       'occurred_at', now(), 'project_id', $1::uuid::text,
                       'alert', jsonb_build_object(
                           'name', 'bench-' || g, 'value', g,
                           'labels', jsonb_build_object('service', 'api'))),
                   'pending', 0, now(), now(), now()
            FROM generate_series(1, $3::int) AS g, LATERAL (SELECT gen_random_uuid() AS event_id) AS e
            """,
            project_id,
            channel_id,
            items,
        )
    finally:
        await connection.close()


async def _verify(libpq_url: str) -> dict[str, int]:
    connection = await asyncpg.connect(libpq_url)
    try:
        row = await connection.fetchrow(
            """SELECT count(*) FILTER (WHERE status = 'delivered') AS delivered,
                      count(*) FILTER (WHERE status <> 'delivered') AS other,
                      (SELECT count(*) FROM delivery_attempts) AS attempts,
                      (SELECT count(DISTINCT outbox_id) FROM delivery_attempts) AS attempted_items
               FROM outbox_items"""
        )
        await connection.execute("DELETE FROM delivery_attempts")
        return dict(row)
    finally:
        await connection.close()


def run(
    libpq_url: str, sqlalchemy_url: str, items: int, workers: int, args: argparse.Namespace
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    receiver = ctx.Process(target=_receiver_process, args=(child, args.receiver_delay), daemon=True)
    receiver.start()
    receiver_url = parent.recv()
    asyncio.run(_seed(libpq_url, receiver_url, items))

    overrides = {
        "notify_batch_size": args.batch_size,
        "notify_concurrency": args.concurrency,
        "notify_timeout_seconds": 10.0,
    }
    ready_events = [ctx.Event() for _ in range(workers)]
    start = ctx.Event()
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker_process,
            args=(sqlalchemy_url, overrides, args.max_seconds, ready_events[i], start, results),
            daemon=True,
        )
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    for event in ready_events:
        if not event.wait(timeout=60):
            raise SystemExit("a dispatcher process did not start within 60 s")
    began = time.time()
    start.set()
    reports = [results.get(timeout=args.max_seconds + 60) for _ in procs]
    for proc in procs:
        proc.join(timeout=10)
    elapsed = max(r["ended"] for r in reports) - began

    parent.send("stop")
    seen = parent.recv()
    receiver.join(timeout=10)
    db = asyncio.run(_verify(libpq_url))
    counts = seen["counts"]
    return {
        "workers": workers,
        "items": items,
        "elapsed_s": elapsed,
        "deliveries_per_s": items / elapsed,
        "per_worker_claimed": [r["claimed"] for r in reports],
        "delivered_in_db": db["delivered"],
        "not_delivered": db["other"],
        "ledger_rows": db["attempts"],
        "receiver_requests": seen["requests"],
        "distinct_delivery_ids": len(counts),
        "max_sends_per_delivery_id": max(counts.values(), default=0),
        "concurrent_duplicates": seen["overlaps"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--workers", default="1,2", help="comma-separated dispatcher process counts")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--receiver-delay", type=float, default=0.0)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args()

    server = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"prodsentinel_bench_outbox_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))
    parts = urlsplit(server)
    libpq_url = f"postgresql://{parts.netloc}/{name}"
    sqlalchemy_url = f"postgresql+asyncpg://{parts.netloc}/{name}"
    try:
        from prodsentinel.lib.database import alchemy_config, migrate

        migrate(alchemy_config(sqlalchemy_url))
        print(
            f"database {name}; {args.items} items per run; batch {args.batch_size}, "
            f"concurrency {args.concurrency} per worker; receiver delay {args.receiver_delay}s"
        )
        ok = True
        for workers in (int(w) for w in args.workers.split(",")):
            result = run(libpq_url, sqlalchemy_url, args.items, workers, args)
            exact = (
                result["delivered_in_db"] == args.items
                and result["ledger_rows"] == args.items
                and result["distinct_delivery_ids"] == args.items
                and result["max_sends_per_delivery_id"] == 1
                and result["concurrent_duplicates"] == 0
            )
            ok = ok and exact
            r = result
            print(
                f"{workers} worker(s): {r['deliveries_per_s']:,.0f} deliveries/s "
                f"({args.items} in {r['elapsed_s']:.2f} s; claimed per worker {r['per_worker_claimed']}); "
                f"delivered {r['delivered_in_db']}, ledger rows {r['ledger_rows']}, "
                f"receiver requests {r['receiver_requests']}, max sends per delivery id "
                f"{r['max_sends_per_delivery_id']}, concurrent duplicates {r['concurrent_duplicates']}"
                f" -> {'OK' if exact else 'MISMATCH'}"
            )
        if not ok:
            raise SystemExit(1)
    finally:
        asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
