"""`prodsentinel keys ...` run as the real CLI in a child process, on a migrated and on an empty database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

ROOT = Path(__file__).resolve().parents[2]
NO_SCHEMA = 'prodsentinel: the database has no schema yet: run "prodsentinel database upgrade" first'


def run_keys(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRODSENTINEL_", "REDIS_URL"))}
    return subprocess.run(
        [sys.executable, "-m", "prodsentinel", "keys", *args],
        env={**env, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )


async def _admin(server_url: str, sql: str) -> None:
    connection = await asyncpg.connect(server_url)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def empty_database_url(postgres_server_url: str) -> Iterator[str]:
    """A database that exists but has never been migrated (no tables at all)."""
    name = f"prodsentinel_empty_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(postgres_server_url, f'CREATE DATABASE "{name}"'))
    parts = urlsplit(postgres_server_url)
    yield f"postgresql://{parts.netloc}/{name}" + (f"?{parts.query}" if parts.query else "")
    asyncio.run(_admin(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.parametrize(
    "args",
    [
        ["create", "--name", "ops", "--scopes", "admin"],
        ["list"],
        ["list", "--json"],
        ["revoke", str(uuid.uuid4())],
    ],
    ids=["create", "list", "list-json", "revoke"],
)
def test_unmigrated_database_is_one_line_not_a_traceback(empty_database_url: str, args: list[str]) -> None:
    result = run_keys(empty_database_url, *args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == NO_SCHEMA
    assert result.stdout == ""


def test_migrated_database_still_works(database_url: str) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    created = run_keys(database_url, "create", "--name", name, "--scopes", "read")
    assert created.returncode == 0, created.stderr
    listed = run_keys(database_url, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert name in {key["name"] for key in json.loads(listed.stdout)}
