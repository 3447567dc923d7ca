from __future__ import annotations

import json

import pytest

from prodsentinel.incidents.severity import (
    ANOMALY_BASE,
    DEFAULT_RULES,
    SEVERITIES,
    SPAN_ERROR_BASE,
    Severity,
    SeverityRules,
    base_for_log_level,
    escalate,
    is_escalation,
    max_severity,
    parse_severity,
    raise_one_level,
    rank,
    severity_for,
)

LOW, MEDIUM, HIGH, CRITICAL = Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL


class TestOrdering:
    def test_ranks(self) -> None:
        assert [rank(s) for s in SEVERITIES] == [0, 1, 2, 3]

    def test_order_is_by_rank_not_alphabet(self) -> None:
        # alphabetically "critical" < "high" < "low" < "medium"
        assert LOW < MEDIUM < HIGH < CRITICAL
        assert CRITICAL > HIGH >= HIGH > MEDIUM > LOW
        assert sorted([CRITICAL, LOW, HIGH, MEDIUM]) == [LOW, MEDIUM, HIGH, CRITICAL]
        assert max(LOW, CRITICAL, MEDIUM) is CRITICAL
        assert min(HIGH, MEDIUM) is MEDIUM

    def test_compare_with_plain_string_uses_rank(self) -> None:
        assert HIGH > "low"
        assert LOW < "High"
        assert "high" > LOW  # noqa: SIM300 - reflected: str.__gt__ gives way to Severity.__lt__

    def test_compare_with_unknown_string_raises(self) -> None:
        with pytest.raises(ValueError, match="unknown severity"):
            _ = HIGH > "urgent"

    def test_compare_with_int_is_type_error(self) -> None:
        with pytest.raises(TypeError):
            _ = HIGH > 1

    def test_is_a_string_on_the_wire(self) -> None:
        assert json.dumps({"severity": HIGH}) == '{"severity": "high"}'
        assert HIGH == "high"
        assert f"{CRITICAL}" == "critical"
        assert len({HIGH, Severity("high")}) == 1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("low", LOW), ("MEDIUM", MEDIUM), (" High ", HIGH), ("Critical", CRITICAL)],
)
def test_parse_severity(raw: str, expected: Severity) -> None:
    assert parse_severity(raw) is expected


@pytest.mark.parametrize("raw", ["", "urgent", "crit", "warning"])
def test_parse_severity_rejects(raw: str) -> None:
    with pytest.raises(ValueError, match="expected one of low, medium, high, critical"):
        parse_severity(raw)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (LOW, LOW, LOW),
        (LOW, MEDIUM, MEDIUM),
        (MEDIUM, LOW, MEDIUM),
        (HIGH, CRITICAL, CRITICAL),
        (CRITICAL, HIGH, CRITICAL),
        (HIGH, HIGH, HIGH),
    ],
)
def test_max_severity(a: Severity, b: Severity, expected: Severity) -> None:
    assert max_severity(a, b) is expected


@pytest.mark.parametrize(
    ("sev", "expected"),
    [(LOW, MEDIUM), (MEDIUM, HIGH), (HIGH, CRITICAL), (CRITICAL, CRITICAL)],
)
def test_raise_one_level(sev: Severity, expected: Severity) -> None:
    assert raise_one_level(sev) is expected


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("ERROR", MEDIUM),
        ("error", MEDIUM),
        ("CRITICAL", CRITICAL),
        ("critical", CRITICAL),
        ("WARN", None),
        ("WARNING", None),
        ("INFO", None),
        ("DEBUG", None),
    ],
)
def test_base_for_log_level(level: str, expected: Severity | None) -> None:
    assert base_for_log_level(level) is expected


def test_span_and_anomaly_bases() -> None:
    assert SPAN_ERROR_BASE is MEDIUM
    assert ANOMALY_BASE is MEDIUM


@pytest.mark.parametrize(
    ("base", "occurrences", "services", "expected"),
    [
        # base alone
        (MEDIUM, 1, 1, MEDIUM),
        (CRITICAL, 1, 1, CRITICAL),
        (LOW, 0, 0, LOW),
        # rate floor: >= 10 -> at least high
        (MEDIUM, 9, 1, MEDIUM),
        (MEDIUM, 10, 1, HIGH),
        (LOW, 10, 1, HIGH),
        (MEDIUM, 99, 1, HIGH),
        (CRITICAL, 10, 1, CRITICAL),  # a floor never lowers
        # >= 100 -> critical
        (MEDIUM, 100, 1, CRITICAL),
        (LOW, 5000, 1, CRITICAL),
        # spread: >= 2 services in the trace -> one level up
        (MEDIUM, 1, 2, HIGH),
        (LOW, 1, 3, MEDIUM),
        (CRITICAL, 1, 5, CRITICAL),
        # both: the spread raises the floored level
        (MEDIUM, 10, 2, CRITICAL),
        (MEDIUM, 100, 2, CRITICAL),
        (LOW, 9, 2, MEDIUM),
    ],
)
def test_severity_for_defaults(base: Severity, occurrences: int, services: int, expected: Severity) -> None:
    assert (
        severity_for(base=base, occurrences_in_window=occurrences, services_in_same_trace=services)
        is expected
    )


def test_severity_for_custom_rules() -> None:
    rules = SeverityRules(high_rate=3, critical_rate=5, window_seconds=60, spread_services=3)
    assert severity_for(base=LOW, occurrences_in_window=3, services_in_same_trace=1, rules=rules) is HIGH
    assert severity_for(base=LOW, occurrences_in_window=5, services_in_same_trace=1, rules=rules) is CRITICAL
    assert severity_for(base=LOW, occurrences_in_window=1, services_in_same_trace=2, rules=rules) is LOW
    assert severity_for(base=LOW, occurrences_in_window=1, services_in_same_trace=3, rules=rules) is MEDIUM


def test_default_rules_match_spec() -> None:
    assert (
        SeverityRules(high_rate=10, critical_rate=100, window_seconds=300, spread_services=2) == DEFAULT_RULES
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"high_rate": 0},
        {"critical_rate": 5, "high_rate": 10},
        {"window_seconds": 0},
        {"spread_services": 1},
    ],
)
def test_rules_validation(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be"):
        SeverityRules(**kwargs)


def test_rules_are_frozen() -> None:
    with pytest.raises(AttributeError):
        DEFAULT_RULES.high_rate = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("current", "computed", "expected"),
    [
        (MEDIUM, HIGH, HIGH),
        (HIGH, MEDIUM, HIGH),  # never drops while open
        (CRITICAL, LOW, CRITICAL),
        (LOW, LOW, LOW),
    ],
)
def test_escalate(current: Severity, computed: Severity, expected: Severity) -> None:
    assert escalate(current, computed) is expected


@pytest.mark.parametrize(
    ("current", "new", "expected"),
    [(MEDIUM, HIGH, True), (HIGH, HIGH, False), (HIGH, MEDIUM, False), (LOW, CRITICAL, True)],
)
def test_is_escalation(current: Severity, new: Severity, expected: bool) -> None:
    assert is_escalation(current, new) is expected
