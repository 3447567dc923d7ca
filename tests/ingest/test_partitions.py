"""Ingest into time partitions (SPEC §16): a missing partition is created on demand, never a failure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.signals.partition_queries import PartitionQueries
from prodsentinel.signals.partitions import PARTITIONED
from prodsentinel.signals.writes import SMALL_BATCH_ROWS
from tests.conftest import KeyFactory
from tests.factories import LogInFactory, MetricInFactory, SpanInFactory
from tests.ingest.test_ingest import ENDPOINTS, post, stored

SessionMaker = async_sessionmaker[AsyncSession]


async def covered(session_maker: SessionMaker, table: str, moment: datetime) -> bool:
    async with session_maker() as session:
        partitions = await PartitionQueries(session).attached(PARTITIONED[table])
    return any(p.lower <= moment < p.upper for p in partitions)


def at(item: object, moment: datetime) -> dict[str, object]:
    data = msgspec.to_builtins(item)
    for field in ("timestamp", "start_time"):
        if field in data:
            data[field] = moment.isoformat()
    if "end_time" in data:
        data["end_time"] = (moment + timedelta(milliseconds=5)).isoformat()
    return data


class TestPartitionOnDemand:
    @pytest.mark.parametrize("endpoint", ["logs", "traces", "metrics"])
    async def test_a_late_and_an_early_signal_create_their_partitions(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: SessionMaker,
        project_name: str,
        endpoint: str,
    ) -> None:
        path, factory, table = ENDPOINTS[endpoint]
        key = await make_key("ingest")
        now = datetime.now(UTC)
        # 20 days back and 23 h ahead: no migration or cron made these partitions (the cron makes 3 days
        # ahead; the 23 h one may exist already, the 20-day one exists only if another test made it)
        late, early = now - timedelta(days=20, hours=3), now + timedelta(hours=23)
        items = [at(factory.build(), late), at(factory.build(), early)]
        response = await post(client, path, key, msgspec.json.encode(items))
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": 2, "duplicates": 0}
        assert await covered(session_maker, table, late)
        assert await covered(session_maker, table, early)
        assert await stored(session_maker, table, project_name) == 2
        again = await post(client, path, key, msgspec.json.encode(items))
        assert again.json() == {"accepted": 0, "duplicates": 2}

    async def test_a_large_batch_over_many_missing_days_takes_the_copy_path(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: SessionMaker,
        project_name: str,
    ) -> None:
        key = await make_key("ingest")
        base = datetime.now(UTC) - timedelta(days=200)  # far older than anything else in the suite
        items = [
            at(LogInFactory.build(), base + timedelta(hours=7 * n)) for n in range(SMALL_BATCH_ROWS + 50)
        ]
        response = await post(client, "/api/v1/ingest/logs", key, msgspec.json.encode(items))
        assert response.json() == {"accepted": len(items), "duplicates": 0}
        days = {(base + timedelta(hours=7 * n)).date() for n in range(len(items))}
        async with session_maker() as session:
            partitions = await PartitionQueries(session).attached(PARTITIONED["logs"])
        assert days <= {p.lower.date() for p in partitions}
        assert await stored(session_maker, "logs", project_name) == len(items)


class TestIdempotencyAcrossPartitions:
    @pytest.mark.parametrize("factory", [LogInFactory, SpanInFactory, MetricInFactory])
    async def test_a_resend_with_a_timestamp_moved_into_the_next_partition_is_a_duplicate(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: SessionMaker,
        project_name: str,
        factory: type[LogInFactory] | type[SpanInFactory] | type[MetricInFactory],
    ) -> None:
        """The dedup window (24 h) reaches across a partition boundary."""
        path, _, table = next(e for e in ENDPOINTS.values() if e[1] is factory)
        key = await make_key("ingest")
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
        item = factory.build(signal_id=uuid4())  # a metric without one would derive it from the timestamp
        before, after = at(item, midnight - timedelta(minutes=5)), at(item, midnight + timedelta(minutes=5))
        first = await post(client, path, key, msgspec.json.encode([before]))
        assert first.json() == {"accepted": 1, "duplicates": 0}
        second = await post(client, path, key, msgspec.json.encode([after]))
        assert second.json() == {"accepted": 0, "duplicates": 1}
        assert await stored(session_maker, table, project_name) == 1

    async def test_ids_stay_unique_across_partitions(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory, session_maker: SessionMaker
    ) -> None:
        """One identity sequence for all partitions: incident occurrences refer to rows by id."""
        key = await make_key("ingest")
        now = datetime.now(UTC)
        items = [at(LogInFactory.build(), now - timedelta(days=d)) for d in range(4)]
        await post(client, "/api/v1/ingest/logs", key, msgspec.json.encode(items))
        async with session_maker() as session:
            duplicated = await session.scalar(
                text("SELECT count(*) FROM (SELECT id FROM logs GROUP BY id HAVING count(*) > 1) d")
            )
        assert duplicated == 0
