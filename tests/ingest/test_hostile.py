"""Hostile nesting through the HTTP API: every body nested beyond what the server decodes is a 4xx JSON
error with the request id, stores nothing, and the next normal request still works (issue 8).

msgspec decodes recursively: without the handling in ``ingest.decoding`` and ``lib.errors`` these bodies
reached a ``RecursionError`` and answered 500, and attributes nested just below that edge were stored and
then made every query page holding them a 500.
"""

from __future__ import annotations

import base64
import gzip
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.ingest.decoding import TOO_DEEP as BODY_TOO_DEEP
from prodsentinel.ingest.services import MAX_ATTRIBUTE_DEPTH
from prodsentinel.ingest.services import TOO_DEEP as ATTRIBUTES_TOO_DEEP
from tests.conftest import KeyFactory
from tests.factories import LogInFactory, MetricInFactory, SpanInFactory
from tests.ingest.test_ingest import ENDPOINTS, stored

#: Where an item of each kind holds a nested object (metrics: ``labels``, which must be flat).
NESTED_FIELD = {"logs": "attributes", "traces": "attributes", "metrics": "labels"}
FACTORIES = {"logs": LogInFactory, "traces": SpanInFactory, "metrics": MetricInFactory}


def deep_object(depth: int) -> bytes:
    return b'{"a":' * (depth - 1) + b'{"a":1' + b"}" * depth


def deep_array(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def item_with(kind: str, nested: bytes) -> bytes:
    """A valid item of ``kind`` whose nested field (see ``NESTED_FIELD``) is ``nested``, verbatim."""
    item = msgspec.json.encode(FACTORIES[kind].build())
    return item[:-1] + b',"%s":%s}' % (NESTED_FIELD[kind].encode(), nested)


def valid(kind: str) -> bytes:
    return msgspec.json.encode(FACTORIES[kind].build())


async def post(
    client: AsyncTestClient[Litestar],
    kind: str,
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
    return await client.post(ENDPOINTS[kind][0], content=body, headers=headers)


def assert_error(response: Any, status: int, detail: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    payload: dict[str, Any] = response.json()
    assert payload["detail"] == detail
    assert payload["request_id"] == response.headers["x-request-id"]
    return payload


async def assert_still_serving(
    client: AsyncTestClient[Litestar],
    session_maker: async_sessionmaker[AsyncSession],
    project: str,
    kind: str,
    key: str,
) -> None:
    """Nothing of the refused body was stored, and a normal batch right after it is accepted."""
    table = ENDPOINTS[kind][2]
    assert await stored(session_maker, table, project) == 0
    response = await post(client, kind, key, valid(kind))
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 1, "duplicates": 0}
    assert await stored(session_maker, table, project) == 1


KINDS = pytest.mark.parametrize("kind", ["logs", "traces", "metrics"])


class TestBodiesTooDeepToDecode:
    """Nested beyond the decoder's recursion budget: the body is refused whole, 400 (decoding's docstring)."""

    @KINDS
    @pytest.mark.parametrize("gzipped", [False, True])
    async def test_ten_thousand_deep_object_inside_an_item(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
        kind: str,
        gzipped: bool,
    ) -> None:
        key = await make_key("ingest")
        body = item_with(kind, deep_object(10_000))
        assert_error(await post(client, kind, key, body, gzipped=gzipped), 400, BODY_TOO_DEEP)
        await assert_still_serving(client, session_maker, project_name, kind, key)

    @KINDS
    async def test_deep_object_in_a_later_array_item(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
        kind: str,
    ) -> None:
        key = await make_key("ingest")
        body = b"[%s,%s,%s]" % (valid(kind), item_with(kind, deep_object(10_000)), valid(kind))
        assert_error(await post(client, kind, key, body), 400, BODY_TOO_DEEP)
        await assert_still_serving(client, session_maker, project_name, kind, key)

    @KINDS
    async def test_deep_object_on_an_ndjson_line(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
        kind: str,
    ) -> None:
        key = await make_key("ingest")
        body = b"\n".join([valid(kind), item_with(kind, deep_object(10_000)), valid(kind)])
        response = await post(client, kind, key, body, "application/x-ndjson", gzipped=True)
        assert_error(response, 400, BODY_TOO_DEEP)
        await assert_still_serving(client, session_maker, project_name, kind, key)

    @KINDS
    @pytest.mark.parametrize(
        "body",
        [deep_array(5_000), b"[" * 100_000, b"[%s]" % deep_array(5_000), b'{"attributes":' + b"[" * 100_000],
        ids=["5000-deep-array", "100000-open-brackets", "array-item-5000-deep", "object-then-brackets"],
    )
    async def test_deep_arrays_and_unclosed_brackets(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
        kind: str,
        body: bytes,
    ) -> None:
        key = await make_key("ingest")
        assert_error(await post(client, kind, key, body), 400, BODY_TOO_DEEP)
        ndjson = await post(client, kind, key, body, "application/x-ndjson")
        assert_error(ndjson, 400, BODY_TOO_DEEP)
        await assert_still_serving(client, session_maker, project_name, kind, key)


class TestAttributeDepth:
    """Attributes that decode but nest beyond ``MAX_ATTRIBUTE_DEPTH`` are an invalid item: 422, per item."""

    @pytest.mark.parametrize("kind", ["logs", "traces"])
    @pytest.mark.parametrize("depth", [MAX_ATTRIBUTE_DEPTH + 1, 900])
    async def test_too_deep_attributes_are_an_invalid_item(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
        kind: str,
        depth: int,
    ) -> None:
        key = await make_key("ingest")
        body = b"[%s,%s]" % (valid(kind), item_with(kind, deep_object(depth)))
        response = await post(client, kind, key, body)
        detail = f"Invalid item at index 1 ($.attributes: {ATTRIBUTES_TOO_DEEP}); nothing was stored."
        payload = assert_error(response, 422, detail)
        assert payload["errors"] == [{"index": 1, "path": "$.attributes", "message": ATTRIBUTES_TOO_DEEP}]
        await assert_still_serving(client, session_maker, project_name, kind, key)

    async def test_attributes_at_the_limit_are_stored_and_read_back(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        key = await make_key("ingest", "read")
        nested = deep_array(MAX_ATTRIBUTE_DEPTH - 1)  # inside the attributes object: the limit exactly
        log = LogInFactory.build(attributes={"a": msgspec.json.decode(nested)})
        response = await post(client, "logs", key, msgspec.json.encode(log))
        assert response.status_code == 202, response.text
        page = await client.get("/api/v1/logs", headers={"X-API-Key": key})
        assert page.status_code == 200, page.text
        assert [item["attributes"] for item in page.json()["items"]] == [{"a": msgspec.json.decode(nested)}]


class TestOtherClientJson:
    """Every other place that decodes client JSON: Litestar-decoded bodies and cursors."""

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("POST", "/api/v1/alerts/policies"),
            ("PATCH", "/api/v1/alerts/policies/{id}"),
            ("POST", "/api/v1/alerts/silences"),
            ("POST", "/api/v1/keys"),
            ("POST", "/api/v1/notifications/channels"),
            ("PATCH", "/api/v1/notifications/channels/{id}"),
        ],
    )
    @pytest.mark.parametrize("body", [deep_object(10_000), deep_array(5_000), b"[" * 100_000])
    async def test_deep_litestar_body_is_a_400(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        method: str,
        path: str,
        body: bytes,
    ) -> None:
        key = await make_key("admin")
        headers = {"X-API-Key": key, "Content-Type": "application/json"}
        url = path.format(id=uuid.uuid4())
        response = await client.request(method, url, content=body, headers=headers)
        assert_error(response, 400, "The JSON body nests arrays and objects too deeply to be decoded.")
        # Nothing was created, and the process still answers a normal request on the same endpoint.
        silence = {
            "matchers": [{"name": "service", "op": "=", "value": "checkout"}],
            "ends_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        }
        listed = await client.get("/api/v1/alerts/silences", headers=headers)
        assert listed.status_code == 200, listed.text
        assert listed.json()["items"] == []
        created = await client.post("/api/v1/alerts/silences", json=silence, headers=headers)
        assert created.status_code == 201, created.text

    @pytest.mark.parametrize("path", ["/api/v1/logs", "/api/v1/alerts/silences", "/api/v1/incidents"])
    async def test_deep_cursor_is_a_400(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory, path: str
    ) -> None:
        key = await make_key("read")
        cursor = base64.urlsafe_b64encode(deep_array(3_000)).decode().rstrip("=")
        response = await client.get(path, params={"cursor": cursor}, headers={"X-API-Key": key})
        assert_error(response, 400, "cursor is not valid; use next_cursor from a previous page.")
        assert (await client.get(path, headers={"X-API-Key": key})).status_code == 200
