"""SQL of the alerting domain's own tables: policies, alert instances, silences and inhibit rules.

One repository per model (advanced-alchemy), each with its hand-written queries as methods. The
per-kind value SQL of evaluation reads the signal tables, not these, and lives in
:mod:`prodsentinel.alerts.value_queries`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import Select, and_, delete, insert, or_, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from uuid_utils.compat import uuid7

from prodsentinel.alerts.evaluation import AlertState
from prodsentinel.alerts.models import Alert, AlertPolicy, InhibitRule, Silence

__all__ = (
    "AUDIT_SUBJECTS",
    "AlertRepository",
    "InhibitRuleRepository",
    "PolicyRepository",
    "SilenceRepository",
)

#: Subjects shown by ``GET /alerts/audit`` (the table is shared with other domains' actions).
AUDIT_SUBJECTS = ("alert", "silence", "policy", "evaluation", "inhibit_rule")


class PolicyRepository(SQLAlchemyAsyncRepository[AlertPolicy]):
    model_type = AlertPolicy

    async def in_project(self, project_id: UUID, policy_id: UUID) -> AlertPolicy | None:
        return await self.session.scalar(
            select(AlertPolicy).where(AlertPolicy.id == policy_id, AlertPolicy.project_id == project_id)
        )

    async def name_taken(self, project_id: UUID, name: str, except_id: UUID | None) -> bool:
        statement = select(AlertPolicy.id).where(
            AlertPolicy.project_id == project_id, AlertPolicy.name == name
        )
        if except_id is not None:
            statement = statement.where(AlertPolicy.id != except_id)
        return await self.session.scalar(statement) is not None

    async def of_project(self, project_id: UUID) -> list[AlertPolicy]:
        """The project's policies by name."""
        return list(
            await self.session.scalars(
                select(AlertPolicy).where(AlertPolicy.project_id == project_id).order_by(AlertPolicy.name)
            )
        )

    async def enabled(self, project_id: UUID | None) -> list[AlertPolicy]:
        """The enabled policies of one project, or of every project (the cron's pass)."""
        statement = select(AlertPolicy).where(AlertPolicy.enabled.is_(True))
        if project_id is not None:
            statement = statement.where(AlertPolicy.project_id == project_id)
        return list(await self.session.scalars(statement.order_by(AlertPolicy.id)))

    async def by_keys(self, policy_keys: Collection[tuple[UUID, UUID]]) -> list[AlertPolicy]:
        """The policies of these ``(project_id, id)`` keys."""
        return list(
            await self.session.scalars(
                select(AlertPolicy).where(
                    tuple_(AlertPolicy.project_id, AlertPolicy.id).in_(list(policy_keys))
                )
            )
        )

    async def check_regex(self, pattern: str) -> None:
        """Run ``pattern`` through PostgreSQL's ``~*``; raises ``DBAPIError`` when PostgreSQL rejects it."""
        await self.session.execute(text("SELECT '' ~* :pattern"), {"pattern": pattern})

    async def lock_policies_file(self) -> None:
        """Serialise loads of the policies file: held until the transaction ends."""
        await self.session.execute(text("SELECT pg_advisory_xact_lock(hashtext('alerts:policies-file'))"))

    async def upsert_by_name(
        self, project_id: UUID, columns: Mapping[str, Any], now: datetime
    ) -> UUID | None:
        """Insert the policy, or update the project's policy of the same name; returns its id."""
        upsert = (
            pg_insert(AlertPolicy)
            .values(id=uuid7(), project_id=project_id, created_at=now, updated_at=now, **columns)
            .on_conflict_do_update(
                index_elements=[AlertPolicy.project_id, AlertPolicy.name],
                set_={**columns, "updated_at": now},
            )
            .returning(AlertPolicy.id)
        )
        return await self.session.scalar(upsert)


#: The columns an evaluation pass rewrites on a changed instance.
_ALERT_UPDATE_COLUMNS = (
    "state",
    "value",
    "started_at",
    "fired_at",
    "resolved_at",
    "last_evaluated_at",
    "acked_by",
    "acked_at",
    "silenced_by",
    "inhibited_by",
    "updated_at",
)


#: The join of an alert to its policy: on the composite key, so the join stays on one shard (co-located).
_POLICY_OF_ALERT = and_(AlertPolicy.project_id == Alert.project_id, AlertPolicy.id == Alert.policy_id)


class AlertRepository(SQLAlchemyAsyncRepository[Alert]):
    model_type = Alert

    async def page(
        self,
        project_id: UUID,
        *,
        states: Sequence[str] | None = None,
        policy_id: UUID | None = None,
        severity: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after: Sequence[Any] | None = None,
        limit: int | None = None,
        activated_only: bool = False,
    ) -> list[tuple[Alert, str]]:
        """Alerts with their policy name, newest activation first (keyset on ``(started_at, id)``)."""
        statement: Select[Alert, str] = (
            select(Alert, AlertPolicy.name)
            .join(AlertPolicy, _POLICY_OF_ALERT)
            .where(Alert.project_id == project_id)
        )
        if activated_only:
            statement = statement.where(Alert.started_at.is_not(None))
        if states:
            statement = statement.where(Alert.state.in_(states))
        if policy_id is not None:
            statement = statement.where(Alert.policy_id == policy_id)
        if severity is not None:
            statement = statement.where(Alert.severity == severity)
        if since is not None:
            statement = statement.where(Alert.started_at >= since)
        if until is not None:
            statement = statement.where(Alert.started_at < until)
        if after is not None:
            statement = statement.where(tuple_(Alert.started_at, Alert.id) < tuple_(*after))
        statement = statement.order_by(Alert.started_at.desc().nulls_last(), Alert.id.desc())
        if limit is not None:
            statement = statement.limit(limit)
        return [(alert, name) for alert, name in (await self.session.execute(statement)).all()]

    async def one_with_policy_name(self, project_id: UUID, alert_id: UUID) -> tuple[Alert, str] | None:
        row = (
            await self.session.execute(
                select(Alert, AlertPolicy.name)
                .join(AlertPolicy, _POLICY_OF_ALERT)
                .where(Alert.project_id == project_id, Alert.id == alert_id)
            )
        ).first()
        return None if row is None else (row[0], row[1])

    async def firing_of_policy(self, project_id: UUID, policy_id: UUID) -> list[Alert]:
        return list(
            await self.session.scalars(
                select(Alert).where(
                    Alert.project_id == project_id,
                    Alert.policy_id == policy_id,
                    Alert.state == AlertState.FIRING.value,
                )
            )
        )

    async def for_evaluation(self, policy_ids: Sequence[UUID], project_id: UUID | None) -> list[Alert]:
        """Instances of the evaluated policies, plus every non-inactive instance in scope (those of
        disabled policies or of a stale label set recover through the state machine)."""
        condition = Alert.state != AlertState.INACTIVE.value
        if policy_ids:
            condition = or_(condition, Alert.policy_id.in_(policy_ids))
        statement = select(Alert).where(condition)
        if project_id is not None:
            statement = statement.where(Alert.project_id == project_id)
        return list(await self.session.scalars(statement))

    async def insert_rows(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Bulk INSERT (one executemany)."""
        if rows:
            await self.session.execute(insert(Alert), list(rows))

    async def update_rows(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Bulk UPDATE by primary key (one executemany); each row carries every updatable column."""
        if rows:
            await self.session.execute(
                update(Alert),
                [{key: row[key] for key in ("project_id", "id", *_ALERT_UPDATE_COLUMNS)} for row in rows],
            )


class SilenceRepository(SQLAlchemyAsyncRepository[Silence]):
    model_type = Silence

    async def page(
        self,
        project_id: UUID,
        *,
        status: str | None,
        now: datetime,
        after: Sequence[Any] | None,
        limit: int,
    ) -> list[Silence]:
        """Silences newest first (keyset on ``(created_at, id)``), optionally of one status at ``now``."""
        statement = select(Silence).where(Silence.project_id == project_id)
        not_expired = and_(Silence.expired_at.is_(None), Silence.ends_at > now)
        if status == "pending":
            statement = statement.where(not_expired, Silence.starts_at > now)
        elif status == "active":
            statement = statement.where(not_expired, Silence.starts_at <= now)
        elif status == "expired":
            statement = statement.where(or_(Silence.expired_at.is_not(None), Silence.ends_at <= now))
        if after is not None:
            statement = statement.where(tuple_(Silence.created_at, Silence.id) < tuple_(*after))
        statement = statement.order_by(Silence.created_at.desc(), Silence.id.desc()).limit(limit)
        return list(await self.session.scalars(statement))

    async def in_project(self, project_id: UUID, silence_id: UUID) -> Silence | None:
        return await self.session.scalar(
            select(Silence).where(Silence.id == silence_id, Silence.project_id == project_id)
        )

    async def active(self, project_ids: Sequence[UUID] | None, now: datetime) -> list[Silence]:
        """Silences in force at ``now``, oldest first, of the given projects (None: every project)."""
        statement = select(Silence).where(
            Silence.starts_at <= now, Silence.ends_at > now, Silence.expired_at.is_(None)
        )
        if project_ids is not None:
            if not project_ids:
                return []
            statement = statement.where(Silence.project_id.in_(project_ids))
        return list(await self.session.scalars(statement.order_by(Silence.created_at, Silence.id)))


class InhibitRuleRepository(SQLAlchemyAsyncRepository[InhibitRule]):
    model_type = InhibitRule
    id_attribute = "id"

    async def of_projects(self, project_ids: Sequence[UUID] | None) -> list[InhibitRule]:
        """The rules of the given projects (None: every project), oldest first."""
        statement = select(InhibitRule)
        if project_ids is not None:
            if not project_ids:
                return []
            statement = statement.where(InhibitRule.project_id.in_(project_ids))
        return list(await self.session.scalars(statement.order_by(InhibitRule.created_at, InhibitRule.id)))

    async def in_project(self, project_id: UUID, rule_id: UUID) -> InhibitRule | None:
        return await self.session.scalar(
            select(InhibitRule).where(InhibitRule.project_id == project_id, InhibitRule.id == rule_id)
        )

    async def insert_new(self, row: Mapping[str, Any]) -> InhibitRule | None:
        """Insert unless the project already has a rule with this fingerprint (then None)."""
        inserted = await self.session.scalar(
            pg_insert(InhibitRule)
            .values(**row)
            .on_conflict_do_nothing(index_elements=[InhibitRule.project_id, InhibitRule.fingerprint])
            .returning(InhibitRule)
        )
        return inserted

    async def remove(self, project_id: UUID, rule_id: UUID) -> None:
        await self.session.execute(
            delete(InhibitRule).where(InhibitRule.project_id == project_id, InhibitRule.id == rule_id)
        )

    async def file_rules(self) -> list[InhibitRule]:
        """Every rule loaded from the routing file, all projects."""
        return list(await self.session.scalars(select(InhibitRule).where(InhibitRule.origin == "file")))

    async def lock_routing_file(self) -> None:
        """Serialise loads of the routing file's inhibit rules: held until the transaction ends."""
        await self.session.execute(text("SELECT pg_advisory_xact_lock(hashtext('alerts:routing-file'))"))
