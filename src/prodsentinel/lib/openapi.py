"""Document the SPEC §3 error responses on every operation of the OpenAPI schema.

Litestar documents only a route handler's own ``responses`` plus, for handlers with parameters, a 400
in its default error shape (``status_code``, ``detail``, ``extra``), which is not what the app sends.
It has no app-wide ``responses`` setting, so :func:`document_error_responses` fills each registered
handler's ``responses`` once, after the app is built (the schema itself is still generated lazily by
Litestar): the statuses the operation can answer with, all with the ``ErrorBody`` shape. Responses a
handler declares itself (ingest's ``IngestErrorBody``) win.
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Litestar
from litestar.enums import HttpMethod
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.routes import HTTPRoute

from prodsentinel.lib.structs import Struct

__all__ = ("ErrorBody", "document_error_responses")


class ErrorBody(Struct):
    """Every 4xx/5xx answer (SPEC §3). Validation failures may add ``errors``."""

    detail: str
    request_id: str
    errors: list[dict[str, Any]] | None = None


_DESCRIPTIONS = {
    400: "Malformed request: a bad parameter, cursor or body.",
    401: "Missing or invalid API key.",
    403: "The key lacks the scope this operation needs.",
    404: "No such resource in the caller's project.",
    409: "Conflicts with the stored state (duplicate name, wrong state).",
    422: "The body is well-formed but invalid.",
    429: "Rate limit exceeded: retry after Retry-After seconds.",
    500: "Internal server error (no traceback is ever returned).",
}
_WRITES = {HttpMethod.POST, HttpMethod.PUT, HttpMethod.PATCH, HttpMethod.DELETE}


def document_error_responses(app: Litestar, public_paths: list[str]) -> None:
    """Add the error statuses each operation can answer with to its handler's ``responses``."""
    public = [re.compile(pattern) for pattern in public_paths]
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        authenticated = not any(pattern.match(route.path) for pattern in public)
        for handler in route.route_handlers:
            codes = _error_statuses(handler, has_path_params=bool(route.path_parameters), auth=authenticated)
            spec = {
                code: ResponseSpec(ErrorBody, description=_DESCRIPTIONS[code], generate_examples=False)
                for code in codes
            }
            handler.responses = {**spec, **(handler.responses or {})}


def _error_statuses(handler: HTTPRouteHandler, *, has_path_params: bool, auth: bool) -> list[int]:
    codes = [400, 500]
    if auth:
        codes += [401, 403, 429]
    if has_path_params:
        codes.append(404)
    if set(handler.http_methods) & _WRITES:
        codes += [409, 422]
    return sorted(codes)
