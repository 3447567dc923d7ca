from __future__ import annotations

from uuid import UUID

from litestar import Controller, delete, get, post
from litestar.di import Provide
from litestar.params import Body
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.auth.guards import requires_scope
from prodsentinel.auth.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, ApiKeyPage
from prodsentinel.auth.scopes import Principal, Scope
from prodsentinel.auth.services import ApiKeyService

__all__ = ("ApiKeyController",)


async def provide_api_key_service(db_session: AsyncSession) -> ApiKeyService:
    return ApiKeyService(session=db_session)


class ApiKeyController(Controller):
    """API keys of the caller's project (admin scope)."""

    path = "/api/v1/keys"
    tags = ["keys"]
    guards = [requires_scope(Scope.ADMIN)]
    dependencies = {"api_keys": Provide(provide_api_key_service)}

    @get("/", summary="List the project's API keys (never the raw keys)")
    async def list_keys(self, api_keys: ApiKeyService, principal: Principal) -> ApiKeyPage:
        return ApiKeyPage(items=await api_keys.list_keys(principal.project_id))

    @post("/", summary="Create an API key; the raw key is in the answer, once")
    async def create_key(
        self, api_keys: ApiKeyService, principal: Principal, data: ApiKeyCreate = Body()
    ) -> ApiKeyCreated:
        return await api_keys.create_for_caller(principal, data)

    @delete("/{key_id:uuid}", status_code=200, summary="Revoke an API key (effective for the next request)")
    async def revoke_key(self, api_keys: ApiKeyService, principal: Principal, key_id: UUID) -> ApiKeyOut:
        return await api_keys.revoke(key_id, principal.project_id)
