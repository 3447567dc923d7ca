"""Inhibition's rules in isolation (``alerts.inhibition``, pure): Alertmanager's semantics, case by case.

The end-to-end behaviour (evaluator, API, receivers) is in ``test_inhibit_rules.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID, uuid4

import pytest

from prodsentinel.alerts.inhibition import Inhibitions, InhibitRules, parse_rule, rule_fingerprint
from prodsentinel.alerts.matchers import MatcherError

PROJECT = uuid4()
OTHER_PROJECT = uuid4()


@dataclass
class Row:
    source_matchers: list[dict[str, str]]
    target_matchers: list[dict[str, str]]
    equal: list[str]
    project_id: UUID = PROJECT
    id: UUID = field(default_factory=uuid4)


def m(name: str, op: str, value: str) -> dict[str, str]:
    return {"name": name, "op": op, "value": value}


CRITICAL_MUTES_WARNING = Row(
    [m("severity", "=", "critical")], [m("severity", "=", "warning")], ["cluster", "service"]
)


def inhibitions(firing: list[dict[str, str]], *rules: Row, project: UUID = PROJECT) -> Inhibitions:
    return InhibitRules.of(rules).against((project, labels) for labels in firing)


def test_a_firing_source_mutes_a_target_with_equal_labels_only() -> None:
    state = inhibitions([{"severity": "critical", "cluster": "a", "service": "db"}], CRITICAL_MUTES_WARNING)
    assert state.inhibiting(PROJECT, {"severity": "warning", "cluster": "a", "service": "db"}) == (
        CRITICAL_MUTES_WARNING.id
    )
    assert state.inhibiting(PROJECT, {"severity": "warning", "cluster": "b", "service": "db"}) is None
    # the target side must match too
    assert state.inhibiting(PROJECT, {"severity": "info", "cluster": "a", "service": "db"}) is None


def test_a_label_missing_on_both_sides_counts_as_equal() -> None:
    state = inhibitions([{"severity": "critical", "cluster": "a"}], CRITICAL_MUTES_WARNING)
    # no "service" on either side: "" == ""
    assert state.inhibiting(PROJECT, {"severity": "warning", "cluster": "a"}) == CRITICAL_MUTES_WARNING.id
    # missing on one side only: "" != "db"
    assert state.inhibiting(PROJECT, {"severity": "warning", "cluster": "a", "service": "db"}) is None


def test_every_source_matcher_must_hold() -> None:
    rule = Row(
        [m("severity", "=", "critical"), m("team", "=~", "core|db")], [m("severity", "=", "warning")], []
    )
    assert (
        inhibitions([{"severity": "critical", "team": "web"}], rule).inhibiting(
            PROJECT, {"severity": "warning"}
        )
        is None
    )
    assert (
        inhibitions([{"severity": "critical", "team": "db"}], rule).inhibiting(
            PROJECT, {"severity": "warning"}
        )
        == rule.id
    )


def test_an_alert_matching_both_sides_is_not_inhibited_by_itself() -> None:
    both = Row([m("alertname", "=~", "Node.*")], [m("alertname", "=~", "Node.*")], ["node"])
    lone = {"alertname": "NodeDown", "node": "n1"}
    assert inhibitions([lone], both).inhibiting(PROJECT, lone) is None


def test_two_sided_sources_are_disregarded_for_two_sided_targets_as_alertmanager_does() -> None:
    """Alertmanager's excludeTwoSidedMatch: a target matching both sides can only be muted by a source
    that does not match the target side, not by another two-sided alert."""
    rule = Row([m("tier", "=~", "infra|core")], [m("tier", "=~", "core|app")], ["cluster"])
    core_a = {"tier": "core", "cluster": "a", "alertname": "x"}
    core_a2 = {"tier": "core", "cluster": "a", "alertname": "y"}
    assert inhibitions([core_a, core_a2], rule).inhibiting(PROJECT, core_a) is None
    infra_a = {"tier": "infra", "cluster": "a"}
    assert inhibitions([core_a, infra_a], rule).inhibiting(PROJECT, core_a) == rule.id
    # a one-sided target is muted by the two-sided source as usual
    assert inhibitions([core_a], rule).inhibiting(PROJECT, {"tier": "app", "cluster": "a"}) == rule.id


def test_rules_are_per_project_and_the_oldest_muting_rule_is_named() -> None:
    second = Row([m("severity", "=", "critical")], [m("severity", "=~", "warning|info")], ["cluster"])
    state = inhibitions([{"severity": "critical", "cluster": "a"}], CRITICAL_MUTES_WARNING, second)
    assert state.inhibiting(PROJECT, {"severity": "warning", "cluster": "a"}) == CRITICAL_MUTES_WARNING.id
    assert state.inhibiting(PROJECT, {"severity": "info", "cluster": "a"}) == second.id
    assert state.inhibiting(OTHER_PROJECT, {"severity": "warning", "cluster": "a"}) is None
    elsewhere = inhibitions(
        [{"severity": "critical", "cluster": "a"}], CRITICAL_MUTES_WARNING, project=OTHER_PROJECT
    )
    assert elsewhere.inhibiting(PROJECT, {"severity": "warning", "cluster": "a"}) is None


def test_the_oldest_rule_is_named_whether_or_not_its_side_has_an_equality_matcher() -> None:
    """Rules are indexed by a side's first ``=`` matcher; the index must not change which rule is named."""
    regex_only = Row([m("severity", "=~", "crit.*")], [m("severity", "=~", "warn.*")], [])
    indexed = Row([m("severity", "=", "critical")], [m("severity", "=", "warning")], [])
    firing = [{"severity": "critical"}]
    assert (
        inhibitions(firing, regex_only, indexed).inhibiting(PROJECT, {"severity": "warning"}) == regex_only.id
    )
    assert inhibitions(firing, indexed, regex_only).inhibiting(PROJECT, {"severity": "warning"}) == indexed.id


def test_no_source_firing_mutes_nothing() -> None:
    assert inhibitions([], CRITICAL_MUTES_WARNING).inhibiting(PROJECT, {"severity": "warning"}) is None
    assert Inhibitions().inhibiting(PROJECT, {"severity": "warning"}) is None


def test_validation_and_fingerprint() -> None:
    with pytest.raises(MatcherError, match="source_matchers: at least one matcher"):
        parse_rule([], [m("a", "=", "b")], [])
    with pytest.raises(MatcherError, match=r"target_matchers: matcher 0: .*invalid regex"):
        parse_rule([m("a", "=", "b")], [m("a", "=~", "(")], [])
    # a side may match the empty string, unlike a silence
    parse_rule([m("a", "=", "b")], [m("severity", "=~", ".*")], [])
    one = parse_rule([m("a", "=", "b"), m("c", "!=", "d")], [m("e", "=", "f")], ["x", "y"])
    same = parse_rule([m("c", "!=", "d"), m("a", "=", "b")], [m("e", "=", "f")], ["y", "x", "y"])
    other = parse_rule([m("a", "=", "b")], [m("e", "=", "f")], ["x", "y"])
    assert rule_fingerprint(one) == rule_fingerprint(same) != rule_fingerprint(other)
    assert same.equal == ("y", "x")
