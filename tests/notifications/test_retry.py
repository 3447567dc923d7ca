from __future__ import annotations

import random
import statistics
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from prodsentinel.notifications.retry import (
    DEFAULT_CAP_SECONDS,
    RetryDecision,
    backoff_delay,
    classify,
    decide,
    error_code_for,
    next_delay,
    parse_retry_after,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


class TestBackoffDelay:
    @pytest.mark.parametrize(("retry_number", "ceiling"), [(1, 2), (2, 4), (3, 8), (4, 16), (8, 256)])
    def test_within_full_jitter_bounds(self, retry_number: int, ceiling: float) -> None:
        rng = random.Random(42)
        samples = [backoff_delay(retry_number, base_seconds=2, rng=rng) for _ in range(2000)]
        assert min(samples) >= 0
        assert max(samples) <= ceiling
        # uniform on [0, ceiling]: mean ceiling/2, and both halves of the range are used
        assert statistics.fmean(samples) == pytest.approx(ceiling / 2, rel=0.05)
        assert max(samples) > 0.95 * ceiling
        assert min(samples) < 0.05 * ceiling

    def test_cap(self) -> None:
        rng = random.Random(1)
        samples = [backoff_delay(20, base_seconds=2, cap_seconds=3600, rng=rng) for _ in range(1000)]
        assert max(samples) <= 3600
        assert max(samples) > 3400
        assert statistics.fmean(samples) == pytest.approx(1800, rel=0.06)

    def test_default_cap_is_an_hour(self) -> None:
        assert DEFAULT_CAP_SECONDS == 3600
        assert backoff_delay(50, base_seconds=2, rng=random.Random(3)) <= 3600

    def test_huge_retry_number_does_not_overflow(self) -> None:
        assert 0 <= backoff_delay(10**6, base_seconds=2, rng=random.Random(0)) <= 3600

    def test_seeded_rng_is_deterministic(self) -> None:
        a = [backoff_delay(3, base_seconds=2, rng=random.Random(9)) for _ in range(3)]
        b = [backoff_delay(3, base_seconds=2, rng=random.Random(9)) for _ in range(3)]
        assert a == b

    def test_without_rng(self) -> None:
        assert 0 <= backoff_delay(1, base_seconds=2) <= 2

    def test_zero_base(self) -> None:
        assert backoff_delay(5, base_seconds=0, rng=random.Random(0)) == 0

    @pytest.mark.parametrize("n", [0, -1])
    def test_retry_number_starts_at_one(self, n: int) -> None:
        with pytest.raises(ValueError, match="starts at 1"):
            backoff_delay(n, base_seconds=2)

    def test_negative_base_rejected(self) -> None:
        with pytest.raises(ValueError, match="must be >= 0"):
            backoff_delay(1, base_seconds=-1)


class TestParseRetryAfter:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("120", 120.0),
            ("  5 ", 5.0),
            ("0", 0.0),
            ("1.5", 1.5),
            ("-3", 0.0),
            ("999999", 3600.0),
            (None, None),
            ("", None),
            ("soon", None),
            ("nan", None),
            ("inf", None),
        ],
    )
    def test_delta_seconds(self, value: str | None, expected: float | None) -> None:
        assert parse_retry_after(value, NOW) == expected

    def test_http_date_future(self) -> None:
        value = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
        assert value.endswith("GMT")
        assert parse_retry_after(value, NOW) == 90.0

    def test_http_date_literal(self) -> None:
        assert parse_retry_after("Wed, 01 May 2024 12:01:00 GMT", NOW) == 60.0

    def test_http_date_past_is_zero(self) -> None:
        assert parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", NOW) == 0.0

    def test_http_date_far_future_is_capped(self) -> None:
        assert parse_retry_after("Thu, 02 May 2024 12:00:00 GMT", NOW) == 3600.0
        assert parse_retry_after("Thu, 02 May 2024 12:00:00 GMT", NOW, cap_seconds=10) == 10.0

    def test_naive_now_is_utc(self) -> None:
        naive = NOW.replace(tzinfo=None)
        assert parse_retry_after("Wed, 01 May 2024 12:01:00 GMT", naive) == 60.0

    def test_garbage_date(self) -> None:
        assert parse_retry_after("Wed, 99 Foo 2024 12:01:00 GMT", NOW) is None


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (200, None, "delivered"),
        (201, None, "delivered"),
        (204, None, "delivered"),
        (299, None, "delivered"),
        (408, "http_408", "retry"),
        (429, "http_429", "retry"),
        (500, "http_5xx", "retry"),
        (502, "http_5xx", "retry"),
        (503, "http_5xx", "retry"),
        (599, "http_5xx", "retry"),
        (400, "http_4xx", "dead"),
        (401, "http_4xx", "dead"),
        (403, "http_4xx", "dead"),
        (404, "http_4xx", "dead"),
        (410, "http_4xx", "dead"),
        (413, "http_4xx", "dead"),
        (422, "http_4xx", "dead"),
        (301, "http_3xx", "dead"),
        (302, "http_3xx", "dead"),
        (304, "http_3xx", "dead"),
        (101, "http_other", "dead"),
        (600, "http_other", "dead"),
        (None, "timeout", "retry"),
        (None, "connect_error", "retry"),
        (None, "network_error", "retry"),
        (None, "something_new", "retry"),
        (None, None, "retry"),
        (None, "invalid_request", "dead"),
    ],
)
def test_classify(status: int | None, code: str | None, expected: str) -> None:
    assert classify(status, code) == expected


@pytest.mark.parametrize(
    ("status", "exc", "expected"),
    [
        (200, None, None),
        (204, None, None),
        (408, None, "http_408"),
        (429, None, "http_429"),
        (500, None, "http_5xx"),
        (504, None, "http_5xx"),
        (404, None, "http_4xx"),
        (418, None, "http_4xx"),
        (307, None, "http_3xx"),
        (100, None, "http_other"),
        (None, "timeout", "timeout"),
        (None, "connect_error", "connect_error"),
        (None, "network_error", "network_error"),
        (None, "invalid_request", "invalid_request"),
        (None, "weird", "network_error"),
        (200, "timeout", "timeout"),  # transport failure wins
    ],
)
def test_error_code_for(status: int | None, exc: str | None, expected: str | None) -> None:
    assert error_code_for(status, exc) == expected


def test_error_code_for_needs_something() -> None:
    with pytest.raises(ValueError, match="either an HTTP status"):
        error_code_for(None, None)


@pytest.mark.parametrize("status", [200, 404, 408, 429, 500, 503, 301])
def test_code_and_classification_agree(status: int) -> None:
    assert classify(status, error_code_for(status, None)) == classify(status, None)


class TestNextDelay:
    @pytest.mark.parametrize("status", [429, 503])
    def test_retry_after_is_honoured(self, status: int) -> None:
        assert next_delay(1, http_status=status, retry_after_seconds=42, base_seconds=2) == 42

    def test_retry_after_capped(self) -> None:
        assert next_delay(1, http_status=429, retry_after_seconds=10_000, base_seconds=2) == 3600
        assert next_delay(1, http_status=429, retry_after_seconds=-5, base_seconds=2) == 0

    @pytest.mark.parametrize("status", [500, 502, 408, None])
    def test_retry_after_ignored_for_other_statuses(self, status: int | None) -> None:
        delay = next_delay(
            1, http_status=status, retry_after_seconds=1000, base_seconds=2, rng=random.Random(0)
        )
        assert 0 <= delay <= 2

    def test_no_retry_after_falls_back_to_jitter(self) -> None:
        delay = next_delay(3, http_status=429, retry_after_seconds=None, base_seconds=2, rng=random.Random(0))
        assert 0 <= delay <= 8


class TestDecide:
    def test_delivered(self) -> None:
        assert decide(attempt=1, max_attempts=8, http_status=200, error_code=None, base_seconds=2) == (
            RetryDecision("delivered")
        )

    def test_dead_on_4xx_even_on_first_attempt(self) -> None:
        assert decide(attempt=1, max_attempts=8, http_status=404, error_code="http_4xx", base_seconds=2) == (
            RetryDecision("dead")
        )

    def test_retry_with_jitter_bound_of_attempt(self) -> None:
        rng = random.Random(5)
        for attempt in range(1, 8):
            decision = decide(
                attempt=attempt,
                max_attempts=8,
                http_status=500,
                error_code="http_5xx",
                base_seconds=2,
                rng=rng,
            )
            assert decision.outcome == "retry"
            assert decision.delay_seconds is not None
            assert 0 <= decision.delay_seconds <= 2 * 2 ** (attempt - 1)

    def test_max_attempts_counts_the_first(self) -> None:
        # MAX_ATTEMPTS=8: attempts 1..7 may retry, attempt 8 is the last one
        kwargs = {"max_attempts": 8, "http_status": None, "error_code": "timeout", "base_seconds": 2.0}
        assert decide(attempt=7, **kwargs).outcome == "retry"  # type: ignore[arg-type]
        assert decide(attempt=8, **kwargs) == RetryDecision("dead")  # type: ignore[arg-type]

    def test_single_attempt_policy(self) -> None:
        assert decide(attempt=1, max_attempts=1, http_status=503, error_code="http_5xx", base_seconds=2) == (
            RetryDecision("dead")
        )

    def test_retry_after(self) -> None:
        decision = decide(
            attempt=2,
            max_attempts=8,
            http_status=429,
            error_code="http_429",
            retry_after_seconds=30,
            base_seconds=2,
        )
        assert decision == RetryDecision("retry", 30)

    @pytest.mark.parametrize(("attempt", "max_attempts"), [(0, 8), (1, 0)])
    def test_validation(self, attempt: int, max_attempts: int) -> None:
        with pytest.raises(ValueError, match="attempt"):
            decide(
                attempt=attempt, max_attempts=max_attempts, http_status=500, error_code=None, base_seconds=2
            )
