"""Inhibit rules (SPEC §13) through the HTTP API, the evaluator, a real SAQ worker and a real receiver;
the routing file; the silence preview.

The alerts come from real policies over seeded signals: a ``log_rate`` policy on service ``db`` is the
cause (it resolves when its logs leave the window, at a later evaluation clock) and ``incident``
policies are the symptoms (they fire while an incident is open, whatever the clock).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.alerts import routing_file
from prodsentinel.app import create_app
from prodsentinel.lib.time import utcnow
from prodsentinel.notifications import tasks as notification_tasks
from prodsentinel.notifications.models import OutboxItem
from prodsentinel.settings import Settings, SettingsError
from tests.alerts.conftest import Seeder, evaluate_at
from tests.alerts.test_alerts_api import audit_rows, in_an_hour
from tests.alerts.test_evaluate import create_policy
from tests.conftest import Tenant, TenantFactory
from tests.receivers import Receiver
from tests.system.test_metrics import scrape, value
from tests.system.test_settings import assert_one_line, run_cli
from tests.workers import postgres_queue, running_worker

RULES = "/api/v1/alerts/inhibit-rules"
ACTIVE = "/api/v1/alerts/active"
CHANNELS = "/api/v1/notifications/channels"
PREVIEW = "/api/v1/alerts/silences/preview"


def m(name: str, op: str, value: str) -> dict[str, str]:
    return {"name": name, "op": op, "value": value}


#: The database-down alert mutes the API symptoms of the same cluster.
DB_MUTES_API = {
    "source_matchers": [m("alertname", "=", "db-down")],
    "target_matchers": [m("alertname", "=~", "api-.*")],
    "equal": ["cluster"],
}


async def create_rule(
    client: AsyncTestClient[Litestar], tenant: Tenant, body: dict[str, Any]
) -> dict[str, Any]:
    response = await client.post(RULES, json=body, headers=tenant.admin)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def active_by_name(client: AsyncTestClient[Litestar], tenant: Tenant) -> dict[str, dict[str, Any]]:
    items = (await client.get(ACTIVE, headers=tenant.read)).json()["items"]
    return {item["labels"]["alertname"]: item for item in items}


async def outbox(session_maker: async_sessionmaker[AsyncSession], tenant: Tenant) -> list[tuple[str, str]]:
    """(event type, alertname) of the project's outbox items, oldest first."""
    async with session_maker() as session:
        items = await session.scalars(
            select(OutboxItem)
            .where(OutboxItem.project_id == tenant.project_id)
            .order_by(OutboxItem.created_at, OutboxItem.id)
        )
        return [(item.event_type, item.payload["labels"]["alertname"]) for item in items]


async def cause_and_symptoms(client: AsyncTestClient[Litestar], tenant: Tenant, seed: Seeder) -> datetime:
    """db-down (cluster a, from logs) and api-a / api-b (clusters a and b, from an open incident)."""
    await create_policy(
        client,
        tenant,
        name="db-down",
        kind="log_rate",
        service="db",
        threshold=0,
        window_seconds=60,
        labels={"cluster": "a"},
    )
    for cluster in ("a", "b"):
        await create_policy(
            client,
            tenant,
            name=f"api-{cluster}",
            kind="incident",
            min_severity="low",
            labels={"cluster": cluster},
        )
    t0 = utcnow()
    await seed.logs(at=t0 - timedelta(seconds=1), count=3, service="db")
    await seed.incident(at=t0 - timedelta(seconds=1))
    return t0


class TestEvaluation:
    async def test_a_firing_source_mutes_equal_targets_until_it_resolves_then_the_receiver_hears_them(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        settings: Settings,
        database_url: str,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        receiver = Receiver().start()
        queue = postgres_queue(database_url, "inhibit")
        try:
            channel = {"name": "hook", "url": receiver.url, "secret": "0123456789abcdef"}
            assert (await client.post(CHANNELS, json=channel, headers=tenant.admin)).status_code == 201
            rule = await create_rule(client, tenant, DB_MUTES_API)
            t0 = await cause_and_symptoms(client, tenant, seed)
            inhibited_before = value(
                await scrape(client, tenant.read["X-API-Key"]), "prodsentinel_alerts_inhibited"
            )
            worker_settings = settings.with_overrides(notify_timeout_seconds=2.0)
            async with running_worker(
                queue,
                functions=notification_tasks.TASKS,
                session_maker=session_maker,
                settings=worker_settings,
            ):
                fired = await evaluate_at(session_maker, tenant, t0)
                assert (fired.fired, fired.notified) == (3, 2)
                first = await receiver.wait_for_async(2, timeout=20)

                alerts = await active_by_name(client, tenant)
                assert {name: a["state"] for name, a in alerts.items()} == {
                    "db-down": "firing",
                    "api-a": "firing",  # an inhibited alert keeps its state
                    "api-b": "firing",
                }
                assert alerts["api-a"]["inhibited_by"] == rule["id"]
                assert alerts["api-b"]["inhibited_by"] is None
                assert alerts["db-down"]["inhibited_by"] is None
                [muted_audit] = [
                    row
                    for row in await audit_rows(session_maker, tenant, "alert.firing")
                    if row.subject_id is not None and str(row.subject_id) == alerts["api-a"]["id"]
                ]
                assert muted_audit.details["inhibited_by"] == rule["id"]
                assert muted_audit.details["notification"] == "suppressed by inhibit rule"
                assert "event_id" not in muted_audit.details
                samples = await scrape(client, tenant.read["X-API-Key"])
                assert value(samples, "prodsentinel_alerts_inhibited") == inhibited_before + 1

                # The logs leave db-down's window: it resolves, and api-a, still firing, is announced.
                t1 = t0 + timedelta(seconds=120)
                resolved = await evaluate_at(session_maker, tenant, t1)
                assert (resolved.resolved, resolved.transitions, resolved.notified) == (1, 1, 2)
                second = await receiver.wait_for_async(4, timeout=20)
                again = await evaluate_at(session_maker, tenant, t1 + timedelta(seconds=30))
                assert again.notified == 0  # announced once
        finally:
            receiver.stop()

        bodies = [json.loads(request.body) for request in first]
        assert sorted((b["event_type"], b["labels"]["alertname"]) for b in bodies) == [
            ("ALERT_FIRING", "api-b"),
            ("ALERT_FIRING", "db-down"),
        ]
        later = [json.loads(request.body) for request in second[2:]]
        assert sorted((b["event_type"], b["labels"]["alertname"]) for b in later) == [
            ("ALERT_FIRING", "api-a"),
            ("ALERT_RESOLVED", "db-down"),
        ]
        [announced] = [b for b in later if b["event_type"] == "ALERT_FIRING"]
        assert (announced["state"], announced["alert_id"]) == ("firing", alerts["api-a"]["id"])
        assert (await active_by_name(client, tenant))["api-a"]["inhibited_by"] is None
        [row] = [
            r
            for r in await audit_rows(session_maker, tenant, "alert.firing")
            if r.details["from"] == "firing"
        ]
        assert row.details["notification"] == "announced: the inhibit rule that suppressed it no longer holds"
        assert row.details["previously_inhibited_by"] == rule["id"]
        assert row.details["event_id"] == announced["event_id"]
        samples = await scrape(client, tenant.read["X-API-Key"])
        assert value(samples, "prodsentinel_alerts_inhibited") == inhibited_before

    async def test_an_alert_matching_both_sides_is_not_inhibited_by_itself(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        await seed.channel()
        both = {
            "source_matchers": [m("severity", "=", "high")],
            "target_matchers": [m("severity", "=", "high")],
        }
        await create_rule(client, tenant, both)
        await create_policy(client, tenant, name="alone", kind="incident", min_severity="low")
        await seed.incident(at=utcnow() - timedelta(seconds=1))
        summary = await evaluate_at(session_maker, tenant, utcnow())
        assert (summary.fired, summary.notified) == (1, 1)
        assert (await active_by_name(client, tenant))["alone"]["inhibited_by"] is None

    async def test_missing_equal_label_on_both_sides_is_equal_and_deleting_the_rule_announces(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        await seed.channel()
        # No policy carries "zone": missing on both sides counts as equal ("" == "") ...
        rule = await create_rule(
            client,
            tenant,
            {
                "source_matchers": [m("alertname", "=", "cause")],
                "target_matchers": [m("alertname", "=~", "symptom.*")],
                "equal": ["zone"],
            },
        )
        await create_policy(client, tenant, name="cause", kind="incident", min_severity="low")
        await create_policy(client, tenant, name="symptom", kind="incident", min_severity="low")
        # ... but a target that has it differs from a source that has not.
        await create_policy(
            client, tenant, name="symptom-zoned", kind="incident", min_severity="low", labels={"zone": "z1"}
        )
        await seed.incident(at=utcnow() - timedelta(seconds=1))
        t0 = utcnow()
        summary = await evaluate_at(session_maker, tenant, t0)
        assert (summary.fired, summary.notified) == (3, 2)
        alerts = await active_by_name(client, tenant)
        assert alerts["symptom"]["inhibited_by"] == rule["id"]
        assert alerts["symptom-zoned"]["inhibited_by"] is None
        assert sorted(await outbox(session_maker, tenant)) == [
            ("ALERT_FIRING", "cause"),
            ("ALERT_FIRING", "symptom-zoned"),
        ]

        # Receivers never heard the muted alert fire, so they do not hear of its ack either.
        acked = await client.post(f"/api/v1/alerts/{alerts['symptom']['id']}/ack", headers=tenant.operate)
        assert acked.status_code == 200
        assert len(await outbox(session_maker, tenant)) == 2

        # The source still fires, but the rule is gone: the next pass announces the held-back alert.
        assert (await client.delete(f"{RULES}/{rule['id']}", headers=tenant.admin)).status_code == 204
        announced = await evaluate_at(session_maker, tenant, t0 + timedelta(seconds=30))
        assert (announced.notified, announced.transitions) == (1, 0)
        assert (await outbox(session_maker, tenant))[-1] == ("ALERT_FIRING", "symptom")
        assert (await active_by_name(client, tenant))["symptom"]["inhibited_by"] is None

    async def test_a_target_that_resolves_while_held_back_is_never_notified(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        """Receivers never heard it fire, so they do not hear it resolve either."""
        await seed.channel()
        await create_rule(
            client,
            tenant,
            {"source_matchers": [m("alertname", "=", "cause")], "target_matchers": [m("service", "=", "db")]},
        )
        await create_policy(client, tenant, name="cause", kind="incident", min_severity="low")
        await create_policy(
            client, tenant, name="slow-db", kind="log_rate", service="db", threshold=0, window_seconds=60
        )
        t0 = utcnow()
        await seed.incident(at=t0 - timedelta(seconds=1))
        await seed.logs(at=t0 - timedelta(seconds=1), count=1, service="db")
        assert (await evaluate_at(session_maker, tenant, t0)).notified == 1
        summary = await evaluate_at(session_maker, tenant, t0 + timedelta(seconds=120))
        assert (summary.resolved, summary.notified) == (1, 0)
        assert await outbox(session_maker, tenant) == [("ALERT_FIRING", "cause")]
        [resolved] = await audit_rows(session_maker, tenant, "alert.resolved")
        assert "never announced" in resolved.details["notification"]


class TestApi:
    async def test_create_list_delete_audit_and_scopes(
        self, client: AsyncTestClient[Litestar], tenant: Tenant, other_tenant: Tenant
    ) -> None:
        assert (await client.post(RULES, json=DB_MUTES_API, headers=tenant.operate)).status_code == 403
        rule = await create_rule(client, tenant, DB_MUTES_API)
        assert rule["source_matchers"] == DB_MUTES_API["source_matchers"]
        assert rule["target_matchers"] == DB_MUTES_API["target_matchers"]
        assert (rule["equal"], rule["origin"]) == (["cluster"], "api")
        assert rule["created_by"].startswith("key:admin-key:")
        listed = (await client.get(RULES, headers=tenant.read)).json()["items"]
        assert [r["id"] for r in listed] == [rule["id"]]

        reordered = {**DB_MUTES_API, "equal": ["cluster", "cluster"]}
        duplicate = await client.post(RULES, json=reordered, headers=tenant.admin)
        assert duplicate.status_code == 409, duplicate.text

        # Another project neither sees nor deletes it (404, not 403), and may have the same rule.
        assert (await client.get(RULES, headers=other_tenant.read)).json()["items"] == []
        foreign = await client.delete(f"{RULES}/{rule['id']}", headers=other_tenant.admin)
        assert foreign.status_code == 404
        assert (await client.post(RULES, json=DB_MUTES_API, headers=other_tenant.admin)).status_code == 201

        assert (await client.delete(f"{RULES}/{rule['id']}", headers=tenant.admin)).status_code == 204
        assert (await client.delete(f"{RULES}/{rule['id']}", headers=tenant.admin)).status_code == 404
        assert (await client.get(RULES, headers=tenant.read)).json()["items"] == []
        audit = (
            await client.get(
                "/api/v1/alerts/audit", params={"subject_type": "inhibit_rule"}, headers=tenant.read
            )
        ).json()["items"]
        assert [(row["action"], row["subject_id"]) for row in audit] == [
            ("inhibit_rule.delete", rule["id"]),
            ("inhibit_rule.create", rule["id"]),
        ]
        assert audit[1]["details"]["rule"]["equal"] == ["cluster"]

    @pytest.mark.parametrize(
        ("change", "needle"),
        [
            ({"source_matchers": []}, "source_matchers"),
            ({"target_matchers": [m("a", "==", "x")]}, "target_matchers[0].op"),
            ({"target_matchers": [m("a", "=~", "(x")]}, "target_matchers: matcher 0"),
            ({"source_matchers": [m("", "=", "x")]}, "source_matchers[0].name"),
            ({"equal": ["1cluster"]}, "equal[0]"),
            ({"equal": "cluster"}, "equal"),
            ({"target_matchers": None}, "target_matchers"),
        ],
        ids=[
            "empty-side",
            "bad-op",
            "bad-regex",
            "empty-name",
            "bad-label-name",
            "equal-not-a-list",
            "null-side",
        ],
    )
    async def test_invalid_bodies_are_a_clear_4xx(
        self, client: AsyncTestClient[Litestar], tenant: Tenant, change: dict[str, Any], needle: str
    ) -> None:
        response = await client.post(RULES, json={**DB_MUTES_API, **change}, headers=tenant.admin)
        assert response.status_code in (400, 422), response.text
        assert needle in response.json()["detail"], response.text

    async def test_openapi_publishes_the_constraints(self, client: AsyncTestClient[Litestar]) -> None:
        schema = (await client.get("/schema/openapi.json")).json()
        operations = {
            (method.upper(), path): operation
            for path, item in schema["paths"].items()
            for method, operation in item.items()
        }
        assert operations[("GET", "/api/v1/alerts/inhibit-rules")]["operationId"] == "listInhibitRules"
        assert operations[("POST", "/api/v1/alerts/inhibit-rules")]["operationId"] == "createInhibitRule"
        assert operations[("DELETE", "/api/v1/alerts/inhibit-rules/{rule_id}")]["operationId"] == (
            "deleteInhibitRule"
        )
        assert operations[("POST", "/api/v1/alerts/silences/preview")]["operationId"] == "previewSilence"
        body = schema["components"]["schemas"]["InhibitRuleIn"]
        assert set(body["required"]) == {"source_matchers", "target_matchers"}
        assert body["properties"]["source_matchers"]["minItems"] == 1
        assert body["properties"]["target_matchers"]["minItems"] == 1
        assert body["properties"]["equal"]["items"]["pattern"] == "^[A-Za-z_][A-Za-z0-9_]*$"
        alert = schema["components"]["schemas"]["AlertOut"]
        assert "inhibited_by" in alert["required"]


class TestSilencePreview:
    async def test_the_listed_alerts_are_exactly_those_the_created_silence_suppresses(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        await seed.channel()
        for team in ("core", "web", "db"):
            await create_policy(
                client,
                tenant,
                name=f"p-{team}",
                kind="incident",
                min_severity="low",
                for_seconds=60,
                labels={"team": team},
            )
        await seed.incident(at=utcnow() - timedelta(seconds=1))
        t0 = utcnow()
        await evaluate_at(session_maker, tenant, t0)  # pending: active, nothing notified yet
        body = {"matchers": [m("team", "=~", "core|db")], "ends_at": in_an_hour(), "comment": "maintenance"}

        preview = await client.post(PREVIEW, json=body, headers=tenant.read)
        assert preview.status_code == 200, preview.text
        listed = {item["id"] for item in preview.json()["items"]}
        assert {item["labels"]["team"] for item in preview.json()["items"]} == {"core", "db"}
        assert (await client.get("/api/v1/alerts/silences", headers=tenant.read)).json()["items"] == []

        silence = (await client.post("/api/v1/alerts/silences", json=body, headers=tenant.operate)).json()
        fired = await evaluate_at(session_maker, tenant, t0 + timedelta(seconds=61))
        assert fired.fired == 3
        suppressed = {
            str(row.subject_id)
            for row in await audit_rows(session_maker, tenant, "alert.firing")
            if row.details.get("silenced_by") == silence["id"]
        }
        assert suppressed == listed
        notified = {name for _, name in await outbox(session_maker, tenant)}
        assert notified == {"p-web"}

    async def test_preview_validates_like_creation(
        self, client: AsyncTestClient[Litestar], tenant: Tenant
    ) -> None:
        everything = {"matchers": [m("team", "=~", ".*")], "ends_at": in_an_hour()}
        response = await client.post(PREVIEW, json=everything, headers=tenant.read)
        assert response.status_code == 422
        assert "empty string" in response.json()["detail"]
        past = {"matchers": [m("team", "=", "x")], "ends_at": (utcnow() - timedelta(minutes=1)).isoformat()}
        assert (await client.post(PREVIEW, json=past, headers=tenant.read)).status_code == 422
        assert (await client.post(PREVIEW, json=everything)).status_code == 401


VALID_ROUTING = """
inhibit_rules:
  - source_matchers: [{name: alertname, op: "=", value: db-down}]
    target_matchers: [{name: alertname, op: "=~", value: "api-.*"}]
    equal: [cluster]
  - project: {project}
    source_matchers: [{name: severity, op: "=", value: high}]
    target_matchers: [{name: severity, op: "=", value: low}]
escalations: []  # the notifications domain's section (tests/notifications/test_routing_file.py)
"""


class TestRoutingFile:
    @pytest.mark.parametrize(
        ("content", "needle"),
        [
            ("routes: []\n", "unknown top-level key(s) routes; expected inhibit_rules, escalations"),
            ("- a\n", "expected a YAML mapping"),
            ("inhibit_rules: {a: 1}\n", "inhibit_rules: expected a YAML list of objects"),
            (
                "inhibit_rules:\n  - {source_matchers: [],"
                " target_matchers: [{name: a, op: '=', value: b}]}\n",
                "inhibit_rules item 0: Expected `array` of length >= 1",
            ),
            (
                "inhibit_rules:\n  - {source_matchers: [{name: a, op: '=~', value: '('}],"
                " target_matchers: [{name: a, op: '=', value: b}]}\n",
                "inhibit_rules item 0: Invalid inhibit rule: source_matchers: matcher 0",
            ),
            ("inhibit_rules:\n  - {sources: []}\n", "inhibit_rules item 0: unknown field(s) sources"),
            ("inhibit_rules: [\n", "not valid YAML"),
        ],
        ids=[
            "unknown-key",
            "a-list",
            "section-not-a-list",
            "empty-side",
            "bad-regex",
            "unknown-field",
            "yaml",
        ],
    )
    def test_invalid_files_are_one_line_naming_the_variable(
        self, tmp_path: Path, content: str, needle: str
    ) -> None:
        path = tmp_path / "routing.yaml"
        path.write_text(content, encoding="utf-8")
        with pytest.raises(SettingsError) as caught:
            routing_file.parse_routing_file(path)
        message = str(caught.value)
        assert message.startswith(f"invalid configuration: PRODSENTINEL_ROUTING_FILE={str(path)!r}: ")
        assert needle in message
        assert "\n" not in message

    def test_the_cli_refuses_an_invalid_file_before_any_command(
        self, tmp_path: Path, database_url: str
    ) -> None:
        path = tmp_path / "routing.yaml"
        path.write_text("inhibit_rule: []\n", encoding="utf-8")
        result = run_cli("run", DATABASE_URL=database_url, PRODSENTINEL_ROUTING_FILE=str(path))
        assert_one_line(result, "PRODSENTINEL_ROUTING_FILE", "unknown top-level key(s) inhibit_rule")

    async def test_a_valid_file_is_loaded_at_start_idempotently(
        self, tmp_path: Path, settings: Settings, project_name: str, make_tenant: TenantFactory
    ) -> None:
        other = f"{project_name}-routing"
        path = tmp_path / "routing.yaml"
        path.write_text(VALID_ROUTING.replace("{project}", other), encoding="utf-8")
        tenant: Tenant = await make_tenant(other)
        file_settings = settings.with_overrides(routing_file=path)

        for _ in range(2):  # a second start keeps the same rules (same ids), adds none
            async with AsyncTestClient(app=create_app(file_settings)) as client:
                rules = (await client.get(RULES, headers=tenant.read)).json()["items"]
        assert [(r["origin"], r["created_by"], r["target_matchers"][0]["value"]) for r in rules] == [
            ("file", "system:routing-file", "low")
        ]
        first_id = rules[0]["id"]
        path.write_text(VALID_ROUTING.replace("{project}", other).replace("value: low", "value: medium"))
        async with AsyncTestClient(app=create_app(file_settings)) as client:
            rules = (await client.get(RULES, headers=tenant.read)).json()["items"]
            audit = (
                await client.get(
                    "/api/v1/alerts/audit", params={"subject_type": "inhibit_rule"}, headers=tenant.read
                )
            ).json()["items"]
        assert [r["target_matchers"][0]["value"] for r in rules] == ["medium"]
        assert rules[0]["id"] != first_id
        assert [(row["action"], row["actor"]) for row in audit] == [
            ("inhibit_rule.load", "system:routing-file"),
            ("inhibit_rule.delete", "system:routing-file"),
            ("inhibit_rule.load", "system:routing-file"),
        ]
