"""The one after-commit mechanism: work that must follow a commit, never precede or outlive a rollback.

Outbox wake-ups (enqueue the dispatcher), live SSE events and job enqueues (incident analysis) announce
state that a transaction wrote. Run before the commit, a worker could look for the row and not find it
yet; run after a rollback, it would announce something that never happened. So services register such
work on their session with :func:`after_commit` while they write, and the unit-of-work boundary runs
it once the commit has succeeded:

- a request: :func:`with_after_commit` wraps advanced-alchemy's autocommit handler (commit on 2xx,
  roll back otherwise) and then runs what the committed transaction registered;
- a task or CLI unit of work: ``lib.database.session_scope`` does the same after its commit.

Registration goes into ``Session.info``; SQLAlchemy's ``after_commit`` event moves it to a "ready" list
and ``after_rollback`` drops it, so what runs is exactly what was committed, whoever committed it.
The work is best effort by design: each action is awaited in turn and a failure is logged, not raised
(the transaction is already committed, and every action is backed by a cron that finds the same work
by high-water mark or due time). Identical registrations run once (ten outbox events in one
transaction wake the dispatcher once).

Before this module the same idea was written three ways: Litestar ``BackgroundTask``s in two
controllers, an ``announce()`` each service called after its own ``session_scope``, and inline code
after the commit in the alert evaluator; deleting a policy, which resolves its alerts, used none of
them and left the dispatcher asleep until its next cron tick.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import structlog
from advanced_alchemy.extensions.litestar._utils import get_aa_scope_state
from litestar.constants import HTTP_RESPONSE_START
from litestar.types import Message, Scope
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

__all__ = ("after_commit", "discard", "pending_count", "run_committed", "with_after_commit")

logger = structlog.get_logger("prodsentinel.after_commit")

Action = Callable[..., Awaitable[Any]]
_Entry = tuple[Action, tuple[Any, ...], dict[str, Any]]
BeforeSend = Callable[[Message, Scope], Awaitable[None]]

_PENDING = "prodsentinel.after_commit.pending"
_READY = "prodsentinel.after_commit.ready"


def after_commit(session: AsyncSession, action: Action, /, *args: Any, **kwargs: Any) -> None:
    """Run ``await action(*args, **kwargs)`` once ``session``'s current transaction has committed."""
    session.sync_session.info.setdefault(_PENDING, []).append((action, args, kwargs))


def pending_count(session: AsyncSession) -> int:
    """Registered actions not yet committed (for tests and assertions)."""
    return len(session.sync_session.info.get(_PENDING, ()))


def discard(session: AsyncSession) -> None:
    """Forget everything registered on ``session`` (committed or not)."""
    session.sync_session.info.pop(_PENDING, None)
    session.sync_session.info.pop(_READY, None)


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if pending:
        session.info.setdefault(_READY, []).extend(pending)


@event.listens_for(Session, "after_rollback")
def _rolled_back(session: Session) -> None:
    session.info.pop(_PENDING, None)


def _key(entry: _Entry) -> Hashable | None:
    action, args, kwargs = entry
    key = (action, args, tuple(sorted(kwargs.items())))
    try:
        hash(key)
    except TypeError:
        return None
    return key


async def run_committed(session: AsyncSession) -> int:
    """Run the actions of ``session``'s committed transactions, each once; returns how many ran."""
    ready: list[_Entry] = session.sync_session.info.pop(_READY, None) or []
    seen: set[Hashable] = set()
    ran = 0
    for entry in ready:
        key = _key(entry)
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        action, args, kwargs = entry
        try:
            await action(*args, **kwargs)
        except Exception:
            logger.warning(
                "after_commit_failed", action=getattr(action, "__qualname__", repr(action)), exc_info=True
            )
        ran += 1
    return ran


def with_after_commit(commit_handler: BeforeSend, session_scope_key: str) -> BeforeSend:
    """Wrap advanced-alchemy's autocommit handler: commit on 2xx (else roll back), then run the committed
    actions. ``session_scope_key`` must be the config's own: advanced-alchemy numbers it per config
    instance (``_sqlalchemy_db_session_1``), so the default key finds no session."""

    async def before_send_handler(message: Message, scope: Scope) -> None:
        session: AsyncSession | None = get_aa_scope_state(scope, session_scope_key)
        await commit_handler(message, scope)
        if session is not None and message["type"] == HTTP_RESPONSE_START:
            await run_committed(session)

    return before_send_handler
