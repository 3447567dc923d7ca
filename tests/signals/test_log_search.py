"""Log search at scale (issue 15): same rows as the plain definition on both PostgreSQL flavours.

The definition: ``strpos(lower(message), lower(q)) > 0`` (case-insensitive substring, every character
literal), combined with the other filters, newest first by ``(timestamp, id)``. The API answers from
the trigram index (``pg_trgm`` on the external server, the core ``ps_trigrams`` GIN on the embedded
one); the walk over every page must return exactly the definition's rows in its order.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from prodsentinel.signals.search import detect_search_mode, like_pattern
from tests.signals.conftest import Stack

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MESSAGES = [
    "db timeout after 5000 ms",
    "DB TIMEOUT after 30 s",
    "disk 100% full on /var",
    "disk 1000 full",
    "user_42 logged in",
    "user 42 logged in",
    "Straße gesperrt",
    "cache miss key=a\\b",
    "ab",
    "payment declined",
]


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def _seed(stack: Stack) -> None:
    logs = []
    for i in range(300):
        logs.append(
            {
                "signal_id": str(uuid.uuid4()),
                "service_name": ("api", "db", "web")[i % 3],
                "timestamp": _iso(T0 + timedelta(seconds=i // 2)),  # pairs share a timestamp
                "level": ("DEBUG", "INFO", "WARN", "ERROR", "CRITICAL")[i % 5],
                "message": f"{MESSAGES[i % len(MESSAGES)]} #{i}",
                "trace_id": f"trace-{i % 7}",
            }
        )
    await stack.post("logs", logs)


async def _walk(stack: Stack, **params: Any) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = await stack.get("/api/v1/logs", **params, **({"cursor": cursor} if cursor else {}))
        ids.extend(item["signal_id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


async def _definition(stack: Stack, q: str, **filters: Any) -> list[str]:
    conditions = ["project_id = :project_id", "strpos(lower(message), lower(:q)) > 0"]
    params: dict[str, Any] = {"project_id": stack.project_id, "q": q}
    if "service" in filters:
        conditions.append("service_name = :service")
        params["service"] = filters["service"]
    if "min_level" in filters:
        conditions.append("level >= :min_level")
        params["min_level"] = filters["min_level"]
    if "trace_id" in filters:
        conditions.append("trace_id = :trace_id")
        params["trace_id"] = filters["trace_id"]
    if "since" in filters:
        conditions.append('"timestamp" >= :since')
        params["since"] = filters["since"]
    if "until" in filters:
        conditions.append('"timestamp" < :until')
        params["until"] = filters["until"]
    sql = f'SELECT signal_id FROM logs WHERE {" AND ".join(conditions)} ORDER BY "timestamp" DESC, id DESC'
    async with stack.sessions() as session:
        return [str(row[0]) for row in await session.execute(text(sql), params)]


QUERIES = [
    "timeout",  # matches, mixed case in the data
    "TIMEOUT AFTER",  # mixed case in the query
    "100%",  # % is literal: "1000 full" must not match
    "user_42",  # _ is literal: "user 42" must not match
    "a\\b",  # the escape character is literal too
    "STRASSE",  # no match (lower() does not fold ß to ss)
    "straße",
    "nothing like this anywhere",  # no match
    "ab",  # shorter than a trigram
    "#1",
    "e",
]


class TestLogSearch:
    async def test_mode_per_flavour(self, stack: Stack) -> None:
        async with stack.sessions() as session:
            mode = await detect_search_mode(session)
        assert mode == ("pg_trgm" if stack.flavour == "external" else "core")

    @pytest.mark.parametrize("q", QUERIES)
    async def test_search_equals_definition(self, stack: Stack, q: str) -> None:
        await _seed(stack)
        expected = await _definition(stack, q)
        assert await _walk(stack, q=q, limit=7) == expected
        if q in ("100%", "user_42", "nothing like this anywhere", "STRASSE"):
            assert len(expected) == {"100%": 30, "user_42": 30}.get(q, 0)

    async def test_combined_filters_and_pagination(self, stack: Stack) -> None:
        await _seed(stack)
        since, until = T0 + timedelta(seconds=10), T0 + timedelta(seconds=120)
        cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
            ({"service": "db"}, {"service": "db"}),
            ({"level": "error"}, {"min_level": 40}),
            ({"trace_id": "trace-3"}, {"trace_id": "trace-3"}),
            ({"since": _iso(since), "until": _iso(until)}, {"since": since, "until": until}),
            (
                {"service": "api", "level": "warn", "since": _iso(since), "until": _iso(until)},
                {"service": "api", "min_level": 30, "since": since, "until": until},
            ),
        ]
        for q in ("timeout", "LOGGED", "disk 100%"):
            for params, filters in cases:
                expected = await _definition(stack, q, **filters)
                for limit in (1, 3, 1000):
                    assert await _walk(stack, q=q, limit=limit, **params) == expected, (q, params, limit)

    async def test_core_prefilter_uses_the_index(self, stack: Stack) -> None:
        """The core fallback's predicate is answered by its GIN index (the SQL function is inlined)."""
        if stack.flavour != "embedded":
            pytest.skip("the core fallback is the embedded server's mode")
        async with stack.sessions() as session:
            await session.execute(text("SET LOCAL enable_seqscan = off"))
            plan = (
                await session.execute(
                    text(
                        "EXPLAIN SELECT id FROM logs WHERE ps_trigrams(message) @> ps_trigrams(:q) "
                        "AND message ILIKE :pattern ESCAPE '\\'"
                    ),
                    {"q": "timeout", "pattern": like_pattern("timeout")},
                )
            ).all()
        # Each partition answers through its copy of ``ix_logs_message_trigrams`` (named after the partition).
        text_plan = "\n".join(row[0] for row in plan)
        assert "Bitmap Index Scan on" in text_plan
        assert "Seq Scan" not in text_plan


def test_like_pattern_escapes_every_wildcard() -> None:
    assert like_pattern("a%b_c\\d") == "%a\\%b\\_c\\\\d%"
