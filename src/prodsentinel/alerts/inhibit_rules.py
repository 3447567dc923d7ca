"""Inhibit rules (SPEC §13) over the API and from the routing file: create, list, delete, load.

A rule mutes notifications, not state: the evaluator (``alerts.plan`` with ``alerts.inhibition``)
decides at each pass which firing alerts it mutes. Deleting a rule changes no alert here: at the next
pass, alerts it held back are announced (or named under another rule still muting them), exactly as
when a silence expires. Every change is audited in the same unit of work (subject ``inhibit_rule``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast
from uuid import UUID

import structlog
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy.ext.asyncio import AsyncSession
from uuid_utils.compat import uuid7

from prodsentinel.alerts.inhibition import InhibitRuleSpec, parse_rule, rule_fingerprint
from prodsentinel.alerts.matchers import MatcherError, MatchOp
from prodsentinel.alerts.models import InhibitRule
from prodsentinel.alerts.repositories import InhibitRuleRepository
from prodsentinel.alerts.schemas import InhibitRuleIn, InhibitRuleOut, MatcherIn
from prodsentinel.audit import services as audit_services
from prodsentinel.audit.services import AuditEntry
from prodsentinel.lib.errors import ConflictError, NotFoundError, ValidationError
from prodsentinel.lib.time import utcnow

__all__ = ("ROUTING_FILE_ACTOR", "InhibitRuleService", "RoutingRuleItem", "rule_spec")

logger = structlog.get_logger("prodsentinel.alerts")

ROUTING_FILE_ACTOR = "system:routing-file"


@dataclass(frozen=True, slots=True)
class RoutingRuleItem:
    """One valid ``inhibit_rules`` item of ``PRODSENTINEL_ROUTING_FILE``: the rule and its project's name."""

    project: str
    spec: InhibitRuleSpec


def rule_spec(data: InhibitRuleIn) -> InhibitRuleSpec:
    """Validate a rule body with the matcher language of silences (422 naming the side and matcher)."""
    try:
        return parse_rule(
            [{"name": m.name, "op": m.op, "value": m.value} for m in data.source_matchers],
            [{"name": m.name, "op": m.op, "value": m.value} for m in data.target_matchers],
            data.equal,
        )
    except MatcherError as exc:
        raise ValidationError(f"Invalid inhibit rule: {exc}.") from None


def _matchers_out(raw: Sequence[Mapping[str, str]]) -> list[MatcherIn]:
    return [MatcherIn(name=m["name"], op=MatchOp(m["op"]), value=m["value"]) for m in raw]


def _rule_out(rule: InhibitRule) -> InhibitRuleOut:
    return InhibitRuleOut(
        id=rule.id,
        source_matchers=_matchers_out(rule.source_matchers),
        target_matchers=_matchers_out(rule.target_matchers),
        equal=list(rule.equal),
        origin="file" if rule.origin == "file" else "api",
        created_by=rule.created_by,
        created_at=rule.created_at,
    )


def _row(
    project_id: UUID, spec: InhibitRuleSpec, *, origin: str, actor: str, now: datetime
) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "id": uuid7(),
        **spec.wire(),
        "fingerprint": rule_fingerprint(spec),
        "origin": origin,
        "created_by": actor,
        "created_at": now,
    }


class InhibitRuleService(SQLAlchemyAsyncRepositoryService[InhibitRule]):
    """Inhibit rules of one project at a time (the file loader spans projects); audited."""

    repository_type = InhibitRuleRepository
    repository: InhibitRuleRepository

    @property
    def session(self) -> AsyncSession:
        """The request's (or unit of work's) session: these services are always built on one."""
        return cast("AsyncSession", self.repository.session)

    async def list_rules(self, project_id: UUID) -> list[InhibitRuleOut]:
        return [_rule_out(rule) for rule in await self.repository.of_projects([project_id])]

    async def create_rule(self, project_id: UUID, data: InhibitRuleIn, *, actor: str) -> InhibitRuleOut:
        """Create a rule; the same rule (same matchers and ``equal`` labels, in any order) twice is a 409."""
        spec = rule_spec(data)
        now = utcnow()
        rule = await self.repository.insert_new(_row(project_id, spec, origin="api", actor=actor, now=now))
        if rule is None:
            raise ConflictError("The same inhibit rule already exists in this project.")
        out = _rule_out(rule)
        await self._audit(project_id, rule.id, actor, "inhibit_rule.create", {"rule": spec.wire()}, now)
        return out

    async def delete_rule(self, project_id: UUID, rule_id: UUID, *, actor: str) -> None:
        """Delete a rule; alerts it held back are announced at the next evaluation pass."""
        rule = await self.repository.in_project(project_id, rule_id)
        if rule is None:
            raise NotFoundError("Inhibit rule not found.")
        details = {"rule": _wire(rule)}
        await self.repository.remove(project_id, rule_id)
        await self._audit(project_id, rule_id, actor, "inhibit_rule.delete", details, utcnow())

    async def load_file(self, items: Sequence[tuple[UUID, RoutingRuleItem]]) -> tuple[int, int]:
        """Make the file-origin rules exactly the file's ``(project id, item)`` list, in one transaction
        serialised across instances: new rules are inserted (a rule the API already made counts as
        present), file rules no longer in the file are deleted. Returns (added, removed)."""
        await self.repository.lock_routing_file()
        now = utcnow()
        wanted = {(project_id, rule_fingerprint(item.spec)) for project_id, item in items}
        removed = 0
        for rule in await self.repository.file_rules():
            if (rule.project_id, rule.fingerprint) not in wanted:
                await self.repository.remove(rule.project_id, rule.id)
                details = {"rule": _wire(rule), "reason": "no longer in the routing file"}
                await self._audit(
                    rule.project_id, rule.id, ROUTING_FILE_ACTOR, "inhibit_rule.delete", details, now
                )
                removed += 1
        added = 0
        for project_id, item in items:
            row = _row(project_id, item.spec, origin="file", actor=ROUTING_FILE_ACTOR, now=now)
            inserted = await self.repository.insert_new(row)
            if inserted is not None:
                details = {"rule": item.spec.wire(), "origin": "file"}
                action = "inhibit_rule.load"
                await self._audit(project_id, inserted.id, ROUTING_FILE_ACTOR, action, details, now)
                added += 1
        return added, removed

    async def _audit(
        self,
        project_id: UUID,
        rule_id: UUID,
        actor: str,
        action: str,
        details: Mapping[str, Any],
        now: datetime,
    ) -> None:
        entry = AuditEntry(
            project_id=project_id,
            actor=actor,
            action=action,
            subject_type="inhibit_rule",
            subject_id=rule_id,
            details=details,
            at=now,
        )
        await audit_services.record(self.session, entry)


def _wire(rule: InhibitRule) -> dict[str, Any]:
    return {
        "source_matchers": rule.source_matchers,
        "target_matchers": rule.target_matchers,
        "equal": rule.equal,
        "origin": rule.origin,
    }
