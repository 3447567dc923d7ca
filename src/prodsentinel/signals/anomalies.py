"""Robust anomaly scoring for metric series: the reference implementation (pure).

The scheduled detector scores each recent point of a series against that
series' own history with a modified z-score (Iglewicz & Hoaglin)::

    median  = median(history)                      # percentile_cont(0.5)
    mad     = median(|x - median| for x in history)
    spread  = 1.4826 * mad                         if mad > 0
            = 1.253314 * mean(|x - median|)        otherwise (MeanAD fallback)
    scale   = max(spread, mad_floor_ratio * |median|, min_scale)
    score   = (point - median) / scale             # signed: < 0 is a drop

- 1.4826 makes the MAD a consistent estimator of the standard deviation of
  normal data, and 1.253314 does the same for the mean absolute deviation,
  used when more than half of the history is one value (sparse counters,
  mostly-zero error counts) and the MAD is 0.
- The relative floor (1 % of the median by default) keeps a perfectly flat
  gauge from turning a 0.1 % wiggle into a huge score; the absolute floor
  ``min_scale`` keeps a flat-zero series finite (any non-zero point then
  scores very high, which is intended: something happened).
- ``history`` is the window *before* the scored points (by default the hour
  up to the last 5 minutes) so an anomaly cannot hide itself by shifting its
  own baseline. Non-finite history values are ignored.
- With fewer than ``min_history`` usable history points nothing is scored
  (``[]``): a new series has no baseline yet.
- A point is anomalous when ``|score| > threshold`` (strictly), and an
  anomaly is recorded only for ``sustained_points`` consecutive anomalous
  points on the same side of the median (``sustained_flags``), which filters
  one-off outliers when wanted (``sustained_points=1`` flags every outlier).

The SQL implementation must agree with this module; its tests compare them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_PARAMS",
    "MAD_SCALE",
    "MEAN_AD_SCALE",
    "AnomalyParams",
    "Baseline",
    "baseline",
    "is_anomalous",
    "robust_zscores",
    "sustained_flags",
]

MAD_SCALE: Final = 1.4826
MEAN_AD_SCALE: Final = 1.253314
DEFAULT_MAD_FLOOR_RATIO: Final = 0.01
DEFAULT_MIN_SCALE: Final = 1e-9


@dataclass(frozen=True, slots=True)
class AnomalyParams:
    """Detector settings; one instance drives both this module and the SQL."""

    threshold: float = 3.5
    min_history: int = 20
    history_window_seconds: int = 3600
    score_window_seconds: int = 300
    sustained_points: int = 3
    mad_floor_ratio: float = DEFAULT_MAD_FLOOR_RATIO
    min_scale: float = DEFAULT_MIN_SCALE

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError("threshold must be > 0")
        if self.min_history < 2:
            raise ValueError("min_history must be >= 2")
        if self.score_window_seconds < 1 or self.history_window_seconds <= self.score_window_seconds:
            raise ValueError("history_window_seconds must exceed score_window_seconds (>= 1)")
        if self.sustained_points < 1:
            raise ValueError("sustained_points must be >= 1")
        if self.mad_floor_ratio < 0 or not self.min_scale > 0:
            raise ValueError("mad_floor_ratio must be >= 0 and min_scale > 0")


DEFAULT_PARAMS: Final = AnomalyParams()


@dataclass(frozen=True, slots=True)
class Baseline:
    """Centre and scale of a history; what the SQL stores per series per run."""

    median: float
    scale: float
    count: int

    def score(self, value: float) -> float:
        return (value - self.median) / self.scale


def baseline(
    history: Sequence[float],
    *,
    min_history: int = DEFAULT_PARAMS.min_history,
    mad_floor_ratio: float = DEFAULT_MAD_FLOOR_RATIO,
    min_scale: float = DEFAULT_MIN_SCALE,
) -> Baseline | None:
    """Median and floored robust scale of ``history``; ``None`` if it is too short."""
    values = [float(x) for x in history if math.isfinite(x)]
    if len(values) < min_history or not values:
        return None
    med = statistics.median(values)
    deviations = [abs(x - med) for x in values]
    mad = statistics.median(deviations)
    spread = MAD_SCALE * mad if mad > 0 else MEAN_AD_SCALE * statistics.fmean(deviations)
    scale = max(spread, mad_floor_ratio * abs(med), min_scale)
    return Baseline(median=med, scale=scale, count=len(values))


def robust_zscores(
    history: Sequence[float],
    points: Sequence[float],
    *,
    min_history: int = DEFAULT_PARAMS.min_history,
    mad_floor_ratio: float = DEFAULT_MAD_FLOOR_RATIO,
    min_scale: float = DEFAULT_MIN_SCALE,
) -> list[float]:
    """Signed modified z-score of each point, ``[]`` when history is too short."""
    base = baseline(history, min_history=min_history, mad_floor_ratio=mad_floor_ratio, min_scale=min_scale)
    if base is None:
        return []
    return [base.score(float(p)) for p in points]


def is_anomalous(score: float, threshold: float = DEFAULT_PARAMS.threshold) -> bool:
    """``|score| > threshold``; NaN is never anomalous."""
    return abs(score) > threshold


def sustained_flags(
    scores: Sequence[float],
    *,
    threshold: float = DEFAULT_PARAMS.threshold,
    sustained_points: int = DEFAULT_PARAMS.sustained_points,
) -> list[bool]:
    """Flag point i when it ends a run of >= ``sustained_points`` anomalous scores of one sign.

    Causal on purpose: each flag depends only on the point and those before
    it, so a run that keeps going is flagged at every further point and the
    detector can run incrementally.
    """
    if sustained_points < 1:
        raise ValueError("sustained_points must be >= 1")
    flags: list[bool] = []
    run = 0
    sign = 0
    for score in scores:
        if is_anomalous(score, threshold):
            current = 1 if score > 0 else -1
            run = run + 1 if current == sign else 1
            sign = current
        else:
            run = 0
            sign = 0
        flags.append(run >= sustained_points)
    return flags
