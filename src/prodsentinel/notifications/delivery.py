"""One attempt per claimed item, by the sender of the item's channel kind -> its facts.

No database here: the dispatcher claims items, calls :func:`send_batch`, then records the results.
:data:`SENDERS` is the registry: one module per kind (``webhook``, ``slack``, ``mail``, ``pagerduty``,
``teams``), each a pure "event -> request" builder plus its transport call, all through the shared,
egress-guarded HTTP client (``transport``) or the batch's SMTP pool.

Items of one channel about one subject (an alert, an incident) are sent one after the other, oldest
first, each seeing the state the previous one left (the Slack ``ts`` of the message just posted, the
root mail's Message-ID): a firing and its resolution claimed together update one message instead of
posting two. Everything else goes out concurrently, at most ``concurrency`` at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence

import structlog

from prodsentinel.notifications import mail, pagerduty, slack, teams, webhook
from prodsentinel.notifications.repositories import ClaimedItem
from prodsentinel.notifications.sending import (
    SECRET_UNAVAILABLE,
    AttemptFacts,
    KindConfig,
    SendContext,
    Timer,
)
from prodsentinel.notifications.transport import LaneTransport, close_client, shared_client
from prodsentinel.settings import Settings

__all__ = (
    "SECRET_UNAVAILABLE",
    "SENDERS",
    "AttemptFacts",
    "LaneTransport",
    "close_client",
    "send_batch",
    "shared_client",
)

logger = structlog.get_logger("prodsentinel.notifications")

Sender = Callable[[SendContext, ClaimedItem], Awaitable[AttemptFacts]]

#: Channel kind -> its sender.
SENDERS: dict[str, Sender] = {
    "webhook": webhook.send,
    "slack": slack.send,
    "email": mail.send,
    "pagerduty": pagerduty.send,
    "teams": teams.send,
}


def _groups(items: Sequence[ClaimedItem]) -> list[list[ClaimedItem]]:
    """Items in sending order: one group per (channel, subject), singletons for the rest."""
    groups: dict[object, list[ClaimedItem]] = {}
    for item in items:
        key = (item.channel_id, item.subject) if item.subject is not None else item.id
        groups.setdefault(key, []).append(item)
    return list(groups.values())


async def send_batch(
    items: Sequence[ClaimedItem], settings: Settings, *, concurrency: int
) -> list[AttemptFacts]:
    """Send a claimed batch: groups concurrently (at most ``concurrency`` sends in flight), each group's
    items in turn. The facts come back in the order of ``items``."""
    config = KindConfig.of(settings)
    ctx = SendContext(client=shared_client(block_private=config.block_private), config=config)
    gate = asyncio.Semaphore(concurrency)
    facts: dict[object, AttemptFacts] = {}

    async def run_group(group: list[ClaimedItem]) -> None:
        carried = None
        for item in group:
            if carried is not None:
                item = dataclasses.replace(item, state=carried)
            sender = SENDERS.get(item.kind)
            if sender is None:  # a row no API could write: dead, not a crash of everyone's batch
                fact = Timer(item).facts(None, "invalid_request")
            else:
                async with gate:
                    fact = await sender(ctx, item)
            facts[item.id] = fact
            if fact.state is not None:
                carried = fact.state

    try:
        await asyncio.gather(*(run_group(group) for group in _groups(items)))
    finally:
        pool = ctx.resources.get("smtp")
        if pool is not None:
            await pool.close()
    return [facts[item.id] for item in items]
