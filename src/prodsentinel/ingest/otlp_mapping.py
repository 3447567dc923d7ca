"""SPEC §11's mapping of OTLP items onto §4's typed items (``SpanIn``, ``LogIn``, ``MetricIn``). Pure: no I/O.

Why onto §4's structs: everything after decoding is then §4's pipeline unchanged (the same row builders
and their rules, the same group-commit writers, budget and limits, the same incident/alert feeding).

One mapping reads both wire formats: a protobuf message and an ``ingest.otlp_json`` struct have the same
attribute names and defaults; what differs (ids as bytes or hex, the ``oneof`` fields) goes through a
:class:`Codec` (``ingest.otlp_decoding``). Items this module cannot map (malformed ids, a missing time,
a histogram whose bucket counts do not match its bounds, ...) are counted in :class:`Rejections` and
left out: OTLP answers with ``partial_success`` instead of refusing the batch (SPEC §11). Each mapped
item carries its ``owner``, the index of the OTLP item it came from, so a later rejection (§4's rules in
``ingest.otlp_services``) drops every row of that OTLP item and counts it once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, Generic, Protocol, TypeVar
from uuid import UUID

import msgspec
from asyncpg.pgproto import pgproto

from prodsentinel.ingest.schemas import LogIn, MetricIn, SpanIn
from prodsentinel.lib.vocabulary import LEVELS, SPAN_STATUS_NAMES

__all__ = (
    "SPAN_ID_NAMESPACE",
    "Codec",
    "InvalidItemError",
    "Mapped",
    "Rejections",
    "exception_logs",
    "format_bound",
    "log_signal_id",
    "map_logs",
    "map_metrics",
    "map_spans",
    "resource_service",
    "scope_base",
    "severity_level",
    "span_fields",
    "span_signal_id",
    "unix_time",
)

T = TypeVar("T")

#: Namespace of span ids (uuid5 construction over the trace and span ids).
SPAN_ID_NAMESPACE = UUID("0b5e1c9a-3f2d-5a4b-8c7d-6e5f4a3b2c1d")
#: Namespace of log record ids (uuid5 construction over the record's content).
LOG_ID_NAMESPACE = UUID("5a7c3e1f-9b2d-5c4e-8f6a-1d3b5c7e9f2a")
UNKNOWN_SERVICE = "unknown_service"
SCOPE_NAME = "otel.scope.name"
#: Span kinds by their OTLP number (0, SPAN_KIND_UNSPECIFIED, adds no attribute).
SPAN_KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
#: Longest stored name and id (``ingest.schemas.Name`` / ``Ident``).
MAX_NAME = 512
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_encode_sorted = msgspec.json.Encoder(order="sorted").encode
_encode = msgspec.json.encode


class Codec(Protocol):
    """What differs between a protobuf message and its OTLP/JSON struct."""

    def ident(self, value: Any) -> str:
        """A trace or span id as lowercase hex ('' when empty); ``ValueError`` when malformed."""
        ...

    def any_value(self, value: Any) -> Any:
        """An ``AnyValue`` as the plain JSON value it stands for (None when unset)."""
        ...

    def attributes(self, key_values: Iterable[Any]) -> dict[str, Any]:
        """A list of ``KeyValue`` as a dict (a later key wins), values as :meth:`any_value`."""
        ...

    def span_attributes(self, span: Any) -> dict[str, Any]:
        """A span's own attributes, as :meth:`attributes` (the codec knows how its spans hold them)."""
        ...

    def metric_data(self, metric: Any) -> tuple[str | None, Any]:
        """The set field of ``Metric.data`` (``"gauge"``, ``"sum"``, ...) and its value."""
        ...

    def number(self, point: Any) -> float | None:
        """A ``NumberDataPoint``'s value (``as_int`` or ``as_double``), None when neither is set."""
        ...

    def histogram_sum(self, point: Any) -> float | None:
        """The optional ``sum`` of a (exponential) histogram point."""
        ...


@dataclass
class Rejections:
    """Invalid OTLP items: how many, and the first problem in English (SPEC §11's ``error_message``)."""

    count: int = 0
    first: str | None = None

    def add(self, what: str, problem: str, count: int = 1) -> None:
        self.count += count
        if self.first is None:
            self.first = f"{what}: {problem}"


@dataclass
class Mapped(Generic[T]):
    """Mapped items with the index of the OTLP item each came from (``owners``), plus what was rejected."""

    items: list[T] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)
    rejections: Rejections = field(default_factory=Rejections)
    total: int = 0  # OTLP items seen (spans, log records or data points)


class InvalidItemError(ValueError):
    """One OTLP item cannot be mapped; the message names the problem."""


# ------------------------------------------------------------------------------------------- shared
def _attributes(codec: Codec, key_values: Iterable[Any]) -> dict[str, Any]:
    return codec.attributes(key_values)


def resource_service(resource: dict[str, Any]) -> str:
    value = resource.get("service.name")
    if value is None or value == "":
        return UNKNOWN_SERVICE
    return value if isinstance(value, str) else _encode(value).decode()


def scope_base(codec: Codec, resource: dict[str, Any], scope: Any) -> dict[str, Any]:
    """The resource's attributes overlaid by the scope's, plus ``otel.scope.name`` (SPEC §11)."""
    return {**resource, **_attributes(codec, scope.attributes), SCOPE_NAME: scope.name}


def _nanos(value: int | str) -> int:
    """A 64-bit unix-nano field (OTLP/JSON may send it as a decimal string)."""
    try:
        return int(value)
    except ValueError:
        raise InvalidItemError(f"{value!r} is not an integer") from None


def unix_time(nanos: int, what: str) -> datetime:
    if nanos <= 0:
        raise InvalidItemError(f"{what} is missing")
    try:
        return EPOCH + timedelta(0, 0, nanos // 1000)  # positional: a third of the keyword call's cost
    except OverflowError:
        raise InvalidItemError(f"{what} is out of range") from None


def _ident(codec: Codec, value: Any, length: int, what: str) -> str:
    try:
        text = codec.ident(value)
    except ValueError:
        raise InvalidItemError(f"{what} is not hex") from None
    if text and len(text) != length:
        raise InvalidItemError(f"{what} must be {length // 2} bytes ({length} hex digits)")
    return text


_VERSION_5 = (0xFFFFFFFFFFFF0FFF3FFFFFFFFFFFFFFF, 0x00000000000050008000000000000000)
_SPAN_HASH = hashlib.sha1(SPAN_ID_NAMESPACE.bytes, usedforsecurity=False)
_LOG_HASH = hashlib.sha1(LOG_ID_NAMESPACE.bytes, usedforsecurity=False)


def _signal_id(namespace_hash: Any, identity: bytes) -> UUID:
    """uuid5's construction: SHA-1 of namespace + name, version 5, RFC 4122 variant.

    Hand-built on the hot path (one per span or log record): the namespace is hashed once and copied,
    the version bits are set on the integer, and the id is asyncpg's own ``UUID`` (a ``uuid.UUID``
    subclass, equal and hash-equal to it, the type asyncpg returns for every ``uuid`` column), made from
    the 16 bytes in C: ``uuid.UUID``'s constructor checks its arguments and costs more than the hash.
    Equal to ``UUID(bytes=sha1(namespace.bytes + identity)[:16], version=5)`` (tests check it).
    """
    hasher = namespace_hash.copy()
    hasher.update(identity)
    clear, set_bits = _VERSION_5
    made: UUID = pgproto.UUID(((int.from_bytes(hasher.digest()[:16]) & clear) | set_bits).to_bytes(16))
    return made


def span_signal_id(trace_id: str, span_id: str) -> UUID:
    """A span's deterministic ``signal_id``: from its trace and span ids alone (SPEC §11)."""
    return _signal_id(_SPAN_HASH, f"{trace_id}{span_id}".encode())


def log_signal_id(
    resource: bytes,
    nanos: int,
    severity: tuple[int, str],
    message: str,
    ids: tuple[str, str],
    attributes: dict[str, Any],
) -> UUID:
    """A log record's deterministic ``signal_id``: from its resource (its attributes as sorted JSON), time,
    severity (number and text), body, trace/span ids and own attributes (SPEC §11), so a retried export
    is stored once while two different records never share an id."""
    identity = b"[%s,%d,%d,%s,%s,%s,%s,%s]" % (
        resource,
        nanos,
        severity[0],
        _encode(severity[1]),
        _encode(message),
        _encode(ids[0]),
        _encode(ids[1]),
        _encode_sorted(attributes),
    )
    return _signal_id(_LOG_HASH, identity)


# -------------------------------------------------------------------------------------------- spans
@dataclass
class MappedSpans(Mapped[SpanIn]):
    """Spans, plus each ``exception`` event as an ERROR log owned by its span (``log_owners``)."""

    logs: list[LogIn] = field(default_factory=list)
    log_owners: list[int] = field(default_factory=list)


def map_spans(codec: Codec, request: Any) -> MappedSpans:
    """Every span of an ``ExportTraceServiceRequest`` as a ``SpanIn`` (SPEC §11).

    The typed view of the mapping (tests, the benchmark's JSON twin of an export); ingest builds the
    stored rows straight from the same :func:`span_fields` in ``ingest.otlp_spans``.
    """
    out = MappedSpans()
    for resource_spans in request.resource_spans:
        resource = _attributes(codec, resource_spans.resource.attributes)
        resource_json = _encode_sorted(resource)
        service = resource_service(resource)
        for scope_spans in resource_spans.scope_spans:
            base = scope_base(codec, resource, scope_spans.scope)
            for span in scope_spans.spans:
                index = out.total
                out.total += 1
                try:
                    trace_id, span_id, parent, start_nanos, end_nanos, status, own = span_fields(codec, span)
                    start = unix_time(start_nanos, "start_time_unix_nano")
                    item = SpanIn(
                        signal_id=span_signal_id(trace_id, span_id),
                        trace_id=trace_id,
                        span_id=span_id,
                        parent_span_id=parent,
                        service_name=service,
                        name=span.name,
                        start_time=start,
                        end_time=unix_time(end_nanos, "end_time_unix_nano"),
                        status=status,
                        attributes={**base, **own},
                    )
                    logs = exception_logs(
                        codec, span, (trace_id, span_id, service, start), resource_json, base
                    )
                except ValueError as exc:  # InvalidItemError, or a malformed 64-bit integer string
                    out.rejections.add(f"span {index} ({span.name!r})", str(exc))
                    continue
                out.items.append(item)
                out.owners.append(index)
                if logs:
                    out.logs.extend(logs)
                    out.log_owners.extend([index] * len(logs))
    return out


SpanFields = tuple[str, str, str | None, int, int, str, dict[str, Any]]


def span_fields(codec: Codec, span: Any) -> SpanFields:
    """SPEC §11's rules on one span: ``(trace_id, span_id, parent_span_id, start_nanos, end_nanos, status,
    own attributes)``, the span's attributes plus ``span.kind`` and ``otel.status_description`` (the
    resource's and scope's go under them). ``InvalidItemError`` (a ``ValueError``) names what is wrong.

    The attributes are read first: the protobuf codec of ingest parses them here (``otlp_decoding``),
    and a body the official classes cannot decode must stay a 400 whatever else the span holds."""
    attributes = codec.span_attributes(span)
    trace_id = _ident(codec, span.trace_id, 32, "trace_id")
    span_id = _ident(codec, span.span_id, 16, "span_id")
    if not trace_id or trace_id == _ZERO_TRACE:
        raise InvalidItemError("trace_id is missing or all zero")
    if not span_id or span_id == _ZERO_SPAN:
        raise InvalidItemError("span_id is missing or all zero")
    parent = _ident(codec, span.parent_span_id, 16, "parent_span_id") or None
    name = span.name
    if not name or len(name) > MAX_NAME:
        raise InvalidItemError(f"name must have 1 to {MAX_NAME} characters")
    span_status = span.status
    status = SPAN_STATUS_NAMES.get(span_status.code)
    if status is None:
        raise InvalidItemError(f"status.code {span_status.code} is not 0 (UNSET), 1 (OK) or 2 (ERROR)")
    start_nanos, end_nanos = _nanos(span.start_time_unix_nano), _nanos(span.end_time_unix_nano)
    if end_nanos < start_nanos:  # checked on the nanoseconds: both may fall in the same microsecond
        raise InvalidItemError("end_time_unix_nano is before start_time_unix_nano")
    kind = SPAN_KINDS.get(span.kind)
    if kind is not None:
        attributes["span.kind"] = kind
    message = span_status.message
    if message:
        attributes["otel.status_description"] = message
    return trace_id, span_id, parent, start_nanos, end_nanos, status, attributes


def exception_logs(
    codec: Codec,
    span: Any,
    owner: tuple[str, str, str, datetime],
    resource_json: bytes,
    base: dict[str, Any],
) -> list[LogIn]:
    """The span's ``exception`` events as ERROR logs (``owner``: its trace id, span id, service and start
    time; ``resource_json``: the resource's attributes as sorted JSON, part of a log's id)."""
    events = span.events
    if not events:
        return []
    return [
        _exception_log(codec, event, owner, resource_json, base)
        for event in events
        if event.name == "exception"
    ]


def _exception_log(
    codec: Codec,
    event: Any,
    owner: tuple[str, str, str, datetime],
    resource_json: bytes,
    base: dict[str, Any],
) -> LogIn:
    """A span's ``exception`` event as an ERROR log: ``<exception.type>: <exception.message>``
    (at the event's time, or the span's start when the event has none)."""
    trace_id, span_id, service, start = owner
    own = _attributes(codec, event.attributes)
    kind, text = own.get("exception.type"), own.get("exception.message")
    message = ": ".join(str(part) for part in (kind, text) if part not in (None, ""))
    nanos = _nanos(event.time_unix_nano)
    timestamp = start if nanos <= 0 else unix_time(nanos, "the exception event's time_unix_nano")
    return LogIn(
        signal_id=log_signal_id(resource_json, nanos, (17, "ERROR"), message, (trace_id, span_id), own),
        trace_id=trace_id,
        span_id=span_id,
        service_name=service,
        timestamp=timestamp,
        level="ERROR",
        message=message or "exception",
        attributes={**base, **own},
    )


# --------------------------------------------------------------------------------------------- logs
def severity_level(number: int, text: str) -> str:
    """SPEC §11: 1-8 DEBUG, 9-12 INFO, 13-16 WARN, 17-20 ERROR, 21-24 CRITICAL; 0 from the text, else INFO."""
    if 1 <= number <= 24:
        return _SEVERITY_LEVELS[(number - 1) // 4]
    if number == 0:
        named = LEVELS.get(text.strip().upper())
        return "INFO" if named is None else _LEVEL_NAME[named]
    raise InvalidItemError(f"severity_number {number} is outside 0..24")


_SEVERITY_LEVELS = ("DEBUG", "DEBUG", "INFO", "WARN", "ERROR", "CRITICAL")
_LEVEL_NAME = {LEVELS[name]: name for name in ("DEBUG", "INFO", "WARN", "ERROR", "CRITICAL")}


def map_logs(codec: Codec, request: Any, now: datetime) -> Mapped[LogIn]:
    """Every record of an ``ExportLogsServiceRequest`` as a ``LogIn`` (SPEC §11); ``now`` is the time
    received, the record's time when it has neither ``time_unix_nano`` nor ``observed_time_unix_nano``."""
    out: Mapped[LogIn] = Mapped()
    for resource_logs in request.resource_logs:
        resource = _attributes(codec, resource_logs.resource.attributes)
        resource_json = _encode_sorted(resource)
        service = resource_service(resource)
        for scope_logs in resource_logs.scope_logs:
            base = scope_base(codec, resource, scope_logs.scope)
            for record in scope_logs.log_records:
                index = out.total
                out.total += 1
                try:
                    item = _log(codec, record, service, base, resource_json, now)
                except ValueError as exc:  # InvalidItemError, or a malformed 64-bit integer string
                    out.rejections.add(f"log record {index}", str(exc))
                    continue
                out.items.append(item)
                out.owners.append(index)
    return out


def _log(
    codec: Codec, record: Any, service: str, base: dict[str, Any], resource_json: bytes, now: datetime
) -> LogIn:
    level = severity_level(record.severity_number, record.severity_text)
    nanos = _nanos(record.time_unix_nano) or _nanos(record.observed_time_unix_nano)
    timestamp = now if nanos == 0 else unix_time(nanos, "time_unix_nano")
    trace_id = _ident(codec, record.trace_id, 32, "trace_id")
    span_id = _ident(codec, record.span_id, 16, "span_id")
    body = codec.any_value(record.body)
    message = body if isinstance(body, str) else ("" if body is None else _encode(body).decode())
    own = _attributes(codec, record.attributes)
    ids = (trace_id, span_id)
    severity = (record.severity_number, record.severity_text)
    return LogIn(
        signal_id=log_signal_id(resource_json, nanos, severity, message, ids, own),
        trace_id=None if not trace_id or trace_id == _ZERO_TRACE else trace_id,
        span_id=None if not span_id or span_id == _ZERO_SPAN else span_id,
        service_name=service,
        timestamp=timestamp,
        level=level,
        message=message,
        attributes={**base, **own},
    )


# ------------------------------------------------------------------------------------------ metrics
@lru_cache(maxsize=4096)
def format_bound(value: float) -> str:
    """A bucket bound or quantile as Prometheus writes it (Go's ``FormatFloat(v, 'f', -1, 64)``):
    the shortest round-tripping decimal without exponent (``10``, ``0.5``, ``0.00001``), ``+Inf``."""
    if value == float("inf"):
        return "+Inf"
    if value == float("-inf"):
        return "-Inf"
    if value != value:
        return "NaN"
    return format(Decimal(repr(value)).normalize(), "f")


def _label_values(attributes: dict[str, Any]) -> dict[str, str]:
    """A point's attributes as labels: strings unchanged, any other value as its JSON text."""
    return {
        key: value if isinstance(value, str) else _encode(value).decode() for key, value in attributes.items()
    }


def _count(value: int | str) -> float:
    return float(_nanos(value)) if isinstance(value, str) else float(value)


def _double(value: float | str) -> float:
    if isinstance(value, float):
        return value
    try:
        return float(value)
    except ValueError:
        raise InvalidItemError(f"{value!r} is not a number") from None


def map_metrics(codec: Codec, request: Any) -> Mapped[MetricIn]:
    """Every data point of an ``ExportMetricsServiceRequest`` as one or more ``MetricIn`` (SPEC §11):
    Gauge/Sum one point; Histogram ``_count``, ``_sum`` and cumulative ``_bucket{le}``;
    ExponentialHistogram ``_count`` and ``_sum``; Summary ``_count``, ``_sum`` and ``{quantile}``."""
    out: Mapped[MetricIn] = Mapped()
    for resource_metrics in request.resource_metrics:
        resource = _attributes(codec, resource_metrics.resource.attributes)
        service = resource_service(resource)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind, data = codec.metric_data(metric)
                points = () if data is None else data.data_points
                if kind is None:
                    continue  # a metric without data has no points to store or reject
                for point in points:
                    index = out.total
                    out.total += 1
                    try:
                        rows = _points(codec, kind, metric.name, point, service)
                    except ValueError as exc:  # InvalidItemError, or a malformed 64-bit integer string
                        out.rejections.add(f"data point {index} of {metric.name!r}", str(exc))
                        continue
                    out.items.extend(rows)
                    out.owners.extend([index] * len(rows))
    return out


def _points(codec: Codec, kind: str, name: str, point: Any, service: str) -> list[MetricIn]:
    if not name or len(name) > MAX_NAME - len("_bucket"):
        raise InvalidItemError(f"the metric name must have 1 to {MAX_NAME - len('_bucket')} characters")
    timestamp = unix_time(_nanos(point.time_unix_nano), "time_unix_nano")
    labels = _label_values(_attributes(codec, point.attributes))

    def one(suffix: str, value: float, extra: dict[str, str] | None = None) -> MetricIn:
        return MetricIn(
            name=name + suffix,
            value=value,
            service_name=service,
            timestamp=timestamp,
            labels={**labels, **extra} if extra else labels,
        )

    if kind in ("gauge", "sum"):
        value = codec.number(point)
        if value is None:
            raise InvalidItemError("the data point has neither as_int nor as_double")
        return [one("", value)]
    count = _count(point.count)
    if kind == "summary":
        rows = [one("_count", count), one("_sum", _double(point.sum))]
        for quantile in point.quantile_values:
            quantile_label = {"quantile": format_bound(_double(quantile.quantile))}
            rows.append(one("", _double(quantile.value), quantile_label))
        return rows
    total = codec.histogram_sum(point)
    rows = [one("_count", count)]
    if total is not None:
        rows.append(one("_sum", total))
    if kind == "histogram":
        rows.extend(_buckets(point, count, one))
    return rows


def _buckets(point: Any, count: float, one: Any) -> list[MetricIn]:
    """Cumulative ``_bucket`` points, ``le`` ascending, ``+Inf`` last with the total count (Prometheus)."""
    bounds = [_double(bound) for bound in point.explicit_bounds]
    counts = [_count(value) for value in point.bucket_counts]
    if counts and len(counts) != len(bounds) + 1:
        raise InvalidItemError(
            f"{len(counts)} bucket_counts for {len(bounds)} explicit_bounds (expected one more)"
        )
    rows = []
    cumulative = 0.0
    for bound, bucket in zip(bounds, counts, strict=False):
        cumulative += bucket
        rows.append(one("_bucket", cumulative, {"le": format_bound(bound)}))
    rows.append(one("_bucket", count, {"le": "+Inf"}))
    return rows
