"""SQL of the incidents domain: grouping folds, incident upserts, lifecycle, analysis and anomaly scoring.

Everything on a hot path is one set-based statement per batch; the hand-written SQL (CTE chains with
``INSERT .. ON CONFLICT .. RETURNING``, ``percentile_cont`` per series, recursive span trees) is beyond
what advanced-alchemy's generic repository expresses, so it lives here as ``text()`` with bound
parameters. Table and column names interpolated into SQL come only from the fixed ``SOURCES`` specs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import Row, and_, func, or_, select, text, update

from prodsentinel.incidents.models import (
    Anomaly,
    GroupingCursor,
    Incident,
    IncidentOccurrence,
    IncidentStatus,
)
from prodsentinel.lib import float_sql
from prodsentinel.signals.anomalies import MAD_SCALE, MEAN_AD_SCALE, AnomalyParams
from prodsentinel.signals.models import LogRecord, Span

__all__ = (
    "SOURCES",
    "AnomalyRepository",
    "ErrorGroup",
    "FoldRow",
    "IncidentRepository",
    "SignalSource",
)


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
        error_filter="level >= 40",
        text_column="message",
        ts_column="timestamp",
        level_expr="level",
    ),
    "span": SignalSource(
        name="span",
        table="spans",
        error_filter="status = 2",
        text_column="name",
        ts_column="start_time",
        level_expr="40",
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


class IncidentRepository(SQLAlchemyAsyncRepository[Incident]):
    """Incident rows, plus the hand-written grouping and lifecycle SQL."""

    model_type = Incident

    # ------------------------------------------------------------------ grouping high-water mark

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
        """Largest committed id of the signal table (a backward index scan of the primary key)."""
        value = await self.session.scalar(text(f"SELECT coalesce(max(id), 0) FROM {source.table}"))
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
                      WHERE o.source = :source AND o.signal_pk = s.id
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
                FROM batch b JOIN {source.table} s ON s.id = b.id
                ON CONFLICT (source, signal_pk) DO NOTHING
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
                                 AND l.level + 0 >= 40
                               UNION ALL
                               SELECT sp.service_name FROM spans sp
                               WHERE sp.project_id = ins.project_id AND sp.trace_id = ins.trace_id
                                 AND sp.status + 0 = 2
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

    # ------------------------------------------------------------------ lifecycle

    async def get_for_project(
        self, incident_id: UUID, project_id: UUID, *, for_update: bool = False
    ) -> Incident | None:
        """The project's incident or ``None``; another project's id is as unknown as a missing one."""
        statement = select(Incident).where(Incident.id == incident_id, Incident.project_id == project_id)
        if for_update:
            statement = statement.with_for_update()
        return await self.session.scalar(statement.execution_options(populate_existing=True))

    async def resolve_quiet(self, *, cutoff: datetime, now: datetime, limit: int) -> list[Incident]:
        """Resolve open/acknowledged incidents whose last occurrence is older than ``cutoff``.

        ``SKIP LOCKED``: an incident being folded right now is skipped (it just had an occurrence).
        """
        candidates = (
            select(Incident.id)
            .where(Incident.status != IncidentStatus.RESOLVED, Incident.last_seen < cutoff)
            .order_by(Incident.last_seen)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        result = await self.session.scalars(
            update(Incident)
            .where(Incident.id.in_(candidates))
            .values(
                status=IncidentStatus.RESOLVED,
                resolved_at=now,
                resolved_by="system:scheduler",
                updated_at=now,
            )
            .returning(Incident)
            .execution_options(populate_existing=True)
        )
        return list(result)

    async def prune_occurrences(self, *, cutoff: datetime, limit: int) -> int:
        """Delete old occurrences the high-water mark has passed (they can no longer be re-scanned)."""
        result = await self.session.execute(
            text(
                """
                DELETE FROM incident_occurrences WHERE id IN (
                    SELECT o.id FROM incident_occurrences o
                    JOIN incident_grouping_cursors c ON c.source = (
                        CASE o.source WHEN 'log' THEN 'logs' ELSE 'spans' END)
                    WHERE o.grouped_at < :cutoff AND o.signal_pk <= c.high_water_id
                    LIMIT :limit)
                """
            ),
            {"cutoff": cutoff, "limit": limit},
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ reads

    async def list_page(
        self,
        project_id: UUID,
        *,
        statuses: Sequence[str],
        severities: Sequence[str],
        service: str | None,
        before_id: UUID | None,
        limit: int,
    ) -> list[Incident]:
        """Newest first by id (UUIDv7: creation order), so pages never skip or repeat an incident."""
        statement = select(Incident).where(Incident.project_id == project_id)
        if statuses:
            statement = statement.where(Incident.status.in_(statuses))
        if severities:
            statement = statement.where(Incident.severity.in_(severities))
        if service:
            statement = statement.where(Incident.service_name == service)
        if before_id is not None:
            statement = statement.where(Incident.id < before_id)
        return list(await self.session.scalars(statement.order_by(Incident.id.desc()).limit(limit)))

    async def sample_logs(self, incident: Incident, limit: int) -> list[LogRecord]:
        """The incident's most recent log occurrences still in the occurrences table."""
        ids = (
            select(IncidentOccurrence.signal_pk)
            .where(
                IncidentOccurrence.project_id == incident.project_id,
                IncidentOccurrence.fingerprint == incident.fingerprint,
                IncidentOccurrence.source == "log",
            )
            .order_by(IncidentOccurrence.ts.desc())
            .limit(limit)
        )
        statement = (
            select(LogRecord)
            .where(LogRecord.project_id == incident.project_id, LogRecord.id.in_(ids))
            .order_by(LogRecord.timestamp.desc())
        )
        return list(await self.session.scalars(statement))

    async def sample_spans(self, incident: Incident, limit: int) -> list[Span]:
        ids = (
            select(IncidentOccurrence.signal_pk)
            .where(
                IncidentOccurrence.project_id == incident.project_id,
                IncidentOccurrence.fingerprint == incident.fingerprint,
                IncidentOccurrence.source == "span",
            )
            .order_by(IncidentOccurrence.ts.desc())
            .limit(limit)
        )
        statement = (
            select(Span)
            .where(Span.project_id == incident.project_id, Span.id.in_(ids))
            .order_by(Span.start_time.desc())
        )
        return list(await self.session.scalars(statement))

    # ------------------------------------------------------------------ analysis

    async def deepest_error_spans(
        self, project_id: UUID, trace_ids: Sequence[str], limit: int = 5
    ) -> list[Row]:
        """ERROR spans of the traces, deepest in their span tree first (then earliest).

        Depth comes from a recursive walk from the roots (no parent, or a parent never received);
        ``depth < 64`` guards against cycles in malformed data.
        """
        if not trace_ids:
            return []
        rows = await self.session.execute(
            text(
                """
                WITH RECURSIVE tree AS (
                    SELECT s.id, s.trace_id, s.span_id, 0 AS depth
                    FROM spans s
                    WHERE s.project_id = :pid AND s.trace_id = ANY(:traces)
                      AND (s.parent_span_id IS NULL OR NOT EXISTS (
                          SELECT 1 FROM spans p
                          WHERE p.project_id = :pid AND p.trace_id = s.trace_id
                            AND p.span_id = s.parent_span_id))
                    UNION ALL
                    SELECT c.id, c.trace_id, c.span_id, t.depth + 1
                    FROM tree t
                    JOIN spans c ON c.project_id = :pid AND c.trace_id = t.trace_id
                                AND c.parent_span_id = t.span_id
                    WHERE t.depth < 64
                )
                SELECT s.signal_id, s.trace_id, s.span_id, s.service_name, s.name, s.start_time,
                       s.end_time, max(t.depth) AS depth
                FROM tree t JOIN spans s ON s.id = t.id
                WHERE s.status = 2
                GROUP BY s.id
                ORDER BY max(t.depth) DESC, s.start_time, s.id
                LIMIT :limit
                """
            ),
            {"pid": project_id, "traces": list(trace_ids), "limit": limit},
        )
        return list(rows)

    async def earliest_errors(self, project_id: UUID, trace_ids: Sequence[str], limit: int = 20) -> list[Row]:
        """Error logs and ERROR spans of the traces in time order (the first one is the first error).

        A span's error time is its end: a caller's span starts before its callee's but fails after it.
        ("+ 0": look up by trace, never by scanning the partial error indexes; see record_occurrences.)
        """
        if not trace_ids:
            return []
        rows = await self.session.execute(
            text(
                """
                (SELECT 'log' AS kind, l.signal_id, l.trace_id, l.service_name, l.timestamp AS ts,
                        l.message AS text
                 FROM logs l
                 WHERE l.project_id = :pid AND l.trace_id = ANY(:traces) AND l.level + 0 >= 40)
                UNION ALL
                (SELECT 'span', s.signal_id, s.trace_id, s.service_name, s.end_time, s.name
                 FROM spans s
                 WHERE s.project_id = :pid AND s.trace_id = ANY(:traces) AND s.status + 0 = 2)
                ORDER BY ts, kind
                LIMIT :limit
                """
            ),
            {"pid": project_id, "traces": list(trace_ids), "limit": limit},
        )
        return list(rows)

    async def error_bursts(
        self,
        project_id: UUID,
        *,
        exclude_service: str,
        since: datetime,
        until: datetime,
        min_count: int,
        limit: int = 10,
    ) -> list[Row]:
        """Other services' error counts in the window (logs via the partial error index, spans likewise)."""
        rows = await self.session.execute(
            text(
                """
                WITH e AS (
                    SELECT l.service_name, l.signal_id, l.timestamp AS ts FROM logs l
                    WHERE l.project_id = :pid AND l.level >= 40
                      AND l.timestamp >= :since AND l.timestamp <= :until
                    UNION ALL
                    SELECT s.service_name, s.signal_id, s.start_time FROM spans s
                    WHERE s.project_id = :pid AND s.status = 2
                      AND s.start_time >= :since AND s.start_time <= :until
                )
                SELECT service_name, count(*) AS errors, min(ts) AS first_error, max(ts) AS last_error,
                       (array_agg(signal_id ORDER BY ts))[1:5] AS signal_ids
                FROM e
                WHERE service_name <> :exclude
                GROUP BY service_name
                HAVING count(*) >= :min_count
                ORDER BY count(*) DESC, service_name
                LIMIT :limit
                """
            ),
            {
                "pid": project_id,
                "since": since,
                "until": until,
                "exclude": exclude_service,
                "min_count": min_count,
                "limit": limit,
            },
        )
        return list(rows)

    async def save_analysis(self, incident_id: UUID, analysis: dict[str, Any], now: datetime) -> None:
        await self.session.execute(
            update(Incident).where(Incident.id == incident_id).values(analysis=analysis, analysed_at=now)
        )

    async def unanalysed_ids(self, severities: Sequence[str], *, limit: int) -> list[UUID]:
        """Unresolved incidents of ``severities`` never analysed: their analysis job was lost."""
        ids = await self.session.scalars(
            select(Incident.id)
            .where(
                Incident.status != IncidentStatus.RESOLVED,
                Incident.severity.in_(severities),
                Incident.analysed_at.is_(None),
            )
            .order_by(Incident.id)
            .limit(limit)
        )
        return list(ids)


class AnomalyRepository(SQLAlchemyAsyncRepository[Anomaly]):
    """Anomaly rows and the set-based robust z-score detector."""

    model_type = Anomaly

    async def detect(self, *, now: datetime, params: AnomalyParams) -> list[Row[Any]]:
        """Score every active series' recent points against its own history and record the flagged ones.

        The SQL twin of ``signals.anomalies`` (its tests compare the two):

        - active series = (project, name, service, labels) with a point in ``(now - score_window, now]``;
        - history = that series' finite points in ``(now - history_window, now - score_window]``,
          ``>= min_history`` of them or the series is not scored;
        - median = ``percentile_cont(0.5)``, MAD = median of ``|x - median|``; scale =
          ``max(1.4826 * MAD if MAD > 0 else 1.253314 * mean(|x - median|), ratio * |median|, min_scale)``;
        - a point is flagged when it ends a run of ``>= sustained_points`` consecutive points (in time
          order, within the score window) with ``|score| > threshold`` on the same side of the median
          (gaps-and-islands over ``row_number()``), like ``sustained_flags``.

        Flagged points are inserted idempotently (unique series + ts) and the new ones returned. The
        work is a handful of sorts per series, so cost grows with active series, not with a Python
        loop per point.
        """
        rows = await self.session.execute(
            text(
                f"""
                WITH points AS (
                    -- per project through ix_metric_points_project_ts (no index leads with timestamp)
                    SELECT m.id, m.project_id, m.name, m.service_name, m.labels, m.timestamp AS ts, m.value,
                           m.timestamp <= :score_start AS in_history
                    FROM projects p
                    JOIN LATERAL (
                        SELECT * FROM metric_points mp
                        WHERE mp.project_id = p.id AND mp.timestamp > :history_start AND mp.timestamp <= :now
                    ) AS m ON true
                ),
                -- One pass, one group per series: history values, the median, and the recent points in
                -- time order as arrays. No join between aggregates, so no plan depends on row estimates
                -- of CTEs (which are poor and once produced a nested loop over every pair of series).
                per_series AS (
                    SELECT project_id, name, service_name, labels,
                           array_agg(value) FILTER (WHERE in_history AND finite) AS history,
                           percentile_cont(0.5) WITHIN GROUP (ORDER BY value)
                               FILTER (WHERE in_history AND finite) AS median,
                           array_agg(value ORDER BY ts, id) FILTER (WHERE NOT in_history) AS recent_values,
                           array_agg(ts ORDER BY ts, id) FILTER (WHERE NOT in_history) AS recent_ts
                    FROM (
                        SELECT *,
                               value NOT IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)
                                   AS finite
                        FROM points
                    ) AS pts
                    GROUP BY project_id, name, service_name, labels
                    HAVING count(*) FILTER (WHERE NOT in_history) > 0
                       AND count(*) FILTER (WHERE in_history AND finite) >= :min_history
                ),
                base AS (
                    SELECT s.project_id, s.name, s.service_name, s.labels, s.median, s.recent_values,
                           s.recent_ts, row_number() OVER () AS sid,
                           greatest(
                               CASE WHEN d.mad > 0 THEN :mad_scale * d.mad
                                    ELSE :mean_ad_scale * d.mean_ad END,
                               :floor_ratio * abs(s.median),
                               :min_scale) AS scale
                    FROM per_series s
                    CROSS JOIN LATERAL (
                        -- mean_ad: not float8 avg(), whose internal sum of squares overflows ("value out
                        -- of range") for deviations above ~1e154 and failed the whole statement (every
                        -- project): lib.float_sql's overflow-free average.
                        SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY abs(v - s.median)) AS mad,
                               {float_sql.overflow_free_avg("abs(v - s.median)")} AS mean_ad
                        FROM unnest(s.history) AS v
                    ) AS d
                ),
                scored AS (
                    SELECT b.sid, b.project_id, b.name, b.service_name, b.labels, b.median,
                           u.ts, u.value, u.ord,
                           (u.value - b.median) / b.scale AS score
                    FROM base b
                    CROSS JOIN LATERAL unnest(b.recent_ts, b.recent_values)
                        WITH ORDINALITY AS u(ts, value, ord)
                ),
                dirs AS (
                    SELECT s.*,
                           CASE WHEN abs(s.score) > :threshold THEN sign(s.score)::int ELSE 0 END AS dir
                    FROM scored s
                ),
                runs AS (
                    -- gaps and islands: within a run of one direction, ord - row_number() is constant
                    SELECT d.*,
                           row_number() OVER (PARTITION BY sid, dir, ord - rn ORDER BY ord) AS run_length
                    FROM (
                        SELECT dirs.*, row_number() OVER (PARTITION BY sid, dir ORDER BY ord) AS rn FROM dirs
                    ) AS d
                ),
                flagged AS (
                    SELECT * FROM runs WHERE dir <> 0 AND run_length >= :sustained
                )
                INSERT INTO anomalies
                    (id, project_id, metric_name, service_name, labels, labels_key, ts, value, expected,
                     score, method, detected_at)
                SELECT gen_random_uuid(), f.project_id, f.name, f.service_name, f.labels,
                       coalesce((SELECT '{{' || string_agg(
                                            to_json(k.key)::text || ': ' || to_json(k.value)::text,
                                            ', ' ORDER BY k.key COLLATE "C") || '}}'
                                 FROM jsonb_each_text(f.labels) AS k), '{{}}'),
                       f.ts, f.value, f.median, f.score, 'mad', :now
                FROM flagged f
                ON CONFLICT (project_id, metric_name, service_name, labels_key, ts) DO NOTHING
                RETURNING id, project_id, metric_name, service_name, labels, labels_key, ts, value,
                          expected, score
                """
            ),
            {
                "now": now,
                "score_start": _seconds_before(now, params.score_window_seconds),
                "history_start": _seconds_before(now, params.history_window_seconds),
                "min_history": params.min_history,
                "mad_scale": MAD_SCALE,
                "mean_ad_scale": MEAN_AD_SCALE,
                "floor_ratio": params.mad_floor_ratio,
                "min_scale": params.min_scale,
                "threshold": params.threshold,
                "sustained": params.sustained_points,
            },
        )
        return list(rows)

    async def recent_counts(
        self, keys: Sequence[tuple[UUID, str, str, str, datetime]], window_seconds: int
    ) -> dict[tuple[UUID, str, str, str], int]:
        """Anomalies per series in the window up to each series' newest new anomaly (the rate rule)."""
        if not keys:
            return {}
        rows = await self.session.execute(
            text(
                """
                SELECT k.pid, k.metric, k.service, k.lkey, count(a.id) AS n
                FROM unnest(CAST(:pids AS uuid[]), CAST(:metrics AS text[]), CAST(:services AS text[]),
                            CAST(:lkeys AS text[]), CAST(:newest AS timestamptz[]))
                     AS k(pid, metric, service, lkey, newest)
                LEFT JOIN anomalies a
                  ON a.project_id = k.pid AND a.metric_name = k.metric AND a.service_name = k.service
                 AND a.labels_key = k.lkey
                 AND a.ts > k.newest - make_interval(secs => :window) AND a.ts <= k.newest
                GROUP BY k.pid, k.metric, k.service, k.lkey
                """
            ),
            {
                "pids": [k[0] for k in keys],
                "metrics": [k[1] for k in keys],
                "services": [k[2] for k in keys],
                "lkeys": [k[3] for k in keys],
                "newest": [k[4] for k in keys],
                "window": window_seconds,
            },
        )
        return {(r.pid, r.metric, r.service, r.lkey): int(r.n) for r in rows}

    async def in_window(
        self, project_id: UUID, *, since: datetime, until: datetime, limit: int = 20
    ) -> list[Anomaly]:
        statement = (
            select(Anomaly)
            .where(Anomaly.project_id == project_id, Anomaly.ts >= since, Anomaly.ts <= until)
            .order_by(func.abs(Anomaly.score).desc(), Anomaly.ts)
            .limit(limit)
        )
        return list(await self.session.scalars(statement))

    async def list_page(
        self,
        project_id: UUID,
        *,
        metric: str | None,
        service: str | None,
        since: datetime | None,
        until: datetime | None,
        after: tuple[datetime, UUID] | None,
        limit: int,
    ) -> list[Anomaly]:
        """Newest first by (ts, id); the cursor is the last row's key."""
        statement = select(Anomaly).where(Anomaly.project_id == project_id)
        if metric:
            statement = statement.where(Anomaly.metric_name == metric)
        if service:
            statement = statement.where(Anomaly.service_name == service)
        if since is not None:
            statement = statement.where(Anomaly.ts >= since)
        if until is not None:
            statement = statement.where(Anomaly.ts <= until)
        if after is not None:
            ts, anomaly_id = after
            statement = statement.where(or_(Anomaly.ts < ts, and_(Anomaly.ts == ts, Anomaly.id < anomaly_id)))
        return list(
            await self.session.scalars(statement.order_by(Anomaly.ts.desc(), Anomaly.id.desc()).limit(limit))
        )


def _seconds_before(moment: datetime, seconds: int) -> datetime:
    from datetime import timedelta

    return moment - timedelta(seconds=seconds)
