"""Several processes as one (SPEC §16, docs/scaling.md "Several processes").

Two API processes (granian) and two worker processes (``prodsentinel workers run``) on one PostgreSQL
and one Redis, as in production:

- no alert evaluated twice per interval: a trigger of the test's own records every evaluation of the
  project's alerts (an active alert's row is rewritten by each pass), at most one per cron interval;
- no outbox item sent twice at once: a real receiver counts deliveries per delivery id and event id
  (each exactly once) and notes overlapping sends of one id (none), while both workers dispatch;
- every SSE client gets its project's events whichever process produced them: streams on API 1 and
  API 2 both see the incidents the workers opened, the alerts they fired and the incident resolved
  through API 2; a stream of another project sees none of them;
- a key revoked through API 2 is refused by both APIs on the very next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from saq import Queue
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib.database import libpq_url
from tests.conftest import KeyFactory, project_id_of
from tests.receivers import Receiver, Reply
from tests.system.servers import ROOT, granian_server
from tests.system.test_events import sse_messages

SERVICES = [f"svc-{n}" for n in range(12)]
INTERVAL = 2  # PRODSENTINEL_ALERTS_INTERVAL_SECONDS

_COUNTER_SQL = """
CREATE TABLE IF NOT EXISTS test_alert_evaluations (
    project_id uuid, alert_id uuid, evaluated_at timestamptz, xact bigint
);
CREATE OR REPLACE FUNCTION test_record_alert_evaluation() RETURNS trigger AS $$
BEGIN
    INSERT INTO test_alert_evaluations VALUES (NEW.project_id, NEW.id, NEW.last_evaluated_at, txid_current());
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER test_record_alert_evaluation AFTER INSERT OR UPDATE OF last_evaluated_at ON alerts
    FOR EACH ROW EXECUTE FUNCTION test_record_alert_evaluation();
"""
_DROP_COUNTER_SQL = """
DROP TRIGGER IF EXISTS test_record_alert_evaluation ON alerts;
DROP FUNCTION IF EXISTS test_record_alert_evaluation();
DROP TABLE IF EXISTS test_alert_evaluations;
"""


@contextlib.contextmanager
def worker_process(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``prodsentinel workers run`` in its own process group; stopped (SIGTERM, then SIGKILL) after."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PRODSENTINEL_")}
    inherited.pop("REDIS_URL", None)
    log = Path(tempfile.mkstemp(prefix="ps-worker-", suffix=".log")[1])
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "prodsentinel", "workers", "run"],
            env={**inherited, "LOG_LEVEL": "WARNING", **env},
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        print(log.read_text(errors="replace")[-10_000:])  # shown when the test failed
        log.unlink(missing_ok=True)


class Stream:
    """An SSE client reading ``/api/v1/events/stream`` in the background, keeping every event."""

    def __init__(self, base_url: str, key: str) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.open = asyncio.Event()
        self._task = asyncio.create_task(self._read(base_url, key))

    async def _read(self, base_url: str, key: str) -> None:
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=None, headers={"X-API-Key": key}) as http,
            http.stream("GET", "/api/v1/events/stream") as response,
        ):
            assert response.status_code == 200
            self.open.set()
            async for message in sse_messages(response):
                if message["event"]:
                    self.events.append((message["event"], json.loads(message["data"])))

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [data for kind, data in self.events if kind == event_type]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def _until(check: Any, *, timeout: float, what: str) -> None:
    """Poll the async ``check()`` (a real signal) until true, at most ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        await asyncio.sleep(0.1)


def _error_log(service: str) -> dict[str, Any]:
    return {
        "signal_id": str(uuid.uuid4()),
        "service_name": service,
        "timestamp": datetime.now(UTC).isoformat(),
        "level": "ERROR",
        "message": f"{service}: upstream refused the connection",
    }


@pytest.fixture
async def evaluation_counter(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(libpq_url(database_url))
    await connection.execute(_COUNTER_SQL)
    try:
        yield connection
    finally:
        await connection.execute(_DROP_COUNTER_SQL)
        await connection.close()


@pytest.mark.timeout(300)
async def test_two_apis_and_two_workers_act_as_one(
    database_url: str,
    redis_url: str,
    make_key: KeyFactory,
    project_name: str,
    session_maker: async_sessionmaker[AsyncSession],
    evaluation_counter: asyncpg.Connection,
) -> None:
    admin = await make_key("admin", "ingest")
    other_project = f"{project_name}-other"
    other_reader = await make_key("read", project=other_project)
    project_id = await project_id_of(session_maker, project_name)
    queue_name = f"several-{uuid.uuid4().hex[:8]}"
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "PRODSENTINEL_QUEUE_NAME": queue_name,
        "PRODSENTINEL_ALERTS_INTERVAL_SECONDS": str(INTERVAL),
        "PRODSENTINEL_SSE_KEEPALIVE_SECONDS": "1",
    }
    queue = Queue.from_url(redis_url, name=queue_name)
    await queue.connect()
    # a slow receiver widens the window in which a second dispatcher could send an item again
    with (
        Receiver(default=Reply(delay=0.2)) as receiver,
        worker_process(env) as worker_1,
        worker_process(env) as worker_2,
        granian_server(env, timeout=90) as api_1,
        granian_server(env, timeout=90) as api_2,
    ):
        try:
            await _scenario(
                api_1, api_2, admin, other_reader, queue, receiver, evaluation_counter, project_id
            )
        finally:
            assert worker_1.poll() is None, "worker 1 exited"
            assert worker_2.poll() is None, "worker 2 exited"
            await queue.disconnect()


async def _scenario(
    api_1: str,
    api_2: str,
    admin: str,
    other_reader: str,
    queue: Queue,
    receiver: Receiver,
    counter: asyncpg.Connection,
    project_id: uuid.UUID,
) -> None:
    headers = {"X-API-Key": admin}
    async with (
        httpx.AsyncClient(base_url=api_1, timeout=30, headers=headers) as http_1,
        httpx.AsyncClient(base_url=api_2, timeout=30, headers=headers) as http_2,
    ):
        channel = await http_1.post(
            "/api/v1/notifications/channels", json={"name": "hook", "url": receiver.url}
        )
        assert channel.status_code == 201, channel.text
        for number, service in enumerate(SERVICES):
            policy = {"name": f"{service}-errors", "kind": "log_rate", "severity": "high", "service": service}
            answer = await (http_1 if number % 2 else http_2).post(
                "/api/v1/alerts/policies", json={**policy, "operator": ">=", "threshold": 1}
            )
            assert answer.status_code == 201, answer.text

        async def both_workers() -> bool:
            return len((await queue.info())["workers"]) >= 2

        await _until(both_workers, timeout=60, what="two SAQ workers on the queue")

        streams = [Stream(api_1, admin), Stream(api_2, admin)]
        outsider = Stream(api_1, other_reader)
        try:
            for stream in (*streams, outsider):
                await asyncio.wait_for(stream.open.wait(), timeout=30)
            await _ingest_and_watch(http_1, http_2, streams, receiver, counter, project_id)
            assert outsider.events == [], "a stream received another project's events"
        finally:
            for stream in (*streams, outsider):
                await stream.close()

        await _revocation(http_1, http_2)


async def _ingest_and_watch(
    http_1: httpx.AsyncClient,
    http_2: httpx.AsyncClient,
    streams: list[Stream],
    receiver: Receiver,
    counter: asyncpg.Connection,
    project_id: uuid.UUID,
) -> None:
    for number, service in enumerate(SERVICES):  # half through each API
        answer = await (http_1 if number % 2 else http_2).post(
            "/api/v1/ingest/logs", json=_error_log(service)
        )
        assert answer.status_code == 202, answer.text

    async def everything_seen() -> bool:
        return all(
            len(stream.of_type("incident_opened")) >= len(SERVICES)
            and len(stream.of_type("alert_firing")) >= len(SERVICES)
            for stream in streams
        )

    await _until(everything_seen, timeout=90, what="every incident and alert on both API's streams")

    # an event produced by API 2 reaches the stream on API 1
    incident_id = streams[0].of_type("incident_opened")[0]["incident"]["id"]
    resolved = await http_2.post(f"/api/v1/incidents/{incident_id}/resolve")
    assert resolved.status_code == 200, resolved.text

    async def resolution_seen() -> bool:
        return all(stream.of_type("incident_resolved") for stream in streams)

    await _until(resolution_seen, timeout=30, what="incident_resolved (from API 2) on both streams")

    # the firing alerts are rewritten by every pass: let the crons of both workers run a few intervals
    async def passes(minimum: int) -> bool:
        found = await counter.fetchval(
            "SELECT count(DISTINCT xact) FROM test_alert_evaluations WHERE project_id = $1", project_id
        )
        return bool(found >= minimum)

    await _until(lambda: passes(5), timeout=60, what="five evaluation passes")

    async def outbox_drained() -> bool:
        left = await counter.fetchval(
            "SELECT count(*) FROM outbox_items WHERE project_id = $1 AND status <> 'delivered'", project_id
        )
        return left == 0

    await _until(outbox_drained, timeout=90, what="every outbox item delivered")

    rows = await counter.fetch(
        "SELECT xact, min(evaluated_at) AS at FROM test_alert_evaluations"
        " WHERE project_id = $1 GROUP BY xact",
        project_id,
    )
    per_interval = Counter(int(row["at"].timestamp()) // INTERVAL for row in rows)
    assert max(per_interval.values()) == 1, (
        f"an interval had several evaluations: {sorted(per_interval.items())}"
    )

    delivered = await counter.fetchval("SELECT count(*) FROM outbox_items WHERE project_id = $1", project_id)
    assert delivered >= 2 * len(SERVICES)  # an INCIDENT_OPENED and an ALERT_FIRING per service, at least
    assert receiver.overlaps == 0, "an item was sent again while its first send was in flight"
    assert len(receiver.delivery_counts) == delivered
    assert set(receiver.delivery_counts.values()) == {1}
    event_ids = Counter(json.loads(request.body)["event_id"] for request in receiver.requests)
    assert len(event_ids) == delivered
    assert set(event_ids.values()) == {1}


async def _revocation(http_1: httpx.AsyncClient, http_2: httpx.AsyncClient) -> None:
    created = await http_1.post("/api/v1/keys", json={"name": "short-lived", "scopes": ["read"]})
    assert created.status_code == 201, created.text
    key, key_id = created.json()["key"], created.json()["id"]
    for http in (http_1, http_2):
        answer = await http.get("/api/v1/services", headers={"X-API-Key": key})
        assert answer.status_code == 200, answer.text
    revoked = await http_2.delete(f"/api/v1/keys/{key_id}")
    assert revoked.status_code == 200, revoked.text
    for http in (http_1, http_2):
        answer = await http.get("/api/v1/services", headers={"X-API-Key": key})
        assert answer.status_code == 401, answer.text
