"""The correlation pass: fold a grouping batch's incidents into problems (SPEC §14), and the problem rollup.

Run by ``grouping.group_batch`` right after the incident fold, in the same transaction: a batch's
occurrences, incidents, problem joins and the grouping high-water mark commit or roll back together, so
a crash redoes the batch exactly once and correlation never runs twice over a signal. Every grouping
batch takes the correlation lock first (``ProblemQueries.lock_correlation``), so two batches never
place the same cascade in two problems.

Per batch (:func:`correlate_batch`), set-based in SQL (``problem_queries``):

1. the batch's trace keys (``service:<name>`` per failing trace, ``dependency:<dep>`` per failing client
   span of the erring service) go to a temporary table; incidents already in an open problem add theirs
   to it;
2. the *unassigned* incidents (new, reopened after their problem resolved, or detached) get their
   edges: to open problems (same failing trace; same dependency inside the problem's window; a kept
   merge) and to each other;
3. :func:`plan` (pure) picks each one's problem: the open problem it has the strongest edge to, else
   the problem of an incident it is linked to, else a new problem per linked group;
4. the joins are written (evidence, ``incidents.problem_id``, window extension), then :func:`refresh`
   rolls up severity/status/services, recomputes the root and derives the transitions
   (``PROBLEM_OPENED``/``ESCALATED``/``RESOLVED``), recorded like incident transitions
   (:func:`record_problem_transitions`).

The root: the key present in the most failing traces (a dependency before a service on a tie, then the
earliest), and its deepest failing span (the span and its incident name the root).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal
from uuid import UUID

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession
from uuid_utils.compat import uuid7

from prodsentinel.incidents.grouping_queries import SignalSource
from prodsentinel.incidents.models import IncidentStatus, Problem, ProblemMember
from prodsentinel.incidents.problem_queries import (
    DEPENDENCY_PREFIX,
    SERVICE_PREFIX,
    BatchIncident,
    Edge,
    ProblemQueries,
)
from prodsentinel.incidents.problem_rule_queries import ProblemRuleQueries
from prodsentinel.incidents.repositories import ProblemRepository
from prodsentinel.incidents.schemas import ProblemEvidence, ProblemOut, ProblemRoot
from prodsentinel.incidents.transitions import (
    ANALYSED_SEVERITIES,
    ANALYSIS_TIMEOUT_SECONDS,
    record_transitions,
)
from prodsentinel.lib import jobs
from prodsentinel.lib.vocabulary import Severity, rank

__all__ = (
    "DEFAULT_WINDOW_SECONDS",
    "WINDOW_CAP_SECONDS",
    "Assignment",
    "Plan",
    "ProblemTransition",
    "correlate_batch",
    "enqueue_problem_analysis",
    "plan",
    "problem_outs",
    "record_problem_transitions",
    "refresh",
)

#: PRODSENTINEL_PROBLEM_WINDOW_SECONDS default: how long after a join another incident may still join.
DEFAULT_WINDOW_SECONDS = 600
#: However often it is extended, a problem stops taking new incidents 24 h after its first error.
WINDOW_CAP_SECONDS = 24 * 3600
_KIND_ORDER = {"merge": 0, "trace": 1, "dependency": 2}

ProblemTransitionKind = Literal["opened", "escalated", "resolved"]


# -- the plan (pure) ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Assignment:
    incident_id: UUID
    problem_id: UUID
    joined_by: str
    signal_ids: list[UUID]
    ts: datetime


@dataclass(slots=True)
class Plan:
    #: New problems: id -> the incidents that open it.
    new_problems: dict[UUID, list[UUID]] = field(default_factory=dict)
    assignments: list[Assignment] = field(default_factory=list)


def _best(edges: Iterable[Edge]) -> Edge | None:
    """The strongest reason: a kept merge, then the most traces, then trace before dependency."""
    return min(edges, key=lambda e: (_KIND_ORDER[e.kind] != 0, -e.weight, _KIND_ORDER[e.kind]), default=None)


def plan(
    incidents: Sequence[BatchIncident],
    edges: Sequence[Edge],
    detached: set[tuple[str, UUID]],
    new_id: Any = uuid7,
) -> Plan:
    """Pick a problem for every unassigned incident (no I/O; ``edges`` are already aggregated per pair).

    1. an incident with edges to open problems joins the one with the strongest total edge (ties:
       the oldest problem, UUIDv7 ids sort by creation);
    2. an incident linked (trace or dependency) to an incident placed so joins the same problem, unless
       its fingerprint was detached from it (breadth first: the nearest placed incident wins);
    3. the rest form new problems, one per linked group; each member's evidence is its strongest link
       inside the group, a lone incident's its own signals (joined_by ``trace``).
    """
    by_id = {incident.id: incident for incident in incidents}
    result = Plan()
    placed: dict[UUID, UUID] = {}
    to_problems: dict[UUID, dict[UUID, list[Edge]]] = defaultdict(lambda: defaultdict(list))
    links: dict[UUID, list[Edge]] = defaultdict(list)
    for edge in edges:
        if edge.incident_id not in by_id:
            continue
        if edge.target_problem is not None:
            to_problems[edge.incident_id][edge.target_problem].append(edge)
        elif edge.target_incident in by_id:
            links[edge.incident_id].append(edge)

    def assign(incident: BatchIncident, problem_id: UUID, edge: Edge | None) -> None:
        placed[incident.id] = problem_id
        result.assignments.append(
            Assignment(
                incident_id=incident.id,
                problem_id=problem_id,
                joined_by=edge.kind if edge is not None else "trace",
                signal_ids=(edge.signal_ids if edge is not None and edge.signal_ids else incident.signal_ids),
                ts=incident.last_ts,
            )
        )

    queue: deque[UUID] = deque()
    for incident in incidents:
        candidates = to_problems.get(incident.id)
        if not candidates:
            continue
        problem_id = min(
            candidates,
            key=lambda pid: (
                -max(1_000_000 if e.kind == "merge" else 0 for e in candidates[pid]),
                -sum(e.weight for e in candidates[pid]),
                str(pid),
            ),
        )
        assign(incident, problem_id, _best(candidates[problem_id]))
        queue.append(incident.id)
    while queue:
        current = queue.popleft()
        problem_id = placed[current]
        for incident_id in sorted(
            {e.target_incident for e in links[current] if e.target_incident is not None}, key=str
        ):
            incident = by_id[incident_id]
            if incident_id in placed or (incident.fingerprint, problem_id) in detached:
                continue
            back = [e for e in links[incident_id] if e.target_incident == current]
            assign(
                incident,
                problem_id,
                _best(back or [e for e in links[current] if e.target_incident == incident_id]),
            )
            queue.append(incident_id)

    for incident in incidents:
        if incident.id in placed:
            continue
        problem_id = new_id()
        group: list[UUID] = []
        pending = deque([incident.id])
        seen = {incident.id}
        while pending:
            current = pending.popleft()
            group.append(current)
            for edge in links[current]:
                other = edge.target_incident
                if other is not None and other not in seen and other not in placed:
                    seen.add(other)
                    pending.append(other)
        result.new_problems[problem_id] = group
        members = set(group)
        for member in group:
            inner = [e for e in links[member] if e.target_incident in members]
            assign(by_id[member], problem_id, _best(inner))
    return result


# -- transitions ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class ProblemTransition:
    kind: ProblemTransitionKind
    project_id: UUID
    problem: ProblemOut
    previous_severity: str | None = None

    @property
    def event_type(self) -> str:
        return f"PROBLEM_{self.kind.upper()}"

    @property
    def wants_analysis(self) -> bool:
        return self.kind != "resolved" and Severity(self.problem.severity) in ANALYSED_SEVERITIES

    subject_type: ClassVar[str] = "problem"

    @property
    def subject_id(self) -> UUID:
        return self.problem.id

    @property
    def severity(self) -> str:
        return self.problem.severity

    def analysis(self) -> tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]] | None:
        if not self.wants_analysis:
            return None
        return enqueue_problem_analysis, (self.project_id, self.problem.id)

    def live_payload(self) -> dict[str, Any]:
        """The SSE event: the problem without its evidence (a NOTIFY payload stays under 8 kB; clients
        read the rest through the API)."""
        problem = msgspec.to_builtins(self.problem)
        problem.pop("evidence", None)
        problem.pop("analysis", None)
        problem["incident_ids"] = problem["incident_ids"][:50]
        return {**self.payload(problem), "incident_count": len(self.problem.incident_ids)}

    def payload(self, problem: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "project_id": str(self.project_id),
            "problem": msgspec.to_builtins(self.problem) if problem is None else problem,
        }
        if self.previous_severity is not None:
            body["previous_severity"] = self.previous_severity
        return body


async def record_problem_transitions(
    session: AsyncSession, transitions: Sequence[ProblemTransition], *, actor: str, now: datetime
) -> None:
    """Outbox events and audit rows in the caller's transaction, the SSE events and analysis jobs after
    its commit: the incidents' one recorder (``transitions.record_transitions``)."""
    await record_transitions(session, transitions, actor=actor, now=now)


async def enqueue_problem_analysis(project_id: UUID, problem_id: UUID) -> bool:
    """At most one queued or running analysis per problem (SAQ job key)."""
    return await jobs.enqueue(
        "analyse_problem",
        key=f"analyse-problem:{problem_id}",
        timeout=ANALYSIS_TIMEOUT_SECONDS,
        project_id=str(project_id),
        problem_id=str(problem_id),
    )


# -- rollup --------------------------------------------------------------------------------------------


def problem_out(problem: Problem, members: Sequence[ProblemMember]) -> ProblemOut:
    return ProblemOut(
        id=problem.id,
        title=problem.title,
        status=problem.status,
        severity=problem.severity,
        root=ProblemRoot(
            service=problem.root_service,
            dependency=problem.root_dependency,
            incident_id=problem.root_incident_id,
            span_id=problem.root_span_id,
        ),
        services=list(problem.services or []),
        incident_ids=[m.incident_id for m in members],
        first_seen=problem.first_seen,
        last_seen=problem.last_seen,
        evidence=[
            ProblemEvidence(
                incident_id=m.incident_id, joined_by=m.joined_by, signal_ids=list(m.signal_ids or [])
            )
            for m in members
        ],
        window_until=problem.window_until,
        merged_into=problem.merged_into,
        analysis=problem.analysis,
    )


async def problem_outs(session: AsyncSession, keys: Sequence[tuple[UUID, UUID]]) -> dict[UUID, ProblemOut]:
    repository = ProblemRepository(session=session)
    problems = await repository.get_by_keys(keys)
    members: dict[UUID, list[ProblemMember]] = defaultdict(list)
    for member in await repository.members([(p.project_id, p.id) for p in problems]):
        members[member.problem_id].append(member)
    return {p.id: problem_out(p, members[p.id]) for p in problems}


async def refresh(
    session: AsyncSession,
    keys: Iterable[tuple[UUID, UUID]],
    *,
    now: datetime,
    opened: Iterable[UUID] = (),
    roots: Iterable[UUID] | None = None,
) -> list[ProblemTransition]:
    """Roll up the problems (locked), recompute their roots, and derive their transitions.

    ``opened``: problems created in this transaction (their first event is ``PROBLEM_OPENED``);
    ``roots``: the problems whose root may have moved (default: all of them).
    Severity is the highest of the current incidents (it can drop after a detach: no event then).
    """
    keys = sorted(set(keys), key=lambda k: str(k[1]))
    if not keys:
        return []
    created = set(opened)
    queries = ProblemQueries(session)
    previous = await queries.lock_problems(keys)
    current = await queries.rollup(keys, now=now)
    wanted = set(roots) if roots is not None else {k[1] for k in keys}
    rooted = [k for k in keys if k[1] in wanted]
    await _save_roots(queries, rooted)
    kinds: dict[UUID, tuple[ProblemTransitionKind, str | None]] = {}
    for _project_id, problem_id in keys:
        before, after = previous.get(problem_id), current.get(problem_id)
        if before is None or after is None:
            continue
        if problem_id in created:
            kinds[problem_id] = ("opened", None)
        elif after.status == IncidentStatus.RESOLVED and before.status != IncidentStatus.RESOLVED:
            kinds[problem_id] = ("resolved", None)
        elif after.status != IncidentStatus.RESOLVED and rank(after.severity) > rank(before.severity):
            kinds[problem_id] = ("escalated", before.severity)
    # Read models only for what is announced: most batches touch problems without changing them.
    outs = await problem_outs(session, [k for k in keys if k[1] in kinds])
    return [
        ProblemTransition(kinds[problem_id][0], project_id, outs[problem_id], kinds[problem_id][1])
        for project_id, problem_id in keys
        if problem_id in kinds and problem_id in outs
    ]


async def _save_roots(queries: ProblemQueries, keys: Sequence[tuple[UUID, UUID]]) -> None:
    by_problem = {row.problem_id: row for row in await queries.root_keys(keys)}
    rows: list[dict[str, Any]] = []
    for project_id, problem_id in keys:
        root = by_problem.get(problem_id)
        service: str | None = None
        dependency: str | None = None
        span_id: str | None = None
        incident_id: UUID | None = None
        if root is not None:
            span = await queries.deepest_span(project_id, problem_id, root.key)
            if root.key.startswith(DEPENDENCY_PREFIX):
                dependency = root.key.removeprefix(DEPENDENCY_PREFIX)
            else:
                service = root.key.removeprefix(SERVICE_PREFIX)
            if span is not None:
                service, span_id, incident_id = span.service_name, span.span_id, span.incident_id
        if incident_id is None:
            incident_id = await queries.earliest_member(project_id, problem_id, service)
            if incident_id is None and service is not None:
                incident_id = await queries.earliest_member(project_id, problem_id, None)
        rows.append(
            {
                "project_id": project_id,
                "id": problem_id,
                "service": service,
                "dependency": dependency,
                "incident_id": incident_id,
                "span_id": span_id,
                "title": _title(service, dependency),
            }
        )
    await queries.save_root(rows)


def _title(service: str | None, dependency: str | None) -> str:
    if dependency is not None:
        return f"{dependency} failing" + (f" (called by {service})" if service else "")
    if service is not None:
        return f"{service} failing"
    return "Correlated incidents"


# -- the pass ------------------------------------------------------------------------------------------


async def correlate_batch(
    session: AsyncSession,
    source: SignalSource,
    ids: Sequence[int],
    fingerprints: Sequence[str],
    folds: Sequence[tuple[UUID, str, datetime, datetime]],
    *,
    now: datetime,
    window_seconds: int = DEFAULT_WINDOW_SECONDS,
) -> list[ProblemTransition]:
    """Correlate one grouping batch's incidents into problems (the caller holds the correlation lock
    and commits; see the module docstring). ``ids``/``fingerprints``: the batch's signal rows and the
    fingerprint of each; ``folds``: per incident
    key, ``(project_id, fingerprint, first_seen, last_seen)`` of its new occurrences."""
    if not ids or not folds:
        return []
    queries = ProblemQueries(session)
    await queries.fill_batch_keys(source, ids, fingerprints)
    incidents = await queries.batch_incidents(folds)
    if not incidents:
        return []
    assigned = [i for i in incidents if i.problem_id is not None]
    changed = await queries.store_keys([i.id for i in assigned])
    await queries.touch([(i.project_id, i.problem_id, i.last_ts) for i in assigned if i.problem_id])
    unassigned = [i for i in incidents if i.problem_id is None]
    decided = Plan()
    if unassigned:  # most batches only add to the problems their incidents are in
        edges = await queries.edges([i.id for i in unassigned], window_seconds=window_seconds)
        detached = await ProblemRuleQueries(session).detach_rules(
            [i.project_id for i in unassigned], [i.fingerprint for i in unassigned]
        )
        decided = plan(unassigned, edges, detached)

    by_id = {i.id: i for i in unassigned}
    cap = timedelta(seconds=WINDOW_CAP_SECONDS)
    window = timedelta(seconds=window_seconds)
    new_rows: list[dict[str, Any]] = []
    for problem_id, members in decided.new_problems.items():
        first = min(by_id[m].first_ts for m in members)
        last = max(by_id[m].last_ts for m in members)
        new_rows.append(
            {
                "project_id": by_id[members[0]].project_id,
                "id": problem_id,
                "title": "Correlated incidents",
                "first_seen": first,
                "last_seen": last,
                "window_until": min(first + cap, last + window),
                "now": now,
            }
        )
    await queries.create_problems(new_rows)
    await queries.assign(
        [
            {
                "project_id": by_id[a.incident_id].project_id,
                "problem_id": a.problem_id,
                "incident_id": a.incident_id,
                "joined_by": a.joined_by,
                "signal_ids": [str(s) for s in a.signal_ids],
                "ts": a.ts,
            }
            for a in decided.assignments
        ],
        window_seconds=window_seconds,
        cap_seconds=WINDOW_CAP_SECONDS,
    )
    changed |= await queries.store_keys([a.incident_id for a in decided.assignments])
    touched = {(i.project_id, i.problem_id) for i in assigned if i.problem_id is not None}
    touched |= {(by_id[a.incident_id].project_id, a.problem_id) for a in decided.assignments}
    transitions = await refresh(
        session, touched, now=now, opened=decided.new_problems, roots=changed | set(decided.new_problems)
    )
    return transitions
