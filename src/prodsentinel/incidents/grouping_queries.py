"""SQL of the grouping pass: the high-water mark, new error rows, occurrences and the incident fold.

Everything here is one set-based statement per batch (CTE chains with ``INSERT .. ON CONFLICT ..
RETURNING``, row locks over ``unnest`` keys), beyond what advanced-alchemy's generic repository
expresses, so it is hand-written ``text()`` with bound parameters in a plain query class (it spans
four tables: the signal tables, ``incident_occurrences``, ``incidents`` and the grouping cursors).
Table and column names interpolated into SQL come only from the fixed :data:`SOURCES` specs.
The pass that drives it is ``incidents.grouping``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Row, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.incidents.models import GroupingCursor
from prodsentinel.lib.vocabulary import LEVELS, SPAN_STATUSES

__all__ = ("SOURCES", "ErrorGroup", "FoldRow", "GroupingQueries", "SignalSource")

#: Stored numbers of the error thresholds, inlined into the SQL below (constants, never user input).
_ERROR_LEVEL = LEVELS["ERROR"]
_ERROR_STATUS = SPAN_STATUSES["ERROR"]


@dataclass(frozen=True, slots=True)
class SignalSource:
    """Where one kind of error signal lives and how to read it."""

    name: str  # value of incident_occurrences.source and incidents.source
    table: str
    error_filter: str
    text_column: str
    ts_column: str
    level_expr: str


SOURCES: dict[str, SignalSource] = {
    "log": SignalSource(
        name="log",
        table="logs",
        error_filter=f"level >= {_ERROR_LEVEL}",
        text_column="message",
        ts_column="timestamp",
        level_expr="level",
    ),
    "span": SignalSource(
        name="span",
        table="spans",
        error_filter=f"status = {_ERROR_STATUS}",
        text_column="name",
        ts_column="start_time",
        level_expr=str(_ERROR_LEVEL),
    ),
}

# A message longer than this is cut before it travels to Python: fingerprint.py reads no further.
_MAX_TEXT = 8192


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    """New error rows of one batch sharing (service, text): fingerprinted once in Python."""

    service_name: str
    text: str
    ids: list[int]


@dataclass(frozen=True, slots=True)
class FoldRow:
    """Per (project, fingerprint) aggregate of the occurrences a batch newly recorded."""

    project_id: UUID
    fingerprint: str
    count: int
    first_seen: datetime
    last_seen: datetime
    max_level: int
    sample_trace_ids: list[str]
    spread: int
    rate: int


class GroupingQueries:
    """The grouping pass's SQL on one session (flushes nothing, never commits)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def lock_grouping(self, source: str) -> None:
        """One grouper per source at a time (transaction-scoped; released on commit or crash)."""
        await self.session.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": f"incidents:group:{source}"}
        )

    async def snapshot_xmin(self) -> int:
        """Oldest transaction id still running: every xid below it has committed or aborted."""
        value = await self.session.scalar(
            text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        )
        return int(value or 0)

    async def snapshot_xmax(self) -> int:
        """First transaction id not yet assigned when this statement's snapshot was taken."""
        value = await self.session.scalar(
            text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
        )
        return int(value or 0)

    async def get_cursor(self, source: str) -> GroupingCursor:
        await self.session.execute(
            text(
                "INSERT INTO incident_grouping_cursors (source, high_water_id) VALUES (:source, 0) "
                "ON CONFLICT (source) DO NOTHING"
            ),
            {"source": source},
        )
        cursor = await self.session.scalar(
            select(GroupingCursor)
            .where(GroupingCursor.source == source)
            .execution_options(populate_existing=True)
        )
        assert cursor is not None
        return cursor

    async def save_cursor(
        self, source: str, *, high_water_id: int, checkpoint_id: int | None, checkpoint_xmax: int | None
    ) -> None:
        await self.session.execute(
            update(GroupingCursor)
            .where(GroupingCursor.source == source)
            .values(
                high_water_id=high_water_id,
                checkpoint_id=checkpoint_id,
                checkpoint_xmax=checkpoint_xmax,
                updated_at=func.now(),
            )
        )

    async def max_signal_id(self, source: SignalSource) -> int:
        """Largest id allocated so far by the signal table's identity sequence (0 before any).

        Every committed id is at most this, and every id up to it was allocated before now, which is all
        the checkpoint needs. Read from the sequence because the partitioned table has no index on
        ``id`` alone (the primary key leads with ``project_id``); ``max(id)`` would scan every partition.
        """
        value = await self.session.scalar(
            text(
                f"SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('{source.table}', 'id')), 0)"
            )
        )
        return int(value or 0)

    async def new_error_groups(self, source: SignalSource, *, after_id: int, limit: int) -> list[ErrorGroup]:
        """The next ``limit`` error rows above the mark that no occurrence records yet, grouped by text.

        The anti-join makes re-scanning rows above the mark (committed out of id order, see
        ``GroupingCursor``) cheap and idempotent.
        """
        sql = text(
            f"""
            WITH batch AS (
                SELECT s.id, s.service_name, left(s.{source.text_column}, :max_text) AS text
                FROM {source.table} s
                WHERE s.id > :after_id AND s.{source.error_filter}
                  AND NOT EXISTS (
                      SELECT 1 FROM incident_occurrences o
                      WHERE o.project_id = s.project_id AND o.source = :source AND o.signal_pk = s.id
                  )
                ORDER BY s.id
                LIMIT :limit
            )
            SELECT service_name, text, array_agg(id) AS ids FROM batch GROUP BY service_name, text
            """
        )
        rows = await self.session.execute(
            sql, {"after_id": after_id, "limit": limit, "source": source.name, "max_text": _MAX_TEXT}
        )
        return [ErrorGroup(service_name=r.service_name, text=r.text, ids=list(r.ids)) for r in rows]

    async def record_occurrences(
        self, source: SignalSource, *, ids: Sequence[int], fingerprints: Sequence[str], window_seconds: int
    ) -> list[FoldRow]:
        """Record the batch's occurrences and aggregate the newly recorded ones per incident key.

        One statement: ``ON CONFLICT DO NOTHING`` drops signals recorded by an earlier (possibly crashed
        and retried, or concurrent) run, so only new occurrences are counted. Also computed here:

        - ``rate``: occurrences in the ``window_seconds`` up to the batch's newest occurrence of the
          incident (new ones from ``RETURNING`` plus earlier ones from the table: the statement's
          snapshot does not see its own inserts, so nothing is counted twice);
        - ``spread``: the largest number of distinct services with an error (ERROR/CRITICAL log or
          ERROR span) in any trace of the batch.
        """
        sql = text(
            f"""
            WITH batch AS (
                SELECT b.id, b.fp FROM unnest(CAST(:ids AS bigint[]), CAST(:fps AS text[])) AS b(id, fp)
            ),
            ins AS (
                INSERT INTO incident_occurrences
                    (project_id, fingerprint, source, signal_pk, ts, trace_id, service_name, level)
                SELECT s.project_id, b.fp, :source, s.id, s.{source.ts_column}, s.trace_id, s.service_name,
                       {source.level_expr}
                -- the error filter lets the planner use the partial error index on id
                FROM batch b JOIN {source.table} s ON s.id = b.id AND s.{source.error_filter}
                ON CONFLICT (project_id, source, signal_pk) DO NOTHING
                RETURNING project_id, fingerprint, ts, trace_id, level
            ),
            -- Correlated subqueries instead of joins between CTEs: CTE row estimates are poor, and a
            -- join planned as a nested loop over two 5,000-row CTEs cost seconds per batch.
            win AS (
                SELECT ins.*,
                       max(ins.ts) OVER (PARTITION BY ins.project_id, ins.fingerprint) AS newest,
                       -- "+ 0" keeps the planner on the (project, trace) indexes: the partial error
                       -- indexes also match "level >= 40" / "status = 2" and, with stale statistics,
                       -- were chosen and scanned every error of the project per row.
                       CASE WHEN ins.trace_id IS NULL THEN 0 ELSE (
                           SELECT count(DISTINCT e.svc) FROM (
                               SELECT l.service_name AS svc FROM logs l
                               WHERE l.project_id = ins.project_id AND l.trace_id = ins.trace_id
                                 AND l.level + 0 >= {_ERROR_LEVEL}
                               UNION ALL
                               SELECT sp.service_name FROM spans sp
                               WHERE sp.project_id = ins.project_id AND sp.trace_id = ins.trace_id
                                 AND sp.status + 0 = {_ERROR_STATUS}
                           ) AS e) END AS services
                FROM ins
            ),
            agg AS (
                SELECT w.project_id, w.fingerprint,
                       count(*) AS n,
                       min(w.ts) AS first_seen,
                       max(w.ts) AS last_seen,
                       max(w.level) AS max_level,
                       count(*) FILTER (WHERE w.ts > w.newest - make_interval(secs => :window)) AS n_window,
                       (array_agg(DISTINCT w.trace_id) FILTER (WHERE w.trace_id IS NOT NULL))[1:10] AS traces,
                       max(w.services) AS spread
                FROM win w
                GROUP BY w.project_id, w.fingerprint
            )
            SELECT a.*, a.n_window + (
                SELECT count(*) FROM incident_occurrences o
                WHERE o.project_id = a.project_id AND o.fingerprint = a.fingerprint
                  AND o.ts > a.last_seen - make_interval(secs => :window) AND o.ts <= a.last_seen
            ) AS rate
            FROM agg a
            """
        )
        rows = await self.session.execute(
            sql,
            {"ids": list(ids), "fps": list(fingerprints), "source": source.name, "window": window_seconds},
        )
        return [
            FoldRow(
                project_id=r.project_id,
                fingerprint=r.fingerprint,
                count=int(r.n),
                first_seen=r.first_seen,
                last_seen=r.last_seen,
                max_level=int(r.max_level),
                sample_trace_ids=list(r.traces or []),
                spread=int(r.spread),
                rate=int(r.rate),
            )
            for r in rows
        ]

    async def lock_existing(self, keys: Sequence[tuple[UUID, str]]) -> dict[tuple[UUID, str], Row[Any]]:
        """Current (status, severity) of the incidents a fold touches, locked until commit so an
        ack/resolve or auto-resolve cannot slip between this read and the upsert."""
        if not keys:
            return {}
        rows = await self.session.execute(
            text(
                """
                SELECT i.id, i.project_id, i.fingerprint, i.status, i.severity
                FROM incidents i
                JOIN unnest(CAST(:pids AS uuid[]), CAST(:fps AS text[])) AS k(pid, fp)
                  ON i.project_id = k.pid AND i.fingerprint = k.fp
                ORDER BY i.id
                FOR UPDATE OF i
                """
            ),
            {"pids": [k[0] for k in keys], "fps": [k[1] for k in keys]},
        )
        return {(r.project_id, r.fingerprint): r for r in rows}

    async def upsert_incidents(self, rows: list[dict[str, Any]], *, now: datetime) -> list[dict[str, Any]]:
        """Fold aggregates into incidents: one ``INSERT .. ON CONFLICT (project_id, fingerprint) DO UPDATE``.

        The caller has computed each row's final ``severity`` (escalate-only while open, fresh on
        reopen) under the row locks of :meth:`lock_existing`. A resolved incident that receives an
        occurrence is reopened (regression) and its ``reopened_count`` incremented. Sample trace ids
        keep the oldest first and are capped at 10.
        """
        if not rows:
            return []
        result = await self.session.execute(
            text(
                """
                INSERT INTO incidents AS i
                    (id, project_id, fingerprint, title, service_name, source, severity, status, count,
                     first_seen, last_seen, sample_trace_ids, reopened_count, created_at, updated_at)
                SELECT r.id, r.project_id, r.fingerprint, r.title, r.service_name, r.source, r.severity,
                       'open', r.count, r.first_seen, r.last_seen, coalesce(r.sample_trace_ids, '{}'), 0,
                       :now, :now
                FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(
                    id uuid, project_id uuid, fingerprint text, title text, service_name text, source text,
                    severity text, count integer, first_seen timestamptz, last_seen timestamptz,
                    sample_trace_ids text[])
                ON CONFLICT (project_id, fingerprint) DO UPDATE SET
                    count = i.count + excluded.count,
                    first_seen = least(i.first_seen, excluded.first_seen),
                    last_seen = greatest(i.last_seen, excluded.last_seen),
                    sample_trace_ids = ARRAY(
                        SELECT u.t FROM unnest(i.sample_trace_ids || excluded.sample_trace_ids)
                            WITH ORDINALITY AS u(t, o)
                        GROUP BY u.t ORDER BY min(u.o) LIMIT 10),
                    severity = excluded.severity,
                    status = CASE WHEN i.status = 'resolved' THEN 'open' ELSE i.status END,
                    reopened_count = i.reopened_count + CASE WHEN i.status = 'resolved' THEN 1 ELSE 0 END,
                    acked_by = CASE WHEN i.status = 'resolved' THEN NULL ELSE i.acked_by END,
                    acked_at = CASE WHEN i.status = 'resolved' THEN NULL ELSE i.acked_at END,
                    resolved_by = CASE WHEN i.status = 'resolved' THEN NULL ELSE i.resolved_by END,
                    resolved_at = CASE WHEN i.status = 'resolved' THEN NULL ELSE i.resolved_at END,
                    updated_at = excluded.updated_at
                RETURNING i.*
                """
            ),
            {"rows": json.dumps(rows, default=str), "now": now},
        )
        return [dict(row._mapping) for row in result]

    async def prune_occurrences(self, *, cutoff: datetime, limit: int) -> int:
        """Delete old occurrences the high-water mark has passed (they can no longer be re-scanned)."""
        result = await self.session.execute(
            text(
                """
                DELETE FROM incident_occurrences WHERE (project_id, id) IN (
                    SELECT o.project_id, o.id FROM incident_occurrences o
                    JOIN incident_grouping_cursors c ON c.source = (
                        CASE o.source WHEN 'log' THEN 'logs' ELSE 'spans' END)
                    WHERE o.grouped_at < :cutoff AND o.signal_pk <= c.high_water_id
                    LIMIT :limit)
                """
            ),
            {"cutoff": cutoff, "limit": limit},
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
