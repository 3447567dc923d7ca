from __future__ import annotations

import math
import random
import statistics

import pytest

from prodsentinel.signals.anomalies import (
    DEFAULT_PARAMS,
    MAD_SCALE,
    MEAN_AD_SCALE,
    AnomalyParams,
    baseline,
    is_anomalous,
    robust_zscores,
    sustained_flags,
)


def gaussian(rng: random.Random, n: int, mu: float, sigma: float) -> list[float]:
    return [rng.gauss(mu, sigma) for _ in range(n)]


class TestParams:
    def test_defaults(self) -> None:
        assert (
            AnomalyParams(
                threshold=3.5,
                min_history=20,
                history_window_seconds=3600,
                score_window_seconds=300,
                sustained_points=3,
            )
            == DEFAULT_PARAMS
        )

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"threshold": 0},
            {"threshold": math.nan},
            {"min_history": 1},
            {"score_window_seconds": 0},
            {"history_window_seconds": 300, "score_window_seconds": 300},
            {"sustained_points": 0},
            {"mad_floor_ratio": -0.1},
            {"min_scale": 0},
        ],
    )
    def test_validation(self, kwargs: dict[str, float]) -> None:
        with pytest.raises(ValueError, match="must"):
            AnomalyParams(**kwargs)  # type: ignore[arg-type]

    def test_frozen(self) -> None:
        with pytest.raises(AttributeError):
            DEFAULT_PARAMS.threshold = 1  # type: ignore[misc]


class TestBaseline:
    def test_median_and_mad(self) -> None:
        history = [1.0, 2.0, 3.0, 4.0, 100.0]  # median 3, |dev| = 2,1,0,1,97 -> MAD 1
        base = baseline(history, min_history=5, mad_floor_ratio=0)
        assert base is not None
        assert base.median == 3.0
        assert base.scale == pytest.approx(MAD_SCALE)
        assert base.count == 5

    def test_even_count_median_is_interpolated_like_percentile_cont(self) -> None:
        base = baseline([1.0, 2.0, 3.0, 10.0], min_history=4, mad_floor_ratio=0)
        assert base is not None
        assert base.median == 2.5

    def test_mean_ad_fallback_when_mad_is_zero(self) -> None:
        history = [0.0] * 25 + [1.0] * 5  # mostly zero: MAD = 0
        base = baseline(history, mad_floor_ratio=0)
        assert base is not None
        assert base.median == 0.0
        assert base.scale == pytest.approx(MEAN_AD_SCALE * 5 / 30)

    def test_relative_floor(self) -> None:
        base = baseline([1000.0, 1000.1] * 15)
        assert base is not None
        assert base.scale == pytest.approx(0.01 * 1000.05)

    def test_absolute_floor_for_flat_zero(self) -> None:
        base = baseline([0.0] * 30)
        assert base is not None
        assert base.scale == 1e-9

    def test_non_finite_history_ignored(self) -> None:
        history = [1.0] * 19 + [math.nan, math.inf, -math.inf]
        assert baseline(history) is None  # only 19 usable points
        base = baseline([*history, 1.0])
        assert base is not None
        assert base.count == 20
        assert base.median == 1.0

    def test_empty(self) -> None:
        assert baseline([], min_history=0) is None


class TestRobustZscores:
    def test_short_history_gives_no_scores(self) -> None:
        assert robust_zscores([1.0] * 19, [100.0]) == []
        assert robust_zscores([1.0] * 19, [100.0], min_history=19) != []

    def test_exact_scores(self) -> None:
        history = [10.0, 11.0, 12.0, 13.0, 14.0] * 4  # median 12, MAD 1
        scores = robust_zscores(history, [12.0, 13.4826, 12 - 2 * 1.4826], mad_floor_ratio=0)
        assert scores == pytest.approx([0.0, 1.0, -2.0])

    def test_step_change_is_flagged(self) -> None:
        rng = random.Random(2024)
        history = gaussian(rng, 60, 100.0, 2.0)
        after_step = gaussian(rng, 5, 130.0, 2.0)
        scores = robust_zscores(history, after_step)
        assert len(scores) == 5
        assert all(is_anomalous(s) for s in scores)
        assert all(s > 0 for s in scores)
        assert sustained_flags(scores) == [False, False, True, True, True]

    def test_drop_is_negative(self) -> None:
        rng = random.Random(7)
        history = gaussian(rng, 60, 500.0, 10.0)
        scores = robust_zscores(history, [300.0])
        assert scores[0] < -3.5
        assert is_anomalous(scores[0])

    def test_noisy_stable_series_has_few_false_positives(self) -> None:
        rng = random.Random(12345)
        history = gaussian(rng, 1000, 50.0, 5.0)
        points = gaussian(rng, 1000, 50.0, 5.0)
        scores = robust_zscores(history, points)
        false_positives = sum(is_anomalous(s) for s in scores)
        # a normal variable lies beyond 3.5 sigma ~0.05% of the time
        assert false_positives / len(points) < 0.005
        # and the robust scale recovers the true sigma
        base = baseline(history)
        assert base is not None
        assert base.scale == pytest.approx(5.0, rel=0.1)
        assert statistics.pstdev(scores) == pytest.approx(1.0, rel=0.1)
        # sustained runs of three do not happen by chance here
        assert not any(sustained_flags(scores))

    def test_noise_does_not_hide_a_real_shift(self) -> None:
        rng = random.Random(99)
        history = gaussian(rng, 1000, 50.0, 5.0)
        shifted = gaussian(rng, 100, 80.0, 5.0)  # +6 sigma
        scores = robust_zscores(history, shifted)
        assert sum(is_anomalous(s) for s in scores) >= 95

    def test_flat_series_with_one_spike(self) -> None:
        history = [50.0] * 100
        scores = robust_zscores(history, [50.0, 50.2, 80.0, 50.0])
        assert [is_anomalous(s) for s in scores] == [False, False, True, False]
        assert all(math.isfinite(s) for s in scores)
        assert scores[2] == pytest.approx(60.0)  # (80 - 50) / (1 % of 50)

    def test_flat_zero_series_any_value_is_anomalous(self) -> None:
        scores = robust_zscores([0.0] * 60, [0.0, 1.0])
        assert scores[0] == 0.0
        assert math.isfinite(scores[1])
        assert is_anomalous(scores[1])

    def test_spike_in_history_does_not_shift_baseline(self) -> None:
        rng = random.Random(3)
        history = gaussian(rng, 100, 10.0, 1.0)
        history[50] = 10_000.0  # one outlier in the baseline
        scores = robust_zscores(history, [10.0, 16.0])
        assert not is_anomalous(scores[0])
        assert is_anomalous(scores[1])


class TestIsAnomalous:
    @pytest.mark.parametrize(
        ("score", "threshold", "expected"),
        [
            (3.5, 3.5, False),  # strictly greater
            (3.5001, 3.5, True),
            (-3.6, 3.5, True),
            (-3.5, 3.5, False),
            (0.0, 3.5, False),
            (2.1, 2.0, True),
            (math.inf, 3.5, True),
            (math.nan, 3.5, False),
        ],
    )
    def test_threshold(self, score: float, threshold: float, expected: bool) -> None:
        assert is_anomalous(score, threshold) is expected

    def test_default_threshold(self) -> None:
        assert is_anomalous(3.6)
        assert not is_anomalous(3.4)


class TestSustainedFlags:
    def test_run_of_three(self) -> None:
        scores = [0, 4, 5, 6, 7, 0, 4]
        assert sustained_flags(scores) == [False, False, False, True, True, False, False]

    def test_sign_change_restarts_run(self) -> None:
        assert sustained_flags([4, 4, -4, -4, -4]) == [False, False, False, False, True]

    def test_one_point_flags_every_outlier(self) -> None:
        assert sustained_flags([0, 4, 0, -4], sustained_points=1) == [False, True, False, True]

    def test_threshold_respected(self) -> None:
        assert sustained_flags([3, 3, 3], threshold=2.5) == [False, False, True]
        assert sustained_flags([3, 3, 3]) == [False, False, False]

    def test_empty(self) -> None:
        assert sustained_flags([]) == []

    def test_validation(self) -> None:
        with pytest.raises(ValueError, match="sustained_points"):
            sustained_flags([1.0], sustained_points=0)
