"""OTLP/HTTP export (SPEC §11): decode, map, validate per item, store through §4's writers.

Everything after the mapping is §4's pipeline, not a copy of it: :meth:`Ingestor.admit` (the byte budget
and gzip with the size limit), §4's rules, and :meth:`Ingestor.store` (the group-commit writers, which
also feed incidents, alerts and anomaly detection after commit). The one difference is OTLP's
semantics: an invalid item is rejected and counted in ``partial_success`` while the valid ones are
stored, where §4 refuses the whole batch.

Spans, the volume signal, go straight to their rows in one pass (``ingest.otlp_spans``, which applies
§4's rules with §4's functions). Logs, metric points and spans' ``exception`` events are mapped onto
§4's typed items and built by §4's row builders (``ingest.services.KINDS``). Those builders validate a
batch at once and raise on the first invalid item; that stays the fast path (one call for the whole
batch). Only when it raises are the items checked one by one to tell the valid ones from the rejected
ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec

from prodsentinel.ingest import otlp_mapping, otlp_spans
from prodsentinel.ingest.otlp_decoding import JSON, LOGS, TRACES, Signal, decode_request, otlp_format
from prodsentinel.ingest.otlp_mapping import Mapped, Rejections
from prodsentinel.ingest.otlp_spans import SpanRows
from prodsentinel.ingest.schemas import LogIn, MetricIn
from prodsentinel.ingest.services import KINDS, Ingestor, Row
from prodsentinel.lib.errors import BadRequestError, PayloadTooLargeError, ValidationError
from prodsentinel.system import metrics

__all__ = ("ExportResult", "export")

_NUL_ESCAPE = b"\\u0000"
_encode = msgspec.json.encode


@dataclass(frozen=True)
class ExportResult:
    """What the 200 answer reports: OTLP items rejected and the first problem (None when all stored)."""

    rejected: int
    error_message: str | None


@dataclass
class _Checked:
    """Rows that passed §4's rules, the OTLP item each came from, and the OTLP items rejected."""

    rows: list[Row]
    owners: list[int]
    notify: bool
    bad: set[int]


async def export(
    ingestor: Ingestor,
    signal: Signal,
    project_id: UUID,
    body: bytes,
    *,
    content_type: str,
    content_encoding: str,
) -> ExportResult:
    """Store an ``Export…ServiceRequest``'s valid items durably (returns once committed)."""
    fmt = otlp_format(content_type)
    payload, reserved = ingestor.admit(body, content_encoding)
    try:
        request, codec = decode_request(signal, payload, fmt)
        json_nul = _NUL_ESCAPE in payload if fmt == JSON else None
        del payload
        now = datetime.now(UTC)
        try:
            mapped: Mapped[Any] | SpanRows = (
                otlp_spans.span_rows(codec, request, project_id, now)
                if signal is TRACES
                else otlp_mapping.map_logs(codec, request, now)
                if signal is LOGS
                else otlp_mapping.map_metrics(codec, request)
            )
        except ValueError as exc:  # a malformed value outside any item (a resource or scope attribute)
            raise BadRequestError(f"The body is not a valid {signal.request.__name__}: {exc}.") from None
        del request
        limit = ingestor.settings.max_batch_items
        if mapped.total > limit:
            raise PayloadTooLargeError(f"The export has more than {limit} items.")
        if isinstance(mapped, SpanRows):
            writes = _span_writes(project_id, mapped, now, json_nul)
        else:
            writes = _checked_writes(signal, project_id, mapped, now, _has_nul(json_nul, mapped.items))
    except BaseException:
        ingestor.budget.release(reserved)
        raise
    rejections = mapped.rejections
    pending = [(kind, checked) for kind, checked in writes if checked.rows]
    if not pending:
        ingestor.budget.release(reserved)
    else:
        # The first write carries the whole reservation (released once its flush is done); both writes
        # must commit before the 200 (a failure is a 503 and the SDK's retry is deduplicated by signal_id).
        results = await asyncio.gather(
            *(
                ingestor.store(kind, checked.rows, reserved=reserved if n == 0 else 0, notify=checked.notify)
                for n, (kind, checked) in enumerate(pending)
            )
        )
        for (kind, _), (accepted, duplicates) in zip(pending, results, strict=True):
            metrics.record_ingest(kind, accepted, duplicates)
    return ExportResult(rejections.count, rejections.first)


def _has_nul(json_nul: bool | None, items: Any) -> bool:
    """Whether any mapped string may hold a NUL, so §4's per-field NUL checks must run.

    OTLP/JSON: like §4, whether the body has an escaped NUL. Protobuf bodies are full of zero bytes, so
    the mapped items are encoded once and searched instead (a fraction of a microsecond per item, where
    the per-field checks cost several): JSON writes every NUL of every string as ``\\u0000``.
    """
    if json_nul is not None:
        return json_nul
    return _NUL_ESCAPE in _encode(items)


def _span_writes(
    project_id: UUID, spans: SpanRows, now: datetime, json_nul: bool | None
) -> list[tuple[str, _Checked]]:
    """The spans' rows (already checked in ``otlp_spans``) and their ``exception`` events through §4's
    log rules: an event that cannot be stored rejects its span (span rules already kept a rejected span's
    events out)."""
    span_writes = _Checked(spans.rows, spans.owners, spans.notify, set())
    if not spans.logs:
        return [("spans", span_writes), ("logs", _Checked([], [], False, set()))]
    check_nul = _has_nul(json_nul, spans.logs)
    logs = _check("logs", project_id, spans.logs, spans.log_owners, now, check_nul, spans.rejections)
    spans.rejections.count += len(logs.bad)
    return [("spans", _without(span_writes, logs.bad)), ("logs", _without(logs, logs.bad))]


def _checked_writes(
    signal: Signal, project_id: UUID, mapped: Mapped[Any], now: datetime, check_nul: bool
) -> list[tuple[str, _Checked]]:
    """§4's rules on the mapped logs or metric points; rejected OTLP items are counted and every row of
    theirs dropped."""
    rejections = mapped.rejections
    kind = "logs" if signal is LOGS else "metrics"
    checked = _check(kind, project_id, mapped.items, mapped.owners, now, check_nul, rejections)
    rejections.count += len(checked.bad)
    return [(kind, _without(checked, checked.bad))]


def _check(
    kind_name: str,
    project_id: UUID,
    items: Sequence[Any],
    owners: list[int],
    now: datetime,
    check_nul: bool,
    rejections: Rejections,
) -> _Checked:
    build = KINDS[kind_name].build_rows
    if not items:
        return _Checked([], [], False, set())
    try:
        rows, notify = build(project_id, list(items), now, check_nul)
        return _Checked(rows, owners, notify, set())
    except ValidationError:
        pass
    # The error path: item by item, to keep the valid ones.
    rows, row_owners, bad, notify = [], [], set(), False
    for item, owner in zip(items, owners, strict=True):
        try:
            item_rows, item_notify = build(project_id, [item], now, check_nul)
        except ValidationError as exc:
            bad.add(owner)
            if rejections.first is None:
                first = exc.extra["errors"][0]
                rejections.add(_describe(item), f"{first['path'][2:]}: {first['message']}", count=0)
            continue
        rows.extend(item_rows)
        row_owners.extend([owner] * len(item_rows))
        notify = notify or item_notify
    return _Checked(rows, row_owners, notify, bad)


def _without(checked: _Checked, bad: set[int]) -> _Checked:
    if not bad:
        return checked
    kept = [(row, owner) for row, owner in zip(checked.rows, checked.owners, strict=True) if owner not in bad]
    return _Checked([row for row, _ in kept], [owner for _, owner in kept], checked.notify, set())


_DESCRIBE: dict[type, Callable[[Any], str]] = {
    LogIn: lambda item: f"{item.level} log of {item.service_name!r} at {item.timestamp.isoformat()}",
    MetricIn: lambda item: f"data point of {item.name!r} at {item.timestamp.isoformat()}",
}


def _describe(item: Any) -> str:
    return _DESCRIBE[type(item)](item)
