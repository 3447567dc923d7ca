"""Request and response shapes of people: login, the caller, users of a project."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec

from prodsentinel.lib.structs import Struct

__all__ = (
    "LoginIn",
    "LoginOut",
    "MeOut",
    "MembershipOut",
    "ProjectUserIn",
    "ProjectUserOut",
    "ProjectUserPage",
    "RoleName",
    "UserOut",
)

#: Declared so the published schema lists the roles (``auth.scopes.ROLE_SCOPES``).
RoleName = Literal["viewer", "operator", "admin"]
Email = Annotated[str, msgspec.Meta(min_length=3, max_length=254)]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class LoginIn(Struct):
    email: Email
    password: Password
    project: str | None = None
    """The project the session acts in; default: the user's first project."""


class LoginOut(Struct):
    access_token: str
    token_type: str
    expires_in: int
    project: str
    role: RoleName
    csrf_token: str
    """Send it as ``X-CSRF-Token`` on changes authenticated by the session cookie."""


class MeOut(Struct):
    kind: Literal["user", "key"]
    name: str
    """The user's email, or the API key's name."""
    project: str
    scopes: list[str]
    role: str | None = None
    """The person's role in the project (viewer, operator or admin); null for an API key."""


class MembershipOut(Struct):
    project: str
    role: str


class UserOut(Struct):
    id: UUID
    email: str
    created_at: datetime
    disabled_at: datetime | None
    memberships: list[MembershipOut]


class ProjectUserIn(Struct):
    email: Email
    role: RoleName
    password: Password | None = None
    """Required for a new user; for an existing one it replaces the password when given."""


class ProjectUserOut(Struct):
    id: UUID
    email: str
    role: str
    created_at: datetime
    disabled_at: datetime | None


class ProjectUserPage(Struct):
    items: list[ProjectUserOut]
