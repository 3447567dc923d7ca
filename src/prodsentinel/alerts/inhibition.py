"""Inhibition (SPEC §13), pure: which inhibit rule mutes a label set, given the alerts firing now.

Alertmanager's semantics (its ``inhibit/inhibit.go``), kept exactly:

- a rule applies to a target when **all** its ``target_matchers`` hold for the target's labels;
- it mutes the target while some **firing** alert matches **all** its ``source_matchers`` and has the
  same value as the target for every ``equal`` label; a label an alert does not carry counts as the
  empty string, so a label missing on both sides is equal;
- when the target matches the source side too, source alerts that also match the target side are
  disregarded: an alert matching both sides is never inhibited by itself, nor by another alert of
  the same two-sided kind (only by a source that is not a target of the rule).

Matchers are ``alerts.matchers`` (the silences' language). The rules of a project are kept oldest
first; when several rules mute an alert, the oldest one is named.

Cost: the rules of a project are indexed by each side's first ``=`` matcher (``_SideIndex``), so a label
set is tested only against the rules that can hold for it. :meth:`InhibitRules.against` walks the
firing alerts once per pass and keeps, per rule, counts of the sources by their ``equal`` values; each
:meth:`Inhibitions.inhibiting` is then a few matcher checks and dictionary lookups, never a scan of the
sources.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID

import structlog

from prodsentinel.alerts.matchers import Matcher, MatcherError, MatchOp, parse_matchers

__all__ = (
    "InhibitRuleSpec",
    "InhibitRules",
    "Inhibitions",
    "RuleRow",
    "parse_rule",
    "rule_fingerprint",
)

logger = structlog.get_logger("prodsentinel.alerts")


class RuleRow(Protocol):
    """What is read of a stored rule (``alerts.models.InhibitRule``)."""

    @property
    def id(self) -> UUID: ...
    @property
    def project_id(self) -> UUID: ...
    @property
    def source_matchers(self) -> list[dict[str, str]]: ...
    @property
    def target_matchers(self) -> list[dict[str, str]]: ...
    @property
    def equal(self) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class InhibitRuleSpec:
    """A validated rule's content (the matchers compiled once)."""

    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...]

    def wire(self) -> dict[str, list[dict[str, str]] | list[str]]:
        """The stored (and returned) shape: matchers as objects, ``equal`` as given (deduplicated)."""
        return {
            "source_matchers": [_matcher_dict(m) for m in self.source],
            "target_matchers": [_matcher_dict(m) for m in self.target],
            "equal": list(self.equal),
        }


def _matcher_dict(matcher: Matcher) -> dict[str, str]:
    return {"name": matcher.name, "op": matcher.op.value, "value": matcher.value}


def parse_rule(source: Iterable[object], target: Iterable[object], equal: Iterable[str]) -> InhibitRuleSpec:
    """Validate a rule (raises ``MatcherError`` naming the side and the matcher's position).

    Each side needs at least one matcher; unlike a silence, a side may match the empty string.
    """
    sides: list[tuple[Matcher, ...]] = []
    for side, raw in (("source_matchers", source), ("target_matchers", target)):
        try:
            sides.append(tuple(parse_matchers(raw, allow_match_all=True)))
        except MatcherError as exc:
            raise MatcherError(f"{side}: {exc}") from None
    return InhibitRuleSpec(source=sides[0], target=sides[1], equal=tuple(dict.fromkeys(equal)))


def rule_fingerprint(spec: InhibitRuleSpec) -> str:
    """The identity of a rule's content within a project: the same matchers (in any order) and the same
    ``equal`` labels (in any order) are the same rule."""
    canonical = {
        "source": sorted(json.dumps(_matcher_dict(m), sort_keys=True) for m in spec.source),
        "target": sorted(json.dumps(_matcher_dict(m), sort_keys=True) for m in spec.target),
        "equal": sorted(spec.equal),
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


_Check = tuple[str, Callable[[str], bool]]


def _checks(matchers: Sequence[Matcher]) -> tuple[_Check, ...]:
    return tuple((m.name, m.predicate()) for m in matchers)


def _holds(checks: tuple[_Check, ...], labels: Mapping[str, str]) -> bool:
    """Every matcher holds (a missing label is ""); the flat form of ``matches_all``."""
    for name, check in checks:  # noqa: SIM110 - a plain loop: all() over a generator is slower on this hot path
        if not check(labels.get(name, "")):
            return False
    return True


def _index_key(matchers: Sequence[Matcher]) -> tuple[str, str] | None:
    """The first ``=`` matcher of a side: a side can only hold for labels with that exact value."""
    return next(((m.name, m.value) for m in matchers if m.op is MatchOp.EQ), None)


@dataclass(frozen=True, slots=True)
class _Rule:
    id: UUID
    order: int
    spec: InhibitRuleSpec
    source: tuple[_Check, ...]
    target: tuple[_Check, ...]

    @classmethod
    def of(cls, rule_id: UUID, order: int, spec: InhibitRuleSpec) -> _Rule:
        return cls(rule_id, order, spec, _checks(spec.source), _checks(spec.target))

    def key(self, labels: Mapping[str, str]) -> tuple[str, ...]:
        return tuple(labels.get(name, "") for name in self.spec.equal)


@dataclass(frozen=True, slots=True)
class _SideIndex:
    """The rules of a project by one side's first ``=`` matcher, so a label set is tested only against
    the rules that can hold for it (plus those whose side has no ``=`` matcher)."""

    by_label: Mapping[str, Mapping[str, Sequence[_Rule]]]
    rest: Sequence[_Rule]

    @classmethod
    def of(cls, rules: Sequence[_Rule], side: str) -> _SideIndex:
        by_label: dict[str, dict[str, list[_Rule]]] = {}
        rest: list[_Rule] = []
        for rule in rules:
            key = _index_key(rule.spec.source if side == "source" else rule.spec.target)
            if key is None:
                rest.append(rule)
            else:
                by_label.setdefault(key[0], {}).setdefault(key[1], []).append(rule)
        return cls(by_label, rest)

    def candidates(self, labels: Mapping[str, str]) -> list[_Rule]:
        found = [
            rule
            for name, by_value in self.by_label.items()
            for rule in by_value.get(labels.get(name, ""), ())
        ]
        found.extend(self.rest)
        return found


@dataclass(frozen=True, slots=True)
class _ProjectRules:
    rules: Sequence[_Rule]
    sources: _SideIndex
    targets: _SideIndex


@dataclass(frozen=True, slots=True)
class InhibitRules:
    """The rules in force, per project, oldest first (parsed and indexed once per pass)."""

    by_project: Mapping[UUID, _ProjectRules] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: Iterable[RuleRow]) -> InhibitRules:
        parsed: dict[UUID, list[_Rule]] = {}
        for row in rows:
            try:
                spec = parse_rule(row.source_matchers, row.target_matchers, row.equal)
            except MatcherError:  # pragma: no cover - validated at creation
                logger.warning("invalid_stored_inhibit_rule", rule_id=str(row.id))
                continue
            rules = parsed.setdefault(row.project_id, [])
            rules.append(_Rule.of(row.id, len(rules), spec))
        return cls(
            {
                project_id: _ProjectRules(
                    rules, _SideIndex.of(rules, "source"), _SideIndex.of(rules, "target")
                )
                for project_id, rules in parsed.items()
            }
        )

    def __bool__(self) -> bool:
        return bool(self.by_project)

    def against(self, firing: Iterable[tuple[UUID, Mapping[str, str]]]) -> Inhibitions:
        """The rules' sources among ``firing`` (project id, labels): per rule, how many sources have each
        ``equal`` key, all of them and those that do not also match the rule's target side."""
        every: dict[UUID, Counter[tuple[str, ...]]] = {}
        one_sided: dict[UUID, Counter[tuple[str, ...]]] = {}
        for project_id, labels in firing:
            project = self.by_project.get(project_id)
            if project is None:
                continue
            for rule in project.sources.candidates(labels):
                if not _holds(rule.source, labels):
                    continue
                key = rule.key(labels)
                every.setdefault(rule.id, Counter())[key] += 1
                if not _holds(rule.target, labels):
                    one_sided.setdefault(rule.id, Counter())[key] += 1
        return Inhibitions(self, every, one_sided)


@dataclass(frozen=True, slots=True)
class Inhibitions:
    """The rules and the sources firing at one instant: answers which rule mutes a label set."""

    rules: InhibitRules = field(default_factory=InhibitRules)
    every: Mapping[UUID, Counter[tuple[str, ...]]] = field(default_factory=dict)
    one_sided: Mapping[UUID, Counter[tuple[str, ...]]] = field(default_factory=dict)

    def inhibiting(self, project_id: UUID, labels: Mapping[str, str]) -> UUID | None:
        """The oldest rule that mutes ``labels`` now, or None."""
        project = self.rules.by_project.get(project_id)
        if project is None or not self.every:
            return None
        muting: _Rule | None = None
        for rule in project.targets.candidates(labels):
            if muting is not None and rule.order > muting.order:
                continue
            sources = self.every.get(rule.id)
            if not sources or not _holds(rule.target, labels):
                continue
            # Two-sided (the target matches the source side too): only one-sided sources count, so an
            # alert never inhibits itself (Alertmanager's excludeTwoSidedMatch).
            if _holds(rule.source, labels):
                sources = self.one_sided.get(rule.id)
                if not sources:
                    continue
            if sources[rule.key(labels)] > 0:
                muting = rule
        return None if muting is None else muting.id
