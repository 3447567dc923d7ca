"""Static checks for everything under ``deploy/``.

No network, no Docker, no database: the files are parsed and cross-checked. When the
Prometheus/Alertmanager command line tools are installed (Debian packages ``prometheus``
and ``prometheus-alertmanager``), the rules, the rule unit tests, the Prometheus config,
the dashboard's PromQL and the Alertmanager config are also checked with them
(``.ci/run`` installs them; without them these tests fail in CI and skip elsewhere).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import require_tool

from prodsentinel.system import services as system_services

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RULES_FILE = DEPLOY / "prometheus" / "rules" / "prodsentinel.rules.yml"
RULES_TEST_FILE = DEPLOY / "prometheus" / "tests" / "prodsentinel.test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "prodsentinel.json"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"

# SPEC §9: the metric names the API exposes.
SPEC_COUNTERS_AND_GAUGES = {
    "http_requests_total",
    "prodsentinel_ingested_signals_total",
    "prodsentinel_ingest_duplicates_total",
    "prodsentinel_incidents_open",
    "prodsentinel_alerts_active",
    "prodsentinel_alert_transitions_total",
    "prodsentinel_silences_active",
    "prodsentinel_notifications_attempts_total",
    "prodsentinel_outbox_pending",
    "prodsentinel_outbox_dead",
    "prodsentinel_outbox_oldest_pending_age_seconds",
    "prodsentinel_scheduler_last_tick_timestamp_seconds",
}
SPEC_HISTOGRAMS = {
    "http_request_duration_seconds",
    "prodsentinel_notifications_delivery_latency_seconds",
}
SPEC_METRICS = (
    SPEC_COUNTERS_AND_GAUGES
    | SPEC_HISTOGRAMS
    | {f"{h}{suffix}" for h in SPEC_HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)
STANDARD_METRICS = {"up"}
#: The loops the app records ticks for; every one needs an interval in the stall rules.
SCHEDULER_LOOPS = set(system_services.SCHEDULER_LOOPS)

REQUIRED_COMPOSE_SERVICES = {"api", "worker", "postgres", "redis", "prometheus", "grafana", "alertmanager"}


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml"} and p.is_file())


def _json_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.json") if p.is_file())


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# --------------------------------------------------------------------------- PromQL names

_PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "start", "end",
}  # fmt: skip
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (Grafana ``$variables`` allowed).

    Strips string literals, template variables, label matchers, range/subquery brackets and
    grouping clauses, then keeps every identifier that is not a keyword and not a function call.
    """
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "''", s)
    s = re.sub(r"`[^`]*`", "``", s)
    s = re.sub(r"\$\{[^}]*\}|\$[A-Za-z_]\w*", "5m", s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = _GROUPING.sub(" ", s)
    names: set[str] = set()
    for match in _IDENT.finditer(s):
        start, end = match.span()
        if start > 0 and (s[start - 1].isalnum() or s[start - 1] in "_.:"):
            continue  # part of a number or duration such as 1e3 or 5m
        token = match.group(0)
        if token.lower() in _PROMQL_KEYWORDS:
            continue
        if s[end:].lstrip().startswith("("):
            continue  # function or aggregation
        names.add(token)
    return names


def _rules_doc() -> dict[str, Any]:
    doc = _load_yaml(RULES_FILE)
    assert isinstance(doc, dict), "rules file is not a mapping"
    assert doc.get("groups"), "rules file has no groups"
    return doc


def _all_rules() -> list[dict[str, Any]]:
    return [rule for group in _rules_doc()["groups"] for rule in group["rules"]]


def _recording_names() -> set[str]:
    return {r["record"] for r in _all_rules() if "record" in r}


def _alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in _all_rules() if "alert" in r}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _dashboard_panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in _dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return out


def _dashboard_exprs() -> list[tuple[str, str]]:
    return [
        (panel.get("title", "?"), target["expr"])
        for panel in _dashboard_panels()
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


# --------------------------------------------------------------------------- syntax


def test_deploy_tree_has_the_expected_files() -> None:
    expected = [
        "Dockerfile",
        "compose.yaml",
        "README.md",
        "prometheus/prometheus.yml",
        "prometheus/rules/prodsentinel.rules.yml",
        "prometheus/tests/prodsentinel.test.yml",
        "alertmanager/alertmanager.yml",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/dashboards.yml",
        "grafana/dashboards/prodsentinel.json",
        "k8s/kustomization.yaml",
    ]
    missing = [name for name in expected if not (DEPLOY / name).is_file()]
    assert not missing, f"missing under deploy/: {missing}"


@pytest.mark.parametrize("path", _yaml_files(), ids=_rel)
def test_yaml_file_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert docs, f"{_rel(path)} is empty"
    for doc in docs:
        assert isinstance(doc, dict), f"{_rel(path)}: top level must be a mapping"


@pytest.mark.parametrize("path", _json_files(), ids=_rel)
def test_json_file_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict)


# --------------------------------------------------------------------------- compose


def test_compose_has_all_services() -> None:
    services = _load_yaml(COMPOSE)["services"]
    assert set(services) >= REQUIRED_COMPOSE_SERVICES, REQUIRED_COMPOSE_SERVICES - set(services)
    assert "migrate" in services


def test_compose_app_services_wiring() -> None:
    services = _load_yaml(COMPOSE)["services"]
    assert services["migrate"]["command"] == ["database", "upgrade", "--no-prompt"]
    assert services["worker"]["command"] == ["workers", "run"]
    api_cmd = services["api"]["command"]
    assert api_cmd[0] == "run"
    assert api_cmd[api_cmd.index("--host") + 1] == "0.0.0.0"
    assert api_cmd[api_cmd.index("--port") + 1] == "8000"
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name
    for name in ("api", "worker", "migrate"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"] == "postgresql+asyncpg://postgres:postgres@postgres:5432/prodsentinel"
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert str(env["PRODSENTINEL_INPROCESS_WORKERS"]) == "0"
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert services["migrate"]["restart"] == "no"


def test_compose_infrastructure_services() -> None:
    services = _load_yaml(COMPOSE)["services"]
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    for name in ("postgres", "redis", "api"):
        assert services[name]["healthcheck"]["test"], f"{name} has no healthcheck"
    prom = services["prometheus"]
    assert "PRODSENTINEL_METRICS_TOKEN" in prom["environment"]
    assert "/prometheus/metrics_token" in " ".join(prom["command"])


def test_compose_bind_mounts_exist() -> None:
    services = _load_yaml(COMPOSE)["services"]
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: bind mount {source} does not exist"


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M) or re.search(
        r"^FROM python:3\.11-slim", text, re.M
    )
    assert re.search(r"pip install [^\n]*\buv\b", text)
    assert "UV_COMPILE_BYTECODE=1 uv sync --frozen --no-dev" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users, "Dockerfile sets no USER"
    assert not users[-1].startswith(("root", "0")), "final image must not run as root"
    assert re.search(r'^ENTRYPOINT \["prodsentinel"\]$', text, re.M)
    assert re.search(r'^CMD \["run"\]$', text, re.M)


# --------------------------------------------------------------------------- Prometheus


def test_prometheus_config_references() -> None:
    cfg = _load_yaml(PROMETHEUS_CONFIG)
    matched = [p for pattern in cfg["rule_files"] for p in (PROMETHEUS_CONFIG.parent).glob(pattern)]
    assert RULES_FILE in matched, "rule_files does not load the rules file"
    targets = [
        t for am in cfg["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]
    ]
    assert "alertmanager:9093" in targets
    jobs = {job["job_name"]: job for job in cfg["scrape_configs"]}
    api = jobs["prodsentinel-api"]
    assert api.get("metrics_path", "/metrics") == "/metrics"
    assert [t for sc in api["static_configs"] for t in sc["targets"]] == ["api:8000"]
    auth = api["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    assert auth.get("credentials_file") or auth.get("credentials")


def test_alert_rules_are_complete() -> None:
    alerts = _alerts()
    required = {
        "ProdSentinelAPIDown",
        "ProdSentinelHigh5xxRatio",
        "ProdSentinelHighLatencyP99",
        "ProdSentinelIngestBackpressure",
        "ProdSentinelOutboxBacklogGrowing",
        "ProdSentinelOutboxOldestPendingTooOld",
        "ProdSentinelOutboxDeadLettersIncreasing",
        "ProdSentinelNotificationFailureRatioHigh",
        "ProdSentinelSchedulerLoopStalled",
        "ProdSentinelNoIngest",
    }
    assert required <= set(alerts), required - set(alerts)
    assert alerts["ProdSentinelAPIDown"]["expr"].replace(" ", "") == 'up{job="prodsentinel-api"}==0'
    assert alerts["ProdSentinelNoIngest"]["labels"]["severity"] == "info"
    for name, rule in alerts.items():
        assert "for" in rule, f"{name} has no `for`"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        for key in ("summary", "description", "runbook_url"):
            assert rule["annotations"].get(key), f"{name} lacks annotation {key}"
        assert rule["annotations"]["runbook_url"].startswith("https://"), name


def test_recording_rules_cover_red_and_scheduler_loops() -> None:
    records = _recording_names()
    for name in (
        "job:http_requests:rate5m",
        "job:http_requests_5xx:ratio_rate5m",
        "job:http_request_duration_seconds:p99_5m",
        "job_path_method:http_requests:rate5m",
    ):
        assert name in records, name
    loops = {
        r["labels"]["loop"]
        for r in _all_rules()
        if r.get("record") == "prodsentinel:scheduler_loop_interval_seconds"
    }
    assert loops == SCHEDULER_LOOPS


def test_metric_extractor_sees_names() -> None:
    expr = (
        'sum by (job, le) (rate(foo_bucket{job=~"$job", path!~"/a|/b"}[$__rate_interval])) '
        "/ on (job) group_left () bar:baz:rate5m > 1e3 and time() - qux offset 5m"
    )
    assert metric_names(expr) == {"foo_bucket", "bar:baz:rate5m", "qux"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m])))") == {"x_bucket"}


def test_rules_use_only_spec_metric_names() -> None:
    allowed = SPEC_METRICS | STANDARD_METRICS | _recording_names()
    unknown = {
        (rule.get("alert") or rule.get("record"), name)
        for rule in _all_rules()
        for name in metric_names(rule["expr"])
        if name not in allowed
    }
    assert not unknown, f"metric names not in SPEC §9 nor recorded in the file: {sorted(unknown)}"
    used = set().union(*(metric_names(r["expr"]) for r in _all_rules()))
    assert "prodsentinel_scheduler_last_tick_timestamp_seconds" in used


def test_dashboard_uses_only_spec_metric_names() -> None:
    exprs = _dashboard_exprs()
    assert len(exprs) >= 15, "dashboard has too few queries"
    allowed = SPEC_METRICS | STANDARD_METRICS | _recording_names()
    unknown = {(title, name) for title, expr in exprs for name in metric_names(expr) if name not in allowed}
    assert not unknown, f"dashboard metric names not in SPEC §9: {sorted(unknown)}"
    used = set().union(*(metric_names(expr) for _, expr in exprs))
    # Every SPEC metric family is on the dashboard.
    for family in SPEC_COUNTERS_AND_GAUGES | SPEC_HISTOGRAMS:
        assert any(name == family or name.startswith(family + "_") for name in used), family


def test_dashboard_structure() -> None:
    dash = _dashboard()
    panels = _dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    rows = {p["title"] for p in panels if p["type"] == "row"}
    for needle in ("HTTP", "Ingest", "Incidents", "Notifications", "Scheduler"):
        assert any(needle in title for title in rows), f"no row about {needle}"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    datasource = _load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"][0]
    assert variables["datasource"]["current"]["value"] == datasource["uid"]
    assert datasource["url"] == "http://prometheus:9090"


def test_grafana_dashboard_provider_matches_compose_mount() -> None:
    provider = _load_yaml(DEPLOY / "grafana/provisioning/dashboards/dashboards.yml")["providers"][0]
    grafana = _load_yaml(COMPOSE)["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def test_alertmanager_config_shape() -> None:
    cfg = _load_yaml(ALERTMANAGER_CONFIG)
    receivers = {r["name"]: r for r in cfg["receivers"]}
    assert cfg["route"]["receiver"] in receivers
    for route in cfg["route"].get("routes", []):
        assert route["receiver"] in receivers
    assert any(r.get("webhook_configs") for r in receivers.values())


# --------------------------------------------------------------------------- Kubernetes


def _k8s_docs() -> dict[tuple[str, str], dict[str, Any]]:
    kustomization = _load_yaml(K8S / "kustomization.yaml")
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        path = K8S / resource
        assert path.is_file(), f"kustomization lists missing {resource}"
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is None:
                continue
            for key in ("apiVersion", "kind"):
                assert doc.get(key), f"{resource}: no {key}"
            assert doc["metadata"].get("name"), f"{resource}: no metadata.name"
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def test_kustomization_lists_every_manifest() -> None:
    listed = set(_load_yaml(K8S / "kustomization.yaml")["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert on_disk == listed, on_disk ^ listed


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_k8s_api_deployment() -> None:
    docs = _k8s_docs()
    dep = docs[("Deployment", "prodsentinel-api")]
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]
    env = _container_env(container)
    assert env["PRODSENTINEL_INPROCESS_WORKERS"] == "0"
    assert env["PRODSENTINEL_HOST"] == "0.0.0.0"
    assert container["args"][0] == "run"
    refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
    assert refs == {"prodsentinel-config", "prodsentinel-secrets"}
    assert docs[("ConfigMap", "prodsentinel-config")]["data"]["PRODSENTINEL_INPROCESS_WORKERS"] == "0"
    secret = docs[("Secret", "prodsentinel-secrets")]
    assert {"DATABASE_URL", "REDIS_URL"} <= set(secret["stringData"])


def test_k8s_worker_job_service_pdb_hpa() -> None:
    docs = _k8s_docs()
    worker = docs[("Deployment", "prodsentinel-worker")]["spec"]["template"]["spec"]
    (worker_container,) = worker["containers"]
    assert worker_container["command"] + worker_container["args"] == ["prodsentinel", "workers", "run"]
    assert worker["securityContext"]["runAsNonRoot"] is True
    (job_container,) = docs[("Job", "prodsentinel-migrate")]["spec"]["template"]["spec"]["containers"]
    assert job_container["command"] + job_container["args"] == [
        "prodsentinel",
        "database",
        "upgrade",
        "--no-prompt",
    ]
    api_labels = docs[("Deployment", "prodsentinel-api")]["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = docs[(kind, "prodsentinel-api")]["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= api_labels.items(), kind
    hpa = docs[("HorizontalPodAutoscaler", "prodsentinel-api")]["spec"]
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "prodsentinel-api"}
    assert hpa["scaleTargetRef"] == target
    assert hpa["minReplicas"] >= 2
    namespaces = {doc["metadata"].get("namespace") for (kind, _), doc in docs.items() if kind != "Namespace"}
    assert namespaces == {"prodsentinel"}


# --------------------------------------------------------------------------- promtool / amtool


@pytest.fixture
def promtool() -> str:
    return require_tool("promtool", "prometheus")


@pytest.fixture
def amtool() -> str:
    return require_tool("amtool", "prometheus-alertmanager")


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )


def test_promtool_check_rules(promtool: str) -> None:
    result = _run(promtool, "check", "rules", RULES_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests(promtool: str) -> None:
    result = _run(promtool, "test", "rules", RULES_TEST_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config(promtool: str, tmp_path: Path) -> None:
    # The credentials file only exists inside the container: point it at a local file.
    shutil.copytree(PROMETHEUS_CONFIG.parent / "rules", tmp_path / "rules")
    token = tmp_path / "metrics_token"
    token.write_text("test-token", encoding="utf-8")
    text = PROMETHEUS_CONFIG.read_text(encoding="utf-8").replace("/prometheus/metrics_token", str(token))
    (tmp_path / "prometheus.yml").write_text(text, encoding="utf-8")
    result = _run(promtool, "check", "config", tmp_path / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_dashboard_promql_parses(promtool: str, tmp_path: Path) -> None:
    substitutions = {"$__rate_interval": "5m", "$job": ".*", "$path": ".*", "${datasource}": "prometheus"}
    rules = []
    for index, (_, expr) in enumerate(_dashboard_exprs()):
        for var, value in substitutions.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unknown dashboard variable in {expr}"
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = _run(promtool, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_check_config(amtool: str) -> None:
    result = _run(amtool, "check-config", ALERTMANAGER_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_files_pattern_is_relative() -> None:
    # Relative rule_files resolve next to prometheus.yml both in the repo and in the container.
    for pattern in _load_yaml(PROMETHEUS_CONFIG)["rule_files"]:
        assert not pattern.startswith("/"), pattern
        assert fnmatch.fnmatch("rules/prodsentinel.rules.yml", pattern)
