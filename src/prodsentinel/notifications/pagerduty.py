"""The ``pagerduty`` kind: PagerDuty Events API v2 (``PRODSENTINEL_PAGERDUTY_URL``).

One stable ``dedup_key`` per alert or incident (``prodsentinel:<project>:<subject>``, stored in the
channel state on the first accepted event and reused from there), so PagerDuty folds every event about
it into one PagerDuty incident: firing/opened/escalated/reopened -> ``trigger``, acknowledged ->
``acknowledge``, resolved -> ``resolve``. Severity low/medium/high/critical -> info/warning/error/
critical. Events without a subject (TEST, CHANNEL_DISABLED) trigger with a key of their own event.
The routing key travels in the body (the Events API has no auth header); it is never logged.

:func:`event_body` is pure; :func:`send` makes the call.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from prodsentinel.notifications import messages
from prodsentinel.notifications.repositories import ClaimedItem
from prodsentinel.notifications.sending import (
    SECRET_UNAVAILABLE,
    AttemptFacts,
    SendContext,
    Timer,
    event_of,
    http_call,
    resolve_secret,
)

__all__ = ("SEVERITY", "dedup_key", "event_body", "send")

SEVERITY: Final = {"low": "info", "medium": "warning", "high": "error", "critical": "critical"}
_ACTION: Final = {"trigger": "trigger", "acknowledge": "acknowledge", "resolve": "resolve", "info": "trigger"}


def dedup_key(item: ClaimedItem) -> str:
    """The stored key, else the one derived from the subject (or, without one, the event)."""
    if item.state and item.state.get("dedup_key"):
        return str(item.state["dedup_key"])
    return f"prodsentinel:{item.project_id}:{item.subject or f'event:{item.event_id}'}"


def event_body(event: dict[str, Any], *, routing_key: str, key: str) -> dict[str, Any]:
    """The Events API v2 body of one event (pure)."""
    summary = messages.summarize(event)
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": _ACTION[summary.phase],
        "dedup_key": key,
    }
    if body["event_action"] == "trigger":
        payload = {
            "summary": f"{summary.headline}: {summary.text}"[:1024],
            "source": "prodsentinel",
            "severity": SEVERITY.get(summary.severity, "warning"),
            "timestamp": summary.occurred_at or None,
            "component": dict(summary.facts).get("Service"),
            "class": summary.event_type,
            "custom_details": dict(summary.facts),
        }
        body["payload"] = {name: value for name, value in payload.items() if value is not None}
    return body


async def send(ctx: SendContext, item: ClaimedItem) -> AttemptFacts:
    timer = Timer(item)
    routing_key, available = resolve_secret(item)
    if not available or not routing_key:
        return timer.facts(None, SECRET_UNAVAILABLE)
    key = dedup_key(item)
    body = event_body(event_of(item), routing_key=routing_key, key=key)
    reply = await http_call(
        ctx, ctx.config.pagerduty_url, msgspec.json.encode(body), {"Content-Type": "application/json"}
    )
    state = None
    if reply.error_code is None and item.subject is not None:
        state = {"dedup_key": str(reply.json().get("dedup_key") or key)}
    return timer.facts(reply.status, reply.error_code, reply.retry_after, state)
