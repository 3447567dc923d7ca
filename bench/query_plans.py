"""Print the PostgreSQL plans and timings of the query API's statements on seeded data.

Usage (a migrated scratch database; the script writes ~500k rows into 5 projects of its own and removes
them at the end)::

    createdb -h 127.0.0.1 -U postgres ps_plans
    export DATABASE_URL=postgresql://postgres@127.0.0.1:5432/ps_plans
    uv run prodsentinel database upgrade --no-prompt
    uv run python bench/query_plans.py postgresql+asyncpg://postgres@127.0.0.1:5432/ps_plans

It runs the repository methods themselves (the SQL the API sends) and, for each SELECT, first runs
``EXPLAIN (ANALYZE, COSTS OFF)`` with the same parameters. It also explains the statements of the write
path's duplicate probe and of the incident grouping pass that read the signal tables (docs/query.md
"Indexes of the signal tables"). Retention drops partitions and has no statement over rows to explain.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, event, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from prodsentinel.auth.models import Project
from prodsentinel.incidents.grouping_queries import SOURCES, GroupingQueries
from prodsentinel.signals.models import LogRecord, MetricPoint, Span
from prodsentinel.signals.partition_queries import PartitionQueries
from prodsentinel.signals.partitions import DEFAULT_INTERVAL_SECONDS, PARTITIONED, ranges_between
from prodsentinel.signals.read_queries import LogQuery, MetricSeriesQuery, SignalReadQueries, SpanQuery

PROJECTS = [uuid.UUID(int=0xB3AC4 * 16 + i) for i in range(5)]
P = PROJECTS[2]

SEED = """
INSERT INTO projects (id, name, created_at, updated_at)
  SELECT unnest(CAST(:ids AS uuid[])), 'bench-plans-' || generate_series(1, 5), now(), now();
INSERT INTO logs (project_id, signal_id, trace_id, service_name, timestamp, level, message, attributes)
  SELECT (CAST(:ids AS uuid[]))[1 + g % 5], gen_random_uuid(),
         CASE WHEN g % 3 = 0 THEN 'trace-' || (g / 30) END, 'svc-' || (g % 20),
         now() - make_interval(secs => g), (ARRAY[10,20,20,20,30,40,50])[1 + g % 7],
         'message number ' || g || ' status ' || (g % 97), '{}'::jsonb
  FROM generate_series(1, 200000) g;
INSERT INTO spans (project_id, signal_id, trace_id, span_id, parent_span_id, service_name, name, start_time,
                   end_time, duration_ms, status, attributes)
  SELECT (CAST(:ids AS uuid[]))[1 + g % 5], gen_random_uuid(), 'trace-' || (g / 10), 's' || g,
         CASE WHEN g % 10 <> 0 THEN 's' || (g - 1) END, 'svc-' || (g % 20), 'op-' || (g % 50),
         now() - make_interval(secs => g),
         now() - make_interval(secs => g) + make_interval(secs => (g % 1000) / 1000.0),
         g % 1000, g % 3, '{}'::jsonb
  FROM generate_series(1, 100000) g;
INSERT INTO metric_points (project_id, signal_id, name, service_name, timestamp, value, labels)
  SELECT (CAST(:ids AS uuid[]))[1 + g % 5], gen_random_uuid(), 'm' || (g % 10), 'svc-' || (g % 20),
         now() - make_interval(secs => g), random() * 100, jsonb_build_object('route', '/r' || (g % 4))
  FROM generate_series(1, 200000) g;
ANALYZE logs; ANALYZE spans; ANALYZE metric_points; ANALYZE projects;
"""


async def main(url: str) -> None:
    engine = create_async_engine(url)
    session_maker = async_sessionmaker(engine, expire_on_commit=False)
    ids = PROJECTS
    now = datetime.now(UTC)
    async with session_maker() as session:  # the seed reaches back ~2.3 days
        starts = ranges_between(now - timedelta(days=3), now, DEFAULT_INTERVAL_SECONDS)
        for table in PARTITIONED.values():
            await PartitionQueries(session).ensure(table, starts, DEFAULT_INTERVAL_SECONDS)
        await session.commit()
    async with engine.begin() as connection:
        for statement in filter(str.strip, SEED.split(";")):
            await connection.execute(text(statement), {"ids": ids} if ":ids" in statement else {})
    print("seeded 200,000 logs, 100,000 spans, 200,000 metric points over 5 projects\n")

    @event.listens_for(engine.sync_engine, "before_cursor_execute", retval=True)
    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> Any:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")) and "pg_" not in statement:
            cursor.execute("EXPLAIN (ANALYZE, COSTS OFF) " + statement, parameters)
            for row in cursor.fetchall():
                if not row[0].lstrip().startswith(("Buffers", "Heap Blocks", "Batches", "Sort Method")):
                    print("   ", row[0])
        return statement, parameters

    deep = (now - timedelta(hours=40), 10**12)
    try:
        async with session_maker() as session:
            repo = SignalReadQueries(session)
            cases: dict[str, Awaitable[Any]] = {
                "logs: first page": repo.list_logs(LogQuery(project_id=P, limit=100)),
                "logs: deep page": repo.list_logs(LogQuery(project_id=P, limit=100, after=deep)),
                "logs: service + deep page": repo.list_logs(
                    LogQuery(project_id=P, limit=100, service="svc-2", after=deep)
                ),
                "logs: level >= ERROR": repo.list_logs(LogQuery(project_id=P, limit=100, min_level=40)),
                "logs: trace_id": repo.list_logs(LogQuery(project_id=P, limit=100, trace_id="trace-100")),
                "logs: q, frequent": repo.list_logs(LogQuery(project_id=P, limit=100, q="STATUS 1")),
                "logs: q, absent": repo.list_logs(LogQuery(project_id=P, limit=100, q="no such text")),
                "spans: first page": repo.list_spans(SpanQuery(project_id=P, limit=100)),
                "spans: service": repo.list_spans(SpanQuery(project_id=P, limit=100, service="svc-2")),
                "spans: name": repo.list_spans(SpanQuery(project_id=P, limit=100, name="op-7")),
                "spans: min_duration_ms": repo.list_spans(
                    SpanQuery(project_id=P, limit=100, min_duration_ms=990)
                ),
                "trace: summary": repo.trace_summary(P, "trace-102"),
                "trace: spans": repo.trace_spans(P, "trace-102", 10_000),
                "trace: logs": repo.trace_logs(P, "trace-102", 1_000),
                "metrics: p95 per minute, one service, 6 h": repo.metric_series(
                    MetricSeriesQuery(
                        project_id=P,
                        name="m2",
                        agg="p95",
                        step=60,
                        service="svc-2",
                        since=now - timedelta(hours=6),
                        until=now,
                    )
                ),
                "metrics: avg, all services, labels, 6 h": repo.metric_series(
                    MetricSeriesQuery(
                        project_id=P,
                        name="m2",
                        agg="avg",
                        step=300,
                        labels={"route": "/r2"},
                        since=now - timedelta(hours=6),
                        until=now,
                    )
                ),
                "services: 1 h window": repo.service_stats(P, now - timedelta(hours=1)),
                "services: 24 h window": repo.service_stats(P, now - timedelta(hours=24)),
            }
            for name, call in cases.items():
                print(f"== {name}")
                await call
            grouping = GroupingQueries(session)
            for source in SOURCES.values():
                print(f"== grouping: next 5,000 new {source.table} errors by id")
                await grouping.new_error_groups(source, after_id=0, limit=5_000)
            print("== ingest: duplicate probe of 1,000 new keys (signals.writes, fast path)")
            probe = text(
                "SELECT signal_id FROM logs WHERE project_id = :p AND signal_id = ANY(CAST(:ids AS uuid[])) "
                "AND timestamp > CAST(:lo AS timestamptz) - interval '24 hours' "
                "AND timestamp < CAST(:hi AS timestamptz) + interval '24 hours'"
            )
            keys = [uuid.uuid4() for _ in range(1000)]
            await session.execute(probe, {"p": P, "ids": keys, "lo": now, "hi": now})
            await session.rollback()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", explain)
        async with engine.begin() as connection:
            for model in (LogRecord, Span, MetricPoint):
                await connection.execute(delete(model).where(model.project_id.in_(PROJECTS)))
            await connection.execute(delete(Project).where(Project.id.in_(PROJECTS)))
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
