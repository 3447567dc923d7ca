"""SQL of the anomaly detection pass (``incidents.anomaly_detection``): the set-based robust z-score.

One statement scores every active metric series against its own history (``percentile_cont`` per
series, gaps-and-islands for sustained runs) and inserts the flagged points; a second counts each
series' recent anomalies for the rate rule. Hand-written SQL over ``metric_points`` and ``anomalies``,
in a plain query class.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.lib import float_sql
from prodsentinel.signals.anomalies import MAD_SCALE, MEAN_AD_SCALE, AnomalyParams

__all__ = ("AnomalyQueries",)


class AnomalyQueries:
    """The detector's SQL on one session (never commits)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

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


def _seconds_before(moment: datetime, seconds: int) -> datetime:
    return moment - timedelta(seconds=seconds)
