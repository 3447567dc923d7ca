"""``prodsentinel workers run`` (litestar-saq's CLI) starts a worker process that runs the crons."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.system.models import SchedulerTick
from tests.system.servers import ROOT


@pytest.mark.parametrize("queue", ["postgres", "redis"])
async def test_workers_run_ticks_the_dispatch_loop_and_stops_on_sigterm(
    queue: str,
    database_url: str,
    request: pytest.FixtureRequest,
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    async with session_maker() as session, session.begin():
        started = await session.scalar(select(func.now()))
        # SAQ's PostgreSQL cron keys (cron:<qualname>) are global across queues (STACK_FACTS §3): a cron
        # left queued by an earlier test's server (no worker runs between tests) would keep this worker
        # from ever scheduling its dispatch cron.
        if await session.scalar(text("SELECT to_regclass('saq_jobs') IS NOT NULL")):
            await session.execute(text("DELETE FROM saq_jobs WHERE key LIKE 'cron:%'"))
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PRODSENTINEL_", "REDIS_URL"))}
    queue_name = f"workers-cli-{uuid.uuid4().hex[:8]}"
    env = {
        **inherited,
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        "PRODSENTINEL_QUEUE_NAME": queue_name,
    }
    if queue == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "prodsentinel", "workers", "run",
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    ticked = None
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while ticked is None:  # the dispatch cron runs every 2 s: poll its tick row
            assert worker.returncode is None, "the worker exited"
            assert asyncio.get_running_loop().time() < deadline, "no dispatch tick within 30 s"
            await asyncio.sleep(0.5)
            async with session_maker() as session:
                ticked = await session.scalar(
                    select(SchedulerTick.last_tick_at).where(
                        SchedulerTick.loop == "dispatch", SchedulerTick.last_tick_at > started
                    )
                )
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            output, _ = await asyncio.wait_for(worker.communicate(), timeout=30)
        except TimeoutError:
            os.killpg(worker.pid, signal.SIGKILL)
            output, _ = await worker.communicate()
        print(output.decode())  # shown when the test fails
        if queue == "postgres":  # and leave none of its own behind
            async with session_maker() as session, session.begin():
                await session.execute(
                    text("DELETE FROM saq_jobs WHERE queue = :queue AND key LIKE 'cron:%'"),
                    {"queue": queue_name},
                )
    assert b"Traceback" not in output, output.decode()
