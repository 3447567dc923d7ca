"""``prodsentinel workers run`` (litestar-saq's CLI) starts a worker process that runs the crons."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.system.models import SchedulerTick
from tests.system.servers import ROOT


@pytest.mark.parametrize("queue", ["postgres", "redis"])
async def test_workers_run_ticks_the_dispatch_loop_and_stops_on_sigterm(
    queue: str, database_url: str, redis_url: str | None, session_maker: async_sessionmaker[AsyncSession]
) -> None:
    if queue == "redis" and redis_url is None:
        pytest.skip("Redis is not reachable")
    async with session_maker() as session:
        started = await session.scalar(select(func.now()))
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PRODSENTINEL_", "REDIS_URL"))}
    env = {**inherited, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"}
    if queue == "redis":
        env["REDIS_URL"] = str(redis_url)
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "prodsentinel", "workers", "run",
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    ticked = None
    try:
        for _ in range(60):  # the dispatch cron runs every 2 s
            await asyncio.sleep(0.5)
            assert worker.returncode is None, "the worker exited"
            async with session_maker() as session:
                ticked = await session.scalar(
                    select(SchedulerTick.last_tick_at).where(
                        SchedulerTick.loop == "dispatch", SchedulerTick.last_tick_at > started
                    )
                )
            if ticked is not None:
                break
        assert ticked is not None, "no dispatch tick within 30 s"
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            output, _ = await asyncio.wait_for(worker.communicate(), timeout=30)
        except TimeoutError:
            os.killpg(worker.pid, signal.SIGKILL)
            output, _ = await worker.communicate()
        print(output.decode())  # shown when the test fails
    assert b"Traceback" not in output, output.decode()
