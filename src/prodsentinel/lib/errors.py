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
        extra: dict[str, Any] = {}
        if isinstance(exc, ValidationException) and exc.extra:
            extra["errors"] = exc.extra
        headers = dict(exc.headers or {})
        if exc.status_code == 429 and "Retry-After" not in headers:
            # The rate limiter says when its window resets; retrying sooner is another 429.
            reset = next((v for k, v in headers.items() if k.lower() == "ratelimit-reset"), None)
            headers["Retry-After"] = reset if reset and reset.isdigit() and int(reset) > 0 else "1"
        return Response(
            _body(str(detail), request, **extra),
            status_code=exc.status_code,
            headers=headers,
            media_type=MediaType.JSON,
        )
    logger.exception("unhandled_error", path=request.url.path, request_id=request_id_of(request))
    detail = repr(exc) if request.app.debug else "Internal server error."
    return Response(
        _body(detail, request), status_code=HTTP_500_INTERNAL_SERVER_ERROR, media_type=MediaType.JSON
    )
