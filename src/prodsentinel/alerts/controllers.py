"""HTTP surface of alerting (SPEC §7, §13): policies, alerts, silences, inhibit rules, audit and manual
evaluation.

Thin: authorise (guards), call one service method, return a Struct. The services are built on the
request's ``db_session`` (Litestar DI), which commits when the handler succeeds (advanced-alchemy
autocommit) and then runs what the services registered after the commit (``lib.after_commit``);
evaluation owns its own unit of work.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Controller, Router, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import Body, Parameter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.alerts.evaluator import run_evaluation
from prodsentinel.alerts.inhibit_rules import InhibitRuleService
from prodsentinel.alerts.schemas import (
    AlertOut,
    AlertPage,
    AuditPage,
    EvaluationSummary,
    InhibitRuleIn,
    InhibitRuleList,
    InhibitRuleOut,
    PolicyIn,
    PolicyList,
    PolicyOut,
    PolicyPatch,
    SilenceIn,
    SilenceOut,
    SilencePage,
)
from prodsentinel.alerts.services import STATES, AlertService, PolicyService
from prodsentinel.alerts.silences import STATUSES, SilenceService
from prodsentinel.auth.guards import requires_scope
from prodsentinel.auth.scopes import Principal, Scope
from prodsentinel.lib.database import SESSION_MAKER_STATE_KEY
from prodsentinel.lib.pagination import DEFAULT_LIMIT, Cursor, Limit, Since, Until
from prodsentinel.lib.vocabulary import ALERT_SEVERITIES
from prodsentinel.settings import Settings

__all__ = (
    "AlertController",
    "AuditController",
    "InhibitRuleController",
    "PolicyController",
    "SilenceController",
    "alerts_router",
)

READ = [requires_scope(Scope.READ)]
OPERATE = [requires_scope(Scope.OPERATE)]
ADMIN = [requires_scope(Scope.ADMIN)]


def _policy_fields(data: PolicyIn) -> dict[str, Any]:
    return {name: getattr(data, name) for name in data.__struct_fields__}


async def provide_policy_service(db_session: AsyncSession) -> PolicyService:
    return PolicyService(session=db_session)


async def provide_alert_service(db_session: AsyncSession) -> AlertService:
    return AlertService(session=db_session)


async def provide_silence_service(db_session: AsyncSession) -> SilenceService:
    return SilenceService(session=db_session)


async def provide_inhibit_rule_service(db_session: AsyncSession) -> InhibitRuleService:
    return InhibitRuleService(session=db_session)


class PolicyController(Controller):
    """Alert policies: read with scope read; create, update and delete with admin."""

    path = "/policies"
    tags = ["alerts"]
    dependencies = {"policies": Provide(provide_policy_service)}

    @get("/", guards=READ, summary="List the project's alert policies")
    async def list_policies(self, policies: PolicyService, principal: Principal) -> PolicyList:
        return PolicyList(items=await policies.list_policies(principal.project_id))

    @get("/{policy_id:uuid}", guards=READ, summary="Get one alert policy")
    async def get_policy(self, policies: PolicyService, principal: Principal, policy_id: UUID) -> PolicyOut:
        return await policies.get_policy(principal.project_id, policy_id)

    @post("/", guards=ADMIN, summary="Create an alert policy (flat object, SPEC §7)")
    async def create_policy(
        self, policies: PolicyService, principal: Principal, data: PolicyIn = Body()
    ) -> PolicyOut:
        return await policies.create_policy(principal.project_id, _policy_fields(data), actor=principal.actor)

    @patch("/{policy_id:uuid}", guards=ADMIN, summary="Update an alert policy (partial)")
    async def update_policy(
        self, policies: PolicyService, principal: Principal, policy_id: UUID, data: PolicyPatch = Body()
    ) -> PolicyOut:
        return await policies.update_policy(
            principal.project_id, policy_id, data.given(), actor=principal.actor
        )

    @delete("/{policy_id:uuid}", guards=ADMIN, summary="Delete an alert policy and its alerts")
    async def delete_policy(self, policies: PolicyService, principal: Principal, policy_id: UUID) -> None:
        await policies.delete_policy(principal.project_id, policy_id, actor=principal.actor)


class SilenceController(Controller):
    """Silences with Alertmanager matcher semantics."""

    path = "/silences"
    tags = ["alerts"]
    dependencies = {"silences": Provide(provide_silence_service), "alerts": Provide(provide_alert_service)}

    @get("/", guards=READ, summary="List silences (newest first)")
    async def list_silences(
        self,
        silences: SilenceService,
        principal: Principal,
        status: str | None = Parameter(
            default=None, description=" | ".join(STATUSES), schema_extra={"enum": list(STATUSES)}
        ),
        cursor: Cursor = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> SilencePage:
        return await silences.page(principal.project_id, status=status, cursor=cursor, limit=limit)

    @post("/", guards=OPERATE, summary="Create a silence")
    async def create_silence(
        self, silences: SilenceService, principal: Principal, data: SilenceIn = Body()
    ) -> SilenceOut:
        return await silences.create_silence(principal.project_id, data, actor=principal.actor)

    @post(
        "/preview",
        guards=READ,
        status_code=200,
        summary="The active alerts a silence would hold now",
        description="The body of a silence (validated as at creation); nothing is stored.",
    )
    async def preview_silence(
        self, alerts: AlertService, principal: Principal, data: SilenceIn = Body()
    ) -> AlertPage:
        return await alerts.preview_silence(principal.project_id, data)

    @post("/{silence_id:uuid}/expire", guards=OPERATE, status_code=200, summary="Expire a silence now")
    async def expire_silence(
        self, silences: SilenceService, principal: Principal, silence_id: UUID
    ) -> SilenceOut:
        return await silences.expire(principal.project_id, silence_id, actor=principal.actor)


class InhibitRuleController(Controller):
    """Inhibit rules (SPEC §13): list with read, create and delete with admin."""

    path = "/inhibit-rules"
    tags = ["alerts"]
    dependencies = {"rules": Provide(provide_inhibit_rule_service)}

    @get("/", guards=READ, summary="List the project's inhibit rules (oldest first)")
    async def list_rules(self, rules: InhibitRuleService, principal: Principal) -> InhibitRuleList:
        return InhibitRuleList(items=await rules.list_rules(principal.project_id))

    @post(
        "/",
        guards=ADMIN,
        summary="Create an inhibit rule",
        description="Alertmanager semantics: while an alert matching every source matcher fires, alerts "
        "matching every target matcher with equal values of the `equal` labels (missing = empty) send no "
        "notification; an alert matching both sides is never inhibited by itself. "
        "409 for the same rule twice.",
    )
    async def create_rule(
        self, rules: InhibitRuleService, principal: Principal, data: InhibitRuleIn = Body()
    ) -> InhibitRuleOut:
        return await rules.create_rule(principal.project_id, data, actor=principal.actor)

    @delete(
        "/{rule_id:uuid}",
        guards=ADMIN,
        summary="Delete an inhibit rule",
        description="Alerts it held back are announced at the next evaluation pass.",
    )
    async def delete_rule(self, rules: InhibitRuleService, principal: Principal, rule_id: UUID) -> None:
        await rules.delete_rule(principal.project_id, rule_id, actor=principal.actor)


class AuditController(Controller):
    path = "/audit"
    tags = ["alerts"]
    dependencies = {"alerts": Provide(provide_alert_service)}

    @get("/", guards=READ, summary="Audit trail: state changes, acks, silences, policies, evaluations")
    async def list_audit(
        self,
        alerts: AlertService,
        principal: Principal,
        action: str | None = Parameter(default=None, description="e.g. alert.firing, alert.ack"),
        actor: str | None = None,
        subject_type: str | None = Parameter(
            default=None, description="alert | silence | policy | evaluation | inhibit_rule"
        ),
        subject_id: UUID | None = None,
        since: Since = None,
        until: Until = None,
        cursor: Cursor = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> AuditPage:
        return await alerts.audit(
            principal.project_id,
            action=action,
            actor=actor,
            subject_type=subject_type,
            subject_id=subject_id,
            since=since,
            until=until,
            cursor=cursor,
            limit=limit,
        )


class AlertController(Controller):
    """Alert instances, acknowledgements and manual evaluation."""

    path = "/"
    tags = ["alerts"]
    dependencies = {"alerts": Provide(provide_alert_service)}

    @get("/active", guards=READ, summary="Pending and firing alerts")
    async def active(self, alerts: AlertService, principal: Principal) -> AlertPage:
        return AlertPage(items=await alerts.list_active(principal.project_id))

    @get(
        "/history",
        guards=READ,
        summary="Alerts that have been active, newest activation first",
        description="`since`/`until` bound the activation time (`started_at`).",
    )
    async def history(
        self,
        alerts: AlertService,
        principal: Principal,
        alert_state: str | None = Parameter(
            query="state",
            default=None,
            description=" | ".join(STATES),
            schema_extra={"enum": list(STATES)},
        ),
        policy_id: UUID | None = None,
        severity: str | None = Parameter(
            default=None,
            description=" | ".join(sev.value for sev in ALERT_SEVERITIES),
            schema_extra={"enum": [sev.value for sev in ALERT_SEVERITIES]},
        ),
        since: Since = None,
        until: Until = None,
        cursor: Cursor = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> AlertPage:
        return await alerts.history(
            principal.project_id,
            state=alert_state,
            policy_id=policy_id,
            severity=severity,
            since=since,
            until=until,
            cursor=cursor,
            limit=limit,
        )

    @get("/{alert_id:uuid}", guards=READ, summary="Get one alert")
    async def get_alert(self, alerts: AlertService, principal: Principal, alert_id: UUID) -> AlertOut:
        return await alerts.get_alert(principal.project_id, alert_id)

    @post("/{alert_id:uuid}/ack", guards=OPERATE, status_code=200, summary="Acknowledge an active alert")
    async def ack(self, alerts: AlertService, principal: Principal, alert_id: UUID) -> AlertOut:
        return await alerts.ack(principal.project_id, alert_id, actor=principal.actor)

    @post("/{alert_id:uuid}/unack", guards=OPERATE, status_code=200, summary="Remove an acknowledgement")
    async def unack(self, alerts: AlertService, principal: Principal, alert_id: UUID) -> AlertOut:
        return await alerts.unack(principal.project_id, alert_id, actor=principal.actor)

    @post("/evaluate", guards=ADMIN, status_code=200, summary="Evaluate the project's policies now")
    async def evaluate(self, state: State, principal: Principal) -> EvaluationSummary:
        session_maker: async_sessionmaker[AsyncSession] = state[SESSION_MAKER_STATE_KEY]
        settings: Settings = state["settings"]
        return await run_evaluation(
            session_maker,
            interval_seconds=settings.alerts_interval_seconds,
            actor=principal.actor,
            project_id=principal.project_id,
            manual=True,
        )


alerts_router = Router(
    path="/api/v1/alerts",
    route_handlers=[
        PolicyController,
        SilenceController,
        InhibitRuleController,
        AuditController,
        AlertController,
    ],
)
