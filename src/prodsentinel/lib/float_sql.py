"""Overflow-free SQL aggregates over float8 expressions, as SQL text (one definition for every query).

A metric value is any finite float8 (SPEC §4), but PostgreSQL's float8 aggregates fail on large ones
with "value out of range: overflow": ``avg(float8)`` also accumulates a sum of squares (|x| above
~1e154), ``sum(float8)`` raises past FLOAT8_MAX, and ``percentile_cont``'s ``lo + (hi - lo) * f``
returns Infinity when ``hi - lo`` does (opposite-sign values near +-1.8e308). The builders below keep
float8 arithmetic, bit for bit, for ordinary values and only pay for numeric when needed. They serve
the metric series API (``signals.repositories``), ``metric_threshold`` evaluation
(``alerts.value_queries``, one statement for every project) and anomaly scoring
(``incidents.repositories``). PostgreSQL computes each distinct aggregate call once, however often it
appears in a statement.
"""

from __future__ import annotations

__all__ = ("halved", "overflow_free_avg", "overflow_free_sum")

#: Largest finite float8 (``sys.float_info.max``): the clamp bounds of a numeric result cast back to
#: float8 (a cast of a larger numeric fails).
FLOAT8_MAX_SQL = "1.7976931348623157e308"
#: Below this magnitude a value is summed in float8: fewer than 1e158 of them cannot overflow. The
#: others are summed in exact numeric, through ``::text`` (``float8::numeric`` keeps only 15
#: significant digits, so the largest float8 would become a numeric above FLOAT8_MAX).
NUMERIC_SUM_FROM = "1e150::float8"
#: Values this small are 0 in the halved percentile fallback (``x * 0.5`` of the smallest subnormal
#: fails with "underflow"); a group that overflows has none of them between its two straddling ranks.
PERCENTILE_TINY = "1e-300::float8"


def _ordinary_sum(expr: str) -> str:
    return f"(sum({expr}) FILTER (WHERE abs({expr}) < {NUMERIC_SUM_FROM}))"


def _large_sum(expr: str) -> str:
    return f"(sum(({expr})::text::numeric) FILTER (WHERE abs({expr}) >= {NUMERIC_SUM_FROM}))"


def _exact_sum(expr: str) -> str:
    return f"(coalesce(CAST({_ordinary_sum(expr)} AS text)::numeric, 0) + {_large_sum(expr)})"


def _clamped(numeric: str) -> str:
    return f"least(greatest({numeric}, -{FLOAT8_MAX_SQL}), {FLOAT8_MAX_SQL})::float8"


def overflow_free_sum(expr: str) -> str:
    """``sum(expr)``; past float8's range it saturates at +-FLOAT8_MAX instead of failing."""
    return (
        f"(CASE WHEN {_large_sum(expr)} IS NULL THEN {_ordinary_sum(expr)} "
        f"ELSE {_clamped(_exact_sum(expr))} END)"
    )


def overflow_free_avg(expr: str) -> str:
    """``avg(expr)``: the float8 sum over ``count(*)`` (bit-identical to float8 ``avg``, which divides
    the same running sum) or, with a large value, the exact mean rounded to float8."""
    return (
        f"(CASE WHEN {_large_sum(expr)} IS NULL THEN {_ordinary_sum(expr)} / count(*)::float8 "
        f"ELSE {_clamped(f'{_exact_sum(expr)} / count(*)')} END)"
    )


def halved(expr: str) -> str:
    """``expr * 0.5`` (exactly, 0 for |expr| < 1e-300): order a percentile by it and double the result
    when the plain percentile overflowed to Infinity."""
    return f"(CASE WHEN abs({expr}) < {PERCENTILE_TINY} THEN 0::float8 ELSE ({expr}) * 0.5::float8 END)"
