"""Silences (SPEC §7): create, list, expire, and which silence in force holds a label set.

A silence mutes notifications, not state: an alert it matches still changes state and is audited,
but no outbox event is written for it (``alerts.plan``). Matching follows Alertmanager
(``alerts.matchers``). The status of a silence is computed from the clock, never stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast, get_args
from uuid import UUID

import structlog
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.alerts.matchers import Matcher, MatcherError, MatchOp, matches_all, parse_matchers
from prodsentinel.alerts.models import Silence
from prodsentinel.alerts.repositories import SilenceRepository
from prodsentinel.alerts.schemas import MatcherIn, SilenceIn, SilenceOut, SilencePage
from prodsentinel.audit import services as audit_services
from prodsentinel.audit.services import AuditEntry
from prodsentinel.lib.errors import BadRequestError, NotFoundError, ValidationError
from prodsentinel.lib.pagination import Keyset
from prodsentinel.lib.time import as_utc, utcnow

__all__ = (
    "SILENCE_KEYSET",
    "STATUSES",
    "ActiveSilences",
    "SilenceService",
    "silence_matchers",
    "silence_status",
)

logger = structlog.get_logger("prodsentinel.alerts")

SilenceStatus = Literal["pending", "active", "expired"]
STATUSES: tuple[str, ...] = get_args(SilenceStatus)

#: ``GET /alerts/silences``: newest first by ``(created_at, id)``.
SILENCE_KEYSET: Keyset[Silence] = Keyset("silences", (datetime, UUID), lambda s: (s.created_at, s.id))


def silence_status(silence: Silence, now: datetime) -> SilenceStatus:
    """pending before starts_at, active until ends_at (or an explicit expire), expired after."""
    if silence.expired_at is not None or now >= silence.ends_at:
        return "expired"
    if now < silence.starts_at:
        return "pending"
    return "active"


@dataclass(frozen=True, slots=True)
class ActiveSilences:
    """The silences in force at one instant, parsed once, per project (oldest first)."""

    by_project: Mapping[UUID, Sequence[tuple[UUID, list[Matcher]]]] = field(default_factory=dict)

    @classmethod
    def of(cls, silences: Iterable[Silence]) -> ActiveSilences:
        parsed: dict[UUID, list[tuple[UUID, list[Matcher]]]] = {}
        for silence in silences:
            try:
                matchers = parse_matchers(silence.matchers)
            except MatcherError:  # pragma: no cover - validated at creation
                logger.warning("invalid_stored_silence", silence_id=str(silence.id))
                continue
            parsed.setdefault(silence.project_id, []).append((silence.id, matchers))
        return cls(parsed)

    @classmethod
    async def load(
        cls, session: AsyncSession, project_ids: Sequence[UUID] | None, now: datetime
    ) -> ActiveSilences:
        """The silences in force at ``now`` in the given projects (None: every project)."""
        return cls.of(await SilenceRepository(session=session).active(project_ids, now))

    def silencing(self, project_id: UUID, labels: Mapping[str, str]) -> UUID | None:
        """The first (oldest) silence in force whose matchers all hold for ``labels``."""
        for silence_id, matchers in self.by_project.get(project_id, ()):
            if matches_all(matchers, labels):
                return silence_id
        return None


def silence_matchers(data: SilenceIn) -> list[Matcher]:
    """A silence body's matchers, validated (422 naming the matcher); shared by create and preview."""
    try:
        return parse_matchers([{"name": m.name, "op": m.op, "value": m.value} for m in data.matchers])
    except MatcherError as exc:
        raise ValidationError(f"Invalid matchers: {exc}.") from None


def silence_window(data: SilenceIn, now: datetime) -> tuple[datetime, datetime]:
    """A silence body's (starts_at, ends_at), validated: ends after it starts, and in the future."""
    starts_at = (
        as_utc(data.starts_at, "starts_at", error=ValidationError) if data.starts_at is not None else now
    )
    ends_at = as_utc(data.ends_at, "ends_at", error=ValidationError)
    if ends_at <= starts_at:
        raise ValidationError("ends_at must be after starts_at.")
    if ends_at <= now:
        raise ValidationError("ends_at must be in the future.")
    return starts_at, ends_at


def _silence_out(silence: Silence, now: datetime) -> SilenceOut:
    return SilenceOut(
        id=silence.id,
        matchers=[MatcherIn(name=m["name"], op=MatchOp(m["op"]), value=m["value"]) for m in silence.matchers],
        starts_at=silence.starts_at,
        ends_at=silence.ends_at,
        comment=silence.comment,
        created_by=silence.created_by,
        status=silence_status(silence, now),
        expired_at=silence.expired_at,
        created_at=silence.created_at,
    )


class SilenceService(SQLAlchemyAsyncRepositoryService[Silence]):
    """Silences of one project at a time; every change is audited in the same unit of work."""

    repository_type = SilenceRepository
    repository: SilenceRepository

    @property
    def session(self) -> AsyncSession:
        """The request's (or unit of work's) session: these services are always built on one."""
        return cast("AsyncSession", self.repository.session)

    async def create_silence(self, project_id: UUID, data: SilenceIn, *, actor: str) -> SilenceOut:
        now = utcnow()
        matchers = silence_matchers(data)
        starts_at, ends_at = silence_window(data, now)
        silence = await self.repository.add(
            Silence(
                project_id=project_id,
                matchers=[{"name": m.name, "op": m.op.value, "value": m.value} for m in matchers],
                starts_at=starts_at,
                ends_at=ends_at,
                comment=data.comment,
                created_by=actor,
            )
        )
        details = {
            "matchers": silence.matchers,
            "starts_at": starts_at.isoformat(),
            "ends_at": ends_at.isoformat(),
            "comment": silence.comment,
        }
        await self._audit(silence, actor, "silence.create", details, now)
        return _silence_out(silence, now)

    async def page(
        self, project_id: UUID, *, status: str | None, cursor: str | None, limit: int
    ) -> SilencePage:
        """Silences newest first; ``status`` filters on the status at request time."""
        if status is not None and status not in STATUSES:
            raise BadRequestError(f"status {status!r} is not one of {', '.join(STATUSES)}.")
        now = utcnow()
        rows = await self.repository.page(
            project_id,
            status=status,
            now=now,
            after=SILENCE_KEYSET.after(cursor),
            limit=SILENCE_KEYSET.fetch_size(limit),
        )
        items, next_cursor = SILENCE_KEYSET.page(rows, limit)
        return SilencePage(items=[_silence_out(silence, now) for silence in items], next_cursor=next_cursor)

    async def expire(self, project_id: UUID, silence_id: UUID, *, actor: str) -> SilenceOut:
        """End a silence now (idempotent: an expired silence is returned unchanged, not audited again)."""
        silence = await self.repository.in_project(project_id, silence_id)
        if silence is None:
            raise NotFoundError("Silence not found.")
        now = utcnow()
        if silence_status(silence, now) == "expired":
            return _silence_out(silence, now)
        silence.expired_at = now
        silence.ends_at = now
        if silence.starts_at > now:
            silence.starts_at = now
        await self.session.flush()
        await self._audit(silence, actor, "silence.expire", {"matchers": silence.matchers}, now)
        return _silence_out(silence, now)

    async def _audit(
        self, silence: Silence, actor: str, action: str, details: Mapping[str, Any], now: datetime
    ) -> None:
        entry = AuditEntry(
            project_id=silence.project_id,
            actor=actor,
            action=action,
            subject_type="silence",
            subject_id=silence.id,
            details=details,
            at=now,
        )
        await audit_services.record(self.session, entry)
