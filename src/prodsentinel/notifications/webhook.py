"""The ``webhook`` kind: the event JSON POSTed to ``url``, signed per the channel's ``signing``.

``prodsentinel`` (default, SPEC §8): ``signing.delivery_headers``; ``standard``: Standard Webhooks
(``standard_webhooks.headers``). Both also carry ``X-ProdSentinel-Delivery-Id`` and ``-Event-Id`` so a
receiver can tell a replay (new delivery id) from a retry. The body is the stored event as is.
"""

from __future__ import annotations

import time

import structlog

from prodsentinel.notifications import signing, standard_webhooks
from prodsentinel.notifications.repositories import ClaimedItem
from prodsentinel.notifications.sending import (
    SECRET_UNAVAILABLE,
    AttemptFacts,
    SendContext,
    Timer,
    http_call,
    resolve_secret,
)

__all__ = ("request_headers", "send")

logger = structlog.get_logger("prodsentinel.notifications")


def request_headers(item: ClaimedItem, secret: str | None, timestamp: int) -> dict[str, str]:
    """The headers of one attempt (pure). ValueError: a ``standard`` secret that is not ``whsec_``."""
    if item.signing == "standard":
        keys = standard_webhooks.parse_secrets(secret) if secret else None
        headers = standard_webhooks.headers(
            msg_id=str(item.event_id), timestamp=timestamp, body=item.body, keys=keys
        )
        headers[signing.DELIVERY_ID_HEADER] = str(item.delivery_id)
        headers[signing.EVENT_ID_HEADER] = str(item.event_id)
        return headers
    return signing.delivery_headers(
        delivery_id=item.delivery_id,
        event_id=item.event_id,
        timestamp=timestamp,
        body=item.body,
        secret=secret,
    )


async def send(ctx: SendContext, item: ClaimedItem) -> AttemptFacts:
    timer = Timer(item)
    secret, available = resolve_secret(item)
    try:
        if not available:
            raise ValueError("unset")
        headers = request_headers(item, secret, int(time.time()))
    except ValueError:
        # An unset variable, or one holding a secret that is not whsec_<base64>: fixing it recovers.
        logger.warning("webhook_secret_unavailable", channel=item.channel_name, secret_env=item.secret_env)
        return timer.facts(None, SECRET_UNAVAILABLE)
    assert item.url is not None
    reply = await http_call(ctx, item.url, item.body, headers)
    return timer.facts(reply.status, reply.error_code, reply.retry_after)
