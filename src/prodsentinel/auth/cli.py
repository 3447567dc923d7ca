"""`prodsentinel keys create|list|revoke`, added to Litestar's CLI by a CLIPlugin."""

from __future__ import annotations

import asyncio
import sys
from typing import Any
from uuid import UUID

import click
import msgspec
from litestar import Litestar
from litestar.cli._utils import LitestarGroup
from litestar.plugins import CLIPluginProtocol

from prodsentinel.auth import services as auth_services
from prodsentinel.auth.schemas import ApiKeyCreated
from prodsentinel.auth.scopes import parse_scopes
from prodsentinel.auth.services import ApiKeyService
from prodsentinel.lib.database import session_scope_for_app
from prodsentinel.lib.errors import DomainError

__all__ = ("KeysCLIPlugin",)


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
    async def run() -> ApiKeyCreated:
        async with session_scope_for_app(app) as session:
            return await auth_services.create_key(session, name=name, scopes=scopes, project=project)

    created = _run(run())
    click.echo(
        f"Created key {created.id} '{created.name}' in project '{created.project}' with scopes "
        f"{','.join(created.scopes)}. Store it now: it is not shown again."
    )
    click.echo(created.key)


@keys_group.command(name="list", help="List API keys (never the raw keys).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_keys(app: Litestar, as_json: bool) -> None:
    async def run() -> list[Any]:
        async with session_scope_for_app(app) as session:
            return await ApiKeyService(session=session).list_keys()

    keys = _run(run())
    if as_json:
        click.echo(msgspec.json.encode(keys).decode())
        return
    for key in keys:
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        click.echo(f"{key.id}  {key.project:<16} {key.name:<24} {','.join(key.scopes):<28} {state}")


@keys_group.command(name="revoke", help="Revoke an API key by id.")
@click.argument("key_id", type=click.UUID)
def revoke_key(app: Litestar, key_id: UUID) -> None:
    async def run() -> Any:
        async with session_scope_for_app(app) as session:
            return await ApiKeyService(session=session).revoke(key_id)

    key = _run(run())
    click.echo(f"Revoked key {key.id} '{key.name}'.")


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except DomainError as exc:
        click.echo(f"error: {exc.detail}", err=True)
        sys.exit(1)


class KeysCLIPlugin(CLIPluginProtocol):
    def on_cli_init(self, cli: click.Group) -> None:
        cli.add_command(keys_group)
