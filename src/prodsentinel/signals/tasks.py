"""SAQ jobs of this domain. Each task opens a session scope and calls one service function."""

from __future__ import annotations

from typing import Any

from litestar_saq import CronJob

__all__ = ("CRON_JOBS", "TASKS")

TASKS: list[Any] = []
CRON_JOBS: list[CronJob] = []
