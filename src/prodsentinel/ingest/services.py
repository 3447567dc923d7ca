"""The ingest service: validate a whole batch, then hand its rows to the group-commit writer.

A batch is atomic: every item is validated (types by msgspec while decoding, rules here) before any row
goes to the writer, and a request's rows are always written in one transaction. The answer (202
``{"accepted", "duplicates"}``) is given after that transaction committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar
from uuid import UUID

import asyncpg
import msgspec
import structlog

from prodsentinel.ingest.decoding import ItemError, body_format, decode_items, decompress, invalid_items
from prodsentinel.ingest.schemas import IngestAccepted, LogIn, MetricIn, SpanIn
from prodsentinel.ingest.writer import PendingBudget, TableWriter, WriterClosedError
from prodsentinel.lib import jobs
from prodsentinel.lib.errors import ServiceUnavailableError
from prodsentinel.lib.time import MIN_TIME
from prodsentinel.lib.unavailable import DATABASE_UNAVAILABLE, RETRY_AFTER_SECONDS, is_database_unavailable
from prodsentinel.lib.vocabulary import LEVELS, LOG_LEVEL_NAMES, SPAN_STATUSES
from prodsentinel.settings import Settings
from prodsentinel.signals.writes import LOGS, METRIC_POINTS, SPANS, SignalTable
from prodsentinel.system import metrics

__all__ = (
    "GROUP_NEW_ERRORS_TASK",
    "MAX_ATTRIBUTE_DEPTH",
    "METRIC_ID_NAMESPACE",
    "Ingestor",
    "TooDeepError",
    "derive_metric_id",
    "encode_attributes",
    "log_rows",
    "metric_rows",
    "span_rows",
    "time_error",
)

logger = structlog.get_logger("prodsentinel.ingest")

#: The SAQ task (incidents domain) told about new error signals and metric points after a commit.
GROUP_NEW_ERRORS_TASK = "group_new_errors"
#: Namespace of derived metric ids (uuid5-style over the canonical point identity).
METRIC_ID_NAMESPACE = UUID("7d0c4a5e-6f7b-5e7a-9c1e-2f3b4d5a6e7f")

#: Seconds between two ``group_new_errors`` enqueues of this process (see ``_EnqueueCoalescer``).
ENQUEUE_MIN_INTERVAL = 0.1
#: A signal timestamp is valid in ``MIN_TIME`` (the Unix epoch, ``lib.time``) .. now + FUTURE_TOLERANCE.
#: Both bounds are one chained comparison per timestamp; every value whose conversion to UTC would
#: overflow (year 1 with a positive offset, year 9999 with a negative one) is outside them.
FUTURE_TOLERANCE = timedelta(hours=24)
TOO_NEW = "Timestamp is more than 24 h in the future"
TOO_OLD = "Timestamp is before 1970-01-01T00:00:00Z (the Unix epoch)"
MAX_LISTED_ERRORS = 100
#: Levels of objects/arrays an item's ``attributes`` may nest (the attributes object itself is level 1).
#: Stored attributes are encoded again by every read (query answers, events): a value that only just
#: decoded would fail to encode deeper in the stack and make every page holding it a 500. The bound keeps
#: that far away; telemetry attributes are a few levels deep (backends commonly cap them near 20).
MAX_ATTRIBUTE_DEPTH = 32
TOO_DEEP = f"Nested deeper than {MAX_ATTRIBUTE_DEPTH} levels of objects and arrays"
ERROR_LEVEL = LEVELS["ERROR"]
ERROR_STATUS = SPAN_STATUSES["ERROR"]
_LEVEL_NAMES = ", ".join(LOG_LEVEL_NAMES)
_NUL_ESCAPE = b"\\u0000"
_json_encode = msgspec.json.Encoder(order="sorted").encode

Row = tuple[Any, ...]
T = TypeVar("T")
RowBuilder = Callable[[UUID, list[T], datetime, bool], tuple[list[Row], bool]]


class _Errors:
    """Collects item errors of a batch (capped) and raises the atomic 422 at the end."""

    def __init__(self) -> None:
        self.items: list[ItemError] = []

    def add(self, index: int, path: str, message: str) -> None:
        if len(self.items) < MAX_LISTED_ERRORS:
            self.items.append(ItemError(index, path, message))

    def raise_if_any(self) -> None:
        if self.items:
            raise invalid_items(self.items)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def time_error(value: datetime, limit: datetime) -> str:
    """Why ``value`` failed ``MIN_TIME <= value <= limit`` (called on the error path only)."""
    return TOO_NEW if value > limit else TOO_OLD


def _has_nul(*values: str | None) -> bool:
    return any(value is not None and "\x00" in value for value in values)


def encode_attributes(value: dict[str, Any] | None) -> str | None:
    """The attributes as stored (JSON text); ``TooDeepError`` when they nest beyond the limit.

    ``str.count`` over the encoded text is a cheap, sound pre-filter: nesting ``n`` levels takes at least
    ``n`` brackets, so the walk only runs for the rare attributes holding that many.
    """
    if value is None:
        return None
    try:
        text = _json_encode(value).decode()
    except RecursionError:  # decoded at the edge of the budget, too deep to encode a few frames further
        raise TooDeepError from None
    if text.count("{") + text.count("[") > MAX_ATTRIBUTE_DEPTH and _deeper_than(value, MAX_ATTRIBUTE_DEPTH):
        raise TooDeepError
    return text


class TooDeepError(Exception):
    """Attributes nest deeper than ``MAX_ATTRIBUTE_DEPTH`` (an item error at ``$.attributes``)."""


def _deeper_than(value: Any, budget: int) -> bool:
    """Whether ``value`` (a dict or list) nests more than ``budget`` levels; recursion stops at the budget."""
    if budget <= 0:
        return True
    children = value.values() if isinstance(value, dict) else value
    return any(isinstance(child, dict | list) and _deeper_than(child, budget - 1) for child in children)


def log_rows(project_id: UUID, items: list[LogIn], now: datetime, check_nul: bool) -> tuple[list[Row], bool]:
    """Validate logs and build their rows; also says whether any is ERROR or worse."""
    errors = _Errors()
    limit = now + FUTURE_TOLERANCE
    rows: list[Row] = []
    has_errors = False
    for index, item in enumerate(items):
        level = LEVELS.get(item.level.upper())
        if level is None:
            errors.add(index, "$.level", f"Expected one of {_LEVEL_NAMES} (case-insensitive)")
            continue
        timestamp = _utc(item.timestamp)
        if not MIN_TIME <= timestamp <= limit:
            errors.add(index, "$.timestamp", time_error(timestamp, limit))
        try:
            attributes = encode_attributes(item.attributes)
        except TooDeepError:
            errors.add(index, "$.attributes", TOO_DEEP)
            continue
        if check_nul:
            _check_nul_log(errors, index, item, attributes)
        has_errors = has_errors or level >= ERROR_LEVEL
        rows.append(
            (
                project_id,
                item.signal_id,
                item.trace_id,
                item.span_id,
                item.service_name,
                timestamp,
                level,
                item.message,
                attributes,
            )
        )
    errors.raise_if_any()
    return rows, has_errors


def _check_nul_log(errors: _Errors, index: int, item: LogIn, attributes: str | None) -> None:
    for name in ("service_name", "message", "trace_id", "span_id"):
        if _has_nul(getattr(item, name)):
            errors.add(index, f"$.{name}", "NUL characters (\\u0000) are not allowed")
    if attributes is not None and "\\u0000" in attributes:
        errors.add(index, "$.attributes", "NUL characters (\\u0000) are not allowed")


def span_rows(
    project_id: UUID, items: list[SpanIn], now: datetime, check_nul: bool
) -> tuple[list[Row], bool]:
    """Validate spans and build their rows (with ``duration_ms``); also says whether any is ERROR."""
    errors = _Errors()
    limit = now + FUTURE_TOLERANCE
    rows: list[Row] = []
    has_errors = False
    for index, item in enumerate(items):
        status = SPAN_STATUSES.get(item.status.upper())
        if status is None:
            errors.add(index, "$.status", "Expected one of UNSET, OK, ERROR")
            continue
        start, end = _utc(item.start_time), _utc(item.end_time)
        if not MIN_TIME <= start <= limit:
            errors.add(index, "$.start_time", time_error(start, limit))
        if not MIN_TIME <= end <= limit:
            errors.add(index, "$.end_time", time_error(end, limit))
        if end < start:
            errors.add(index, "$.end_time", "end_time is before start_time")
        try:
            attributes = encode_attributes(item.attributes)
        except TooDeepError:
            errors.add(index, "$.attributes", TOO_DEEP)
            continue
        if check_nul:
            for name in ("trace_id", "span_id", "parent_span_id", "service_name", "name"):
                if _has_nul(getattr(item, name)):
                    errors.add(index, f"$.{name}", "NUL characters (\\u0000) are not allowed")
            if attributes is not None and "\\u0000" in attributes:
                errors.add(index, "$.attributes", "NUL characters (\\u0000) are not allowed")
        has_errors = has_errors or status == ERROR_STATUS
        rows.append(
            (
                project_id,
                item.signal_id,
                item.trace_id,
                item.span_id,
                item.parent_span_id,
                item.service_name,
                item.name,
                start,
                end,
                (end - start) / timedelta(milliseconds=1),
                status,
                attributes,
            )
        )
    errors.raise_if_any()
    return rows, has_errors


def derive_metric_id(name: str, service_name: str, timestamp: datetime, labels_json: bytes) -> UUID:
    """A deterministic signal id for a metric point sent without one (uuid5 construction, SHA-1).

    The identity is the JSON array ``[name, service_name, timestamp, labels]`` with the timestamp in UTC
    ISO 8601 with microseconds and the labels' keys sorted, so equal points always get the same id
    whatever the offset or key order they were sent with.
    """
    identity = b"[%s,%s,%s,%s]" % (
        _json_encode(name),
        _json_encode(service_name),
        _json_encode(timestamp.astimezone(UTC).isoformat(timespec="microseconds")),
        labels_json,
    )
    digest = hashlib.sha1(METRIC_ID_NAMESPACE.bytes + identity, usedforsecurity=False).digest()
    return UUID(bytes=digest[:16], version=5)


def metric_rows(
    project_id: UUID, items: list[MetricIn], now: datetime, check_nul: bool
) -> tuple[list[Row], bool]:
    """Validate metric points and build their rows (deriving missing ids). Points always notify."""
    errors = _Errors()
    limit = now + FUTURE_TOLERANCE
    rows: list[Row] = []
    for index, item in enumerate(items):
        if not math.isfinite(item.value):
            errors.add(index, "$.value", "Expected a finite number")
        timestamp = _utc(item.timestamp)
        valid_time = MIN_TIME <= timestamp <= limit
        if not valid_time:
            errors.add(index, "$.timestamp", time_error(timestamp, limit))
        labels = _json_encode(item.labels or {})
        if check_nul:
            for name in ("name", "service_name"):
                if _has_nul(getattr(item, name)):
                    errors.add(index, f"$.{name}", "NUL characters (\\u0000) are not allowed")
            if _NUL_ESCAPE in labels:
                errors.add(index, "$.labels", "NUL characters (\\u0000) are not allowed")
        if not valid_time:  # the batch is refused anyway; deriving the id would convert it to UTC
            continue
        signal_id = item.signal_id or derive_metric_id(item.name, item.service_name, timestamp, labels)
        rows.append(
            (project_id, signal_id, item.name, item.service_name, timestamp, item.value, labels.decode())
        )
    errors.raise_if_any()
    return rows, bool(rows)


@dataclass(frozen=True)
class SignalKind(Generic[T]):
    """One ingest endpoint: what it decodes, how it validates, where it writes."""

    name: str
    item_type: type[T]
    table: SignalTable
    build_rows: RowBuilder[T]


KINDS: dict[str, SignalKind[Any]] = {
    "logs": SignalKind("logs", LogIn, LOGS, log_rows),
    "spans": SignalKind("spans", SpanIn, SPANS, span_rows),
    "metrics": SignalKind("metrics", MetricIn, METRIC_POINTS, metric_rows),
}


class _EnqueueCoalescer:
    """At most one ``group_new_errors`` enqueue in flight; requests meanwhile collapse into one more.

    The job scans new rows by high-water mark, so one enqueue after the latest commit covers every
    earlier one: this keeps the queue traffic to a trickle whatever the request rate.
    """

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def request(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            self._again = False
            await jobs.enqueue(GROUP_NEW_ERRORS_TASK, key=GROUP_NEW_ERRORS_TASK, timeout=120)
            # At most one enqueue per interval: with group commit at thousands of requests/s a flush
            # completes every few ms, and an enqueue per flush (a round trip on SAQ's queue) cost ~5 % of
            # the ingest CPU. Commits meanwhile still get their follow-up enqueue, at most this much later.
            await asyncio.sleep(ENQUEUE_MIN_INTERVAL)
            if not self._again:
                return

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


class Ingestor:
    """Per-process ingest state: the dedicated asyncpg pool, one writer per table, the byte budget."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.pool = pool
        self.budget = PendingBudget(settings.ingest_max_pending_bytes)
        self._notifier = _EnqueueCoalescer()
        max_rows = max(settings.max_batch_items, 20_000)
        self.writers = {
            name: TableWriter(
                pool,
                kind.table,
                self.budget,
                max_rows=max_rows,
                on_committed=self._notifier.request,
                partition_interval_seconds=settings.partition_interval_seconds,
            )
            for name, kind in KINDS.items()
        }

    def start(self) -> None:
        for writer in self.writers.values():
            writer.start()

    async def stop(self) -> None:
        await asyncio.gather(*(writer.stop() for writer in self.writers.values()))
        await self._notifier.wait()

    async def ingest(
        self, kind_name: str, project_id: UUID, body: bytes, *, content_type: str, content_encoding: str
    ) -> IngestAccepted:
        """Decode, validate and durably store one request's batch; 202 counts once committed."""
        kind = KINDS[kind_name]
        fmt = body_format(content_type)
        payload, reserved = self.admit(body, content_encoding)
        try:
            items = decode_items(payload, fmt, kind.item_type, max_items=self.settings.max_batch_items)
            now = datetime.now(UTC)
            rows, notify = kind.build_rows(project_id, items, now, _NUL_ESCAPE in payload)
        except BaseException:
            self.budget.release(reserved)
            raise
        del payload, items
        if not rows:
            self.budget.release(reserved)
            return IngestAccepted(accepted=0, duplicates=0)
        accepted, duplicates = await self.store(kind_name, rows, reserved=reserved, notify=notify)
        metrics.record_ingest(kind_name, accepted, duplicates)
        return IngestAccepted(accepted=accepted, duplicates=duplicates)

    def admit(self, body: bytes, content_encoding: str) -> tuple[bytes, int]:
        """Reserve the request's bytes in the budget (503 when full) and undo ``Content-Encoding``
        (413 over the limit once inflated). Returns the payload and the bytes reserved, which the caller
        hands to :meth:`store` or releases; on an error nothing stays reserved. Shared with OTLP ingest."""
        reserved = max(len(body), 1)
        if not self.budget.try_acquire(reserved):
            raise _overloaded()
        try:
            payload = decompress(body, content_encoding, limit=self.settings.max_body_bytes)
            if len(payload) > len(body):  # account for what the inflated body really holds
                extra = len(payload) - len(body)
                if not self.budget.try_acquire(extra):
                    raise _overloaded()
                reserved += extra
        except BaseException:
            self.budget.release(reserved)
            raise
        return payload, reserved

    async def store(self, kind_name: str, rows: list[Row], *, reserved: int, notify: bool) -> tuple[int, int]:
        """Write validated rows through the kind's group-commit writer; ``(accepted, duplicates)`` once
        committed. The writer owns ``reserved`` from here on. Shared with OTLP ingest."""
        try:
            return await self.writers[kind_name].write(rows, reserved=reserved, notify=notify)
        except WriterClosedError:
            raise ServiceUnavailableError("The service is shutting down; retry.", retry_after=1) from None
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            logger.warning("ingest_database_unavailable", kind=kind_name, error=repr(exc))
            raise ServiceUnavailableError(DATABASE_UNAVAILABLE, retry_after=RETRY_AFTER_SECONDS) from None


def _overloaded() -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "Ingest is overloaded: too many bytes are waiting for the database; retry."
    )


def rows_of(kind_name: str, project_id: UUID, items: Sequence[Any]) -> list[Row]:
    """The rows a batch would be stored as (for tests and the benchmark)."""
    kind = KINDS[kind_name]
    rows, _ = kind.build_rows(project_id, list(items), datetime.now(UTC), True)
    return rows
