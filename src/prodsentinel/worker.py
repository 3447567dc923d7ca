"""The one SAQ setup of the service: which queue, which tasks and crons, and the worker context.

The queue is Redis when ``REDIS_URL`` is set and the (embedded or configured) PostgreSQL otherwise.
``prodsentinel run`` runs the worker inside the API process when in-process workers are on (the
embedded default); ``prodsentinel workers run`` runs workers alone (litestar-saq's CLI).
"""

from __future__ import annotations

from typing import Any

from litestar_saq import CronJob, QueueConfig, SAQConfig
from saq.types import Context
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from prodsentinel.alerts import tasks as alert_tasks
from prodsentinel.auth.guards import requires_scope
from prodsentinel.auth.scopes import Scope
from prodsentinel.incidents import tasks as incident_tasks
from prodsentinel.lib import events, jobs
from prodsentinel.lib.database import engine_connect_args, libpq_url, resolve_direct_url
from prodsentinel.notifications import tasks as notification_tasks
from prodsentinel.settings import Settings
from prodsentinel.signals import tasks as signal_tasks
from prodsentinel.system import tracing

__all__ = ("TASKS", "cron_jobs", "saq_config")

#: Each domain's ``tasks.py`` exports ``TASKS`` and ``cron_jobs(settings)``.
_DOMAIN_TASKS = (signal_tasks, incident_tasks, alert_tasks, notification_tasks)
TASKS: list[Any] = [task for module in _DOMAIN_TASKS for task in module.TASKS]


def cron_jobs(settings: Settings) -> list[CronJob]:
    """Every domain's crons (some, like alert evaluation, take their period from settings)."""
    return [cron for module in _DOMAIN_TASKS for cron in module.cron_jobs(settings)]


def saq_config(settings: Settings, database_url: str) -> SAQConfig:
    # SAQ's PostgreSQL queue LISTENs and holds session advisory locks: never through a transaction pooler.
    direct_dsn = libpq_url(resolve_direct_url(settings)) if settings.database_url else libpq_url(database_url)
    dsn = settings.redis_url or direct_dsn

    async def startup(ctx: Context) -> None:
        # litestar-saq never connects the queue of an in-process worker (STACK_FACTS §4); connect is
        # idempotent, so doing it for separate processes too is harmless.
        await ctx["worker"].queue.connect()
        jobs.bind_queue(ctx["worker"].queue)
        engine = create_async_engine(
            database_url,
            pool_size=5,
            max_overflow=5,
            connect_args=engine_connect_args(settings.database_pooler),
        )
        ctx["engine"] = engine  # type: ignore[typeddict-unknown-key]
        ctx["session_maker"] = async_sessionmaker(engine, expire_on_commit=False)  # type: ignore[typeddict-unknown-key]
        ctx["settings"] = settings  # type: ignore[typeddict-unknown-key]
        # Workers have no Litestar app: publish live events through the same channels backend class.
        ctx["event_publisher"] = await events.start_publisher(settings, direct_dsn)  # type: ignore[typeddict-unknown-key]
        tracing.instrument_worker(settings)

    async def shutdown(ctx: Context) -> None:
        engine: AsyncEngine | None = ctx.get("engine")  # type: ignore[assignment]
        if engine is not None:
            await engine.dispose()
        publisher: events.EventPublisher | None = ctx.get("event_publisher")  # type: ignore[assignment]
        if publisher is not None:
            await events.stop_publisher(publisher)

    return SAQConfig(
        web_enabled=True,
        web_path="/saq",
        web_guards=[requires_scope(Scope.ADMIN)],
        use_server_lifespan=False,
        enable_otel=tracing.tracer_provider(settings) is not None,  # job spans (see system/tracing.py)
        queue_configs=[
            QueueConfig(
                dsn=dsn,
                name=settings.queue_name,
                tasks=TASKS,
                scheduled_tasks=cron_jobs(settings),
                startup=startup,
                shutdown=shutdown,
                before_process=[tracing.attach_job_span],
                after_process=[tracing.detach_job_span],
                concurrency=settings.worker_concurrency,
                separate_process=not settings.run_inprocess_workers,
            )
        ],
    )
