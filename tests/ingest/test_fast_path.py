"""The ingest fast path (``ingest.fast_path``) answers as the Litestar route does, and leaves the rest to it.

Every other ingest test goes through it too (the app under test is the one granian serves); here the
same requests are sent once on the fast path and once handed to Litestar (an ``Origin`` header makes the
fast path step aside), and the answers must match.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from prodsentinel.app import ProdSentinel
from tests.conftest import KeyFactory

LOGS = "/api/v1/ingest/logs"


def _log(**changes: Any) -> dict[str, Any]:
    return {
        "signal_id": str(uuid.uuid4()),
        "service_name": "fast",
        "timestamp": datetime.now(UTC).isoformat(),
        "level": "INFO",
        "message": "m",
        **changes,
    }


async def _scope_answer(
    client: AsyncTestClient[Litestar], headers: list[tuple[bytes, bytes]], method: str = "POST"
) -> bool:
    """Whether the fast path answers this request itself (it reads nothing when it does not).

    Run in the app's own event loop (the test client's portal): its pools belong to that loop.
    """
    app = client.app
    assert isinstance(app, ProdSentinel)
    assert app.ingest_fast_path is not None
    sent: list[dict[str, Any]] = []
    body = json.dumps(_log()).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope: Any = {
        "type": "http",
        "method": method,
        "path": LOGS,
        "raw_path": LOGS.encode(),
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "http_version": "1.1",
        "asgi": {"version": "3.0"},
    }
    answered = await asyncio.to_thread(
        client.blocking_portal.call, app.ingest_fast_path, scope, receive, send
    )
    assert answered == bool(sent)
    if answered:
        assert sent[0]["status"] == 202
    return answered


class TestWhatItServes:
    async def test_a_key_with_the_ingest_scope_is_served_the_rest_goes_to_litestar(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        ingest = await make_key("ingest")
        reader = await make_key("read")
        assert await _scope_answer(client, [(b"x-api-key", ingest.encode())])
        assert await _scope_answer(client, [(b"authorization", f"Bearer {ingest}".encode())])
        assert not await _scope_answer(client, [(b"x-api-key", reader.encode())])  # 403 from Litestar
        assert not await _scope_answer(client, [(b"x-api-key", b"ps_nope_nope")])  # 401 from Litestar
        assert not await _scope_answer(client, [(b"authorization", b"Bearer eyJ.session.token")])
        assert not await _scope_answer(client, [(b"x-api-key", ingest.encode()), (b"origin", b"https://a.b")])
        assert not await _scope_answer(client, [(b"x-api-key", ingest.encode())], method="GET")


CASES: dict[str, tuple[Callable[[], bytes], dict[str, str]]] = {
    "accepted": (lambda: json.dumps([_log(), _log()]).encode(), {}),
    "gzip": (lambda: gzip.compress(json.dumps(_log()).encode()), {"Content-Encoding": "gzip"}),
    "invalid item": (lambda: json.dumps([_log(), _log(level="LOUD")]).encode(), {}),
    "malformed": (lambda: b'{"signal_id": ', {}),
    "bad gzip": (lambda: b"not gzip", {"Content-Encoding": "gzip"}),
    "unsupported type": (lambda: json.dumps(_log()).encode(), {"Content-Type": "text/plain"}),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_answers_match_the_litestar_route(
    case: str, client: AsyncTestClient[Litestar], make_key: KeyFactory
) -> None:
    make_body, extra = CASES[case]
    key = await make_key("ingest")
    headers = {"X-API-Key": key, "Content-Type": "application/json", **extra}
    fast = await client.post(LOGS, content=make_body(), headers=headers)
    # an Origin header makes the fast path step aside: Litestar's route answers
    routed = await client.post(LOGS, content=make_body(), headers={**headers, "Origin": "https://a.example"})
    assert fast.status_code == routed.status_code
    fast_body, routed_body = fast.json(), routed.json()
    assert ("request_id" in fast_body) == ("request_id" in routed_body)
    fast_body.pop("request_id", None)
    routed_body.pop("request_id", None)
    assert fast_body == routed_body
    for name in ("content-type", "retry-after"):
        assert fast.headers.get(name) == routed.headers.get(name)
    assert fast.headers["x-request-id"]
    assert float(fast.headers["x-process-time-ms"]) >= 0


async def test_request_id_headers_and_http_metrics(
    client: AsyncTestClient[Litestar], make_key: KeyFactory
) -> None:
    key = await make_key("ingest")
    labels = {"method": "POST", "path": LOGS, "status_code": "202"}
    before = REGISTRY.get_sample_value("http_requests_total", labels) or 0.0
    answer = await client.post(LOGS, json=_log(), headers={"X-API-Key": key, "X-Request-ID": "trace-me-42"})
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"accepted": 1, "duplicates": 0}
    assert answer.headers["x-request-id"] == "trace-me-42"
    assert answer.headers["content-type"] == "application/json"
    assert REGISTRY.get_sample_value("http_requests_total", labels) == before + 1
