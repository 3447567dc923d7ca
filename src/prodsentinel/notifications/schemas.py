"""Request and response bodies of ``/api/v1/notifications``. Channel secrets are write-only."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal
from uuid import UUID

import msgspec

from prodsentinel.alerts.matchers import MatchOp
from prodsentinel.lib import vocabulary
from prodsentinel.lib.structs import Struct
from prodsentinel.lib.vocabulary import EventTypeName, SeverityName

__all__ = (
    "AttemptOut",
    "AttemptPage",
    "ChannelCreate",
    "ChannelHealth",
    "ChannelList",
    "ChannelOut",
    "ChannelTestOut",
    "ChannelUpdate",
    "DispatchOut",
    "ErrorCodeCount",
    "EscalationCreate",
    "EscalationList",
    "EscalationOut",
    "EscalationStepIn",
    "EscalationUpdate",
    "LatencyOut",
    "MatcherIn",
    "OutboxItemOut",
    "OutboxPage",
    "ReplayDeadOut",
    "StatsOut",
    "TrendBucket",
    "TrendsOut",
)


#: The channel fields' constraints, declared so the OpenAPI schema publishes them and Litestar answers
#: the 422 (``lib.errors``: a JSON body of the wrong shape). What a schema cannot say (the URL's host
#: decodes, IDNA included; ``secret`` and ``secret_env`` exclude each other) ``notifications.channels``
#: checks in code.
ChannelName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=100, pattern=r"\S", description="Unique in the project.")
]
#: Absolute http(s) URL with a host, no whitespace (any letter case in the scheme).
WebhookUrl = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=2000,
        pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#]+([/?#]\S*)?$",
        extra_json_schema={"extra": {"format": "uri"}},
    ),
]
#: Inline HMAC key; omit it (and ``secret_env``) for unsigned deliveries.
Secret = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
#: The name of an environment variable the sending worker reads at send time.
SecretEnv = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]

if TYPE_CHECKING:
    ChannelKind = str
    SigningName = str
else:
    # Derived from lib.vocabulary, never restated.
    ChannelKind = Literal[vocabulary.CHANNEL_KINDS]
    SigningName = Literal[vocabulary.WEBHOOK_SIGNINGS]

#: One recipient of an ``email`` channel.
EmailAddress = Annotated[str, msgspec.Meta(max_length=254, pattern=r"^[^@\s<>,;]+@[^@\s<>,;]+$")]
#: The recipients of an ``email`` channel.
EmailList = Annotated[list[EmailAddress], msgspec.Meta(min_length=1, max_length=50)]
#: A Slack channel id or name (``C0123ABC``, ``#alerts``).
SlackChannel = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^\S+$")]


class MatcherIn(Struct):
    """One routing matcher (SPEC §7's matcher objects): ``=``, ``!=``, ``=~``, ``!~`` (anchored regex);
    a label the event lacks counts as the empty string."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    op: MatchOp
    value: Annotated[str, msgspec.Meta(max_length=1024)]


#: A label name to group by; ``...`` groups by every label (one group per label set).
GroupLabel = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^\S+$")]
#: Grouping (SPEC §13): the labels whose equal values make a group (duplicates are dropped).
GroupBy = Annotated[list[GroupLabel], msgspec.Meta(min_length=1, max_length=30)]
#: Seconds a new group waits for more alerts before its first notification.
GroupWait = Annotated[int, msgspec.Meta(ge=0, le=86400)]
#: Seconds at least between two notifications of a group whose alerts changed.
GroupInterval = Annotated[int, msgspec.Meta(ge=1, le=86400)]
#: Seconds after which a group whose alerts still fire is notified again.
RepeatInterval = Annotated[int, msgspec.Meta(ge=1, le=2592000)]


#: A non-empty subset of the outbox event types (duplicates are dropped).
EventTypes = Annotated[list[EventTypeName], msgspec.Meta(min_length=1)]


class ChannelCreate(Struct):
    """A channel (SPEC §8, §12). Fields per ``kind`` (others must be absent):

    - ``webhook``: ``url``; ``secret`` or ``secret_env`` (an environment variable read by the sending
      worker at send time), not both, neither means unsigned; ``signing`` ``prodsentinel`` or
      ``standard`` (Standard Webhooks: ``whsec_`` secrets, space-separated for rotation).
    - ``slack``: an incoming-webhook ``url``, or ``token``/``token_env`` and ``slack_channel``.
    - ``email``: ``to`` (needs ``PRODSENTINEL_SMTP_HOST``).
    - ``pagerduty``: ``routing_key`` or ``routing_key_env``.
    - ``teams``: a Workflows webhook ``url``.

    Every kind: ``matchers`` (routing over the event's labels), ``min_severity``, ``event_types``.
    Credentials are write-only.
    """

    name: ChannelName
    kind: ChannelKind = "webhook"
    url: WebhookUrl | None = None
    secret: Secret | None = None
    secret_env: SecretEnv | None = None
    signing: SigningName = "prodsentinel"
    token: Secret | None = None
    token_env: SecretEnv | None = None
    slack_channel: SlackChannel | None = None
    to: EmailList | None = None
    routing_key: Secret | None = None
    routing_key_env: SecretEnv | None = None
    #: Every matcher must hold over the event's labels; null or absent: every event passes.
    matchers: list[MatcherIn] | None = None
    min_severity: SeverityName = "low"
    #: Outbox event names (ALERT_FIRING, ...); null or absent: all events.
    event_types: EventTypes | None = None
    enabled: bool = True
    #: Opt-in grouping of ALERT_FIRING/ALERT_RESOLVED (SPEC §13); null or absent: one item per event.
    group_by: GroupBy | None = None
    group_wait: GroupWait = 30
    group_interval: GroupInterval = 300
    repeat_interval: RepeatInterval = 14400


class ChannelUpdate(Struct):
    """Partial update: absent fields are kept; a credential set to null removes it; ``kind`` is fixed.
    ``{"enabled": true}`` re-enables a channel that endpoint health disabled."""

    name: ChannelName | msgspec.UnsetType = msgspec.UNSET
    url: WebhookUrl | msgspec.UnsetType | None = msgspec.UNSET
    secret: Secret | msgspec.UnsetType | None = msgspec.UNSET
    secret_env: SecretEnv | msgspec.UnsetType | None = msgspec.UNSET
    signing: SigningName | msgspec.UnsetType = msgspec.UNSET
    token: Secret | msgspec.UnsetType | None = msgspec.UNSET
    token_env: SecretEnv | msgspec.UnsetType | None = msgspec.UNSET
    slack_channel: SlackChannel | msgspec.UnsetType | None = msgspec.UNSET
    to: EmailList | msgspec.UnsetType | None = msgspec.UNSET
    routing_key: Secret | msgspec.UnsetType | None = msgspec.UNSET
    routing_key_env: SecretEnv | msgspec.UnsetType | None = msgspec.UNSET
    matchers: list[MatcherIn] | msgspec.UnsetType | None = msgspec.UNSET
    min_severity: SeverityName | msgspec.UnsetType = msgspec.UNSET
    event_types: EventTypes | msgspec.UnsetType | None = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET
    group_by: GroupBy | msgspec.UnsetType | None = msgspec.UNSET
    group_wait: GroupWait | msgspec.UnsetType = msgspec.UNSET
    group_interval: GroupInterval | msgspec.UnsetType = msgspec.UNSET
    repeat_interval: RepeatInterval | msgspec.UnsetType = msgspec.UNSET


class ErrorCodeCount(Struct):
    code: str
    count: int


class ChannelHealth(Struct):
    """Delivery health over the last ``window_seconds`` (last success/failure: ever).

    ``status``: ``unknown`` (no attempt in the window), ``failing`` (the latest attempt failed and
    none succeeded after it), ``degraded`` (success rate below 95 %), else ``healthy``.
    """

    status: str
    window_seconds: int
    attempts: int
    succeeded: int
    success_rate: float | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error_code: str | None
    top_error_codes: list[ErrorCodeCount]
    pending: int
    dead: int


class ChannelOut(Struct):
    """A channel as returned by every endpoint: no credential (secret, token, routing key) appears.

    ``url`` of a ``slack`` or ``teams`` channel is shown as scheme and host only (those URLs are
    credentials themselves); any password in a URL is masked.
    """

    id: UUID
    name: str
    kind: ChannelKind
    url: str | None
    #: A credential (secret, token or routing key, inline or from the environment) is set.
    has_secret: bool
    #: ``webhook`` only: the last 4 characters of an inline secret (12+ characters), else ``****``.
    secret_hint: str | None
    secret_env: str | None
    signing: SigningName
    token_env: str | None
    slack_channel: str | None
    to: list[str] | None
    routing_key_env: str | None
    matchers: list[MatcherIn] | None
    min_severity: SeverityName
    event_types: list[EventTypeName]
    enabled: bool
    #: Why endpoint health disabled it (410 Gone, persistent failure); null when enabled.
    disabled_reason: str | None
    disabled_at: datetime | None
    created_at: datetime
    updated_at: datetime
    group_by: list[str] | None = None
    group_wait: int = 30
    group_interval: int = 300
    repeat_interval: int = 14400
    health: ChannelHealth | None = None


class ChannelTestOut(Struct):
    """The TEST event sent through the outbox to one channel."""

    event_id: UUID
    outbox_id: UUID


class ChannelList(Struct):
    items: list[ChannelOut]


class OutboxItemOut(Struct):
    id: UUID
    channel_id: UUID
    channel_name: str
    event_id: UUID
    delivery_id: UUID
    replayed_from_id: UUID | None
    event_type: EventTypeName
    severity: SeverityName
    status: str
    attempts: int
    next_attempt_at: datetime
    locked_until: datetime | None
    last_http_status: int | None
    last_error_code: str | None
    delivered_at: datetime | None
    created_at: datetime
    updated_at: datetime
    payload: dict[str, Any]


class OutboxPage(Struct):
    items: list[OutboxItemOut]
    next_cursor: str | None


class AttemptOut(Struct):
    """One immutable ledger row. ``outcome``: delivered | retry | dead."""

    id: UUID
    outbox_id: UUID
    channel_id: UUID
    delivery_id: UUID
    event_id: UUID
    attempt_number: int
    started_at: datetime
    duration_ms: float
    http_status: int | None
    error_code: str | None
    outcome: str


class AttemptPage(Struct):
    items: list[AttemptOut]
    next_cursor: str | None


class LatencyOut(Struct):
    p50: float | None
    p95: float | None


class StatsOut(Struct):
    """Current outbox state plus ledger figures over the last ``window_seconds``.

    ``success_rate``: delivered / (delivered + dead) items (final outcomes, all time);
    ``attempt_success_rate``: successful / all attempts in the window.
    """

    totals: dict[str, int]
    total: int
    success_rate: float | None
    attempts: int
    attempt_success_rate: float | None
    latency_ms: LatencyOut
    pending: int
    dead: int
    oldest_pending_age_seconds: float | None
    window_seconds: int


class TrendBucket(Struct):
    ts: datetime
    sent: int
    retry: int
    dead: int
    replay: int


class TrendsOut(Struct):
    bucket: str
    since: datetime
    until: datetime
    items: list[TrendBucket]


class DispatchOut(Struct):
    """Counts of one dispatch run. ``lost``: expired claims of dead workers found and re-queued."""

    batches: int
    claimed: int
    delivered: int
    retrying: int
    dead: int
    lost: int
    stale: int


class ReplayDeadOut(Struct):
    count: int
    ids: list[UUID]
    replayed_from_ids: list[UUID]


# --- escalation policies (SPEC §13) -----------------------------------------------------------------

#: Seconds from the start of a round (step 0: 0, then strictly ascending).
StepDelay = Annotated[int, msgspec.Meta(ge=0, le=604800)]


class EscalationStepIn(Struct):
    """One step: who is notified, ``after_seconds`` after the escalation (or its round) started."""

    after_seconds: StepDelay
    channel_ids: Annotated[list[UUID], msgspec.Meta(min_length=1, max_length=20)]


EscalationSteps = Annotated[list[EscalationStepIn], msgspec.Meta(min_length=1, max_length=20)]
#: Further rounds of the steps after the first (0: the steps run once).
EscalationRepeat = Annotated[int, msgspec.Meta(ge=0, le=20)]
#: Seconds between a round's last step and the next round's step 0.
RepeatAfter = Annotated[int, msgspec.Meta(ge=1, le=604800)]


class EscalationCreate(Struct):
    """An escalation policy: while a matching alert fires (or incident is open) and nobody acknowledged
    it, step 0 is notified at once and each later step ``after_seconds`` after the start; ``repeat``
    runs the steps again that many times, each round ``repeat_after_seconds`` after the previous
    round's last step. The channels named in the steps get matching alerts and incidents only
    through the steps. ``matchers`` (SPEC §7) over the event's labels; empty: every alert and incident."""

    name: ChannelName
    steps: EscalationSteps
    matchers: list[MatcherIn] = msgspec.field(default_factory=list)
    repeat: EscalationRepeat = 0
    repeat_after_seconds: RepeatAfter = 300


class EscalationUpdate(Struct):
    """Partial update: absent fields are kept. Steps already scheduled keep the plan they were made
    with; the change applies to the next firing or opening."""

    name: ChannelName | msgspec.UnsetType = msgspec.UNSET
    steps: EscalationSteps | msgspec.UnsetType = msgspec.UNSET
    matchers: list[MatcherIn] | msgspec.UnsetType = msgspec.UNSET
    repeat: EscalationRepeat | msgspec.UnsetType = msgspec.UNSET
    repeat_after_seconds: RepeatAfter | msgspec.UnsetType = msgspec.UNSET


class EscalationOut(Struct):
    id: UUID
    name: str
    matchers: list[MatcherIn]
    steps: list[EscalationStepIn]
    repeat: int
    repeat_after_seconds: int
    created_at: datetime
    updated_at: datetime


class EscalationList(Struct):
    items: list[EscalationOut]
