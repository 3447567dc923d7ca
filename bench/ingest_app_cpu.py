"""Process CPU per single-event ingest request in the app itself (no HTTP server, no network).

    uv run python bench/ingest_app_cpu.py                               # this tree, 3 rounds
    uv run python bench/ingest_app_cpu.py --baseline ../other-checkout  # alternating with another tree

The real app (``create_app``) on a fresh database of the local PostgreSQL, started with its lifespan,
is driven through its ASGI callable by ``--clients`` concurrent callers, one log per request, the
answers checked (202). Per round it prints requests/s and the process CPU per request (the app, asyncpg
and the group commit; granian's HTTP work is left out). CPU per request moves much less than a request
rate when the machine is shared, which is why it exists next to ``bench/ingest.py``. With
``--baseline`` each round runs both trees, alternating, each in a process of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


async def measure(tree: Path, requests: int, clients: int, postgres: str) -> dict[str, float]:
    sys.path[:0] = [str(tree / "bench"), str(tree / "src")]
    import ingest as bench  # the tree's bench/ingest.py: database preparation and log generator
    from prodsentinel.app import create_app
    from prodsentinel.settings import Settings

    url, dsn, key = await bench.prepare_database(postgres)
    app = create_app(
        Settings(database_url=url, inprocess_workers=False, auto_migrate=False, log_level="WARNING")
    )
    now = datetime.now(UTC)
    bodies = [json.dumps(bench.make_log(now, i)).encode() for i in range(requests)]
    headers = [(b"host", b"bench"), (b"x-api-key", key.encode()), (b"content-type", b"application/json")]
    gate = asyncio.Semaphore(clients)

    async def one(body: bytes) -> None:
        scope: Any = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/api/v1/ingest/logs", "raw_path": b"/api/v1/ingest/logs",
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }  # fmt: skip
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        statuses: list[int] = []

        async def receive() -> Any:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # never disconnects

        async def send(message: Any) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        async with gate:
            await app(scope, receive, send)
        assert statuses == [202], statuses

    try:
        async with app.lifespan():
            await asyncio.gather(*(one(body) for body in bodies[:200]))  # warm up
            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.gather(*(one(body) for body in bodies[200:]))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await bench._drop(postgres, dsn.rsplit("/", 1)[1])
    measured = requests - 200
    return {"rps": measured / wall, "cpu_us": cpu / measured * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout of the project to compare with")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import uvloop

        result = uvloop.run(measure(args.child, args.requests, args.clients, args.postgres))
        print(json.dumps(result))
        return
    trees = {"this tree": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    with open("/proc/loadavg") as loadavg:
        print(f"load average at start: {loadavg.read().split()[0]} on {os.cpu_count()} cores")
    for round_number in range(args.rounds):
        order = list(trees.items())[:: -1 if round_number % 2 else 1]
        for name, tree in order:
            child = [
                sys.executable, __file__, "--child", str(tree), "--requests", str(args.requests),
                "--clients", str(args.clients), "--postgres", args.postgres,
            ]  # fmt: skip
            output = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            print(
                f"round {round_number + 1} {name:9}: {result['rps']:,.0f} req/s, "
                f"{result['cpu_us']:,.0f} µs process CPU per request",
                flush=True,
            )


if __name__ == "__main__":
    main()
