"""SQL of the root-cause analysis (``incidents.analysis``): span trees, first errors, error bursts.

Read-only statements over the signal tables around one incident's traces and window: a recursive walk
of the span tree, a time-ordered union of error logs and spans, and per-service error counts. They
have no single model (they read ``logs`` and ``spans`` together), so they live in a plain query class.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.lib.vocabulary import LEVELS, SPAN_STATUSES

__all__ = ("AnalysisQueries",)

#: Stored numbers of the error thresholds, inlined into the SQL below (constants, never user input).
_ERROR_LEVEL = LEVELS["ERROR"]
_ERROR_STATUS = SPAN_STATUSES["ERROR"]


class AnalysisQueries:
    """Reads of the analyser on one session."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

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
                f"""
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
                FROM tree t JOIN spans s ON s.project_id = :pid AND s.id = t.id
                WHERE s.status = {_ERROR_STATUS}
                GROUP BY s.project_id, s.start_time, s.id  -- the primary key
                ORDER BY max(t.depth) DESC, s.start_time, s.id
                LIMIT :limit
                """
            ),
            {"pid": project_id, "traces": list(trace_ids), "limit": limit},
        )
        return list(rows)

    async def problem_traces(
        self,
        project_id: UUID,
        problem_id: UUID,
        dependency: str | None,
        service: str | None,
        limit: int = 10,
    ) -> list[str]:
        """A problem's failing traces, those of its root key first, earliest first."""
        root = f"dependency:{dependency}" if dependency else f"service:{service}"
        rows = await self.session.scalars(
            text(
                """
                SELECT trace_id FROM problem_trace_keys
                WHERE project_id = :pid AND problem_id = :problem
                GROUP BY trace_id
                ORDER BY bool_or(key = :root) DESC, min(first_ts)
                LIMIT :limit
                """
            ),
            {"pid": project_id, "problem": problem_id, "root": root, "limit": limit},
        )
        return list(rows)

    async def earliest_errors(self, project_id: UUID, trace_ids: Sequence[str], limit: int = 20) -> list[Row]:
        """Error logs and ERROR spans of the traces in time order (the first one is the first error).

        A span's error time is its end: a caller's span starts before its callee's but fails after it.
        ("+ 0": look up by trace, never by scanning the partial error indexes; see
        ``GroupingQueries.record_occurrences``.)
        """
        if not trace_ids:
            return []
        rows = await self.session.execute(
            text(
                f"""
                (SELECT 'log' AS kind, l.signal_id, l.trace_id, l.service_name, l.timestamp AS ts,
                        l.message AS text
                 FROM logs l
                 WHERE l.project_id = :pid AND l.trace_id = ANY(:traces) AND l.level + 0 >= {_ERROR_LEVEL})
                UNION ALL
                (SELECT 'span', s.signal_id, s.trace_id, s.service_name, s.end_time, s.name
                 FROM spans s
                 WHERE s.project_id = :pid AND s.trace_id = ANY(:traces) AND s.status + 0 = {_ERROR_STATUS})
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
                f"""
                WITH e AS (
                    SELECT l.service_name, l.signal_id, l.timestamp AS ts FROM logs l
                    WHERE l.project_id = :pid AND l.level >= {_ERROR_LEVEL}
                      AND l.timestamp >= :since AND l.timestamp <= :until
                    UNION ALL
                    SELECT s.service_name, s.signal_id, s.start_time FROM spans s
                    WHERE s.project_id = :pid AND s.status = {_ERROR_STATUS}
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
