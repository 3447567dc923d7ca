"""`prodsentinel demo`: the generated items match SPEC §4, the failure scenario has the promised shape, and
the runner talks to the SPEC's endpoints (against a real HTTP receiver, not end to end)."""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import msgspec
import pytest

from prodsentinel.system.demo import DEMO_POLICIES, SERVICES, TelemetryGenerator, run_demo
from tests.system.servers import free_port

Level = Literal["DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL"]


# SPEC §4 field lists, strict (forbid_unknown_fields: a typo in the generator is a failure).
class LogIn(msgspec.Struct, forbid_unknown_fields=True):
    signal_id: uuid.UUID
    service_name: str
    timestamp: datetime
    level: Level
    message: str
    trace_id: str | None = None
    span_id: str | None = None
    attributes: dict[str, Any] = {}


class SpanIn(msgspec.Struct, forbid_unknown_fields=True):
    signal_id: uuid.UUID
    trace_id: str
    span_id: str
    service_name: str
    name: str
    start_time: datetime
    end_time: datetime
    parent_span_id: str | None = None
    status: Literal["UNSET", "OK", "ERROR"] = "UNSET"
    attributes: dict[str, Any] = {}


class MetricIn(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    value: float
    service_name: str
    timestamp: datetime
    signal_id: uuid.UUID | None = None
    labels: dict[str, str] = {}


def decode(items: list[dict[str, Any]], struct: type[Any]) -> list[Any]:
    return msgspec.json.decode(json.dumps(items), type=list[struct], strict=True)


NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


class TestGenerator:
    def test_items_match_the_ingest_fields(self) -> None:
        for failing in (False, True):
            batch = TelemetryGenerator(seed=1).tick(NOW, requests=4, failing=failing)
            logs, spans, metrics = (
                decode(batch.logs, LogIn),
                decode(batch.spans, SpanIn),
                decode(batch.metrics, MetricIn),
            )
            assert len(spans) == 4 * 5
            assert len(logs) >= 4 * 4
            for span in spans:
                assert span.end_time >= span.start_time
                assert len(span.trace_id) == 32
                assert len(span.span_id) == 16
                int(span.trace_id, 16), int(span.span_id, 16)
                assert span.start_time.tzinfo is not None
            for point in metrics:
                assert point.value == point.value
                assert abs(point.value) != float("inf")
                assert point.timestamp - NOW < timedelta(hours=24)
            assert {s.service_name for s in spans} == set(SERVICES)
            assert len({str(item.signal_id) for item in [*logs, *spans]}) == len(logs) + len(spans)

    def test_traces_are_trees_across_services_with_logs_on_their_spans(self) -> None:
        batch = TelemetryGenerator(seed=2).request(NOW, failing=False)
        spans = decode(batch.spans, SpanIn)
        [root] = [s for s in spans if s.parent_span_id is None]
        assert root.service_name == "frontend"
        ids = {s.span_id: s for s in spans}
        assert all(s.parent_span_id in ids for s in spans if s is not root)
        assert len({s.trace_id for s in spans}) == 1
        for log in decode(batch.logs, LogIn):
            assert log.trace_id == root.trace_id
            assert log.span_id in ids
        children = {
            ids[s.parent_span_id].service_name
            for s in spans
            if s.service_name == "payments" and s.parent_span_id
        }
        assert "checkout" in children

    def test_healthy_traffic_has_no_errors(self) -> None:
        batch = TelemetryGenerator(seed=3).tick(NOW, requests=10, failing=False)
        assert not [log for log in batch.logs if log["level"] in {"ERROR", "CRITICAL"}]
        assert not [span for span in batch.spans if span["status"] == "ERROR"]

    def test_failure_propagates_up_the_trace_with_error_logs_and_a_latency_step(self) -> None:
        generator = TelemetryGenerator(seed=4)
        healthy = generator.metrics(NOW, failing=False, requests=5)
        batch = generator.request(NOW, failing=True)
        spans = {s.span_id: s for s in decode(batch.spans, SpanIn)}
        [query] = [s for s in spans.values() if s.name.startswith("db.query")]
        assert query.service_name == "payments"
        assert query.status == "ERROR"
        assert (query.end_time - query.start_time) >= timedelta(seconds=5)
        chain, span = [], query
        while span.parent_span_id:
            span = spans[span.parent_span_id]
            chain.append(span)
        assert [s.service_name for s in chain] == ["payments", "checkout", "frontend"]
        assert all(s.status == "ERROR" for s in chain)
        assert next(s for s in spans.values() if s.service_name == "inventory").status == "OK"
        errors = [log for log in decode(batch.logs, LogIn) if log.level == "ERROR"]
        assert {log.service_name for log in errors} == {"payments", "checkout", "frontend"}
        assert all(log.trace_id == query.trace_id for log in errors)

        def db_latency(points: list[dict[str, Any]]) -> float:
            [point] = [p for p in points if p["name"] == "payments.db.query_duration_ms"]
            return float(point["value"])

        failing = generator.metrics(NOW, failing=True, requests=5)
        assert db_latency(healthy) < 100 < 4000 < db_latency(failing)

    def test_same_seed_same_telemetry(self) -> None:
        first = TelemetryGenerator(seed=7).tick(NOW, requests=3, failing=True)
        second = TelemetryGenerator(seed=7).tick(NOW, requests=3, failing=True)
        assert first == second

    def test_demo_policies_have_the_spec_fields(self) -> None:
        for policy in DEMO_POLICIES:
            assert {"name", "kind", "severity", "threshold"} <= policy.keys()
            assert policy["kind"] in {"log_rate", "error_rate", "metric_threshold", "anomaly", "incident"}
            assert policy["severity"] in {"low", "medium", "high"}
            assert policy["operator"] in {">", ">=", "<", "<="}
            assert all(isinstance(v, str) for v in policy["labels"].values())


class Receiver:
    """A real HTTP server standing in for ProdSentinel's ingest and alert endpoints."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                body = json.loads(raw) if raw else None
                receiver.requests.append(("POST", self.path, dict(self.headers), body))
                if self.path.startswith("/api/v1/ingest/"):
                    self._answer(202, {"accepted": len(body), "duplicates": 0})
                elif self.path == "/api/v1/alerts/policies":
                    self._answer(201, {"id": str(uuid.uuid4()), **body})
                else:
                    self._answer(200, {})

            def do_GET(self) -> None:
                receiver.requests.append(("GET", self.path, dict(self.headers), None))
                self._answer(200, {"items": []})

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


class TestRunner:
    async def test_posts_policies_then_telemetry_then_evaluates(self, receiver: Receiver) -> None:
        lines: list[str] = []
        report = await run_demo(
            url=receiver.url, api_key="ps_demo_key", duration=2.5, rate=2, failure_after=1.0, seed=5,
            settle=0, say=lines.append,
        )  # fmt: skip
        paths = [(method, path) for method, path, _, _ in receiver.requests]
        assert paths[: len(DEMO_POLICIES)] == [("POST", "/api/v1/alerts/policies")] * len(DEMO_POLICIES)
        for endpoint, struct in (("logs", LogIn), ("traces", SpanIn), ("metrics", MetricIn)):
            bodies = [b for m, p, _, b in receiver.requests if p == f"/api/v1/ingest/{endpoint}"]
            assert len(bodies) >= 2, endpoint  # one batch per second
            for body in bodies:
                decode(body, struct)
        assert all(headers.get("X-API-Key") == "ps_demo_key" for _, _, headers, _ in receiver.requests)
        assert ("POST", "/api/v1/alerts/evaluate") in paths
        assert ("GET", "/api/v1/alerts/active") in paths
        sent_errors = [
            item for _, p, _, body in receiver.requests if p == "/api/v1/ingest/logs" for item in body
            if item["level"] == "ERROR"
        ]  # fmt: skip
        assert sent_errors  # the failure started after 1 s
        assert report.policies == [p["name"] for p in DEMO_POLICIES]
        assert report.failed_posts == 0
        assert report.sent["spans"] >= 2 * 2 * 5
        assert any("payments database starts timing out" in line for line in lines)
