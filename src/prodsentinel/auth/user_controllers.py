"""People over HTTP: login, logout, the caller (``/api/v1/auth``), a project's users (``/api/v1/users``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import Provide
from litestar.params import Body
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.auth.guards import requires_scope
from prodsentinel.auth.login_limits import LOGIN_STORE, LoginLimiter
from prodsentinel.auth.scopes import Principal, Scope
from prodsentinel.auth.sessions import login_response, logout_response
from prodsentinel.auth.user_schemas import (
    LoginIn,
    LoginOut,
    MeOut,
    ProjectUserIn,
    ProjectUserOut,
    ProjectUserPage,
)
from prodsentinel.auth.users import UserService
from prodsentinel.lib.errors import ValidationError
from prodsentinel.lib.structs import Struct
from prodsentinel.settings import Settings, parse_rate_limit

__all__ = ("SessionController", "UserController")


async def provide_user_service(db_session: AsyncSession) -> UserService:
    return UserService(session=db_session)


async def provide_login_limiter(request: Request[Any, Any, Any]) -> LoginLimiter:
    settings: Settings = request.app.state["settings"]
    return LoginLimiter(
        request.app.stores.get(LOGIN_STORE),
        per_email=parse_rate_limit(settings.login_limit_email),
        per_address=parse_rate_limit(settings.login_limit_address),
    )


class LoggedOut(Struct):
    status: str


class SessionController(Controller):
    """Sign in and out; any signed-in person or key can ask who it is."""

    path = "/api/v1/auth"
    tags = ["auth"]
    dependencies = {"users": Provide(provide_user_service), "limiter": Provide(provide_login_limiter)}

    @post(
        "/login",
        status_code=200,
        summary="Log in: a bearer token, an HttpOnly session cookie and the CSRF token for cookie changes",
        opt={"exclude_from_auth": True},
        security=[{}],
    )
    async def login(
        self,
        request: Request[Any, Any, Any],
        users: UserService,
        limiter: LoginLimiter,
        data: LoginIn = Body(),
    ) -> Response[LoginOut]:
        settings: Settings = request.app.state["settings"]
        sign_in = await users.sign_in(
            email=data.email,
            password=data.password,
            project=data.project,
            lifetime=timedelta(hours=settings.session_hours),
            limiter=limiter,
            address=request.client.host if request.client else "",
        )
        return await login_response(request.app, sign_in)

    @post("/logout", status_code=200, summary="Log out: the session ends on every instance at once")
    async def logout(
        self, request: Request[Any, Any, Any], users: UserService, principal: Principal
    ) -> Response[LoggedOut]:
        if principal.user_email is None:
            raise ValidationError(
                "Only a session logs out; revoke an API key with DELETE /api/v1/keys/{key_id}."
            )
        await users.sign_out(principal.key_id)
        return logout_response(request.app, LoggedOut(status="logged_out"))

    @get("/me", summary="Who is calling: the person (or API key), its project and scopes")
    async def me(self, principal: Principal) -> MeOut:
        scopes = sorted(scope.value for scope in principal.scopes)
        if principal.user_email is None:
            return MeOut(kind="key", name=principal.key_name, project=principal.project_name, scopes=scopes)
        return MeOut(
            kind="user",
            name=principal.user_email,
            project=principal.project_name,
            scopes=scopes,
            role=principal.role,
        )


class UserController(Controller):
    """The people of the caller's project (admin scope)."""

    path = "/api/v1/users"
    tags = ["users"]
    guards = [requires_scope(Scope.ADMIN)]
    dependencies = {"users": Provide(provide_user_service)}

    @get("/", summary="List the project's users and their roles")
    async def list_users(self, users: UserService, principal: Principal) -> ProjectUserPage:
        return ProjectUserPage(items=await users.project_users(principal.project_id))

    @post(
        "/",
        status_code=200,
        summary="Add a user to the project or change its role (creates the user when new: password required)",
    )
    async def put_user(
        self, users: UserService, principal: Principal, data: ProjectUserIn = Body()
    ) -> ProjectUserOut:
        return await users.put_project_user(principal, data)

    @delete("/{user_id:uuid}", summary="Remove a user from the project (its sessions there end at once)")
    async def remove_user(self, users: UserService, principal: Principal, user_id: UUID) -> None:
        await users.remove_from_project(principal, user_id)
