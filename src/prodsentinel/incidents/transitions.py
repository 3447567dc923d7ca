"""Incident transitions: what one state change writes, and what it announces once committed.

Every way an incident changes state (the grouping and anomaly passes open, escalate and reopen; an
operator or the quiet-period pass resolves) ends in :func:`record_transitions`, so each transition has
the same consequences whoever caused it:

- in the caller's transaction: one outbox event per subscribed channel (``add_event``, which also
  registers the dispatcher wake-up) and one audit row;
- registered on the session for after its commit (``lib.after_commit``): the SSE event
  (``lib.events.publish_after_commit``) and, for a high or critical incident that is not being
  resolved, the ``analyse_incident`` job.

Nothing is announced by hand after a commit: a transaction that rolls back announces nothing, and one
that commits announces exactly what it wrote.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal, Protocol
from uuid import UUID

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.audit import services as audit_services
from prodsentinel.audit.services import AuditEntry
from prodsentinel.incidents.models import Incident
from prodsentinel.incidents.repositories import IncidentRepository
from prodsentinel.incidents.schemas import IncidentOut
from prodsentinel.lib import jobs
from prodsentinel.lib.after_commit import after_commit
from prodsentinel.lib.database import session_scope
from prodsentinel.lib.events import publish_after_commit
from prodsentinel.lib.vocabulary import Severity, stream_type
from prodsentinel.notifications.outbox import add_event

__all__ = (
    "ANALYSED_SEVERITIES",
    "SYSTEM_ACTOR",
    "Announcement",
    "Transition",
    "enqueue_analysis",
    "incident_out",
    "record_transitions",
)

#: The actor of the passes' audit rows (grouping, anomaly detection, auto-resolve).
SYSTEM_ACTOR = "system:scheduler"
#: Only these get a root-cause analysis (SPEC §6).
ANALYSED_SEVERITIES = frozenset({Severity.HIGH, Severity.CRITICAL})
#: At most this many lost analyses are re-announced per run of ``analyse_pending_incidents``.
PENDING_ANALYSES_LIMIT = 100
ANALYSIS_TIMEOUT_SECONDS = 120

TransitionKind = Literal["opened", "escalated", "resolved", "reopened"]


@dataclass(slots=True)
class Transition:
    """One incident state change."""

    kind: TransitionKind
    project_id: UUID
    incident: IncidentOut
    previous_severity: str | None = None

    @property
    def event_type(self) -> str:
        """Outbox event name (SPEC §7)."""
        return f"INCIDENT_{self.kind.upper()}"

    @property
    def stream_type(self) -> str:
        """SSE event name."""
        return stream_type(self.event_type)

    @property
    def wants_analysis(self) -> bool:
        return self.kind != "resolved" and Severity(self.incident.severity) in ANALYSED_SEVERITIES

    subject_type: ClassVar[str] = "incident"

    @property
    def subject_id(self) -> UUID:
        return self.incident.id

    @property
    def severity(self) -> str:
        return self.incident.severity

    def analysis(self) -> tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]] | None:
        return (enqueue_analysis, (self.project_id, self.incident.id)) if self.wants_analysis else None

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "project_id": str(self.project_id),
            "incident": msgspec.to_builtins(self.incident),
        }
        if self.previous_severity is not None:
            body["previous_severity"] = self.previous_severity
        return body

    def live_payload(self) -> dict[str, Any]:
        return self.payload()


class Announcement(Protocol):
    """A subject's state change as :func:`record_transitions` writes it (incidents and problems)."""

    subject_type: ClassVar[str]

    @property
    def kind(self) -> str: ...

    @property
    def project_id(self) -> UUID: ...

    @property
    def previous_severity(self) -> str | None: ...

    @property
    def event_type(self) -> str: ...

    @property
    def subject_id(self) -> UUID: ...

    @property
    def severity(self) -> str: ...

    def analysis(self) -> tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]] | None: ...

    def payload(self) -> dict[str, Any]: ...

    def live_payload(self) -> dict[str, Any]: ...


def incident_out(row: Incident | dict[str, Any]) -> IncidentOut:
    """An incident row (ORM object or a ``RETURNING`` mapping) as the API's shape."""
    if isinstance(row, dict):
        return msgspec.convert(row, IncidentOut)
    return msgspec.convert(row, IncidentOut, from_attributes=True)


async def record_transitions(
    session: AsyncSession, transitions: Sequence[Announcement], *, actor: str, now: datetime
) -> None:
    """Write the transitions' outbox events and audit rows, and register their announcements.

    Flushes, never commits; the SSE events and analysis jobs run only once the caller's transaction
    has committed (see the module docstring). Incidents and problems alike (``Announcement``).
    """
    if not transitions:
        return
    audit: list[AuditEntry] = []
    for transition in transitions:
        event_id = await add_event(
            session,
            project_id=transition.project_id,
            event_type=transition.event_type,
            severity=transition.severity,
            payload=transition.payload(),
        )
        publish_after_commit(
            session, stream_type(transition.event_type), transition.project_id, transition.live_payload()
        )
        analysis = transition.analysis()
        if analysis is not None:
            after_commit(session, analysis[0], *analysis[1])
        details: dict[str, Any] = {"severity": transition.severity, "event_id": str(event_id)}
        if transition.previous_severity is not None:
            details["previous_severity"] = transition.previous_severity
        audit.append(
            AuditEntry(
                project_id=transition.project_id,
                actor=actor,
                action=f"{transition.subject_type}_{transition.kind}",
                subject_type=transition.subject_type,
                subject_id=transition.subject_id,
                details=details,
                at=now,
            )
        )
    await audit_services.record(session, *audit)


async def enqueue_analysis(project_id: UUID, incident_id: UUID) -> bool:
    """At most one queued or running analysis per incident: SAQ dedups on the job key.

    Registered after commit by :func:`record_transitions`; a lost enqueue (Redis down, a crash between
    commit and enqueue) is found again by :func:`run_pending_analyses`.
    """
    return await jobs.enqueue(
        "analyse_incident",
        key=f"analyse:{incident_id}",
        timeout=ANALYSIS_TIMEOUT_SECONDS,
        project_id=str(project_id),
        incident_id=str(incident_id),
    )


async def run_pending_analyses(session_maker: async_sessionmaker[AsyncSession]) -> int:
    """Re-announce analyses whose enqueue was lost; returns how many were enqueued.

    Grouping, evaluation and dispatch re-find their work by high-water mark or due time; an analysis is
    only announced by the transition that needs it, so this cron twin finds serious unresolved incidents
    never analysed. The job key dedups against an analysis already queued or running.
    """
    async with session_scope(session_maker) as session:
        keys = await IncidentRepository(session=session).unanalysed_keys(
            sorted(ANALYSED_SEVERITIES), limit=PENDING_ANALYSES_LIMIT
        )
    return sum([await enqueue_analysis(project_id, incident_id) for project_id, incident_id in keys])
