"""SAQ jobs of the alerting domain: the evaluation cron.

``evaluate_alerts`` calls the same function as ``POST /api/v1/alerts/evaluate``,
``alerts.evaluator.run_evaluation``, which owns its unit of work (the lease is its transaction's
advisory lock); the task opens nothing itself.
"""

from __future__ import annotations

from typing import Any

from litestar_saq import CronJob
from msgspec import to_builtins

from prodsentinel.alerts.evaluator import run_evaluation
from prodsentinel.lib.jobs import settings_of
from prodsentinel.settings import Settings
from prodsentinel.system.services import record_loop_tick

__all__ = (
    "EVALUATION_TIMEOUT_SECONDS",
    "TASKS",
    "cron_for_interval",
    "cron_jobs",
    "evaluate_alerts",
)

#: A pass over 1,000 policies takes well under 2 s; the timeout only guards against a stuck database.
EVALUATION_TIMEOUT_SECONDS = 120


async def evaluate_alerts(ctx: Any) -> dict[str, Any]:
    """Evaluate every enabled policy of every project as ``system:scheduler``.

    At most one runs at a time: the cron job's SAQ key (``cron:evaluate_alerts``) dedups per queue,
    and the advisory-lock lease makes any second evaluator (another queue, a manual run) skip.
    """
    settings = settings_of(ctx)
    summary = await run_evaluation(ctx["session_maker"], interval_seconds=settings.alerts_interval_seconds)
    await record_loop_tick(ctx, "alerts")
    result: dict[str, Any] = to_builtins(summary)
    return result


def cron_for_interval(seconds: int) -> str:
    """A croniter expression (6 fields, seconds LAST as SAQ/croniter expect) firing every ``seconds``.

    Intervals that do not divide a minute (or an hour) restart at each minute (hour) boundary,
    e.g. 45 s fires at :00 and :45; use a divisor of 60 for an exact period.
    """
    if seconds < 1:
        raise ValueError("the interval must be at least one second")
    if seconds < 60:
        return f"* * * * * */{seconds}"
    minutes = max(1, round(seconds / 60))
    if minutes < 60:
        return f"*/{minutes} * * * * 0"
    hours = max(1, round(minutes / 60))
    return f"0 */{min(hours, 23)} * * * 0"


def cron_jobs(settings: Settings) -> list[CronJob]:
    """The evaluation cron, every ``PRODSENTINEL_ALERTS_INTERVAL_SECONDS`` (gathered by ``worker.py``)."""
    return [
        CronJob(
            function=evaluate_alerts,
            cron=cron_for_interval(settings.alerts_interval_seconds),
            timeout=EVALUATION_TIMEOUT_SECONDS,
            unique=True,
        )
    ]


TASKS: list[Any] = [evaluate_alerts]
