"""Wire format of the ingest endpoints (SPEC §4): strict msgspec structs decoded straight from the body.

Types are checked by msgspec in the one decoding pass (strict: ``"7"`` is not an int, unknown fields are
ignored). Rules msgspec cannot express (case-insensitive level, timestamps before the epoch or more than
24 h in the future, ``end_time >= start_time``, NUL characters PostgreSQL refuses) are checked afterwards
by ``ingest.services``, still on these structs, never on dicts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec

from prodsentinel.lib.structs import Struct

__all__ = (
    "IngestAccepted",
    "IngestError",
    "IngestErrorBody",
    "LogIn",
    "MetricIn",
    "SpanIn",
)

#: Identifiers and names: non-empty, bounded (they are indexed).
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
Ident = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]

_LEVEL_DOC = "DEBUG, INFO, WARN, WARNING (stored as WARN), ERROR or CRITICAL; case-insensitive."
_TS_DOC = (
    "RFC 3339; a timestamp without offset is UTC. Before 1970-01-01T00:00:00Z or more than 24 h in the "
    "future is invalid."
)


class LogIn(Struct):
    """One log record."""

    signal_id: Annotated[UUID, msgspec.Meta(description="Client-chosen id; a re-sent id is stored once.")]
    service_name: Name
    timestamp: Annotated[datetime, msgspec.Meta(description=_TS_DOC)]
    level: Annotated[str, msgspec.Meta(description=_LEVEL_DOC, max_length=16)]
    message: str
    trace_id: Ident | None = None
    span_id: Ident | None = None
    attributes: dict[str, Any] | None = None


class SpanIn(Struct):
    """One span of a trace."""

    signal_id: UUID
    trace_id: Ident
    span_id: Ident
    service_name: Name
    name: Name
    start_time: Annotated[datetime, msgspec.Meta(description=_TS_DOC)]
    end_time: Annotated[datetime, msgspec.Meta(description="RFC 3339, >= start_time; same bounds.")]
    parent_span_id: Ident | None = None
    status: Annotated[str, msgspec.Meta(description="UNSET, OK or ERROR.", max_length=16)] = "UNSET"
    attributes: dict[str, Any] | None = None


class MetricIn(Struct):
    """One metric point; without ``signal_id`` the server derives a deterministic one (retries stay one)."""

    name: Name
    value: Annotated[float, msgspec.Meta(description="A finite number.")]
    service_name: Name
    timestamp: Annotated[datetime, msgspec.Meta(description=_TS_DOC)]
    signal_id: UUID | None = None
    labels: dict[str, str] | None = None


class IngestAccepted(Struct):
    """202: every item is durably stored (``accepted`` new, ``duplicates`` already stored or repeated)."""

    accepted: int
    duplicates: int


class IngestError(Struct):
    index: Annotated[int, msgspec.Meta(description="0-based array position or non-empty NDJSON line.")]
    path: Annotated[str, msgspec.Meta(description="Field path inside the item, e.g. `$.timestamp`.")]
    message: str


class IngestErrorBody(Struct):
    """Error body of the ingest endpoints; ``errors`` lists the invalid items of a 422 (nothing stored)."""

    detail: str
    request_id: str
    errors: list[IngestError] | None = None
