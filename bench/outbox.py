"""Outbox delivery benchmark: deliveries/s per channel kind with 1 and 2 dispatcher processes to local
receivers (and a local SMTP server), plus p50/p99 enqueue->delivered latency.

    uv run python bench/outbox.py                     # 5,000 items per run, every kind, 1 and 2 workers
    uv run python bench/outbox.py --items 20000 --workers 1,2,4 --kinds webhook
    uv run python bench/outbox.py --items 2000 --kinds webhook,standard,slack,pagerduty,teams,email

Kinds: ``webhook`` (signed, SPEC §8), ``standard`` (Standard Webhooks signing), ``slack`` (bot token:
chat.postMessage against a local Web API receiver), ``pagerduty`` (Events v2), ``teams`` (Adaptive
Card), ``email`` (SMTP to an aiosmtpd server). Latency: the items' ``created_at`` is set when the
dispatchers are released, so ``delivered_at - created_at`` is the enqueue->delivered time of a backlog
of ``--items`` events enqueued at once.

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
STANDARD_SECRET = "whsec_YmVuY2gtc3RhbmRhcmQtd2ViaG9va3Mta2V5IQ=="
KINDS = ("webhook", "standard", "slack", "pagerduty", "teams", "email")
_REPLIES = {
    "slack": (200, b'{"ok":true,"channel":"C0BENCH","ts":"1700000000.000100"}'),
    "pagerduty": (202, b'{"status":"success","message":"Event processed","dedup_key":"k"}'),
    "teams": (202, b""),
}


def _receiver_process(conn: multiprocessing.connection.Connection, delay: float, kind: str) -> None:
    from tests.receivers import Receiver, Reply, SmtpReceiver

    if kind == "email":
        smtp = SmtpReceiver().start()
        conn.send(f"smtp://127.0.0.1:{smtp.port}")
        conn.recv()  # "stop"
        conn.send({"requests": smtp.count, "counts": {}, "overlaps": 0})
        smtp.stop()
        return
    status, body = _REPLIES.get(kind, (200, b'{"ok":true}'))
    receiver = Receiver(default=Reply(status, body=body, delay=delay), record_bodies=False).start()
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

        import prodsentinel.db  # noqa: F401  (every model: the dispatcher's ORM writes need the whole metadata)
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


def _channel_columns(
    kind: str, receiver_url: str
) -> tuple[str, str | None, str | None, str, str | None, list[str] | None]:
    """(kind, url, secret, signing, slack_channel, email_to) of the bench channel of ``kind``."""
    if kind == "standard":
        return "webhook", receiver_url, STANDARD_SECRET, "standard", None, None
    if kind == "slack":
        return "slack", None, "xoxb-bench-token", "prodsentinel", "#bench", None
    if kind == "pagerduty":
        return "pagerduty", None, "bench-routing-key-0123456789abcdef", "prodsentinel", None, None
    if kind == "teams":
        return "teams", receiver_url, None, "prodsentinel", None, None
    if kind == "email":
        return "email", None, None, "prodsentinel", None, ["oncall@example.com"]
    return "webhook", receiver_url, SECRET, "prodsentinel", None, None


async def _seed(libpq_url: str, receiver_url: str, items: int, kind: str = "webhook") -> None:
    """One project, one channel of ``kind``, ``items`` pending items (as ``add_event`` writes them: one
    alert each, so every item is its own thread)."""
    connection = await asyncpg.connect(libpq_url)
    channel_kind, url, secret, signing, slack_channel, email_to = _channel_columns(kind, receiver_url)
    try:
        await connection.execute(
            "DELETE FROM outbox_items; DELETE FROM notification_channel_state; "
            "DELETE FROM notification_channels"
        )
        project_id = await connection.fetchval(
            """INSERT INTO projects (id, name, created_at, updated_at)
               VALUES (gen_random_uuid(), 'bench', now(), now())
               ON CONFLICT (name) DO UPDATE SET updated_at = now() RETURNING id"""
        )
        channel_id = await connection.fetchval(
            """INSERT INTO notification_channels (id, project_id, name, kind, url, secret, signing,
                                                  slack_channel, email_to, min_severity, enabled, created_at,
                                                  updated_at)
               VALUES (gen_random_uuid(), $1, 'bench', $2, $3, $4, $5, $6, $7, 'low', true, now(), now())
               RETURNING id""",
            project_id,
            channel_kind,
            url,
            secret,
            signing,
            slack_channel,
            email_to,
        )
        await connection.execute(
            """
            INSERT INTO outbox_items (id, project_id, channel_id, event_id, delivery_id, event_type,
                                      severity, subject, payload, status, attempts, next_attempt_at,
                                      created_at, updated_at)
            SELECT gen_random_uuid(), $1::uuid, $2::uuid, e.event_id, gen_random_uuid(), 'ALERT_FIRING',
                   'high', 'alert:' || e.event_id,
                   jsonb_build_object(
                       'event_id', e.event_id, 'event_type', 'ALERT_FIRING', 'severity', 'high',
                       'occurred_at', now(), 'project_id', $1::uuid::text,
                       'alert_id', e.event_id, 'policy_name', 'bench-' || g, 'value', g,
                       'operator', '>', 'threshold', 1,
                       'labels', jsonb_build_object('service', 'api')),
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
                      (SELECT count(DISTINCT outbox_id) FROM delivery_attempts) AS attempted_items,
                      percentile_cont(0.5) WITHIN GROUP
                          (ORDER BY extract(epoch FROM delivered_at - created_at)) AS p50,
                      percentile_cont(0.99) WITHIN GROUP
                          (ORDER BY extract(epoch FROM delivered_at - created_at)) AS p99
               FROM outbox_items"""
        )
        await connection.execute("DELETE FROM delivery_attempts")
        return dict(row)
    finally:
        await connection.close()


def run(
    libpq_url: str,
    sqlalchemy_url: str,
    items: int,
    workers: int,
    args: argparse.Namespace,
    kind: str = "webhook",
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    receiver = ctx.Process(target=_receiver_process, args=(child, args.receiver_delay, kind), daemon=True)
    receiver.start()
    receiver_url = parent.recv()
    asyncio.run(_seed(libpq_url, receiver_url, items, kind))

    overrides: dict[str, Any] = {
        "notify_batch_size": args.batch_size,
        "notify_concurrency": args.concurrency,
        "notify_timeout_seconds": 10.0,
    }
    base = receiver_url.rsplit("/", 1)[0]
    if kind == "slack":
        overrides["slack_api_url"] = base + "/api"
    elif kind == "pagerduty":
        overrides["pagerduty_url"] = base + "/v2/enqueue"
    elif kind == "email":
        overrides.update(
            smtp_host="127.0.0.1", smtp_port=int(receiver_url.rsplit(":", 1)[1]), smtp_starttls=False
        )
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
    asyncio.run(_admin(libpq_url, "UPDATE outbox_items SET created_at = now()"))
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
        "kind": kind,
        "p50_ms": (db["p50"] or 0.0) * 1000.0,
        "p99_ms": (db["p99"] or 0.0) * 1000.0,
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
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
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
        for kind, workers in ((k, int(w)) for k in args.kinds.split(",") for w in args.workers.split(",")):
            result = run(libpq_url, sqlalchemy_url, args.items, workers, args, kind)
            exact = (
                result["delivered_in_db"] == args.items
                and result["ledger_rows"] == args.items
                and result["receiver_requests"] == args.items
                and result["max_sends_per_delivery_id"] <= 1
                and result["concurrent_duplicates"] == 0
            )
            if kind in ("webhook", "standard"):  # these carry X-ProdSentinel-Delivery-Id
                exact = exact and result["distinct_delivery_ids"] == args.items
            ok = ok and exact
            r = result
            print(
                f"{kind:9} {workers} worker(s): {r['deliveries_per_s']:,.0f} deliveries/s, "
                f"p50 {r['p50_ms']:,.0f} ms p99 {r['p99_ms']:,.0f} ms "
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
