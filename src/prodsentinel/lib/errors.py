"""Domain errors and the single handler that renders every error as the SPEC §3 JSON body.

Services raise the domain errors below (never ``HTTPException``); controllers let them propagate and
:func:`exception_to_response` turns them, and anything Litestar raises, into
``{"detail": str, "request_id": str, ...}``. Tracebacks never reach a client outside debug mode.
"""

from __future__ import annotations

from typing import Any

import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from prodsentinel.lib.observability import ensure_request_id

__all__ = (
    "BadRequestError",
    "ConflictError",
    "DomainError",
    "NotFoundError",
    "PayloadTooLargeError",
    "ServiceUnavailableError",
    "UnsupportedMediaTypeError",
    "ValidationError",
    "exception_to_response",
    "request_id_of",
)

logger = structlog.get_logger("prodsentinel.errors")


class DomainError(Exception):
    """Base of the errors services raise; ``status_code`` picks the HTTP status."""

    status_code: int = 400

    def __init__(
        self, detail: str, *, extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}
        self.headers = headers or {}


class NotFoundError(DomainError):
    status_code = 404


class ConflictError(DomainError):
    status_code = 409


class ValidationError(DomainError):
    status_code = 422


class PayloadTooLargeError(DomainError):
    status_code = 413


class UnsupportedMediaTypeError(DomainError):
    status_code = 415


class BadRequestError(DomainError):
    status_code = 400


class ServiceUnavailableError(DomainError):
    """Overload: the client should retry after ``Retry-After`` seconds."""

    status_code = 503

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


def request_id_of(request: Request[Any, Any, Any]) -> str:
    """The request's id (assigned on first use when the error happened before the middleware ran)."""
    return ensure_request_id(request.scope)


def _body(detail: str, request: Request[Any, Any, Any], **extra: Any) -> dict[str, Any]:
    return {"detail": detail, "request_id": request_id_of(request), **extra}


def exception_to_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Render any exception as the SPEC §3 error body."""
    if isinstance(exc, DomainError):
        return Response(
            _body(exc.detail, request, **exc.extra),
            status_code=exc.status_code,
            headers=exc.headers,
            media_type=MediaType.JSON,
        )
    if isinstance(exc, HTTPException):
        detail = exc.detail if exc.detail else "Request failed."
        status_code = exc.status_code
        extra: dict[str, Any] = {}
        if isinstance(exc, ValidationException) and exc.extra:
            status_code, detail, errors = _validation_error(exc.extra, status_code, str(detail))
            if errors:
                extra["errors"] = errors
        headers = dict(exc.headers or {})
        if exc.status_code == 429 and "Retry-After" not in headers:
            # The rate limiter says when its window resets; retrying sooner is another 429.
            reset = next((v for k, v in headers.items() if k.lower() == "ratelimit-reset"), None)
            headers["Retry-After"] = reset if reset and reset.isdigit() and int(reset) > 0 else "1"
        return Response(
            _body(str(detail), request, **extra),
            status_code=status_code,
            headers=headers,
            media_type=MediaType.JSON,
        )
    logger.exception("unhandled_error", path=request.url.path, request_id=request_id_of(request))
    detail = repr(exc) if request.app.debug else "Internal server error."
    return Response(
        _body(detail, request), status_code=HTTP_500_INTERNAL_SERVER_ERROR, media_type=MediaType.JSON
    )


def _validation_error(errors: Any, status_code: int, detail: str) -> tuple[int, str, Any]:
    """Status, sentence and ``errors`` list for Litestar's parameter/body validation failures.

    Litestar answers every failed check with 400. We keep 400 for the query, path and headers (and for
    a missing body, which is not JSON at all), but a well-formed JSON body of the wrong shape is a 422,
    like the services' own checks and like ingest (SPEC §3/§4/§7: invalid content 422, malformed JSON
    400), so one endpoint never answers the same mistake two ways. The first problem goes into the
    sentence so a client sees what to fix without parsing ``errors``.
    """
    if not isinstance(errors, list) or not errors or not all(isinstance(e, dict) for e in errors):
        return status_code, detail, errors
    if {str(getattr(e.get("source"), "value", e.get("source"))) for e in errors} == {"body"}:
        if any(error.get("key") == "data" and error.get("message") == "'data'" for error in errors):
            return 400, "The request body is missing: send a JSON object.", None
        status_code = 422
    first = errors[0]
    source = getattr(first.get("source"), "value", first.get("source")) or "request"
    where = f"{source} {first['key']}" if first.get("key") else str(source)
    return status_code, f"{detail.rstrip('.')}: {where}: {first.get('message', 'invalid')}.", errors
