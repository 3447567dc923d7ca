"""Group commit: one writer per signal table coalesces the rows of concurrent requests.

Why: a commit costs a WAL flush (fsync). One statement and one commit per single-event request caps a
2-core box at a few hundred requests/s; writing every request that arrived while the previous flush ran
in one ``COPY`` and one commit amortises that cost over all of them (the classic "natural batching":
no timer, no added latency when idle). Each request is answered after the commit that stored its rows,
with its own accepted/duplicate counts.

Memory is bounded by :class:`PendingBudget`: bytes of request bodies decoded or waiting for the database.
Above the limit a request is refused (503 + ``Retry-After``), never queued.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from prodsentinel.lib.unavailable import is_database_unavailable
from prodsentinel.signals.partitions import DEFAULT_INTERVAL_SECONDS
from prodsentinel.signals.writes import Key, SignalTable, write_rows

__all__ = ("PendingBudget", "Submission", "TableWriter", "WriterClosedError")

logger = structlog.get_logger("prodsentinel.ingest")

Row = tuple[Any, ...]


class WriterClosedError(RuntimeError):
    """The service is shutting down and takes no new rows."""


class PendingBudget:
    """A byte budget shared by every writer of the process (single event loop: no lock needed)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def try_acquire(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def release(self, size: int) -> None:
        self.used = max(0, self.used - size)


@dataclass(eq=False, slots=True)
class Submission:
    """The rows of one request; ``reserved`` budget bytes are released after its flush."""

    rows: Sequence[Row]
    reserved: int
    notify: bool
    future: asyncio.Future[tuple[int, int]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class TableWriter:
    """Flushes one table's submissions with ``flushers`` concurrent flush loops (default 2).

    While a flush runs, new submissions gather for the next. Two loops let PostgreSQL work on one
    flush while this process encodes the next (``COPY`` encoding happens on the client side); overlapping
    keys between concurrent flushes are resolved exactly by the database (``signals.writes``).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        table: SignalTable,
        budget: PendingBudget,
        *,
        max_rows: int,
        on_committed: Callable[[], None],
        flushers: int = 2,
        partition_interval_seconds: int = DEFAULT_INTERVAL_SECONDS,
    ) -> None:
        self._pool = pool
        self._table = table
        self._budget = budget
        self._max_rows = max_rows
        self._on_committed = on_committed
        self._flushers = flushers
        self._partition_interval = partition_interval_seconds
        self._queue: deque[Submission] = deque()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(), name=f"ingest-writer-{self._table.name}-{n}")
            for n in range(self._flushers)
        ]

    async def stop(self) -> None:
        """Refuse new rows, drain what was accepted for writing, then stop."""
        self._closed = True
        self._wakeup.set()
        if self._tasks:
            await asyncio.gather(*self._tasks)

    async def write(self, rows: Sequence[Row], *, reserved: int, notify: bool) -> tuple[int, int]:
        """Store ``rows`` (validated; keys may repeat) and return ``(accepted, duplicates)`` after commit.

        The writer owns ``reserved`` from here on and releases it once the rows are written.
        """
        if self._closed:
            self._budget.release(reserved)
            raise WriterClosedError("the ingest writer is stopped")
        submission = Submission(rows=rows, reserved=reserved, notify=notify)
        self._queue.append(submission)
        self._wakeup.set()
        # No shield needed: a client that disconnects cancels only its own future; the flush that carries
        # its rows still runs (and releases the budget) and skips results for futures already done.
        return await submission.future

    async def _run(self) -> None:
        while True:
            while self._queue:
                batch = self._take()
                try:
                    await self._flush(batch)
                finally:
                    for submission in batch:
                        self._budget.release(submission.reserved)
            if self._closed:
                return
            self._wakeup.clear()
            await self._wakeup.wait()

    def _take(self) -> list[Submission]:
        batch = [self._queue.popleft()]
        rows = len(batch[0].rows)
        while self._queue and rows + len(self._queue[0].rows) <= self._max_rows:
            submission = self._queue.popleft()
            rows += len(submission.rows)
            batch.append(submission)
        return batch

    async def _flush(self, batch: list[Submission]) -> None:
        try:
            counts = await self._write_retrying(batch)
        except Exception as exc:
            if len(batch) == 1 or is_database_unavailable(exc):  # an outage fails every row alike
                for submission in batch:
                    _fail(submission, exc)
                return
            # isolate the request whose rows the database refused: retry each on its own
            logger.warning("ingest_flush_failed_retrying_singly", table=self._table.name, error=repr(exc))
            for submission in batch:
                await self._flush([submission])
            return
        if any(
            submission.notify for submission, (accepted, _) in zip(batch, counts, strict=True) if accepted
        ):
            self._on_committed()
        for submission, result in zip(batch, counts, strict=True):
            if not submission.future.done():
                submission.future.set_result(result)

    async def _write_retrying(self, batch: list[Submission]) -> list[tuple[int, int]]:
        """``_write``, once more on a fresh connection when the first one turned out dead.

        After a database restart the pool may still hold connections the server dropped; the first
        statement on one fails without having run. Rows of an attempt that did commit before its
        connection broke are found again by the retry and counted as duplicates: stored once either way.
        """
        try:
            return await self._write(batch)
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            logger.info("ingest_write_retry_on_fresh_connection", table=self._table.name, error=repr(exc))
        return await self._write(batch)

    async def _write(self, batch: list[Submission]) -> list[tuple[int, int]]:
        """One deduplicated, sorted write of every row of ``batch``; per-submission counts."""
        owner: dict[Key, int] = {}
        unique_rows: list[Row] = []
        for position, submission in enumerate(batch):
            for row in submission.rows:
                key = (row[0], row[1])
                if key not in owner:
                    owner[key] = position
                    unique_rows.append(row)
        unique_rows.sort(key=_sort_key)
        async with self._pool.acquire() as connection:
            existing = await write_rows(
                connection, self._table, unique_rows, interval_seconds=self._partition_interval
            )
        accepted = [0] * len(batch)
        for key, position in owner.items():
            if key not in existing:
                accepted[position] += 1
        return [(accepted[i], len(submission.rows) - accepted[i]) for i, submission in enumerate(batch)]


def _sort_key(row: Row) -> tuple[int, int]:
    # PostgreSQL orders uuid bytewise, which is the order of UUID.int
    return (row[0].int, row[1].int)


def _fail(submission: Submission, exc: Exception) -> None:
    if not submission.future.done():
        submission.future.set_exception(exc)
    else:  # the waiter is gone; keep the failure visible
        logger.error("ingest_write_failed", error=repr(exc))
    with contextlib.suppress(Exception):
        submission.future.exception()  # mark retrieved: no "exception never retrieved" noise
