from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

import pytest

from prodsentinel.alerts.evaluation import OPERATORS, AlertState, Transition, compare, next_state

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
INACTIVE, PENDING, FIRING, RESOLVED = (
    AlertState.INACTIVE,
    AlertState.PENDING,
    AlertState.FIRING,
    AlertState.RESOLVED,
)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


class TestCompare:
    @pytest.mark.parametrize(
        ("value", "op", "threshold", "expected"),
        [
            (5, ">", 4, True),
            (4, ">", 4, False),
            (3, ">", 4, False),
            (4, ">=", 4, True),
            (3.999, ">=", 4, False),
            (3, "<", 4, True),
            (4, "<", 4, False),
            (4, "<=", 4, True),
            (4.001, "<=", 4, False),
            (-1.5, "<", 0, True),
            (math.inf, ">", 1e308, True),
        ],
    )
    def test_operators(self, value: float, op: str, threshold: float, expected: bool) -> None:
        assert compare(value, op, threshold) is expected

    @pytest.mark.parametrize("op", OPERATORS)
    def test_nan_never_holds(self, op: str) -> None:
        assert compare(math.nan, op, 1.0) is False
        assert compare(1.0, op, math.nan) is False

    @pytest.mark.parametrize("op", ["==", "!=", "gt", "", "=>"])
    def test_unknown_operator(self, op: str) -> None:
        with pytest.raises(ValueError, match="unknown operator"):
            compare(1, op, 1)

    def test_operator_set(self) -> None:
        assert set(OPERATORS) == {">", ">=", "<", "<="}


def step(
    state: AlertState,
    cond: bool,
    *,
    pending_since: datetime | None = None,
    resolved_at: datetime | None = None,
    for_seconds: int = 60,
    interval_seconds: int = 30,
) -> Transition:
    return next_state(
        state=state,
        condition_true=cond,
        pending_since=pending_since,
        now=NOW,
        for_seconds=for_seconds,
        resolved_at=resolved_at,
        interval_seconds=interval_seconds,
    )


STAY_INACTIVE = Transition(INACTIVE, changed=False)
TO_PENDING = Transition(PENDING, changed=True)
STAY_PENDING = Transition(PENDING, changed=False)
TO_FIRING = Transition(FIRING, changed=True, fired=True)
STAY_FIRING = Transition(FIRING, changed=False)
TO_RESOLVED = Transition(RESOLVED, changed=True, resolved=True)
STAY_RESOLVED = Transition(RESOLVED, changed=False)
TO_INACTIVE = Transition(INACTIVE, changed=True)


@pytest.mark.parametrize(
    ("state", "cond", "kwargs", "expected"),
    [
        # inactive
        (INACTIVE, False, {}, STAY_INACTIVE),
        (INACTIVE, True, {}, TO_PENDING),
        (INACTIVE, True, {"for_seconds": 0}, TO_FIRING),
        (INACTIVE, False, {"for_seconds": 0}, STAY_INACTIVE),
        # pending
        (PENDING, True, {"pending_since": ago(59)}, STAY_PENDING),
        (PENDING, True, {"pending_since": ago(60)}, TO_FIRING),  # exactly "for" elapsed
        (PENDING, True, {"pending_since": ago(600)}, TO_FIRING),
        (PENDING, True, {"pending_since": None}, STAY_PENDING),  # clock starts now
        (PENDING, True, {"pending_since": None, "for_seconds": 0}, TO_FIRING),
        (PENDING, True, {"pending_since": ago(1), "for_seconds": 0}, TO_FIRING),  # "for" lowered
        (PENDING, False, {"pending_since": ago(59)}, TO_INACTIVE),
        (PENDING, False, {"pending_since": ago(600)}, TO_INACTIVE),
        # firing
        (FIRING, True, {}, STAY_FIRING),
        (FIRING, False, {}, TO_RESOLVED),
        (FIRING, False, {"for_seconds": 0}, TO_RESOLVED),
        # resolved, condition false
        (RESOLVED, False, {"resolved_at": ago(10)}, STAY_RESOLVED),
        (RESOLVED, False, {"resolved_at": ago(30)}, TO_INACTIVE),
        (RESOLVED, False, {"resolved_at": ago(3600)}, TO_INACTIVE),
        (RESOLVED, False, {"resolved_at": None}, TO_INACTIVE),
        # resolved, condition true: anti-flap
        (RESOLVED, True, {"resolved_at": ago(29)}, STAY_RESOLVED),
        (RESOLVED, True, {"resolved_at": ago(29), "for_seconds": 0}, STAY_RESOLVED),
        (RESOLVED, True, {"resolved_at": ago(30)}, TO_PENDING),
        (RESOLVED, True, {"resolved_at": ago(30), "for_seconds": 0}, TO_FIRING),
        (RESOLVED, True, {"resolved_at": None, "for_seconds": 0}, TO_FIRING),
        (RESOLVED, True, {"resolved_at": NOW, "interval_seconds": 0, "for_seconds": 0}, TO_FIRING),
    ],
)
def test_transition_table(
    state: AlertState, cond: bool, kwargs: dict[str, object], expected: Transition
) -> None:
    assert step(state, cond, **kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("state", "cond", "for_seconds", "age"),
    list(itertools.product(AlertState, [True, False], [0, 60], [0, 29, 30, 61, 10_000])),
)
def test_invariants_over_all_inputs(state: AlertState, cond: bool, for_seconds: int, age: int) -> None:
    t = step(
        state,
        cond,
        pending_since=ago(age),
        resolved_at=ago(age),
        for_seconds=for_seconds,
        interval_seconds=30,
    )
    assert t.changed == (t.new_state is not state)
    assert not (t.fired and t.resolved)
    assert t.fired == (t.changed and t.new_state is FIRING)
    assert t.resolved == (t.changed and t.new_state is RESOLVED)
    # fired only with the condition true, resolved only with it false
    if t.fired:
        assert cond
    if t.resolved:
        assert not cond
        assert state is FIRING
    # firing is only reachable by waiting "for" (or for == 0)
    if t.fired and state is PENDING:
        assert age >= for_seconds
    # a resolved alert may not jump anywhere within the anti-flap interval
    if state is RESOLVED and age < 30:
        assert not t.changed
    # no state is ever skipped backwards into pending
    if t.new_state is PENDING and t.changed:
        assert state in (INACTIVE, RESOLVED)


def test_accepts_plain_string_state() -> None:
    t = next_state(
        state="firing",  # type: ignore[arg-type]
        condition_true=False,
        pending_since=None,
        now=NOW,
        for_seconds=0,
        resolved_at=None,
        interval_seconds=30,
    )
    assert t == TO_RESOLVED


def test_unknown_state_rejected() -> None:
    with pytest.raises(ValueError, match="exploded"):
        step("exploded", True)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{"for_seconds": -1}, {"interval_seconds": -1}])
def test_negative_durations_rejected(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        step(INACTIVE, True, **kwargs)  # type: ignore[arg-type]


def simulate(
    conditions: list[bool], *, for_seconds: int, tick: int = 30, interval: int = 30
) -> list[tuple[AlertState, bool, bool]]:
    """Drive the machine like the scheduler does, keeping the clocks as documented."""
    state = INACTIVE
    pending_since: datetime | None = None
    resolved_at: datetime | None = None
    out: list[tuple[AlertState, bool, bool]] = []
    start = NOW
    for i, cond in enumerate(conditions):
        now = start + timedelta(seconds=i * tick)
        t = next_state(
            state=state,
            condition_true=cond,
            pending_since=pending_since,
            now=now,
            for_seconds=for_seconds,
            resolved_at=resolved_at,
            interval_seconds=interval,
        )
        if t.changed and t.new_state is PENDING:
            pending_since = now
        if t.resolved:
            resolved_at = now
        state = t.new_state
        out.append((state, t.fired, t.resolved))
    return out


class TestScenarios:
    def test_pending_for_two_ticks_then_fires_then_resolves(self) -> None:
        states = [s for s, _, _ in simulate([True, True, True, False, False], for_seconds=60)]
        assert states == [PENDING, PENDING, FIRING, RESOLVED, INACTIVE]

    def test_blip_shorter_than_for_never_fires(self) -> None:
        result = simulate([True, False, True, True, False], for_seconds=90)
        assert not any(fired for _, fired, _ in result)
        assert [s for s, _, _ in result] == [PENDING, INACTIVE, PENDING, PENDING, INACTIVE]

    def test_flapping_condition_notifies_less_than_every_tick(self) -> None:
        # ticks every 10 s, anti-flap interval 30 s, condition flips every tick:
        # without anti-flap that would be 5 firing + 5 resolved notifications
        result = simulate([True, False] * 5, for_seconds=0, tick=10, interval=30)
        assert [s for s, _, _ in result] == [
            FIRING, RESOLVED, RESOLVED, RESOLVED, FIRING, RESOLVED, RESOLVED, RESOLVED, FIRING, RESOLVED,
        ]  # fmt: skip
        assert sum(f for _, f, _ in result) == 3
        assert sum(r for _, _, r in result) == 3

    def test_ticks_at_the_interval_can_refire_every_other_tick(self) -> None:
        result = simulate([True, False, True, False], for_seconds=0, tick=30, interval=30)
        assert [s for s, _, _ in result] == [FIRING, RESOLVED, FIRING, RESOLVED]

    def test_resolved_settles_to_inactive(self) -> None:
        result = simulate([True, False, False, False, False, True], for_seconds=0, tick=10, interval=30)
        assert [s for s, _, _ in result] == [FIRING, RESOLVED, RESOLVED, RESOLVED, INACTIVE, FIRING]

    def test_refire_blocked_within_interval(self) -> None:
        t = next_state(
            state=RESOLVED,
            condition_true=True,
            pending_since=None,
            now=NOW,
            for_seconds=0,
            resolved_at=NOW - timedelta(seconds=15),
            interval_seconds=30,
        )
        assert t == STAY_RESOLVED
