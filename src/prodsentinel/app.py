"""The application factory: the one place listing plugins, controllers, middleware and handlers."""

from __future__ import annotations

import asyncio

import structlog
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.types import LifeSpanReceive, LifeSpanScope, LifeSpanSend, Receive, Scope, Send
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from prodsentinel import plugins
from prodsentinel.alerts.controllers import alerts_router
from prodsentinel.alerts.policy_file import load_policies_file
from prodsentinel.alerts.routing_file import load_routing_file
from prodsentinel.auth.cli import KeysCLIPlugin
from prodsentinel.auth.controllers import ApiKeyController
from prodsentinel.auth.guards import PUBLIC_PATHS, provide_principal
from prodsentinel.auth.models import ApiKey
from prodsentinel.auth.scopes import Principal
from prodsentinel.auth.sessions import JWT_AUTH_STATE_KEY, jwt_auth_config
from prodsentinel.auth.user_controllers import SessionController, UserController
from prodsentinel.incidents.controllers import AnomalyController, IncidentController, ProblemController
from prodsentinel.ingest.controllers import IngestController
from prodsentinel.ingest.fast_path import IngestFastPath
from prodsentinel.ingest.otlp_controllers import OtlpController
from prodsentinel.ingest.plugin import IngestPlugin
from prodsentinel.lib import jobs
from prodsentinel.lib.database import (
    SESSION_MAKER_STATE_KEY,
    alchemy_config,
    migrate,
    resolve_database_url,
    resolve_direct_url,
)
from prodsentinel.lib.errors import exception_to_response
from prodsentinel.lib.lifeline import watch_supervisor
from prodsentinel.lib.observability import RequestContextMiddleware, add_response_headers
from prodsentinel.lib.openapi import document_error_responses
from prodsentinel.notifications.controllers import notifications_router
from prodsentinel.notifications.plugin import NotificationsPlugin
from prodsentinel.settings import Settings, get_settings
from prodsentinel.signals.controllers import (
    LogController,
    MetricController,
    ServiceController,
    SpanController,
)
from prodsentinel.system.cli import DemoCLIPlugin
from prodsentinel.system.controllers import HealthController
from prodsentinel.system.plugin import SystemPlugin

__all__ = ("ProdSentinel", "create_app")

logger = structlog.get_logger("prodsentinel")


class ProdSentinel(Litestar):
    """The Litestar app, with JSON ingest's plain case answered before Litestar's request cycle.

    ``ingest.fast_path`` says why and what it keeps; whatever it does not answer, it leaves untouched.
    """

    ingest_fast_path: IngestFastPath | None = None

    async def __call__(
        self, scope: Scope | LifeSpanScope, receive: Receive | LifeSpanReceive, send: Send | LifeSpanSend
    ) -> None:
        fast_path = self.ingest_fast_path
        if (
            fast_path is not None
            and scope["type"] == ScopeType.HTTP
            and await fast_path(scope, receive, send)  # type: ignore[arg-type]
        ):
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> ProdSentinel:
    settings = settings or get_settings()
    watch_supervisor()  # a server process of `prodsentinel run` stops when `run` dies (lib/lifeline.py)
    database_url = resolve_database_url(settings)
    # Behind PgBouncer (transaction pooling) what needs a session of its own connects directly.
    direct_url = resolve_direct_url(settings)
    db_config = alchemy_config(database_url, pooler=settings.database_pooler)
    redis = plugins.redis_client(settings)
    saq = plugins.saq_plugin(settings, database_url)
    system = SystemPlugin(settings, direct_url, redis)
    jwt_auth = jwt_auth_config(settings)

    async def on_startup(app: Litestar) -> None:
        if settings.run_auto_migrate:
            migrations = db_config if direct_url == database_url else alchemy_config(direct_url)
            await asyncio.to_thread(migrate, migrations)
        await load_policies_file(app.state[SESSION_MAKER_STATE_KEY], settings)
        await load_routing_file(app.state[SESSION_MAKER_STATE_KEY], settings)
        queue = saq.get_queue(settings.queue_name)
        await queue.connect()
        jobs.bind_queue(queue)
        await _hint_first_key(app)

    async def on_shutdown(app: Litestar) -> None:
        jobs.bind_queue(None)
        if not settings.run_inprocess_workers:  # an in-process worker still uses the queue while it stops
            await saq.get_queue(settings.queue_name).disconnect()  # else the pool's connections leak
        if redis is not None:
            await redis.aclose()

    app = ProdSentinel(
        route_handlers=[
            HealthController,
            ApiKeyController,
            SessionController,
            UserController,
            IngestController,
            OtlpController,
            LogController,
            SpanController,
            MetricController,
            ServiceController,
            IncidentController,
            ProblemController,
            AnomalyController,
            alerts_router,
            notifications_router,
        ],
        plugins=[
            plugins.sqlalchemy_plugin(db_config),
            saq,
            plugins.SeparateWorkerHooksPlugin(saq),
            plugins.structlog_plugin(settings),
            plugins.granian_plugin(),
            KeysCLIPlugin(),
            IngestPlugin(settings, database_url),
            DemoCLIPlugin(),
            *system.plugins(),
            NotificationsPlugin(settings),
        ],
        middleware=[
            RequestContextMiddleware(),
            jwt_auth.middleware,  # API key, session token or cookie (auth.sessions)
            plugins.rate_limit_config(settings).middleware,
        ],
        dependencies={"principal": Provide(provide_principal)},
        signature_namespace={"Principal": Principal},
        exception_handlers={Exception: exception_to_response},
        before_send=[add_response_headers],
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        stores=plugins.stores(redis),
        openapi_config=plugins.openapi_config(),
        cors_config=plugins.cors_config(settings),
        state=State(
            {
                "settings": settings,
                "alchemy_config": db_config,
                SESSION_MAKER_STATE_KEY: db_config.create_session_maker(),
                "redis": redis,
                JWT_AUTH_STATE_KEY: jwt_auth,
            }
        ),
        debug=settings.debug,
    )
    document_error_responses(app, PUBLIC_PATHS)
    # Tracing wants Litestar's OpenTelemetry middleware to span every request, ingest included.
    app.ingest_fast_path = IngestFastPath(app, enabled=system.tracer_provider is None)
    return app


async def _hint_first_key(app: Litestar) -> None:
    """Tell a new operator how to get in (and an unmigrated database how to get ready)."""
    try:
        async with app.state[SESSION_MAKER_STATE_KEY]() as session:
            key_count = await session.scalar(select(func.count()).select_from(ApiKey))
    except DBAPIError:
        logger.warning("database_not_ready", hint="apply migrations with: prodsentinel database upgrade")
        return
    if not key_count:
        logger.warning(
            "no_api_keys",
            hint="create one with: uv run prodsentinel keys create --name me --scopes admin,ingest",
        )
