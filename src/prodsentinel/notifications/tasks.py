"""SAQ jobs of this domain. Each task opens no session of its own: the dispatcher needs two short
transactions per batch (claim, then results) around the HTTP calls, so it takes the session maker.

- ``dispatch_due``: enqueued once a transaction that wrote outbox items has committed
  (``notifications.outbox.enqueue_dispatch``, which every outbox write registers on its session); runs
  ``dispatcher.run_dispatch``, which loops until nothing is due (bounded).
- ``dispatch_due_cron``: the same every 2 seconds, the safety net for lost or deduplicated enqueues,
  retries whose delay has passed and claims of crashed workers. Its own name because PostgreSQL cron
  job keys (``cron:<qualname>``) are global.
- ``group_flush_cron`` and ``escalation_cron`` (every second, under a lease): flush due notification
  groups, send due escalation steps (SPEC §13).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar_saq import CronJob

from prodsentinel.lib.jobs import settings_of
from prodsentinel.notifications.dispatcher import run_dispatch
from prodsentinel.notifications.escalation_pass import run_escalation_pass
from prodsentinel.notifications.group_flush import run_group_pass
from prodsentinel.notifications.outbox import DISPATCH_JOB_TIMEOUT
from prodsentinel.settings import Settings
from prodsentinel.system.services import record_loop_tick

__all__ = ("TASKS", "cron_jobs", "dispatch_due", "dispatch_due_cron", "escalation_cron", "group_flush_cron")


async def dispatch_due(ctx: Any) -> dict[str, int]:
    """Deliver every due outbox item (all projects), batch after batch, for up to 30 s."""
    result = await run_dispatch(ctx["session_maker"], settings_of(ctx))
    return msgspec.structs.asdict(result)


async def dispatch_due_cron(ctx: Any) -> dict[str, int]:
    """The cron twin of :func:`dispatch_due` (a distinct qualname gives a distinct cron job key).

    It records the ``dispatch`` loop's tick after a run that did not raise, so a dispatcher that keeps
    failing shows as stalled (``prodsentinel_scheduler_last_tick_timestamp_seconds{loop="dispatch"}``).
    """
    result = await dispatch_due(ctx)
    await record_loop_tick(ctx, "dispatch")
    return result


async def group_flush_cron(ctx: Any) -> dict[str, Any]:
    """Flush due notification groups (SPEC §13; ``group_flush.run_group_pass``)."""
    result = await run_group_pass(ctx["session_maker"])
    await record_loop_tick(ctx, "group_flush")
    return msgspec.structs.asdict(result)


async def escalation_cron(ctx: Any) -> dict[str, Any]:
    """Send due escalation steps (SPEC §13; ``escalation_pass.run_escalation_pass``)."""
    result = await run_escalation_pass(ctx["session_maker"])
    await record_loop_tick(ctx, "escalations")
    return msgspec.structs.asdict(result)


TASKS: list[Any] = [dispatch_due]


def cron_jobs(settings: Settings) -> list[CronJob]:
    """The 2 s safety net behind the enqueue after each commit (gathered by ``worker.py``)."""
    return [
        CronJob(
            function=dispatch_due_cron,
            cron="* * * * * */2",  # croniter: seconds are the 6th field
            timeout=DISPATCH_JOB_TIMEOUT,
            unique=True,
        ),
        # Grouping and escalation timers are rows in PostgreSQL; these crons are their clock.
        CronJob(function=group_flush_cron, cron="* * * * * *", timeout=60, unique=True),
        CronJob(function=escalation_cron, cron="* * * * * *", timeout=60, unique=True),
    ]
