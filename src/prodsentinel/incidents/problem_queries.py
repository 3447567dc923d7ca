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
#: The key of the one row per (problem, trace) that trace joins look up.
TRACE_MARKER = "*"
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

#: The edges of the unassigned incidents of a batch (see ``ProblemQueries.edges``).
EDGES_SQL = f"""
    WITH u AS MATERIALIZED (
        SELECT k.* FROM problem_batch_keys k
        WHERE k.incident_id = ANY(:unassigned) AND k.key LIKE '{SERVICE_PREFIX}%'
    ),
    -- Dependencies per incident, not per trace: pairing them trace by trace is quadratic.
    d AS MATERIALIZED (
        SELECT k.project_id, k.incident_id, k.fingerprint, k.key,
               min(k.first_ts) AS first_ts, max(k.first_ts) AS last_ts,
               count(DISTINCT k.trace_id) AS traces,
               (array_agg(DISTINCT k.signal_id))[1:{EVIDENCE_SIGNALS}] AS signal_ids
        FROM problem_batch_keys k
        WHERE k.incident_id = ANY(:unassigned) AND k.key LIKE '{DEPENDENCY_PREFIX}%'
        GROUP BY k.project_id, k.incident_id, k.fingerprint, k.key
    ),
    by_trace AS (
        SELECT u.project_id, u.incident_id, u.fingerprint, t.problem_id,
               count(DISTINCT u.trace_id) AS weight, min(u.first_ts) AS first_ts,
               (array_agg(DISTINCT u.signal_id))[1:{EVIDENCE_SIGNALS}] AS signal_ids
        FROM u JOIN problem_trace_keys t ON t.project_id = u.project_id AND t.trace_id = u.trace_id
                                     AND t.key = '{TRACE_MARKER}'
        GROUP BY u.project_id, u.incident_id, u.fingerprint, t.problem_id
    ),
    by_dependency AS (
        SELECT d.project_id, d.incident_id, d.fingerprint, p.id AS problem_id,
               sum(d.traces) AS weight, min(d.first_ts) AS first_ts,
               (array_agg(s.id))[1:{EVIDENCE_SIGNALS}] AS signal_ids
        FROM d
        JOIN problems p ON p.project_id = d.project_id AND {_OPEN}
        CROSS JOIN LATERAL unnest(d.signal_ids) AS s(id)
        WHERE EXISTS (
            SELECT 1 FROM problem_trace_keys t
            WHERE t.project_id = d.project_id AND t.problem_id = p.id AND t.key = d.key)
        GROUP BY d.project_id, d.incident_id, d.fingerprint, p.id
    ),
    to_open AS (
        SELECT c.incident_id, c.problem_id, c.kind, c.weight, c.signal_ids FROM (
            SELECT *, 'trace' AS kind FROM by_trace
            UNION ALL
            SELECT *, 'dependency' FROM by_dependency
        ) c
        JOIN problems p ON p.project_id = c.project_id AND p.id = c.problem_id
        WHERE {_OPEN} AND c.first_ts <= p.window_until
          AND NOT EXISTS (
              SELECT 1 FROM problem_detach_rules r
              WHERE r.project_id = c.project_id AND r.fingerprint = c.fingerprint
                AND r.problem_id = p.id)
    ),
    -- Two hash-joinable statements (an OR in one join condition plans as a nested loop).
    to_incident AS (
        SELECT a.incident_id, b.incident_id AS other, 'trace' AS kind,
               count(DISTINCT a.trace_id) AS weight,
               (array_agg(DISTINCT a.signal_id))[1:{EVIDENCE_SIGNALS}] AS signal_ids
        FROM u a JOIN u b ON b.project_id = a.project_id AND b.trace_id = a.trace_id
                         AND b.incident_id <> a.incident_id
        GROUP BY a.incident_id, b.incident_id
        UNION ALL
        SELECT a.incident_id, b.incident_id, 'dependency', sum(a.traces),
               (array_agg(s.id))[1:{EVIDENCE_SIGNALS}]
        FROM d a JOIN d b ON b.project_id = a.project_id AND b.key = a.key
                         AND b.incident_id <> a.incident_id
        CROSS JOIN LATERAL unnest(a.signal_ids) AS s(id)
        WHERE a.first_ts <= b.last_ts + make_interval(secs => :window)
          AND b.first_ts <= a.last_ts + make_interval(secs => :window)
        GROUP BY a.incident_id, b.incident_id
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
    SELECT incident_id, problem_id, NULL::uuid AS other, kind, weight, signal_ids FROM to_open
    UNION ALL
    SELECT incident_id, NULL, other, kind, weight, signal_ids FROM to_incident
    UNION ALL
    SELECT DISTINCT incident_id, problem_id, NULL::uuid, 'merge', 1000000, '{{}}'::uuid[]
    FROM merged
    UNION ALL
    SELECT DISTINCT incident_id, NULL::uuid, other, 'merge', 1000000, '{{}}'::uuid[]
    FROM merged_pairs
    """


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

    async def batch_incidents(
        self, folds: Sequence[tuple[UUID, str, datetime, datetime]]
    ) -> list[BatchIncident]:
        """The incidents a batch folded into (``(project_id, fingerprint, first_seen, last_seen)`` of
        the batch's occurrences), with their open problem if any; those in none get their (at most 10,
        smallest) signal ids of the batch, their evidence if they open a problem alone (from the batch
        keys: call after :meth:`fill_batch_keys`)."""
        if not folds:
            return []
        rows = await self.session.execute(
            text(
                f"""
                SELECT i.id, i.project_id, i.fingerprint, f.first_ts, f.last_ts,
                       CASE WHEN p.id IS NOT NULL AND {_OPEN} THEN p.id END AS problem_id,
                       CASE WHEN p.id IS NULL OR NOT ({_OPEN}) THEN
                           ARRAY(SELECT DISTINCT k.signal_id FROM problem_batch_keys k
                                 WHERE k.incident_id = i.id ORDER BY k.signal_id LIMIT {EVIDENCE_SIGNALS})
                       END AS signal_ids
                FROM unnest(CAST(:pids AS uuid[]), CAST(:fps AS text[]), CAST(:firsts AS timestamptz[]),
                            CAST(:lasts AS timestamptz[])) AS f(pid, fp, first_ts, last_ts)
                JOIN incidents i ON i.project_id = f.pid AND i.fingerprint = f.fp
                LEFT JOIN problems p ON p.project_id = i.project_id AND p.id = i.problem_id
                """
            ),
            {
                "pids": [f[0] for f in folds],
                "fps": [f[1] for f in folds],
                "firsts": [f[2] for f in folds],
                "lasts": [f[3] for f in folds],
            },
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

    async def fill_batch_keys(
        self, source: SignalSource, ids: Sequence[int], fingerprints: Sequence[str]
    ) -> None:
        """The batch's trace keys, one row per signal and key, into the transaction's temporary table
        (not aggregated here: every reader aggregates anyway).

        Service keys come from every occurrence, dependency keys from the failing client spans among
        them (every ERROR span is an occurrence, so each failing client span is read exactly once, in
        its own batch, instead of re-reading whole traces). ``first_ts`` is the error time (a span's
        end: callers end after their callees).
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
        # Empty here: ``ON COMMIT DELETE ROWS`` and one fill per transaction.
        if source.name == "span":
            own = "s.end_time AS ts, s.id AS span_pk, s.signal_id"
            keys = f"('{SERVICE_PREFIX}' || s.service_name), ('{DEPENDENCY_PREFIX}' || ({DEPENDENCY_SQL}))"
        else:
            own = "s.timestamp AS ts, NULL::bigint AS span_pk, s.signal_id"
            keys = f"('{SERVICE_PREFIX}' || s.service_name)"
        await self.session.execute(
            text(
                f"""
                INSERT INTO problem_batch_keys
                SELECT s.project_id, i.id, i.fingerprint, kk.key, s.trace_id, x.ts, x.span_pk, x.signal_id
                FROM unnest(CAST(:ids AS bigint[]), CAST(:fps AS text[])) AS b(id, fp)
                JOIN {source.table} s ON s.id = b.id
                CROSS JOIN LATERAL (SELECT {own}) x
                CROSS JOIN LATERAL (SELECT s.attributes) attrs(a)
                CROSS JOIN LATERAL (VALUES {keys}) kk(key)
                JOIN incidents i ON i.project_id = s.project_id AND i.fingerprint = b.fp
                WHERE s.trace_id IS NOT NULL AND kk.key IS NOT NULL
                """
            ),
            {"ids": list(ids), "fps": list(fingerprints)},
        )
        # Statistics for the statements that read it: a never-analysed temporary table is estimated at
        # one row, and the self-joins of ``edges`` were planned as nested loops (seconds a batch).
        await self.session.execute(text("ANALYZE problem_batch_keys"))

    async def store_keys(self, incident_ids: Sequence[UUID]) -> set[UUID]:
        """Add the batch keys of ``incident_ids`` to the problems they are now in (earliest time wins);
        returns the problems whose keys changed (only their root can have moved)."""
        if not incident_ids:
            return set()
        rows = await self.session.scalars(
            text(
                f"""
                WITH k AS MATERIALIZED (
                    SELECT k.project_id, i.problem_id, k.key, k.trace_id, k.first_ts, k.span_pk
                    FROM problem_batch_keys k
                    JOIN incidents i ON i.project_id = k.project_id AND i.id = k.incident_id
                    JOIN problems p ON p.project_id = i.project_id AND p.id = i.problem_id
                    WHERE {_OPEN} AND k.incident_id = ANY(:incidents)
                ),
                r AS (
                    SELECT project_id, problem_id, key, trace_id, min(first_ts) AS first_ts,
                           min(span_pk) AS span_pk
                    FROM k GROUP BY 1, 2, 3, 4
                ),
                -- Rows that would change nothing are left out before the upsert: a conflicting row is
                -- locked (written) even when nothing about it changes.
                changed AS MATERIALIZED (
                    SELECT r.* FROM r
                    WHERE NOT EXISTS (
                        SELECT 1 FROM problem_trace_keys x
                        WHERE x.project_id = r.project_id AND x.problem_id = r.problem_id
                          AND x.key = r.key AND x.trace_id = r.trace_id AND x.first_ts <= r.first_ts
                          AND (x.span_pk IS NOT NULL OR r.span_pk IS NULL))
                ),
                -- A trace's marker holds the earliest of its stored service keys (every write of those
                -- writes it too), so it can only move where one of them does: only those traces' markers
                -- are looked up, not one per trace of the batch.
                marker AS (
                    SELECT project_id, problem_id, '{TRACE_MARKER}' AS key, trace_id,
                           min(first_ts) AS first_ts, NULL::bigint AS span_pk
                    FROM changed WHERE key LIKE '{SERVICE_PREFIX}%' GROUP BY 1, 2, 4
                ),
                ins AS (
                    INSERT INTO problem_trace_keys AS t
                        (project_id, problem_id, key, trace_id, first_ts, span_pk)
                    SELECT * FROM changed
                    UNION ALL
                    SELECT m.* FROM marker m
                    WHERE NOT EXISTS (
                        SELECT 1 FROM problem_trace_keys x
                        WHERE x.project_id = m.project_id AND x.problem_id = m.problem_id
                          AND x.key = m.key AND x.trace_id = m.trace_id AND x.first_ts <= m.first_ts)
                    ON CONFLICT (project_id, problem_id, key, trace_id) DO UPDATE SET
                        first_ts = least(t.first_ts, excluded.first_ts),
                        span_pk = coalesce(t.span_pk, excluded.span_pk)
                    RETURNING t.problem_id
                )
                SELECT DISTINCT problem_id FROM ins
                """
            ),
            {"incidents": list(incident_ids)},
        )
        return set(rows)

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
            text(EDGES_SQL),
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

    async def rollup(self, keys: Sequence[tuple[UUID, UUID]], *, now: datetime) -> dict[UUID, Row[Any]]:
        """Severity (highest), status and services of each problem from its current incidents.

        resolved when every incident is (or none is left after a detach); acknowledged when every
        unresolved one is acknowledged; otherwise open.
        """
        if not keys:
            return {}
        rank = severity_rank_sql("i.severity")
        result = await self.session.execute(
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
                RETURNING p.id, p.status, p.severity
                """
            ),
            {"pids": [k[0] for k in keys], "ids": [k[1] for k in keys], "now": now},
        )
        return {r.id: r for r in result}

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
                WHERE t.key <> '{TRACE_MARKER}'
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
                    FROM sample JOIN spans s ON s.project_id = :pid AND s.id = sample.span_pk
                    UNION ALL
                    SELECT up.origin, up.trace_id, p.parent_span_id, up.depth + 1
                    FROM up JOIN spans p ON p.project_id = :pid AND p.trace_id = up.trace_id
                                        AND p.span_id = up.parent_span_id
                    WHERE up.depth < 64
                )
                SELECT s.id, s.span_id, s.service_name, s.end_time, max(up.depth) AS depth,
                       (SELECT i.id FROM incident_occurrences o
                        JOIN incidents i ON i.project_id = o.project_id AND i.fingerprint = o.fingerprint
                        WHERE o.project_id = :pid AND o.source = 'span' AND o.signal_pk = s.id) AS incident_id
                FROM up JOIN spans s ON s.project_id = :pid AND s.id = up.origin
                GROUP BY s.project_id, s.start_time, s.id  -- the primary key
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
