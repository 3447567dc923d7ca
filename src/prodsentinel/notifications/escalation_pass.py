"""The escalation pass (SPEC §13): send the escalation steps that came due.

Run by the ``escalation_cron`` SAQ cron (every second). Each batch is one transaction under the
``notifications.escalations`` lease: claim due ``pending`` steps (``FOR UPDATE SKIP LOCKED``), write
one outbox item per enabled channel of each step (event id derived from the step, payload naming it),
mark the steps ``sent``. Items and marks commit together: a worker killed before the commit leaves the
steps pending and the next tick (in any worker) sends them, once; after it, they are the outbox's.
"""

from __future__ import annotations

import time

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib.after_commit import after_commit
from prodsentinel.lib.database import session_scope
from prodsentinel.lib.jobs import try_lease
from prodsentinel.lib.time import utcnow
from prodsentinel.notifications.escalation_queries import EscalationQueries
from prodsentinel.notifications.outbox import enqueue_dispatch

__all__ = ("LEASE", "EscalationPassResult", "run_escalation_pass", "send_due_steps")

LEASE = "notifications.escalations"
BATCH_SIZE = 500
PASS_BUDGET_SECONDS = 20.0


class EscalationPassResult(msgspec.Struct, kw_only=True):
    steps: int = 0
    items: int = 0
    leased: bool = True


async def send_due_steps(session: AsyncSession, *, limit: int = BATCH_SIZE) -> tuple[int, int]:
    """Send up to ``limit`` due steps in the caller's transaction: ``(steps, outbox items)``."""
    queries = EscalationQueries(session)
    now = utcnow()
    steps = await queries.claim_due(now, limit)
    if not steps:
        return 0, 0
    items = await queries.send_steps(steps, now)
    await queries.advance(steps, now)
    if items:
        after_commit(session, enqueue_dispatch)
    return len(steps), items


async def run_escalation_pass(
    session_maker: async_sessionmaker[AsyncSession], *, budget_seconds: float = PASS_BUDGET_SECONDS
) -> EscalationPassResult:
    """Send due steps batch after batch (each its own transaction) until none is due."""
    result = EscalationPassResult()
    deadline = time.monotonic() + budget_seconds
    while time.monotonic() < deadline:
        async with session_scope(session_maker) as session:
            if not await try_lease(session, LEASE):
                result.leased = False
                return result
            steps, items = await send_due_steps(session)
        result.steps += steps
        result.items += items
        if steps < BATCH_SIZE:
            break
    return result
