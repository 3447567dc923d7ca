from __future__ import annotations

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import Select, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from uuid_utils.compat import uuid7

from prodsentinel.auth.models import ApiKey, Project
from prodsentinel.lib.time import utcnow

__all__ = ("ApiKeyRepository", "ProjectRepository")


class ProjectRepository(SQLAlchemyAsyncRepository[Project]):
    model_type = Project

    async def get_or_create_by_name(self, name: str) -> Project:
        """The project called ``name``, created first if missing.

        ``INSERT … ON CONFLICT DO NOTHING`` rather than advanced-alchemy's ``get_or_upsert`` (a read,
        then an insert): instances loading the same policies or channels file at start would otherwise
        race to insert the same name, and the loser would fail on the unique index.
        """
        now = utcnow()
        await self.session.execute(
            pg_insert(Project)
            .values(id=uuid7(), name=name, created_at=now, updated_at=now)
            .on_conflict_do_nothing(index_elements=[Project.name])
        )
        return (await self.session.execute(select(Project).where(Project.name == name))).scalar_one()


class ApiKeyRepository(SQLAlchemyAsyncRepository[ApiKey]):
    model_type = ApiKey

    async def list_with_projects(self, project_id: object | None = None) -> list[tuple[ApiKey, str]]:
        statement: Select[ApiKey, str] = select(ApiKey, Project.name).join(
            Project, Project.id == ApiKey.project_id
        )
        if project_id is not None:
            statement = statement.where(ApiKey.project_id == project_id)
        statement = statement.order_by(ApiKey.created_at, ApiKey.id)
        return [(key, name) for key, name in (await self.session.execute(statement)).all()]
