"""Wire format of the alerting API (SPEC §7, §13): flat policies, alerts, silences, inhibit rules, audit
rows."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal
from uuid import UUID

import msgspec

from prodsentinel.alerts.evaluation import Operator
from prodsentinel.alerts.matchers import MatchOp
from prodsentinel.alerts.policies import AGGS, KINDS
from prodsentinel.lib.structs import Struct
from prodsentinel.lib.vocabulary import AlertSeverityName, SeverityName

# The published enums are built from the tuples the service checks (alerts.policies), so the schema
# and the code accept exactly the same values; type checkers see ``str``.
if TYPE_CHECKING:
    KindName = str
    AggName = str
else:
    KindName = Literal[KINDS]
    AggName = Literal[AGGS]

__all__ = (
    "AlertOut",
    "AlertPage",
    "AuditOut",
    "AuditPage",
    "EvaluationSummary",
    "InhibitRuleIn",
    "InhibitRuleList",
    "InhibitRuleOut",
    "MatcherIn",
    "PolicyIn",
    "PolicyList",
    "PolicyOut",
    "PolicyPatch",
    "SilenceIn",
    "SilenceOut",
    "SilencePage",
)


class PolicyIn(Struct):
    """A policy as created. Everything is optional at this layer on purpose: the service validates
    the whole object at once so a missing field or an unknown kind is a 422 with one clear sentence."""

    name: str | None = None
    kind: KindName | None = None
    severity: AlertSeverityName | None = None
    for_seconds: int | None = None
    window_seconds: int | None = None
    operator: Operator | None = None
    threshold: float | None = None
    labels: dict[str, str] | None = None
    enabled: bool | None = None
    service: str | None = None
    level: str | None = None
    q: str | None = None
    metric: str | None = None
    agg: AggName | None = None
    match_labels: dict[str, str] | None = None
    min_severity: SeverityName | None = None


class PolicyPatch(Struct):
    """A partial update: absent fields keep their value; ``null`` resets a field to its default."""

    name: str | msgspec.UnsetType | None = msgspec.UNSET
    kind: KindName | msgspec.UnsetType | None = msgspec.UNSET
    severity: AlertSeverityName | msgspec.UnsetType | None = msgspec.UNSET
    for_seconds: int | msgspec.UnsetType | None = msgspec.UNSET
    window_seconds: int | msgspec.UnsetType | None = msgspec.UNSET
    operator: Operator | msgspec.UnsetType | None = msgspec.UNSET
    threshold: float | msgspec.UnsetType | None = msgspec.UNSET
    labels: dict[str, str] | msgspec.UnsetType | None = msgspec.UNSET
    enabled: bool | msgspec.UnsetType | None = msgspec.UNSET
    service: str | msgspec.UnsetType | None = msgspec.UNSET
    level: str | msgspec.UnsetType | None = msgspec.UNSET
    q: str | msgspec.UnsetType | None = msgspec.UNSET
    metric: str | msgspec.UnsetType | None = msgspec.UNSET
    agg: AggName | msgspec.UnsetType | None = msgspec.UNSET
    match_labels: dict[str, str] | msgspec.UnsetType | None = msgspec.UNSET
    min_severity: SeverityName | msgspec.UnsetType | None = msgspec.UNSET

    def given(self) -> dict[str, Any]:
        """The fields the client sent (``null`` included)."""
        return {
            name: value
            for name in self.__struct_fields__
            if (value := getattr(self, name)) is not msgspec.UNSET
        }


class PolicyOut(Struct, omit_defaults=True):
    """A stored policy, flat. Per-kind fields appear for the policy's kind only (``null`` when unset)."""

    id: UUID
    name: str
    kind: str
    severity: str
    for_seconds: int
    window_seconds: int
    operator: str
    threshold: float
    labels: dict[str, str]
    enabled: bool
    created_at: datetime
    updated_at: datetime
    service: str | msgspec.UnsetType | None = msgspec.UNSET
    level: str | msgspec.UnsetType | None = msgspec.UNSET
    q: str | msgspec.UnsetType | None = msgspec.UNSET
    metric: str | msgspec.UnsetType | None = msgspec.UNSET
    agg: str | msgspec.UnsetType | None = msgspec.UNSET
    match_labels: dict[str, str] | msgspec.UnsetType | None = msgspec.UNSET
    min_severity: str | msgspec.UnsetType | None = msgspec.UNSET


class PolicyList(Struct):
    items: list[PolicyOut]


class AlertOut(Struct):
    """One alert instance (per policy and label set); ``silenced_by`` is the silence active now,
    ``inhibited_by`` the inhibit rule holding back its ALERT_FIRING (null once it is announced)."""

    id: UUID
    policy_id: UUID
    policy_name: str
    labels: dict[str, str]
    state: str
    severity: str
    value: float | None
    started_at: datetime | None
    fired_at: datetime | None
    resolved_at: datetime | None
    acked_by: str | None
    acked_at: datetime | None
    silenced_by: UUID | None
    inhibited_by: UUID | None
    last_evaluated_at: datetime | None
    updated_at: datetime


class AlertPage(Struct):
    items: list[AlertOut]
    next_cursor: str | None = None


class MatcherIn(Struct):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    op: MatchOp
    value: str


class SilenceIn(Struct):
    """``starts_at`` defaults to now; ``ends_at`` must be after it and in the future."""

    matchers: list[MatcherIn]
    ends_at: datetime
    starts_at: datetime | None = None
    comment: str = ""


LABEL_NAME_PATTERN = "^[A-Za-z_][A-Za-z0-9_]*$"
#: A label name as an alert carries it (the policies' label rule).
LabelName = Annotated[str, msgspec.Meta(pattern=LABEL_NAME_PATTERN, min_length=1, max_length=100)]
#: Litestar publishes no constraint of a list's items, so the ``equal`` list repeats them for OpenAPI.
_LABEL_NAME_ITEMS = {"type": "string", "pattern": LABEL_NAME_PATTERN, "minLength": 1, "maxLength": 100}
_EQUAL_META = msgspec.Meta(max_length=50, extra_json_schema={"extra": {"items": _LABEL_NAME_ITEMS}})
#: One side of an inhibit rule: at least one matcher (a side may match the empty string, unlike a silence).
RuleMatchers = Annotated[list[MatcherIn], msgspec.Meta(min_length=1, max_length=50)]


class InhibitRuleIn(Struct):
    """SPEC §13: while an alert matching every ``source_matchers`` fires, alerts matching every
    ``target_matchers`` with the same values of the ``equal`` labels send no notification."""

    source_matchers: RuleMatchers
    target_matchers: RuleMatchers
    equal: Annotated[list[LabelName], _EQUAL_META] = msgspec.field(default_factory=list)


class InhibitRuleOut(Struct):
    id: UUID
    source_matchers: list[MatcherIn]
    target_matchers: list[MatcherIn]
    equal: list[str]
    origin: Literal["api", "file"]
    created_by: str
    created_at: datetime


class InhibitRuleList(Struct):
    items: list[InhibitRuleOut]


class SilenceOut(Struct):
    id: UUID
    matchers: list[MatcherIn]
    starts_at: datetime
    ends_at: datetime
    comment: str
    created_by: str
    status: str
    expired_at: datetime | None
    created_at: datetime


class SilencePage(Struct):
    items: list[SilenceOut]
    next_cursor: str | None = None


class AuditOut(Struct):
    id: UUID
    at: datetime
    actor: str
    action: str
    subject_type: str
    subject_id: UUID | None
    details: dict[str, Any]


class AuditPage(Struct):
    items: list[AuditOut]
    next_cursor: str | None = None


class EvaluationSummary(Struct):
    """What one evaluation pass did. ``skipped``: another evaluator held the lease."""

    skipped: bool
    evaluated: int = 0
    transitions: int = 0
    fired: int = 0
    resolved: int = 0
    notified: int = 0
    duration_ms: float = 0.0
    evaluated_at: datetime | None = None
