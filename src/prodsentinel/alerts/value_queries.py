"""The per-kind value SQL of alert evaluation: one statement per policy kind for every policy of it.

The statements are hand-written on purpose: they compute the value of every policy of one kind in ONE
statement. The policies travel as a single JSONB parameter (``jsonb_to_recordset``); policies that
read the same rows (same project, window and filters that narrow the scan) share one index range scan
through a ``LATERAL`` subquery keyed by their DISTINCT "scan key", and the per-policy filters are then
applied to a small aggregate instead of the raw signals. So the cost is one scan per distinct scan
key, not one per policy and never one Python step per signal.

This SQL has no single model (it reads logs, spans, metric points, anomalies and incidents), so it is
a plain query class (CONVENTIONS: ``<concern>_queries.py``) rather than a repository.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.alerts.models import AlertPolicy
from prodsentinel.alerts.policies import q_regex
from prodsentinel.lib import float_sql
from prodsentinel.lib.vocabulary import LEVELS, Severity, rank, severity_rank_sql

__all__ = ("ValueQueries", "policy_rows")


def policy_rows(kind: str, policies: Sequence[AlertPolicy]) -> list[dict[str, Any]]:
    """The JSON rows the kind's statement reads (one per policy; ``jsonb_to_recordset`` columns)."""
    rows = []
    for policy in policies:
        params = policy.params or {}
        row: dict[str, Any] = {
            "policy_id": str(policy.id),
            "project_id": str(policy.project_id),
            "window_s": policy.window_seconds,
        }
        if kind == "log_rate":
            q = params.get("q")
            row.update(
                min_level=LEVELS[str(params.get("level") or "ERROR").upper()],
                service=params.get("service"),
                q=q,
                q_regex=q_regex(q) if q else None,
            )
        elif kind == "error_rate":
            row["service"] = params["service"]
        elif kind == "metric_threshold":
            row.update(
                metric=params["metric"],
                service=params.get("service"),
                match_labels=params.get("match_labels") or None,
                agg=params.get("agg") or "avg",
            )
        elif kind == "anomaly":
            row.update(metric=params["metric"], service=params.get("service"))
        elif kind == "incident":
            row["min_rank"] = rank(Severity(params["min_severity"]))
        rows.append(row)
    return rows


def _policies_param(rows: list[dict[str, Any]]) -> Any:
    return bindparam("policies", rows, type_=JSONB)


def _bucket_case(column: str, windows: Sequence[int]) -> str:
    """SQL giving each row the smallest window (seconds) that contains it, NULL outside them all.

    A row is in window ``w`` exactly when its bucket is <= ``w``, so counts per bucket add up to
    every window's count without scanning once per window. The windows are validated integers.
    """
    branches = " ".join(
        f"WHEN {column} > CAST(:now AS timestamptz) - make_interval(secs => {int(w)}) THEN {int(w)}"
        for w in sorted(set(windows))
    )
    return f"CASE {branches} END"


#: ERROR spans / spans of each (project, window, service) in ``(now - window, now]``: the whole minutes
#: inside it from ``service_rollups`` (signal 2 = spans, code = status), the cut edges from ``spans``
#: (two short ``ix_spans_project_service_ts`` ranges). A window that holds no whole minute is read raw
#: (``cut_lo = cut_hi = now``: the rollup range is empty and the raw ranges cover the window).
_ERROR_RATE_SQL = """
WITH p AS MATERIALIZED (
    SELECT * FROM jsonb_to_recordset(:policies)
        AS p(policy_id uuid, project_id uuid, window_s int, service text)
),
scans AS MATERIALIZED (
    SELECT project_id, window_s, service, since,
           CASE WHEN first_m < last_m THEN first_m ELSE CAST(:now AS timestamptz) END AS cut_lo,
           CASE WHEN first_m < last_m THEN last_m ELSE CAST(:now AS timestamptz) END AS cut_hi
    FROM (
        SELECT DISTINCT project_id, window_s, service,
               CAST(:now AS timestamptz) - make_interval(secs => window_s) AS since,
               date_bin('60 seconds', CAST(:now AS timestamptz) - make_interval(secs => window_s),
                        timestamptz '1970-01-01 00:00:00+00') + interval '60 seconds' AS first_m,
               date_bin('60 seconds', CAST(:now AS timestamptz), timestamptz '1970-01-01 00:00:00+00')
                   AS last_m
        FROM p
    ) AS w
),
agg AS MATERIALIZED (
    SELECT s.project_id, s.window_s, s.service,
           coalesce(r.total, 0) + e.total AS total, coalesce(r.errors, 0) + e.errors AS errors
    FROM scans s
    CROSS JOIN LATERAL (
        SELECT sum(sr.n) AS total, sum(sr.n) FILTER (WHERE sr.code = 2) AS errors
        FROM service_rollups sr
        WHERE sr.project_id = s.project_id
          AND sr.width_s = 60
          AND sr.bucket >= s.cut_lo
          AND sr.bucket < s.cut_hi
          AND sr.service_name = s.service
          AND sr.signal = 2
    ) r
    CROSS JOIN LATERAL (
        SELECT count(*) AS total, count(*) FILTER (WHERE spans.status = 2) AS errors
        FROM spans
        WHERE spans.project_id = s.project_id
          AND spans.service_name = s.service
          AND ((spans.start_time > s.since AND spans.start_time < s.cut_lo)
               OR (spans.start_time >= s.cut_hi AND spans.start_time <= CAST(:now AS timestamptz)))
    ) e
)
SELECT p.policy_id, CASE WHEN a.total > 0 THEN a.errors::float8 / a.total END
FROM p JOIN agg a USING (project_id, window_s, service)
"""


# Aggregates of ``m.value`` that cannot overflow (``lib.float_sql``): one point of any finite value
# cannot fail the statement, which evaluates the policies of every project at once (the cron).
_METRIC_VALUE_AGGREGATES = f"""
        {float_sql.overflow_free_avg("m.value")} AS v_avg,
        min(m.value) AS v_min, max(m.value) AS v_max,
        {float_sql.overflow_free_sum("m.value")} AS v_sum,
        count(*) AS v_count"""

#: What percentiles sort by, and the factor of the result: the plain values, or (the fallback for
#: policies whose percentile overflowed to Infinity) the halved values, doubled back.
_PLAIN_PERCENTILES = ("m.value", "")
_HALVED_PERCENTILES = (float_sql.halved("m.value"), " * 2::float8")


def _metric_sql(percentiles: tuple[str, str]) -> str:
    order_by, factor = percentiles
    aggregates = f"""{_METRIC_VALUE_AGGREGATES},
        percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY {order_by})
            FILTER (WHERE k.need_pct) AS v_pct"""
    return f"""
WITH p AS MATERIALIZED (
    SELECT * FROM jsonb_to_recordset(:policies)
        AS p(policy_id uuid, project_id uuid, window_s int, metric text, service text,
             match_labels jsonb, agg text)
),
keys AS MATERIALIZED (
    SELECT project_id, window_s, metric, service, match_labels,
           bool_or(agg IN ('p50', 'p95', 'p99')) AS need_pct
    FROM p GROUP BY 1, 2, 3, 4, 5
),
-- A key naming its service: a precise range scan of (project, name, service, timestamp).
by_service AS MATERIALIZED (
    SELECT k.project_id, k.window_s, k.metric, k.service, k.match_labels, c.*
    FROM keys k
    CROSS JOIN LATERAL (
        SELECT {aggregates}
        FROM metric_points m
        WHERE m.project_id = k.project_id
          AND m.name = k.metric
          AND m.service_name = k.service
          AND m.timestamp > CAST(:now AS timestamptz) - make_interval(secs => k.window_s)
          AND m.timestamp <= CAST(:now AS timestamptz)
          AND (k.match_labels IS NULL OR m.labels @> k.match_labels)
    ) c
    WHERE k.service IS NOT NULL
),
-- Keys over every service: the window's points are read once per project (by timestamp) and
-- shared, instead of one scan per key over the metric's whole retention.
wide AS MATERIALIZED (
    SELECT project_id, max(window_s) AS max_w, array_agg(DISTINCT metric) AS metrics
    FROM keys WHERE service IS NULL GROUP BY project_id
),
points AS MATERIALIZED (
    SELECT w.project_id, m.name, m.labels, m.value, m.timestamp
    FROM wide w
    JOIN metric_points m
      ON m.project_id = w.project_id
     AND m.timestamp > CAST(:now AS timestamptz) - make_interval(secs => w.max_w)
     AND m.timestamp <= CAST(:now AS timestamptz)
     AND m.name = ANY(w.metrics)
),
all_services AS MATERIALIZED (
    SELECT k.project_id, k.window_s, k.metric, k.service, k.match_labels, {_METRIC_VALUE_AGGREGATES},
           NULL::float8[] AS v_pct
    FROM keys k
    JOIN points m
      ON m.project_id = k.project_id
     AND m.name = k.metric
     AND m.timestamp > CAST(:now AS timestamptz) - make_interval(secs => k.window_s)
     AND (k.match_labels IS NULL OR m.labels @> k.match_labels)
    WHERE k.service IS NULL
    GROUP BY k.project_id, k.window_s, k.metric, k.service, k.match_labels
),
-- Percentiles need a sort per key: computed only for the keys that ask for one.
all_services_pct AS MATERIALIZED (
    SELECT k.project_id, k.window_s, k.metric, k.match_labels,
           percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY {order_by}) AS v_pct
    FROM keys k
    JOIN points m
      ON m.project_id = k.project_id
     AND m.name = k.metric
     AND m.timestamp > CAST(:now AS timestamptz) - make_interval(secs => k.window_s)
     AND (k.match_labels IS NULL OR m.labels @> k.match_labels)
    WHERE k.service IS NULL AND k.need_pct
    GROUP BY k.project_id, k.window_s, k.metric, k.match_labels
),
agg AS (
    SELECT * FROM by_service
    UNION ALL
    SELECT a.project_id, a.window_s, a.metric, a.service, a.match_labels, a.v_avg, a.v_min, a.v_max,
           a.v_sum, a.v_count, pct.v_pct
    FROM all_services a
    LEFT JOIN all_services_pct pct
        ON pct.project_id = a.project_id
       AND pct.window_s = a.window_s
       AND pct.metric = a.metric
       AND pct.match_labels IS NOT DISTINCT FROM a.match_labels
)
SELECT p.policy_id,
       CASE p.agg
           WHEN 'avg' THEN a.v_avg
           WHEN 'min' THEN a.v_min
           WHEN 'max' THEN a.v_max
           WHEN 'sum' THEN a.v_sum
           WHEN 'count' THEN coalesce(a.v_count, 0)::float8
           WHEN 'p50' THEN a.v_pct[1]{factor}
           WHEN 'p95' THEN a.v_pct[2]{factor}
           WHEN 'p99' THEN a.v_pct[3]{factor}
       END
FROM p
LEFT JOIN agg a
    ON a.project_id = p.project_id
   AND a.window_s = p.window_s
   AND a.metric = p.metric
   AND a.service IS NOT DISTINCT FROM p.service
   AND a.match_labels IS NOT DISTINCT FROM p.match_labels
"""


_METRIC_SQL = _metric_sql(_PLAIN_PERCENTILES)
_METRIC_SQL_HALVED_PERCENTILES = _metric_sql(_HALVED_PERCENTILES)
_PERCENTILE_AGGS = frozenset({"p50", "p95", "p99"})


_ANOMALY_SQL = """
WITH p AS MATERIALIZED (
    SELECT * FROM jsonb_to_recordset(:policies)
        AS p(policy_id uuid, project_id uuid, window_s int, metric text, service text)
),
scans AS MATERIALIZED (SELECT DISTINCT project_id, window_s, metric, service FROM p),
agg AS MATERIALIZED (
    SELECT s.project_id, s.window_s, s.metric, s.service, c.n
    FROM scans s
    CROSS JOIN LATERAL (
        SELECT count(*) AS n
        FROM anomalies an
        WHERE an.project_id = s.project_id
          AND an.metric_name = s.metric
          AND (s.service IS NULL OR an.service_name = s.service)
          AND an.ts > CAST(:now AS timestamptz) - make_interval(secs => s.window_s)
          AND an.ts <= CAST(:now AS timestamptz)
    ) c
)
SELECT p.policy_id, a.n::float8
FROM p
JOIN agg a
    ON a.project_id = p.project_id
   AND a.window_s = p.window_s
   AND a.metric = p.metric
   AND a.service IS NOT DISTINCT FROM p.service
"""


_INCIDENT_SQL = f"""
WITH p AS MATERIALIZED (
    SELECT * FROM jsonb_to_recordset(:policies) AS p(policy_id uuid, project_id uuid, min_rank int)
),
counts AS MATERIALIZED (
    SELECT i.project_id,
           {severity_rank_sql("i.severity")} AS rank,
           count(*) AS n
    FROM incidents i
    WHERE i.project_id IN (SELECT DISTINCT project_id FROM p)
      AND i.status IN ('open', 'acknowledged')
      AND i.first_seen <= CAST(:now AS timestamptz)
    GROUP BY 1, 2
)
SELECT p.policy_id, coalesce(sum(c.n) FILTER (WHERE c.rank >= p.min_rank), 0)::float8
FROM p LEFT JOIN counts c ON c.project_id = p.project_id
GROUP BY p.policy_id
"""


class ValueQueries:
    """The value of each policy at ``now``, one statement per kind (``None``: no value, e.g. no span)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def disable_jit(self) -> None:
        """``SET LOCAL jit = off`` for the rest of the transaction.

        The value queries run over ``jsonb_to_recordset``, whose row estimate is a guess; a large guess
        triggers JIT compilation that costs more (about a second) than the queries themselves.
        """
        await self.session.execute(text("SET LOCAL jit = off"))

    async def values(self, policies: Sequence[AlertPolicy], now: datetime) -> dict[UUID, float | None]:
        """Every policy's value: the policies grouped by kind, one statement per kind present."""
        by_kind: dict[str, list[AlertPolicy]] = {}
        for policy in policies:
            by_kind.setdefault(policy.kind, []).append(policy)
        queries = {
            "log_rate": self.log_rate,
            "error_rate": self.error_rate,
            "metric_threshold": self.metric,
            "anomaly": self.anomaly,
            "incident": self.incident,
        }
        values: dict[UUID, float | None] = {}
        for kind, group in by_kind.items():
            query = queries.get(kind)
            if query is not None:
                values.update(await query(policy_rows(kind, group), now))
        return values

    async def _values(self, sql: str, rows: list[dict[str, Any]], now: datetime) -> dict[UUID, float | None]:
        if not rows:
            return {}
        statement = text(sql).bindparams(_policies_param(rows), bindparam("now", now))
        result = await self.session.execute(statement)
        return {row[0]: (None if row[1] is None else float(row[1])) for row in result}

    async def log_rate(self, rows: list[dict[str, Any]], now: datetime) -> dict[UUID, float | None]:
        """Count of matching logs in ``(now - window, now]``.

        ONE index range scan per project over its largest window, grouped by (service, level, window
        bucket), with one ``count(*) FILTER`` per distinct text query (bound parameters): so 1,000
        policies cost one pass over the window's rows plus one cheap test per row and distinct ``q``.
        Row keys: policy_id, project_id, window_s, min_level, service, q_index (0 = no q, else the
        1-based position in the distinct queries passed as ``queries``).
        """
        if not rows:
            return {}
        queries: list[tuple[str, bool]] = []  # (text, is_regex), distinct
        lowest: dict[int, int] = {}  # q position -> lowest min_level of its policies
        for row in rows:
            key = (
                (row["q_regex"], True) if row.get("q_regex") else (row["q"], False) if row.get("q") else None
            )
            if key is None:
                row["q_index"] = 0
                continue
            if key not in queries:
                queries.append(key)
            row["q_index"] = position = queries.index(key) + 1
            lowest[position] = min(lowest.get(position, row["min_level"]), int(row["min_level"]))
        params: dict[str, Any] = {}
        filters = []
        for i, (query, is_regex) in enumerate(queries, start=1):
            params[f"q_{i}"] = query if is_regex else query.lower()
            test = f"l.message ~* :q_{i}" if is_regex else f"strpos(lower(l.message), :q_{i}) > 0"
            # The level test comes first so the text test only runs on rows some policy can count.
            filters.append(f"count(*) FILTER (WHERE l.level >= {lowest[i]} AND {test}) AS n_{i}")
        counts = ", ".join(["count(*) AS n_0", *filters])
        array = ", ".join(f"c.n_{i}" for i in range(len(queries) + 1))
        bucket = _bucket_case("l.timestamp", [row["window_s"] for row in rows])
        sql = f"""
    WITH p AS MATERIALIZED (
        SELECT * FROM jsonb_to_recordset(:policies)
            AS p(policy_id uuid, project_id uuid, window_s int, min_level int, service text, q_index int)
    ),
    proj AS MATERIALIZED (SELECT project_id, max(window_s) AS max_w FROM p GROUP BY project_id),
    agg AS MATERIALIZED (
        SELECT pr.project_id, c.service_name, c.level, c.bucket, u.n, u.q_index - 1 AS q_index
        FROM proj pr
        CROSS JOIN LATERAL (
            SELECT l.service_name, l.level, {bucket} AS bucket, {counts}
            FROM logs l
            WHERE l.project_id = pr.project_id
              AND l.timestamp > CAST(:now AS timestamptz) - make_interval(secs => pr.max_w)
              AND l.timestamp <= CAST(:now AS timestamptz)
            GROUP BY 1, 2, 3
        ) c
        CROSS JOIN LATERAL unnest(ARRAY[{array}]) WITH ORDINALITY AS u(n, q_index)
        WHERE u.n > 0
    )
    SELECT p.policy_id, coalesce(sum(a.n), 0)::float8
    FROM p
    LEFT JOIN agg a
        ON a.project_id = p.project_id
       AND a.q_index = p.q_index
       AND a.bucket <= p.window_s
       AND a.level >= p.min_level
       AND (p.service IS NULL OR a.service_name = p.service)
    GROUP BY p.policy_id
    """
        statement = text(sql).bindparams(_policies_param(rows), bindparam("now", now), **params)
        result = await self.session.execute(statement)
        return {row[0]: float(row[1]) for row in result}

    async def error_rate(self, rows: list[dict[str, Any]], now: datetime) -> dict[UUID, float | None]:
        """ERROR spans / all spans of the service that started in the window; None without spans.

        Whole minutes come from the span rollups, the cut edges from the raw spans (exact).
        """
        return await self._values(_ERROR_RATE_SQL, rows, now)

    async def metric(self, rows: list[dict[str, Any]], now: datetime) -> dict[UUID, float | None]:
        """The aggregate of the metric's points in the window (percentiles as ``percentile_cont``);
        None when there is no point (``count`` is then 0).

        No finite point can make a value overflow or the statement fail. A percentile between
        opposite-sign values near +-1.8e308 comes out of ``percentile_cont`` as Infinity (its
        ``lo + (hi - lo) * f`` overflows; the stored values are finite): only those policies are
        evaluated again over halved values, so ordinary data pays nothing for it.
        """
        values = await self._values(_METRIC_SQL, rows, now)
        overflowed = {
            str(policy_id) for policy_id, value in values.items() if value is not None and math.isinf(value)
        }
        again = [
            row for row in rows if row["agg"] in _PERCENTILE_AGGS and str(row["policy_id"]) in overflowed
        ]
        if again:
            values.update(await self._values(_METRIC_SQL_HALVED_PERCENTILES, again, now))
        return values

    async def anomaly(self, rows: list[dict[str, Any]], now: datetime) -> dict[UUID, float | None]:
        """Number of recorded anomalies of the metric (and service) in the window."""
        return await self._values(_ANOMALY_SQL, rows, now)

    async def incident(self, rows: list[dict[str, Any]], now: datetime) -> dict[UUID, float | None]:
        """Open or acknowledged incidents at or above the policy's minimum severity (no window)."""
        return await self._values(_INCIDENT_SQL, rows, now)
