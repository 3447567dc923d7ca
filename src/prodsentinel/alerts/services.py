"""Alert policies and alert instances over the API: policy CRUD, alert reads, acks and the audit view.

Services in the project's one shape (``auth/services.py``): advanced-alchemy repository services,
built per request with the request's session; they flush, audit in the same unit of work and never
commit. The rest of the domain lives beside them:

- ``alerts/evaluator.py``: the evaluation pass (``run_evaluation``), ``alerts/plan.py`` its pure
  decisions, ``alerts/value_queries.py`` its per-kind value SQL;
- ``alerts/policy_file.py``: ``PRODSENTINEL_POLICIES_FILE``;
- ``alerts/silences.py``: silences;
- ``alerts/policies.py``: policy validation (pure), shared by the API and the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast
from uuid import UUID, uuid4

from advanced_alchemy.exceptions import DuplicateKeyError
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from msgspec import to_builtins
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.alerts.evaluation import AlertState
from prodsentinel.alerts.evaluator import notify
from prodsentinel.alerts.models import Alert, AlertPolicy
from prodsentinel.alerts.plan import plan_policy_deletion
from prodsentinel.alerts.policies import COMMON_FIELDS, PolicyError, PolicySpec, normalise, q_regex, to_wire
from prodsentinel.alerts.repositories import AUDIT_SUBJECTS, AlertRepository, PolicyRepository
from prodsentinel.alerts.schemas import AlertOut, AlertPage, AuditOut, AuditPage, PolicyOut, SilenceIn
from prodsentinel.alerts.silences import ActiveSilences, silence_matchers, silence_window
from prodsentinel.audit import services as audit_services
from prodsentinel.audit.services import AuditEntry
from prodsentinel.lib.errors import BadRequestError, ConflictError, NotFoundError, ValidationError
from prodsentinel.lib.pagination import Keyset, time_range
from prodsentinel.lib.time import utcnow
from prodsentinel.lib.vocabulary import ALERT_SEVERITIES
from prodsentinel.notifications import outbox as notification_outbox

__all__ = ("ALERT_HISTORY_KEYSET", "STATES", "AlertService", "PolicyService", "check_regex_in_database")

ACTIVE_STATES = (AlertState.PENDING.value, AlertState.FIRING.value)
STATES = tuple(state.value for state in AlertState)

#: ``GET /alerts/history``: newest activation first by ``(started_at, id)``.
ALERT_HISTORY_KEYSET: Keyset[tuple[Alert, str]] = Keyset(
    "alerts", (datetime, UUID), lambda row: (row[0].started_at, row[0].id)
)


async def check_regex_in_database(session: AsyncSession, spec: PolicySpec) -> None:
    """Evaluation runs the regex in PostgreSQL (ARE syntax), so PostgreSQL must accept it too."""
    q = spec.params.get("q")
    pattern = q_regex(q) if isinstance(q, str) else None
    if pattern is None:
        return
    try:
        async with session.begin_nested():
            await PolicyRepository(session=session).check_regex(pattern)
    except DBAPIError as exc:
        reason = str(getattr(exc, "orig", exc)).splitlines()[0]
        raise ValidationError(f"q: invalid regular expression {pattern!r}: {reason}.") from None


# --- policies ---------------------------------------------------------------------------------------


def _policy_out(policy: AlertPolicy) -> PolicyOut:
    wire = to_wire({name: getattr(policy, name) for name in COMMON_FIELDS}, policy.params or {})
    return PolicyOut(id=policy.id, created_at=policy.created_at, updated_at=policy.updated_at, **wire)


def _wire_details(policy: PolicyOut) -> dict[str, Any]:
    details: dict[str, Any] = to_builtins(policy)
    return details


def _spec(raw: Mapping[str, Any]) -> PolicySpec:
    try:
        return normalise(raw)
    except PolicyError as exc:
        raise ValidationError(str(exc)) from None


def _name_conflict(name: str) -> ConflictError:
    return ConflictError(f"An alert policy named {name!r} already exists in this project.")


class PolicyService(SQLAlchemyAsyncRepositoryService[AlertPolicy]):
    """Alert policies of one project at a time: validated by ``alerts.policies``, audited."""

    repository_type = PolicyRepository
    repository: PolicyRepository

    @property
    def session(self) -> AsyncSession:
        """The request's (or unit of work's) session: these services are always built on one."""
        return cast("AsyncSession", self.repository.session)

    async def list_policies(self, project_id: UUID) -> list[PolicyOut]:
        return [_policy_out(policy) for policy in await self.repository.of_project(project_id)]

    async def get_policy(self, project_id: UUID, policy_id: UUID) -> PolicyOut:
        return _policy_out(await self._policy_or_404(project_id, policy_id))

    async def create_policy(self, project_id: UUID, data: Mapping[str, Any], *, actor: str) -> PolicyOut:
        spec = _spec(data)
        await check_regex_in_database(self.session, spec)
        if await self.repository.name_taken(project_id, spec.name, None):
            raise _name_conflict(spec.name)
        try:
            policy = await self.repository.add(AlertPolicy(project_id=project_id, **spec.columns()))
        except DuplicateKeyError:  # a concurrent create of the same name
            raise _name_conflict(spec.name) from None
        out = _policy_out(policy)
        await self._audit(policy, actor, "policy.create", {"policy": _wire_details(out)})
        return out

    async def update_policy(
        self, project_id: UUID, policy_id: UUID, patch: Mapping[str, Any], *, actor: str
    ) -> PolicyOut:
        """PATCH: merge the given fields over the stored ones and validate the result as a whole.

        When the kind changes, the old kind's fields are dropped unless the patch repeats them.
        """
        policy = await self._policy_or_404(project_id, policy_id)
        current = to_wire({name: getattr(policy, name) for name in COMMON_FIELDS}, policy.params or {})
        new_kind = patch.get("kind", policy.kind)
        if new_kind != policy.kind:
            current = {name: current[name] for name in COMMON_FIELDS}
        if policy.kind in ("anomaly", "incident") and new_kind not in ("anomaly", "incident"):
            current.pop("operator", None)
            current.pop("threshold", None)
        spec = _spec({**current, **patch})
        await check_regex_in_database(self.session, spec)
        if spec.name != policy.name and await self.repository.name_taken(project_id, spec.name, policy.id):
            raise _name_conflict(spec.name)
        before = _policy_out(policy)
        for key, value in spec.columns().items():
            setattr(policy, key, value)
        policy.updated_at = utcnow()
        await self.session.flush()
        after = _policy_out(policy)
        details = {"before": _wire_details(before), "after": _wire_details(after)}
        await self._audit(policy, actor, "policy.update", details)
        return after

    async def delete_policy(self, project_id: UUID, policy_id: UUID, *, actor: str) -> None:
        """Delete a policy and its alert instances. Firing instances are resolved first, like any other
        transition (``alerts.plan.plan_policy_deletion``): ALERT_RESOLVED unless silenced, which wakes
        the dispatcher after the commit, and the live events."""
        session = self.session
        policy = await self._policy_or_404(project_id, policy_id)
        now = utcnow()
        firing = await AlertRepository(session=session).firing_of_policy(project_id, policy.id)
        silences = await ActiveSilences.load(session, [project_id], now) if firing else ActiveSilences()
        outcome = plan_policy_deletion(policy, firing, silences, actor=actor, now=now)
        deleted = AuditEntry(
            project_id=project_id,
            actor=actor,
            action="policy.delete",
            subject_type="policy",
            subject_id=policy.id,
            details={"policy": _wire_details(_policy_out(policy))},
        )
        await audit_services.record(session, *outcome.audit, deleted)
        await notify(session, outcome)
        await self.repository.delete((project_id, policy.id))

    async def _policy_or_404(self, project_id: UUID, policy_id: UUID) -> AlertPolicy:
        policy = await self.repository.in_project(project_id, policy_id)
        if policy is None:
            raise NotFoundError("Alert policy not found.")
        return policy

    async def _audit(self, policy: AlertPolicy, actor: str, action: str, details: dict[str, Any]) -> None:
        entry = AuditEntry(
            project_id=policy.project_id,
            actor=actor,
            action=action,
            subject_type="policy",
            subject_id=policy.id,
            details=details,
        )
        await audit_services.record(self.session, entry)


# --- alerts -----------------------------------------------------------------------------------------


def _alert_out(alert: Alert, policy_name: str, silences: ActiveSilences) -> AlertOut:
    silenced_by = None
    if alert.state != AlertState.INACTIVE.value:
        silenced_by = silences.silencing(alert.project_id, alert.labels)
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
        silenced_by=silenced_by,
        inhibited_by=alert.inhibited_by,
        last_evaluated_at=alert.last_evaluated_at,
        updated_at=alert.updated_at,
    )


class AlertService(SQLAlchemyAsyncRepositoryService[Alert]):
    """Alert instances of one project: reads (with the silence in force now), acks, the audit view."""

    repository_type = AlertRepository
    repository: AlertRepository

    @property
    def session(self) -> AsyncSession:
        """The request's (or unit of work's) session: these services are always built on one."""
        return cast("AsyncSession", self.repository.session)

    async def list_active(self, project_id: UUID) -> list[AlertOut]:
        rows = await self.repository.page(project_id, states=ACTIVE_STATES)
        silences = await self._silences_now(project_id)
        return [_alert_out(alert, name, silences) for alert, name in rows]

    async def preview_silence(self, project_id: UUID, data: SilenceIn) -> AlertPage:
        """The active (pending or firing) alerts the silence would hold now: the body is validated as at
        creation and matched by the same code the evaluator uses (``ActiveSilences``)."""
        matchers = silence_matchers(data)
        silence_window(data, utcnow())
        would = ActiveSilences({project_id: [(uuid4(), matchers)]})
        rows = await self.repository.page(project_id, states=ACTIVE_STATES)
        silences = await self._silences_now(project_id)
        return AlertPage(
            items=[
                _alert_out(alert, name, silences)
                for alert, name in rows
                if would.silencing(project_id, alert.labels) is not None
            ]
        )

    async def history(
        self,
        project_id: UUID,
        *,
        state: str | None,
        policy_id: UUID | None,
        severity: str | None,
        since: str | None,
        until: str | None,
        cursor: str | None,
        limit: int,
    ) -> AlertPage:
        """Alert instances that have been active at least once, newest activation first.

        ``since``/``until`` bound the activation time (``started_at``); each transition is also in the
        audit trail (``/alerts/audit?subject_id=<alert id>``).
        """
        if state is not None and state not in STATES:
            raise BadRequestError(f"state {state!r} is not one of {', '.join(STATES)}.")
        if severity is not None and severity not in ALERT_SEVERITIES:
            raise BadRequestError(f"severity {severity!r} is not one of {', '.join(ALERT_SEVERITIES)}.")
        start, end = time_range(since, until)
        rows = await self.repository.page(
            project_id,
            states=[state] if state else None,
            policy_id=policy_id,
            severity=severity,
            since=start,
            until=end,
            after=ALERT_HISTORY_KEYSET.after(cursor),
            limit=ALERT_HISTORY_KEYSET.fetch_size(limit),
            activated_only=True,
        )
        page, next_cursor = ALERT_HISTORY_KEYSET.page(rows, limit)
        silences = await self._silences_now(project_id)
        return AlertPage(
            items=[_alert_out(alert, name, silences) for alert, name in page], next_cursor=next_cursor
        )

    async def get_alert(self, project_id: UUID, alert_id: UUID) -> AlertOut:
        alert, name = await self._alert_or_404(project_id, alert_id)
        return _alert_out(alert, name, await self._silences_now(project_id))

    async def ack(self, project_id: UUID, alert_id: UUID, *, actor: str) -> AlertOut:
        """Acknowledge an active (pending or firing) alert; the ack lasts for this activation cycle."""
        alert, name = await self._alert_or_404(project_id, alert_id)
        if alert.state not in ACTIVE_STATES:
            raise ConflictError(
                f"Only pending or firing alerts can be acknowledged; this one is {alert.state}."
            )
        details = {"state": alert.state, "labels": alert.labels, "policy_name": name}
        announce = (
            alert.acked_by is None
            and alert.state == AlertState.FIRING.value
            and alert.silenced_by is None
            and alert.inhibited_by is None
        )
        out = await self._set_ack(
            alert, name, acked_by=actor, actor=actor, action="alert.ack", details=details
        )
        if announce:  # receivers heard it fire (not pending, silenced or inhibited): they hear of the ack too
            await notification_outbox.add_event(
                self.session,
                project_id=alert.project_id,
                event_type="ALERT_ACKNOWLEDGED",
                severity=alert.severity,
                payload={
                    "alert_id": str(alert.id),
                    "policy_id": str(alert.policy_id),
                    "policy_name": name,
                    "state": alert.state,
                    "labels": alert.labels,
                    "value": alert.value,
                    "acked_by": actor,
                    "acked_at": alert.acked_at.isoformat() if alert.acked_at else None,
                },
            )
        return out

    async def unack(self, project_id: UUID, alert_id: UUID, *, actor: str) -> AlertOut:
        """Remove an acknowledgement (idempotent; audited either way, with who had acked)."""
        alert, name = await self._alert_or_404(project_id, alert_id)
        details = {"state": alert.state, "previously_acked_by": alert.acked_by, "policy_name": name}
        return await self._set_ack(
            alert, name, acked_by=None, actor=actor, action="alert.unack", details=details
        )

    async def audit(
        self,
        project_id: UUID,
        *,
        action: str | None,
        actor: str | None,
        subject_type: str | None,
        subject_id: UUID | None,
        since: str | None,
        until: str | None,
        cursor: str | None,
        limit: int,
    ) -> AuditPage:
        """The alerting part of the audit trail (``AUDIT_SUBJECTS``), newest first."""
        start, end = time_range(since, until)
        rows, next_cursor = await audit_services.page(
            self.session,
            project_id,
            subject_types=AUDIT_SUBJECTS,
            action=action,
            actor=actor,
            subject_type=subject_type,
            subject_id=subject_id,
            since=start,
            until=end,
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

    async def _silences_now(self, project_id: UUID) -> ActiveSilences:
        return await ActiveSilences.load(self.session, [project_id], utcnow())

    async def _alert_or_404(self, project_id: UUID, alert_id: UUID) -> tuple[Alert, str]:
        found = await self.repository.one_with_policy_name(project_id, alert_id)
        if found is None:
            raise NotFoundError("Alert not found.")
        return found

    async def _set_ack(
        self,
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
        await self.session.flush()
        entry = AuditEntry(
            project_id=alert.project_id,
            actor=actor,
            action=action,
            subject_type="alert",
            subject_id=alert.id,
            details=details,
            at=now,
        )
        await audit_services.record(self.session, entry)
        return _alert_out(alert, policy_name, await self._silences_now(alert.project_id))
