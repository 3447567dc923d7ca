from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec

from prodsentinel.lib.structs import Struct

__all__ = ("ApiKeyCreate", "ApiKeyCreated", "ApiKeyOut", "ApiKeyPage")


#: Declared so the published schema says what ``auth.scopes`` accepts (a generated client gets the enum).
ScopeName = Literal["ingest", "read", "operate", "admin"]
#: Key and project names: 1 to 100 characters, as ``auth.services`` requires.
KeyName = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class ApiKeyCreate(Struct):
    name: KeyName
    scopes: Annotated[list[ScopeName], msgspec.Meta(min_length=1)]
    project: KeyName | None = None
    """Optional; must name the caller's own project (keys of other projects: the CLI)."""


class ApiKeyOut(Struct):
    id: UUID
    name: str
    project: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    """Returned once, at creation: the only time the raw key is shown."""

    key: str


class ApiKeyPage(Struct):
    items: list[ApiKeyOut]
