"""Black-box conformance to SPEC.md, cross-cutting: what no single domain suite pins down.

Tables over every endpoint (scopes: 401 vs 403 vs allowed; the error envelope; pagination bounds; query
and body validation statuses; OpenAPI paths and tags), the precise defaults of §2, the `keys` CLI of §3
run as a subprocess against the test database, the outbox item and alert field names of §7/§8 on a real
HTTP flow, and the /metrics and /health shapes of §9. Domain behaviour stays in the domain suites.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from advanced_alchemy import exceptions as aa_exceptions
from litestar import Litestar, get
from litestar.testing import AsyncTestClient

from prodsentinel.app import create_app
from prodsentinel.lib.pagination import encode_cursor
from prodsentinel.settings import Settings, load_settings
from tests.conftest import KeyFactory
from tests.receivers import Receiver, Reply

Client = AsyncTestClient[Litestar]
ROOT = Path(__file__).resolve().parents[1]
SCOPES = ("ingest", "read", "operate", "admin")
ANY_ID = "0191b0c4-0000-7000-8000-000000000000"


def implies(have: str, need: str) -> bool:
    """SPEC §3: admin implies all others; operate implies read; ingest is write-only."""
    return have == need or have == "admin" or (have == "operate" and need == "read")


def assert_error_body(response: Any, status: int) -> dict[str, Any]:
    """SPEC §3: every 4xx/5xx is JSON with a sentence in ``detail`` and the ``request_id``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["detail"], str)
    assert body["detail"].strip()
    assert body["request_id"] == response.headers["x-request-id"]
    assert "x-process-time-ms" in response.headers
    assert "Traceback" not in response.text
    return dict(body)


# (method, path, scope) for every SPEC endpoint that needs a key. Ids are unknown ones: allowed callers
# get a 404 (or a validation error), never 401/403.
ENDPOINTS: list[tuple[str, str, str]] = [
    ("POST", "/api/v1/ingest/logs", "ingest"),
    ("POST", "/api/v1/ingest/traces", "ingest"),
    ("POST", "/api/v1/ingest/metrics", "ingest"),
    ("GET", "/api/v1/logs", "read"),
    ("GET", "/api/v1/spans", "read"),
    ("GET", "/api/v1/traces/abc", "read"),
    ("GET", "/api/v1/metrics/series?name=cpu", "read"),
    ("GET", "/api/v1/services", "read"),
    ("GET", "/api/v1/anomalies", "read"),
    ("GET", "/api/v1/incidents", "read"),
    ("GET", f"/api/v1/incidents/{ANY_ID}", "read"),
    ("POST", f"/api/v1/incidents/{ANY_ID}/ack", "operate"),
    ("POST", f"/api/v1/incidents/{ANY_ID}/resolve", "operate"),
    ("POST", f"/api/v1/incidents/{ANY_ID}/detach", "operate"),
    ("GET", "/api/v1/problems", "read"),
    ("GET", f"/api/v1/problems/{ANY_ID}", "read"),
    ("POST", f"/api/v1/problems/{ANY_ID}/merge", "operate"),
    ("GET", "/api/v1/events/stream", "read"),
    ("GET", "/api/v1/alerts/policies", "read"),
    ("GET", f"/api/v1/alerts/policies/{ANY_ID}", "read"),
    ("POST", "/api/v1/alerts/policies", "admin"),
    ("PATCH", f"/api/v1/alerts/policies/{ANY_ID}", "admin"),
    ("DELETE", f"/api/v1/alerts/policies/{ANY_ID}", "admin"),
    ("POST", "/api/v1/alerts/evaluate", "admin"),
    ("GET", "/api/v1/alerts/active", "read"),
    ("GET", "/api/v1/alerts/history", "read"),
    ("POST", f"/api/v1/alerts/{ANY_ID}/ack", "operate"),
    ("POST", f"/api/v1/alerts/{ANY_ID}/unack", "operate"),
    ("GET", "/api/v1/alerts/silences", "read"),
    ("POST", "/api/v1/alerts/silences", "operate"),
    ("POST", f"/api/v1/alerts/silences/{ANY_ID}/expire", "operate"),
    ("GET", "/api/v1/alerts/audit", "read"),
    ("GET", "/api/v1/notifications/channels", "read"),
    ("POST", "/api/v1/notifications/channels", "admin"),
    ("PATCH", f"/api/v1/notifications/channels/{ANY_ID}", "admin"),
    ("DELETE", f"/api/v1/notifications/channels/{ANY_ID}", "admin"),
    ("POST", f"/api/v1/notifications/channels/{ANY_ID}/test", "admin"),
    ("GET", "/api/v1/notifications/outbox", "read"),
    ("GET", "/api/v1/notifications/history", "read"),
    ("GET", "/api/v1/notifications/stats", "read"),
    ("GET", "/api/v1/notifications/trends?bucket=day", "read"),
    ("GET", "/api/v1/notifications/attempts", "read"),
    ("GET", f"/api/v1/notifications/attempts/{ANY_ID}", "read"),
    ("POST", "/api/v1/notifications/dispatch", "admin"),
    ("POST", f"/api/v1/notifications/outbox/{ANY_ID}/replay", "admin"),
    ("POST", "/api/v1/notifications/outbox/replay-dead?limit=1", "admin"),
    ("GET", "/api/v1/keys", "admin"),
    ("POST", "/api/v1/keys", "admin"),
    ("DELETE", f"/api/v1/keys/{ANY_ID}", "admin"),
    ("GET", "/metrics", "read"),
    ("GET", "/saq/api/queues", "admin"),
]


async def call(client: Client, method: str, path: str, headers: dict[str, str]) -> Any:
    body: Any = [] if "/ingest/" in path else {}
    if method in {"POST", "PATCH"}:
        return await client.request(method, path, json=body, headers=headers)
    return await client.request(method, path, headers=headers)


@pytest.mark.parametrize(("method", "path", "scope"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
async def test_scopes_401_403_and_allowed(
    client: Client, make_key: KeyFactory, method: str, path: str, scope: str
) -> None:
    assert_error_body(await call(client, method, path, {}), 401)
    assert_error_body(await call(client, method, path, {"X-API-Key": "ps_nope_nope"}), 401)
    for have in SCOPES:
        key = await make_key(have)
        if not implies(have, scope):
            assert_error_body(await call(client, method, path, {"X-API-Key": key}), 403)
        elif path != "/api/v1/events/stream":  # a stream never ends; its 200 is tested in the e2e test
            response = await call(client, method, path, {"Authorization": f"Bearer {key}"})
            assert response.status_code not in (401, 403), (have, response.text)
            assert response.status_code < 500, response.text


@pytest.mark.parametrize("path", ["/health", "/health/live", "/health/ready", "/schema/openapi.json"])
async def test_public_endpoints_need_no_key(client: Client, path: str) -> None:
    assert (await client.get(path)).status_code == 200


async def test_health_reports_each_dependency_with_latency(client: Client) -> None:
    body = (await client.get("/health")).json()
    for dependency in ("database", "queue", "redis"):
        assert body[dependency]["status"] in {"ok", "error", "not_configured"}
        assert "latency_ms" in body[dependency]
    assert body["database"]["status"] == "ok"
    assert isinstance(body["database"]["latency_ms"], float | int)


async def test_generic_errors_use_the_envelope(client: Client, make_key: KeyFactory) -> None:
    reader = {"X-API-Key": await make_key("read")}
    ingest = {"X-API-Key": await make_key("ingest")}
    assert_error_body(await client.get("/no/such/route", headers=reader), 404)
    assert_error_body(await client.get("/api/v1/no-such", headers=reader), 404)
    assert_error_body(await client.put("/api/v1/logs", headers=reader), 405)
    assert_error_body(await client.get("/api/v1/logs", params={"limit": "abc"}, headers=reader), 400)
    assert_error_body(await client.get(f"/api/v1/incidents/{uuid.uuid4()}", headers=reader), 404)
    plain = {**ingest, "Content-Type": "text/plain"}
    assert_error_body(await client.post("/api/v1/ingest/logs", content=b"{}", headers=plain), 415)
    big = b"[" + b" " * (10 * 1024 * 1024) + b"]"
    as_json = {**ingest, "Content-Type": "application/json"}
    assert_error_body(await client.post("/api/v1/ingest/logs", content=big, headers=as_json), 413)
    assert_error_body(await client.post("/api/v1/ingest/logs", content=b"{bad", headers=as_json), 400)
    response = await client.get("/no/such/route", headers={"X-Request-ID": "conform-req-1"})
    assert assert_error_body(response, 404)["request_id"] == "conform-req-1"


async def test_ingest_422_lists_index_and_path(client: Client, make_key: KeyFactory) -> None:
    ingest = {"X-API-Key": await make_key("ingest")}
    good = {
        "signal_id": str(uuid.uuid4()),
        "service_name": "api",
        "timestamp": datetime.now(UTC).isoformat(),
        "level": "info",
        "message": "ok",
    }
    lines = [json.dumps(good), "", json.dumps({**good, "signal_id": str(uuid.uuid4()), "level": 3})]
    response = await client.post(
        "/api/v1/ingest/logs",
        content="\n".join(lines).encode(),
        headers={**ingest, "Content-Type": "application/x-ndjson"},
    )
    body = assert_error_body(response, 422)
    # index among non-empty lines; path as "$.field"; nothing stored (atomic batch).
    assert body["errors"] == [{"index": 1, "path": "$.level", "message": body["errors"][0]["message"]}]
    assert isinstance(body["errors"][0]["message"], str)
    reader = {"X-API-Key": await make_key("read")}
    assert (await client.get("/api/v1/logs", headers=reader)).json()["items"] == []


async def test_rate_limit_is_429_json_with_retry_after(settings: Settings, make_key: KeyFactory) -> None:
    app = create_app(settings.with_overrides(rate_limit="2/minute"))
    async with AsyncTestClient(app=app) as client:
        reader = {"X-API-Key": await make_key("read")}
        other = {"X-API-Key": await make_key("read")}
        for _ in range(2):
            assert (await client.get("/api/v1/logs", headers=reader)).status_code == 200
        limited = await client.get("/api/v1/logs", headers=reader)
        assert assert_error_body(limited, 429)["detail"] == (
            f"Too many requests: retry after {limited.headers['retry-after']} seconds."
        )
        # Retrying after Retry-After must be able to succeed: it is the window's reset, not a guess.
        assert 1 < int(limited.headers["retry-after"]) <= 60
        assert (await client.get("/api/v1/logs", headers=other)).status_code == 200  # per key
        assert (await client.get("/health/live")).status_code == 200  # public, not limited
        ingest = {"X-API-Key": await make_key("ingest")}
        for _ in range(3):  # ingest is governed by backpressure, not by the rate limit
            assert (await client.post("/api/v1/ingest/logs", json=[], headers=ingest)).status_code == 202


PAGINATED = [
    "/api/v1/logs",
    "/api/v1/spans",
    "/api/v1/anomalies",
    "/api/v1/incidents",
    "/api/v1/problems",
    "/api/v1/alerts/history",
    "/api/v1/alerts/silences",
    "/api/v1/alerts/audit",
    "/api/v1/notifications/outbox",
    "/api/v1/notifications/history",
    "/api/v1/notifications/attempts",
]


@pytest.mark.parametrize("path", PAGINATED)
async def test_pagination_shape_and_limit_bounds(client: Client, make_key: KeyFactory, path: str) -> None:
    reader = {"X-API-Key": await make_key("read")}
    for limit in ("0", "1001", "-1", "abc"):
        assert_error_body(await client.get(path, params={"limit": limit}, headers=reader), 400)
    assert_error_body(await client.get(path, params={"cursor": "%%%"}, headers=reader), 400)
    for limit in ("1", "1000"):
        response = await client.get(path, params={"limit": limit}, headers=reader)
        assert response.status_code == 200, response.text
        assert set(response.json()) == {"items", "next_cursor"}
        assert response.json()["next_cursor"] is None


SINCE_UNTIL = [
    "/api/v1/logs",
    "/api/v1/spans",
    "/api/v1/anomalies",
    "/api/v1/incidents",
    "/api/v1/alerts/history",
    "/api/v1/alerts/audit",
    "/api/v1/notifications/attempts",
    "/api/v1/notifications/trends",
    "/api/v1/metrics/series",
]


@pytest.mark.parametrize("path", SINCE_UNTIL)
async def test_time_ranges(client: Client, make_key: KeyFactory, path: str) -> None:
    """since/until are RFC 3339 (naive = UTC, as for ingest); anything else is a 400, never a 500."""
    reader = {"X-API-Key": await make_key("read")}
    base = {"name": "cpu"} if path.endswith("/series") else {}
    ok = {**base, "since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00+00:00"}
    assert (await client.get(path, params=ok, headers=reader)).status_code == 200
    naive = {**base, "since": "2026-01-01T00:00:00", "until": "2026-01-02T00:00:00"}
    assert (await client.get(path, params=naive, headers=reader)).status_code == 200
    assert_error_body(await client.get(path, params={**base, "since": "yesterday"}, headers=reader), 400)


# Times outside the supported range 1970-01-01T00:00:00Z .. 9999-12-31T23:59:59Z (docs/query.md). The first
# two overflow Python's datetime when converted to UTC; 0001-01-01Z is PostgreSQL's -infinity to asyncpg.
OUT_OF_RANGE = (
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:00:00-05:00",
    "0001-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z",
)


@pytest.mark.parametrize("path", SINCE_UNTIL)
@pytest.mark.parametrize("param", ["since", "until"])
async def test_out_of_range_times_are_400(
    client: Client, make_key: KeyFactory, path: str, param: str
) -> None:
    """Never a 500 (OverflowError in the UTC conversion or in the default range `until - 1 h`)."""
    reader = {"X-API-Key": await make_key("read")}
    base = {"name": "cpu"} if path.endswith("/series") else {}
    for value in OUT_OF_RANGE:
        response = await client.get(path, params={**base, param: value}, headers=reader)
        body = assert_error_body(response, 400)
        assert body["detail"].startswith(
            f"{param} must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
        )
    # Both ends of the range are inclusive.
    for since, until in (
        ("1970-01-01T00:00:00Z", "1970-01-01T02:00:00+01:00"),
        ("9999-12-31T22:00:00Z", "9999-12-31T23:59:59Z"),
    ):
        response = await client.get(path, params={**base, "since": since, "until": until}, headers=reader)
        assert response.status_code == 200, response.text


# Endpoints whose cursor holds a time: (path, the cursor made from a time and an id of the right kind).
TIME_CURSORS: list[tuple[str, Any]] = [
    ("/api/v1/logs", lambda when: ["logs", when, 1]),
    ("/api/v1/spans", lambda when: ["spans", when, 1]),
    ("/api/v1/anomalies", lambda when: ["anomalies", when, ANY_ID]),
    ("/api/v1/alerts/history", lambda when: ["alerts", when, ANY_ID]),
    ("/api/v1/alerts/audit", lambda when: ["audit", when, ANY_ID]),
    ("/api/v1/alerts/silences", lambda when: ["silences", when, ANY_ID]),
    ("/api/v1/notifications/attempts", lambda when: ["attempts", when, ANY_ID]),
    ("/api/v1/notifications/outbox", lambda when: ["outbox", when, ANY_ID]),
    ("/api/v1/notifications/history", lambda when: ["history", when, ANY_ID]),
]


@pytest.mark.parametrize(("path", "shape"), TIME_CURSORS, ids=[p for p, _ in TIME_CURSORS])
async def test_cursor_with_an_out_of_range_or_naive_time_is_400(
    client: Client, make_key: KeyFactory, path: str, shape: Any
) -> None:
    reader = {"X-API-Key": await make_key("read")}
    valid = encode_cursor(shape("2026-01-01T00:00:00Z"))
    assert (await client.get(path, params={"cursor": valid}, headers=reader)).status_code == 200
    for when in (*OUT_OF_RANGE, "2026-01-01T00:00:00"):  # the last one is naive
        response = await client.get(path, params={"cursor": encode_cursor(shape(when))}, headers=reader)
        assert assert_error_body(response, 400)["detail"].startswith("cursor is not valid"), when


@pytest.mark.parametrize(
    "times",
    [
        {"starts_at": "0001-01-01T00:00:00+01:00", "ends_at": "2999-01-01T00:00:00Z"},
        {"starts_at": "1969-12-31T00:00:00Z", "ends_at": "2999-01-01T00:00:00Z"},
        {"ends_at": "9999-12-31T23:00:00-05:00"},
        {"ends_at": "9999-12-31T23:59:59.999999Z"},  # asyncpg would store it as PostgreSQL infinity
    ],
    ids=["starts_at-overflow", "starts_at-1969", "ends_at-overflow", "ends_at-infinity"],
)
async def test_silence_times_out_of_range_are_422(
    client: Client, make_key: KeyFactory, times: dict[str, str]
) -> None:
    operator = {"X-API-Key": await make_key("operate")}
    silence = {"matchers": [{"name": "alertname", "op": "=", "value": "x"}], **times}
    body = assert_error_body(
        await client.post("/api/v1/alerts/silences", json=silence, headers=operator), 422
    )
    field = "starts_at" if "starts_at" in times else "ends_at"
    assert body["detail"].startswith(f"{field} must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z")
    assert (await client.get("/api/v1/alerts/silences", headers=operator)).json()["items"] == []
    last = {**silence, "starts_at": "1970-01-01T00:00:00Z", "ends_at": "9999-12-31T23:59:59Z"}
    assert (await client.post("/api/v1/alerts/silences", json=last, headers=operator)).status_code == 201


BAD_QUERY = [
    ("/api/v1/logs", {"level": "LOUD"}),
    ("/api/v1/spans", {"status": "BROKEN"}),
    ("/api/v1/spans", {"min_duration_ms": "slow"}),
    ("/api/v1/metrics/series", {"name": "cpu", "agg": "median"}),
    ("/api/v1/metrics/series", {"name": "cpu", "step": "0"}),
    ("/api/v1/metrics/series", {}),
    ("/api/v1/services", {"window": "0"}),
    ("/api/v1/incidents", {"status": "sleeping"}),
    ("/api/v1/incidents", {"severity": "huge"}),
    ("/api/v1/alerts/history", {"state": "bogus"}),
    ("/api/v1/alerts/silences", {"status": "bogus"}),
    ("/api/v1/notifications/outbox", {"status": "lost"}),
    ("/api/v1/notifications/history", {"status": "pending"}),
    ("/api/v1/notifications/attempts", {"outcome": "maybe"}),
    ("/api/v1/notifications/trends", {"bucket": "week"}),
    ("/api/v1/notifications/stats", {"window": "1"}),
]


@pytest.mark.parametrize(("path", "params"), BAD_QUERY)
async def test_bad_query_parameters_are_400(
    client: Client, make_key: KeyFactory, path: str, params: dict[str, str]
) -> None:
    """One rule for the query string everywhere (as for `limit` in §5): a bad value is a 400."""
    reader = {"X-API-Key": await make_key("read")}
    assert_error_body(await client.get(path, params=params, headers=reader), 400)


WRITES = [
    ("POST", "/api/v1/alerts/policies", "admin"),
    ("PATCH", "/api/v1/alerts/policies/{id}", "admin"),
    ("POST", "/api/v1/alerts/silences", "operate"),
    ("POST", "/api/v1/notifications/channels", "admin"),
    ("POST", "/api/v1/keys", "admin"),
]


@pytest.mark.parametrize(("method", "path", "scope"), WRITES)
async def test_body_errors_malformed_400_invalid_422(
    client: Client, make_key: KeyFactory, method: str, path: str, scope: str
) -> None:
    """Like ingest: malformed JSON (or no body) is a 400, well-formed JSON of the wrong shape a 422."""
    headers = {"X-API-Key": await make_key(scope), "Content-Type": "application/json"}
    if "{id}" in path:
        policy = {"name": "p", "kind": "log_rate", "severity": "low", "threshold": 1}
        created = await client.post("/api/v1/alerts/policies", json=policy, headers=headers)
        path = path.format(id=created.json()["id"])
    assert_error_body(await client.request(method, path, content=b"{bad", headers=headers), 400)
    assert_error_body(await client.request(method, path, content=b"", headers=headers), 400)
    for wrong in (b"[]", b'{"name": 5}', b'{"threshold": "high", "matchers": 1, "scopes": "x", "url": 1}'):
        body = assert_error_body(await client.request(method, path, content=wrong, headers=headers), 422)
        assert "errors" not in body or isinstance(body["errors"], list)


CREATES = [
    (
        "/api/v1/alerts/policies",
        "admin",
        {"name": "p", "kind": "incident", "severity": "high", "min_severity": "high"},
    ),
    (
        "/api/v1/alerts/silences",
        "operate",
        {"matchers": [{"name": "alertname", "op": "=", "value": "x"}], "ends_at": "2999-01-01T00:00:00Z"},
    ),
    ("/api/v1/notifications/channels", "admin", {"name": "c", "url": "http://127.0.0.1:9/hook"}),
    ("/api/v1/keys", "admin", {"name": "k", "scopes": ["read"]}),
]


@pytest.mark.parametrize(("path", "scope", "body"), CREATES, ids=[c[0] for c in CREATES])
async def test_create_is_201_with_an_id(
    client: Client, make_key: KeyFactory, path: str, scope: str, body: dict[str, Any]
) -> None:
    response = await client.post(path, json=body, headers={"X-API-Key": await make_key(scope)})
    assert response.status_code == 201, response.text
    assert uuid.UUID(response.json()["id"])


NUL = "\u0000"
NUL_QUERIES = [
    ("/api/v1/logs", {"q": NUL}),
    ("/api/v1/logs", {"service": f"a{NUL}b"}),
    ("/api/v1/logs", {"trace_id": NUL}),
    ("/api/v1/spans", {"name": NUL}),
    ("/api/v1/metrics/series", {"name": NUL}),
    ("/api/v1/metrics/series", {"name": "cpu", "labels": f"a:{NUL}"}),
    ("/api/v1/incidents", {"service": NUL}),
    ("/api/v1/anomalies", {"metric": NUL}),
    ("/api/v1/alerts/audit", {"actor": NUL}),
    ("/api/v1/notifications/attempts", {"error_code": NUL}),
    ("/api/v1/traces/%00", {}),
]


@pytest.mark.parametrize(("path", "params"), NUL_QUERIES, ids=[f"{p} {sorted(q)}" for p, q in NUL_QUERIES])
async def test_nul_in_the_query_is_400(
    client: Client, make_key: KeyFactory, path: str, params: dict[str, str]
) -> None:
    """PostgreSQL text cannot hold U+0000: a client error, never a 500."""
    reader = {"X-API-Key": await make_key("read")}
    body = assert_error_body(await client.get(path, params=params, headers=reader), 400)
    assert "NUL" in body["detail"]


POLICY = {"name": "p", "kind": "log_rate", "severity": "low", "threshold": 1}
SILENCE = {"matchers": [{"name": "alertname", "op": "=", "value": "x"}], "ends_at": "2999-01-01T00:00:00Z"}
CHANNEL = {"name": "c", "url": "http://127.0.0.1:9/hook"}
NUL_BODIES = [
    ("/api/v1/alerts/policies", "admin", POLICY, {"name": f"p{NUL}"}),
    ("/api/v1/alerts/policies", "admin", POLICY, {"q": f"a{NUL}"}),
    ("/api/v1/alerts/silences", "operate", SILENCE, {"matchers": [{**SILENCE["matchers"][0], "value": NUL}]}),  # type: ignore[index]
    ("/api/v1/alerts/silences", "operate", SILENCE, {"comment": f"why{NUL}"}),
    ("/api/v1/notifications/channels", "admin", CHANNEL, {"name": f"c{NUL}"}),
    ("/api/v1/keys", "admin", {"name": "k", "scopes": ["read"]}, {"name": f"k{NUL}"}),
]


@pytest.mark.parametrize(
    ("path", "scope", "valid", "change"), NUL_BODIES, ids=[f"{p} {sorted(c)}" for p, _, _, c in NUL_BODIES]
)
async def test_nul_in_a_body_is_400_and_rolled_back(
    client: Client,
    make_key: KeyFactory,
    path: str,
    scope: str,
    valid: dict[str, Any],
    change: dict[str, Any],
) -> None:
    headers = {"X-API-Key": await make_key(scope)}
    body = assert_error_body(await client.post(path, json={**valid, **change}, headers=headers), 400)
    assert body["detail"] == "Text values must not contain NUL (\\u0000) characters."
    listed = await client.get(path, headers=headers)
    assert listed.status_code == 200, listed.text
    assert "\\u0000" not in listed.text  # nothing of the failed request was committed
    assert (await client.post(path, json=valid, headers=headers)).status_code == 201


INVALID_UTF8 = [
    ("/api/v1/ingest/logs", "ingest", "application/json", b'{"message": "\xff\xfe"}'),
    ("/api/v1/ingest/logs", "ingest", "application/json", b'[{"message": "\xff\xfe"}]'),
    ("/api/v1/ingest/logs", "ingest", "application/x-ndjson", b'{"level": "info"}\n{"message": "\xff\xfe"}'),
    ("/api/v1/ingest/metrics", "ingest", "application/json", b'{"name": "\xff\xfe"}'),
    ("/api/v1/alerts/policies", "admin", "application/json", b'{"name": "\xff", "kind": "log_rate"}'),
    ("/api/v1/alerts/silences", "operate", "application/json", b'{"comment": "\xff"}'),
    ("/api/v1/notifications/channels", "admin", "application/json", b'{"name": "\xc3"}'),
    ("/api/v1/keys", "admin", "application/json", b'{"name": "\xff", "scopes": ["read"]}'),
]


@pytest.mark.parametrize(
    ("path", "scope", "content_type", "content"),
    INVALID_UTF8,
    ids=[f"{p} {t} {c[:2]!r}" for p, _, t, c in INVALID_UTF8],
)
async def test_invalid_utf8_body_is_400(
    client: Client, make_key: KeyFactory, path: str, scope: str, content_type: str, content: bytes
) -> None:
    """JSON is UTF-8 (RFC 8259): other bytes make the body malformed, a 400 like a syntax error."""
    headers = {"X-API-Key": await make_key(scope), "Content-Type": content_type}
    body = assert_error_body(await client.post(path, content=content, headers=headers), 400)
    assert body["detail"].startswith("The body is not valid UTF-8 JSON: ")


REPOSITORY_ERRORS = [
    (aa_exceptions.NotFoundError(detail="No rows matched the specified data"), 404),
    (aa_exceptions.DuplicateKeyError(detail="A record matching the supplied data already exists."), 409),
    (aa_exceptions.IntegrityError(detail="There was a data validation error."), 409),
    (aa_exceptions.RepositoryError(detail="Something failed."), 500),
]


@pytest.mark.parametrize(
    ("error", "status"), REPOSITORY_ERRORS, ids=[type(e).__name__ for e, _ in REPOSITORY_ERRORS]
)
async def test_repository_errors_use_the_envelope(
    app: Litestar, make_key: KeyFactory, error: Exception, status: int
) -> None:
    """advanced-alchemy's repository errors go through the app's handler like everything else."""

    @get("/api/v1/test-repository-error", sync_to_thread=False)
    def fail() -> None:
        raise error

    app.register(fail)
    async with AsyncTestClient(app=app) as client:
        response = await client.get("/api/v1/test-repository-error", headers={"X-API-Key": await make_key()})
    body = assert_error_body(response, status)
    assert body["detail"] != "None"


async def test_generic_error_details_are_sentences(client: Client, make_key: KeyFactory) -> None:
    """Litestar's bare status phrases ("Not Found") become sentences; status and headers stay."""
    reader = {"X-API-Key": await make_key("read")}
    missing = assert_error_body(await client.get("/api/v1/no-such", headers=reader), 404)
    assert missing["detail"] == "No resource matches GET /api/v1/no-such."
    response = await client.put("/api/v1/logs", headers=reader)
    assert assert_error_body(response, 405)["detail"] == "Method PUT is not allowed on /api/v1/logs."
    assert "GET" in response.headers["allow"]


SPEC_OPERATIONS = [
    ("post", "/api/v1/ingest/logs"),
    ("post", "/api/v1/ingest/traces"),
    ("post", "/api/v1/ingest/metrics"),
    ("get", "/api/v1/logs"),
    ("get", "/api/v1/spans"),
    ("get", "/api/v1/traces/{trace_id}"),
    ("get", "/api/v1/metrics/series"),
    ("get", "/api/v1/services"),
    ("get", "/api/v1/anomalies"),
    ("get", "/api/v1/incidents"),
    ("get", "/api/v1/incidents/{incident_id}"),
    ("post", "/api/v1/incidents/{incident_id}/ack"),
    ("post", "/api/v1/incidents/{incident_id}/resolve"),
    ("get", "/api/v1/events/stream"),
    ("get", "/api/v1/alerts/policies"),
    ("post", "/api/v1/alerts/policies"),
    ("get", "/api/v1/alerts/policies/{policy_id}"),
    ("patch", "/api/v1/alerts/policies/{policy_id}"),
    ("delete", "/api/v1/alerts/policies/{policy_id}"),
    ("post", "/api/v1/alerts/evaluate"),
    ("get", "/api/v1/alerts/active"),
    ("get", "/api/v1/alerts/history"),
    ("post", "/api/v1/alerts/{alert_id}/ack"),
    ("post", "/api/v1/alerts/{alert_id}/unack"),
    ("get", "/api/v1/alerts/silences"),
    ("post", "/api/v1/alerts/silences"),
    ("post", "/api/v1/alerts/silences/{silence_id}/expire"),
    ("get", "/api/v1/alerts/audit"),
    ("get", "/api/v1/notifications/channels"),
    ("post", "/api/v1/notifications/channels"),
    ("patch", "/api/v1/notifications/channels/{channel_id}"),
    ("delete", "/api/v1/notifications/channels/{channel_id}"),
    ("get", "/api/v1/notifications/outbox"),
    ("get", "/api/v1/notifications/history"),
    ("get", "/api/v1/notifications/stats"),
    ("get", "/api/v1/notifications/trends"),
    ("get", "/api/v1/notifications/attempts"),
    ("get", "/api/v1/notifications/attempts/{attempt_id}"),
    ("post", "/api/v1/notifications/dispatch"),
    ("post", "/api/v1/notifications/outbox/{item_id}/replay"),
    ("post", "/api/v1/notifications/outbox/replay-dead"),
    ("get", "/api/v1/keys"),
    ("post", "/api/v1/keys"),
    ("get", "/health"),
    ("get", "/health/live"),
    ("get", "/health/ready"),
    ("get", "/metrics"),
]


async def test_openapi_lists_every_spec_operation_with_tags(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    declared = {tag["name"] for tag in schema["tags"]}
    missing = [(m, p) for m, p in SPEC_OPERATIONS if m not in schema["paths"].get(p, {})]
    assert missing == []
    for method, path in SPEC_OPERATIONS:
        tags = schema["paths"][path][method].get("tags")
        assert tags, (method, path)
        assert set(tags) <= declared, (method, path, tags)
    assert schema["paths"]["/health"]["get"]["security"] == [{}]  # public, unlike the rest


SPEC_METRICS = [
    ("http_requests_total", "counter"),
    ("http_request_duration_seconds", "histogram"),
    ("prodsentinel_ingested_signals_total", "counter"),
    ("prodsentinel_ingest_duplicates_total", "counter"),
    ("prodsentinel_incidents_open", "gauge"),
    ("prodsentinel_alerts_active", "gauge"),
    ("prodsentinel_alert_transitions_total", "counter"),
    ("prodsentinel_silences_active", "gauge"),
    ("prodsentinel_alerts_inhibited", "gauge"),
    ("prodsentinel_notifications_attempts_total", "counter"),
    ("prodsentinel_notifications_delivery_latency_seconds", "histogram"),
    ("prodsentinel_outbox_pending", "gauge"),
    ("prodsentinel_outbox_dead", "gauge"),
    ("prodsentinel_outbox_oldest_pending_age_seconds", "gauge"),
    ("prodsentinel_scheduler_last_tick_timestamp_seconds", "gauge"),
]


async def test_metrics_names_types_and_content_type(client: Client, make_key: KeyFactory) -> None:
    reader = {"X-API-Key": await make_key("read")}
    await client.get("/api/v1/logs", headers=reader)
    response = await client.get("/metrics", headers=reader)
    assert response.status_code == 200
    content_type = response.headers["content-type"]
    assert content_type.startswith("text/plain; version=0.0.4")
    assert content_type.count("charset") == 1
    types = dict(line.split(" ")[2:4] for line in response.text.splitlines() if line.startswith("# TYPE "))
    assert {name: types.get(name) for name, _ in SPEC_METRICS} == dict(SPEC_METRICS)
    assert 'http_requests_total{method="GET",path="/api/v1/logs",status_code="200"}' in response.text


SPEC_DEFAULTS = [
    ("log_level", "INFO"),
    ("log_format", "json"),
    ("otel_exporter_otlp_endpoint", None),
    ("data_dir", Path(".prodsentinel")),
    ("host", "127.0.0.1"),
    ("port", 8000),
    ("metrics_auth", True),
    ("channels_file", None),
    ("policies_file", None),
    ("retention_days_logs", 14),
    ("retention_days_spans", 14),
    ("retention_days_metrics", 30),
    ("rate_limit", "600/minute"),
    ("max_body_bytes", 10 * 1024 * 1024),
    ("max_batch_items", 10_000),
    ("incident_quiet_minutes", 30),
    ("problem_window_seconds", 600),
    ("alerts_interval_seconds", 30),
    ("notify_max_attempts", 8),
    ("notify_backoff_seconds", 2),
    ("notify_timeout_seconds", 10),
    ("slack_api_url", "https://slack.com/api"),
    ("pagerduty_url", "https://events.pagerduty.com/v2/enqueue"),
    ("channel_disable_after_seconds", 432000),
    ("channel_disable_min_failures", 20),
    ("notify_block_private", False),
]


def test_settings_defaults_are_the_specs() -> None:
    settings = load_settings({})
    assert {name: getattr(settings, name) for name, _ in SPEC_DEFAULTS} == dict(SPEC_DEFAULTS)


SPEC_VARIABLES = [
    ("DATABASE_URL", "postgresql://u@db:5432/x", "database_url", "postgresql://u@db:5432/x"),
    ("REDIS_URL", "redis://r:6379/0", "redis_url", "redis://r:6379/0"),
    ("LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ("LOG_FORMAT", "console", "log_format", "console"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318", "otel_exporter_otlp_endpoint", "http://otel:4318"),
    ("PRODSENTINEL_DATA_DIR", "/tmp/ps", "data_dir", Path("/tmp/ps")),
    ("PRODSENTINEL_HOST", "0.0.0.0", "host", "0.0.0.0"),
    ("PRODSENTINEL_PORT", "9000", "port", 9000),
    ("PRODSENTINEL_METRICS_AUTH", "0", "metrics_auth", False),
    ("PRODSENTINEL_RETENTION_DAYS_LOGS", "3", "retention_days_logs", 3),
    ("PRODSENTINEL_RETENTION_DAYS_SPANS", "4", "retention_days_spans", 4),
    ("PRODSENTINEL_RETENTION_DAYS_METRICS", "5", "retention_days_metrics", 5),
    ("PRODSENTINEL_RATE_LIMIT", "10/second", "rate_limit", "10/second"),
    ("PRODSENTINEL_MAX_BODY_BYTES", "1024", "max_body_bytes", 1024),
    ("PRODSENTINEL_MAX_BATCH_ITEMS", "7", "max_batch_items", 7),
    ("PRODSENTINEL_INCIDENT_QUIET_MINUTES", "9", "incident_quiet_minutes", 9),
    ("PRODSENTINEL_PROBLEM_WINDOW_SECONDS", "120", "problem_window_seconds", 120),
    ("PRODSENTINEL_ALERTS_INTERVAL_SECONDS", "11", "alerts_interval_seconds", 11),
    ("PRODSENTINEL_NOTIFY_MAX_ATTEMPTS", "3", "notify_max_attempts", 3),
    ("PRODSENTINEL_NOTIFY_BACKOFF_SECONDS", "0.5", "notify_backoff_seconds", 0.5),
    ("PRODSENTINEL_NOTIFY_TIMEOUT_SECONDS", "4", "notify_timeout_seconds", 4),
    # SPEC §12
    ("PRODSENTINEL_SLACK_API_URL", "http://slack.local/api", "slack_api_url", "http://slack.local/api"),
    (
        "PRODSENTINEL_PAGERDUTY_URL",
        "http://pd.local/v2/enqueue",
        "pagerduty_url",
        "http://pd.local/v2/enqueue",
    ),
    ("PRODSENTINEL_SMTP_HOST", "smtp.local", "smtp_host", "smtp.local"),
    ("PRODSENTINEL_SMTP_PORT", "2525", "smtp_port", 2525),
    ("PRODSENTINEL_SMTP_USER", "u", "smtp_user", "u"),
    ("PRODSENTINEL_SMTP_PASSWORD", "p", "smtp_password", "p"),
    ("PRODSENTINEL_SMTP_FROM", "ps@example.com", "smtp_from", "ps@example.com"),
    ("PRODSENTINEL_SMTP_STARTTLS", "0", "smtp_starttls", False),
    ("PRODSENTINEL_CHANNEL_DISABLE_AFTER_SECONDS", "60", "channel_disable_after_seconds", 60),
    ("PRODSENTINEL_CHANNEL_DISABLE_MIN_FAILURES", "3", "channel_disable_min_failures", 3),
    ("PRODSENTINEL_NOTIFY_BLOCK_PRIVATE", "1", "notify_block_private", True),
]


@pytest.mark.parametrize(("variable", "raw", "attribute", "value"), SPEC_VARIABLES)
def test_spec_variable_names(variable: str, raw: str, attribute: str, value: Any) -> None:
    assert getattr(load_settings({variable: raw}), attribute) == value


def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRODSENTINEL_", "REDIS_URL"))}
    env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "prodsentinel", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )


async def test_keys_cli_create_list_revoke(client: Client, database_url: str, project_name: str) -> None:
    created = run_cli(
        database_url,
        "keys",
        "create",
        "--name",
        "cli-key",
        "--scopes",
        "ingest,read",
        "--project",
        project_name,
    )
    assert created.returncode == 0, created.stderr
    raw = created.stdout.strip().splitlines()[-1]
    assert raw.startswith("ps_")  # the raw key alone on the last line
    assert " " not in raw
    headers = {"X-API-Key": raw}
    assert (await client.get("/api/v1/logs", headers=headers)).status_code == 200
    assert (await client.post("/api/v1/ingest/logs", json=[], headers=headers)).status_code == 202

    listed = run_cli(database_url, "keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert raw not in listed.stdout
    rows = [row for row in json.loads(listed.stdout) if row["project"] == project_name]
    assert len(rows) == 1
    [row] = rows
    assert set(row) == {"id", "name", "project", "scopes", "created_at", "revoked_at"}
    assert (row["name"], row["scopes"], row["revoked_at"]) == ("cli-key", ["ingest", "read"], None)
    datetime.fromisoformat(row["created_at"])

    revoked = run_cli(database_url, "keys", "revoke", row["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert_error_body(await client.get("/api/v1/logs", headers=headers), 401)  # the very next request
    again = [
        r for r in json.loads(run_cli(database_url, "keys", "list", "--json").stdout) if r["id"] == row["id"]
    ]
    assert again[0]["revoked_at"] is not None


def test_keys_cli_default_project_is_default(database_url: str) -> None:
    created = run_cli(
        database_url, "keys", "create", "--name", f"d-{uuid.uuid4().hex[:6]}", "--scopes", "read"
    )
    assert created.returncode == 0, created.stderr
    key_id = created.stdout.split()[2]
    rows = json.loads(run_cli(database_url, "keys", "list", "--json").stdout)
    assert [r["project"] for r in rows if r["id"] == key_id] == ["default"]


async def test_alert_and_outbox_item_fields_on_a_real_flow(client: Client, make_key: KeyFactory) -> None:
    """§7 alert fields and labels, §8 outbox item fields and a dead delivery, all over HTTP."""
    admin = {"X-API-Key": await make_key("admin")}
    with Receiver(default=Reply(404)) as receiver:
        channel = await client.post(
            "/api/v1/notifications/channels", json={"name": "hook", "url": receiver.url}, headers=admin
        )
        assert channel.status_code == 201, channel.text
        assert (channel.json()["min_severity"], channel.json()["enabled"]) == ("low", True)
        policy = await client.post(
            "/api/v1/alerts/policies",
            json={
                "name": "errors",
                "kind": "log_rate",
                "severity": "high",
                "threshold": 0,
                "service": "api",
                "labels": {"team": "core"},
            },
            headers=admin,
        )
        assert policy.status_code == 201, policy.text
        log = {
            "signal_id": str(uuid.uuid4()),
            "service_name": "api",
            "timestamp": datetime.now(UTC).isoformat(),
            "level": "ERROR",
            "message": "boom",
        }
        assert (await client.post("/api/v1/ingest/logs", json=log, headers=admin)).status_code == 202
        assert (await client.post("/api/v1/alerts/evaluate", headers=admin)).status_code == 200

        [alert] = (await client.get("/api/v1/alerts/active", headers=admin)).json()["items"]
        spec_alert = {"id", "policy_id", "labels", "state", "value", "started_at", "fired_at"}
        assert spec_alert | {"resolved_at", "acked_by", "acked_at"} <= set(alert)
        assert (alert["state"], alert["policy_id"], alert["value"]) == ("firing", policy.json()["id"], 1)
        assert alert["labels"] == {
            "team": "core",
            "alertname": "errors",
            "severity": "high",
            "service": "api",
        }

        [item] = (await client.get("/api/v1/notifications/outbox", headers=admin)).json()["items"]
        assert {
            "event_id", "delivery_id", "replayed_from_id", "status", "attempts",
            "next_attempt_at", "last_http_status", "last_error_code",
        } <= set(item)  # fmt: skip
        assert (item["status"], item["attempts"], item["replayed_from_id"]) == ("pending", 0, None)
        assert (item["last_http_status"], item["last_error_code"]) == (None, None)
        assert item["event_type"] == "ALERT_FIRING"

        dispatched = await client.post("/api/v1/notifications/dispatch", headers=admin)
        assert dispatched.status_code == 200, dispatched.text
        [dead] = (await client.get("/api/v1/notifications/outbox", headers=admin)).json()["items"]
        assert (dead["status"], dead["attempts"], dead["last_http_status"]) == ("dead", 1, 404)
        assert dead["last_error_code"]
        [request] = receiver.requests
        assert request.headers["x-prodsentinel-event-id"] == item["event_id"]
        assert request.headers["x-prodsentinel-delivery-id"] == item["delivery_id"]
        assert request.headers["x-prodsentinel-timestamp"].isdigit()

        [attempt] = (await client.get("/api/v1/notifications/attempts", headers=admin)).json()["items"]
        one = await client.get(f"/api/v1/notifications/attempts/{attempt['id']}", headers=admin)
        assert one.json() == attempt

        replays = await client.post(
            "/api/v1/notifications/outbox/replay-dead", params={"limit": 1}, headers=admin
        )
        assert replays.status_code == 200, replays.text
        outbox = (await client.get("/api/v1/notifications/outbox", headers=admin)).json()["items"]
        [replay] = [i for i in outbox if i["replayed_from_id"] == dead["id"]]
        assert replay["event_id"] == dead["event_id"]
        assert replay["delivery_id"] != dead["delivery_id"]
