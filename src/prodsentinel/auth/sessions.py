"""People's sessions on Litestar's JWT security: token, cookie, CSRF and the one authentication middleware.

Why one middleware for keys and sessions: every endpoint takes an API key *or* a person's token or
cookie (SPEC §15), and Litestar runs one authentication middleware per route. It is Litestar's
``JWTCookieAuthenticationMiddleware``, extended to try an API key first (``X-API-Key``, a bearer that
looks like ``ps_…``, or the SAQ monitor's Basic password), so keys keep working unchanged.

A token only names a session row (``sub``); :mod:`auth.lookup` checks that row on every request, so
logout is effective on the next request on every instance. The JWT secret comes from
``PRODSENTINEL_JWT_SECRET`` or, unset, from the database (generated once, shared by every instance),
read on first use so an instance can start before migrations are applied.

CSRF: a browser sends the cookie by itself, so a change (any method but GET/HEAD/OPTIONS) authenticated
by the cookie must also carry ``X-CSRF-Token``, which login returns in its body and signs into the token:
another site can make the browser send the cookie but cannot read the value.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from litestar import Litestar, Response
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.enums import ScopeType
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.middleware import AuthenticationResult
from litestar.security.jwt import JWTCookieAuth, JWTCookieAuthenticationMiddleware, Token

from prodsentinel.auth.guards import MISSING_CREDENTIALS, PUBLIC_PATHS, extract_key, unauthorized
from prodsentinel.auth.lookup import KEY_LOOKUP_STATE_KEY, SESSION_LOOKUP_STATE_KEY, KeyLookup, SessionLookup
from prodsentinel.auth.scopes import Principal
from prodsentinel.auth.user_repositories import ServerSecretQueries
from prodsentinel.auth.user_schemas import LoginOut
from prodsentinel.auth.users import SignIn
from prodsentinel.lib.database import SESSION_MAKER_STATE_KEY, session_scope
from prodsentinel.settings import Settings

__all__ = (
    "COOKIE_NAME",
    "CSRF_HEADER",
    "JWT_AUTH_STATE_KEY",
    "CredentialsAuthenticationMiddleware",
    "jwt_auth_config",
    "login_response",
    "logout_response",
)

COOKIE_NAME = "prodsentinel_session"
CSRF_HEADER = "X-CSRF-Token"
JWT_AUTH_STATE_KEY = "jwt_auth"
_SECRET_STATE_KEY = "jwt_secret"
_SECRET_LOCK_STATE_KEY = "jwt_secret_lock"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Placeholder until the real secret is known (never used to sign: :func:`jwt_secret` runs first).
_UNSET = "unset-" + "0" * 32


def jwt_auth_config(settings: Settings) -> JWTCookieAuth[Principal, Token]:
    """Litestar's JWT cookie security, configured for ProdSentinel's sessions and routes."""
    return JWTCookieAuth[Principal, Token](
        retrieve_user_handler=_session_principal,
        token_secret=settings.jwt_secret or _UNSET,
        authentication_middleware_class=CredentialsAuthenticationMiddleware,
        exclude=PUBLIC_PATHS,
        exclude_opt_key="exclude_from_auth",
        exclude_http_methods=["OPTIONS"],
        key=COOKIE_NAME,
        samesite="lax",
        secure=settings.cookie_secure,
        default_token_expiration=timedelta(hours=settings.session_hours),
        openapi_security_scheme_name="SessionCookie",
        description="The session cookie set by POST /api/v1/auth/login (browsers send it by themselves).",
    )


async def jwt_secret(app: Litestar) -> str:
    """The signing secret: the setting, else the database's (created by the first instance asking)."""
    cached = app.state.get(_SECRET_STATE_KEY)
    if isinstance(cached, str):
        return cached
    settings: Settings = app.state["settings"]
    if settings.jwt_secret is not None:
        secret = settings.jwt_secret
    else:
        lock: asyncio.Lock = app.state.setdefault(_SECRET_LOCK_STATE_KEY, asyncio.Lock())
        async with lock:
            if isinstance(cached := app.state.get(_SECRET_STATE_KEY), str):
                return cached
            async with session_scope(app.state[SESSION_MAKER_STATE_KEY]) as session:
                secret = await ServerSecretQueries(session).get_or_create("jwt", secrets.token_urlsafe(48))
    app.state[_SECRET_STATE_KEY] = secret
    app.state[JWT_AUTH_STATE_KEY].token_secret = secret
    return secret


async def _session_principal(
    token: Token, connection: ASGIConnection[Any, Any, Any, Any]
) -> Principal | None:
    """``retrieve_user_handler``: the open session the token names, with its person's current role."""
    try:
        session_id = UUID(token.sub)
    except ValueError:
        return None
    lookup: SessionLookup = connection.app.state[SESSION_LOOKUP_STATE_KEY]
    return await lookup(session_id)


class CredentialsAuthenticationMiddleware(JWTCookieAuthenticationMiddleware):
    """An API key, else a session token (``Authorization: Bearer``) or the session cookie."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        raw_key = extract_key(connection)
        if raw_key is not None:
            # The coalesced raw-asyncpg lookup (auth.lookup), registered at start on the ingest pool.
            lookup: KeyLookup = connection.app.state[KEY_LOOKUP_STATE_KEY]
            principal = await lookup(raw_key)
            if principal is None:
                raise unauthorized(connection, "Invalid or revoked API key.")
            return AuthenticationResult(user=principal, auth=principal)
        scheme, _, credentials = connection.headers.get("authorization", "").partition(" ")
        header_token = credentials.strip() if scheme.lower() == "bearer" else ""
        encoded = header_token or connection.cookies.get(self.auth_cookie_key, "")
        if not encoded:
            raise unauthorized(connection, MISSING_CREDENTIALS)
        self.token_secret = await jwt_secret(connection.app)
        try:
            result = await self.authenticate_token(encoded_token=encoded, connection=connection)
        except NotAuthorizedException:
            raise unauthorized(connection, "Invalid, expired or ended session: log in again.") from None
        if not header_token:
            _check_csrf(connection, result.auth)
        return result


def _check_csrf(connection: ASGIConnection[Any, Any, Any, Any], token: Token) -> None:
    """Cookie-authenticated changes must echo the token's CSRF value in ``X-CSRF-Token`` (403 if not).

    A WebSocket cannot send that header; a cookie-authenticated one must come from this host or an
    origin of ``PRODSENTINEL_CORS_ORIGINS`` instead (another site's page could open it otherwise).
    """
    if connection.scope["type"] == ScopeType.WEBSOCKET:
        _check_origin(connection)
        return
    method = connection.scope.get("method")
    if method is None or method in _SAFE_METHODS:
        return
    expected = str(token.extras.get("csrf", ""))
    sent = connection.headers.get(CSRF_HEADER.lower(), "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise PermissionDeniedException(
            f"Missing or wrong {CSRF_HEADER} header: a change authenticated by the session cookie must send "
            "the csrf_token that login returned."
        )


def _check_origin(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    origin = connection.headers.get("origin")
    if not origin:
        return  # not a browser
    settings: Settings = connection.app.state["settings"]
    if (
        urlsplit(origin).netloc == connection.headers.get("host")
        or origin.rstrip("/") in settings.cors_origins
    ):
        return
    raise PermissionDeniedException(
        f"A WebSocket from {origin} authenticated by the session cookie: list the origin in "
        "PRODSENTINEL_CORS_ORIGINS."
    )


async def login_response(app: Litestar, sign_in: SignIn) -> Response[LoginOut]:
    """The login answer: the token in the body and in an HttpOnly, SameSite=Lax cookie."""
    await jwt_secret(app)
    jwt_auth: JWTCookieAuth[Principal, Token] = app.state[JWT_AUTH_STATE_KEY]
    lifetime = timedelta(seconds=sign_in.expires_in)
    csrf = secrets.token_urlsafe(24)
    encoded = jwt_auth.create_token(
        identifier=str(sign_in.session_id),
        token_expiration=lifetime,
        token_unique_jwt_id=str(sign_in.session_id),
        token_extras={"csrf": csrf, "email": sign_in.email},
    )
    body = LoginOut(
        access_token=encoded,
        token_type="bearer",
        expires_in=sign_in.expires_in,
        project=sign_in.project,
        role=sign_in.role,  # type: ignore[arg-type]  # a stored role is one of RoleName
        csrf_token=csrf,
    )
    cookie = Cookie(
        key=jwt_auth.key,
        value=encoded,
        path="/",
        httponly=True,
        samesite=jwt_auth.samesite,
        secure=jwt_auth.secure,
        max_age=sign_in.expires_in,
    )
    return Response(body, cookies=[cookie], headers={"Cache-Control": "no-store"})


def logout_response(app: Litestar, body: Any) -> Response[Any]:
    """Clear the cookie in the browser (the server-side session is already ended)."""
    jwt_auth: JWTCookieAuth[Principal, Token] = app.state[JWT_AUTH_STATE_KEY]
    cookie = Cookie(
        key=jwt_auth.key, value="", path="/", httponly=True, samesite=jwt_auth.samesite, max_age=0
    )
    return Response(body, cookies=[cookie])
