"""OTLP/HTTP ingest benchmark (SPEC §11): the real service on granian, a fresh database on the local
PostgreSQL.

    uv run python bench/otlp.py                          # defaults sized for a shared 2-core box (~1 min)
    uv run python bench/otlp.py --batches 120 --clients 8 --rounds 5

The same spans (made with the real OpenTelemetry SDK, ``--batches`` x 512, the SDK's default batch) are
written four ways, each into a project of its own so none meets the others' rows, each after a
``CHECKPOINT``:

1. sdk: the real ``OTLPSpanExporter`` (protobuf over HTTP, batches of 512) from ``--clients`` threads of
   a separate process; then the SDK's ``OTLPLogExporter`` with as many log records (``logs/s``);
2. otlp: a raw load generator POSTing the same ``ExportTraceServiceRequest`` bodies from ``--clients``
   keep-alive connections (``bench/ingest.py``'s client: the client is not the bottleneck);
3. json: the same spans as §4 JSON arrays (same ids, same attributes) to ``/api/v1/ingest/traces``;
4. raw COPY: asyncpg ``COPY`` of the same rows into a copy of ``spans`` without its unique constraint.

Phases 2 and 3 run ``--rounds`` times (default 3), alternating which goes first, each round into fresh
projects (a repeat would only meet duplicates): the machine is shared, so the ratio is given per round
and as the median with its spread.

Prints spans/s, server CPU µs per span for each, the ratio OTLP protobuf / JSON ingest (target >= 0.8),
and verifies in PostgreSQL that every acknowledged span (and log record) is stored exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

import ingest as base
from prodsentinel.ingest.otlp_decoding import PROTOBUF_CODEC
from prodsentinel.ingest.otlp_mapping import map_spans
from prodsentinel.ingest.services import rows_of

BATCH = 512
FIXED_PROJECTS = ("sdk", "logs")
ROUTES = ["/checkout", "/cart", "/search", "/login", "/orders/{id}", "/pay"]
SPANS_COLUMNS = [
    "project_id", "signal_id", "trace_id", "span_id", "parent_span_id", "service_name", "name",
    "start_time", "end_time", "duration_ms", "status", "attributes",
]  # fmt: skip


# ----------------------------------------------------------------------------------------------- data
def make_spans(count: int) -> list[list[ReadableSpan]]:
    """``count`` spans from the real SDK (traces of one SERVER span and 7 CLIENT children, ~2 % errors),
    in batches of 512 as the ``BatchSpanProcessor`` sends them."""
    memory = InMemorySpanExporter()
    resource = Resource.create({"service.name": "checkout", "service.version": "1.4.2", "host.name": "web-3"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("checkout.http", "1.0")
    made = 0
    while made < count:
        route = random.choice(ROUTES)
        with tracer.start_as_current_span(f"GET {route}", kind=SpanKind.SERVER) as root:
            root.set_attributes({"http.method": "GET", "http.route": route, "http.status_code": 200})
            for n in range(7):
                with tracer.start_as_current_span(f"db query {n}", kind=SpanKind.CLIENT) as child:
                    child.set_attributes({"db.system": "postgresql", "db.statement": "SELECT 1", "rows": n})
                    if random.random() < 0.02:
                        child.set_status(Status(StatusCode.ERROR, "timeout"))
        made += 8
    spans = list(memory.get_finished_spans())[:count]
    return [spans[i : i + BATCH] for i in range(0, len(spans), BATCH)]


def make_logs(count: int) -> list[list[Any]]:
    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger("checkout.app")
    for i in range(count):
        logger.emit(severity_number=9 + 4 * (i % 3), body=f"order {i} handled", attributes={"order": i})
    records = list(memory.get_finished_logs())
    return [records[i : i + BATCH] for i in range(0, len(records), BATCH)]


def json_body(batch: list[ReadableSpan]) -> bytes:
    """The same spans as §4 items: the ids, attributes and signal ids OTLP ingest stores."""
    mapped = map_spans(PROTOBUF_CODEC, encode_spans(batch))
    return msgspec.json.encode(mapped.items)


# -------------------------------------------------------------------------------------------- clients
def _request(path: str, key: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nX-API-Key: {key}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _raw(port: int, requests: list[bytes], clients: int, ok: int) -> dict[str, Any]:
    queue = list(reversed(range(len(requests))))
    acked: list[int] = []
    statuses: dict[int, int] = {}

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while queue:
            index = queue.pop()
            status, _ = await base._exchange(reader, writer, requests[index])
            statuses[status] = statuses.get(status, 0) + 1
            if status == ok:
                acked.append(index)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return {"elapsed": time.perf_counter() - started, "acked": acked, "statuses": statuses}


def _sdk(exporter_type: Any, endpoint: str, key: str, batches: list[Any], clients: int) -> dict[str, Any]:
    """Each thread its own real SDK exporter, exporting its share of the batches."""
    queue = list(reversed(range(len(batches))))
    lock = threading.Lock()
    acked: list[int] = []
    failed = [0]

    def worker() -> None:
        exporter = exporter_type(endpoint=endpoint, headers={"x-api-key": key}, timeout=60)
        while True:
            with lock:
                if not queue:
                    return
                index = queue.pop()
            if exporter.export(batches[index]).name == "SUCCESS":
                with lock:
                    acked.append(index)
            else:
                failed[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"elapsed": time.perf_counter() - started, "acked": acked, "statuses": {"failed": failed[0]}}


def _child(run: Callable[[], dict[str, Any]], out: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    cpu = time.process_time()
    result = run()
    result["client_cpu"] = time.process_time() - cpu
    out.send(result)
    out.close()


def phase(server_pid: int, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one load phase in a forked process; add the server's and PostgreSQL's CPU seconds."""
    parent, child = multiprocessing.Pipe(duplex=False)
    process = multiprocessing.get_context("fork").Process(target=_child, args=(run, child))
    server_cpu = base.cpu_seconds(base.process_tree(server_pid))
    postgres_cpu = base.postgres_cpu_seconds()
    process.start()
    result: dict[str, Any] = parent.recv()
    process.join()
    result["server_cpu"] = base.cpu_seconds(base.process_tree(server_pid)) - server_cpu
    result["postgres_cpu"] = base.postgres_cpu_seconds() - postgres_cpu
    return result


# ------------------------------------------------------------------------------------------- database
async def prepare(
    admin_url: str, projects: list[str]
) -> tuple[str, str, dict[str, str], dict[str, uuid.UUID]]:
    """A fresh migrated database, an ingest key per project and ``bench_raw_spans`` for raw COPY."""
    from prodsentinel.auth import services as auth_services
    from prodsentinel.lib.database import alchemy_config, migrate, session_scope

    name = f"ps_bench_otlp_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    netloc = admin_url.split("://", 1)[1].rsplit("/", 1)[0]
    url, dsn = f"postgresql+asyncpg://{netloc}/{name}", f"postgresql://{netloc}/{name}"
    config = alchemy_config(url)
    await asyncio.to_thread(migrate, config)
    keys: dict[str, str] = {}
    async with session_scope(config.create_session_maker()) as session:  # type: ignore[arg-type]
        for project in projects:
            created = await auth_services.create_key(
                session, name=project, scopes=["ingest"], project=project
            )
            keys[project] = created.key
    await config.get_engine().dispose()
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "CREATE TABLE bench_raw_spans "
            "(LIKE spans INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING INDEXES)"
        )
        for constraint in await connection.fetch(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'bench_raw_spans'::regclass AND contype = 'u'"
        ):
            await connection.execute(f'ALTER TABLE bench_raw_spans DROP CONSTRAINT "{constraint[0]}"')
        ids = {row["name"]: row["id"] for row in await connection.fetch("SELECT name, id FROM projects")}
    finally:
        await connection.close()
    return url, dsn, keys, ids


async def raw_copy(dsn: str, batches: list[list[tuple[Any, ...]]]) -> float:
    connection = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        for batch in batches:
            async with connection.transaction():
                await connection.copy_records_to_table(
                    "bench_raw_spans", records=batch, columns=SPANS_COLUMNS
                )
        return time.perf_counter() - started
    finally:
        await connection.close()


async def verify(dsn: str, ids: dict[str, uuid.UUID], expected: dict[str, set[uuid.UUID]]) -> dict[str, Any]:
    """Per project: rows stored, distinct keys, acknowledged ids missing, keys stored twice."""
    connection = await asyncpg.connect(dsn)
    report: dict[str, Any] = {}
    try:
        for project, signal_ids in expected.items():
            table = "logs" if project == "logs" else "spans"
            row = await connection.fetchrow(
                f"SELECT count(*) AS stored, count(DISTINCT signal_id) AS distinct_ids, "
                f"count(*) FILTER (WHERE signal_id = ANY($2::uuid[])) AS acked_found "
                f"FROM {table} WHERE project_id = $1",
                ids[project],
                list(signal_ids),
            )
            report[project] = {**dict(row), "acked": len(signal_ids)}
    finally:
        await connection.close()
    return report


# ----------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--batches", type=int, default=60, help="batches of 512 spans (default 60)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients per phase (default 4)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="otlp/json phase pairs, each into fresh projects (default 3)"
    )
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()

    rounds = [(f"otlp{n}", f"json{n}") for n in range(1, args.rounds + 1)]
    projects = [*FIXED_PROJECTS, *(name for pair in rounds for name in pair)]
    url, dsn, keys, ids = asyncio.run(prepare(args.postgres, projects))
    print(
        f"database {dsn.rsplit('/', 1)[1]} ready; making {args.batches} x {BATCH} spans with the SDK",
        flush=True,
    )
    span_batches = make_spans(args.batches * BATCH)
    log_batches = make_logs(args.batches * BATCH)
    requests = [encode_spans(batch) for batch in span_batches]
    protobuf = [message.SerializeToString() for message in requests]
    json_bodies = [json_body(batch) for batch in span_batches]
    mapped = [map_spans(PROTOBUF_CODEC, message).items for message in requests]
    span_ids = [[item.signal_id for item in items] for items in mapped]
    raw_rows = [rows_of("spans", ids[FIXED_PROJECTS[0]], items) for items in mapped]
    log_ids = _log_ids(log_batches)
    total = sum(len(batch) for batch in span_batches)

    port = base.free_port()
    server = base.start_server(url, port, 1)
    endpoint = f"http://127.0.0.1:{port}"
    clients = args.clients

    def raw(project: str, path: str, content_type: str, bodies: list[bytes], ok: int) -> dict[str, Any]:
        made = [_request(path, keys[project], content_type, body) for body in bodies]
        return asyncio.run(_raw(port, made, clients, ok))

    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("sdk", lambda: _sdk(OTLPSpanExporter, f"{endpoint}/v1/traces", keys["sdk"], span_batches, clients))
    ]
    for n, (otlp, json) in enumerate(rounds):
        pair = [
            (otlp, lambda p=otlp: raw(p, "/v1/traces", "application/x-protobuf", protobuf, 200)),
            (json, lambda p=json: raw(p, "/api/v1/ingest/traces", "application/json", json_bodies, 202)),
        ]
        steps.extend(pair if n % 2 == 0 else pair[::-1])
    steps.append(
        ("logs", lambda: _sdk(OTLPLogExporter, f"{endpoint}/v1/logs", keys["logs"], log_batches, clients))
    )
    results: dict[str, dict[str, Any]] = {}
    try:
        for name, run in steps:
            asyncio.run(base.checkpoint(dsn))
            results[name] = phase(server.pid, run)
            print(
                f"phase {name}: {results[name]['elapsed']:.2f} s, statuses {results[name]['statuses']}",
                flush=True,
            )
        asyncio.run(base.checkpoint(dsn))
        raw_seconds = asyncio.run(raw_copy(dsn, raw_rows))
    finally:
        base.stop_server(server)

    expected = {
        project: {signal for index in results[project]["acked"] for signal in span_ids[index]}
        for project in results
        if project != "logs"
    }
    expected["logs"] = {signal for index in results["logs"]["acked"] for signal in log_ids[index]}
    check = asyncio.run(verify(dsn, ids, expected))
    if not args.keep_db:
        asyncio.run(base._drop(args.postgres, dsn.rsplit("/", 1)[1]))

    print()
    rates: dict[str, float] = {}
    cpu: dict[str, float] = {}
    labels = {
        "sdk": "OTLP protobuf, real SDK exporter",
        "logs": "OTLP protobuf logs, real SDK exporter",
        **{otlp: "OTLP protobuf, raw load generator" for otlp, _ in rounds},
        **{json: "JSON ingest (/api/v1/ingest/traces)" for _, json in rounds},
    }
    for name, _ in steps:
        result = results[name]
        items = sum(len(span_ids[i] if name != "logs" else log_ids[i]) for i in result["acked"])
        rates[name] = items / result["elapsed"]
        cpu[name] = result["server_cpu"] * 1e6 / max(1, items)
        unit = "logs" if name == "logs" else "spans"
        print(
            f"{name:5} {labels[name]:40} {rates[name]:>9,.0f} {unit}/s; server {cpu[name]:5.1f} "
            f"µs CPU per {unit[:-1]}, postgres {result['postgres_cpu'] * 1e6 / max(1, items):5.1f} µs; "
            f"client {result['client_cpu'] / result['elapsed']:.0%} of a core"
        )
    print(f"raw   COPY of the same span rows (one connection)    {total / raw_seconds:>9,.0f} spans/s")
    ratios = [rates[otlp] / rates[json] for otlp, json in rounds]
    cpu_ratios = [cpu[json] / cpu[otlp] for otlp, json in rounds]
    otlp_rate = statistics.median(rates[otlp] for otlp, _ in rounds)
    json_rate = statistics.median(rates[json] for _, json in rounds)
    print(
        f"ratio OTLP protobuf / JSON ingest = {statistics.median(ratios):.2f}x "
        f"median of {len(rounds)} rounds "
        f"(spread {min(ratios):.2f}-{max(ratios):.2f}: {', '.join(f'{r:.2f}' for r in ratios)}; raw client), "
        f"{rates['sdk'] / json_rate:.2f}x (SDK exporter); target >= 0.8x"
    )
    print(
        f"      by server CPU per span (JSON µs / OTLP µs) = {statistics.median(cpu_ratios):.2f}x "
        f"(spread {min(cpu_ratios):.2f}-{max(cpu_ratios):.2f}); OTLP = {otlp_rate * raw_seconds / total:.0%} "
        "of raw COPY"
    )
    ok = True
    for project, row in check.items():
        exact = row["stored"] == row["distinct_ids"] == row["acked_found"] == row["acked"]
        full = project == "logs" or row["acked"] == total
        ok = ok and exact and full
        print(
            f"verify {project:5} acknowledged {row['acked']}, stored {row['stored']} "
            f"(distinct {row['distinct_ids']}), acknowledged and found {row['acked_found']}"
        )
    print("RESULT  " + ("every acknowledged item is stored exactly once" if ok else "VERIFICATION FAILED"))
    sys.exit(0 if ok else 1)


def _log_ids(batches: list[list[Any]]) -> list[list[uuid.UUID]]:
    from prodsentinel.ingest.otlp_mapping import map_logs

    now = datetime.now(UTC)
    return [[item.signal_id for item in map_logs(PROTOBUF_CODEC, encode_logs(b), now).items] for b in batches]


if __name__ == "__main__":
    main()
