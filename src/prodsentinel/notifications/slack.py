"""The ``slack`` kind: an incoming webhook, or a bot token that posts once and then updates.

- Incoming webhook (``url``): each event is a new message, Block Kit ``blocks`` with ``text`` as the
  fallback (notifications and clients without blocks show it).
- Bot token (``token``/``token_env`` + ``slack_channel``): the first event of an alert or incident is
  ``chat.postMessage``; its acknowledgement and resolution (and escalation) rewrite that same message
  with ``chat.update`` using the stored ``ts`` (and the channel id Slack answered with, which
  ``chat.update`` requires). A start event after a resolution (the alert fires again) posts a new
  message; a replay never does (it updates). Slack answers API errors as HTTP 200 ``{"ok": false}``:
  transient ones (``ratelimited``, ``internal_error``, ...) are retried, others are dead; an update of a
  message Slack no longer has posts a new one.

The builders are pure; :func:`send` makes the call(s).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from prodsentinel.notifications import messages
from prodsentinel.notifications.repositories import ClaimedItem
from prodsentinel.notifications.sending import (
    SECRET_UNAVAILABLE,
    AttemptFacts,
    HttpReply,
    SendContext,
    Timer,
    event_of,
    http_call,
    resolve_secret,
)

__all__ = ("message", "send")

_EMOJI: Final = {"trigger": ":red_circle:", "acknowledge": ":eyes:", "resolve": ":white_check_mark:"}
_TRANSIENT: Final = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
_GONE_MESSAGE: Final = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})


def message(summary: messages.Summary) -> dict[str, Any]:
    """Block Kit message with a text fallback (pure)."""
    emoji = _EMOJI.get(summary.phase, ":information_source:")
    fields = [{"type": "mrkdwn", "text": f"*{name}*\n{value}"} for name, value in summary.facts[:10]]
    return {
        "text": f"{summary.headline}: {summary.text}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": summary.headline[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{emoji} {summary.text}"}},
            {"type": "section", "fields": fields},
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"ProdSentinel · {summary.occurred_at}"}],
            },
        ],
    }


def _api_error(reply: HttpReply) -> tuple[str | None, str | None]:
    """``(error_code, slack_error)`` of a Web API reply that was HTTP 2xx."""
    body = reply.json()
    if body.get("ok") is True:
        return None, None
    error = str(body.get("error", "unknown"))
    return ("api_unavailable" if error in _TRANSIENT else "api_rejected"), error


async def send(ctx: SendContext, item: ClaimedItem) -> AttemptFacts:
    event = event_of(item)
    summary = messages.summarize(event)
    body = message(summary)
    timer = Timer(item)
    if item.url:
        reply = await http_call(
            ctx, item.url, msgspec.json.encode(body), {"Content-Type": "application/json"}
        )
        return timer.facts(reply.status, reply.error_code, reply.retry_after)
    token, available = resolve_secret(item)
    if not available or not token:
        return timer.facts(None, SECRET_UNAVAILABLE)
    headers = {"Content-Type": "application/json; charset=utf-8", "Authorization": f"Bearer {token}"}
    state = dict(item.state or {})
    new_thread = not state.get("ts") or (
        state.get("closed") and item.event_type in messages.START_EVENTS and not item.replayed
    )
    base = ctx.config.slack_api_url
    if not new_thread:
        update = {**body, "channel": state["channel"], "ts": state["ts"]}
        reply = await http_call(ctx, f"{base}/chat.update", msgspec.json.encode(update), headers)
        if reply.error_code is not None:
            return timer.facts(reply.status, reply.error_code, reply.retry_after)
        code, error = _api_error(reply)
        if error not in _GONE_MESSAGE:
            state["closed"] = summary.phase == "resolve"
            return timer.facts(reply.status, code, None, state if code is None else None)
    post = {**body, "channel": item.slack_channel}
    reply = await http_call(ctx, f"{base}/chat.postMessage", msgspec.json.encode(post), headers)
    if reply.error_code is not None:
        return timer.facts(reply.status, reply.error_code, reply.retry_after)
    code, _ = _api_error(reply)
    if code is not None or item.subject is None:
        return timer.facts(reply.status, code)
    answer = reply.json()
    new_state = {
        "ts": str(answer.get("ts", "")),
        "channel": str(answer.get("channel") or item.slack_channel),
        "closed": summary.phase == "resolve",
    }
    return timer.facts(reply.status, None, None, new_state)
