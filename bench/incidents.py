"""Benchmark of the incidents domain: grouping throughput and anomaly scoring time.

    uv run python bench/incidents.py [--errors 50000] [--series 10000] [--correlation 100000]

Creates a scratch database on the PostgreSQL at BENCH_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/postgres), applies the migrations, seeds with set-based
INSERT .. SELECT generate_series, measures, and drops the database. Bounded: about a minute.

1. Grouping: ``--errors`` error signals (80 % ERROR logs, 20 % ERROR spans) over 5 services, every
   message distinct (user ids, md5 request ids) but only 200 templates; times ``run_grouping`` until
   every signal is folded and reports error signals/s.
2. Correlation (SPEC §14): ``--correlation`` error signals (80 % logs, 20 % spans, half of those client
   spans naming one of 3 databases) over 2,000 traces and 50 fingerprints (10 services x 5 templates),
   seeded twice in two projects: the first is grouped alone (``correlate=False``), the second grouped
   and correlated into problems, same run; reports both signals/s and the correlation's extra cost:
   by throughput, by the wall time inside ``correlate_batch``, and by CPU time (this process plus the
   batch's PostgreSQL backend, from ``/proc/<pid>/schedstat`` when the server is local), which a
   loaded box distorts least.
3. Anomaly scoring: ``--series`` active series (name, service, labels), 40 history points each (one a
   minute) and 5 recent points, 1 % of the series stepping up; times one ``detect_anomalies`` run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import structlog
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from prodsentinel.auth.models import Project
from prodsentinel.incidents import grouping as grouping_module
from prodsentinel.incidents.anomaly_detection import run_anomaly_detection
from prodsentinel.incidents.grouping import run_grouping
from prodsentinel.incidents.models import Anomaly, Incident, Problem
from prodsentinel.lib.database import alchemy_config, migrate, session_scope


async def admin(url: str, sql: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def seed_correlation(
    session_maker: async_sessionmaker[Any], project_id: uuid.UUID, n: int, now: datetime
) -> None:
    """``n`` error signals over 2,000 traces and 50 fingerprints; a fifth are spans, half of them client
    spans of a database (``db.system``/``server.address``/``db.name``)."""
    n_logs, n_spans = n * 4 // 5, n - n * 4 // 5
    async with session_scope(session_maker) as session:
        await session.execute(
            text(
                """
                INSERT INTO logs (project_id, signal_id, trace_id, service_name, timestamp, level, message)
                SELECT :pid, gen_random_uuid(), 'ct' || (g % 2000), 'svc' || ((g / 2000) % 10),
                       CAST(:now AS timestamptz) - make_interval(secs => (g % 2000) * 0.25),
                       40, 'step ' || chr(97 + (g / 20000) % 4) || ' failed for order ' || g
                FROM generate_series(1, :n) AS g
                """
            ),
            {"pid": project_id, "now": now, "n": n_logs},
        )
        await session.execute(
            text(
                """
                INSERT INTO spans (project_id, signal_id, trace_id, span_id, parent_span_id, service_name,
                                   name, start_time, end_time, duration_ms, status, attributes)
                SELECT :pid, gen_random_uuid(), 'ct' || (g % 2000), 's' || g, NULL,
                       'svc' || ((g / 2000) % 10), 'call dependency',
                       CAST(:now AS timestamptz) - make_interval(secs => (g % 2000) * 0.25),
                       CAST(:now AS timestamptz) - make_interval(secs => (g % 2000) * 0.25), 0, 2,
                       CASE WHEN g % 2 = 0 THEN jsonb_build_object(
                           'db.system', 'postgresql', 'server.address', 'db' || (g % 3), 'db.name', 'app')
                       END
                FROM generate_series(1, :n) AS g
                """
            ),
            {"pid": project_id, "now": now, "n": n_spans},
        )


#: Seconds spent inside ``correlate_batch`` (timed by wrapping it: the in-run share of correlation).
CORRELATION_SECONDS = [0.0]
#: CPU seconds (this process plus the batch's PostgreSQL backend) of the grouping batches and of the
#: ``correlate_batch`` calls inside them. On a loaded box wall time also counts waiting for a core; CPU
#: time counts the work. None when the backend's ``/proc/<pid>/schedstat`` is not readable (remote server).
CPU_SECONDS: dict[str, float | None] = {"batches": 0.0, "correlation": 0.0}


def _backend_cpu(pid: int) -> float | None:
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


async def _cpu(session: Any) -> float | None:
    """This process's CPU time plus that of the session's backend (asyncpg knows its pid: no query)."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    backend = _backend_cpu(raw.driver_connection.get_server_pid())
    return None if backend is None else time.process_time() + backend


def _time_correlation() -> None:
    original = grouping_module.correlate_batch
    original_batch = grouping_module.group_batch

    def add(name: str, started: float | None, ended: float | None) -> None:
        current = CPU_SECONDS[name]
        missing = current is None or started is None or ended is None
        CPU_SECONDS[name] = None if missing else current + ended - started  # type: ignore[operator]

    async def timed(session: Any, *args: Any, **kwargs: Any) -> Any:
        started, cpu = time.perf_counter(), await _cpu(session)
        try:
            return await original(session, *args, **kwargs)
        finally:
            CORRELATION_SECONDS[0] += time.perf_counter() - started
            add("correlation", cpu, await _cpu(session))

    async def timed_batch(session: Any, *args: Any, **kwargs: Any) -> Any:
        cpu = await _cpu(session)
        try:
            return await original_batch(session, *args, **kwargs)
        finally:
            add("batches", cpu, await _cpu(session))

    grouping_module.correlate_batch = timed  # type: ignore[assignment]
    grouping_module.group_batch = timed_batch  # type: ignore[assignment]


async def group_all(
    session_maker: async_sessionmaker[Any], now: datetime, *, correlate: bool
) -> tuple[int, float]:
    started = time.perf_counter()
    folded = 0
    while True:
        result = await run_grouping(session_maker, now=now, correlate=correlate)
        folded += result.signals
        if result.signals == 0:
            break
    return folded, time.perf_counter() - started


async def bench_correlation(
    engine: AsyncEngine, session_maker: async_sessionmaker[Any], n: int, now: datetime
) -> None:
    rates: dict[bool, float] = {}
    cpu: dict[bool, float | None] = {}
    _time_correlation()
    for correlate in (False, True):
        CPU_SECONDS.update(batches=0.0, correlation=0.0)
        async with session_scope(session_maker) as session:
            project = Project(name=f"bench-correlation-{int(correlate)}")
            session.add(project)
            await session.flush()
            project_id = project.id
        await seed_correlation(session_maker, project_id, n, now)
        async with engine.connect() as connection:
            await connection.execute(text("ANALYZE logs"))
            await connection.execute(text("ANALYZE spans"))
        folded, elapsed = await group_all(session_maker, now, correlate=correlate)
        rates[correlate] = folded / elapsed
        cpu[correlate] = CPU_SECONDS["batches"]
        async with session_maker() as session:
            incidents = await session.scalar(
                select(func.count()).select_from(Incident).where(Incident.project_id == project_id)
            )
            problems = await session.scalar(
                select(func.count()).select_from(Problem).where(Problem.project_id == project_id)
            )
        label = "grouping + correlation" if correlate else "grouping alone"
        print(
            f"{label}: {folded:,} error signals -> {incidents} incidents, {problems} problems "
            f"in {elapsed:.2f} s = {rates[correlate]:,.0f} signals/s"
        )
    overhead = rates[False] / rates[True] - 1
    inside = CORRELATION_SECONDS[0]
    total = folded / rates[True]
    print(
        f"correlation costs {overhead:.0%} on top of grouping by throughput; measured inside the "
        f"correlated run: {inside:.2f} s of {total:.2f} s = {inside / (total - inside):.0%} on top of "
        "the rest of the grouping (target < 30 %; the box is shared, the in-run share is the steadier figure)"
    )
    inside_cpu, baseline_cpu, correlated_cpu = CPU_SECONDS["correlation"], cpu[False], cpu[True]
    if inside_cpu is not None and baseline_cpu is not None and correlated_cpu is not None:
        print(
            f"CPU time (bench process + PostgreSQL backend): grouping alone {baseline_cpu:.2f} s, grouping + "
            f"correlation {correlated_cpu:.2f} s ({correlated_cpu / baseline_cpu - 1:+.0%}); inside the "
            f"correlated run {inside_cpu:.2f} s of {correlated_cpu:.2f} s = "
            f"{inside_cpu / (correlated_cpu - inside_cpu):.0%} on top of the rest of the grouping"
        )


async def bench(database_url: str, errors: int, series: int, correlation: int) -> None:
    engine = create_async_engine(database_url, pool_size=5)
    session_maker = async_sessionmaker(engine, expire_on_commit=False)
    now = datetime.now(UTC).replace(microsecond=0)
    async with session_scope(session_maker) as session:
        project = Project(name="bench")
        session.add(project)
        await session.flush()
        project_id = project.id

    # ------------------------------------------------------------------ grouping
    n_logs, n_spans = errors * 4 // 5, errors - errors * 4 // 5
    started = time.perf_counter()
    async with session_scope(session_maker) as session:
        await session.execute(
            text(
                """
                INSERT INTO logs (project_id, signal_id, trace_id, service_name, timestamp, level, message)
                SELECT :pid, gen_random_uuid(), 'tr' || (g % 5000), 'svc' || (g % 5),
                       CAST(:now AS timestamptz) - make_interval(secs => g % 3600),
                       CASE WHEN g % 50 = 0 THEN 50 ELSE 40 END,
                       'op' || chr(97 + g % 20) || chr(97 + (g / 20) % 10) || ' failed for user ' || g
                       || ' request ' || md5(g::text)
                FROM generate_series(1, :n) AS g
                """
            ),
            {"pid": project_id, "now": now, "n": n_logs},
        )
        await session.execute(
            text(
                """
                INSERT INTO spans (project_id, signal_id, trace_id, span_id, parent_span_id, service_name,
                                   name, start_time, end_time, duration_ms, status)
                SELECT :pid, gen_random_uuid(), 'tr' || (g % 5000), 's' || g, NULL, 'svc' || (g % 5),
                       'GET /items/' || g, CAST(:now AS timestamptz) - make_interval(secs => g % 3600),
                       CAST(:now AS timestamptz) - make_interval(secs => g % 3600), 0, 2
                FROM generate_series(1, :n) AS g
                """
            ),
            {"pid": project_id, "now": now, "n": n_spans},
        )
    async with engine.connect() as connection:
        await connection.execute(text("ANALYZE logs"))
        await connection.execute(text("ANALYZE spans"))
    print(f"seeded {errors:,} error signals in {time.perf_counter() - started:.1f} s")

    started = time.perf_counter()
    folded = 0
    while True:
        result = await run_grouping(session_maker, now=now)
        folded += result.signals
        if result.signals == 0:
            break
    elapsed = time.perf_counter() - started
    async with session_maker() as session:
        incidents = await session.scalar(select(func.count()).select_from(Incident))
        total = await session.scalar(select(func.sum(Incident.count)))
    assert total == errors, (total, errors)
    print(
        f"grouping: {folded:,} error signals -> {incidents:,} incidents in {elapsed:.2f} s "
        f"= {folded / elapsed:,.0f} signals/s"
    )

    # ------------------------------------------------------------------ correlation
    if correlation:
        await bench_correlation(engine, session_maker, correlation, now)

    # ------------------------------------------------------------------ anomaly scoring
    started = time.perf_counter()
    async with session_scope(session_maker) as session:
        await session.execute(
            text(
                """
                INSERT INTO metric_points
                    (project_id, signal_id, name, service_name, timestamp, value, labels)
                SELECT :pid, gen_random_uuid(), 'metric_' || (s % 100), 'svc' || (s / 100),
                       CAST(:now AS timestamptz) - make_interval(secs => 330 + o * 60),
                       100 + 5 * random(), jsonb_build_object('shard', (s % 7)::text)
                FROM generate_series(0, :series - 1) AS s, generate_series(0, 39) AS o
                """
            ),
            {"pid": project_id, "now": now, "series": series},
        )
        await session.execute(
            text(
                """
                INSERT INTO metric_points
                    (project_id, signal_id, name, service_name, timestamp, value, labels)
                SELECT :pid, gen_random_uuid(), 'metric_' || (s % 100), 'svc' || (s / 100),
                       CAST(:now AS timestamptz) - make_interval(secs => o * 60),
                       CASE WHEN s % 100 = 0 THEN 200 ELSE 100 + 5 * random() END,
                       jsonb_build_object('shard', (s % 7)::text)
                FROM generate_series(0, :series - 1) AS s, generate_series(0, 4) AS o
                """
            ),
            {"pid": project_id, "now": now, "series": series},
        )
    async with engine.connect() as connection:
        await connection.execute(text("ANALYZE metric_points"))
    print(f"seeded {series:,} series x 45 points in {time.perf_counter() - started:.1f} s")

    timings: list[float] = []
    recorded: list[int] = []
    for _run in range(2):  # the second run re-scores the same window: nothing new, same work
        started = time.perf_counter()
        anomalies = (await run_anomaly_detection(session_maker, now=now)).anomalies
        timings.append(time.perf_counter() - started)
        recorded.append(len(anomalies))
    async with session_maker() as session:
        stored = await session.scalar(select(func.count()).select_from(Anomaly))
    print(
        f"anomaly scoring: {series:,} active series in {timings[0]:.2f} s (re-run {timings[1]:.2f} s); "
        f"{recorded[0]} anomalies recorded, {recorded[1]} on re-run ({stored} stored), "
        f"expected {series // 100 * 3}"
    )
    await engine.dispose()


def server_url(embedded: bool) -> tuple[str, Path | None]:
    """A libpq URL of a maintenance database (BENCH_POSTGRES_URL, the local server, or an embedded one
    in a temp dir, returned too so it can be stopped and removed)."""
    configured = os.environ.get("BENCH_POSTGRES_URL")
    if configured:
        return configured, None
    local = "postgresql://postgres@127.0.0.1:5432/postgres"
    if not embedded:
        try:
            asyncio.run(admin(local, "SELECT 1"))
            return local, None
        except (OSError, asyncpg.PostgresError) as exc:
            print(f"local PostgreSQL unavailable ({type(exc).__name__}); using an embedded one")
    from prodsentinel.embedded import embedded_database_url

    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    data_dir = Path(tempfile.mkdtemp(prefix="ps-bench-"))
    url = embedded_database_url(data_dir)
    return "postgresql://" + url.split("://", 1)[1], data_dir


def stop_embedded(data_dir: Path) -> None:
    from prodsentinel import embedded

    if embedded._server is not None:
        embedded._server.cleanup()
    shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    # The services log through structlog; without the app's config it would print debug lines.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--errors", type=int, default=50_000)
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--correlation", type=int, default=100_000, help="0: skip the correlation case")
    parser.add_argument("--embedded", action="store_true", help="use an embedded PostgreSQL in a temp dir")
    args = parser.parse_args()
    server, data_dir = server_url(args.embedded)
    name = f"ps_bench_incidents_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin(server, f'CREATE DATABASE "{name}"'))
    parts = urlsplit(server)
    url = f"postgresql+asyncpg://{parts.netloc}/{name}" + (f"?{parts.query}" if parts.query else "")
    try:
        migrate(alchemy_config(url))
        asyncio.run(bench(url, args.errors, args.series, args.correlation))
    finally:
        asyncio.run(admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if data_dir is not None:
            stop_embedded(data_dir)


if __name__ == "__main__":
    main()
