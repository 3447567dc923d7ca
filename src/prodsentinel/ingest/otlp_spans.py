"""The spans of an OTLP export straight to §4's stored rows, in one pass (SPEC §11 mapping, §4 rules).

Why not ``map_spans`` and then §4's ``span_rows``: OTLP/HTTP span ingest was 0.6x our JSON ingest of the
same spans, the difference being Python per span (docs/ingest.md). Here each span is read once: SPEC
§11's rules (``otlp_mapping.span_fields``, shared with the typed ``map_spans``) and then §4's rules with
§4's own functions (``services.encode_attributes`` with its depth limit, ``services.time_error`` and
``FUTURE_TOLERANCE``, the NUL refusal), straight into the row tuple §4's writer stores. What §4 checks
that the mapping already guarantees is not checked twice: the status is one of UNSET/OK/ERROR, times
are after the epoch and ``end >= start`` (on the nanoseconds), the hex ids hold no NUL.

The resource's and scope's attributes are encoded once per scope and the span's own appended (see
:func:`_stored_attributes`: the stored ``jsonb`` value is the merged object). A span that breaks a rule
is rejected (counted, and the first problem named) while the others are
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
    index = 0
    for resource_spans in request.resource_spans:
        resource = codec.attributes(resource_spans.resource.attributes)
        resource_json = _encode_sorted(resource)
        service = resource_service(resource)
        for scope_spans in resource_spans.scope_spans:
            base = scope_base(codec, resource, scope_spans.scope)
            base_text, scope_problem = _scope_attributes(base, service)
            for span in scope_spans.spans:
                position = index  # the span's place in the export, as rejections name it
                index += 1
                try:
                    trace_id, span_id, parent, start_nanos, end_nanos, status, own = span_fields(codec, span)
                except ValueError as exc:  # InvalidItemError, or a malformed 64-bit integer string
                    rejections.add(f"span {position} ({span.name!r})", str(exc))
                    continue
                name = span.name
                try:
                    start = unix_time(start_nanos, "start_time_unix_nano")
                    end = unix_time(end_nanos, "end_time_unix_nano")
                    text = _stored_attributes(name, start, end, own, base_text, scope_problem, limit)
                    logs = (
                        exception_logs(codec, span, (trace_id, span_id, service, start), resource_json, base)
                        if span.events
                        else None
                    )
                except _RuleError as exc:
                    rejections.add(f"span {name!r} (trace_id {trace_id}, span_id {span_id})", str(exc))
                    continue
                except ValueError as exc:  # the mapping's rules (a time out of range, an event's time)
                    rejections.add(f"span {position} ({name!r})", str(exc))
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
                owners.append(position)
                if code == _ERROR:
                    out.notify = True
                if logs:
                    out.logs.extend(logs)
                    out.log_owners.extend([position] * len(logs))
    out.total = index
    return out


def _scope_attributes(base: dict[str, Any], service: str) -> tuple[str, tuple[str, str] | None]:
    """The resource's and scope's attributes as stored JSON text (§4's ``encode_attributes``), and the
    §4 rule they break, if any, which then rejects every span of the scope."""
    try:
        text = encode_attributes(base) or "{}"
    except TooDeepError:
        return "{}", ("attributes", TOO_DEEP)
    if _NUL in service:
        return text, ("service_name", _NUL_PROBLEM)
    if _NUL_ESCAPE in text:
        return text, ("attributes", _NUL_PROBLEM)
    return text, None


def _stored_attributes(
    name: str,
    start: datetime,
    end: datetime,
    own: dict[str, Any],
    base_text: str,
    scope_problem: tuple[str, str] | None,
    limit: datetime,
) -> str:
    """§4's rules the mapping does not already guarantee; the span's attributes as stored.

    The stored text is the scope's JSON object followed by the span's own members: the column is
    ``jsonb``, which keeps the last of duplicate keys (PostgreSQL's documented rule), so a span's
    attribute overrides the resource's or scope's exactly as the merged dict of ``map_spans`` does, and
    the scope's attributes are encoded once instead of once per span.
    """
    if start > limit:
        raise _RuleError("start_time", time_error(start, limit))
    if end > limit:
        raise _RuleError("end_time", time_error(end, limit))
    try:
        own_text = encode_attributes(own) or "{}"
    except TooDeepError:
        raise _RuleError("attributes", TOO_DEEP) from None
    if scope_problem is not None:
        raise _RuleError(*scope_problem)
    # NUL: hex ids cannot hold one; JSON text writes every NUL of the attributes as \u0000.
    if _NUL in name:
        raise _RuleError("name", _NUL_PROBLEM)
    if _NUL_ESCAPE in own_text:
        raise _RuleError("attributes", _NUL_PROBLEM)
    if own_text == "{}":
        return base_text
    if base_text == "{}":
        return own_text
    return f"{base_text[:-1]},{own_text[1:]}"
