"""`prodsentinel users ...` run as the real CLI in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.auth.models import User

ROOT = Path(__file__).resolve().parents[2]


def run_users(database_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRODSENTINEL_", "REDIS_URL"))}
    return subprocess.run(
        [sys.executable, "-m", "prodsentinel", "users", *args],
        env={**env, "DATABASE_URL": database_url},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )


def _listed(database_url: str, email: str) -> dict[str, object]:
    result = run_users(database_url, "list", "--json")
    assert result.returncode == 0, result.stderr
    [user] = [user for user in json.loads(result.stdout) if user["email"] == email]
    return user


async def test_create_twice_changes_memberships_and_stores_only_an_argon2_hash(
    database_url: str, db_session: AsyncSession
) -> None:
    email, password = f"Ops-{uuid.uuid4().hex[:8]}@Example.com", "correct horse battery"
    project_a, project_b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"

    first = run_users(
        database_url, "create", "--email", email, "--role", "viewer", "--project", project_a,
        "--password-stdin", stdin=password + "\n",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert password not in first.stdout
    # A second create for the same email: no password asked, a membership added, then a role changed.
    assert (
        run_users(
            database_url, "create", "--email", email, "--role", "admin", "--project", project_b
        ).returncode
        == 0
    )
    changed = run_users(
        database_url, "create", "--email", email, "--role", "operator", "--project", project_a
    )
    assert changed.returncode == 0, changed.stderr

    user = _listed(database_url, email.lower())
    assert user["memberships"] == [
        {"project": project_a, "role": "operator"},
        {"project": project_b, "role": "admin"},
    ]
    assert user["disabled_at"] is None
    stored = (await db_session.execute(select(User).where(User.email == email.lower()))).scalar_one()
    assert stored.password_hash.startswith("$argon2id$")
    assert password not in stored.password_hash


def test_new_user_password_is_prompted_with_confirmation(database_url: str) -> None:
    email = f"prompt-{uuid.uuid4().hex[:8]}@example.com"
    result = run_users(
        database_url, "create", "--email", email, "--role", "viewer", stdin="s3cret-pass\ns3cret-pass\n"
    )
    assert result.returncode == 0, result.stderr
    assert "s3cret-pass" not in result.stdout
    assert _listed(database_url, email)["memberships"] == [{"project": "default", "role": "viewer"}]


def test_short_password_and_unknown_role_are_refused(database_url: str) -> None:
    email = f"short-{uuid.uuid4().hex[:8]}@example.com"
    short = run_users(
        database_url, "create", "--email", email, "--role", "viewer", "--password-stdin", stdin="abc\n"
    )
    assert short.returncode == 1
    assert "at least 8 characters" in short.stderr
    role = run_users(
        database_url, "create", "--email", email, "--role", "root", "--password-stdin", stdin="x" * 12
    )
    assert role.returncode == 2
    assert "root" in role.stderr


def test_disable(database_url: str) -> None:
    email = f"gone-{uuid.uuid4().hex[:8]}@example.com"
    created = run_users(
        database_url,
        "create",
        "--email",
        email,
        "--role",
        "admin",
        "--password-stdin",
        stdin="long-enough-pw\n",
    )
    assert created.returncode == 0, created.stderr
    disabled = run_users(database_url, "disable", email)
    assert disabled.returncode == 0, disabled.stderr
    assert _listed(database_url, email)["disabled_at"] is not None
    missing = run_users(database_url, "disable", "nobody@example.com")
    assert missing.returncode == 1
    assert "User not found" in missing.stderr
