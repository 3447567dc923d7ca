"""Request and response bodies of ``/api/v1/notifications``. Channel secrets are write-only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec

from prodsentinel.lib.structs import Struct
from prodsentinel.lib.vocabulary import EventTypeName, SeverityName

__all__ = (
    "AttemptOut",
    "AttemptPage",
    "ChannelCreate",
    "ChannelHealth",
    "ChannelList",
    "ChannelOut",
    "ChannelUpdate",
    "DispatchOut",
    "ErrorCodeCount",
    "LatencyOut",
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

EventTypes = Annotated[list[EventTypeName], msgspec.Meta(min_length=1)]


class ChannelCreate(Struct):
    """A webhook channel. Give ``secret`` or ``secret_env`` (the name of an environment variable read
    by the sending worker at send time), not both; neither means unsigned deliveries."""

    name: ChannelName
    url: WebhookUrl
    secret: Secret | None = None
    secret_env: SecretEnv | None = None
    min_severity: SeverityName = "low"
    #: Outbox event names (ALERT_FIRING, ...); null or absent: all events.
    event_types: EventTypes | None = None
    enabled: bool = True


class ChannelUpdate(Struct):
    """Partial update: absent fields are kept; ``secret``/``secret_env`` null removes it."""

    name: ChannelName | msgspec.UnsetType = msgspec.UNSET
    url: WebhookUrl | msgspec.UnsetType = msgspec.UNSET
    secret: Secret | msgspec.UnsetType | None = msgspec.UNSET
    secret_env: SecretEnv | msgspec.UnsetType | None = msgspec.UNSET
    min_severity: SeverityName | msgspec.UnsetType = msgspec.UNSET
    event_types: EventTypes | msgspec.UnsetType | None = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET


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
    """A channel as returned by every endpoint: the secret itself never appears."""

    id: UUID
    name: str
    url: str
    has_secret: bool
    #: The last 4 characters of an inline secret (for secrets of 12+ characters), else ``****``.
    secret_hint: str | None
    secret_env: str | None
    min_severity: SeverityName
    event_types: list[EventTypeName]
    enabled: bool
    created_at: datetime
    updated_at: datetime
    health: ChannelHealth | None = None


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
