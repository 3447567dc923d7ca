"""POST /v1/traces, /v1/logs, /v1/metrics: OTLP/HTTP on the API's own port (SPEC §11).

Thin like §4's handlers (``ingest.controllers``, whose reasons apply here too: raw body, scope checked in
the handler). The difference is the error shape: OTLP clients read a ``google.rpc.Status`` in the request's
content type, so the domain errors of reading and storing the export are rendered here rather than by the
app's §3 handler. 401/403 are raised before and keep §3's JSON body (SPEC §11).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Controller, Request, Response, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType

from prodsentinel.auth.guards import authorized_principal
from prodsentinel.auth.scopes import Scope
from prodsentinel.ingest.decoding import read_body
from prodsentinel.ingest.otlp_decoding import (
    JSON,
    LOGS,
    MEDIA_TYPES,
    METRICS,
    PROTOBUF,
    TRACES,
    OtlpFormat,
    Signal,
    encode_response,
    encode_status,
)
from prodsentinel.ingest.otlp_services import export
from prodsentinel.ingest.plugin import INGESTOR_STATE_KEY
from prodsentinel.ingest.services import Ingestor
from prodsentinel.lib.errors import DomainError, request_id_of

__all__ = ("OtlpController",)

_DESCRIPTION = (
    "OTLP/HTTP export (`Export{kind}ServiceRequest`), as OpenTelemetry SDKs and Collectors send it: "
    "`application/x-protobuf` or `application/json` (OTLP/JSON), optionally `Content-Encoding: gzip`. "
    "200 with `Export{kind}ServiceResponse` in the request's content type once the valid items are "
    "committed; invalid items are counted in `partial_success`. Errors carry a `google.rpc.Status`: 400 "
    "undecodable, 413 body over the limit (raw or inflated), 415 other content types, 503 + Retry-After "
    "when overloaded. 401/403 as for every endpoint."
)
_BODY = RequestBody(
    content={
        "application/x-protobuf": OpenAPIMediaType(
            schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
        ),
        "application/json": OpenAPIMediaType(schema=Schema(type=OpenAPIType.OBJECT)),
    },
    required=True,
)
_STATUS = "A `google.rpc.Status` (protobuf or JSON, as the request)."
_RESPONSES = {
    200: ResponseSpec(None, description="`Export…ServiceResponse` (protobuf or JSON, as the request)."),
    400: ResponseSpec(None, description=_STATUS),
    413: ResponseSpec(None, description=_STATUS),
    415: ResponseSpec(None, description=_STATUS),
    503: ResponseSpec(None, description=_STATUS + " Retry after `Retry-After` seconds."),
}


def _answer_format(content_type: str) -> OtlpFormat:
    """The format of the answer: protobuf for a protobuf request, else JSON (also for a 415)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return PROTOBUF if media_type in ("application/x-protobuf", "application/protobuf") else JSON


async def _export(request: Request[Any, Any, Any], signal: Signal) -> Response[bytes]:
    principal = authorized_principal(request, Scope.INGEST)  # 401/403 (SPEC §3) before the body is read
    ingestor: Ingestor = request.app.state[INGESTOR_STATE_KEY]
    headers = request.headers
    content_type = headers.get("content-type", "")
    fmt = _answer_format(content_type)
    try:
        body = await read_body(
            request.stream(), limit=ingestor.settings.max_body_bytes, content_length=request.content_length
        )
        result = await export(
            ingestor,
            signal,
            principal.project_id,
            body,
            content_type=content_type,
            content_encoding=headers.get("content-encoding", ""),
        )
    except DomainError as exc:
        return Response(
            encode_status(fmt, exc.status_code, exc.detail, request_id_of(request)),
            status_code=exc.status_code,
            headers=exc.headers,
            media_type=MEDIA_TYPES[fmt],
        )
    return Response(
        encode_response(signal, fmt, result.rejected, result.error_message),
        status_code=200,
        media_type=MEDIA_TYPES[fmt],
    )


@dataclass
class _OtlpOperation(Operation):
    """Documents the two body media types (the handler reads the raw body, so Litestar sees none)."""

    def __post_init__(self) -> None:
        self.request_body = _BODY


def _operation(kind: str) -> dict[str, Any]:
    return {
        "status_code": 200,
        "summary": f"OTLP/HTTP {kind.lower()} export",
        "description": _DESCRIPTION.format(kind=kind),
        "responses": _RESPONSES,
        "operation_class": _OtlpOperation,
    }


class OtlpController(Controller):
    """OTLP/HTTP receivers at the SDK's default paths (scope ``ingest``, checked in ``_export``)."""

    path = "/v1"
    tags = ["otlp"]
    opt = {"no_rate_limit": True}  # governed by ingest backpressure, like §4
    request_max_body_size = None  # enforced by read_body with PRODSENTINEL_MAX_BODY_BYTES

    @post("/traces", **_operation("Trace"))
    async def traces(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        return await _export(request, TRACES)

    @post("/logs", **_operation("Logs"))
    async def logs(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        return await _export(request, LOGS)

    @post("/metrics", **_operation("Metrics"))
    async def metrics(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        return await _export(request, METRICS)
