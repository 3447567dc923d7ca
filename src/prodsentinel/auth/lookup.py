"""The per-request API-key and session checks on a raw asyncpg pool: coalesced, prepared, indexed.

The key is still looked up for every request (no cache): each request waits for a query that *started
after it arrived*, so a revocation committed before a request is seen by that request on every
instance. Concurrent requests share that query ("natural batching", as the ingest group commit does):
while one lookup query runs, the prefixes of newly arrived requests gather and go out together in the
next one, so N concurrent ingest requests cost one round trip instead of N ORM sessions.
The one key check of the service: ``ps_<prefix>_<secret>``, the secret's SHA-256 compared in
constant time, revoked keys refused.

A person's session (SPEC §15) is checked the same way: a token's signature alone is never enough, the
session row must still be open, its user enabled and its membership present, so a logout (or a
disabled user, or a removed membership) is refused on the next request on every instance.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import asyncpg

from prodsentinel.auth.scopes import ROLE_SCOPES, Principal, expand_scopes
from prodsentinel.auth.services import hash_secret, split_key
from prodsentinel.lib.unavailable import is_database_unavailable

__all__ = (
    "KEY_LOOKUP_STATE_KEY",
    "SESSION_LOOKUP_STATE_KEY",
    "CoalescingKeyLookup",
    "CoalescingSessionLookup",
    "KeyLookup",
    "SessionLookup",
)

#: ``app.state`` key of an optional fast :data:`KeyLookup` used by the authentication middleware.
KEY_LOOKUP_STATE_KEY = "api_key_lookup"
#: ``app.state`` key of the :data:`SessionLookup` that checks people's tokens and cookies.
SESSION_LOOKUP_STATE_KEY = "session_lookup"

KeyLookup = Callable[[str], Awaitable[Principal | None]]
SessionLookup = Callable[[UUID], Awaitable[Principal | None]]
_Row = tuple[Any, ...]

_KEY_SQL = """
SELECT k.prefix, k.id, k.name, k.project_id, p.name, k.key_hash, k.scopes
FROM api_keys k JOIN projects p ON p.id = k.project_id
WHERE k.prefix = ANY($1::text[]) AND k.revoked_at IS NULL
"""

_SESSION_SQL = """
SELECT s.id::text, s.id, u.email, s.project_id, p.name, m.role, u.id
FROM user_sessions s
JOIN users u ON u.id = s.user_id
JOIN memberships m ON m.user_id = s.user_id AND m.project_id = s.project_id
JOIN projects p ON p.id = s.project_id
WHERE s.id = ANY($1::text[]::uuid[]) AND s.revoked_at IS NULL AND s.expires_at > now()
  AND u.disabled_at IS NULL
"""


class _CoalescingLookup:
    """Rows of ``sql`` by their first column (text), concurrent lookups batched into one query per round.

    ``sql`` takes one ``text[]`` parameter, the keys, and returns each row's key first.
    """

    def __init__(self, pool: asyncpg.Pool, sql: str) -> None:
        self._pool = pool
        self._sql = sql
        self._waiting: dict[str, list[asyncio.Future[_Row | None]]] = {}
        self._running = False

    async def _row(self, key: str) -> _Row | None:
        future: asyncio.Future[_Row | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, {}
                try:
                    rows = await self._fetch(list(batch))
                except Exception as exc:
                    for futures in batch.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                for key, futures in batch.items():
                    for future in futures:
                        if not future.done():
                            future.set_result(rows.get(key))
        finally:
            self._running = False

    async def _fetch(self, keys: list[str]) -> dict[str, _Row]:
        """The rows of ``keys``; once more on a fresh connection if the first was dead.

        A read, so repeating it is harmless; a database that is really away fails the retry too, and
        ``lib.errors`` answers that 503 (``lib.unavailable``).
        """
        for attempt in (1, 2):
            try:
                return {row[0]: tuple(row) for row in await self._pool.fetch(self._sql, keys)}
            except Exception as exc:
                if attempt == 2 or not is_database_unavailable(exc):
                    raise
        raise AssertionError("unreachable")


class CoalescingKeyLookup(_CoalescingLookup):
    """Callable ``await lookup(raw_key) -> Principal | None``: the caller of an active API key."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool, _KEY_SQL)

    async def __call__(self, raw_key: str) -> Principal | None:
        parts = split_key(raw_key)
        if parts is None:
            return None
        prefix, secret = parts
        row = await self._row(prefix)
        if row is None or not hmac.compare_digest(row[5], hash_secret(secret)):
            return None
        return Principal(
            key_id=row[1],
            key_name=row[2],
            project_id=row[3],
            project_name=row[4],
            scopes=expand_scopes(row[6]),
        )


class CoalescingSessionLookup(_CoalescingLookup):
    """Callable ``await lookup(session_id) -> Principal | None``: an open session's person and role."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool, _SESSION_SQL)

    async def __call__(self, session_id: UUID) -> Principal | None:
        row = await self._row(str(session_id))
        if row is None:
            return None
        return Principal(
            key_id=row[1],
            key_name=row[2],
            project_id=row[3],
            project_name=row[4],
            scopes=expand_scopes([ROLE_SCOPES[row[5]]]),
            user_email=row[2],
            user_id=row[6],
            role=row[5],
        )
