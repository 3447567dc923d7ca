"""Ingest benchmark: the real service on granian against a fresh database on the local PostgreSQL.

    uv run python bench/ingest.py                      # defaults sized for a 2-core box (~1-2 min)
    uv run python bench/ingest.py --batches 300 --rounds 5 --single-seconds 20 --clients 32

Phases (one run):
1. batch, in ``--rounds`` rounds: each round writes its own ``--batches``/rounds batches of
   ``--batch-size`` logs three ways, in an order that rotates from round to round, each after a
   ``CHECKPOINT`` so none pays for the WAL another left behind:
   - ours: POSTs of JSON arrays to the service from ``--batch-clients`` connections;
   - raw COPY: asyncpg ``COPY`` of the same rows into an identical table without the unique constraint
     (the physical limit);
   - naive idempotent: ``COPY`` into a staging table, then ``INSERT … SELECT … ON CONFLICT DO NOTHING``;
   each baseline batch in its own transaction, from one connection, while the service sits idle;
2. single: one log per POST from ``--clients`` keep-alive connections for ``--single-seconds``;
3. verify in PostgreSQL that every acknowledged signal is stored exactly once.

The load generator is a separate process speaking raw HTTP/1.1 over asyncio (uvloop), so the client is
not the bottleneck. Prints logs/s, request p50/p99, the server's peak RSS and the ratios (over all
rounds, and the lowest and highest round).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

LEVELS = ["DEBUG", "INFO", "INFO", "INFO", "WARN", "ERROR"]
SERVICES = ["checkout", "payments", "inventory", "gateway", "search", "auth"]
COLUMNS = [
    "project_id",
    "signal_id",
    "trace_id",
    "span_id",
    "service_name",
    "timestamp",
    "level",
    "message",
    "attributes",
]


# ----------------------------------------------------------------------------------------------- data
def make_log(now: datetime, i: int) -> dict[str, Any]:
    return {
        "signal_id": str(uuid.uuid4()),
        "trace_id": uuid.uuid4().hex,
        "span_id": uuid.uuid4().hex[:16],
        "service_name": SERVICES[i % len(SERVICES)],
        "timestamp": (now - timedelta(milliseconds=random.randint(0, 600_000))).isoformat(),
        "level": LEVELS[i % len(LEVELS)],
        "message": f"request {i} handled in {random.randint(1, 900)} ms for user {random.randint(1, 10_000)}",
        "attributes": {"http.method": "GET", "http.status_code": 200, "region": "eu-west-1"},
    }


# -------------------------------------------------------------------------------------------- client
def _request(path: str, key: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nX-API-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    writer.write(request)
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    length = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _run_batches(
    port: int, key: str, bodies: list[tuple[bytes, list[str]]], clients: int
) -> dict[str, Any]:
    queue = list(reversed(bodies))
    latencies: list[float] = []
    acked: list[str] = []
    statuses: dict[int, int] = {}

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while queue:
            body, ids = queue.pop()
            started = time.perf_counter()
            status, _ = await _exchange(reader, writer, _request("/api/v1/ingest/logs", key, body))
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 202:
                acked.extend(ids)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return {
        "elapsed": time.perf_counter() - started,
        "latencies": latencies,
        "acked": acked,
        "statuses": statuses,
    }


async def _run_single(port: int, key: str, seconds: float, clients: int) -> dict[str, Any]:
    latencies: list[float] = []
    acked: list[str] = []
    statuses: dict[int, int] = {}
    now = datetime.now(UTC)
    deadline = time.perf_counter() + seconds
    encode = msgspec.json.encode

    async def worker(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = n * 10_000_000
        while time.perf_counter() < deadline:
            log = make_log(now, i)
            i += 1
            request = _request("/api/v1/ingest/logs", key, encode(log))
            started = time.perf_counter()
            status, _ = await _exchange(reader, writer, request)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 202:
                acked.append(log["signal_id"])
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(clients)))
    return {
        "elapsed": time.perf_counter() - started,
        "latencies": latencies,
        "acked": acked,
        "statuses": statuses,
    }


def _client_process(kind: str, args: tuple[Any, ...], out: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    runner = _run_batches if kind == "batch" else _run_single
    cpu = time.process_time()
    result = asyncio.run(runner(*args))  # type: ignore[operator]
    result["client_cpu"] = time.process_time() - cpu
    out.send(result)
    out.close()


def run_client(kind: str, server_pid: int, *args: Any) -> dict[str, Any]:
    """Run one load phase in a separate process (its own interpreter and event loop, not the server's).

    Also measures the CPU seconds the phase cost: the client process, the server's process tree, every
    ``postgres`` process, and the whole machine (``/proc/stat``, which includes other users' jobs).
    """
    parent, child = multiprocessing.Pipe(duplex=False)
    process = multiprocessing.get_context("fork").Process(target=_client_process, args=(kind, args, child))
    server_cpu = cpu_seconds(process_tree(server_pid))
    postgres_cpu, machine = postgres_cpu_seconds(), machine_cpu()
    process.start()
    result: dict[str, Any] = parent.recv()
    process.join()
    machine_after = machine_cpu()
    result["server_cpu"] = cpu_seconds(process_tree(server_pid)) - server_cpu
    result["postgres_cpu"] = postgres_cpu_seconds() - postgres_cpu
    result["machine_busy"] = (machine_after[0] - machine[0]) / max(1e-9, machine_after[1] - machine[1])
    return result


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds consumed so far by ``pids`` (their exited children not included)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def postgres_cpu_seconds() -> float:
    """CPU seconds of every live ``postgres`` process (server and backends; other users' too)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return cpu_seconds(pids)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


# ------------------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    database_url: str, port: int, workers: int, extra: list[str] | None = None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        "PRODSENTINEL_INPROCESS_WORKERS": "0",
        "PRODSENTINEL_AUTO_MIGRATE": "0",
        "PYTHONPATH": str(ROOT / "src"),
    }
    command = [
        sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(workers), "--loop", "uvloop", "--http", "1",
        "--log-level", "warning", "--no-access-log", *(extra or []), "prodsentinel.app:create_app",
    ]  # fmt: skip
    server = subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if b" 200 " in sock.recv(1024):
                    return server
        except OSError:
            pass
        if server.poll() is not None:
            raise SystemExit("the server exited during start")
        time.sleep(0.3)
    stop_server(server)
    raise SystemExit("the server did not become live within 60 s")


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    for child in Path("/proc").iterdir():
        if child.name.isdigit():
            try:
                fields = (child / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                pids.extend(process_tree(int(child.name)))
    return pids


def peak_rss_mib(pid: int) -> dict[int, float]:
    """VmHWM (peak resident set) of the server and each of its worker processes."""
    peaks: dict[int, float] = {}
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[member] = int(line.split()[1]) / 1024
        except OSError:
            continue
    return peaks


def stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


# ---------------------------------------------------------------------------------------- baselines
async def create_baseline_tables(dsn: str) -> None:
    """``bench_raw`` (like ``logs`` without its unique constraint) and ``bench_naive`` (like ``logs``)."""
    connection = await asyncpg.connect(dsn)
    try:
        for table in ("bench_raw", "bench_naive"):
            await connection.execute(
                f"CREATE TABLE {table} (LIKE logs INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING INDEXES)"
            )
        for name in await connection.fetch(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'bench_raw'::regclass AND contype = 'u'"
        ):
            await connection.execute(f'ALTER TABLE bench_raw DROP CONSTRAINT "{name[0]}"')
    finally:
        await connection.close()


async def checkpoint(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CHECKPOINT")
    finally:
        await connection.close()


async def raw_copy(dsn: str, batches: list[list[tuple[Any, ...]]]) -> float:
    """Seconds to ``COPY`` the batches into ``bench_raw``, one transaction each."""
    connection = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        for batch in batches:
            async with connection.transaction():
                await connection.copy_records_to_table("bench_raw", records=batch, columns=COLUMNS)
        return time.perf_counter() - started
    finally:
        await connection.close()


async def naive_idempotent(dsn: str, batches: list[list[tuple[Any, ...]]]) -> float:
    """Seconds for ``COPY`` → staging → ``INSERT … ON CONFLICT DO NOTHING`` into ``bench_naive``."""
    connection = await asyncpg.connect(dsn)
    columns = ", ".join(COLUMNS)
    try:
        await connection.execute(f"CREATE TEMP TABLE bench_stage AS SELECT {columns} FROM logs WITH NO DATA")
        started = time.perf_counter()
        for batch in batches:
            async with connection.transaction():
                await connection.copy_records_to_table("bench_stage", records=batch, columns=COLUMNS)
                await connection.execute(
                    f"INSERT INTO bench_naive ({columns}) SELECT {columns} FROM bench_stage "
                    "ON CONFLICT (project_id, signal_id) DO NOTHING"
                )
                await connection.execute("TRUNCATE bench_stage")
        return time.perf_counter() - started
    finally:
        await connection.close()


# ---------------------------------------------------------------------------------------------- main
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


async def prepare_database(admin_url: str) -> tuple[str, str, str]:
    """A fresh migrated database and an ingest key; returns (sqlalchemy url, libpq dsn, raw key)."""
    from prodsentinel.auth import services as auth_services
    from prodsentinel.lib.database import alchemy_config, migrate, session_scope

    name = f"ps_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    parts = urlsplit(admin_url)
    url = f"postgresql+asyncpg://{parts.netloc}/{name}"
    config = alchemy_config(url)
    await asyncio.to_thread(migrate, config)
    async with session_scope(config.create_session_maker()) as session:  # type: ignore[arg-type]
        created = await auth_services.create_key(session, name="bench", scopes=["ingest"], project="bench")
    await config.get_engine().dispose()
    return url, f"postgresql://{parts.netloc}/{name}", created.key


async def verify(dsn: str, acked: list[str]) -> dict[str, int]:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CREATE TEMP TABLE acked (signal_id uuid)")
        await connection.copy_records_to_table("acked", records=[(uuid.UUID(s),) for s in acked])
        row = await connection.fetchrow(
            """
            SELECT (SELECT count(*) FROM logs) AS stored,
                   (SELECT count(DISTINCT (project_id, signal_id)) FROM logs) AS distinct_stored,
                   (SELECT count(*) FROM acked a WHERE NOT EXISTS
                       (SELECT 1 FROM logs l WHERE l.signal_id = a.signal_id)) AS missing,
                   (SELECT count(*) FROM (SELECT signal_id FROM logs GROUP BY project_id, signal_id
                                          HAVING count(*) > 1) d) AS duplicated
            """
        )
        return dict(row)
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--batches", type=int, default=150, help="batch requests in all (default 150)")
    parser.add_argument("--rounds", type=int, default=3, help="batch rounds (default 3)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--batch-clients", type=int, default=4)
    parser.add_argument("--single-seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=32, help="single-event connections (default 32)")
    parser.add_argument("--workers", type=int, default=1, help="granian worker processes (default 1)")
    parser.add_argument(
        "--granian-args",
        default="",
        help="extra granian options, e.g. '--runtime-mode st' (the benchmark always passes --loop uvloop)",
    )
    parser.add_argument("--keep-db", action="store_true", help="do not drop the benchmark database")
    args = parser.parse_args()
    rounds = max(1, min(args.rounds, args.batches))

    url, dsn, key = asyncio.run(prepare_database(args.postgres))
    asyncio.run(create_baseline_tables(dsn))
    print(
        f"database {dsn.rsplit('/', 1)[1]} ready; generating {args.batches} x {args.batch_size} logs",
        flush=True,
    )
    from prodsentinel.ingest.schemas import LogIn
    from prodsentinel.ingest.services import rows_of

    project = asyncio.run(_project_id(dsn))
    decoder = msgspec.json.Decoder(list[LogIn])
    now = datetime.now(UTC)
    bodies: list[tuple[bytes, list[str]]] = []
    for b in range(args.batches):
        logs = [make_log(now, b * args.batch_size + i) for i in range(args.batch_size)]
        bodies.append((msgspec.json.encode(logs), [log["signal_id"] for log in logs]))
    rows = [rows_of("logs", project, decoder.decode(body)) for body, _ in bodies]

    port = free_port()
    server = start_server(url, port, args.workers, args.granian_args.split())
    try:
        per_round = [
            _batch_round(r, rounds, args, server.pid, port, key, dsn, bodies, rows) for r in range(rounds)
        ]
        asyncio.run(checkpoint(dsn))
        single = run_client("single", server.pid, port, key, args.single_seconds, args.clients)
        peaks = peak_rss_mib(server.pid)
    finally:
        stop_server(server)

    batch_acked = [signal for result in per_round for signal in result["ours"]["acked"]]
    acked = batch_acked + single["acked"]
    check = asyncio.run(verify(dsn, acked))
    if not args.keep_db:
        asyncio.run(_drop(args.postgres, dsn.rsplit("/", 1)[1]))

    print()
    total_rows = sum(len(batch) for batch in rows)
    seconds = {name: sum(r[name] for r in per_round) for name in ("raw", "naive")}
    ours_seconds = sum(r["ours"]["elapsed"] for r in per_round)
    batch_rate = len(batch_acked) / ours_seconds
    raw_rate, naive_rate = total_rows / seconds["raw"], total_rows / seconds["naive"]
    latencies = [value for r in per_round for value in r["ours"]["latencies"]]
    statuses: dict[int, int] = {}
    for r in per_round:
        for status, count in r["ours"]["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    print(
        f"batch   {args.batches} x {args.batch_size} logs in {rounds} rounds, {args.batch_clients} clients: "
        f"{batch_rate:,.0f} logs/s; request p50 {percentile(latencies, 0.5):.1f} ms, "
        f"p99 {percentile(latencies, 0.99):.1f} ms; statuses {statuses}"
    )
    s50, s99 = percentile(single["latencies"], 0.5), percentile(single["latencies"], 0.99)
    single_rps = len(single["latencies"]) / single["elapsed"]
    print(
        f"single  {args.clients} clients x {args.single_seconds:.0f} s: {single_rps:,.0f} req/s (= logs/s); "
        f"p50 {s50:.1f} ms, p99 {s99:.1f} ms; statuses {single['statuses']}"
    )
    for name, phase in (("batch (ours)", _merged(per_round)), ("single", single)):
        elapsed = phase["elapsed"]
        print(
            f"cpu     {name}: server {phase['server_cpu'] / elapsed:.0%} of a core, client "
            f"{phase['client_cpu'] / elapsed:.0%}, postgres (all) {phase['postgres_cpu'] / elapsed:.0%}; "
            f"machine {phase['machine_busy']:.0%} busy of {os.cpu_count()} cores; server "
            f"{phase['server_cpu'] / max(1, len(phase['latencies'])) * 1e6:,.0f} µs CPU per request"
        )
    print(
        f"verify  acknowledged {len(acked)}, stored {check['stored']} (distinct {check['distinct_stored']}), "
        f"missing {check['missing']}, stored twice {check['duplicated']}"
    )
    print(f"rss     server peak RSS per process (MiB): {', '.join(f'{v:.0f}' for v in peaks.values())}")
    print(
        f"base    raw COPY {raw_rate:,.0f} rows/s; naive idempotent (COPY->staging + ON CONFLICT) "
        f"{naive_rate:,.0f} rows/s (same rows, same rounds)"
    )
    naive_ratios = [r["naive"] / r["ours"]["elapsed"] for r in per_round]
    raw_ratios = [r["raw"] / r["ours"]["elapsed"] for r in per_round]
    print(
        f"ratio   batch ingest = {batch_rate / naive_rate:.2f}x naive idempotent "
        f"(rounds {min(naive_ratios):.2f}-{max(naive_ratios):.2f}x), {batch_rate / raw_rate:.0%} of raw COPY "
        f"(rounds {min(raw_ratios):.0%}-{max(raw_ratios):.0%})"
    )
    ok = check["missing"] == 0 and check["duplicated"] == 0 and check["stored"] >= len(acked)
    print("RESULT  " + ("every acknowledged signal is stored exactly once" if ok else "VERIFICATION FAILED"))
    sys.exit(0 if ok else 1)


def _batch_round(
    index: int,
    rounds: int,
    args: argparse.Namespace,
    server_pid: int,
    port: int,
    key: str,
    dsn: str,
    bodies: list[tuple[bytes, list[str]]],
    rows: list[list[tuple[Any, ...]]],
) -> dict[str, Any]:
    """One round: its share of the batches written by the service and by both baselines.

    The three run one after another, each after a CHECKPOINT, in an order that rotates per round so
    that no method always follows the same one. Returns seconds per baseline and the client result.
    """
    share = slice(index * len(bodies) // rounds, (index + 1) * len(bodies) // rounds)
    steps: dict[str, Callable[[], Any]] = {
        "ours": lambda: run_client("batch", server_pid, port, key, bodies[share], args.batch_clients),
        "raw": lambda: asyncio.run(raw_copy(dsn, rows[share])),
        "naive": lambda: asyncio.run(naive_idempotent(dsn, rows[share])),
    }
    order = list(steps)[index % 3 :] + list(steps)[: index % 3]
    result: dict[str, Any] = {}
    for name in order:
        asyncio.run(checkpoint(dsn))
        result[name] = steps[name]()
    print(
        f"round {index + 1}/{rounds} ({', '.join(order)}): ours {result['ours']['elapsed']:.2f} s, "
        f"raw COPY {result['raw']:.2f} s, naive {result['naive']:.2f} s",
        flush=True,
    )
    return result


def _merged(per_round: list[dict[str, Any]]) -> dict[str, Any]:
    """The service's batch phases of all rounds as one: elapsed, CPU and latencies summed/joined."""
    phases = [r["ours"] for r in per_round]
    merged: dict[str, Any] = {
        key: sum(p[key] for p in phases) for key in ("elapsed", "server_cpu", "client_cpu", "postgres_cpu")
    }
    merged["latencies"] = [value for p in phases for value in p["latencies"]]
    merged["machine_busy"] = sum(p["machine_busy"] * p["elapsed"] for p in phases) / merged["elapsed"]
    return merged


async def _project_id(dsn: str) -> uuid.UUID:
    connection = await asyncpg.connect(dsn)
    try:
        value: uuid.UUID = await connection.fetchval("SELECT id FROM projects WHERE name = 'bench'")
        return value
    finally:
        await connection.close()


async def _drop(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


if __name__ == "__main__":
    main()
