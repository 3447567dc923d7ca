"""Domain errors and the single handler that renders every error as the SPEC §3 JSON body.

Services raise the domain errors below (never ``HTTPException``); controllers let them propagate and
:func:`exception_to_response` turns them, and anything Litestar, advanced-alchemy or the database raises,
into ``{"detail": str, "request_id": str, ...}``. Tracebacks never reach a client outside debug mode.
"""

from __future__ import annotations

from http import HTTPStatus
from types import CodeType
from typing import Any

import structlog
from advanced_alchemy import exceptions as repository
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from sqlalchemy.exc import DBAPIError

from prodsentinel.lib.observability import ensure_request_id
from prodsentinel.lib.unavailable import DATABASE_UNAVAILABLE, RETRY_AFTER_SECONDS, is_database_unavailable

__all__ = (
    "BadRequestError",
    "ConflictError",
    "DomainError",
    "NotFoundError",
    "PayloadTooLargeError",
    "ServiceUnavailableError",
    "TooManyRequestsError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
    "ValidationError",
    "exception_to_response",
    "not_utf8",
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


class UnauthorizedError(DomainError):
    status_code = 401


class TooManyRequestsError(DomainError):
    """A limit was hit: the client may retry after ``Retry-After`` seconds."""

    status_code = 429

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


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
    domain = exc if isinstance(exc, DomainError) else _as_domain_error(exc)
    if domain is not None:
        return Response(
            _body(domain.detail, request, **domain.extra),
            status_code=domain.status_code,
            headers=domain.headers,
            media_type=MediaType.JSON,
        )
    if isinstance(exc, HTTPException):
        return _http_error(request, exc)
    logger.exception("unhandled_error", path=request.url.path, request_id=request_id_of(request))
    detail = repr(exc) if request.app.debug else "Internal server error."
    return Response(
        _body(detail, request), status_code=HTTP_500_INTERNAL_SERVER_ERROR, media_type=MediaType.JSON
    )


def not_utf8(exc: UnicodeDecodeError) -> BadRequestError:
    """JSON is UTF-8 (RFC 8259): a body with other bytes is malformed, like a syntax error."""
    byte = exc.object[exc.start : exc.start + 1].hex()
    return BadRequestError(f"The body is not valid UTF-8 JSON: {exc.reason} (byte 0x{byte}).")


# PostgreSQL's answers to a str it cannot store as text: NUL (22021 over the wire, 22P05 for a jsonb
# "\u0000"). Every other character of a Python str decoded from UTF-8 is storable, so NUL is the cause.
_UNSTORABLE_TEXT = frozenset({"22021", "22P05"})
_NUL_DETAIL = "Text values must not contain NUL (\\u0000) characters."
# Where Litestar decodes a request body for a ``data:`` parameter. msgspec raises UnicodeDecodeError for
# non-UTF-8 bytes inside a string, and RecursionError for a body nested deeper than the interpreter's
# recursion budget (about 950 levels): neither is a DecodeError, so Litestar does not turn them into a 400.
_BODY_DECODERS: frozenset[CodeType] = frozenset({Request.json.__code__, Request.msgpack.__code__})
_TOO_DEEP_DETAIL = "The JSON body nests arrays and objects too deeply to be decoded."


def _as_domain_error(exc: Exception) -> DomainError | None:
    """The client error (or repository outcome) behind an exception raised below the services."""
    if is_database_unavailable(exc):  # an outage, not a bug: SPEC §4's 503 + Retry-After, never a 500
        logger.warning("database_unavailable", error=repr(exc))
        return ServiceUnavailableError(DATABASE_UNAVAILABLE, retry_after=RETRY_AFTER_SECONDS)
    if _sqlstate(exc) in _UNSTORABLE_TEXT:
        return BadRequestError(_NUL_DETAIL)
    if isinstance(exc, UnicodeDecodeError) and _raised_in(exc, _BODY_DECODERS):
        return not_utf8(exc)
    if isinstance(exc, RecursionError) and _raised_in(exc, _BODY_DECODERS):
        return BadRequestError(_TOO_DEEP_DETAIL)
    if isinstance(exc, repository.NotFoundError):
        return NotFoundError("The requested resource was not found.")
    if isinstance(exc, repository.DuplicateKeyError):
        return ConflictError("A record matching the supplied data already exists.")
    if isinstance(exc, repository.IntegrityError):  # its own detail may quote the SQL: never shown
        return ConflictError("The request conflicts with the stored data.")
    return None


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of the database error that caused ``exc`` (advanced-alchemy wraps it), if any."""
    current: BaseException | None = exc
    for _ in range(4):
        if current is None:
            return None
        if isinstance(current, DBAPIError):
            orig = current.orig
            state = getattr(orig, "sqlstate", None) or getattr(
                getattr(orig, "__cause__", None), "sqlstate", None
            )
            return state if isinstance(state, str) else None
        current = current.__cause__
    return None


def _raised_in(exc: BaseException, codes: frozenset[CodeType]) -> bool:
    traceback = exc.__traceback__
    while traceback is not None:
        if traceback.tb_frame.f_code in codes:
            return True
        traceback = traceback.tb_next
    return False


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status_code = exc.status_code
    headers = dict(exc.headers or {})
    if status_code == 429 and "Retry-After" not in headers:
        # The rate limiter says when its window resets; retrying sooner is another 429.
        reset = next((v for k, v in headers.items() if k.lower() == "ratelimit-reset"), None)
        headers["Retry-After"] = reset if reset and reset.isdigit() and int(reset) > 0 else "1"
    detail = _sentence(request, exc, headers)
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationException) and exc.extra:
        status_code, detail, errors = _validation_error(exc.extra, status_code, detail)
        if errors:
            extra["errors"] = errors
    return Response(
        _body(detail, request, **extra), status_code=status_code, headers=headers, media_type=MediaType.JSON
    )


def _sentence(request: Request[Any, Any, Any], exc: HTTPException, headers: dict[str, str]) -> str:
    """``exc.detail``, unless it is Litestar's bare status phrase ("Not Found"): then a sentence."""
    detail = str(exc.detail or "")
    try:
        phrase = HTTPStatus(exc.status_code).phrase
    except ValueError:
        phrase = ""
    if detail and detail != phrase:
        return detail
    method, path = request.method, request.scope["path"]
    if exc.status_code == 404:
        return f"No resource matches {method} {path}."
    if exc.status_code == 405:
        return f"Method {method} is not allowed on {path}."
    if exc.status_code == 429:
        return f"Too many requests: retry after {headers['Retry-After']} seconds."
    return f"The request failed ({exc.status_code} {phrase or 'error'})."


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
