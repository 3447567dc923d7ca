"""`prodsentinel keys create|list|revoke`, added to Litestar's CLI by a CLIPlugin."""

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
from prodsentinel.auth.models import ApiKey, Project
from prodsentinel.auth.schemas import ApiKeyCreated
from prodsentinel.auth.scopes import parse_scopes
from prodsentinel.auth.services import ApiKeyService
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


class _NoSchemaError(Exception):
    """The database is reachable but its tables have not been created."""


async def _require_schema(session: AsyncSession) -> None:
    """Fail before the first query when ``prodsentinel database upgrade`` has not run yet."""
    connection = await session.connection()
    names = (Project.__tablename__, ApiKey.__tablename__)
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
