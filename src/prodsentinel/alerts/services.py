"""Alerting rules: policies, the evaluation pass, acks, silences and the audit trail.

Evaluation (SPEC §7) is one pass over every enabled policy in scope:

1. values: one SQL statement per policy kind computes every policy's value over the stored signals
   (``repositories.*_values``; set-based, no per-signal Python);
2. states: the pure :func:`prodsentinel.alerts.evaluation.next_state` moves each alert instance
   (one per policy and label set) through inactive -> pending -> firing -> resolved;
3. writes: new and changed instances, one audit row per transition and, for the notifying
   transitions (fired/resolved) of alerts no silence matches, one outbox event via
   ``notifications.services.add_event`` - all in the evaluation's transaction;
4. after commit: the ``dispatch_due`` job is enqueued and live events are published.

One evaluator at a time across all processes: the pass runs under a transaction-scoped advisory
lock (``lib.jobs.try_lease``); a second evaluator that finds it taken returns ``skipped`` at once.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import structlog
from msgspec import to_builtins
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool
from uuid_utils.compat import uuid7

from prodsentinel.alerts import repositories as repo
from prodsentinel.alerts.evaluation import AlertState, compare, next_state
from prodsentinel.alerts.matchers import Matcher, MatcherError, matches_all, parse_matchers
from prodsentinel.alerts.models import Alert, AlertPolicy, Silence
from prodsentinel.alerts.policies import (
    COMMON_FIELDS,
    KIND_FIELDS,
    LOG_LEVELS,
    SEVERITIES,
    PolicyError,
    PolicySpec,
    normalise,
    q_regex,
    to_wire,
)
from prodsentinel.alerts.schemas import (
    AlertOut,
    AlertPage,
    AuditOut,
    AuditPage,
    EvaluationSummary,
    MatcherIn,
    PolicyOut,
    SilenceIn,
    SilenceOut,
    SilencePage,
)
from prodsentinel.audit import services as audit_services
from prodsentinel.audit.services import AuditEntry
from prodsentinel.auth.services import ProjectService
from prodsentinel.incidents.severity import Severity, rank
from prodsentinel.lib import events, jobs
from prodsentinel.lib.config_files import config_file_error, read_yaml_list
from prodsentinel.lib.database import session_scope
from prodsentinel.lib.errors import BadRequestError, ConflictError, NotFoundError, ValidationError
from prodsentinel.lib.pagination import check_limit, decode_cursor, encode_cursor
from prodsentinel.lib.time import as_utc, utcnow
from prodsentinel.notifications import outbox as notification_services
from prodsentinel.settings import Settings, SettingsError

__all__ = (
    "EVALUATION_LEASE",
    "SCHEDULER_ACTOR",
    "PolicyFileItem",
    "ack_alert",
    "alert_labels",
    "check_policies_file_in_database",
    "create_policy",
    "create_silence",
    "delete_policy",
    "evaluate",
    "expire_silence",
    "get_alert",
    "get_policy",
    "list_active",
    "list_audit",
    "list_history",
    "list_policies",
    "list_silences",
    "load_policies_file",
    "parse_policies_file",
    "run_evaluation",
    "silence_status",
    "unack_alert",
    "update_policy",
)

logger = structlog.get_logger("prodsentinel.alerts")

SCHEDULER_ACTOR = "system:scheduler"
POLICIES_FILE_ACTOR = "system:policies-file"
EVALUATION_LEASE = "alerts:evaluate"
ACTIVE_STATES = (AlertState.PENDING.value, AlertState.FIRING.value)


# --- policies ---------------------------------------------------------------------------------------


def _policy_out(policy: AlertPolicy) -> PolicyOut:
    wire = to_wire({name: getattr(policy, name) for name in COMMON_FIELDS}, policy.params or {})
    return PolicyOut(id=policy.id, created_at=policy.created_at, updated_at=policy.updated_at, **wire)


def _spec(raw: Mapping[str, Any]) -> PolicySpec:
    try:
        return normalise(raw)
    except PolicyError as exc:
        raise ValidationError(str(exc)) from None


async def _check_regex_in_database(session: AsyncSession, spec: PolicySpec) -> None:
    """Evaluation runs the regex in PostgreSQL (ARE syntax), so PostgreSQL must accept it too."""
    q = spec.params.get("q")
    pattern = q_regex(q) if isinstance(q, str) else None
    if pattern is None:
        return
    try:
        async with session.begin_nested():
            await repo.check_regex(session, pattern)
    except DBAPIError as exc:
        reason = str(getattr(exc, "orig", exc)).splitlines()[0]
        raise ValidationError(f"q: invalid regular expression {pattern!r}: {reason}.") from None


async def _policy_or_404(session: AsyncSession, project_id: UUID, policy_id: UUID) -> AlertPolicy:
    policy = await repo.policy_in_project(session, project_id, policy_id)
    if policy is None:
        raise NotFoundError("Alert policy not found.")
    return policy


async def list_policies(session: AsyncSession, project_id: UUID) -> list[PolicyOut]:
    return [_policy_out(policy) for policy in await repo.project_policies(session, project_id)]


async def get_policy(session: AsyncSession, project_id: UUID, policy_id: UUID) -> PolicyOut:
    return _policy_out(await _policy_or_404(session, project_id, policy_id))


async def create_policy(
    session: AsyncSession, project_id: UUID, data: Mapping[str, Any], *, actor: str
) -> PolicyOut:
    spec = _spec(data)
    await _check_regex_in_database(session, spec)
    if await repo.policy_name_taken(session, project_id, spec.name, None):
        raise ConflictError(f"An alert policy named {spec.name!r} already exists in this project.")
    policy = AlertPolicy(project_id=project_id, **spec.columns())
    session.add(policy)
    try:
        await session.flush()
    except IntegrityError:
        raise ConflictError(f"An alert policy named {spec.name!r} already exists in this project.") from None
    out = _policy_out(policy)
    await audit_services.record(
        session,
        *[
            AuditEntry(
                project_id=project_id,
                actor=actor,
                action="policy.create",
                subject_type="policy",
                subject_id=policy.id,
                details={"policy": _wire_details(out)},
            )
        ],
    )
    return out


async def update_policy(
    session: AsyncSession, project_id: UUID, policy_id: UUID, patch: Mapping[str, Any], *, actor: str
) -> PolicyOut:
    """PATCH: merge the given fields over the stored ones and validate the result as a whole.

    When the kind changes, the old kind's fields are dropped unless the patch repeats them.
    """
    policy = await _policy_or_404(session, project_id, policy_id)
    current = to_wire({name: getattr(policy, name) for name in COMMON_FIELDS}, policy.params or {})
    new_kind = patch.get("kind", policy.kind)
    if new_kind != policy.kind:
        current = {name: current[name] for name in COMMON_FIELDS}
    if policy.kind in ("anomaly", "incident") and new_kind not in ("anomaly", "incident"):
        current.pop("operator", None)
        current.pop("threshold", None)
    merged = {**current, **patch}
    spec = _spec(merged)
    await _check_regex_in_database(session, spec)
    if spec.name != policy.name and await repo.policy_name_taken(session, project_id, spec.name, policy.id):
        raise ConflictError(f"An alert policy named {spec.name!r} already exists in this project.")
    before = _policy_out(policy)
    for key, value in spec.columns().items():
        setattr(policy, key, value)
    policy.updated_at = utcnow()
    await session.flush()
    after = _policy_out(policy)
    await audit_services.record(
        session,
        *[
            AuditEntry(
                project_id=project_id,
                actor=actor,
                action="policy.update",
                subject_type="policy",
                subject_id=policy.id,
                details={"before": _wire_details(before), "after": _wire_details(after)},
            )
        ],
    )
    return after


async def delete_policy(session: AsyncSession, project_id: UUID, policy_id: UUID, *, actor: str) -> None:
    """Delete a policy and its alert instances. Firing instances are resolved first (outbox event
    ALERT_RESOLVED unless silenced) so receivers never keep an alert that can no longer resolve."""
    policy = await _policy_or_404(session, project_id, policy_id)
    now = utcnow()
    firing = await repo.firing_alerts(session, policy.id)
    silences = _parsed_silences(await repo.active_silences(session, [project_id], now))
    audit = []
    for alert in firing:
        silence_id = _silencing(silences.get(project_id, []), alert.labels)
        event_id = None
        row = _alert_row(alert)
        row.update(state=AlertState.RESOLVED.value, resolved_at=now, silenced_by=silence_id)
        if silence_id is None:
            event_id = await notification_services.add_event(
                session,
                project_id=project_id,
                event_type="ALERT_RESOLVED",
                severity=alert.severity,
                payload={**_payload(row, policy), "reason": "policy_deleted"},
            )
        audit.append(
            _transition_audit(
                row,
                policy,
                from_state="firing",
                actor=actor,
                now=now,
                event_id=event_id,
                silence_id=silence_id,
            )
        )
    audit.append(
        AuditEntry(
            project_id=project_id,
            actor=actor,
            action="policy.delete",
            subject_type="policy",
            subject_id=policy.id,
            details={"policy": _wire_details(_policy_out(policy))},
        )
    )
    await audit_services.record(session, *audit)
    await repo.delete_policy(session, policy)
    await session.flush()


def _wire_details(policy: PolicyOut) -> dict[str, Any]:
    details: dict[str, Any] = to_builtins(policy)
    return details


@dataclass(frozen=True, slots=True)
class PolicyFileItem:
    """One valid item of ``PRODSENTINEL_POLICIES_FILE``: the policy and the name of its project."""

    project: str
    spec: PolicySpec


def _policies_file_error(path: Path, reason: str) -> SettingsError:
    return config_file_error("PRODSENTINEL_POLICIES_FILE", path, reason)


def _policy_file_item(raw: Mapping[Any, Any]) -> PolicyFileItem:
    allowed = {"project", *COMMON_FIELDS, *(name for names in KIND_FIELDS.values() for name in names)}
    unknown = sorted(str(key) for key in set(raw) - allowed)
    if unknown:
        raise PolicyError(f"unknown field(s) {', '.join(unknown)}")
    project = raw.get("project", "default")
    if not isinstance(project, str) or not 0 < len(project.strip()) <= 100:
        raise PolicyError("project must be a string of 1 to 100 characters.")
    spec = normalise({key: value for key, value in raw.items() if key != "project"})
    return PolicyFileItem(project=project.strip(), spec=spec)


def parse_policies_file(path: Path) -> list[PolicyFileItem]:
    """Read and validate the whole file without a database: YAML, shape, every item's fields, kind and
    values (Python's regex check included). Any problem is one SettingsError line naming the variable
    and the item; the CLI checks the file this way before any command runs."""
    items: list[PolicyFileItem] = []
    seen: set[tuple[str, str]] = set()
    for index, raw in enumerate(
        read_yaml_list("PRODSENTINEL_POLICIES_FILE", path, key="policies", what="policy")
    ):
        try:
            item = _policy_file_item(raw)
        except PolicyError as exc:
            raise _policies_file_error(path, f"item {index} ({raw.get('name')!r}): {exc}") from None
        if (item.project, item.spec.name) in seen:
            reason = f"item {index}: duplicate policy {item.spec.name!r} in project {item.project!r}"
            raise _policies_file_error(path, reason)
        seen.add((item.project, item.spec.name))
        items.append(item)
    return items


async def _check_file_regexes(session: AsyncSession, path: Path, items: Sequence[PolicyFileItem]) -> None:
    """The one check that needs PostgreSQL: a ``/regex/`` query must compile there too."""
    for index, item in enumerate(items):
        try:
            await _check_regex_in_database(session, item.spec)
        except ValidationError as exc:
            raise _policies_file_error(path, f"item {index} ({item.spec.name!r}): {exc.detail}") from None


def _has_regex(item: PolicyFileItem) -> bool:
    q = item.spec.params.get("q")
    return isinstance(q, str) and q_regex(q) is not None


async def check_policies_file_in_database(
    database_url: str, path: Path, items: Sequence[PolicyFileItem]
) -> None:
    """Before serving: the PostgreSQL regex check of :func:`load_policies_file`, on a short-lived
    connection (no schema needed). Skipped when the database cannot be reached: the start reports that."""
    if not any(_has_regex(item) for item in items):
        return
    engine = create_async_engine(database_url, poolclass=NullPool, connect_args={"timeout": 10})
    try:
        async with AsyncSession(engine) as session:
            try:
                await session.connection()
            except (OSError, DBAPIError):
                return
            await _check_file_regexes(session, path, items)
    finally:
        await engine.dispose()


async def load_policies_file(session_maker: async_sessionmaker[AsyncSession], settings: Settings) -> int:
    """Load ``PRODSENTINEL_POLICIES_FILE`` at start: upsert each item by (project, name).

    The whole file is validated (:func:`parse_policies_file`, then the regex check in PostgreSQL)
    before anything is written, in one transaction; an invalid file raises :class:`SettingsError`
    naming the variable, the item and the problem. Instances that start together serialise on an
    advisory lock, so the upserts never race.
    """
    if settings.policies_file is None:
        return 0
    path = settings.policies_file
    items = parse_policies_file(path)
    async with session_scope(session_maker) as session:
        await repo.lock_policies_file(session)
        await _check_file_regexes(session, path, items)
        async with ProjectService.new(session=session) as projects:
            for item in items:
                project = await projects.get_or_create(item.project)
                policy_id = await repo.upsert_policy(session, project.id, item.spec.columns(), utcnow())
                await audit_services.record(
                    session,
                    *[
                        AuditEntry(
                            project_id=project.id,
                            actor=POLICIES_FILE_ACTOR,
                            action="policy.load",
                            subject_type="policy",
                            subject_id=policy_id,
                            details={"file": str(path), "name": item.spec.name},
                        )
                    ],
                )
    logger.info("alert_policies_loaded", file=str(path), count=len(items))
    return len(items)


# --- evaluation -------------------------------------------------------------------------------------


def alert_labels(policy: AlertPolicy) -> dict[str, str]:
    """SPEC §7: the policy's labels plus alertname, severity and (when named) service."""
    labels = dict(policy.labels or {})
    labels["alertname"] = policy.name
    labels["severity"] = policy.severity
    service = (policy.params or {}).get("service")
    if service:
        labels["service"] = str(service)
    return labels


def labels_key(labels: Mapping[str, str]) -> str:
    """Canonical text of a label set: the identity of an alert instance within its policy."""
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _policy_rows(kind: str, policies: Sequence[AlertPolicy]) -> list[dict[str, Any]]:
    """The JSON rows the kind's SQL reads (see ``repositories``)."""
    rows = []
    for policy in policies:
        params = policy.params or {}
        row: dict[str, Any] = {
            "policy_id": str(policy.id),
            "project_id": str(policy.project_id),
            "window_s": policy.window_seconds,
        }
        if kind == "log_rate":
            q = params.get("q")
            row.update(
                min_level=LOG_LEVELS[str(params.get("level") or "ERROR").upper()],
                service=params.get("service"),
                q=q,
                q_regex=q_regex(q) if q else None,
            )
        elif kind == "error_rate":
            row["service"] = params["service"]
        elif kind == "metric_threshold":
            row.update(
                metric=params["metric"],
                service=params.get("service"),
                match_labels=params.get("match_labels") or None,
                agg=params.get("agg") or "avg",
            )
        elif kind == "anomaly":
            row.update(metric=params["metric"], service=params.get("service"))
        elif kind == "incident":
            row["min_rank"] = rank(Severity(params["min_severity"]))
        rows.append(row)
    return rows


_VALUE_QUERIES = {
    "log_rate": repo.log_rate_values,
    "error_rate": repo.error_rate_values,
    "metric_threshold": repo.metric_values,
    "anomaly": repo.anomaly_values,
    "incident": repo.incident_values,
}


async def _values(
    session: AsyncSession, policies: Sequence[AlertPolicy], now: datetime
) -> dict[UUID, float | None]:
    by_kind: dict[str, list[AlertPolicy]] = {}
    for policy in policies:
        by_kind.setdefault(policy.kind, []).append(policy)
    values: dict[UUID, float | None] = {}
    for kind, group in by_kind.items():
        query = _VALUE_QUERIES.get(kind)
        if query is not None:
            values.update(await query(session, _policy_rows(kind, group), now))
    return values


def _parsed_silences(silences: Sequence[Silence]) -> dict[UUID, list[tuple[UUID, list[Matcher]]]]:
    parsed: dict[UUID, list[tuple[UUID, list[Matcher]]]] = {}
    for silence in silences:
        try:
            matchers = parse_matchers(silence.matchers)
        except MatcherError:  # pragma: no cover - validated at creation
            logger.warning("invalid_stored_silence", silence_id=str(silence.id))
            continue
        parsed.setdefault(silence.project_id, []).append((silence.id, matchers))
    return parsed


def _silencing(silences: Sequence[tuple[UUID, list[Matcher]]], labels: Mapping[str, str]) -> UUID | None:
    """The first (oldest) silence in force whose matchers all hold for ``labels``."""
    for silence_id, matchers in silences:
        if matches_all(matchers, labels):
            return silence_id
    return None


def _alert_row(alert: Alert) -> dict[str, Any]:
    return {attr.key: getattr(alert, attr.key) for attr in sa_inspect(Alert).column_attrs}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _payload(row: Mapping[str, Any], policy: AlertPolicy) -> dict[str, Any]:
    """What receivers get (add_event adds event_id, event_type, severity and occurred_at)."""
    return {
        "alert_id": str(row["id"]),
        "policy_id": str(policy.id),
        "policy_name": policy.name,
        "kind": policy.kind,
        "state": row["state"],
        "labels": row["labels"],
        "value": row["value"],
        "operator": policy.operator,
        "threshold": policy.threshold,
        "window_seconds": policy.window_seconds,
        "started_at": _iso(row["started_at"]),
        "fired_at": _iso(row["fired_at"]),
        "resolved_at": _iso(row["resolved_at"]),
    }


def _transition_audit(
    row: Mapping[str, Any],
    policy: AlertPolicy,
    *,
    from_state: str,
    actor: str,
    now: datetime,
    event_id: UUID | None,
    silence_id: UUID | None,
) -> AuditEntry:
    details: dict[str, Any] = {
        "from": from_state,
        "to": row["state"],
        "value": row["value"],
        "operator": policy.operator,
        "threshold": policy.threshold,
        "policy_id": str(policy.id),
        "policy_name": policy.name,
        "labels": row["labels"],
    }
    if event_id is not None:
        details["event_id"] = str(event_id)
    if silence_id is not None:
        details["silenced_by"] = str(silence_id)
        details["notification"] = "suppressed by silence"
    return AuditEntry(
        project_id=row["project_id"],
        actor=actor,
        action=f"alert.{row['state']}",
        subject_type="alert",
        subject_id=row["id"],
        details=details,
        at=now,
    )


@dataclass
class _PassResult:
    evaluated: int = 0
    transitions: int = 0
    fired: int = 0
    resolved: int = 0
    notified: int = 0
    live_events: list[tuple[str, UUID, dict[str, Any]]] = field(default_factory=list)


async def evaluate(
    session: AsyncSession,
    *,
    now: datetime,
    actor: str,
    interval_seconds: int,
    project_id: UUID | None = None,
) -> _PassResult:
    """One evaluation pass inside the caller's transaction (the caller holds the lease).

    ``project_id`` limits the pass to one project (manual evaluation by a project's key).
    """
    await repo.disable_jit(session)
    policies = await repo.enabled_policies(session, project_id)
    values = await _values(session, policies, now)
    existing = await repo.alerts_for_evaluation(session, [p.id for p in policies], project_id)
    instances = {(alert.policy_id, alert.labels_key): alert for alert in existing}

    # (policy, labels, key, alert or None, value, condition)
    plan: list[tuple[AlertPolicy, dict[str, str], str, Alert | None, float | None, bool]] = []
    for policy in policies:
        labels = alert_labels(policy)
        key = labels_key(labels)
        value = values.get(policy.id)
        condition = value is not None and compare(value, policy.operator, policy.threshold)
        plan.append((policy, labels, key, instances.pop((policy.id, key), None), value, condition))
    # Left over: instances of disabled policies or of a label set the policy no longer produces;
    # their condition is false, so they resolve (and settle) through the normal state machine.
    leftovers = [alert for alert in instances.values() if alert.state != AlertState.INACTIVE.value]
    if leftovers:
        known = {policy.id: policy for policy in policies}
        missing = {alert.policy_id for alert in leftovers} - set(known)
        if missing:
            for policy in await repo.policies_by_id(session, missing):
                known[policy.id] = policy
        for stale in leftovers:
            plan.append((known[stale.policy_id], stale.labels, stale.labels_key, stale, stale.value, False))

    result = _PassResult(evaluated=len(policies))
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    audit: list[AuditEntry] = []
    notify: list[tuple[dict[str, Any], AlertPolicy, str]] = []
    unannounced: list[tuple[dict[str, Any], AlertPolicy]] = []
    for policy, labels, key, alert, value, condition in plan:
        state = AlertState(alert.state) if alert is not None else AlertState.INACTIVE
        transition = next_state(
            state=state,
            condition_true=condition,
            pending_since=alert.started_at if alert is not None else None,
            now=now,
            for_seconds=policy.for_seconds,
            resolved_at=alert.resolved_at if alert is not None else None,
            interval_seconds=interval_seconds,
        )
        if alert is None and not transition.changed:
            continue  # never active: no instance row (inactive is the absence of a row)
        if alert is None:
            row: dict[str, Any] = {
                "id": uuid7(),
                "project_id": policy.project_id,
                "policy_id": policy.id,
                "labels": labels,
                "labels_key": key,
                "severity": policy.severity,
                "started_at": None,
                "fired_at": None,
                "resolved_at": None,
                "acked_by": None,
                "acked_at": None,
                "silenced_by": None,
                "created_at": now,
            }
        else:
            row = _alert_row(alert)
            if not transition.changed and state not in (AlertState.PENDING, AlertState.FIRING):
                continue  # a settled instance: nothing to record
        row.update(state=transition.new_state.value, value=value, last_evaluated_at=now, updated_at=now)
        new = transition.new_state
        if (
            transition.changed
            and new in (AlertState.PENDING, AlertState.FIRING)
            and state
            in (
                AlertState.INACTIVE,
                AlertState.RESOLVED,
            )
        ):
            # A new activation: a new cycle with its own clocks and no ack from the last one.
            row.update(started_at=now, fired_at=None, resolved_at=None, acked_by=None, acked_at=None)
        if transition.fired:
            row["fired_at"] = now
            result.fired += 1
        if transition.resolved:
            row["resolved_at"] = now
            result.resolved += 1
        (inserts if alert is None else updates).append(row)
        if transition.changed:
            result.transitions += 1
            if transition.fired or transition.resolved:
                notify.append((row, policy, state.value))
            else:
                audit.append(
                    _transition_audit(
                        row,
                        policy,
                        from_state=state.value,
                        actor=actor,
                        now=now,
                        event_id=None,
                        silence_id=None,
                    )
                )
        elif new is AlertState.FIRING and row["silenced_by"] is not None:
            unannounced.append((row, policy))

    if notify or unannounced:
        projects = {row["project_id"] for row, _, _ in notify} | {row["project_id"] for row, _ in unannounced}
        silences = _parsed_silences(await repo.active_silences(session, sorted(projects), now))
        for row, policy, from_state in notify:
            silence_id = _silencing(silences.get(row["project_id"], []), row["labels"])
            row["silenced_by"] = silence_id
            event_type = "ALERT_FIRING" if row["state"] == AlertState.FIRING.value else "ALERT_RESOLVED"
            payload = _payload(row, policy)
            event_id = None
            if silence_id is None:
                event_id = await notification_services.add_event(
                    session,
                    project_id=row["project_id"],
                    event_type=event_type,
                    severity=row["severity"],
                    payload=payload,
                )
                result.notified += 1
            audit.append(
                _transition_audit(
                    row,
                    policy,
                    from_state=from_state,
                    actor=actor,
                    now=now,
                    event_id=event_id,
                    silence_id=silence_id,
                )
            )
            live = {**payload, "severity": row["severity"], "silenced_by": _str_or_none(silence_id)}
            result.live_events.append((event_type.lower(), row["project_id"], live))
        for row, policy in unannounced:
            await _announce_if_unsilenced(
                session, row, policy, silences.get(row["project_id"], []), actor, now, result, audit
            )

    await repo.insert_alerts(session, inserts)
    await repo.update_alerts(session, updates)
    await audit_services.record(session, *audit)
    return result


async def _announce_if_unsilenced(
    session: AsyncSession,
    row: dict[str, Any],
    policy: AlertPolicy,
    silences: Sequence[tuple[UUID, list[Matcher]]],
    actor: str,
    now: datetime,
    result: _PassResult,
    audit: list[AuditEntry],
) -> None:
    """Announce a still-firing alert whose ALERT_FIRING a silence suppressed, once no silence holds it.

    As in Alertmanager, receivers hear of an alert that outlived its silence. ``silenced_by`` on the
    row names the silence that suppressed the last notification; clearing it marks the alert announced,
    so this writes one outbox event per suppressed firing. An alert that a newer silence holds stays
    quiet, now under that silence's id.
    """
    silence_id = _silencing(silences, row["labels"])
    if silence_id is not None:
        row["silenced_by"] = silence_id
        return
    previously_silenced_by = row["silenced_by"]
    row["silenced_by"] = None
    event_id = await notification_services.add_event(
        session,
        project_id=row["project_id"],
        event_type="ALERT_FIRING",
        severity=row["severity"],
        payload=_payload(row, policy),
    )
    result.notified += 1
    entry = _transition_audit(
        row,
        policy,
        from_state=AlertState.FIRING.value,
        actor=actor,
        now=now,
        event_id=event_id,
        silence_id=None,
    )
    details = {
        **entry.details,
        "notification": "announced: the silence that suppressed it has ended",
        "previously_silenced_by": str(previously_silenced_by),
    }
    audit.append(dataclasses.replace(entry, details=details))


def _str_or_none(value: UUID | None) -> str | None:
    return None if value is None else str(value)


async def run_evaluation(
    session_maker: async_sessionmaker[AsyncSession],
    *,
    interval_seconds: int,
    now: datetime | None = None,
    actor: str = SCHEDULER_ACTOR,
    project_id: UUID | None = None,
    manual: bool = False,
) -> EvaluationSummary:
    """The evaluation unit of work, shared by the cron job and ``POST /alerts/evaluate``.

    It owns its transaction (unlike most services) because the lease is the transaction's advisory
    lock and because the dispatch job and live events must follow the commit, not precede it.
    ``manual`` records the evaluation itself in the project's audit trail.
    """
    started = time.perf_counter()
    now = as_utc(now) if now is not None else utcnow()
    async with session_scope(session_maker) as session:
        if not await jobs.try_lease(session, EVALUATION_LEASE):
            summary = EvaluationSummary(skipped=True, duration_ms=_elapsed_ms(started), evaluated_at=now)
            if manual and project_id is not None:
                await audit_services.record(session, *[_evaluation_audit(project_id, actor, summary)])
            logger.info("alert_evaluation_skipped", reason="another evaluator holds the lease")
            return summary
        result = await evaluate(
            session, now=now, actor=actor, interval_seconds=interval_seconds, project_id=project_id
        )
        summary = EvaluationSummary(
            skipped=False,
            evaluated=result.evaluated,
            transitions=result.transitions,
            fired=result.fired,
            resolved=result.resolved,
            notified=result.notified,
            duration_ms=_elapsed_ms(started),
            evaluated_at=now,
        )
        if manual and project_id is not None:
            await audit_services.record(session, *[_evaluation_audit(project_id, actor, summary)])
    # Committed: announce. Both are best effort; the dispatch cron finds the items anyway.
    if result.notified:
        await notification_services.enqueue_dispatch()
    for event_type, event_project, data in result.live_events:
        await events.publish_event(event_type, event_project, data)
    summary.duration_ms = _elapsed_ms(started)
    if result.transitions:
        logger.info(
            "alert_evaluation",
            evaluated=summary.evaluated,
            transitions=summary.transitions,
            duration_ms=round(summary.duration_ms, 1),
        )
    return summary


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _evaluation_audit(project_id: UUID, actor: str, summary: EvaluationSummary) -> AuditEntry:
    return AuditEntry(
        project_id=project_id,
        actor=actor,
        action="alerts.evaluate",
        subject_type="evaluation",
        subject_id=None,
        details=to_builtins(summary),
    )


# --- alerts -----------------------------------------------------------------------------------------


async def _silences_now(session: AsyncSession, project_id: UUID) -> list[tuple[UUID, list[Matcher]]]:
    parsed = _parsed_silences(await repo.active_silences(session, [project_id], utcnow()))
    return parsed.get(project_id, [])


def _alert_out(alert: Alert, policy_name: str, silences: Sequence[tuple[UUID, list[Matcher]]]) -> AlertOut:
    return AlertOut(
        id=alert.id,
        policy_id=alert.policy_id,
        policy_name=policy_name,
        labels=alert.labels,
        state=alert.state,
        severity=alert.severity,
        value=alert.value,
        started_at=alert.started_at,
        fired_at=alert.fired_at,
        resolved_at=alert.resolved_at,
        acked_by=alert.acked_by,
        acked_at=alert.acked_at,
        silenced_by=_silencing(silences, alert.labels) if alert.state != AlertState.INACTIVE.value else None,
        last_evaluated_at=alert.last_evaluated_at,
        updated_at=alert.updated_at,
    )


async def list_active(session: AsyncSession, project_id: UUID) -> list[AlertOut]:
    rows = await repo.AlertRepository(session=session).page(project_id, states=ACTIVE_STATES)
    silences = await _silences_now(session, project_id)
    return [_alert_out(alert, name, silences) for alert, name in rows]


async def list_history(
    session: AsyncSession,
    project_id: UUID,
    *,
    state: str | None,
    policy_id: UUID | None,
    severity: str | None,
    since: datetime | None,
    until: datetime | None,
    cursor: str | None,
    limit: int,
) -> AlertPage:
    """Alert instances that have been active at least once, newest activation first.

    ``since``/``until`` bound the activation time (``started_at``); each transition is also in the
    audit trail (``/alerts/audit?subject_id=<alert id>``).
    """
    check_limit(limit)
    if state is not None and state not in {s.value for s in AlertState}:
        raise BadRequestError(f"state {state!r} is not one of inactive, pending, firing, resolved.")
    if severity is not None and severity not in SEVERITIES:
        raise BadRequestError(f"severity {severity!r} is not one of {', '.join(SEVERITIES)}.")
    after = decode_cursor(cursor, (datetime, UUID)) if cursor else None
    rows = await repo.AlertRepository(session=session).page(
        project_id,
        states=[state] if state else None,
        policy_id=policy_id,
        severity=severity,
        since=as_utc(since, "since") if since else None,
        until=as_utc(until, "until") if until else None,
        after=(after[0], after[1]) if after else None,
        limit=limit + 1,
        activated_only=True,
    )
    silences = await _silences_now(session, project_id)
    items = [_alert_out(alert, name, silences) for alert, name in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1][0]
        next_cursor = encode_cursor([last.started_at, last.id])
    return AlertPage(items=items, next_cursor=next_cursor)


async def _alert_or_404(session: AsyncSession, project_id: UUID, alert_id: UUID) -> tuple[Alert, str]:
    found = await repo.AlertRepository(session=session).one_with_policy_name(project_id, alert_id)
    if found is None:
        raise NotFoundError("Alert not found.")
    return found


async def get_alert(session: AsyncSession, project_id: UUID, alert_id: UUID) -> AlertOut:
    alert, name = await _alert_or_404(session, project_id, alert_id)
    return _alert_out(alert, name, await _silences_now(session, project_id))


async def ack_alert(session: AsyncSession, project_id: UUID, alert_id: UUID, *, actor: str) -> AlertOut:
    """Acknowledge an active (pending or firing) alert; the ack lasts for this activation cycle."""
    alert, name = await _alert_or_404(session, project_id, alert_id)
    if alert.state not in ACTIVE_STATES:
        raise ConflictError(f"Only pending or firing alerts can be acknowledged; this one is {alert.state}.")
    details = {"state": alert.state, "labels": alert.labels, "policy_name": name}
    return await _set_ack(
        session, alert, name, acked_by=actor, actor=actor, action="alert.ack", details=details
    )


async def unack_alert(session: AsyncSession, project_id: UUID, alert_id: UUID, *, actor: str) -> AlertOut:
    """Remove an acknowledgement (idempotent; audited either way, with who had acked)."""
    alert, name = await _alert_or_404(session, project_id, alert_id)
    details = {"state": alert.state, "previously_acked_by": alert.acked_by, "policy_name": name}
    return await _set_ack(
        session, alert, name, acked_by=None, actor=actor, action="alert.unack", details=details
    )


async def _set_ack(
    session: AsyncSession,
    alert: Alert,
    policy_name: str,
    *,
    acked_by: str | None,
    actor: str,
    action: str,
    details: dict[str, Any],
) -> AlertOut:
    """Set or clear the acknowledgement and write its audit row in the same unit of work."""
    now = utcnow()
    alert.acked_by, alert.acked_at, alert.updated_at = acked_by, (now if acked_by else None), now
    await session.flush()
    audit = AuditEntry(
        project_id=alert.project_id,
        actor=actor,
        action=action,
        subject_type="alert",
        subject_id=alert.id,
        details=details,
        at=now,
    )
    await audit_services.record(session, *[audit])
    return _alert_out(alert, policy_name, await _silences_now(session, alert.project_id))


# --- silences ---------------------------------------------------------------------------------------


def silence_status(silence: Silence, now: datetime) -> str:
    """pending before starts_at, active until ends_at (or an explicit expire), expired after."""
    if silence.expired_at is not None or now >= silence.ends_at:
        return "expired"
    if now < silence.starts_at:
        return "pending"
    return "active"


def _silence_out(silence: Silence, now: datetime) -> SilenceOut:
    return SilenceOut(
        id=silence.id,
        matchers=[MatcherIn(name=m["name"], op=m["op"], value=m["value"]) for m in silence.matchers],
        starts_at=silence.starts_at,
        ends_at=silence.ends_at,
        comment=silence.comment,
        created_by=silence.created_by,
        status=silence_status(silence, now),
        expired_at=silence.expired_at,
        created_at=silence.created_at,
    )


async def create_silence(
    session: AsyncSession, project_id: UUID, data: SilenceIn, *, actor: str
) -> SilenceOut:
    now = utcnow()
    try:
        matchers = parse_matchers([{"name": m.name, "op": m.op, "value": m.value} for m in data.matchers])
    except MatcherError as exc:
        raise ValidationError(f"Invalid matchers: {exc}.") from None
    starts_at = (
        as_utc(data.starts_at, "starts_at", error=ValidationError) if data.starts_at is not None else now
    )
    ends_at = as_utc(data.ends_at, "ends_at", error=ValidationError)
    if ends_at <= starts_at:
        raise ValidationError("ends_at must be after starts_at.")
    if ends_at <= now:
        raise ValidationError("ends_at must be in the future.")
    silence = Silence(
        project_id=project_id,
        matchers=[{"name": m.name, "op": m.op.value, "value": m.value} for m in matchers],
        starts_at=starts_at,
        ends_at=ends_at,
        comment=data.comment,
        created_by=actor,
    )
    session.add(silence)
    await session.flush()
    await audit_services.record(
        session,
        *[
            AuditEntry(
                project_id=project_id,
                actor=actor,
                action="silence.create",
                subject_type="silence",
                subject_id=silence.id,
                details={
                    "matchers": silence.matchers,
                    "starts_at": starts_at.isoformat(),
                    "ends_at": ends_at.isoformat(),
                    "comment": silence.comment,
                },
                at=now,
            )
        ],
    )
    return _silence_out(silence, now)


async def list_silences(
    session: AsyncSession, project_id: UUID, *, status: str | None, cursor: str | None, limit: int
) -> SilencePage:
    """Silences newest first; ``status`` filters on the status at request time."""
    check_limit(limit)
    if status is not None and status not in ("pending", "active", "expired"):
        raise BadRequestError(f"status {status!r} is not one of pending, active, expired.")
    now = utcnow()
    after = decode_cursor(cursor, (datetime, UUID)) if cursor else None
    rows = await repo.SilenceRepository(session=session).page(
        project_id, status=status, now=now, after=(after[0], after[1]) if after else None, limit=limit + 1
    )
    items = [_silence_out(silence, now) for silence in rows[:limit]]
    next_cursor = (
        encode_cursor([rows[limit - 1].created_at, rows[limit - 1].id]) if len(rows) > limit else None
    )
    return SilencePage(items=items, next_cursor=next_cursor)


async def expire_silence(
    session: AsyncSession, project_id: UUID, silence_id: UUID, *, actor: str
) -> SilenceOut:
    """End a silence now (idempotent: an expired silence is returned unchanged, not audited again)."""
    silence = await repo.silence_in_project(session, project_id, silence_id)
    if silence is None:
        raise NotFoundError("Silence not found.")
    now = utcnow()
    if silence_status(silence, now) == "expired":
        return _silence_out(silence, now)
    silence.expired_at = now
    silence.ends_at = now
    if silence.starts_at > now:
        silence.starts_at = now
    await session.flush()
    await audit_services.record(
        session,
        *[
            AuditEntry(
                project_id=project_id,
                actor=actor,
                action="silence.expire",
                subject_type="silence",
                subject_id=silence.id,
                details={"matchers": silence.matchers},
                at=now,
            )
        ],
    )
    return _silence_out(silence, now)


# --- audit ------------------------------------------------------------------------------------------


async def list_audit(
    session: AsyncSession,
    project_id: UUID,
    *,
    action: str | None,
    actor: str | None,
    subject_type: str | None,
    subject_id: UUID | None,
    since: datetime | None,
    until: datetime | None,
    cursor: str | None,
    limit: int,
) -> AuditPage:
    """The alerting part of the audit trail (``repo.AUDIT_SUBJECTS``), newest first."""
    rows, next_cursor = await audit_services.page(
        session,
        project_id,
        subject_types=repo.AUDIT_SUBJECTS,
        action=action,
        actor=actor,
        subject_type=subject_type,
        subject_id=subject_id,
        since=as_utc(since, "since") if since else None,
        until=as_utc(until, "until") if until else None,
        cursor=cursor,
        limit=limit,
    )
    items = [
        AuditOut(
            id=row.id,
            at=row.at,
            actor=row.actor,
            action=row.action,
            subject_type=row.subject_type,
            subject_id=row.subject_id,
            details=row.details,
        )
        for row in rows
    ]
    return AuditPage(items=items, next_cursor=next_cursor)
