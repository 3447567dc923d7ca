"""The ``teams`` kind: a Microsoft Teams Workflows webhook ``url`` receiving an Adaptive Card.

Workflows ("Post to a channel when a webhook request is received") take a ``message`` whose
attachment is an Adaptive Card (``application/vnd.microsoft.card.adaptive``, schema 1.4). Each event is
a new card; Workflows cannot update a posted card. :func:`card_message` is pure.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from prodsentinel.notifications import messages
from prodsentinel.notifications.repositories import ClaimedItem
from prodsentinel.notifications.sending import AttemptFacts, SendContext, Timer, event_of, http_call

__all__ = ("CARD_CONTENT_TYPE", "card_message", "send")

CARD_CONTENT_TYPE: Final = "application/vnd.microsoft.card.adaptive"
_COLOR: Final = {"trigger": "Attention", "acknowledge": "Warning", "resolve": "Good"}


def card_message(summary: messages.Summary) -> dict[str, Any]:
    """The Workflows message holding one Adaptive Card (pure)."""
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {
                "type": "TextBlock",
                "text": summary.headline,
                "weight": "Bolder",
                "size": "Medium",
                "wrap": True,
                "color": _COLOR.get(summary.phase, "Default"),
            },
            {"type": "TextBlock", "text": summary.text, "wrap": True},
            {"type": "FactSet", "facts": [{"title": name, "value": value} for name, value in summary.facts]},
        ],
        "msteams": {"width": "Full"},
    }
    return {
        "type": "message",
        "summary": summary.headline,
        "attachments": [{"contentType": CARD_CONTENT_TYPE, "contentUrl": None, "content": card}],
    }


async def send(ctx: SendContext, item: ClaimedItem) -> AttemptFacts:
    timer = Timer(item)
    body = msgspec.json.encode(card_message(messages.summarize(event_of(item))))
    assert item.url is not None
    reply = await http_call(ctx, item.url, body, {"Content-Type": "application/json"})
    return timer.facts(reply.status, reply.error_code, reply.retry_after)
