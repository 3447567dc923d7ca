"""Plugin and middleware instances built from settings; ``app.py`` only lists them."""

from __future__ import annotations

from typing import Any

from advanced_alchemy.extensions.litestar import SQLAlchemyAsyncConfig, SQLAlchemyPlugin
from litestar import Request
from litestar.config.app import AppConfig
from litestar.config.cors import CORSConfig
from litestar.middleware.rate_limit import RateLimitConfig, get_remote_address
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme, Tag
from litestar.plugins import InitPluginProtocol
from litestar.plugins.structlog import StructlogPlugin
from litestar.stores.base import Store
from litestar.stores.memory import MemoryStore
from litestar.stores.redis import RedisStore
from litestar_granian import GranianPlugin
from litestar_saq import SAQPlugin
from redis.asyncio import Redis

from prodsentinel import __version__
from prodsentinel.auth.login_limits import LOGIN_STORE
from prodsentinel.auth.scopes import Principal
from prodsentinel.lib.observability import structlog_config
from prodsentinel.lib.operation_ids import operation_id
from prodsentinel.lib.stores import FallbackStore
from prodsentinel.settings import Settings
from prodsentinel.worker import saq_config

__all__ = (
    "SeparateWorkerHooksPlugin",
    "cors_config",
    "granian_plugin",
    "openapi_config",
    "rate_limit_config",
    "redis_client",
    "saq_plugin",
    "sqlalchemy_plugin",
    "stores",
    "structlog_plugin",
)

#: Seconds to open a connection to Redis before the call fails (and the caller degrades).
REDIS_CONNECT_TIMEOUT_SECONDS = 2

TAGS = [
    Tag(name="ingest", description="Write logs, spans and metrics (scope ingest)."),
    Tag(name="logs", description="Query stored logs."),
    Tag(name="spans", description="Query stored spans and traces."),
    Tag(name="metrics", description="Metric series and anomalies."),
    Tag(name="services", description="Services seen in the telemetry."),
    Tag(name="incidents", description="Incidents grouped from errors."),
    Tag(name="alerts", description="Alert policies, alerts, silences and audit."),
    Tag(name="notifications", description="Channels, the outbox and delivery attempts."),
    Tag(name="events", description="Server-sent events for the frontend."),
    Tag(name="keys", description="API keys (scope admin)."),
    Tag(name="health", description="Health and readiness (public)."),
]


def sqlalchemy_plugin(config: SQLAlchemyAsyncConfig) -> SQLAlchemyPlugin:
    return SQLAlchemyPlugin(config=config)


class SeparateWorkerHooksPlugin(InitPluginProtocol):
    """Drop litestar-saq's worker start-up hooks from an API process whose workers run elsewhere.

    litestar-saq appends every worker's ``on_app_startup``/``on_app_shutdown`` to the app even when the
    worker is ``separate_process``: the API process then started a HeartbeatManager thread that no job
    uses (it logged "thread crashed" at every stop) and bound the worker's id into the start-up context,
    so the lines of tasks started there (the ingest flush loops) claimed to come from a worker. The
    worker process itself (``prodsentinel workers run``) never runs these hooks, so nothing is lost.
    A separate plugin listed after SAQ's, not a subclass of it: litestar-saq's CLI finds its plugin by
    exact type (``app.plugins.get(SAQPlugin)``).
    """

    def __init__(self, saq: SAQPlugin) -> None:
        self._saq = saq

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        for worker in self._saq.get_workers().values():
            if worker.separate_process:
                app_config.on_startup.remove(worker.on_app_startup)
                app_config.on_shutdown.remove(worker.on_app_shutdown)
        return app_config


def saq_plugin(settings: Settings, database_url: str) -> SAQPlugin:
    return SAQPlugin(saq_config(settings, database_url))


def structlog_plugin(settings: Settings) -> StructlogPlugin:
    return StructlogPlugin(structlog_config(settings))


def granian_plugin() -> GranianPlugin:
    return GranianPlugin()


def redis_client(settings: Settings) -> Redis | None:
    """The app's Redis client (rate limits, SSE fan-out, /health).

    A bounded connect timeout: an unreachable (not refusing) Redis must not hold requests for the OS's
    TCP timeout. No read timeout: the SSE subscriber blocks on reads by design.
    """
    if not settings.redis_url:
        return None
    return Redis.from_url(settings.redis_url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS)


def stores(redis: Redis | None) -> dict[str, Store]:
    """Rate-limit state lives in Redis when configured, so limits hold across instances.

    While Redis is unreachable the counters fall back to this process's memory (``lib.stores``):
    queries, acks and admin calls keep working with per-instance limits instead of failing.
    The failed-login counters (``auth.login_limits``) live beside them, in the ``login`` store.
    """
    if redis is None:
        return {"rate_limit": MemoryStore(), LOGIN_STORE: MemoryStore()}
    return {
        name: FallbackStore(RedisStore(redis, namespace=f"prodsentinel:{name}"), MemoryStore(), name=name)
        for name in ("rate_limit", LOGIN_STORE)
    }


def _rate_limit_identity(request: Request[Any, Any, Any]) -> str:
    """Per API key (SPEC §2) or person; unauthenticated requests fall back to the client address."""
    principal = request.scope.get("user")
    if isinstance(principal, Principal):
        return f"user:{principal.user_id}" if principal.user_id else f"key:{principal.key_id}"
    return get_remote_address(request)


def rate_limit_config(settings: Settings) -> RateLimitConfig:
    """Non-ingest endpoints only: ingest is governed by backpressure (429/503 + Retry-After)."""
    return RateLimitConfig(
        rate_limit=settings.rate_limit_rule,
        exclude=["^/api/v1/ingest", "^/health", "^/schema"],
        exclude_opt_key="no_rate_limit",
        identifier_for_request=_rate_limit_identity,
        store="rate_limit",
    )


def cors_config(settings: Settings) -> CORSConfig | None:
    """Browsers on ``PRODSENTINEL_CORS_ORIGINS`` may call the API with the session cookie (credentials)."""
    if not settings.cors_origins:
        return None
    return CORSConfig(
        allow_origins=list(settings.cors_origins),
        allow_credentials=True,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Content-Type", "Authorization", "X-API-Key", "X-CSRF-Token", "X-Request-ID"],
        expose_headers=["Retry-After", "X-Request-ID"],
        max_age=600,
    )


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="ProdSentinel",
        version=__version__,
        description=(
            "Telemetry ingest, incidents and alerting. Authenticate with an API key (`X-API-Key` or "
            "`Authorization: Bearer ps_…`), or as a person: `POST /api/v1/auth/login` answers a bearer token "
            "(`Authorization: Bearer <access_token>`) and sets the `prodsentinel_session` cookie; changes "
            "authenticated by the cookie also send `X-CSRF-Token: <csrf_token>`."
        ),
        path="/schema",
        tags=TAGS,
        components=Components(
            security_schemes={
                "ApiKey": SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header"),
                "Bearer": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="An API key (ps_…) or the access_token of POST /api/v1/auth/login.",
                ),
                "SessionCookie": SecurityScheme(
                    type="apiKey",
                    name="prodsentinel_session",
                    security_scheme_in="cookie",
                    description="Set by POST /api/v1/auth/login; changes also need the X-CSRF-Token header.",
                ),
            }
        ),
        security=[{"ApiKey": []}, {"Bearer": []}, {"SessionCookie": []}],
        render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
        operation_id_creator=operation_id,
    )
