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

Cost: :meth:`InhibitRules.against` walks (firing alerts x rules of their project) once per pass and
keeps, per rule, counts of the sources by their ``equal`` values; each :meth:`Inhibitions.inhibiting`
is then (rules of the project) matcher checks and dictionary lookups, never a scan of the sources.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID

import structlog

from prodsentinel.alerts.matchers import Matcher, MatcherError, matches_all, parse_matchers

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


@dataclass(frozen=True, slots=True)
class _Rule:
    id: UUID
    spec: InhibitRuleSpec

    def key(self, labels: Mapping[str, str]) -> tuple[str, ...]:
        return tuple(labels.get(name, "") for name in self.spec.equal)


@dataclass(frozen=True, slots=True)
class InhibitRules:
    """The rules in force, per project, oldest first (parsed once per pass)."""

    by_project: Mapping[UUID, Sequence[_Rule]] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: Iterable[RuleRow]) -> InhibitRules:
        parsed: dict[UUID, list[_Rule]] = {}
        for row in rows:
            try:
                spec = parse_rule(row.source_matchers, row.target_matchers, row.equal)
            except MatcherError:  # pragma: no cover - validated at creation
                logger.warning("invalid_stored_inhibit_rule", rule_id=str(row.id))
                continue
            parsed.setdefault(row.project_id, []).append(_Rule(row.id, spec))
        return cls(parsed)

    def __bool__(self) -> bool:
        return bool(self.by_project)

    def against(self, firing: Iterable[tuple[UUID, Mapping[str, str]]]) -> Inhibitions:
        """The rules' sources among ``firing`` (project id, labels): per rule, how many sources have each
        ``equal`` key, all of them and those that do not also match the rule's target side."""
        every: dict[UUID, Counter[tuple[str, ...]]] = {}
        one_sided: dict[UUID, Counter[tuple[str, ...]]] = {}
        for project_id, labels in firing:
            for rule in self.by_project.get(project_id, ()):
                if not matches_all(rule.spec.source, labels):
                    continue
                key = rule.key(labels)
                every.setdefault(rule.id, Counter())[key] += 1
                if not matches_all(rule.spec.target, labels):
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
        for rule in self.rules.by_project.get(project_id, ()):
            sources = self.every.get(rule.id)
            if not sources or not matches_all(rule.spec.target, labels):
                continue
            # Two-sided (the target matches the source side too): only one-sided sources count, so an
            # alert never inhibits itself (Alertmanager's excludeTwoSidedMatch).
            if matches_all(rule.spec.source, labels):
                sources = self.one_sided.get(rule.id)
                if not sources:
                    continue
            if sources[rule.key(labels)] > 0:
                return rule.id
        return None
