"""Scopes and what each implies (SPEC §3): admin implies all; operate implies read; ingest is write-only."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID

__all__ = ("ROLES", "ROLE_SCOPES", "Principal", "Scope", "expand_scopes", "parse_scopes")


class Scope(StrEnum):
    INGEST = "ingest"
    READ = "read"
    OPERATE = "operate"
    ADMIN = "admin"


_IMPLIES: dict[Scope, frozenset[Scope]] = {
    Scope.ADMIN: frozenset(Scope),
    Scope.OPERATE: frozenset({Scope.OPERATE, Scope.READ}),
    Scope.READ: frozenset({Scope.READ}),
    Scope.INGEST: frozenset({Scope.INGEST}),
}


#: A person's role in a project and the API-key scope it stands for (SPEC §15).
ROLE_SCOPES: dict[str, Scope] = {"viewer": Scope.READ, "operator": Scope.OPERATE, "admin": Scope.ADMIN}
ROLES = tuple(ROLE_SCOPES)


def expand_scopes(granted: list[str] | tuple[str, ...] | frozenset[str]) -> frozenset[Scope]:
    """Every scope a key effectively has, implications included."""
    effective: set[Scope] = set()
    for name in granted:
        effective |= _IMPLIES[Scope(name)]
    return frozenset(effective)


def parse_scopes(raw: str | list[str]) -> list[str]:
    """Parse ``"ingest,read"`` (or a list) into sorted unique scope names; ValueError names a bad one."""
    names = raw.split(",") if isinstance(raw, str) else raw
    cleaned = sorted({name.strip().lower() for name in names if name.strip()})
    if not cleaned:
        raise ValueError("at least one scope is required (ingest, read, operate, admin)")
    for name in cleaned:
        if name not in Scope.__members__.values():
            raise ValueError(f"unknown scope {name!r}; expected ingest, read, operate or admin")
    return cleaned


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller in one project: an API key, or a person's session.

    For a session ``key_id`` is the session's id and ``user_email`` is set: rate limiting and the
    audit trail then name the person, not a key.
    """

    key_id: UUID
    key_name: str
    project_id: UUID
    project_name: str
    scopes: frozenset[Scope]
    user_email: str | None = None
    user_id: UUID | None = None
    role: str | None = None

    @property
    def actor(self) -> str:
        """How this caller appears in audit rows."""
        if self.user_email is not None:
            return f"user:{self.user_email}"
        return f"key:{self.key_name}:{self.key_id}"

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes
