from __future__ import annotations

from datetime import datetime
from uuid import UUID

from prodsentinel.lib.structs import Struct

__all__ = ("ApiKeyCreate", "ApiKeyCreated", "ApiKeyOut", "ApiKeyPage")


class ApiKeyCreate(Struct):
    name: str
    scopes: list[str]
    project: str | None = None
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
