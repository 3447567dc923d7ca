"""Live events for the frontend's SSE stream (incident_opened/escalated/resolved, alert_firing/resolved).

Published after the transaction that caused them commits, from API processes and SAQ workers alike,
over a cross-process backend (Redis pub/sub when ``REDIS_URL`` is set, PostgreSQL LISTEN/NOTIFY
otherwise) so every API instance's ``/api/v1/events/stream`` sees every event of the key's project.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

__all__ = ("publish_event",)


async def publish_event(event_type: str, project_id: UUID, data: dict[str, Any]) -> None:
    """Publish one event (best effort: a lost live event is not a lost notification; the outbox is)."""
    # Seam: the events/SSE work wires the channels backend here.
    return None
