"""Projects and API keys: creation, listing, revocation and authentication."""

from __future__ import annotations

import hashlib
import secrets
from uuid import UUID

from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.auth.models import ApiKey, Project
from prodsentinel.auth.repositories import ApiKeyRepository, ProjectRepository
from prodsentinel.auth.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut
from prodsentinel.auth.scopes import Principal, parse_scopes
from prodsentinel.lib.errors import NotFoundError, ValidationError
from prodsentinel.lib.time import utcnow

__all__ = ("ApiKeyService", "ProjectService", "create_key", "hash_secret", "split_key")

KEY_PREFIX = "ps"
DEFAULT_PROJECT = "default"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(raw_key: str) -> tuple[str, str] | None:
    """``ps_<prefix>_<secret>`` -> ``(prefix, secret)``; None when the shape is wrong."""
    parts = raw_key.strip().split("_")
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


class ProjectService(SQLAlchemyAsyncRepositoryService[Project]):
    repository_type = ProjectRepository
    repository: ProjectRepository

    async def get_or_create(self, name: str) -> Project:
        name = name.strip()
        if not name or len(name) > 100:
            raise ValidationError("project name must be 1 to 100 characters.")
        return await self.repository.get_or_create_by_name(name)


class ApiKeyService(SQLAlchemyAsyncRepositoryService[ApiKey]):
    repository_type = ApiKeyRepository
    repository: ApiKeyRepository

    async def create_key(self, *, name: str, scopes: list[str], project: Project) -> ApiKeyCreated:
        name = name.strip()
        if not name or len(name) > 100:
            raise ValidationError("name must be 1 to 100 characters.")
        try:
            scope_names = parse_scopes(scopes)
        except ValueError as exc:
            raise ValidationError(f"{exc}.") from None
        prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(24).replace("_", "-")
        key = await self.create(
            ApiKey(
                project_id=project.id,
                name=name,
                prefix=prefix,
                key_hash=hash_secret(secret),
                scopes=scope_names,
            )
        )
        return ApiKeyCreated(
            id=key.id,
            name=key.name,
            project=project.name,
            scopes=list(key.scopes),
            created_at=key.created_at,
            revoked_at=None,
            key=f"{KEY_PREFIX}_{prefix}_{secret}",
        )

    async def list_keys(self, project_id: UUID | None = None) -> list[ApiKeyOut]:
        rows = await self.repository.list_with_projects(project_id)
        return [
            ApiKeyOut(
                id=key.id,
                name=key.name,
                project=project,
                scopes=list(key.scopes),
                created_at=key.created_at,
                revoked_at=key.revoked_at,
            )
            for key, project in rows
        ]

    async def revoke(self, key_id: UUID, project_id: UUID | None = None) -> ApiKeyOut:
        """Revoke a key (idempotent). ``project_id`` restricts it to one project (HTTP callers)."""
        key = await self.get_one_or_none(id=key_id)
        if key is None or (project_id is not None and key.project_id != project_id):
            raise NotFoundError("API key not found.")
        if key.revoked_at is None:
            key.revoked_at = utcnow()
            key = await self.update(key)
        [out] = [item for item in await self.list_keys(key.project_id) if item.id == key.id]
        return out

    async def create_in_project(self, *, name: str, scopes: list[str], project: str) -> ApiKeyCreated:
        """Create a key in the project named ``project`` (created if needed): the CLI's way in."""
        owner = await ProjectService(session=self.repository.session).get_or_create(project)
        return await self.create_key(name=name, scopes=scopes, project=owner)

    async def create_for_caller(self, caller: Principal, data: ApiKeyCreate) -> ApiKeyCreated:
        """A key in the caller's project: an admin key administers its own tenant only (SPEC §3).

        A ``project`` naming another project is refused rather than ignored, so a client never
        believes it created a key somewhere it did not.
        """
        if data.project is not None and data.project.strip() != caller.project_name:
            raise ValidationError(
                f"project: an API key can only create keys in its own project ({caller.project_name!r}); "
                "create keys for other projects with `prodsentinel keys create --project`."
            )
        return await self.create_in_project(
            name=data.name, scopes=list[str](data.scopes), project=caller.project_name
        )


async def create_key(session: AsyncSession, *, name: str, scopes: list[str], project: str) -> ApiKeyCreated:
    """``ApiKeyService.create_in_project`` on ``session``: the entry point of the CLI commands and the
    test fixtures, which hold a unit of work rather than a request's injected service."""
    return await ApiKeyService(session=session).create_in_project(name=name, scopes=scopes, project=project)
