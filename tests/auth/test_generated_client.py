"""The published schema drives a client: readable operation ids, and an ``openapi-python-client`` client
generated from ``/schema/openapi.json`` logs in and lists incidents against a real server."""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from litestar import Litestar
from litestar.testing import AsyncTestClient

from prodsentinel.lib.operation_ids import OPERATION_IDS
from tests.auth.conftest import PASSWORD, UserFactory
from tests.conftest import require_tool
from tests.system.servers import granian_server


async def test_every_operation_has_an_explicit_readable_unique_id(client: AsyncTestClient[Litestar]) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    ids = [
        operation["operationId"]
        for operations in schema["paths"].values()
        for method, operation in operations.items()
        if method != "parameters"
    ]
    assert len(ids) == len(set(ids))
    assert set(ids) <= set(OPERATION_IDS.values()), set(ids) - set(OPERATION_IDS.values())
    assert {"listIncidents", "ackAlert", "login", "createPolicy"} <= set(ids)
    security = schema["components"]["securitySchemes"]
    assert security["SessionCookie"] == {
        "type": "apiKey",
        "name": "prodsentinel_session",
        "in": "cookie",
        "description": "Set by POST /api/v1/auth/login; changes also need the X-CSRF-Token header.",
    }
    assert security["Bearer"]["scheme"] == "bearer"
    assert schema["paths"]["/api/v1/auth/login"]["post"]["security"] == [{}]


async def test_a_generated_client_logs_in_and_lists_incidents(
    database_url: str, make_user: UserFactory, tmp_path: Path
) -> None:
    generator = require_tool("openapi-python-client", "uv sync (dev dependency openapi-python-client)")
    email = await make_user("viewer")
    with granian_server({"DATABASE_URL": database_url}) as base_url:
        api = await asyncio.to_thread(_generate_and_use, generator, base_url, email, tmp_path)
    assert api["login_status"] == 200
    assert api["role"] == "viewer"
    assert api["incidents_status"] == 200
    assert api["incidents"] == []


def _generate_and_use(generator: str, base_url: str, email: str, tmp_path: Path) -> dict[str, Any]:
    """Generate the package ``client`` from the served schema, then use it (blocking: in a thread)."""
    schema = tmp_path / "openapi.json"
    schema.write_bytes(httpx.get(f"{base_url}/schema/openapi.json", timeout=20).content)
    generated = subprocess.run(
        [
            generator,
            "generate",
            "--path",
            str(schema),
            "--output-path",
            str(tmp_path / "client"),
            "--meta",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert generated.returncode == 0, generated.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        return _generated(base_url, email)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [name for name in sys.modules if name == "client" or name.startswith("client.")]:
            del sys.modules[name]


def _generated(base_url: str, email: str) -> dict[str, Any]:
    """Use the generated package ``client`` the way its README says: log in, then list incidents."""
    package = importlib.import_module("client")
    login = importlib.import_module("client.api.auth.login")
    list_incidents = importlib.import_module("client.api.incidents.list_incidents")
    models = importlib.import_module("client.models")
    anonymous = package.Client(base_url=base_url)
    answer = login.sync_detailed(client=anonymous, body=models.LoginIn(email=email, password=PASSWORD))
    authenticated = package.AuthenticatedClient(base_url=base_url, token=answer.parsed.access_token)
    page = list_incidents.sync_detailed(client=authenticated)
    return {
        "login_status": int(answer.status_code),
        "role": str(answer.parsed.role),
        "incidents_status": int(page.status_code),
        "incidents": list(page.parsed.items),
    }
