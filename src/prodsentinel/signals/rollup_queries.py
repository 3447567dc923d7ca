"""Reads over the rollup tables: ``/services`` counts and metric series by minute or hour.

The rollups (``service_rollups``, ``metric_rollups``; written by statement triggers, see the
``query_scale`` migration) hold whole minutes and hours. A window rarely starts on a bucket edge, so
each read combines the rollups for the whole buckets inside the window with the raw rows of the
partial edges (at most a minute on each side): the answer is exactly the raw computation's, at the
cost of a few hundred rollup rows instead of millions of signals.

``RollupPlan`` is the split: pure arithmetic on the window, tested on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import bindparam, delete, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.lib.float_sql import FLOAT8_MAX_SQL, NUMERIC_SUM_FROM
from prodsentinel.lib.vocabulary import LEVELS, SPAN_STATUSES
from prodsentinel.signals.models import MetricRollup, ServiceRollup

__all__ = ("ROLLUP_AGGREGATES", "RollupPlan", "RollupQueries", "ceil_to", "floor_to", "plan_rollups")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EPOCH_SQL = "timestamptz '1970-01-01 00:00:00+00'"
MINUTE = 60
HOUR = 3600
#: Aggregates a rollup row can answer exactly (percentiles need every value: raw only).
ROLLUP_AGGREGATES = frozenset({"avg", "min", "max", "sum", "count"})

_SIGNAL_LOGS, _SIGNAL_SPANS, _SIGNAL_METRICS = 1, 2, 3


def floor_to(moment: datetime, width: int) -> datetime:
    """The start of the ``width``-second bucket (aligned to the Unix epoch) holding ``moment``."""
    seconds = (moment - EPOCH).total_seconds()
    return moment - timedelta(seconds=seconds % width)


def ceil_to(moment: datetime, width: int) -> datetime:
    """The first bucket start at or after ``moment``."""
    start = floor_to(moment, width)
    return start if start == moment else start + timedelta(seconds=width)


@dataclass(frozen=True, slots=True)
class RollupPlan:
    """``[since, until)`` split into raw edges, whole minutes and whole hours (empty ranges: lo >= hi)."""

    raw: tuple[tuple[datetime, datetime], ...]
    minutes: tuple[tuple[datetime, datetime], ...]
    hours: tuple[tuple[datetime, datetime], ...]


def plan_rollups(since: datetime, until: datetime, step: int) -> RollupPlan | None:
    """How to read ``[since, until)`` for buckets of ``step`` seconds; None: raw rows only.

    A rollup bucket may only be used when it lies inside one step bucket: the minutes when ``step`` is
    a multiple of 60, the hours when it is a multiple of 3600 (both aligned to the epoch, like
    ``date_bin``). The edges that cut a minute are read raw.
    """
    if step % MINUTE:
        return None
    m0, m1 = ceil_to(since, MINUTE), floor_to(until, MINUTE)
    if m0 >= m1:
        return None
    raw = ((since, m0), (m1, until))
    if step % HOUR == 0:
        h0, h1 = ceil_to(since, HOUR), floor_to(until, HOUR)
        if h0 < h1:
            return RollupPlan(raw=raw, minutes=((m0, h0), (h1, m1)), hours=((h0, h1),))
    return RollupPlan(raw=raw, minutes=((m0, m1),), hours=())


def _clamped(numeric: str) -> str:
    return f"least(greatest({numeric}, -{FLOAT8_MAX_SQL}), {FLOAT8_MAX_SQL})::float8"


_EXACT_SUM = "(coalesce(CAST(sum(sum_small) AS text)::numeric, 0) + sum(sum_large))"
#: ``lib.float_sql``'s overflow-free aggregates, combined from partial (rollup or raw) rows.
_COMBINED: dict[str, str] = {
    "count": "sum(n)::float8",
    "min": "min(min_value)",
    "max": "max(max_value)",
    "sum": f"(CASE WHEN sum(sum_large) IS NULL THEN sum(sum_small) ELSE {_clamped(_EXACT_SUM)} END)",
    "avg": (
        "(CASE WHEN sum(sum_large) IS NULL THEN sum(sum_small) / sum(n)::float8 "
        f"ELSE {_clamped(f'{_EXACT_SUM} / sum(n)')} END)"
    ),
}


#: ``service_rollups.signal`` of each signal table.
_ROLLUP_SIGNAL = {"logs": 1, "spans": 2, "metric_points": 3}


class RollupQueries:
    """Rollup-backed reads on one session (never writes, never commits)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def service_stats(self, project_id: UUID, since: datetime) -> Sequence[Any]:
        """Per service, from ``since`` on: last_seen, logs, spans, metrics, errors.

        Whole hours and the whole minutes before the first of them from ``service_rollups`` (two
        primary-key ranges: at most 59 minute rows per service and code, plus the hours), the partial
        first minute from the raw tables (their ``(project_id, time)`` indexes); no upper bound, like
        the raw definition (timestamps may lie up to 24 h ahead).
        """
        whole_from, hours_from = ceil_to(since, MINUTE), ceil_to(since, HOUR)
        statement = text(
            f"""
WITH parts AS (
    SELECT service_name, signal, code, n, last_seen
    FROM service_rollups
    WHERE project_id = :project_id AND width_s = {HOUR} AND bucket >= :hours_from
    UNION ALL
    SELECT service_name, signal, code, n, last_seen
    FROM service_rollups
    WHERE project_id = :project_id AND width_s = {MINUTE} AND bucket >= :whole_from AND bucket < :hours_from
    UNION ALL
    SELECT service_name, {_SIGNAL_LOGS}, level, count(*), max("timestamp")
    FROM logs
    WHERE project_id = :project_id AND "timestamp" >= :since AND "timestamp" < :whole_from
    GROUP BY service_name, level
    UNION ALL
    SELECT service_name, {_SIGNAL_SPANS}, status, count(*), max(start_time)
    FROM spans
    WHERE project_id = :project_id AND start_time >= :since AND start_time < :whole_from
    GROUP BY service_name, status
    UNION ALL
    SELECT service_name, {_SIGNAL_METRICS}, 0, count(*), max("timestamp")
    FROM metric_points
    WHERE project_id = :project_id AND "timestamp" >= :since AND "timestamp" < :whole_from
    GROUP BY service_name
)
SELECT service_name,
       max(last_seen) AS last_seen,
       coalesce(sum(n) FILTER (WHERE signal = {_SIGNAL_LOGS}), 0) AS logs,
       coalesce(sum(n) FILTER (WHERE signal = {_SIGNAL_SPANS}), 0) AS spans,
       coalesce(sum(n) FILTER (WHERE signal = {_SIGNAL_METRICS}), 0) AS metrics,
       coalesce(sum(n) FILTER (WHERE (signal = {_SIGNAL_LOGS} AND code >= {LEVELS["ERROR"]})
                                  OR (signal = {_SIGNAL_SPANS} AND code = {SPAN_STATUSES["ERROR"]})), 0)
           AS errors
FROM parts
GROUP BY service_name
ORDER BY service_name
"""
        )
        params = {
            "project_id": project_id,
            "since": since,
            "whole_from": whole_from,
            "hours_from": hours_from,
        }
        return (await self.session.execute(statement, params)).all()

    async def metric_series(
        self,
        plan: RollupPlan,
        *,
        project_id: UUID,
        name: str,
        agg: str,
        step: int,
        service: str | None,
        labels: dict[str, str] | None,
    ) -> Sequence[Any]:
        """``(ts, value)`` per non-empty ``step`` bucket, from hour and minute rollups and raw edges.

        Each part yields partial aggregates (count, the two sums of ``lib.float_sql``, min, max); the
        buckets combine them with the same formulas as the raw query, so ``count``/``min``/``max``
        are identical and ``sum``/``avg`` equal up to float8 rounding order (bit-identical whenever
        the partial sums are exact; the raw sum's own order is the scan's). Rows of a rollup bucket
        all carry the same labels, so ``labels @>`` filters them exactly like points.
        """
        params: dict[str, Any] = {"project_id": project_id, "name": name, "step": timedelta(seconds=step)}
        filters = ""
        if service is not None:
            filters += " AND service_name = :service"
            params["service"] = service
        if labels:
            filters += " AND labels @> :labels"
        parts: list[str] = []

        def ranges(prefix: str, spans: tuple[tuple[datetime, datetime], ...], column: str) -> str:
            conditions = []
            for i, (lo, hi) in enumerate(spans):
                if lo < hi:
                    params[f"{prefix}_lo_{i}"], params[f"{prefix}_hi_{i}"] = lo, hi
                    conditions.append(f"({column} >= :{prefix}_lo_{i} AND {column} < :{prefix}_hi_{i})")
            return " OR ".join(conditions)

        for width, spans in ((HOUR, plan.hours), (MINUTE, plan.minutes)):
            condition = ranges(f"w{width}", spans, "bucket")
            if condition:
                parts.append(
                    "SELECT bucket AS ts, n, sum_small, sum_large, min_value, max_value FROM metric_rollups "
                    f"WHERE project_id = :project_id AND name = :name AND width_s = {width} "
                    f"AND ({condition}){filters}"
                )
        for i, (lo, hi) in enumerate(plan.raw):  # one branch per edge: each a short time range
            if lo < hi:
                params[f"raw_lo_{i}"], params[f"raw_hi_{i}"] = lo, hi
                parts.append(
                    'SELECT "timestamp", 1::bigint, '
                    f"CASE WHEN abs(value) < {NUMERIC_SUM_FROM} THEN value END, "
                    f"CASE WHEN abs(value) >= {NUMERIC_SUM_FROM} THEN value::text::numeric END, value, value "
                    "FROM metric_points WHERE project_id = :project_id AND name = :name "
                    f'AND "timestamp" >= :raw_lo_{i} AND "timestamp" < :raw_hi_{i}{filters}'
                )
        union = "\nUNION ALL\n".join(parts)
        statement = text(
            f"SELECT date_bin(:step, ts, {EPOCH_SQL}) AS ts, {_COMBINED[agg]} AS value "
            f"FROM ({union}) AS parts GROUP BY 1 ORDER BY 1"
        )
        if labels:
            statement = statement.bindparams(bindparam("labels", labels, type_=JSONB))
        return (await self.session.execute(statement, params)).all()

    async def delete_expired(self, cutoffs: dict[str, datetime]) -> int:
        """Delete rollup buckets that start before their signal table's cutoff; returns the count.

        Rollups are small (a row per minute or hour per service and level, or per metric series), so one
        DELETE per table over the ``bucket`` index is enough. Retention passes the start of the oldest
        partition it keeps, so the rollups of rows still stored stay and ``/services`` keeps matching them.
        """
        deleted = 0
        for table, cutoff in cutoffs.items():
            result = await self.session.execute(
                delete(ServiceRollup).where(
                    ServiceRollup.bucket < cutoff, ServiceRollup.signal == _ROLLUP_SIGNAL[table]
                )
            )
            deleted += int(result.rowcount or 0)  # type: ignore[attr-defined]
        if "metric_points" in cutoffs:
            result = await self.session.execute(
                delete(MetricRollup).where(MetricRollup.bucket < cutoffs["metric_points"])
            )
            deleted += int(result.rowcount or 0)  # type: ignore[attr-defined]
        return deleted
