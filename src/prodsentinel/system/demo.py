"""``prodsentinel demo``: fake services sending realistic telemetry to a running ProdSentinel over HTTP.

Four services serve a web shop: ``frontend`` -> ``checkout`` -> (``inventory``, ``payments``), each
request one trace of nested spans with the W3C-sized ids real SDKs use, INFO logs carrying the trace
and span ids, and per-service metrics every second. After ``failure_after`` seconds the payments
database starts timing out: the payments DB span and every span above it end in ERROR (the failure
propagates up the trace), each service logs an ERROR, and ``payments.db.query_duration_ms`` steps from
~20 ms to ~5 s. The ERROR logs and spans open incidents in three services (escalating to high: >= 10
in 5 minutes), correlated into one problem rooted in the payments database (SPEC §14), and the demo
alert policies created through the API fire.

The generator (:class:`TelemetryGenerator`) is pure (seeded RNG, explicit clock) and produces the
SPEC §4 ingest items as plain dicts; :func:`run_demo` sends them with httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

__all__ = (
    "DEMO_POLICIES",
    "PAYMENTS_DB_DEPENDENCY",
    "SERVICES",
    "DemoBatch",
    "DemoReport",
    "TelemetryGenerator",
    "run_demo",
)

SERVICES = ("frontend", "checkout", "inventory", "payments")
DB_TIMEOUT_MS = 5000.0
#: The payments database, as its client spans name it (``server.address``, ``db.name``): the dependency
#: the outage's problem is rooted in (SPEC §14).
PAYMENTS_DB_HOST = "payments-db"
#: The problem root's ``dependency`` for that database.
PAYMENTS_DB_DEPENDENCY = f"postgresql://{PAYMENTS_DB_HOST}/payments"

#: Alert policies the demo creates (admin key) in its project; both fire during the failure.
DEMO_POLICIES: tuple[dict[str, Any], ...] = (
    {
        "name": "demo: payments errors",
        "kind": "log_rate",
        "severity": "high",
        "service": "payments",
        "level": "ERROR",
        "operator": ">=",
        "threshold": 5,
        "window_seconds": 60,
        "for_seconds": 0,
        "labels": {"team": "payments", "source": "demo"},
    },
    {
        "name": "demo: payments db latency",
        "kind": "metric_threshold",
        "severity": "medium",
        "metric": "payments.db.query_duration_ms",
        "service": "payments",
        "agg": "avg",
        "operator": ">",
        "threshold": 1000,
        "window_seconds": 60,
        "for_seconds": 0,
        "labels": {"team": "payments", "source": "demo"},
    },
)

_COMMON_LABELS = {"env": "demo", "region": "eu-west-1"}


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class DemoBatch:
    """Ingest items, as sent to POST /api/v1/ingest/logs|traces|metrics."""

    logs: list[dict[str, Any]] = field(default_factory=list)
    spans: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: DemoBatch) -> None:
        self.logs.extend(other.logs)
        self.spans.extend(other.spans)
        self.metrics.extend(other.metrics)


class TelemetryGenerator:
    """Deterministic for a given seed: the same seed and clock give the same telemetry (ids included)."""

    def __init__(self, seed: int | None = None) -> None:
        self.rng = random.Random(seed)

    # ------------------------------------------------------------------------------------- ids
    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _hex(self, nbytes: int) -> str:
        return f"{self.rng.getrandbits(nbytes * 8):0{nbytes * 2}x}"

    def _order(self) -> str:
        return f"ord-{self.rng.randrange(10_000, 99_999)}"

    # ---------------------------------------------------------------------------------- pieces
    def _span(
        self,
        *,
        trace_id: str,
        parent: str | None,
        service: str,
        name: str,
        start: datetime,
        duration_ms: float,
        error: bool,
        attributes: dict[str, Any],
    ) -> dict[str, Any]:
        return {
            "signal_id": self._uuid(),
            "trace_id": trace_id,
            "span_id": self._hex(8),
            "parent_span_id": parent,
            "service_name": service,
            "name": name,
            "start_time": _ts(start),
            "end_time": _ts(start + timedelta(milliseconds=duration_ms)),
            "status": "ERROR" if error else "OK",
            "attributes": attributes,
        }

    def _log(
        self, *, span: dict[str, Any], level: str, message: str, at: datetime, **attributes: Any
    ) -> dict[str, Any]:
        return {
            "signal_id": self._uuid(),
            "trace_id": span["trace_id"],
            "span_id": span["span_id"],
            "service_name": span["service_name"],
            "timestamp": _ts(at),
            "level": level,
            "message": message,
            "attributes": attributes,
        }

    # ------------------------------------------------------------------------------- a request
    def request(self, now: datetime, *, failing: bool) -> DemoBatch:
        """One checkout request: a trace over four services, with its logs."""
        rng = self.rng
        trace_id = self._hex(16)
        order = self._order()
        user = f"user-{rng.randrange(1, 5000)}"
        db_ms = DB_TIMEOUT_MS if failing else rng.uniform(8, 35)
        inventory_ms = rng.uniform(10, 40)
        charge_ms = db_ms + rng.uniform(15, 60)
        checkout_ms = inventory_ms + charge_ms + rng.uniform(5, 20)
        frontend_ms = checkout_ms + rng.uniform(3, 15)
        start = now - timedelta(milliseconds=frontend_ms)

        frontend = self._span(
            trace_id=trace_id,
            parent=None,
            service="frontend",
            name="GET /checkout",
            start=start,
            duration_ms=frontend_ms,
            error=failing,
            attributes={
                "http.method": "GET",
                "http.route": "/checkout",
                "http.status_code": 502 if failing else 200,
                "enduser.id": user,
            },
        )
        checkout_start = start + timedelta(milliseconds=2)
        checkout = self._span(
            trace_id=trace_id,
            parent=frontend["span_id"],
            service="checkout",
            name="POST /api/checkout",
            start=checkout_start,
            duration_ms=checkout_ms,
            error=failing,
            attributes={
                "http.method": "POST",
                "http.route": "/api/checkout",
                "order.id": order,
                "http.status_code": 504 if failing else 201,
            },
        )
        inventory = self._span(
            trace_id=trace_id,
            parent=checkout["span_id"],
            service="inventory",
            name="reserve_items",
            start=checkout_start + timedelta(milliseconds=1),
            duration_ms=inventory_ms,
            error=False,
            attributes={"order.id": order, "items": rng.randrange(1, 6)},
        )
        charge_start = checkout_start + timedelta(milliseconds=inventory_ms + 2)
        charge = self._span(
            trace_id=trace_id,
            parent=checkout["span_id"],
            service="payments",
            name="charge_card",
            start=charge_start,
            duration_ms=charge_ms,
            error=failing,
            attributes={
                "order.id": order,
                "payment.provider": "stripe",
                "amount": round(rng.uniform(5, 400), 2),
            },
        )
        query = self._span(
            trace_id=trace_id,
            parent=charge["span_id"],
            service="payments",
            name="db.query payments.insert",
            start=charge_start + timedelta(milliseconds=3),
            duration_ms=db_ms,
            error=failing,
            attributes={
                "db.system": "postgresql",
                "server.address": PAYMENTS_DB_HOST,
                "db.name": "payments",
                "db.operation": "INSERT",
                "db.sql.table": "payments",
            }
            | ({"error.type": "QueryTimeout"} if failing else {}),
        )
        end = now
        logs = [
            self._log(span=frontend, level="INFO", message=f"GET /checkout from {user}", at=start),
            self._log(
                span=inventory,
                level="INFO",
                message=f"Reserved stock for order {order}",
                at=checkout_start + timedelta(milliseconds=inventory_ms),
            ),
        ]
        if failing:
            logs += [
                self._log(
                    span=query,
                    level="ERROR",
                    at=end - timedelta(milliseconds=20),
                    message=f"Database timeout after {DB_TIMEOUT_MS:.0f} ms charging order {order}",
                    **{"db.system": "postgresql", "error.type": "QueryTimeout"},
                ),
                self._log(
                    span=checkout,
                    level="ERROR",
                    at=end - timedelta(milliseconds=8),
                    message=f"Payment failed for order {order}: payments returned 504",
                ),
                self._log(
                    span=frontend, level="ERROR", at=end, message="Checkout request failed with status 502"
                ),
            ]
        else:
            logs += [
                self._log(
                    span=charge,
                    level="INFO",
                    message=f"Charged card for order {order}",
                    at=charge_start + timedelta(milliseconds=charge_ms),
                ),
                self._log(span=checkout, level="INFO", message=f"Order {order} placed", at=end),
            ]
        return DemoBatch(logs=logs, spans=[frontend, checkout, inventory, charge, query])

    # --------------------------------------------------------------------------------- metrics
    def metrics(self, now: datetime, *, failing: bool, requests: int) -> list[dict[str, Any]]:
        """One point per service and metric for the last second (no signal_id: the server derives it)."""
        rng = self.rng
        at = _ts(now)
        points: list[dict[str, Any]] = []
        for service in SERVICES:
            latency = rng.uniform(20, 80) + (DB_TIMEOUT_MS if failing and service != "inventory" else 0.0)
            errors = requests if failing and service != "inventory" else 0
            for name, value in (
                ("http.server.requests", float(requests)),
                ("http.server.errors", float(errors)),
                ("http.server.duration_ms", latency),
                ("process.cpu.utilization", rng.uniform(0.1, 0.45) + (0.3 if failing else 0.0)),
            ):
                points.append(
                    {
                        "name": name,
                        "value": value,
                        "service_name": service,
                        "timestamp": at,
                        "labels": dict(_COMMON_LABELS),
                    }
                )
        db_latency = DB_TIMEOUT_MS + rng.uniform(0, 50) if failing else rng.uniform(12, 30)
        points.append(
            {
                "name": "payments.db.query_duration_ms",
                "value": db_latency,
                "service_name": "payments",
                "timestamp": at,
                "labels": {**_COMMON_LABELS, "db.system": "postgresql"},
            }
        )
        return points

    def tick(self, now: datetime, *, requests: int, failing: bool) -> DemoBatch:
        """One second of the shop: ``requests`` traces and their metrics."""
        batch = DemoBatch()
        for _ in range(requests):
            batch.extend(self.request(now, failing=failing))
        batch.metrics.extend(self.metrics(now, failing=failing, requests=requests))
        return batch


# ------------------------------------------------------------------------------------------ runner


@dataclass
class DemoReport:
    sent: dict[str, int] = field(default_factory=lambda: {"logs": 0, "spans": 0, "metrics": 0})
    failed_posts: int = 0
    policies: list[str] = field(default_factory=list)
    incidents: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)


async def _create_policies(client: httpx.AsyncClient, say: Callable[[str], None], report: DemoReport) -> None:
    for policy in DEMO_POLICIES:
        response = await client.post("/api/v1/alerts/policies", json=policy)
        if response.status_code in (200, 201):
            report.policies.append(policy["name"])
            say(f"created alert policy '{policy['name']}'")
        elif response.status_code == 409:
            report.policies.append(policy["name"])
            say(f"alert policy '{policy['name']}' already exists")
        else:
            detail = f"HTTP {response.status_code} {response.text[:200]}"
            say(f"could not create policy '{policy['name']}': {detail}")


async def _post(
    client: httpx.AsyncClient, path: str, items: list[dict[str, Any]], report: DemoReport
) -> None:
    if not items:
        return
    try:
        response = await client.post(path, json=items)
    except httpx.HTTPError:
        report.failed_posts += 1
        return
    if response.status_code != 202:
        report.failed_posts += 1


async def run_demo(
    *,
    url: str,
    api_key: str,
    duration: float,
    rate: int,
    failure_after: float | None,
    seed: int | None = None,
    settle: float = 20.0,
    say: Callable[[str], None] = print,
    transport: httpx.AsyncBaseTransport | None = None,
    otlp: bool = False,
) -> DemoReport:
    """Send ``rate`` traces per second for ``duration`` seconds; fail payments from ``failure_after`` on.

    ``otlp``: the services export through the real OpenTelemetry SDK over OTLP (``system.demo_otlp``)
    instead of posting §4 JSON."""
    generator = TelemetryGenerator(seed)
    report = DemoReport()
    sender = None
    if otlp:
        from prodsentinel.system.demo_otlp import OtlpDemoSender  # the SDK only when asked for

        sender = OtlpDemoSender(url, api_key)
    headers = {"X-API-Key": api_key}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30, transport=transport) as client:
        await _create_policies(client, say, report)
        started = time.monotonic()
        last_evaluate = float("-inf")
        announced = False
        while (elapsed := time.monotonic() - started) < duration:
            failing = failure_after is not None and elapsed >= failure_after
            if failing and not announced:
                say(f"t+{elapsed:.0f}s: payments database starts timing out")
                announced = True
            batch = generator.tick(datetime.now(UTC), requests=rate, failing=failing)
            if sender is not None:
                await asyncio.to_thread(sender.send, batch)
            else:
                await asyncio.gather(
                    _post(client, "/api/v1/ingest/logs", batch.logs, report),
                    _post(client, "/api/v1/ingest/traces", batch.spans, report),
                    _post(client, "/api/v1/ingest/metrics", batch.metrics, report),
                )
            for kind in ("logs", "spans", "metrics"):
                report.sent[kind] += len(getattr(batch, kind))
            if failing and elapsed - last_evaluate >= 5:
                # Don't wait for the evaluation cron: ask for an evaluation (admin) every 5 s.
                last_evaluate = elapsed
                await _evaluate(client)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started - elapsed)))
        if sender is not None:
            await asyncio.to_thread(sender.shutdown)  # flush the SDK's batch processors and metric reader
        say(
            f"sent {report.sent['logs']} logs, {report.sent['spans']} spans, {report.sent['metrics']} metric "
            f"points ({report.failed_posts} failed requests)"
        )
        # Grouping and evaluation run in SAQ jobs: give them up to ``settle`` seconds to catch up.
        deadline = time.monotonic() + (settle if failure_after is not None else 0.0)
        while True:
            report.incidents = await _items(client, "/api/v1/incidents?status=open")
            report.problems = await _items(client, "/api/v1/problems?status=open")
            report.alerts = await _items(client, "/api/v1/alerts/active")
            if (report.incidents and report.alerts) or time.monotonic() >= deadline:
                break
            await _evaluate(client)
            await asyncio.sleep(2)
    return report


async def _evaluate(client: httpx.AsyncClient) -> None:
    with contextlib.suppress(httpx.HTTPError):
        await client.post("/api/v1/alerts/evaluate")


async def _items(client: httpx.AsyncClient, path: str) -> list[dict[str, Any]]:
    try:
        response = await client.get(path)
    except httpx.HTTPError:
        return []
    if response.status_code != 200:
        return []
    body = response.json()
    items = body.get("items", body) if isinstance(body, dict) else body
    return items if isinstance(items, list) else []
