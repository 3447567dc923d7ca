"""Escalation policies (SPEC §13): CRUD through the API (audited), and the ``escalations:`` key of
``PRODSENTINEL_ROUTING_FILE``.

The bodies' constraints are declared on ``EscalationCreate``/``EscalationUpdate`` (published in the
OpenAPI schema); this module checks what a schema cannot: step 0 at 0 s and later steps strictly
later, channel ids of the caller's project, matcher regexes. The rules that act on events are
``escalation_rules`` (pure) and ``escalation_queries`` (SQL); the sending is ``escalation_pass``.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import msgspec
import yaml
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.alerts.matchers import MatcherError
from prodsentinel.audit import services as audit_services
from prodsentinel.audit.services import AuditEntry
from prodsentinel.auth.services import ProjectService
from prodsentinel.lib.config_files import config_file_error, read_yaml_list
from prodsentinel.lib.errors import ConflictError, NotFoundError, ValidationError
from prodsentinel.lib.time import utcnow
from prodsentinel.notifications import routing
from prodsentinel.notifications.models import Channel, EscalationPolicy
from prodsentinel.notifications.schemas import (
    EscalationCreate,
    EscalationOut,
    EscalationStepIn,
    EscalationUpdate,
    MatcherIn,
)
from prodsentinel.settings import SettingsError

__all__ = ("ROUTING_FILE_KEY", "EscalationFileItem", "EscalationService", "parse_escalations")

ROUTING_FILE_VARIABLE = "PRODSENTINEL_ROUTING_FILE"
#: This module reads only this top-level key of the routing file (``inhibit_rules:`` is the alerts').
ROUTING_FILE_KEY = "escalations"


def _columns(spec: dict[str, Any]) -> dict[str, Any]:
    """Stored values of an escalation in API terms, after the checks msgspec cannot make."""
    steps = spec["steps"]
    if steps[0]["after_seconds"] != 0:
        raise ValidationError("steps[0].after_seconds must be 0: the first step is notified at once.")
    for index in range(1, len(steps)):
        if steps[index]["after_seconds"] <= steps[index - 1]["after_seconds"]:
            raise ValidationError(f"steps[{index}].after_seconds must be later than the step before it.")
    try:
        matchers = routing.validate_matchers(spec.get("matchers") or [])
    except MatcherError as exc:
        raise ValidationError(str(exc)) from None
    return {
        "name": spec["name"].strip(),
        "matchers": matchers,
        "steps": [
            {
                "after_seconds": s["after_seconds"],
                "channel_ids": [str(c) for c in dict.fromkeys(s["channel_ids"])],
            }
            for s in steps
        ],
        "repeat": spec.get("repeat", 0),
        "repeat_after_seconds": spec.get("repeat_after_seconds", 300),
    }


def _spec(data: msgspec.Struct) -> dict[str, Any]:
    return msgspec.to_builtins(data, builtin_types=(UUID,))  # type: ignore[no-any-return]


def _out(policy: EscalationPolicy) -> EscalationOut:
    return EscalationOut(
        id=policy.id,
        name=policy.name,
        matchers=[msgspec.convert(m, MatcherIn) for m in policy.matchers],
        steps=[msgspec.convert(s, EscalationStepIn) for s in policy.steps],
        repeat=policy.repeat,
        repeat_after_seconds=policy.repeat_after_seconds,
        created_at=policy.created_at,
        updated_at=policy.updated_at,
    )


class EscalationService:
    """A project's escalation policies; every method is limited to ``project_id`` (others: 404)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def _get(self, project_id: UUID, escalation_id: UUID) -> EscalationPolicy:
        policy = await self.session.get(EscalationPolicy, (project_id, escalation_id))
        if policy is None:
            raise NotFoundError("Escalation not found.")
        return policy

    async def _check_channels(self, project_id: UUID, columns: dict[str, Any]) -> None:
        wanted = {UUID(c) for s in columns["steps"] for c in s["channel_ids"]}
        found = set(
            await self.session.scalars(
                select(Channel.id).where(Channel.project_id == project_id, Channel.id.in_(list(wanted)))
            )
        )
        for index, step in enumerate(columns["steps"]):
            for channel in step["channel_ids"]:
                if UUID(channel) not in found:
                    raise ValidationError(
                        f"steps[{index}].channel_ids: no channel {channel} in this project."
                    )

    async def _flush(self, name: str) -> None:
        try:
            async with self.session.begin_nested():
                await self.session.flush()
        except IntegrityError:
            raise ConflictError(f"an escalation named {name!r} already exists in this project.") from None

    async def _audit(
        self, project_id: UUID, actor: str, action: str, policy_id: UUID, details: dict[str, Any]
    ) -> None:
        await audit_services.record(
            self.session,
            AuditEntry(
                project_id=project_id,
                actor=actor,
                action=action,
                subject_type="escalation",
                subject_id=policy_id,
                details=details,
            ),
        )

    async def list_all(self, project_id: UUID) -> list[EscalationOut]:
        policies = await self.session.scalars(
            select(EscalationPolicy)
            .where(EscalationPolicy.project_id == project_id)
            .order_by(EscalationPolicy.name)
        )
        return [_out(p) for p in policies]

    async def get(self, project_id: UUID, escalation_id: UUID) -> EscalationOut:
        return _out(await self._get(project_id, escalation_id))

    async def create(self, project_id: UUID, data: EscalationCreate, *, actor: str) -> EscalationOut:
        columns = _columns(_spec(data))
        await self._check_channels(project_id, columns)
        now = utcnow()
        policy = EscalationPolicy(
            project_id=project_id, id=uuid.uuid4(), created_at=now, updated_at=now, **columns
        )
        self.session.add(policy)
        await self._flush(columns["name"])
        await self._audit(project_id, actor, "escalation.created", policy.id, columns)
        return _out(policy)

    async def update(
        self, project_id: UUID, escalation_id: UUID, data: EscalationUpdate, *, actor: str
    ) -> EscalationOut:
        policy = await self._get(project_id, escalation_id)
        changes = {
            k: v
            for k, v in _spec(data).items()
            if k in data.__struct_fields__ and getattr(data, k) is not msgspec.UNSET
        }
        spec = {
            "name": policy.name,
            "matchers": policy.matchers,
            "steps": policy.steps,
            "repeat": policy.repeat,
            "repeat_after_seconds": policy.repeat_after_seconds,
            **changes,
        }
        columns = _columns(spec)
        await self._check_channels(project_id, columns)
        for name, value in columns.items():
            setattr(policy, name, value)
        policy.updated_at = utcnow()
        await self._flush(columns["name"])
        await self._audit(project_id, actor, "escalation.updated", policy.id, {"changed": sorted(changes)})
        return _out(policy)

    async def delete(self, project_id: UUID, escalation_id: UUID, *, actor: str) -> None:
        """Delete it; its steps not yet sent go with it (cascade)."""
        policy = await self._get(project_id, escalation_id)
        await self.session.delete(policy)
        await self.session.flush()
        await self._audit(project_id, actor, "escalation.deleted", escalation_id, {"name": policy.name})

    async def load_file(self, items: list[EscalationFileItem]) -> int:
        """Upsert the file's escalations by (project, name); others are left alone (the API may own them).
        Channels are named by ``channel_ids`` or by ``channels`` (names in the same project)."""
        async with ProjectService.new(session=self.session) as projects:
            for item in items:
                project = await projects.get_or_create(item.project)
                spec = _spec(item)
                for index, step in enumerate(spec["steps"]):
                    names = step.pop("channels", None) or []
                    ids = list(step.get("channel_ids") or [])
                    for name in names:
                        channel_id = await self.session.scalar(
                            select(Channel.id).where(Channel.project_id == project.id, Channel.name == name)
                        )
                        if channel_id is None:
                            raise ValidationError(
                                f"escalation {item.name!r} steps[{index}]: no channel {name!r}."
                            )
                        ids.append(str(channel_id))
                    if not ids:
                        raise ValidationError(f"escalation {item.name!r} steps[{index}]: no channel.")
                    step["channel_ids"] = ids
                columns = _columns(spec)
                await self._check_channels(project.id, columns)
                existing = await self.session.scalar(
                    select(EscalationPolicy).where(
                        EscalationPolicy.project_id == project.id, EscalationPolicy.name == columns["name"]
                    )
                )
                now = utcnow()
                if existing is None:
                    self.session.add(
                        EscalationPolicy(
                            project_id=project.id, id=uuid.uuid4(), created_at=now, updated_at=now, **columns
                        )
                    )
                else:
                    for name, value in columns.items():
                        setattr(existing, name, value)
                    existing.updated_at = now
                await self.session.flush()
        return len(items)


# --- escalations from PRODSENTINEL_ROUTING_FILE ----------------------------------------------------


class EscalationFileStep(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A step of the file: channels by id or, more readably in a file, by name."""

    after_seconds: Annotated[int, msgspec.Meta(ge=0, le=604800)]
    channel_ids: list[UUID] = msgspec.field(default_factory=list)
    channels: list[str] = msgspec.field(default_factory=list)


class EscalationFileItem(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One item of the routing file's ``escalations:`` list, with the name of its project."""

    project: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"\S")]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"\S")]
    steps: Annotated[list[EscalationFileStep], msgspec.Meta(min_length=1, max_length=20)]
    matchers: list[MatcherIn] = msgspec.field(default_factory=list)
    repeat: Annotated[int, msgspec.Meta(ge=0, le=20)] = 0
    repeat_after_seconds: Annotated[int, msgspec.Meta(ge=1, le=604800)] = 300


def parse_escalations(path: Path) -> list[EscalationFileItem]:
    """The ``escalations:`` of the routing file, validated; a file without the key has none. Any
    problem is one SettingsError line naming ``PRODSENTINEL_ROUTING_FILE``."""

    def fail(reason: str) -> SettingsError:
        return config_file_error(ROUTING_FILE_VARIABLE, path, f"{ROUTING_FILE_KEY}: {reason}")

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        loaded = None  # read_yaml_list below names the problem
    else:
        if loaded is None or (isinstance(loaded, dict) and ROUTING_FILE_KEY not in loaded):
            return []
        if not isinstance(loaded, dict):
            raise config_file_error(ROUTING_FILE_VARIABLE, path, "expected a mapping with routing keys")
    raw = read_yaml_list(ROUTING_FILE_VARIABLE, path, key=ROUTING_FILE_KEY, what="escalation")
    items: list[EscalationFileItem] = []
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(raw):
        try:
            item = msgspec.convert(entry, EscalationFileItem)
            spec = _spec(item)
            for step in spec["steps"]:
                step["channel_ids"] = step.get("channel_ids") or ["00000000-0000-0000-0000-000000000000"]
            _columns(spec)
        except (msgspec.ValidationError, ValidationError) as exc:
            raise fail(f"item {index}: {exc}") from None
        for number, step in enumerate(item.steps):
            if not step.channel_ids and not step.channels:
                raise fail(f"item {index}: steps[{number}] names no channel (channel_ids or channels)")
        key = (item.project.strip(), item.name.strip())
        if key in seen:
            raise fail(f"item {index}: duplicate escalation {item.name!r} in project {item.project!r}")
        seen.add(key)
        items.append(item)
    return items
