"""A Litestar store that keeps working while its Redis is away: per-process memory meanwhile.

Why: the rate limiter reads and writes its counters on every non-ingest request. With the stock
``RedisStore`` a stopped Redis turned every query, ack and admin call into a 500, although Redis only
holds rate-limit counters (nothing the API needs to answer). Limits are a guard, not data: while Redis
is unreachable each process counts on its own (``MemoryStore``), which keeps the per-key limit per
instance, and a warning says so once per outage. Redis is tried again every ``RETRY_SECONDS``, so an
outage costs one failed call per interval, not one per request.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import structlog
from litestar.stores.base import Store
from redis.exceptions import RedisError

__all__ = ("RETRY_SECONDS", "FallbackStore")

logger = structlog.get_logger("prodsentinel.stores")

#: Seconds between two attempts to use Redis again once it failed.
RETRY_SECONDS = 5.0

T = TypeVar("T")
_UNAVAILABLE = (RedisError, OSError)


class FallbackStore(Store):
    """``primary`` (Redis) while it answers; ``fallback`` (memory) while it does not."""

    __slots__ = ("_down_until", "_fallback", "_name", "_primary")

    def __init__(self, primary: Store, fallback: Store, *, name: str) -> None:
        self._primary = primary
        self._fallback = fallback
        self._name = name
        self._down_until: float | None = None

    async def _use(self, call: Callable[[Store], Awaitable[T]]) -> T:
        if self._down_until is not None and time.monotonic() < self._down_until:
            return await call(self._fallback)
        try:
            result = await call(self._primary)
        except _UNAVAILABLE as exc:
            if self._down_until is None:
                logger.warning("store_degraded_to_memory", store=self._name, error=repr(exc))
            self._down_until = time.monotonic() + RETRY_SECONDS
            return await call(self._fallback)
        if self._down_until is not None:
            logger.warning("store_recovered", store=self._name)
            self._down_until = None
        return result

    async def set(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> None:
        await self._use(lambda store: store.set(key, value, expires_in))

    async def get(self, key: str, renew_for: int | timedelta | None = None) -> bytes | None:
        return await self._use(lambda store: store.get(key, renew_for))

    async def delete(self, key: str) -> None:
        await self._use(lambda store: store.delete(key))

    async def delete_all(self) -> None:
        await self._use(lambda store: store.delete_all())

    async def exists(self, key: str) -> bool:
        return await self._use(lambda store: store.exists(key))

    async def expires_in(self, key: str) -> int | None:
        return await self._use(lambda store: store.expires_in(key))
