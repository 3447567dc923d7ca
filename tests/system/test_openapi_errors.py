"""The OpenAPI schema documents the error responses the app really sends (SPEC §3 body)."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import KeyFactory

ERROR_REF = "#/components/schemas/ErrorBody"
METHODS = ("get", "post", "put", "patch", "delete")


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, item[method])
        for path, item in schema["paths"].items()
        for method in METHODS
        if method in item
    ]


def _schema_ref(operation: dict[str, Any], status: str) -> str | None:
    response = operation["responses"].get(status)
    if response is None:
        return None
    return str(response["content"]["application/json"]["schema"].get("$ref"))


async def test_every_operation_documents_its_error_statuses_with_the_error_body(
    client: AsyncTestClient[Litestar], make_key: KeyFactory
) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    body = schema["components"]["schemas"]["ErrorBody"]
    assert sorted(body["required"]) == ["detail", "request_id"]
    api = [(p, m, op) for p, m, op in _operations(schema) if p.startswith("/api/v1/")]
    assert api
    for path, method, operation in api:
        where = f"{method.upper()} {path}"
        for status in ("401", "403", "429", "500"):
            assert _schema_ref(operation, status) == ERROR_REF, where
        assert _schema_ref(operation, "400") in {ERROR_REF, "#/components/schemas/IngestErrorBody"}, where
        if "{" in path:
            assert _schema_ref(operation, "404") == ERROR_REF, where
        if method != "get":
            assert {"409", "422"} <= operation["responses"].keys(), where
    health = schema["paths"]["/health/live"]["get"]["responses"]
    assert "401" not in health  # public

    # What is documented is what is sent: a real 400 and a real 404 carry exactly the documented keys.
    key = {"X-API-Key": await make_key("read")}
    bad_limit = await client.get("/api/v1/logs", params={"limit": "0"}, headers=key)
    missing = await client.get("/api/v1/incidents/00000000-0000-0000-0000-000000000000", headers=key)
    for response in (bad_limit, missing):
        assert set(response.json()) <= set(body["properties"]), response.text
        assert set(body["required"]) <= set(response.json()), response.text
