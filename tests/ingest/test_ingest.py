"""Ingest through the HTTP API against the real app and PostgreSQL (SPEC §4)."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.app import create_app
from prodsentinel.ingest.services import derive_metric_id
from prodsentinel.settings import Settings
from tests.conftest import KeyFactory
from tests.factories import LogInFactory, MetricInFactory, SpanInFactory

Form = Literal["object", "array", "ndjson"]
TOO_OLD = "Timestamp is before 1970-01-01T00:00:00Z (the Unix epoch)"
TOO_NEW = "Timestamp is more than 24 h in the future"
ENDPOINTS = {
    "logs": ("/api/v1/ingest/logs", LogInFactory, "logs"),
    "traces": ("/api/v1/ingest/traces", SpanInFactory, "spans"),
    "metrics": ("/api/v1/ingest/metrics", MetricInFactory, "metric_points"),
}


def encode(items: Sequence[Any], form: Form) -> tuple[bytes, str]:
    if form == "object":
        assert len(items) == 1
        return msgspec.json.encode(items[0]), "application/json"
    if form == "array":
        return msgspec.json.encode(list(items)), "application/json"
    lines = b"\n".join(msgspec.json.encode(item) for item in items)
    return b"\n" + lines + b"\n\n", "application/x-ndjson"  # blank lines are skipped


async def post(
    client: AsyncTestClient[Litestar],
    path: str,
    key: str,
    body: bytes,
    content_type: str = "application/json",
    *,
    gzipped: bool = False,
) -> Any:
    headers = {"X-API-Key": key, "Content-Type": content_type}
    if gzipped:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    return await client.post(path, content=body, headers=headers)


async def stored(
    session_maker: async_sessionmaker[AsyncSession], table: str, project: str, signal_ids: Sequence[Any] = ()
) -> int:
    """How many rows of ``table`` the project has (optionally only these signal ids)."""
    sql = f"SELECT count(*) FROM {table} t JOIN projects p ON p.id = t.project_id WHERE p.name = :project" + (
        " AND t.signal_id = ANY(:ids)" if signal_ids else ""
    )
    params: dict[str, Any] = {"project": project}
    if signal_ids:
        params["ids"] = list(signal_ids)
    async with session_maker() as session:
        return int((await session.execute(text(sql), params)).scalar_one())


class TestForms:
    @pytest.mark.parametrize("endpoint", ["logs", "traces", "metrics"])
    @pytest.mark.parametrize("form", ["object", "array", "ndjson"])
    @pytest.mark.parametrize("gzipped", [False, True])
    async def test_each_form_is_stored(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
        endpoint: str,
        form: Form,
        gzipped: bool,
    ) -> None:
        path, factory, table = ENDPOINTS[endpoint]
        items = factory.batch(1 if form == "object" else 5)
        body, content_type = encode(items, form)
        response = await post(client, path, await make_key("ingest"), body, content_type, gzipped=gzipped)
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": len(items), "duplicates": 0}
        assert await stored(session_maker, table, project_name) == len(items)

    async def test_log_fields_are_stored_as_specified(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
    ) -> None:
        log = {
            "signal_id": str(uuid.uuid4()),
            "service_name": "checkout",
            "timestamp": "2026-01-02T03:04:05.123456",  # naive = UTC
            "level": "warning",
            "message": "slow",
            "trace_id": "abc",
            "attributes": {"n": 1, "nested": {"a": [1, 2]}},
        }
        response = await post(
            client, "/api/v1/ingest/logs", await make_key("ingest"), msgspec.json.encode(log)
        )
        assert response.status_code == 202
        async with session_maker() as session:
            row = (
                await session.execute(
                    text(
                        "SELECT level, timestamp, attributes, trace_id, span_id"
                        " FROM logs WHERE signal_id = :id"
                    ),
                    {"id": uuid.UUID(log["signal_id"])},
                )
            ).one()
        assert row.level == 30  # WARNING is stored as WARN
        assert row.timestamp == datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
        assert row.attributes == {"n": 1, "nested": {"a": [1, 2]}}
        assert (row.trace_id, row.span_id) == ("abc", None)

    async def test_span_duration_and_status(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        start = datetime(2026, 1, 1, tzinfo=UTC)
        span = SpanInFactory.build(
            start_time=start, end_time=start + timedelta(milliseconds=1500), status="ERROR"
        )
        span_default = SpanInFactory.build()
        raw = msgspec.json.decode(msgspec.json.encode(span_default))
        del raw["status"]
        body = b"[%s,%s]" % (msgspec.json.encode(span), msgspec.json.encode(raw))
        response = await post(client, "/api/v1/ingest/traces", await make_key("ingest"), body)
        assert response.status_code == 202, response.text
        async with session_maker() as session:
            rows = (
                await session.execute(
                    text("SELECT signal_id, duration_ms, status FROM spans WHERE signal_id = ANY(:ids)"),
                    {"ids": [span.signal_id, span_default.signal_id]},
                )
            ).all()
        by_id = {row.signal_id: row for row in rows}
        assert by_id[span.signal_id].duration_ms == 1500.0
        assert by_id[span.signal_id].status == 2
        assert by_id[span_default.signal_id].status == 0  # UNSET by default

    async def test_empty_array_accepts_nothing(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        response = await post(client, "/api/v1/ingest/logs", await make_key("ingest"), b"[]")
        assert response.status_code == 202
        assert response.json() == {"accepted": 0, "duplicates": 0}


class TestIdempotency:
    async def test_duplicates_inside_one_batch(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
    ) -> None:
        logs = LogInFactory.batch(3)
        body, _ = encode([logs[0], logs[1], logs[0], logs[2], logs[1]], "array")
        response = await post(client, "/api/v1/ingest/logs", await make_key("ingest"), body)
        assert response.json() == {"accepted": 3, "duplicates": 2}
        assert await stored(session_maker, "logs", project_name) == 3

    async def test_duplicates_across_batches_even_when_changed(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
    ) -> None:
        key = await make_key("ingest")
        logs = LogInFactory.batch(4)
        first, _ = encode(logs[:3], "array")
        assert (await post(client, "/api/v1/ingest/logs", key, first)).json() == {
            "accepted": 3,
            "duplicates": 0,
        }
        changed = LogInFactory.build(signal_id=logs[0].signal_id, message="something else")
        second, _ = encode([changed, logs[1], logs[3]], "ndjson")
        response = await post(client, "/api/v1/ingest/logs", key, second, "application/x-ndjson")
        assert response.json() == {"accepted": 1, "duplicates": 2}
        assert await stored(session_maker, "logs", project_name) == 4
        async with session_maker() as session:
            message = await session.scalar(
                text("SELECT message FROM logs WHERE signal_id = :id"), {"id": logs[0].signal_id}
            )
        assert message == logs[0].message  # the first write wins; resends change nothing

    @pytest.mark.parametrize("endpoint", ["logs", "traces", "metrics"])
    async def test_ten_concurrent_resends_are_stored_once(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
        endpoint: str,
    ) -> None:
        path, factory, table = ENDPOINTS[endpoint]
        key = await make_key("ingest")
        items = factory.batch(200)
        body, _ = encode(items, "array")
        responses = await asyncio.gather(*(post(client, path, key, body) for _ in range(10)))
        assert {response.status_code for response in responses} == {202}
        counts = [response.json() for response in responses]
        assert sum(count["accepted"] for count in counts) == len(items)
        assert all(count["accepted"] + count["duplicates"] == len(items) for count in counts)
        async with session_maker() as session:
            rows = (
                await session.execute(
                    text(
                        f"SELECT signal_id, count(*) AS n FROM {table} t"
                        " JOIN projects p ON p.id = t.project_id"
                        " WHERE p.name = :project GROUP BY signal_id"
                    ),
                    {"project": project_name},
                )
            ).all()
        assert len(rows) == len(items)
        assert {row.n for row in rows} == {1}

    async def test_same_signal_id_in_two_projects_is_stored_in_both(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
    ) -> None:
        other = f"{project_name}-other"
        log = LogInFactory.build()
        body, _ = encode([log], "object")
        mine, theirs = await make_key("ingest"), await make_key("ingest", project=other)
        both = await asyncio.gather(
            post(client, "/api/v1/ingest/logs", mine, body), post(client, "/api/v1/ingest/logs", theirs, body)
        )
        assert [response.json() for response in both] == [{"accepted": 1, "duplicates": 0}] * 2
        assert await stored(session_maker, "logs", project_name, [log.signal_id]) == 1
        assert await stored(session_maker, "logs", other, [log.signal_id]) == 1

    async def test_metric_without_id_gets_a_deterministic_one(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
    ) -> None:
        key = await make_key("ingest")
        point = {
            "name": "cpu",
            "value": 0.5,
            "service_name": "api",
            "timestamp": "2026-01-01T01:00:00+01:00",
            "labels": {"b": "2", "a": "1"},
        }
        retry = {**point, "timestamp": "2026-01-01T00:00:00Z", "labels": {"a": "1", "b": "2"}, "value": 9}
        other = {**point, "labels": {"a": "1", "b": "3"}}
        first = await post(client, "/api/v1/ingest/metrics", key, msgspec.json.encode(point))
        assert first.json() == {"accepted": 1, "duplicates": 0}
        second = await post(client, "/api/v1/ingest/metrics", key, msgspec.json.encode([retry, other]))
        assert second.json() == {"accepted": 1, "duplicates": 1}
        expected = derive_metric_id(
            "cpu", "api", datetime(2026, 1, 1, tzinfo=UTC), msgspec.json.encode({"a": "1", "b": "2"})
        )
        assert await stored(session_maker, "metric_points", project_name, [expected]) == 1
        assert await stored(session_maker, "metric_points", project_name) == 2


class TestValidation:
    @pytest.mark.parametrize("form", ["array", "ndjson"])
    async def test_one_invalid_item_stores_nothing_and_names_index_and_path(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
        form: Form,
    ) -> None:
        logs = [msgspec.to_builtins(log) for log in LogInFactory.batch(4)]
        logs[2]["timestamp"] = "yesterday"
        body, content_type = encode(logs, form)
        response = await post(client, "/api/v1/ingest/logs", await make_key("ingest"), body, content_type)
        assert response.status_code == 422
        payload = response.json()
        assert payload["errors"][0]["index"] == 2
        assert payload["errors"][0]["path"] == "$.timestamp"
        assert payload["detail"]
        assert payload["request_id"]
        assert await stored(session_maker, "logs", project_name) == 0

    @pytest.mark.parametrize(
        ("change", "path"),
        [
            ({"level": "LOUD"}, "$.level"),
            ({"level": 40}, "$.level"),
            ({"signal_id": "not-a-uuid"}, "$.signal_id"),
            ({"service_name": None}, "$.service_name"),
            ({"attributes": [1, 2]}, "$.attributes"),
            ({"message": "nul \u0000 char"}, "$.message"),
        ],
    )
    async def test_invalid_log_fields(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory, change: dict[str, Any], path: str
    ) -> None:
        log = {**msgspec.to_builtins(LogInFactory.build()), **change}
        response = await post(
            client, "/api/v1/ingest/logs", await make_key("ingest"), msgspec.json.encode(log)
        )
        assert response.status_code == 422, response.text
        error = response.json()["errors"][0]
        assert (error["index"], error["path"]) == (0, path)
        assert error["message"]

    async def test_missing_field_is_named(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        log = msgspec.to_builtins(LogInFactory.build())
        del log["message"]
        body = msgspec.json.encode([msgspec.to_builtins(LogInFactory.build()), log])
        response = await post(client, "/api/v1/ingest/logs", await make_key("ingest"), body)
        assert response.status_code == 422
        assert response.json()["errors"][0]["index"] == 1
        assert response.json()["errors"][0]["path"] == "$.message"

    async def test_future_timestamp_is_422(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        key = await make_key("ingest")
        soon = LogInFactory.build(timestamp=datetime.now(UTC) + timedelta(hours=23))
        late = LogInFactory.build(timestamp=datetime.now(UTC) + timedelta(hours=25))
        assert (await post(client, "/api/v1/ingest/logs", key, msgspec.json.encode(soon))).status_code == 202
        response = await post(client, "/api/v1/ingest/logs", key, msgspec.json.encode([soon, late]))
        assert response.status_code == 422
        assert response.json()["errors"] == [
            {"index": 1, "path": "$.timestamp", "message": "Timestamp is more than 24 h in the future"}
        ]

    @pytest.mark.parametrize(
        ("endpoint", "change", "path", "message"),
        [
            pytest.param(
                "logs", {"timestamp": "1969-12-31T23:59:59.999999Z"}, "$.timestamp", TOO_OLD, id="log-1969"
            ),
            # Overflows when converted to UTC (was a 500: asyncpg DataError at write time).
            pytest.param(
                "logs", {"timestamp": "0001-01-01T00:00:00+01:00"}, "$.timestamp", TOO_OLD, id="log-y1+1"
            ),
            # Was stored as PostgreSQL -infinity and read back naive.
            pytest.param("logs", {"timestamp": "0001-01-01T00:00:00Z"}, "$.timestamp", TOO_OLD, id="log-y1Z"),
            pytest.param(
                "logs", {"timestamp": "9999-12-31T23:00:00-05:00"}, "$.timestamp", TOO_NEW, id="log-y9999-5"
            ),
            pytest.param(
                "traces", {"start_time": "1969-12-31T23:59:59Z"}, "$.start_time", TOO_OLD, id="span-1969"
            ),
            pytest.param(
                "traces",
                {"start_time": "0001-01-01T00:00:00+01:00", "end_time": "0001-01-01T00:00:00+01:00"},
                "$.start_time",
                TOO_OLD,
                id="span-y1+1",
            ),
            pytest.param(
                "traces", {"end_time": "9999-12-31T23:00:00-05:00"}, "$.end_time", TOO_NEW, id="span-y9999-5"
            ),
            pytest.param(
                "metrics",
                {"timestamp": "1960-06-01T00:00:00Z", "signal_id": None},
                "$.timestamp",
                TOO_OLD,
                id="metric-1960",
            ),
            # Without signal_id the id is derived from the UTC time (was an OverflowError, a 500).
            pytest.param(
                "metrics",
                {"timestamp": "0001-01-01T00:00:00+01:00", "signal_id": None},
                "$.timestamp",
                TOO_OLD,
                id="metric-derived-id-y1+1",
            ),
            pytest.param(
                "metrics",
                {"timestamp": "0001-01-01T00:00:00+01:00"},
                "$.timestamp",
                TOO_OLD,
                id="metric-y1+1",
            ),
            pytest.param(
                "metrics",
                {"timestamp": "9999-12-31T23:00:00-05:00", "signal_id": None},
                "$.timestamp",
                TOO_NEW,
                id="metric-derived-id-y9999-5",
            ),
        ],
    )
    @pytest.mark.parametrize("form", ["array", "ndjson"])
    async def test_timestamp_out_of_range_is_422_and_stores_nothing(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
        endpoint: str,
        change: dict[str, Any],
        path: str,
        message: str,
        form: Form,
    ) -> None:
        """Before the Unix epoch is invalid, like more than 24 h ahead; a time whose conversion to UTC
        overflows is one of the two (never a 500), and the batch stays atomic."""
        url, factory, table = ENDPOINTS[endpoint]
        items = [msgspec.to_builtins(factory.build()) for _ in range(3)]
        items[1].update(change)
        body, content_type = encode(items, form)
        response = await post(client, url, await make_key("ingest"), body, content_type)
        assert response.status_code == 422, response.text
        payload = response.json()
        assert payload["errors"][0] == {"index": 1, "path": path, "message": message}
        assert f"index 1 ({path}: {message})" in payload["detail"]
        assert payload["request_id"] == response.headers["x-request-id"]
        assert await stored(session_maker, table, project_name) == 0

    @pytest.mark.parametrize("endpoint", ["logs", "traces", "metrics"])
    async def test_the_epoch_itself_is_accepted(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
        endpoint: str,
    ) -> None:
        url, factory, table = ENDPOINTS[endpoint]
        item = msgspec.to_builtins(factory.build())
        for field in ("timestamp", "start_time", "end_time"):
            if field in item:
                item[field] = "1970-01-01T01:00:00+01:00"  # = 1970-01-01T00:00:00Z
        response = await post(client, url, await make_key("ingest"), msgspec.json.encode(item))
        assert response.status_code == 202, response.text
        assert await stored(session_maker, table, project_name) == 1

    async def test_span_ending_before_it_starts_is_422(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        start = datetime.now(UTC) - timedelta(minutes=1)
        span = SpanInFactory.build(start_time=start, end_time=start - timedelta(seconds=1))
        response = await post(
            client, "/api/v1/ingest/traces", await make_key("ingest"), msgspec.json.encode(span)
        )
        assert response.status_code == 422
        assert response.json()["errors"][0]["path"] == "$.end_time"

    @pytest.mark.parametrize(
        ("value", "status"),
        [(b"1e400", 422), (b"NaN", 400), (b'"1.5"', 422)],  # NaN is not JSON: a malformed body
    )
    async def test_metric_value_must_be_a_finite_number(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory, value: bytes, status: int
    ) -> None:
        body = b'{"name":"m","service_name":"s","timestamp":"2026-01-01T00:00:00Z","value":%s}' % value
        response = await post(client, "/api/v1/ingest/metrics", await make_key("ingest"), body)
        assert response.status_code == status, response.text
        if status == 422:
            assert response.json()["errors"][0]["path"] == "$.value"

    async def test_labels_must_be_strings(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        point = {**msgspec.to_builtins(MetricInFactory.build()), "labels": {"a": 1}}
        response = await post(
            client, "/api/v1/ingest/metrics", await make_key("ingest"), msgspec.json.encode(point)
        )
        assert response.status_code == 422
        assert response.json()["errors"][0]["path"].startswith("$.labels")

    @pytest.mark.parametrize("body", [b'{"signal_id": ', b"[{}, ", b"", b"\n{oops}\n"])
    async def test_malformed_json_is_400(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory, body: bytes
    ) -> None:
        key = await make_key("ingest")
        for content_type in ("application/json", "application/x-ndjson"):
            response = await post(client, "/api/v1/ingest/logs", key, body, content_type)
            if content_type == "application/x-ndjson" and not body.strip():
                assert response.status_code == 202  # NDJSON without lines: nothing to store
                continue
            assert response.status_code == 400, (body, content_type)
            assert response.json()["request_id"]

    async def test_malformed_line_after_an_invalid_item_is_still_400(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        invalid_item = msgspec.json.encode(
            {**msgspec.to_builtins(LogInFactory.build()), "signal_id": "not-a-uuid"}
        )
        body = invalid_item + b"\n{oops\n"
        response = await post(
            client, "/api/v1/ingest/logs", await make_key("ingest"), body, "application/x-ndjson"
        )
        assert response.status_code == 400
        assert "line 1" in response.json()["detail"]

    @pytest.mark.parametrize(
        ("form", "invalid_first"),
        [("object", False), ("array", False), ("array", True), ("ndjson", False), ("ndjson", True)],
    )
    async def test_invalid_utf8_is_400(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory, form: Form, invalid_first: bool
    ) -> None:
        """Invalid UTF-8 anywhere is malformed JSON (400), even after an invalid item (else a 422)."""
        log = msgspec.to_builtins(LogInFactory.build())
        items = [{**log, "level": "LOUD"}] if invalid_first else []
        body, content_type = encode([*items, {**log, "message": "\ufffe"}], form)
        body = body.replace("\ufffe".encode(), b"\xff\xfe")
        response = await post(client, "/api/v1/ingest/logs", await make_key("ingest"), body, content_type)
        assert response.status_code == 400, response.text
        assert response.json()["detail"].startswith("The body is not valid UTF-8 JSON: ")

    async def test_bad_gzip_is_400(self, client: AsyncTestClient[Litestar], make_key: KeyFactory) -> None:
        response = await client.post(
            "/api/v1/ingest/logs",
            content=b"definitely not gzip",
            headers={"X-API-Key": await make_key("ingest"), "Content-Encoding": "gzip"},
        )
        assert response.status_code == 400

    @pytest.mark.parametrize(
        ("content_type", "encoding"),
        [("text/plain", ""), ("application/x-www-form-urlencoded", ""), ("application/json", "br")],
    )
    async def test_unsupported_media_is_415(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory, content_type: str, encoding: str
    ) -> None:
        headers = {"X-API-Key": await make_key("ingest"), "Content-Type": content_type}
        if encoding:
            headers["Content-Encoding"] = encoding
        body = msgspec.json.encode(LogInFactory.build())
        response = await client.post("/api/v1/ingest/logs", content=body, headers=headers)
        assert response.status_code == 415
        assert response.json()["detail"]


@pytest.fixture
async def limited_client(settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """An app with small limits: 64 KiB bodies, 5 items."""
    app = create_app(settings.with_overrides(max_body_bytes=64 * 1024, max_batch_items=5))
    async with AsyncTestClient(app=app) as client:
        yield client


class TestLimits:
    async def test_body_over_the_limit_is_413(
        self, limited_client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        log = LogInFactory.build(message="x" * (70 * 1024))
        response = await post(
            limited_client, "/api/v1/ingest/logs", await make_key("ingest"), msgspec.json.encode(log)
        )
        assert response.status_code == 413
        assert response.json()["request_id"]

    async def test_too_many_items_is_413(
        self,
        limited_client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
    ) -> None:
        key = await make_key("ingest")
        for form in ("array", "ndjson"):
            body, content_type = encode(LogInFactory.batch(6), form)  # type: ignore[arg-type]
            response = await post(limited_client, "/api/v1/ingest/logs", key, body, content_type)
            assert response.status_code == 413, form
        body, _ = encode(LogInFactory.batch(5), "array")
        assert (await post(limited_client, "/api/v1/ingest/logs", key, body)).status_code == 202
        assert await stored(session_maker, "logs", project_name) == 5

    @pytest.mark.parametrize("form", ["array", "ndjson"])
    async def test_too_many_items_is_413_even_when_some_are_invalid(
        self, limited_client: AsyncTestClient[Litestar], make_key: KeyFactory, form: Form
    ) -> None:
        logs = [msgspec.to_builtins(log) for log in LogInFactory.batch(6)]
        logs[0]["signal_id"] = "not-a-uuid"
        body, content_type = encode(logs, form)
        response = await post(
            limited_client, "/api/v1/ingest/logs", await make_key("ingest"), body, content_type
        )
        assert response.status_code == 413, response.text
        assert response.json()["detail"] == "The batch has more than 5 items."

    async def test_gzip_bomb_is_413(
        self, limited_client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        bomb = gzip.compress(b"[" + b" " * (50 * 1024 * 1024) + b"]", compresslevel=9)
        assert len(bomb) < 64 * 1024  # the compressed body itself is within the limit
        response = await limited_client.post(
            "/api/v1/ingest/logs",
            content=bomb,
            headers={"X-API-Key": await make_key("ingest"), "Content-Encoding": "gzip"},
        )
        assert response.status_code == 413

    async def test_backpressure_is_503_with_retry_after(
        self, settings: Settings, make_key: KeyFactory
    ) -> None:
        app = create_app(settings.with_overrides(ingest_max_pending_bytes=64))
        body, _ = encode(LogInFactory.batch(3), "array")
        async with AsyncTestClient(app=app) as client:
            response = await post(client, "/api/v1/ingest/logs", await make_key("ingest"), body)
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["detail"]


class TestAuth:
    async def test_missing_or_bad_key_is_401(self, client: AsyncTestClient[Litestar]) -> None:
        body = msgspec.json.encode(LogInFactory.build())
        assert (await client.post("/api/v1/ingest/logs", content=body)).status_code == 401
        response = await client.post(
            "/api/v1/ingest/logs", content=body, headers={"X-API-Key": "ps_nope_nope"}
        )
        assert response.status_code == 401

    @pytest.mark.parametrize("scope", ["read", "operate"])
    async def test_key_without_ingest_scope_is_403(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
        scope: str,
    ) -> None:
        body = msgspec.json.encode(LogInFactory.build())
        response = await post(client, "/api/v1/ingest/logs", await make_key(scope), body)
        assert response.status_code == 403
        assert response.json()["detail"]
        assert await stored(session_maker, "logs", project_name) == 0

    async def test_admin_and_bearer_may_ingest(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        body = msgspec.json.encode(LogInFactory.build())
        response = await client.post(
            "/api/v1/ingest/logs",
            content=body,
            headers={"Authorization": f"Bearer {await make_key('admin')}"},
        )
        assert response.status_code == 202

    async def test_revocation_is_effective_for_the_next_request(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        key = await make_key("ingest")
        body = msgspec.json.encode(LogInFactory.build())
        assert (await post(client, "/api/v1/ingest/logs", key, body)).status_code == 202
        async with session_maker() as session:
            await session.execute(
                text("UPDATE api_keys SET revoked_at = now() WHERE prefix = :prefix"),
                {"prefix": key.split("_")[1]},
            )
            await session.commit()
        assert (await post(client, "/api/v1/ingest/logs", key, body)).status_code == 401


class TestHttpMetrics:
    """The ingest routes have no Litestar guard (the scope is checked in the handler): still counted."""

    @staticmethod
    async def _counts(client: AsyncTestClient[Litestar], key: str) -> dict[tuple[str, str], float]:
        response = await client.get("/metrics", headers={"X-API-Key": key})
        assert response.status_code == 200, response.text
        counts: dict[tuple[str, str], float] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                labels = sample.labels
                if labels.get("path") == "/api/v1/ingest/logs" and labels.get("method") == "POST":
                    counts[(sample.name, labels["status_code"])] = sample.value
        return counts

    async def test_ingest_requests_are_counted_by_status(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        reader = await make_key("read")
        before = await self._counts(client, reader)
        body = msgspec.json.encode(LogInFactory.build())
        ingest = await make_key("ingest")
        for _ in range(3):
            assert (await post(client, "/api/v1/ingest/logs", ingest, body)).status_code == 202
        assert (await post(client, "/api/v1/ingest/logs", reader, body)).status_code == 403
        assert (await client.post("/api/v1/ingest/logs", content=body)).status_code == 401
        after = await self._counts(client, reader)

        def delta(name: str, status: str) -> float:
            return after.get((name, status), 0.0) - before.get((name, status), 0.0)

        assert delta("http_requests_total", "202") == 3
        assert delta("http_request_duration_seconds_count", "202") == 3
        assert delta("http_requests_total", "403") == 1
        assert delta("http_requests_total", "401") == 1


class TestOpenAPI:
    async def test_request_and_response_bodies_are_typed(self, client: AsyncTestClient[Litestar]) -> None:
        schema = (await client.get("/schema/openapi.json")).json()
        operation = schema["paths"]["/api/v1/ingest/traces"]["post"]
        assert operation["tags"] == ["ingest"]
        content = operation["requestBody"]["content"]
        assert {"application/json", "application/x-ndjson"} <= set(content)
        assert content["application/x-ndjson"]["schema"] == {"$ref": "#/components/schemas/SpanIn"}
        assert operation["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "IngestAccepted"
        )
        assert {"LogIn", "SpanIn", "MetricIn"} <= set(schema["components"]["schemas"])


class TestIncidentSeam:
    """After commit, error signals (and metric points) enqueue ``group_new_errors`` on the app's queue."""

    async def _job_queue(self, session_maker: async_sessionmaker[AsyncSession]) -> str | None:
        async with session_maker() as session:
            value = await session.scalar(
                text("SELECT queue FROM saq_jobs WHERE key LIKE :pattern"), {"pattern": "%:group_new_errors"}
            )
        return None if value is None else str(value)

    async def _clear(self, session_maker: async_sessionmaker[AsyncSession]) -> None:
        async with session_maker() as session:
            await session.execute(
                text("DELETE FROM saq_jobs WHERE key LIKE :pattern"), {"pattern": "%:group_new_errors"}
            )
            await session.commit()

    async def test_error_logs_enqueue_the_grouping_job(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        settings: Settings,
    ) -> None:
        key = await make_key("ingest")
        await self._clear(session_maker)
        body, _ = encode(LogInFactory.batch(3, level="INFO"), "array")
        assert (await post(client, "/api/v1/ingest/logs", key, body)).status_code == 202
        between = time.time() * 1000  # SAQ stamps a job's `queued` in epoch milliseconds

        body, _ = encode([LogInFactory.build(level="info"), LogInFactory.build(level="Critical")], "array")
        assert (await post(client, "/api/v1/ingest/logs", key, body)).status_code == 202
        for _ in range(50):
            if await self._job_queue(session_maker) is not None:
                break
            await asyncio.sleep(0.05)
        # The one job was queued after the INFO batch was acknowledged: only the error batch asked for it.
        async with session_maker() as session:
            jobs = (
                await session.scalars(
                    text("SELECT job FROM saq_jobs WHERE key = :key"),
                    {"key": f"{settings.queue_name}:group_new_errors"},
                )
            ).all()
        assert len(jobs) == 1
        assert json.loads(jobs[0])["queued"] >= between
        assert await self._job_queue(session_maker) == settings.queue_name
