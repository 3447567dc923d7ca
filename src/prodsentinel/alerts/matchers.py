"""Alertmanager-style label matchers for silences (pure, no I/O).

Semantics follow Alertmanager so operators' habits carry over:

- ``=`` / ``!=`` compare the label value exactly; ``=~`` / ``!~`` use a
  regular expression that is fully anchored (``^(?:value)$``), so
  ``service=~"api"`` does not match ``api-gateway``;
- a label the alert does not carry counts as the empty string, so
  ``team!="x"`` matches an alert without ``team`` and ``team=""`` means
  "has no team label";
- a silence holds only when every matcher holds, and a set of matchers where
  each one matches the empty string is rejected: it would silence every alert.

Differences: regexes use Python's ``re`` (Alertmanager uses Go's RE2; the
common syntax is the same) and are limited to ``MAX_REGEX_LENGTH`` characters,
because Python's backtracking engine is exposed to user input here.
``matches_all([])`` is False, so an empty list can never silence everything.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "MAX_REGEX_LENGTH",
    "MatchOp",
    "Matcher",
    "MatcherError",
    "matches_all",
    "parse_matchers",
]

MAX_REGEX_LENGTH: Final = 1024


class MatcherError(ValueError):
    """A matcher or a matcher list that cannot form a valid silence."""


class MatchOp(enum.StrEnum):
    EQ = "="
    NE = "!="
    RE = "=~"
    NRE = "!~"


_OPS_TEXT: Final = ", ".join(op.value for op in MatchOp)


def _parse_op(op: object) -> MatchOp:
    if isinstance(op, MatchOp):
        return op
    if isinstance(op, str):
        try:
            return MatchOp(op)
        except ValueError:
            pass
    raise MatcherError(f"unknown operator {op!r}; expected one of {_OPS_TEXT}")


@dataclass(frozen=True, slots=True)
class Matcher:
    """One ``name op value`` condition; the regex is compiled once at creation."""

    name: str
    op: MatchOp
    value: str
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise MatcherError("matcher name must be a non-empty string")
        if not isinstance(self.value, str):
            raise MatcherError(f"matcher {self.name!r}: value must be a string")
        op = _parse_op(self.op)
        object.__setattr__(self, "op", op)
        if op in (MatchOp.RE, MatchOp.NRE):
            if len(self.value) > MAX_REGEX_LENGTH:
                raise MatcherError(f"matcher {self.name!r}: regex longer than {MAX_REGEX_LENGTH} characters")
            try:
                # fullmatch == ^(?:value)$ without Python's "$ matches before a final newline".
                regex = re.compile(f"(?:{self.value})")
            except re.error as exc:
                raise MatcherError(f"matcher {self.name!r}: invalid regex {self.value!r}: {exc}") from None
            object.__setattr__(self, "_regex", regex)

    @property
    def anchored_pattern(self) -> str:
        """The regex as Alertmanager would write it (for display and docs)."""
        return f"^(?:{self.value})$"

    def matches_value(self, value: str) -> bool:
        if self.op is MatchOp.EQ:
            return value == self.value
        if self.op is MatchOp.NE:
            return value != self.value
        assert self._regex is not None
        found = self._regex.fullmatch(value) is not None
        return found if self.op is MatchOp.RE else not found

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.matches_value(labels.get(self.name, ""))

    def predicate(self) -> Callable[[str], bool]:
        """``matches_value`` as one flat callable, for loops that test many label sets (inhibition)."""
        if self.op is MatchOp.EQ:
            return self.value.__eq__
        if self.op is MatchOp.NE:
            return self.value.__ne__
        assert self._regex is not None
        fullmatch = self._regex.fullmatch
        if self.op is MatchOp.RE:
            return lambda value: fullmatch(value) is not None
        return lambda value: fullmatch(value) is None

    def __str__(self) -> str:
        return f"{self.name}{self.op.value}{self.value!r}"


def _field(item: object, key: str, index: int) -> object:
    if isinstance(item, Mapping):
        if key not in item:
            raise MatcherError(f"matcher {index}: missing {key!r}")
        return item[key]
    if not hasattr(item, key):
        raise MatcherError(f"matcher {index}: missing {key!r}")
    return getattr(item, key)


def parse_matchers(raw: Iterable[object], *, allow_match_all: bool = False) -> list[Matcher]:
    """Validate a silence's matchers (dicts or structs with name/op/value).

    Errors name the 0-based position of the bad matcher so an API can point
    at ``matchers[i]``. ``allow_match_all`` lifts the silence-only rule that one
    matcher must not match the empty string: an inhibit rule's side may match
    every alert (as in Alertmanager), since the other side and ``equal`` still
    bound what it mutes.
    """
    matchers: list[Matcher] = []
    for index, item in enumerate(raw):
        if isinstance(item, Matcher):
            matchers.append(item)
            continue
        name, op, value = (_field(item, key, index) for key in ("name", "op", "value"))
        try:
            matchers.append(Matcher(name=name, op=op, value=value))  # type: ignore[arg-type]
        except MatcherError as exc:
            raise MatcherError(f"matcher {index}: {exc}") from None
    if not matchers:
        raise MatcherError("at least one matcher is required")
    if not allow_match_all and all(m.matches_value("") for m in matchers):
        raise MatcherError(
            "at least one matcher must not match the empty string (these would silence every alert)"
        )
    return matchers


def matches_all(matchers: Sequence[Matcher], labels: Mapping[str, str]) -> bool:
    """True when every matcher holds; an empty list never matches."""
    return bool(matchers) and all(m.matches(labels) for m in matchers)
