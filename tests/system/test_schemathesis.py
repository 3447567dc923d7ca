"""Property-based fuzzing of the published API: schemathesis over ``/schema/openapi.json`` against a real
granian server on the test database, with an admin key.

Bounded and deterministic so it runs in every ``uv run pytest``: a fixed number of generated cases per
operation, derandomized (same seed, same cases), no example database. Every operation's cases are
checked for the two promises a generated client relies on: no 5xx, and every response (status, content
type, body) as documented. Failures of all operations are collected and reported together.
"""

from __future__ import annotations

import os
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import KeyFactory
from tests.system.servers import granian_server

#: Generated cases per operation (about 50 operations): a few hundred requests in all.
CASES_PER_OPERATION = int(os.environ.get("PRODSENTINEL_FUZZ_CASES", "6"))
#: Not fuzzed: an endless event stream, the Prometheus text and the SAQ monitor (a third-party UI).
EXCLUDED = ("/api/v1/events/stream", "/metrics", "/saq")
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


def _run_operation(
    operation: schemathesis.APIOperation, session: requests.Session, headers: dict[str, str]
) -> list[str]:
    failures: list[str] = []

    @hypothesis.settings(
        max_examples=CASES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy())
    def run(case: schemathesis.Case) -> None:
        response = case.call(session=session, headers=headers, timeout=30)
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except AssertionError as error:  # schemathesis's FailureGroup: every failed check of this case
            failures.append(f"{operation.label}: {error}\n  reproduce: {case.as_curl_command(headers)}")

    run()
    return failures


async def test_published_schema_holds_under_fuzzing(
    database_url: str, make_key: KeyFactory, settings: Any
) -> None:
    key = await make_key("admin")
    headers = {"X-API-Key": key}
    env = {
        "DATABASE_URL": database_url,
        "PRODSENTINEL_RATE_LIMIT": "100000/minute",
        "PRODSENTINEL_QUEUE_NAME": settings.queue_name,
    }
    with granian_server(env) as base_url, requests.Session() as session:
        schema = schemathesis.openapi.from_url(f"{base_url}/schema/openapi.json")
        schema.config.base_url = base_url
        operations = [
            result.ok() for result in schema.get_all_operations() if not result.ok().path.startswith(EXCLUDED)
        ]
        assert len(operations) > 40, [op.label for op in operations]
        failures = [failure for op in operations for failure in _run_operation(op, session, headers)]
    if failures:
        pytest.fail(f"{len(failures)} failing cases:\n\n" + "\n\n".join(failures[:40]), pytrace=False)
