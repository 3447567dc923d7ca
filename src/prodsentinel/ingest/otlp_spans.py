"""The spans of an OTLP export straight to §4's stored rows, in one pass (SPEC §11 mapping, §4 rules).

Why not ``map_spans`` and then §4's ``span_rows``: OTLP/HTTP span ingest was 0.6x our JSON ingest of the
same spans, the difference being Python per span (docs/ingest.md). Here each span is read once: SPEC
§11's rules (``otlp_mapping.span_fields``, shared with the typed ``map_spans``) and then §4's rules with
§4's own functions (``services.encode_attributes`` with its depth limit, ``services.time_error`` and
``FUTURE_TOLERANCE``, the NUL refusal), straight into the row tuple §4's writer stores. What §4 checks
that the mapping already guarantees is not checked twice: the status is one of UNSET/OK/ERROR, times
are after the epoch and ``end >= start`` (on the nanoseconds), the hex ids hold no NUL.

A span that breaks a rule is rejected (counted, and the first problem named) while the others are
stored, as SPEC §11 wants. Its ``exception`` events become §4 ``LogIn`` items (rare: they go through
§4's ``log_rows`` in ``otlp_services``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from prodsentinel.ingest.otlp_mapping import (
    Codec,
    Rejections,
    exception_logs,
    resource_service,
    scope_base,
    span_fields,
    span_signal_id,
    unix_time,
)
from prodsentinel.ingest.schemas import LogIn
from prodsentinel.ingest.services import (
    FUTURE_TOLERANCE,
    TOO_DEEP,
    Row,
    TooDeepError,
    encode_attributes,
    time_error,
)
from prodsentinel.lib.vocabulary import SPAN_STATUSES

__all__ = ("SpanRows", "span_rows")

_encode_sorted = msgspec.json.Encoder(order="sorted").encode
_NUL = "\x00"
_NUL_ESCAPE = "\\u0000"
_NUL_PROBLEM = "NUL characters (\\u0000) are not allowed"
_ERROR = SPAN_STATUSES["ERROR"]


@dataclass
class SpanRows:
    """The spans' rows (and the OTLP span each came from), their ``exception`` events as logs, and what
    was rejected."""

    rows: list[Row] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)
    notify: bool = False  # an ERROR span: the incidents job is told after commit
    logs: list[LogIn] = field(default_factory=list)
    log_owners: list[int] = field(default_factory=list)
    rejections: Rejections = field(default_factory=Rejections)
    total: int = 0  # spans seen


class _RuleError(ValueError):
    """§4 refuses the span: ``path`` is its field, ``message`` §4's words."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")


def span_rows(codec: Codec, request: Any, project_id: UUID, now: datetime) -> SpanRows:
    """Every span of an ``ExportTraceServiceRequest`` as its stored ``spans`` row (``signal.writes.SPANS``
    columns), or a rejection."""
    out = SpanRows()
    limit = now + FUTURE_TOLERANCE
    rejections = out.rejections
    rows, owners = out.rows, out.owners
    statuses = SPAN_STATUSES
    for resource_spans in request.resource_spans:
        resource = codec.attributes(resource_spans.resource.attributes)
        resource_json = _encode_sorted(resource)
        service = resource_service(resource)
        for scope_spans in resource_spans.scope_spans:
            base = scope_base(codec, resource, scope_spans.scope)
            for span in scope_spans.spans:
                index = out.total
                out.total += 1
                try:
                    trace_id, span_id, parent, start_nanos, end_nanos, status, attributes = span_fields(
                        codec, span, base
                    )
                except ValueError as exc:  # InvalidItemError, or a malformed 64-bit integer string
                    rejections.add(f"span {index} ({span.name!r})", str(exc))
                    continue
                name = span.name
                try:
                    start = unix_time(start_nanos, "start_time_unix_nano")
                    end = unix_time(end_nanos, "end_time_unix_nano")
                    text = _stored_attributes(service, name, start, end, attributes, limit)
                    logs = exception_logs(
                        codec, span, (trace_id, span_id, service, start), resource_json, base
                    )
                except _RuleError as exc:
                    rejections.add(f"span {name!r} (trace_id {trace_id}, span_id {span_id})", str(exc))
                    continue
                except ValueError as exc:  # the mapping's rules (a time out of range, an event's time)
                    rejections.add(f"span {index} ({name!r})", str(exc))
                    continue
                code = statuses[status]
                rows.append(
                    (
                        project_id,
                        span_signal_id(trace_id, span_id),
                        trace_id,
                        span_id,
                        parent,
                        service,
                        name,
                        start,
                        end,
                        (end_nanos // 1000 - start_nanos // 1000) / 1000,  # §4's (end - start) / 1 ms
                        code,
                        text,
                    )
                )
                owners.append(index)
                if code == _ERROR:
                    out.notify = True
                if logs:
                    out.logs.extend(logs)
                    out.log_owners.extend([index] * len(logs))
    return out


def _stored_attributes(
    service: str, name: str, start: datetime, end: datetime, attributes: dict[str, Any], limit: datetime
) -> str | None:
    """§4's rules the mapping does not already guarantee; the attributes as stored (JSON text)."""
    if start > limit:
        raise _RuleError("start_time", time_error(start, limit))
    if end > limit:
        raise _RuleError("end_time", time_error(end, limit))
    try:
        text = encode_attributes(attributes)
    except TooDeepError:
        raise _RuleError("attributes", TOO_DEEP) from None
    # NUL: hex ids cannot hold one; JSON text writes every NUL of the attributes as \u0000.
    if _NUL in name:
        raise _RuleError("name", _NUL_PROBLEM)
    if _NUL in service:
        raise _RuleError("service_name", _NUL_PROBLEM)
    if text is not None and _NUL_ESCAPE in text:
        raise _RuleError("attributes", _NUL_PROBLEM)
    return text
