"""Policy CRUD over HTTP, validation (every 422 case) and the YAML file loaded at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.alerts import policy_file
from prodsentinel.alerts.models import AlertPolicy
from prodsentinel.app import create_app
from prodsentinel.auth.models import Project
from prodsentinel.settings import Settings, SettingsError
from tests.conftest import KeyFactory, Tenant

URL = "/api/v1/alerts/policies"
LOG_RATE = {"name": "api errors", "kind": "log_rate", "severity": "high", "threshold": 5, "service": "api"}


class TestCreateAndRead:
    async def test_log_rate_defaults_and_flat_shape(
        self, client: AsyncTestClient[Litestar], tenant: Tenant
    ) -> None:
        response = await client.post(URL, json=LOG_RATE, headers=tenant.admin)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["operator"] == ">"
        assert body["for_seconds"] == 0
        assert body["window_seconds"] == 300
        assert body["level"] == "ERROR"
        assert body["enabled"] is True
        assert body["labels"] == {}
        assert body["service"] == "api"
        assert body["q"] is None
        assert not {"metric", "min_severity", "params"} & set(body)

        fetched = await client.get(f"{URL}/{body['id']}", headers=tenant.read)
        assert fetched.status_code == 200
        assert fetched.json() == body
        listed = (await client.get(URL, headers=tenant.read)).json()["items"]
        assert [item["id"] for item in listed] == [body["id"]]

    @pytest.mark.parametrize("kind", ["anomaly", "incident"])
    async def test_event_kinds_default_to_at_least_one(
        self, client: AsyncTestClient[Litestar], tenant: Tenant, kind: str
    ) -> None:
        extra = {"metric": "latency_ms"} if kind == "anomaly" else {"min_severity": "high"}
        response = await client.post(
            URL, json={"name": kind, "kind": kind, "severity": "low", **extra}, headers=tenant.admin
        )
        assert response.status_code == 201, response.text
        assert (response.json()["operator"], response.json()["threshold"]) == (">=", 1.0)

    async def test_metric_threshold_fields(self, client: AsyncTestClient[Litestar], tenant: Tenant) -> None:
        response = await client.post(
            URL,
            json={
                "name": "slow",
                "kind": "metric_threshold",
                "severity": "medium",
                "threshold": 250,
                "metric": "latency_ms",
                "agg": "p95",
                "match_labels": {"route": "/checkout"},
                "labels": {"team": "payments"},
                "operator": ">=",
                "for_seconds": 60,
                "window_seconds": 120,
            },
            headers=tenant.admin,
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["agg"] == "p95"
        assert body["match_labels"] == {"route": "/checkout"}
        assert body["service"] is None
        assert body["labels"] == {"team": "payments"}


INVALID: list[tuple[dict[str, Any], str]] = [
    ({**LOG_RATE, "kind": "bogus"}, "kind"),
    ({**LOG_RATE, "operator": "=="}, "operator"),
    ({**LOG_RATE, "severity": "critical"}, "severity"),
    ({k: v for k, v in LOG_RATE.items() if k != "name"}, "name"),
    ({k: v for k, v in LOG_RATE.items() if k != "threshold"}, "threshold"),
    ({**LOG_RATE, "q": "/([/"}, "regular expression"),
    ({**LOG_RATE, "level": "LOUD"}, "level"),
    ({**LOG_RATE, "metric": "cpu"}, "does not apply"),
    ({**LOG_RATE, "labels": {"severity": "x"}}, "derived"),
    ({**LOG_RATE, "labels": {"bad-name": "x"}}, "label name"),
    ({**LOG_RATE, "for_seconds": -1}, "for_seconds"),
    ({**LOG_RATE, "window_seconds": 0}, "window_seconds"),
    ({"name": "e", "kind": "error_rate", "severity": "low", "threshold": 0.1}, "service is required"),
    ({"name": "m", "kind": "metric_threshold", "severity": "low", "threshold": 1}, "metric is required"),
    (
        {
            "name": "m",
            "kind": "metric_threshold",
            "severity": "low",
            "threshold": 1,
            "metric": "x",
            "agg": "p42",
        },
        "agg",
    ),
    ({"name": "a", "kind": "anomaly", "severity": "low"}, "metric is required"),
    ({"name": "i", "kind": "incident", "severity": "low"}, "min_severity"),
    ({"name": "i", "kind": "incident", "severity": "low", "min_severity": "urgent"}, "min_severity"),
]


class TestValidation:
    @pytest.mark.parametrize(("body", "needle"), INVALID)
    async def test_invalid_policy_is_422_with_a_clear_detail(
        self, client: AsyncTestClient[Litestar], tenant: Tenant, body: dict[str, Any], needle: str
    ) -> None:
        response = await client.post(URL, json=body, headers=tenant.admin)
        assert response.status_code == 422, response.text
        assert needle in response.json()["detail"]
        assert response.json()["request_id"]

    async def test_regex_postgres_rejects_is_422(
        self, client: AsyncTestClient[Litestar], tenant: Tenant
    ) -> None:
        # Valid for Python's re but not for PostgreSQL's ARE engine: (?P<name>...) named groups.
        response = await client.post(URL, json={**LOG_RATE, "q": "/(?P<x>a)/"}, headers=tenant.admin)
        assert response.status_code == 422, response.text
        assert "regular expression" in response.json()["detail"]

    async def test_duplicate_name_is_409(self, client: AsyncTestClient[Litestar], tenant: Tenant) -> None:
        assert (await client.post(URL, json=LOG_RATE, headers=tenant.admin)).status_code == 201
        response = await client.post(URL, json=LOG_RATE, headers=tenant.admin)
        assert response.status_code == 409


class TestUpdateDelete:
    async def test_patch_is_partial_and_validated(
        self, client: AsyncTestClient[Litestar], tenant: Tenant
    ) -> None:
        created = (await client.post(URL, json={**LOG_RATE, "q": "timeout"}, headers=tenant.admin)).json()
        response = await client.patch(f"{URL}/{created['id']}", json={"threshold": 9}, headers=tenant.admin)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["threshold"] == 9
        assert (body["service"], body["q"], body["name"]) == ("api", "timeout", "api errors")

        cleared = await client.patch(f"{URL}/{created['id']}", json={"q": None}, headers=tenant.admin)
        assert cleared.json()["q"] is None

        bad = await client.patch(f"{URL}/{created['id']}", json={"operator": "!"}, headers=tenant.admin)
        assert bad.status_code == 422
        still = (await client.get(f"{URL}/{created['id']}", headers=tenant.read)).json()
        assert still["operator"] == ">"

        # Changing the kind drops the old kind's fields and needs the new kind's.
        missing = await client.patch(f"{URL}/{created['id']}", json={"kind": "anomaly"}, headers=tenant.admin)
        assert missing.status_code == 422
        assert "metric" in missing.json()["detail"]
        changed = await client.patch(
            f"{URL}/{created['id']}", json={"kind": "anomaly", "metric": "cpu"}, headers=tenant.admin
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["metric"] == "cpu"
        assert "level" not in changed.json()

    async def test_delete_then_404(self, client: AsyncTestClient[Litestar], tenant: Tenant) -> None:
        created = (await client.post(URL, json=LOG_RATE, headers=tenant.admin)).json()
        assert (await client.delete(f"{URL}/{created['id']}", headers=tenant.admin)).status_code == 204
        assert (await client.get(f"{URL}/{created['id']}", headers=tenant.read)).status_code == 404
        assert (await client.delete(f"{URL}/{created['id']}", headers=tenant.admin)).status_code == 404


class TestAccess:
    async def test_scopes(self, client: AsyncTestClient[Litestar], tenant: Tenant) -> None:
        assert (await client.get(URL, headers=tenant.read)).status_code == 200
        assert (await client.post(URL, json=LOG_RATE, headers=tenant.read)).status_code == 403
        assert (await client.post(URL, json=LOG_RATE, headers=tenant.operate)).status_code == 403
        assert (await client.get(URL)).status_code == 401

    async def test_other_projects_policy_is_404(
        self, client: AsyncTestClient[Litestar], tenant: Tenant, other_tenant: Tenant
    ) -> None:
        theirs = other_tenant.admin
        created = (await client.post(URL, json=LOG_RATE, headers=theirs)).json()
        path = f"{URL}/{created['id']}"
        assert (await client.get(path, headers=tenant.admin)).status_code == 404
        assert (await client.patch(path, json={"threshold": 1}, headers=tenant.admin)).status_code == 404
        assert (await client.delete(path, headers=tenant.admin)).status_code == 404
        assert (await client.get(URL, headers=tenant.admin)).json()["items"] == []
        assert (await client.get(path, headers=theirs)).status_code == 200


class TestPoliciesFile:
    def _write(self, path: Path, project: str, threshold: float) -> Path:
        path.write_text(
            f"""
- project: {project}
  name: api errors
  kind: log_rate
  severity: high
  threshold: {threshold}
  service: api
  q: /time(d )?out/
- project: {project}-b
  name: open incidents
  kind: incident
  severity: medium
  min_severity: high
""",
            encoding="utf-8",
        )
        return path

    async def test_upserts_by_project_and_name(
        self,
        tmp_path: Path,
        settings: Settings,
        session_maker: async_sessionmaker[AsyncSession],
        project_name: str,
    ) -> None:
        path = self._write(tmp_path / "policies.yaml", project_name, 5)
        configured = settings.with_overrides(policies_file=path)
        assert await policy_file.load_policies_file(session_maker, configured) == 2
        self._write(path, project_name, 7)
        assert await policy_file.load_policies_file(session_maker, configured) == 2
        async with session_maker() as session:
            rows = (
                await session.execute(
                    select(Project.name, AlertPolicy.name, AlertPolicy.threshold, AlertPolicy.params)
                    .join(Project, Project.id == AlertPolicy.project_id)
                    .where(Project.name.in_([project_name, f"{project_name}-b"]))
                    .order_by(Project.name)
                )
            ).all()
        assert [(r[0], r[1], r[2]) for r in rows] == [
            (project_name, "api errors", 7.0),
            (f"{project_name}-b", "open incidents", 1.0),
        ]
        assert rows[0][3]["q"] == "/time(d )?out/"

    async def test_loaded_at_app_start(
        self, tmp_path: Path, settings: Settings, make_key: KeyFactory, project_name: str
    ) -> None:
        path = self._write(tmp_path / "policies.yaml", project_name, 3)
        app = create_app(settings.with_overrides(policies_file=path))
        key = {"X-API-Key": await make_key("read")}
        async with AsyncTestClient(app=app) as client:
            items = (await client.get(URL, headers=key)).json()["items"]
        assert [(item["name"], item["threshold"]) for item in items] == [("api errors", 3.0)]

    @pytest.mark.parametrize(
        ("content", "needle"),
        [
            ("- [not, a, mapping]", "expected a YAML list"),
            ("- {project: p, name: x, kind: nope, severity: low, threshold: 1}", "item 0"),
            ("- {project: p, name: x, kind: log_rate, severity: low, threshold: 1, colour: red}", "colour"),
            ("key: [unclosed", "not valid YAML"),
        ],
    )
    async def test_invalid_file_names_the_variable(
        self,
        tmp_path: Path,
        settings: Settings,
        session_maker: async_sessionmaker[AsyncSession],
        content: str,
        needle: str,
    ) -> None:
        path = tmp_path / "policies.yaml"
        path.write_text(content, encoding="utf-8")
        with pytest.raises(SettingsError) as caught:
            await policy_file.load_policies_file(session_maker, settings.with_overrides(policies_file=path))
        assert "PRODSENTINEL_POLICIES_FILE" in str(caught.value)
        assert needle in str(caught.value)

    @pytest.mark.parametrize(
        ("content", "needle"),
        [
            (
                "- {name: a, kind: incident, severity: low, min_severity: high}\n"
                "- {project: default, name: a, kind: incident, severity: low, min_severity: high}",
                "item 1: duplicate policy 'a' in project 'default'",
            ),
            ("- {project: [x], name: a, kind: incident, severity: low}", "project must be"),
            ("- {1: a, name: a, kind: incident}", "unknown field(s) 1"),
            ("- name: x\n  kind: [unclosed\n", "not valid YAML: expected ',' or ']'"),
        ],
        ids=["duplicate", "project-not-a-string", "non-string-field", "yaml-problem-and-position"],
    )
    def test_parse_checks_the_whole_file_without_a_database(
        self, tmp_path: Path, content: str, needle: str
    ) -> None:
        path = tmp_path / "policies.yaml"
        path.write_text(content, encoding="utf-8")
        with pytest.raises(SettingsError) as caught:
            policy_file.parse_policies_file(path)
        prefix = f"invalid configuration: PRODSENTINEL_POLICIES_FILE={str(path)!r}: "
        assert str(caught.value).startswith(prefix)
        assert needle in str(caught.value)
        assert "\n" not in str(caught.value)

    def test_parse_defaults_the_project(self, tmp_path: Path) -> None:
        path = tmp_path / "policies.yaml"
        path.write_text("- {name: a, kind: incident, severity: low, min_severity: high}", encoding="utf-8")
        [item] = policy_file.parse_policies_file(path)
        assert (item.project, item.spec.name, item.spec.kind) == ("default", "a", "incident")
