"""Shared by the grouping and escalation tests: a real SAQ worker with the routing crons, alert events.

The worker runs the notification tasks (dispatch) plus ``group_flush_cron`` and ``escalation_cron``
every second, as the app's worker does; tests wait on real signals (receiver requests, rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from saq import CronJob, Queue, Worker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib.database import session_scope
from prodsentinel.notifications import outbox as notification_outbox
from prodsentinel.notifications import tasks
from prodsentinel.settings import Settings
from tests import workers
from tests.system.servers import ROOT

SessionMaker = async_sessionmaker[AsyncSession]


@contextlib.asynccontextmanager
async def routing_worker(
    queue: Queue, session_maker: SessionMaker, settings: Settings
) -> AsyncIterator[Worker]:
    """A real worker: dispatch on enqueue, group flush and escalation crons every second."""

    async def startup(ctx: Any) -> None:
        ctx["session_maker"] = session_maker
        ctx["settings"] = settings

    worker = Worker(
        queue,
        functions=[*tasks.TASKS, workers.worker_probe],
        cron_jobs=[
            CronJob(tasks.group_flush_cron, cron="* * * * * *", unique=True),
            CronJob(tasks.escalation_cron, cron="* * * * * *", unique=True),
            CronJob(tasks.dispatch_due_cron, cron="* * * * * *", unique=True),
        ],
        startup=startup,
        concurrency=4,
    )
    async with workers.running_worker(queue, worker=worker) as running:
        yield running


def alert(alert_id: UUID, name: str, **labels: str) -> dict[str, Any]:
    """An alert event's payload as the evaluator writes it."""
    return {
        "alert_id": str(alert_id),
        "policy_id": str(uuid.uuid4()),
        "policy_name": name,
        "labels": {"alertname": name, **labels},
        "value": 12.0,
        "operator": ">",
        "threshold": 5.0,
    }


async def emit(
    session_maker: SessionMaker,
    project_id: UUID,
    event_type: str,
    *payloads: dict[str, Any],
    severity: str = "high",
) -> None:
    """Events through the real outbox write side, one committed transaction."""
    async with session_scope(session_maker) as session:
        await notification_outbox.add_events(
            session,
            [
                notification_outbox.OutboxEvent(
                    project_id=project_id, event_type=event_type, severity=severity, payload=payload
                )
                for payload in payloads
            ],
        )


@contextlib.asynccontextmanager
async def worker_process(database_url: str, queue_name: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``prodsentinel workers run`` in a process of its own session (so a test can SIGKILL it); it is
    stopped (SIGKILL of its group) when the block ends, and its queue's cron rows are removed."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PRODSENTINEL_", "REDIS_URL"))}
    env = {
        **inherited,
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        "PRODSENTINEL_QUEUE_NAME": queue_name,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "prodsentinel", "workers", "run",
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def forget_queue_crons(session_maker: SessionMaker, queue_name: str | None = None) -> None:
    """SAQ's PostgreSQL cron keys are global (STACK_FACTS §3): drop cron rows so a new worker schedules."""
    async with session_maker() as session, session.begin():
        if await session.scalar(text("SELECT to_regclass('saq_jobs') IS NOT NULL")):
            if queue_name is None:
                await session.execute(text("DELETE FROM saq_jobs WHERE key LIKE 'cron:%'"))
            else:
                await session.execute(
                    text("DELETE FROM saq_jobs WHERE queue = :queue AND key LIKE 'cron:%'"),
                    {"queue": queue_name},
                )
