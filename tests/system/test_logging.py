"""Structured logs of a real server: every line a request logs is one JSON object carrying that request's
id, refused requests (401/403) included."""

from __future__ import annotations

import json

import httpx
import msgspec

from tests.conftest import KeyFactory
from tests.factories import LogInFactory
from tests.system.servers import granian_server


async def test_request_log_lines_are_json_with_the_request_id(
    database_url: str, make_key: KeyFactory
) -> None:
    key = await make_key("read")
    output: list[str] = []
    env = {"DATABASE_URL": database_url, "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}
    with granian_server(env, output=output) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as http:
            ok = await http.get("/metrics", headers={"X-API-Key": key, "X-Request-ID": "req-log-ok"})
            refused = await http.get("/metrics", headers={"X-Request-ID": "req-log-401"})
            forbidden = await http.get(
                "/api/v1/keys", headers={"X-API-Key": key, "X-Request-ID": "req-log-403"}
            )
    assert (ok.status_code, refused.status_code, forbidden.status_code) == (200, 401, 403)
    records = [json.loads(line) for line in output if line.startswith("{")]
    assert all(line.startswith("{") for line in output if "req-log-" in line)  # never a plain-text line
    by_request: dict[str, list[dict[str, object]]] = {}
    for record in records:
        assert {"event", "level", "timestamp"} <= record.keys()
        if "request_id" in record:
            by_request.setdefault(str(record["request_id"]), []).append(record)
    for request_id, status in (("req-log-ok", 200), ("req-log-401", 401), ("req-log-403", 403)):
        events = {str(r["event"]): r for r in by_request[request_id]}
        assert events["HTTP Request"]["path"] in {"/metrics", "/api/v1/keys"}, request_id
        assert events["HTTP Response"]["status_code"] == status


async def test_log_level_applies_to_library_loggers_and_the_api_starts_no_worker_machinery(
    database_url: str, make_key: KeyFactory
) -> None:
    """``LOG_LEVEL=WARNING`` silences SAQ's INFO lines too, and an API process whose workers run
    elsewhere neither starts litestar-saq's heartbeat thread (which logged "thread crashed" on stop) nor
    stamps its logs with a worker's id."""
    key = await make_key("ingest")
    error_log = msgspec.json.encode(LogInFactory.build(level="ERROR"))
    output: list[str] = []
    env = {"DATABASE_URL": database_url, "LOG_FORMAT": "json", "LOG_LEVEL": "WARNING"}
    with granian_server(env, output=output) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as http:
            stored = await http.post(
                "/api/v1/ingest/logs",
                content=error_log,  # an ERROR log: ingest enqueues group_new_errors (SAQ logs that at INFO)
                headers={"X-API-Key": key, "Content-Type": "application/json"},
            )
            missing = await http.get("/api/v1/logs")  # a 401: a request that does log, at INFO
    assert (stored.status_code, missing.status_code) == (202, 401)
    records = [json.loads(line) for line in output if line.startswith("{")]
    assert [r for r in records if r["level"] in {"debug", "info"}] == []
    assert not any("heartbeat" in line.lower() or "worker_id" in line for line in output), output


async def test_stopping_in_process_workers_logs_no_error(database_url: str) -> None:
    """litestar-saq's heartbeat thread logged "HeartbeatManager thread crashed" with a traceback at every
    normal stop (litestar-saq#110); that line is filtered, and a stop logs no error at all."""
    output: list[str] = []
    env = {"DATABASE_URL": database_url, "LOG_FORMAT": "json", "PRODSENTINEL_INPROCESS_WORKERS": "1"}
    with granian_server(env, output=output) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as http:
            assert (await http.get("/health/live")).status_code == 200
    records = [json.loads(line) for line in output if line.startswith("{")]
    assert [r for r in records if r["level"] in {"error", "critical"}] == [], output
    assert not any("Traceback" in line or "crashed" in line for line in output), output
