from __future__ import annotations

from dataclasses import dataclass

import pytest

from prodsentinel.alerts.matchers import (
    MAX_REGEX_LENGTH,
    Matcher,
    MatcherError,
    MatchOp,
    matches_all,
    parse_matchers,
)

LABELS = {"alertname": "HighErrorRate", "service": "api-gateway", "severity": "high", "env": "prod"}


@pytest.mark.parametrize(
    ("name", "op", "value", "expected"),
    [
        ("service", "=", "api-gateway", True),
        ("service", "=", "api", False),
        ("service", "=", "API-GATEWAY", False),
        ("service", "!=", "api", True),
        ("service", "!=", "api-gateway", False),
        ("service", "=~", "api-.*", True),
        ("service", "=~", "api", False),  # anchored: no substring match
        ("service", "=~", "gateway", False),
        ("service", "=~", "api|api-gateway", True),  # alternation inside the anchor group
        ("service", "=~", "api|gateway", False),
        ("service", "!~", "api", True),
        ("service", "!~", "api-.*", False),
        ("severity", "=~", "high|critical", True),
        ("severity", "!~", "low|medium", True),
    ],
)
def test_operators(name: str, op: str, value: str, expected: bool) -> None:
    assert Matcher(name, MatchOp(op), value).matches(LABELS) is expected


class TestMissingLabels:
    def test_missing_label_is_empty_for_eq(self) -> None:
        assert Matcher("team", MatchOp.EQ, "").matches(LABELS)
        assert not Matcher("team", MatchOp.EQ, "core").matches(LABELS)

    def test_missing_label_ne(self) -> None:
        assert Matcher("team", MatchOp.NE, "core").matches(LABELS)
        assert not Matcher("team", MatchOp.NE, "").matches(LABELS)

    def test_missing_label_regex(self) -> None:
        assert Matcher("team", MatchOp.RE, ".*").matches(LABELS)
        assert not Matcher("team", MatchOp.RE, ".+").matches(LABELS)
        assert Matcher("team", MatchOp.NRE, ".+").matches(LABELS)


class TestMatcher:
    def test_op_from_string_is_normalised(self) -> None:
        matcher = Matcher("a", "=~", "x")  # type: ignore[arg-type]
        assert matcher.op is MatchOp.RE

    def test_regex_does_not_accept_trailing_newline(self) -> None:
        # Python's "$" would match before a final "\n"; Alertmanager's does not.
        assert not Matcher("a", MatchOp.RE, "x").matches({"a": "x\n"})

    def test_anchored_pattern(self) -> None:
        assert Matcher("a", MatchOp.RE, "x|y").anchored_pattern == "^(?:x|y)$"

    def test_equality_and_hash_ignore_compiled_regex(self) -> None:
        a = Matcher("a", MatchOp.RE, "x.*")
        b = Matcher("a", MatchOp.RE, "x.*")
        assert a == b
        assert len({a, b}) == 1

    def test_str(self) -> None:
        assert str(Matcher("service", MatchOp.NRE, "api")) == "service!~'api'"

    def test_bad_regex(self) -> None:
        with pytest.raises(MatcherError, match="invalid regex"):
            Matcher("a", MatchOp.RE, "(unclosed")

    def test_bad_regex_for_negative_op(self) -> None:
        with pytest.raises(MatcherError, match="invalid regex"):
            Matcher("a", MatchOp.NRE, "[z-a]")

    def test_equality_op_does_not_compile_value(self) -> None:
        assert Matcher("a", MatchOp.EQ, "(unclosed").matches({"a": "(unclosed"})

    def test_regex_length_limit(self) -> None:
        with pytest.raises(MatcherError, match="longer than"):
            Matcher("a", MatchOp.RE, "x" * (MAX_REGEX_LENGTH + 1))

    @pytest.mark.parametrize("name", ["", "   "])
    def test_empty_name(self, name: str) -> None:
        with pytest.raises(MatcherError, match="name must be a non-empty"):
            Matcher(name, MatchOp.EQ, "x")

    def test_error_is_value_error(self) -> None:
        assert issubclass(MatcherError, ValueError)


class TestParseMatchers:
    def test_dicts(self) -> None:
        matchers = parse_matchers(
            [{"name": "service", "op": "=~", "value": "api.*"}, {"name": "env", "op": "!=", "value": "dev"}]
        )
        assert matchers == [Matcher("service", MatchOp.RE, "api.*"), Matcher("env", MatchOp.NE, "dev")]

    def test_structs_by_attribute(self) -> None:
        @dataclass
        class MatcherIn:
            name: str
            op: str
            value: str

        matchers = parse_matchers([MatcherIn("service", "=", "api")])
        assert matchers == [Matcher("service", MatchOp.EQ, "api")]

    def test_matcher_instances_pass_through(self) -> None:
        m = Matcher("a", MatchOp.EQ, "1")
        assert parse_matchers([m]) == [m]

    @pytest.mark.parametrize("op", ["==", "~=", "", "=!", None, 1])
    def test_unknown_op(self, op: object) -> None:
        with pytest.raises(
            MatcherError, match=r"matcher 0: unknown operator .*expected one of =, !=, =~, !~"
        ):
            parse_matchers([{"name": "a", "op": op, "value": "x"}])

    def test_error_names_the_index(self) -> None:
        with pytest.raises(MatcherError, match=r"^matcher 1: .*invalid regex"):
            parse_matchers([{"name": "a", "op": "=", "value": "x"}, {"name": "b", "op": "=~", "value": "("}])

    def test_empty_name(self) -> None:
        with pytest.raises(MatcherError, match="matcher 0: matcher name must be a non-empty string"):
            parse_matchers([{"name": "", "op": "=", "value": "x"}])

    def test_missing_key(self) -> None:
        with pytest.raises(MatcherError, match="matcher 0: missing 'value'"):
            parse_matchers([{"name": "a", "op": "="}])

    def test_non_string_value(self) -> None:
        with pytest.raises(MatcherError, match="value must be a string"):
            parse_matchers([{"name": "a", "op": "=", "value": 5}])

    def test_empty_list(self) -> None:
        with pytest.raises(MatcherError, match="at least one matcher"):
            parse_matchers([])

    @pytest.mark.parametrize(
        "raw",
        [
            [{"name": "a", "op": "=", "value": ""}],
            [{"name": "a", "op": "=~", "value": ".*"}],
            [{"name": "a", "op": "!=", "value": "x"}],
            [{"name": "a", "op": "!~", "value": ".+"}],
            [{"name": "a", "op": "=~", "value": "x|"}, {"name": "b", "op": "!=", "value": "y"}],
        ],
    )
    def test_all_matching_empty_string_is_rejected(self, raw: list[dict[str, str]]) -> None:
        with pytest.raises(MatcherError, match="must not match the empty string"):
            parse_matchers(raw)

    @pytest.mark.parametrize(
        "raw",
        [
            [{"name": "a", "op": "=~", "value": ".*"}, {"name": "b", "op": "=", "value": "y"}],
            [{"name": "a", "op": "=~", "value": ".+"}],
            [{"name": "a", "op": "!=", "value": ""}],
            [{"name": "a", "op": "!~", "value": ".*"}],
        ],
    )
    def test_one_non_empty_matcher_is_enough(self, raw: list[dict[str, str]]) -> None:
        assert len(parse_matchers(raw)) == len(raw)


class TestMatchesAll:
    def test_all_must_hold(self) -> None:
        matchers = parse_matchers(
            [
                {"name": "service", "op": "=~", "value": "api-.*"},
                {"name": "env", "op": "=", "value": "prod"},
            ]
        )
        assert matches_all(matchers, LABELS)
        assert not matches_all(matchers, {**LABELS, "env": "staging"})
        assert not matches_all(matchers, {**LABELS, "service": "billing"})

    def test_missing_label_fails_positive_matcher(self) -> None:
        matchers = parse_matchers([{"name": "region", "op": "=", "value": "eu"}])
        assert not matches_all(matchers, LABELS)

    def test_empty_list_never_matches(self) -> None:
        assert not matches_all([], LABELS)
