"""How long the stored-state query behind /metrics takes as the delivery-attempt ledger grows.

Usage (a scratch database migrated to head; the script adds rows to it):

    export DATABASE_URL=postgresql://postgres@127.0.0.1:5432/ps_bench
    uv run python bench/metrics_scrape.py 10000 100000 1000000

For each target size it fills ``delivery_attempts`` (set-based, generate_series) up to that many rows,
plus 1/10 as many outbox items and audit rows, then times ``StoredStateQueries.fetch`` (one SQL round trip)
ten times and prints min / median / max in milliseconds.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from prodsentinel.lib.database import resolve_database_url
from prodsentinel.settings import get_settings
from prodsentinel.system.state_queries import StoredStateQueries

SETUP = """
INSERT INTO projects (id, name, created_at, updated_at)
VALUES ('00000000-0000-7000-8000-000000000001', 'bench', now(), now()) ON CONFLICT DO NOTHING;
INSERT INTO notification_channels (id, project_id, name, url, min_severity, enabled, created_at, updated_at)
VALUES ('00000000-0000-7000-8000-000000000002', '00000000-0000-7000-8000-000000000001', 'bench', 'http://x',
        'low', true, now(), now()) ON CONFLICT DO NOTHING;
"""

FILL = """
WITH items AS (
  INSERT INTO outbox_items (id, project_id, channel_id, event_id, delivery_id, event_type, severity, payload,
                            status, attempts, next_attempt_at, created_at, updated_at)
  SELECT gen_random_uuid(), '00000000-0000-7000-8000-000000000001', '00000000-0000-7000-8000-000000000002',
         gen_random_uuid(), gen_random_uuid(), 'ALERT_FIRING', 'high', '{}'::jsonb,
         (ARRAY['delivered','delivered','delivered','pending','dead'])[1 + (g % 5)], 1, now(), now(), now()
  FROM generate_series(1, :n / 10) AS g
  RETURNING id, delivery_id, event_id
)
INSERT INTO delivery_attempts (id, project_id, outbox_id, channel_id, delivery_id, event_id, attempt_number,
                               started_at, duration_ms, http_status, outcome)
SELECT gen_random_uuid(), '00000000-0000-7000-8000-000000000001', items.id,
       '00000000-0000-7000-8000-000000000002', items.delivery_id, items.event_id, a, now(),
       random() * 2000, 200, (ARRAY['delivered','retry','dead'])[1 + (a % 3)]
FROM items, generate_series(1, 10) AS a;
INSERT INTO audit_events (id, project_id, at, actor, action, subject_type, details)
SELECT gen_random_uuid(), '00000000-0000-7000-8000-000000000001', now(), 'bench',
       (ARRAY['alert.pending','alert.firing','alert.resolved','alert.ack'])[1 + (g % 4)], 'alert', '{}'::jsonb
FROM generate_series(1, :n / 10) AS g;
"""


async def main(targets: list[int]) -> None:
    engine = create_async_engine(resolve_database_url(get_settings()))
    session_maker = async_sessionmaker(engine, expire_on_commit=False)
    async with session_maker() as session:
        for statement in SETUP.strip().split(";\n"):
            await session.execute(text(statement))
        await session.commit()
    for target in targets:
        async with session_maker() as session:
            have = int(await session.scalar(text("SELECT count(*) FROM delivery_attempts")) or 0)
            if target > have:
                for statement in FILL.strip().split(";\n"):
                    await session.execute(text(statement), {"n": target - have})
                await session.commit()
                await session.execute(text("ANALYZE delivery_attempts"))
            rows = int(await session.scalar(text("SELECT count(*) FROM delivery_attempts")) or 0)
        timings = []
        for _ in range(10):
            async with session_maker() as session:
                started = time.perf_counter()
                await StoredStateQueries(session).fetch()
                timings.append((time.perf_counter() - started) * 1000)
                await session.rollback()
        print(
            f"delivery_attempts={rows:>9,}  stored-state query ms: min {min(timings):7.1f}  "
            f"median {statistics.median(timings):7.1f}  max {max(timings):7.1f}"
        )
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main([int(arg) for arg in sys.argv[1:]] or [10_000, 100_000]))
