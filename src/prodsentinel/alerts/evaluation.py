"""The alert-instance state machine (pure, no I/O).

One alert instance exists per (policy, label set). Each evaluation tick
computes the policy's value, ``compare``s it with the threshold and feeds the
result to ``next_state``:

==========  =========  ==================================================  ==========
state       condition  rule                                                result
==========  =========  ==================================================  ==========
inactive    false      nothing happens                                     inactive
inactive    true       ``for_seconds == 0``: fire at once                  firing *
inactive    true       otherwise start the pending clock                   pending
pending     true       ``now - pending_since >= for_seconds``              firing *
pending     true       not long enough yet                                 pending
pending     false      the condition did not hold for long enough          inactive
firing      true       still firing                                        firing
firing      false      recovered                                           resolved *
resolved    false      ``now - resolved_at >= interval_seconds``           inactive
resolved    false      resolved for less than one interval                 resolved
resolved    true       resolved for less than one interval (anti-flap)     resolved
resolved    true       ``now - resolved_at >= interval_seconds``: as from  pending /
                       inactive                                            firing *
==========  =========  ==================================================  ==========

``*`` marks the transitions that notify: ``fired`` (ALERT_FIRING) and
``resolved`` (ALERT_RESOLVED). Pending -> inactive is silent because nothing
was ever announced.

Anti-flap: an alert that just resolved cannot fire again until it has spent
at least one evaluation interval resolved, so a value oscillating around the
threshold every tick produces at most one firing/resolved pair per two
intervals instead of one per tick.

The caller keeps the clocks: when a transition lands in ``pending`` with
``changed`` set, store ``pending_since = now``; on ``resolved`` store
``resolved_at = now``. A missing ``pending_since`` counts as "started now"
and a missing ``resolved_at`` as "long ago". ``now`` and the stored times
must be all aware (UTC) or all naive.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, get_args

__all__ = [
    "OPERATORS",
    "AlertState",
    "Operator",
    "Transition",
    "compare",
    "next_state",
]

Operator = Literal[">", ">=", "<", "<="]
OPERATORS: Final[tuple[str, ...]] = get_args(Operator)


class AlertState(enum.StrEnum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


def compare(value: float, operator: str, threshold: float) -> bool:
    """Whether the policy condition holds; NaN never satisfies a condition."""
    if math.isnan(value) or math.isnan(threshold):
        return False
    if operator == ">":
        return value > threshold
    if operator == ">=":
        return value >= threshold
    if operator == "<":
        return value < threshold
    if operator == "<=":
        return value <= threshold
    raise ValueError(f"unknown operator {operator!r}; expected one of {', '.join(OPERATORS)}")


@dataclass(frozen=True, slots=True)
class Transition:
    """Outcome of one tick. ``fired``/``resolved`` mean: write the outbox event."""

    new_state: AlertState
    changed: bool
    fired: bool = False
    resolved: bool = False


def _stay(state: AlertState) -> Transition:
    return Transition(new_state=state, changed=False)


def _activate(for_seconds: int) -> Transition:
    if for_seconds == 0:
        return Transition(new_state=AlertState.FIRING, changed=True, fired=True)
    return Transition(new_state=AlertState.PENDING, changed=True)


def next_state(
    *,
    state: AlertState,
    condition_true: bool,
    pending_since: datetime | None,
    now: datetime,
    for_seconds: int,
    resolved_at: datetime | None,
    interval_seconds: int,
) -> Transition:
    """Apply one evaluation tick to an alert instance (rules in the module docstring)."""
    if for_seconds < 0:
        raise ValueError("for_seconds must be >= 0")
    if interval_seconds < 0:
        raise ValueError("interval_seconds must be >= 0")
    state = AlertState(state)

    if state is AlertState.INACTIVE:
        return _activate(for_seconds) if condition_true else _stay(state)

    if state is AlertState.PENDING:
        if not condition_true:
            return Transition(new_state=AlertState.INACTIVE, changed=True)
        started = pending_since if pending_since is not None else now
        if (now - started).total_seconds() >= for_seconds:
            return Transition(new_state=AlertState.FIRING, changed=True, fired=True)
        return _stay(state)

    if state is AlertState.FIRING:
        if condition_true:
            return _stay(state)
        return Transition(new_state=AlertState.RESOLVED, changed=True, resolved=True)

    # RESOLVED
    settled = resolved_at is None or (now - resolved_at).total_seconds() >= interval_seconds
    if not settled:
        return _stay(state)
    if condition_true:
        return _activate(for_seconds)
    return Transition(new_state=AlertState.INACTIVE, changed=True)
