"""`prodsentinel keys create|list|revoke` and `users create|list|disable` (a CLIPlugin)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

import click
import msgspec
from litestar import Litestar
from litestar.cli._utils import LitestarGroup
from litestar.plugins import CLIPluginProtocol
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.auth import services as auth_services
from prodsentinel.auth.models import ApiKey, Project, User
from prodsentinel.auth.schemas import ApiKeyCreated
from prodsentinel.auth.scopes import parse_scopes
from prodsentinel.auth.services import ApiKeyService
from prodsentinel.auth.user_schemas import UserOut
from prodsentinel.auth.users import UserService
from prodsentinel.lib.database import session_scope_for_app
from prodsentinel.lib.errors import DomainError

__all__ = ("NO_SCHEMA", "KeysCLIPlugin")

NO_SCHEMA = 'prodsentinel: the database has no schema yet: run "prodsentinel database upgrade" first'
T = TypeVar("T")


@click.group(cls=LitestarGroup, name="keys", help="Manage API keys.")
def keys_group() -> None:
    """Manage API keys."""


def _scopes(_: Any, __: Any, value: str) -> list[str]:
    try:
        return parse_scopes(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@keys_group.command(name="create", help="Create an API key; the raw key is printed alone on the last line.")
@click.option("--name", required=True, help="A name for the key (shown in audit rows).")
@click.option("--scopes", required=True, callback=_scopes, help="Comma-separated: ingest,read,operate,admin.")
@click.option("--project", default="default", show_default=True, help="Project (created if needed).")
def create_key(app: Litestar, name: str, scopes: list[str], project: str) -> None:
    async def work(session: AsyncSession) -> ApiKeyCreated:
        return await auth_services.create_key(session, name=name, scopes=scopes, project=project)

    created = _run(app, work)
    click.echo(
        f"Created key {created.id} '{created.name}' in project '{created.project}' with scopes "
        f"{','.join(created.scopes)}. Store it now: it is not shown again."
    )
    click.echo(created.key)


@keys_group.command(name="list", help="List API keys (never the raw keys).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_keys(app: Litestar, as_json: bool) -> None:
    async def work(session: AsyncSession) -> list[Any]:
        return await ApiKeyService(session=session).list_keys()

    keys = _run(app, work)
    if as_json:
        click.echo(msgspec.json.encode(keys).decode())
        return
    for key in keys:
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        click.echo(f"{key.id}  {key.project:<16} {key.name:<24} {','.join(key.scopes):<28} {state}")


@keys_group.command(name="revoke", help="Revoke an API key by id.")
@click.argument("key_id", type=click.UUID)
def revoke_key(app: Litestar, key_id: UUID) -> None:
    async def work(session: AsyncSession) -> Any:
        return await ApiKeyService(session=session).revoke(key_id)

    key = _run(app, work)
    click.echo(f"Revoked key {key.id} '{key.name}'.")


@click.group(cls=LitestarGroup, name="users", help="Manage the people who sign in.")
def users_group() -> None:
    """Manage users."""


@users_group.command(
    name="create",
    help="Create a user with a role in a project, or add/change that project's role of an existing user. "
    "The password is prompted for (new users), or read from the first line of stdin with --password-stdin; "
    "never from the command line.",
)
@click.option("--email", required=True, help="The user's email (their login name).")
@click.option("--role", required=True, type=click.Choice(["viewer", "operator", "admin"]), help="Role.")
@click.option("--project", default="default", show_default=True, help="Project (created if needed).")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from stdin (sets it, also for an existing user).",
)
def create_user(app: Litestar, email: str, role: str, project: str, password_stdin: bool) -> None:
    password: str | None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        exists = _run(app, lambda session: UserService(session=session).email_exists(email))
        password = None if exists else click.prompt("Password", hide_input=True, confirmation_prompt=True)

    async def work(session: AsyncSession) -> UserOut:
        return await UserService(session=session).create_in_project(
            email=email, role=role, project=project, password=password
        )

    user = _run(app, work)
    roles = ", ".join(f"{m.project}={m.role}" for m in user.memberships)
    click.echo(f"User {user.email} ({user.id}): {roles}.")


@users_group.command(name="list", help="List users and their roles (never the password hashes).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_users(app: Litestar, as_json: bool) -> None:
    users = _run(app, lambda session: UserService(session=session).list_users())
    if as_json:
        click.echo(msgspec.json.encode(users).decode())
        return
    for user in users:
        state = f"disabled {user.disabled_at:%Y-%m-%d %H:%M}" if user.disabled_at else "active"
        roles = ",".join(f"{m.project}={m.role}" for m in user.memberships)
        click.echo(f"{user.id}  {user.email:<32} {roles:<40} {state}")


@users_group.command(name="disable", help="Disable a user: no login, every session ends at once.")
@click.argument("email")
def disable_user(app: Litestar, email: str) -> None:
    user = _run(app, lambda session: UserService(session=session).disable(email))
    click.echo(f"Disabled user {user.email}; its sessions are ended.")


class _NoSchemaError(Exception):
    """The database is reachable but its tables have not been created."""


async def _require_schema(session: AsyncSession) -> None:
    """Fail before the first query when ``prodsentinel database upgrade`` has not run yet."""
    connection = await session.connection()
    names = (Project.__tablename__, ApiKey.__tablename__, User.__tablename__)
    present = await connection.run_sync(lambda sync: all(inspect(sync).has_table(name) for name in names))
    if not present:
        raise _NoSchemaError


def _run(app: Litestar, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run one command's unit of work on the app's database; known failures are one line on stderr."""

    async def run() -> T:
        async with session_scope_for_app(app) as session:
            await _require_schema(session)
            return await work(session)

    try:
        return asyncio.run(run())
    except _NoSchemaError:
        click.echo(NO_SCHEMA, err=True)
        sys.exit(1)
    except DomainError as exc:
        click.echo(f"error: {exc.detail}", err=True)
        sys.exit(1)


class KeysCLIPlugin(CLIPluginProtocol):
    def on_cli_init(self, cli: click.Group) -> None:
        cli.add_command(keys_group)
        cli.add_command(users_group)
