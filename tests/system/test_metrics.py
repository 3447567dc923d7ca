"""GET /metrics: auth, HTTP RED metrics, ingest counters and stored-state values read from the database."""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.alerts.models import Alert, AlertPolicy, Silence
from prodsentinel.app import create_app
from prodsentinel.audit.models import AuditEvent
from prodsentinel.incidents.models import Incident
from prodsentinel.lib.database import session_scope
from prodsentinel.lib.time import utcnow
from prodsentinel.notifications.models import Channel, DeliveryAttempt, OutboxItem
from prodsentinel.settings import Settings
from prodsentinel.system.metrics import record_ingest
from prodsentinel.system.services import SchedulerTickService
from tests.conftest import KeyFactory, project_id_of
from tests.system.servers import granian_server

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: AsyncTestClient[Litestar], key: str) -> Samples:
    response = await client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


class TestAuth:
    async def test_needs_read_scope(self, client: AsyncTestClient[Litestar], make_key: KeyFactory) -> None:
        assert (await client.get("/metrics")).status_code == 401
        ingest_only = await make_key("ingest")
        response = await client.get("/metrics", headers={"X-API-Key": ingest_only})
        assert response.status_code == 403
        assert response.json()["request_id"]
        for scopes in (("read",), ("operate",), ("admin",)):
            key = await make_key(*scopes)
            assert (await client.get("/metrics", headers={"X-API-Key": key})).status_code == 200, scopes
            bearer = await client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
            assert bearer.status_code == 200

    async def test_public_when_metrics_auth_is_off(self, settings: Settings) -> None:
        app = create_app(settings.with_overrides(metrics_auth=False))
        async with AsyncTestClient(app=app) as client:
            response = await client.get("/metrics")
            assert response.status_code == 200
            assert "prodsentinel_outbox_pending" in response.text
            # Only /metrics is opened up.
            assert (await client.get("/api/v1/keys")).status_code == 401


class TestHttpMetrics:
    async def test_red_metrics_use_route_templates_and_real_status_codes(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        admin = await make_key("admin")
        read = await make_key("read")
        before = await scrape(client, read)
        template = "/api/v1/keys/{key_id}"
        for _ in range(3):
            missing = await client.delete(f"/api/v1/keys/{uuid.uuid4()}", headers={"X-API-Key": admin})
            assert missing.status_code == 404
        assert (await client.get("/api/v1/keys")).status_code == 401  # refused by the auth middleware
        assert (await client.get("/api/v1/keys", headers={"X-API-Key": read})).status_code == 403
        after = await scrape(client, read)

        def delta(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert delta("http_requests_total", method="DELETE", path=template, status_code="404") == 3
        assert delta("http_requests_total", method="GET", path="/api/v1/keys", status_code="401") == 1
        assert delta("http_requests_total", method="GET", path="/api/v1/keys", status_code="403") == 1
        labels = {"method": "DELETE", "path": template, "status_code": "404"}
        assert delta("http_request_duration_seconds_count", **labels) == 3
        assert delta("http_request_duration_seconds_bucket", le="+Inf", **labels) == 3
        # Raw paths never become label values (cardinality), and scrapes are not counted.
        assert not any(name == "http_requests_total" and ("path", "/metrics") in lbl for name, lbl in after)
        leaked = [(n, lbl) for n, lbl in after if any("/api/v1/keys/" in v and "{" not in v for _, v in lbl)]
        assert not leaked, leaked[:3]


class TestIngestCounters:
    async def test_record_ingest_counts_by_type(
        self, client: AsyncTestClient[Litestar], make_key: KeyFactory
    ) -> None:
        read = await make_key("read")
        before = await scrape(client, read)
        record_ingest("logs", 7, 2)
        record_ingest("traces", 5, 0)  # the route's name for spans
        record_ingest("metrics", 0, 4)
        after = await scrape(client, read)
        for name, kind, expected in (
            ("prodsentinel_ingested_signals_total", "logs", 7),
            ("prodsentinel_ingest_duplicates_total", "logs", 2),
            ("prodsentinel_ingested_signals_total", "spans", 5),
            ("prodsentinel_ingest_duplicates_total", "spans", 0),
            ("prodsentinel_ingested_signals_total", "metrics", 0),
            ("prodsentinel_ingest_duplicates_total", "metrics", 4),
        ):
            assert value(after, name, type=kind) - value(before, name, type=kind) == expected, (name, kind)
            assert (name, (("type", kind),)) in after  # present even at zero


def _stored(samples: Samples) -> dict[str, Any]:
    return {
        "incidents": {
            s: value(samples, "prodsentinel_incidents_open", severity=s) for s in ("medium", "critical")
        },
        "alerts": {s: value(samples, "prodsentinel_alerts_active", severity=s) for s in ("high", "low")},
        "transitions": value(samples, "prodsentinel_alert_transitions_total"),
        "silences": value(samples, "prodsentinel_silences_active"),
        "pending": value(samples, "prodsentinel_outbox_pending"),
        "dead": value(samples, "prodsentinel_outbox_dead"),
        "latency_count": value(samples, "prodsentinel_notifications_delivery_latency_seconds_count"),
        "latency_le_0.05": value(
            samples, "prodsentinel_notifications_delivery_latency_seconds_bucket", le="0.05"
        ),
        "latency_le_1": value(samples, "prodsentinel_notifications_delivery_latency_seconds_bucket", le="1"),
        "latency_sum": value(samples, "prodsentinel_notifications_delivery_latency_seconds_sum"),
    }


class TestStoredState:
    async def test_values_come_from_the_database(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
    ) -> None:
        read = await make_key("read")
        before = await scrape(client, read)
        now = utcnow()
        channel_name = f"ops-{uuid.uuid4().hex[:6]}"
        project_id = await project_id_of(session_maker, project_name)
        async with session_scope(session_maker) as session:
            incident: dict[str, Any] = {
                "project_id": project_id,
                "title": "t",
                "service_name": "svc",
                "count": 1,
                "first_seen": now,
                "last_seen": now,
            }
            session.add_all(
                [
                    Incident(fingerprint="a", severity="medium", status="open", **incident),
                    Incident(fingerprint="b", severity="medium", status="acknowledged", **incident),
                    Incident(fingerprint="c", severity="critical", status="open", **incident),
                    Incident(fingerprint="d", severity="critical", status="resolved", **incident),
                ]
            )
            policy = AlertPolicy(
                project_id=project_id, name="p", kind="log_rate", severity="high", threshold=1
            )
            channel = Channel(project_id=project_id, name=channel_name, url="http://127.0.0.1:9/hook")
            session.add_all([policy, channel])
            await session.flush()
            session.add_all(
                [
                    Alert(project_id=project_id, policy_id=policy.id, labels={"a": "1"}, labels_key="1",
                          state="firing", severity="high"),
                    Alert(project_id=project_id, policy_id=policy.id, labels={"a": "2"}, labels_key="2",
                          state="pending", severity="high"),
                    Alert(project_id=project_id, policy_id=policy.id, labels={"a": "3"}, labels_key="3",
                          state="firing", severity="low"),
                ]
            )  # fmt: skip
            audit: dict[str, Any] = {
                "project_id": project_id,
                "actor": "system:scheduler",
                "subject_type": "alert",
            }
            session.add_all(
                [
                    AuditEvent(action="alert.pending", **audit),
                    AuditEvent(action="alert.firing", **audit),
                    AuditEvent(action="alert.resolved", **audit),
                    AuditEvent(action="alert.ack", **audit),  # an ack is not a transition
                    AuditEvent(
                        action="silence.created", project_id=project_id, actor="x", subject_type="silence"
                    ),
                ]
            )
            silence: dict[str, Any] = {
                "project_id": project_id,
                "matchers": [{"name": "a", "op": "=", "value": "1"}],
                "created_by": "x",
            }
            session.add_all(
                [
                    Silence(
                        starts_at=now - timedelta(minutes=5), ends_at=now + timedelta(hours=1), **silence
                    ),
                    Silence(starts_at=now + timedelta(hours=1), ends_at=now + timedelta(hours=2), **silence),
                    Silence(starts_at=now - timedelta(hours=2), ends_at=now - timedelta(hours=1), **silence),
                    Silence(
                        starts_at=now - timedelta(minutes=5),
                        ends_at=now + timedelta(hours=1),
                        expired_at=now,
                        **silence,
                    ),
                ]
            )
            outbox: list[OutboxItem] = []
            for status in ("pending", "retrying", "delivering", "delivered", "dead", "dead"):
                outbox.append(
                    OutboxItem(project_id=project_id, channel_id=channel.id, event_id=uuid.uuid4(),
                               delivery_id=uuid.uuid4(), event_type="ALERT_FIRING", severity="high",
                               payload={}, status=status, next_attempt_at=now)
                )  # fmt: skip
            outbox[0].created_at = now - timedelta(hours=1)
            session.add_all(outbox)
            await session.flush()
            for number, (duration_ms, outcome) in enumerate(
                [(20.0, "retry"), (700.0, "retry"), (40.0, "delivered")]
            ):
                session.add(
                    DeliveryAttempt(project_id=project_id, outbox_id=outbox[0].id, channel_id=channel.id,
                                    delivery_id=outbox[0].delivery_id, event_id=outbox[0].event_id,
                                    attempt_number=number + 1, started_at=now, duration_ms=duration_ms,
                                    http_status=500 if outcome == "retry" else 200, outcome=outcome)
                )  # fmt: skip
            await SchedulerTickService(session=session).record("dispatch")
        after = await scrape(client, read)

        old, new = _stored(before), _stored(after)
        assert new["incidents"]["medium"] - old["incidents"]["medium"] == 2
        assert new["incidents"]["critical"] - old["incidents"]["critical"] == 1
        assert new["alerts"]["high"] - old["alerts"]["high"] == 1
        assert new["alerts"]["low"] - old["alerts"]["low"] == 1
        assert new["transitions"] - old["transitions"] == 3
        assert new["silences"] - old["silences"] == 1
        assert new["pending"] - old["pending"] == 3
        assert new["dead"] - old["dead"] == 2
        assert new["latency_count"] - old["latency_count"] == 3
        assert new["latency_le_0.05"] - old["latency_le_0.05"] == 2
        assert new["latency_le_1"] - old["latency_le_1"] == 3
        assert abs((new["latency_sum"] - old["latency_sum"]) - 0.76) < 1e-6
        attempts = "prodsentinel_notifications_attempts_total"
        assert value(after, attempts, channel=channel_name, outcome="retry") == 2
        assert value(after, attempts, channel=channel_name, outcome="delivered") == 1
        assert value(after, "prodsentinel_outbox_oldest_pending_age_seconds") >= 3600 - 5
        tick = value(after, "prodsentinel_scheduler_last_tick_timestamp_seconds", loop="dispatch")
        assert abs(tick - time.time()) < 60
        assert value(after, "prodsentinel_stored_state_up") == 1
        # Every severity has a series, even at zero.
        for severity in ("low", "medium", "high", "critical"):
            assert ("prodsentinel_incidents_open", (("severity", severity),)) in after

    async def test_a_new_tick_moves_the_timestamp(
        self,
        client: AsyncTestClient[Litestar],
        make_key: KeyFactory,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        read = await make_key("read")
        async with session_scope(session_maker) as session:
            await SchedulerTickService(session=session).record("retention")
        first = value(
            await scrape(client, read), "prodsentinel_scheduler_last_tick_timestamp_seconds", loop="retention"
        )
        async with session_scope(session_maker) as session:
            await SchedulerTickService(session=session).record("retention")
        second = value(
            await scrape(client, read), "prodsentinel_scheduler_last_tick_timestamp_seconds", loop="retention"
        )
        assert second > first > 0


class TestMultiProcess:
    async def test_granian_workers_share_counters_through_the_multiproc_dir(
        self, database_url: str, make_key: KeyFactory, tmp_path: Path
    ) -> None:
        read = await make_key("read")
        env = {"DATABASE_URL": database_url, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
        with granian_server(env, workers=2) as base_url:
            async with httpx.AsyncClient(base_url=base_url) as http:
                for _ in range(12):
                    assert (await http.get("/api/v1/keys")).status_code == 401
                totals = set()
                for _ in range(6):  # whichever worker answers, it reports every worker's requests
                    response = await http.get("/metrics", headers={"Authorization": f"Bearer {read}"})
                    assert response.status_code == 200
                    samples = parse(response.text)
                    labels = {"method": "GET", "path": "/api/v1/keys"}
                    totals.add(value(samples, "http_requests_total", status_code="401", **labels))
                    assert value(samples, "prodsentinel_stored_state_up") == 1
        assert totals == {12.0}
        assert any(name.startswith("counter_") for name in os.listdir(tmp_path))  # the workers wrote there
