"""SQL of the correlation pass (``incidents.problems``) and of the problem rollup, merge and detach.

Set-based per grouping batch: the batch's new occurrences become *trace keys* (``service:<name>`` for
every service with an error in a failing trace, ``dependency:<dep>`` for every dependency a failing
client span of that service called) in a transaction-local temporary table; joins are found by matching
them against the stored keys of open problems (``problem_trace_keys``) and against each other, in two
statements. Only the resulting edge list (one row per incident and target, never per signal) travels to
Python, which picks each incident's problem (``problems.py``); the writes go back as arrays.

Table and column names interpolated into SQL come only from the fixed ``SOURCES`` specs and constants.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.incidents.grouping_queries import SignalSource
from prodsentinel.lib.vocabulary import SPAN_STATUSES, severity_rank_sql

__all__ = ("DEPENDENCY_SQL", "BatchIncident", "Edge", "ProblemQueries", "RootRow")

_ERROR_STATUS = SPAN_STATUSES["ERROR"]
DEPENDENCY_PREFIX = "dependency:"
SERVICE_PREFIX = "service:"
#: At most this many signal ids back one evidence item.
EVIDENCE_SIGNALS = 10
#: Spans whose depth is walked to pick the root span (the earliest traces of the root key).
ROOT_SAMPLE_TRACES = 10

#: The dependency a span called, from its attributes ``a`` (SPEC §14), or NULL: ``peer.service``; else
#: ``db.system`` with ``server.address``/``net.peer.name`` and/or ``db.name`` (``system://host/name``);
#: else the host of ``url.full``/``http.url``, else ``server.address``. Only client (or producer) spans
#: name a dependency: a server span's ``server.address`` is its own address. Spans without a kind (the
#: §4 JSON has none) count as client spans.
DEPENDENCY_SQL = r"""
CASE
  WHEN coalesce(a->>'span.kind', 'CLIENT') NOT IN ('CLIENT', 'PRODUCER') THEN NULL
  WHEN coalesce(a->>'peer.service', '') <> '' THEN lower(a->>'peer.service')
  WHEN coalesce(a->>'db.system', '') <> ''
       AND coalesce(a->>'server.address', a->>'net.peer.name', a->>'db.name', '') <> ''
    THEN lower(a->>'db.system') || '://'
         || lower(coalesce(nullif(a->>'server.address', ''), nullif(a->>'net.peer.name', ''), ''))
         || '/' || coalesce(a->>'db.name', '')
  ELSE nullif(lower(coalesce(
      substring(coalesce(a->>'url.full', a->>'http.url')
                from '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(\[[^]/]*\]|[^/:?#]+)'),
      a->>'server.address')), '')
END
"""

_OPEN = "p.status <> 'resolved' AND p.merged_into IS NULL"


@dataclass(frozen=True, slots=True)
class BatchIncident:
    """An incident a batch touched, with the problem it is in (if that problem is still open)."""

    id: UUID
    project_id: UUID
    fingerprint: str
    problem_id: UUID | None
    first_ts: datetime
    last_ts: datetime
    signal_ids: list[UUID]


@dataclass(frozen=True, slots=True)
class Edge:
    """A reason for an unassigned incident to be with a problem (``target_problem``) or with another
    unassigned incident of the batch (``target_incident``)."""

    incident_id: UUID
    kind: str  # trace | dependency | merge
    weight: int
    signal_ids: list[UUID]
    target_problem: UUID | None = None
    target_incident: UUID | None = None


@dataclass(frozen=True, slots=True)
class RootRow:
    problem_id: UUID
    key: str
    traces: int


class ProblemQueries:
    """The correlation pass's and the problem rollup's SQL on one session (never commits)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def lock_correlation(self) -> None:
        """One correlating transaction at a time (both grouping sources take it, before any row lock)."""
        await self.session.execute(text("SELECT pg_advisory_xact_lock(hashtext('incidents:correlate'))"))

    # -- the batch ------------------------------------------------------------------------------------

    async def batch_incidents(self, source: SignalSource, ids: Sequence[int]) -> list[BatchIncident]:
        """The incidents of a batch's occurrences; ``problem_id`` only when that problem is still open."""
        ts = "s.end_time" if source.name == "span" else "s.timestamp"
        rows = await self.session.execute(
            text(
                f"""
                SELECT i.id, i.project_id, i.fingerprint,
                       CASE WHEN p.id IS NOT NULL AND {_OPEN} THEN p.id END AS problem_id,
                       min({ts}) AS first_ts, max({ts}) AS last_ts,
                       (array_agg(s.signal_id ORDER BY {ts}))[1:{EVIDENCE_SIGNALS}] AS signal_ids
                FROM incident_occurrences o
                JOIN {source.table} s ON s.id = o.signal_pk
                JOIN incidents i ON i.project_id = o.project_id AND i.fingerprint = o.fingerprint
                LEFT JOIN problems p ON p.project_id = i.project_id AND p.id = i.problem_id
                WHERE o.source = :source AND o.signal_pk = ANY(:ids)
                GROUP BY i.id, p.project_id, p.id
                """
            ),
            {"source": source.name, "ids": list(ids)},
        )
        return [
            BatchIncident(
                id=r.id,
                project_id=r.project_id,
                fingerprint=r.fingerprint,
                problem_id=r.problem_id,
                first_ts=r.first_ts,
                last_ts=r.last_ts,
                signal_ids=list(r.signal_ids or []),
            )
            for r in rows
        ]

    async def fill_batch_keys(self, source: SignalSource, ids: Sequence[int]) -> None:
        """The batch's trace keys, per (incident, key, trace), into the transaction's temporary table.

        Service keys come from the occurrences themselves; dependency keys from the failing client spans
        of the same trace and service (looked up once per distinct (trace, service) of the batch).
        ``first_ts`` is the error time (a span's end: callers end after their callees).
        """
        await self.session.execute(
            text(
                """
                CREATE TEMP TABLE IF NOT EXISTS problem_batch_keys (
                    project_id uuid, incident_id uuid, fingerprint text, key text, trace_id text,
                    first_ts timestamptz, span_pk bigint, signal_id uuid
                ) ON COMMIT DELETE ROWS
                """
            )
        )
        await self.session.execute(text("TRUNCATE problem_batch_keys"))
        if source.name == "span":
            own = "s.end_time AS ts, s.id AS span_pk, s.signal_id"
        else:
            own = "s.timestamp AS ts, NULL::bigint AS span_pk, s.signal_id"
        await self.session.execute(
            text(
                f"""
                INSERT INTO problem_batch_keys
                WITH occ AS MATERIALIZED (
                    SELECT o.project_id, o.trace_id, o.service_name, i.id AS incident_id, i.fingerprint, {own}
                    FROM incident_occurrences o
                    JOIN {source.table} s ON s.id = o.signal_pk
                    JOIN incidents i ON i.project_id = o.project_id AND i.fingerprint = o.fingerprint
                    WHERE o.source = :source AND o.signal_pk = ANY(:ids) AND o.trace_id IS NOT NULL
                ),
                pairs AS MATERIALIZED (
                    SELECT DISTINCT project_id, trace_id, service_name FROM occ
                ),
                deps AS MATERIALIZED (
                    SELECT pr.project_id, pr.trace_id, pr.service_name, d.dep, min(sp.end_time) AS ts,
                           min(sp.id) AS span_pk
                    FROM pairs pr
                    JOIN spans sp ON sp.project_id = pr.project_id AND sp.trace_id = pr.trace_id
                    CROSS JOIN LATERAL (SELECT sp.attributes AS a) attrs
                    CROSS JOIN LATERAL (SELECT {DEPENDENCY_SQL} AS dep) d
                    WHERE sp.service_name = pr.service_name AND sp.status + 0 = {_ERROR_STATUS}
                      AND sp.attributes IS NOT NULL AND d.dep IS NOT NULL
                    GROUP BY pr.project_id, pr.trace_id, pr.service_name, d.dep
                )
                SELECT occ.project_id, occ.incident_id, occ.fingerprint,
                       '{SERVICE_PREFIX}' || occ.service_name,
                       occ.trace_id, min(occ.ts), min(occ.span_pk), min(occ.signal_id::text)::uuid
                FROM occ GROUP BY 1, 2, 3, 4, 5
                UNION ALL
                SELECT occ.project_id, occ.incident_id, occ.fingerprint, '{DEPENDENCY_PREFIX}' || deps.dep,
                       occ.trace_id, min(deps.ts), min(deps.span_pk), min(occ.signal_id::text)::uuid
                FROM occ JOIN deps ON deps.project_id = occ.project_id AND deps.trace_id = occ.trace_id
                                  AND deps.service_name = occ.service_name
                GROUP BY 1, 2, 3, 4, 5
                """
            ),
            {"source": source.name, "ids": list(ids)},
        )

    async def store_keys(self, incident_ids: Sequence[UUID]) -> None:
        """Add the batch keys of ``incident_ids`` to the problems they are now in (earliest time wins)."""
        if not incident_ids:
            return
        await self.session.execute(
            text(
                f"""
                INSERT INTO problem_trace_keys AS t (project_id, problem_id, key, trace_id, first_ts, span_pk)
                SELECT k.project_id, i.problem_id, k.key, k.trace_id, min(k.first_ts), min(k.span_pk)
                FROM problem_batch_keys k
                JOIN incidents i ON i.id = k.incident_id
                JOIN problems p ON p.project_id = i.project_id AND p.id = i.problem_id
                WHERE {_OPEN} AND k.incident_id = ANY(:incidents)
                GROUP BY 1, 2, 3, 4
                ON CONFLICT (project_id, problem_id, key, trace_id) DO UPDATE SET
                    first_ts = least(t.first_ts, excluded.first_ts),
                    span_pk = coalesce(t.span_pk, excluded.span_pk)
                WHERE excluded.first_ts < t.first_ts OR (t.span_pk IS NULL AND excluded.span_pk IS NOT NULL)
                """
            ),
            {"incidents": list(incident_ids)},
        )

    async def edges(self, unassigned: Sequence[UUID], *, window_seconds: int) -> list[Edge]:
        """Why each unassigned incident belongs with an open problem or another unassigned incident.

        - trace: a failing trace of the incident holds errors of the problem (stored keys) or of the
          other incident (batch keys);
        - dependency: both fail on the same dependency, the incident's failure inside the problem's
          window (or within ``window_seconds`` of the other incident's);
        - merge: a by-hand merge put both fingerprints in one group (no window: merged stays merged).

        A problem the incident's fingerprint was detached from is never a target.
        """
        if not unassigned:
            return []
        rows = await self.session.execute(
            text(
                f"""
                WITH u AS MATERIALIZED (
                    SELECT k.* FROM problem_batch_keys k WHERE k.incident_id = ANY(:unassigned)
                ),
                to_problem AS (
                    SELECT u.incident_id, t.problem_id, 'trace' AS kind, u.trace_id, u.signal_id,
                           u.first_ts, u.project_id, u.fingerprint
                    FROM u JOIN problem_trace_keys t
                      ON t.project_id = u.project_id AND t.trace_id = u.trace_id
                    WHERE u.key LIKE '{SERVICE_PREFIX}%'
                    UNION ALL
                    SELECT u.incident_id, t.problem_id, 'dependency', u.trace_id, u.signal_id,
                           u.first_ts, u.project_id, u.fingerprint
                    FROM u JOIN problem_trace_keys t ON t.project_id = u.project_id AND t.key = u.key
                    WHERE u.key LIKE '{DEPENDENCY_PREFIX}%'
                ),
                to_open AS (
                    SELECT c.* FROM to_problem c
                    JOIN problems p ON p.project_id = c.project_id AND p.id = c.problem_id
                    WHERE {_OPEN} AND c.first_ts <= p.window_until
                      AND NOT EXISTS (
                          SELECT 1 FROM problem_detach_rules r
                          WHERE r.project_id = c.project_id AND r.fingerprint = c.fingerprint
                            AND r.problem_id = p.id)
                ),
                to_incident AS (
                    SELECT a.incident_id, b.incident_id AS other,
                           CASE WHEN a.key LIKE '{SERVICE_PREFIX}%' THEN 'trace'
                                ELSE 'dependency' END AS kind,
                           a.trace_id, a.signal_id
                    FROM u a JOIN u b ON b.project_id = a.project_id AND b.incident_id <> a.incident_id
                     AND ((a.key LIKE '{SERVICE_PREFIX}%' AND b.key LIKE '{SERVICE_PREFIX}%'
                           AND b.trace_id = a.trace_id)
                       OR (a.key LIKE '{DEPENDENCY_PREFIX}%' AND b.key = a.key
                           AND abs(extract(epoch FROM a.first_ts - b.first_ts)) <= :window))
                ),
                merged AS (
                    SELECT bi.id AS incident_id, p.id AS problem_id
                    FROM incidents bi
                    JOIN problem_merge_rules r
                      ON r.project_id = bi.project_id AND r.fingerprint = bi.fingerprint
                    JOIN problem_merge_rules r2 ON r2.project_id = r.project_id AND r2.group_id = r.group_id
                                               AND r2.fingerprint <> r.fingerprint
                    JOIN incidents mi ON mi.project_id = r2.project_id AND mi.fingerprint = r2.fingerprint
                    JOIN problems p ON p.project_id = mi.project_id AND p.id = mi.problem_id
                    WHERE bi.id = ANY(:unassigned) AND {_OPEN}
                ),
                merged_pairs AS (
                    SELECT a.id AS incident_id, b.id AS other
                    FROM incidents a
                    JOIN problem_merge_rules r
                      ON r.project_id = a.project_id AND r.fingerprint = a.fingerprint
                    JOIN problem_merge_rules r2 ON r2.project_id = r.project_id AND r2.group_id = r.group_id
                                               AND r2.fingerprint <> r.fingerprint
                    JOIN incidents b ON b.project_id = r2.project_id AND b.fingerprint = r2.fingerprint
                    WHERE a.id = ANY(:unassigned) AND b.id = ANY(:unassigned)
                )
                SELECT incident_id, problem_id, NULL::uuid AS other, kind,
                       count(DISTINCT trace_id) AS weight,
                       (array_agg(DISTINCT signal_id))[1:{EVIDENCE_SIGNALS}] AS signal_ids
                FROM to_open GROUP BY incident_id, problem_id, kind
                UNION ALL
                SELECT incident_id, NULL, other, kind, count(DISTINCT trace_id),
                       (array_agg(DISTINCT signal_id))[1:{EVIDENCE_SIGNALS}]
                FROM to_incident GROUP BY incident_id, other, kind
                UNION ALL
                SELECT DISTINCT incident_id, problem_id, NULL::uuid, 'merge', 1000000, '{{}}'::uuid[]
                FROM merged
                UNION ALL
                SELECT DISTINCT incident_id, NULL::uuid, other, 'merge', 1000000, '{{}}'::uuid[]
                FROM merged_pairs
                """
            ),
            {"unassigned": list(unassigned), "window": window_seconds},
        )
        return [
            Edge(
                incident_id=r.incident_id,
                kind=r.kind,
                weight=int(r.weight),
                signal_ids=list(r.signal_ids or []),
                target_problem=r.problem_id,
                target_incident=r.other,
            )
            for r in rows
        ]

    async def detach_rules(
        self, project_ids: Sequence[UUID], fingerprints: Sequence[str]
    ) -> set[tuple[str, UUID]]:
        """(fingerprint, problem_id) pairs a by-hand detach forbids."""
        rows = await self.session.execute(
            text(
                """
                SELECT r.fingerprint, r.problem_id FROM problem_detach_rules r
                JOIN unnest(CAST(:pids AS uuid[]), CAST(:fps AS text[])) AS k(pid, fp)
                  ON r.project_id = k.pid AND r.fingerprint = k.fp
                """
            ),
            {"pids": list(project_ids), "fps": list(fingerprints)},
        )
        return {(r.fingerprint, r.problem_id) for r in rows}

    # -- writes ---------------------------------------------------------------------------------------

    async def create_problems(self, rows: list[dict[str, Any]]) -> None:
        """Insert new problems (``severity``/``status`` are set by the rollup that follows)."""
        if not rows:
            return
        await self.session.execute(
            text(
                """
                INSERT INTO problems (project_id, id, title, status, severity, services, first_seen,
                                      last_seen, window_until, created_at, updated_at)
                SELECT r.project_id, r.id, r.title, 'open', 'low', '{}', r.first_seen, r.last_seen,
                       r.window_until, :now, :now
                FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(
                    project_id uuid, id uuid, title text, first_seen timestamptz, last_seen timestamptz,
                    window_until timestamptz)
                """
            ),
            {"rows": json.dumps(rows, default=str), "now": rows[0]["now"]},
        )

    async def assign(self, rows: list[dict[str, Any]], *, window_seconds: int, cap_seconds: int) -> None:
        """Put incidents in problems with their evidence, and extend each joined problem's window to
        ``join + window`` (never past ``first_seen + cap``)."""
        if not rows:
            return
        params = {"rows": json.dumps(rows, default=str), "window": window_seconds, "cap": cap_seconds}
        spec = """jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(
                    project_id uuid, problem_id uuid, incident_id uuid, joined_by text, signal_ids uuid[],
                    ts timestamptz)"""
        await self.session.execute(
            text(
                f"""
                INSERT INTO problem_members AS m (project_id, problem_id, incident_id, joined_by, signal_ids)
                SELECT r.project_id, r.problem_id, r.incident_id, r.joined_by, coalesce(r.signal_ids, '{{}}')
                FROM {spec}
                ON CONFLICT (project_id, problem_id, incident_id) DO UPDATE SET
                    joined_by = excluded.joined_by, signal_ids = excluded.signal_ids, joined_at = now()
                """
            ),
            params,
        )
        await self.session.execute(
            text(
                f"""
                UPDATE incidents i SET problem_id = r.problem_id FROM {spec}
                WHERE i.project_id = r.project_id AND i.id = r.incident_id
                """
            ),
            params,
        )
        await self.session.execute(
            text(
                f"""
                UPDATE problems p SET
                    window_until = least(p.first_seen + make_interval(secs => :cap),
                                         greatest(p.window_until, j.ts + make_interval(secs => :window))),
                    last_seen = greatest(p.last_seen, j.ts)
                FROM (SELECT r.project_id, r.problem_id, max(r.ts) AS ts FROM {spec} GROUP BY 1, 2) j
                WHERE p.project_id = j.project_id AND p.id = j.problem_id
                """
            ),
            params,
        )

    async def touch(self, keys: Sequence[tuple[UUID, UUID, datetime]]) -> None:
        """A member's new occurrences move the problem's ``last_seen`` (not its window)."""
        if not keys:
            return
        await self.session.execute(
            text(
                """
                UPDATE problems p SET last_seen = greatest(p.last_seen, k.ts)
                FROM unnest(CAST(:pids AS uuid[]), CAST(:ids AS uuid[]), CAST(:ts AS timestamptz[]))
                    AS k(pid, id, ts)
                WHERE p.project_id = k.pid AND p.id = k.id AND p.last_seen < k.ts
                """
            ),
            {"pids": [k[0] for k in keys], "ids": [k[1] for k in keys], "ts": [k[2] for k in keys]},
        )

    # -- rollup ---------------------------------------------------------------------------------------

    async def lock_problems(self, keys: Sequence[tuple[UUID, UUID]]) -> dict[UUID, Row[Any]]:
        """The problems' current (status, severity), locked in id order until commit."""
        if not keys:
            return {}
        rows = await self.session.execute(
            text(
                """
                SELECT p.id, p.project_id, p.status, p.severity, p.created_at FROM problems p
                JOIN unnest(CAST(:pids AS uuid[]), CAST(:ids AS uuid[])) AS k(pid, id)
                  ON p.project_id = k.pid AND p.id = k.id
                ORDER BY p.id
                FOR UPDATE OF p
                """
            ),
            {"pids": [k[0] for k in keys], "ids": [k[1] for k in keys]},
        )
        return {r.id: r for r in rows}

    async def rollup(self, keys: Sequence[tuple[UUID, UUID]], *, now: datetime) -> None:
        """Severity (highest), status and services of each problem from its current incidents.

        resolved when every incident is (or none is left after a detach); acknowledged when every
        unresolved one is acknowledged; otherwise open.
        """
        if not keys:
            return
        rank = severity_rank_sql("i.severity")
        await self.session.execute(
            text(
                f"""
                UPDATE problems p SET
                    severity = coalesce(r.severity, p.severity),
                    status = r.status,
                    services = coalesce(r.services, p.services),
                    resolved_at = CASE WHEN r.status = 'resolved' THEN coalesce(p.resolved_at, :now) END,
                    updated_at = :now
                FROM unnest(CAST(:pids AS uuid[]), CAST(:ids AS uuid[])) AS k(pid, id)
                CROSS JOIN LATERAL (
                    SELECT (array_agg(i.severity ORDER BY {rank} DESC))[1] AS severity,
                           CASE WHEN bool_and(i.status = 'resolved') IS NOT FALSE THEN 'resolved'
                                WHEN bool_and(i.status <> 'open') THEN 'acknowledged'
                                ELSE 'open' END AS status,
                           array_agg(DISTINCT i.service_name ORDER BY i.service_name) AS services
                    FROM incidents i WHERE i.project_id = k.pid AND i.problem_id = k.id
                ) r
                WHERE p.project_id = k.pid AND p.id = k.id AND p.merged_into IS NULL
                """
            ),
            {"pids": [k[0] for k in keys], "ids": [k[1] for k in keys], "now": now},
        )

    async def root_keys(self, keys: Sequence[tuple[UUID, UUID]]) -> list[RootRow]:
        """Per problem, the key present in the most failing traces; ties: a dependency before a service
        (a dependency failing in every trace its caller fails in is the deeper cause), then earliest."""
        if not keys:
            return []
        rows = await self.session.execute(
            text(
                f"""
                SELECT DISTINCT ON (t.problem_id) t.problem_id, t.key, count(*) AS traces
                FROM problem_trace_keys t
                JOIN unnest(CAST(:pids AS uuid[]), CAST(:ids AS uuid[])) AS k(pid, id)
                  ON t.project_id = k.pid AND t.problem_id = k.id
                GROUP BY t.problem_id, t.key
                ORDER BY t.problem_id, count(*) DESC, (t.key LIKE '{DEPENDENCY_PREFIX}%') DESC,
                         min(t.first_ts), t.key
                """
            ),
            {"pids": [k[0] for k in keys], "ids": [k[1] for k in keys]},
        )
        return [RootRow(problem_id=r.problem_id, key=r.key, traces=int(r.traces)) for r in rows]

    async def deepest_span(self, project_id: UUID, problem_id: UUID, key: str) -> Row[Any] | None:
        """The deepest failing span of ``key`` in the problem's earliest traces (depth: its ancestors),
        with the incident its occurrence folded into."""
        row = await self.session.execute(
            text(
                f"""
                WITH RECURSIVE sample AS (
                    SELECT t.span_pk FROM problem_trace_keys t
                    WHERE t.project_id = :pid AND t.problem_id = :problem AND t.key = :key
                      AND t.span_pk IS NOT NULL
                    ORDER BY t.first_ts LIMIT {ROOT_SAMPLE_TRACES}
                ),
                up AS (
                    SELECT s.id AS origin, s.trace_id, s.parent_span_id, 0 AS depth
                    FROM sample JOIN spans s ON s.id = sample.span_pk
                    UNION ALL
                    SELECT up.origin, up.trace_id, p.parent_span_id, up.depth + 1
                    FROM up JOIN spans p ON p.project_id = :pid AND p.trace_id = up.trace_id
                                        AND p.span_id = up.parent_span_id
                    WHERE up.depth < 64
                )
                SELECT s.id, s.span_id, s.service_name, s.end_time, max(up.depth) AS depth,
                       (SELECT i.id FROM incident_occurrences o
                        JOIN incidents i ON i.project_id = o.project_id AND i.fingerprint = o.fingerprint
                        WHERE o.source = 'span' AND o.signal_pk = s.id) AS incident_id
                FROM up JOIN spans s ON s.id = up.origin
                GROUP BY s.id
                ORDER BY max(up.depth) DESC, s.end_time, s.id
                LIMIT 1
                """
            ),
            {"pid": project_id, "problem": problem_id, "key": key},
        )
        return row.first()

    async def earliest_member(self, project_id: UUID, problem_id: UUID, service: str | None) -> UUID | None:
        """The problem's earliest incident (of ``service`` when given): the root incident without a span."""
        value: UUID | None = await self.session.scalar(
            text(
                """
                SELECT i.id FROM incidents i
                WHERE i.project_id = :pid AND i.problem_id = :problem
                  AND (CAST(:service AS text) IS NULL OR i.service_name = :service)
                ORDER BY i.first_seen, i.id LIMIT 1
                """
            ),
            {"pid": project_id, "problem": problem_id, "service": service},
        )
        return value

    async def save_root(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        await self.session.execute(
            text(
                """
                UPDATE problems p SET root_service = r.service, root_dependency = r.dependency,
                       root_incident_id = r.incident_id, root_span_id = r.span_id, title = r.title
                FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(
                    project_id uuid, id uuid, service text, dependency text, incident_id uuid, span_id text,
                    title text)
                WHERE p.project_id = r.project_id AND p.id = r.id
                """
            ),
            {"rows": json.dumps(rows, default=str)},
        )

    # -- merge and detach -----------------------------------------------------------------------------

    async def move_incidents(self, project_id: UUID, source: UUID, target: UUID) -> None:
        """Every current incident of ``source`` into ``target`` (evidence: merge), with its trace keys."""
        params = {"pid": project_id, "source": source, "target": target}
        await self.session.execute(
            text(
                """
                INSERT INTO problem_members AS m (project_id, problem_id, incident_id, joined_by, signal_ids)
                SELECT i.project_id, :target, i.id, 'merge', coalesce(old.signal_ids, '{}')
                FROM incidents i
                LEFT JOIN problem_members old ON old.project_id = i.project_id
                     AND old.problem_id = :source AND old.incident_id = i.id
                WHERE i.project_id = :pid AND i.problem_id = :source
                ON CONFLICT (project_id, problem_id, incident_id) DO UPDATE SET
                    joined_by = 'merge', joined_at = now()
                """
            ),
            params,
        )
        await self.session.execute(
            text(
                "UPDATE incidents SET problem_id = :target WHERE project_id = :pid AND problem_id = :source"
            ),
            params,
        )
        await self.session.execute(
            text(
                """
                INSERT INTO problem_trace_keys AS t (project_id, problem_id, key, trace_id, first_ts, span_pk)
                SELECT project_id, :target, key, trace_id, first_ts, span_pk FROM problem_trace_keys
                WHERE project_id = :pid AND problem_id = :source
                ON CONFLICT (project_id, problem_id, key, trace_id) DO UPDATE SET
                    first_ts = least(t.first_ts, excluded.first_ts),
                    span_pk = coalesce(t.span_pk, excluded.span_pk)
                """
            ),
            params,
        )
        await self.session.execute(
            text(
                """
                UPDATE problems p SET first_seen = least(p.first_seen, s.first_seen),
                       last_seen = greatest(p.last_seen, s.last_seen),
                       window_until = greatest(p.window_until, s.window_until)
                FROM problems s WHERE p.project_id = :pid AND p.id = :target
                  AND s.project_id = :pid AND s.id = :source
                """
            ),
            params,
        )

    async def fingerprints_of(self, project_id: UUID, problem_ids: Sequence[UUID]) -> list[str]:
        rows = await self.session.scalars(
            text(
                "SELECT DISTINCT fingerprint FROM incidents "
                "WHERE project_id = :pid AND problem_id = ANY(:ids)"
            ),
            {"pid": project_id, "ids": list(problem_ids)},
        )
        return list(rows)

    async def keep_merge(self, project_id: UUID, fingerprints: Sequence[str], group_id: UUID) -> None:
        """One merge group for ``fingerprints`` and every fingerprint already grouped with any of them;
        a by-hand merge also lifts their detach rules against each other's problems."""
        params = {"pid": project_id, "fps": list(fingerprints), "group": group_id}
        await self.session.execute(
            text(
                """
                UPDATE problem_merge_rules SET group_id = :group
                WHERE project_id = :pid AND group_id IN (
                    SELECT group_id FROM problem_merge_rules
                    WHERE project_id = :pid AND fingerprint = ANY(:fps))
                """
            ),
            params,
        )
        await self.session.execute(
            text(
                """
                INSERT INTO problem_merge_rules (project_id, fingerprint, group_id)
                SELECT :pid, fp, :group FROM unnest(CAST(:fps AS text[])) AS fp
                ON CONFLICT (project_id, fingerprint) DO UPDATE SET group_id = excluded.group_id
                """
            ),
            params,
        )

    async def lift_detach(self, project_id: UUID, fingerprints: Sequence[str], problem_id: UUID) -> None:
        await self.session.execute(
            text(
                "DELETE FROM problem_detach_rules "
                "WHERE project_id = :pid AND problem_id = :problem AND fingerprint = ANY(:fps)"
            ),
            {"pid": project_id, "problem": problem_id, "fps": list(fingerprints)},
        )

    async def detach(self, project_id: UUID, incident_id: UUID, fingerprint: str, problem_id: UUID) -> None:
        """Take the incident out of the problem and keep the decision (its fingerprint leaves any merge
        group: a merge and a detach of the same fingerprint cannot both hold)."""
        params = {"pid": project_id, "incident": incident_id, "fp": fingerprint, "problem": problem_id}
        await self.session.execute(
            text(
                "DELETE FROM problem_members "
                "WHERE project_id = :pid AND problem_id = :problem AND incident_id = :incident"
            ),
            params,
        )
        await self.session.execute(
            text("UPDATE incidents SET problem_id = NULL WHERE project_id = :pid AND id = :incident"), params
        )
        await self.session.execute(
            text(
                "INSERT INTO problem_detach_rules (project_id, fingerprint, problem_id) "
                "VALUES (:pid, :fp, :problem) ON CONFLICT DO NOTHING"
            ),
            params,
        )
        await self.session.execute(
            text("DELETE FROM problem_merge_rules WHERE project_id = :pid AND fingerprint = :fp"), params
        )

    async def close_merged(self, project_id: UUID, source: UUID, target: UUID, now: datetime) -> None:
        await self.session.execute(
            text(
                "UPDATE problems SET status = 'resolved', merged_into = :target, resolved_at = :now, "
                "updated_at = :now WHERE project_id = :pid AND id = :source"
            ),
            {"pid": project_id, "source": source, "target": target, "now": now},
        )
