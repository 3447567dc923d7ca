"""Notification channels, the transactional outbox and the immutable delivery-attempt ledger."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.base import UUIDv7AuditBase, UUIDv7Base
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import (
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.orm import Mapped, mapped_column

from prodsentinel.lib.models import PlainBase

__all__ = (
    "Channel",
    "ChannelState",
    "DeliveryAttempt",
    "EscalationPolicy",
    "EscalationStep",
    "NotificationCounter",
    "NotificationGroup",
    "NotificationGroupAlert",
    "OutboxItem",
    "OutboxStatus",
)


class OutboxStatus:
    PENDING = "pending"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    RETRYING = "retrying"
    DEAD = "dead"


class Channel(UUIDv7AuditBase):
    """A receiver of one project (SPEC §8, §12). Its credential is kept but never returned.

    ``secret``/``secret_env`` hold the one credential of the channel, whatever its kind calls it: the
    HMAC key of a ``webhook``, the bot ``token`` of a ``slack`` channel, the ``routing_key`` of a
    ``pagerduty`` one (the API names them per kind; ``channels.py`` maps them). One pair of columns
    keeps the claim's SQL and the send-time ``*_env`` lookup one code path for every kind.
    """

    __tablename__ = "notification_channels"
    # Keys lead with project_id: the table is distributed by it (docs/scaling.md, Citus).
    __table_args__ = (PrimaryKeyConstraint("project_id", "id"), UniqueConstraint("project_id", "name"))

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16), default="webhook", server_default="webhook")
    #: None for kinds without a URL (email, a Slack bot channel).
    url: Mapped[str | None] = mapped_column(Text, default=None)
    secret: Mapped[str | None] = mapped_column(Text, default=None)
    secret_env: Mapped[str | None] = mapped_column(String(200), default=None)
    #: ``webhook`` only: ``prodsentinel`` (SPEC §8 headers) or ``standard`` (Standard Webhooks).
    signing: Mapped[str] = mapped_column(String(16), default="prodsentinel", server_default="prodsentinel")
    #: ``slack`` with a bot token: the channel to post to.
    slack_channel: Mapped[str | None] = mapped_column(String(200), default=None)
    #: ``email``: the recipients.
    email_to: Mapped[list[str] | None] = mapped_column(ARRAY(Text), default=None)
    #: Routing: §7 matcher objects ``[{"name", "op", "value"}]`` over the event's labels; None: all pass.
    matchers: Mapped[list[dict[str, str]] | None] = mapped_column(JSONB, default=None)
    min_severity: Mapped[str] = mapped_column(String(16), default="low")
    #: Outbox event names this channel receives; None means all.
    event_types: Mapped[list[str] | None] = mapped_column(ARRAY(String(40)), default=None)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    #: Why endpoint health disabled the channel (410, persistent failure); cleared on re-enable.
    disabled_reason: Mapped[str | None] = mapped_column(Text, default=None)
    disabled_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    #: When it was last re-enabled: failures before it do not count towards disabling it again.
    reenabled_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    #: A receiver's ``429``/``503`` + ``Retry-After`` pauses this channel (only) until then.
    throttled_until: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    #: Grouping (SPEC §13): label names; None = one notification per transition (§8).
    group_by: Mapped[list[str] | None] = mapped_column(ARRAY(Text), default=None)
    group_wait: Mapped[int] = mapped_column(Integer, default=30, server_default="30")
    group_interval: Mapped[int] = mapped_column(Integer, default=300, server_default="300")
    repeat_interval: Mapped[int] = mapped_column(Integer, default=14400, server_default="14400")


class ChannelState(PlainBase):
    """What a channel must remember about one alert or incident (its ``subject``) across deliveries.

    The Slack message ``ts`` (later events update that message), the root mail's ``Message-ID`` (later
    mails reply to it), the PagerDuty ``dedup_key``. Written in the transaction that records the
    attempt's result, so a replay or a restarted worker finds it. ``project_id`` (the channel's) leads
    the keys so the row lives on its channel's shard (docs/scaling.md).
    """

    __tablename__ = "notification_channel_state"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "channel_id", "subject"),
        ForeignKeyConstraint(
            ["project_id", "channel_id"],
            ["notification_channels.project_id", "notification_channels.id"],
            ondelete="CASCADE",
        ),
    )

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    channel_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    updated_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))


class OutboxItem(UUIDv7AuditBase):
    """One delivery of one event to one channel, written in the transaction of the state change.

    ``event_id`` is stable per logical transition (the receiver's dedup key); ``delivery_id`` is new for
    each delivery, replays included (``replayed_from_id`` points at the original item).
    """

    __tablename__ = "outbox_items"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "id"),
        UniqueConstraint("project_id", "delivery_id"),
        ForeignKeyConstraint(
            ["project_id", "channel_id"],
            ["notification_channels.project_id", "notification_channels.id"],
            ondelete="CASCADE",
        ),
        Index(
            "ix_outbox_items_due",
            "next_attempt_at",
            postgresql_where=text("status IN ('pending', 'retrying', 'delivering')"),
        ),
        Index("ix_outbox_items_project_created", "project_id", "created_at"),
        Index("ix_outbox_items_event", "event_id"),
        # History (delivered/dead, newest first) and per-status totals of one project.
        Index("ix_outbox_items_project_status_updated", "project_id", "status", "updated_at"),
        # "Was this dead item already replayed?" (replay-dead skips those).
        Index(
            "ix_outbox_items_replayed_from",
            "replayed_from_id",
            postgresql_where=text("replayed_from_id IS NOT NULL"),
        ),
    )

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    channel_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), index=True)
    event_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True))
    delivery_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True))
    replayed_from_id: Mapped[UUID | None] = mapped_column(PG_UUID(as_uuid=True), default=None)
    event_type: Mapped[str] = mapped_column(String(40))
    severity: Mapped[str] = mapped_column(String(16))
    #: ``alert:<id>`` / ``incident:<id>``: the thread this event belongs to (``ChannelState``'s key).
    subject: Mapped[str | None] = mapped_column(String(200), default=None)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    #: While ``delivering``: when the claim expires and the item is due again (crash recovery).
    locked_until: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    last_http_status: Mapped[int | None] = mapped_column(SmallInteger, default=None)
    last_error_code: Mapped[str | None] = mapped_column(String(40), default=None)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)


class DeliveryAttempt(UUIDv7Base):
    """One attempt (an HTTP request or an SMTP transaction); rows are only ever inserted (the ledger)."""

    __tablename__ = "delivery_attempts"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "id"),
        ForeignKeyConstraint(
            ["project_id", "outbox_id"], ["outbox_items.project_id", "outbox_items.id"], ondelete="CASCADE"
        ),
        Index("ix_delivery_attempts_project_started", "project_id", "started_at"),
        # Channel health: last success/failure and recent error codes per channel.
        Index("ix_delivery_attempts_channel_started", "channel_id", "started_at"),
    )

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    outbox_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), index=True)
    channel_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), index=True)
    delivery_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True))
    event_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True))
    attempt_number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    duration_ms: Mapped[float] = mapped_column(Double)
    http_status: Mapped[int | None] = mapped_column(SmallInteger, default=None)
    error_code: Mapped[str | None] = mapped_column(String(40), default=None)
    #: delivered | retry | dead (``error_code`` ``worker_lost``: the worker died mid-send; no response known)
    outcome: Mapped[str] = mapped_column(String(16))


# --- grouping and escalation (SPEC §13) -------------------------------------------------------------


class NotificationGroup(PlainBase):
    """One aggregation group of a grouped channel: alerts with equal values of its ``group_by`` labels.

    Alertmanager's ``aggrGroup`` plus its notification-log entry in one row: ``next_flush_at`` is the
    group's timer (``group_wait`` after creation, then every ``group_interval``), ``notified_firing`` /
    ``notified_resolved`` / ``last_notified_at`` what the last notification said (the dedup stage's
    input). ``sequence`` counts notifications: (id, sequence) names each one, so its event id is stable.
    """

    __tablename__ = "notification_groups"
    __table_args__ = (
        UniqueConstraint("project_id", "channel_id", "group_key"),
        ForeignKeyConstraint(
            ["project_id", "channel_id"],
            ["notification_channels.project_id", "notification_channels.id"],
            ondelete="CASCADE",
        ),
        Index("ix_notification_groups_due", "next_flush_at"),
    )

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    channel_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True))
    #: Canonical JSON of the group labels (the unique key within a channel).
    group_key: Mapped[str] = mapped_column(Text)
    group_labels: Mapped[dict[str, str]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    next_flush_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    last_notified_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    notified_firing: Mapped[list[UUID]] = mapped_column(ARRAY(PG_UUID(as_uuid=True)), default=list)
    notified_resolved: Mapped[list[UUID]] = mapped_column(ARRAY(PG_UUID(as_uuid=True)), default=list)
    sequence: Mapped[int] = mapped_column(Integer, default=0)


class NotificationGroupAlert(PlainBase):
    """An alert's latest state within one group (its last event's payload); a resolved alert leaves the
    group at the first flush after its resolution (as in Alertmanager)."""

    __tablename__ = "notification_group_alerts"
    __table_args__ = (
        ForeignKeyConstraint(
            ["project_id", "group_id"],
            ["notification_groups.project_id", "notification_groups.id"],
            ondelete="CASCADE",
        ),
    )

    project_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    group_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    alert_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    firing: Mapped[bool] = mapped_column(Boolean)
    severity: Mapped[str] = mapped_column(String(16))
    alert: Mapped[dict[str, Any]] = mapped_column(JSONB)
    updated_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))


class EscalationPolicy(PlainBase):
    """Who is told, and when, while an alert fires or an incident is open and nobody acknowledged it.

    ``steps``: ``[{"after_seconds", "channel_ids"}]``, ``after_seconds`` counted from the start of the
    round (step 0: 0). ``repeat``: further rounds, each ``repeat_after_seconds`` after the previous
    round's last step.
    """

    __tablename__ = "escalation_policies"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    matchers: Mapped[list[dict[str, str]]] = mapped_column(JSONB)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    repeat: Mapped[int] = mapped_column(Integer, default=0)
    repeat_after_seconds: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))


class EscalationStep(PlainBase):
    """One run of one escalation for one alert or incident (its ``subject``): its next step.

    Written by the transaction of the firing/opening event (whose step 0 goes out in that same
    transaction), holding the next step (``step``, ``round``, ``due_at``, ``channel_ids``) and the
    ``schedule`` of the later ones. The escalation cron sends the step when due and, in the same
    transaction, moves the row on to the next one (``sent`` after the last); an acknowledgement, a
    resolution or a re-fire sets ``cancelled``. One row per run, whatever its number of steps.
    """

    __tablename__ = "escalation_steps"
    __table_args__ = (
        ForeignKeyConstraint(
            ["project_id", "policy_id"],
            ["escalation_policies.project_id", "escalation_policies.id"],
            ondelete="CASCADE",
        ),
        Index("ix_escalation_steps_due", "due_at", postgresql_where=text("status = 'pending'")),
        Index(
            "ix_escalation_steps_subject",
            "project_id",
            "subject",
            postgresql_where=text("status = 'pending'"),
        ),
    )

    project_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    policy_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True))
    subject: Mapped[str] = mapped_column(String(200))
    step: Mapped[int] = mapped_column(SmallInteger)
    round: Mapped[int] = mapped_column(SmallInteger)
    due_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    #: pending | sent | cancelled
    status: Mapped[str] = mapped_column(String(16), default="pending")
    channel_ids: Mapped[list[UUID]] = mapped_column(ARRAY(PG_UUID(as_uuid=True)))
    #: The steps after this one: ``[{"step", "round", "due_at", "channel_ids"}]``.
    schedule: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    event_type: Mapped[str] = mapped_column(String(40))
    severity: Mapped[str] = mapped_column(String(16))
    #: The body of the event that started the escalation (the step notification adds ``escalation``).
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)


class NotificationCounter(PlainBase):
    """Monotonic counters kept in the database so ``/metrics`` is right with many workers:
    ``grouped`` by reason, ``escalation_step`` by step index."""

    __tablename__ = "notification_counters"

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    label: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)
