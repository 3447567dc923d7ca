"""The per-request API-key check on a raw asyncpg pool: coalesced, prepared, indexed; no ORM session.

The key is still looked up for every request (no cache): each request waits for a query that *started
after it arrived*, so a revocation committed before a request is seen by that request on every
instance. Concurrent requests share that query ("natural batching", as the ingest group commit does):
while one lookup query runs, the prefixes of newly arrived requests gather and go out together in the
next one, so N concurrent ingest requests cost one round trip instead of N ORM sessions.
The one key check of the service: ``ps_<prefix>_<secret>``, the secret's SHA-256 compared in
constant time, revoked keys refused.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from prodsentinel.auth.scopes import Principal, expand_scopes
from prodsentinel.auth.services import hash_secret, split_key
from prodsentinel.lib.unavailable import is_database_unavailable

__all__ = ("KEY_LOOKUP_STATE_KEY", "CoalescingKeyLookup", "KeyLookup")

#: ``app.state`` key of an optional fast :data:`KeyLookup` used by the authentication middleware.
KEY_LOOKUP_STATE_KEY = "api_key_lookup"

KeyLookup = Callable[[str], Awaitable[Principal | None]]
_Row = tuple[Any, ...]

_SQL = """
SELECT k.prefix, k.id, k.name, k.project_id, p.name, k.key_hash, k.scopes
FROM api_keys k JOIN projects p ON p.id = k.project_id
WHERE k.prefix = ANY($1::text[]) AND k.revoked_at IS NULL
"""


class CoalescingKeyLookup:
    """Callable ``await lookup(raw_key) -> Principal | None``, batching concurrent lookups per round."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._waiting: dict[str, list[asyncio.Future[_Row | None]]] = {}
        self._running = False

    async def __call__(self, raw_key: str) -> Principal | None:
        parts = split_key(raw_key)
        if parts is None:
            return None
        prefix, secret = parts
        future: asyncio.Future[_Row | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(prefix, []).append(future)
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        row = await future
        if row is None or not hmac.compare_digest(row[5], hash_secret(secret)):
            return None
        return Principal(
            key_id=row[1],
            key_name=row[2],
            project_id=row[3],
            project_name=row[4],
            scopes=expand_scopes(row[6]),
        )

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
                for prefix, futures in batch.items():
                    for future in futures:
                        if not future.done():
                            future.set_result(rows.get(prefix))
        finally:
            self._running = False

    async def _fetch(self, prefixes: list[str]) -> dict[str, _Row]:
        """The active keys of ``prefixes``; once more on a fresh connection if the first was dead.

        A read, so repeating it is harmless; a database that is really away fails the retry too, and
        ``lib.errors`` answers that 503 (``lib.unavailable``).
        """
        for attempt in (1, 2):
            try:
                return {row[0]: tuple(row) for row in await self._pool.fetch(_SQL, prefixes)}
            except Exception as exc:
                if attempt == 2 or not is_database_unavailable(exc):
                    raise
        raise AssertionError("unreachable")
