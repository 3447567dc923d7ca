from __future__ import annotations

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import Select, select

from prodsentinel.auth.models import ApiKey, Project

__all__ = ("ApiKeyRepository", "ProjectRepository")


class ProjectRepository(SQLAlchemyAsyncRepository[Project]):
    model_type = Project


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
