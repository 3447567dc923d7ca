"""Failed-login limits per email and per client address (SPEC §15): 429 + ``Retry-After``.

Why both: per email stops guessing one person's password from many addresses; per address stops one
client from trying many emails. Only failures count, but a limited email or address is refused even
with the right password until its window ends, or the limit would only slow a guesser down.
The counters live in the ``login`` store: Redis when ``REDIS_URL`` is set (shared by every instance,
through ``lib.stores.FallbackStore``), this process's memory otherwise. Fixed windows: a counter key
per window, expiring with it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

from litestar.stores.base import Store

from prodsentinel.lib.errors import TooManyRequestsError

__all__ = ("LOGIN_STORE", "LoginLimiter")

#: Name of the Litestar store holding the counters (``plugins.stores``).
LOGIN_STORE = "login"

_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True, slots=True)
class _Rule:
    count: int
    seconds: int

    @classmethod
    def of(cls, rule: tuple[Literal["second", "minute", "hour", "day"], int]) -> _Rule:
        unit, count = rule
        return cls(count=count, seconds=_UNIT_SECONDS[unit])


class LoginLimiter:
    """``check`` before verifying a password, ``failed``/``succeeded`` after."""

    def __init__(
        self,
        store: Store,
        *,
        per_email: tuple[Literal["second", "minute", "hour", "day"], int],
        per_address: tuple[Literal["second", "minute", "hour", "day"], int],
    ) -> None:
        self._store = store
        self._rules = {"email": _Rule.of(per_email), "address": _Rule.of(per_address)}

    def _keys(self, email: str, address: str, now: float) -> list[tuple[str, _Rule, float]]:
        """``(counter key, rule, seconds until the window ends)`` of both subjects."""
        found = []
        for kind, subject in (("email", email.strip().lower()), ("address", address)):
            rule = self._rules[kind]
            window = int(now // rule.seconds)
            found.append((f"{kind}:{subject}:{window}", rule, (window + 1) * rule.seconds - now))
        return found

    async def check(self, email: str, address: str) -> None:
        now = time.time()
        for key, rule, remaining in self._keys(email, address, now):
            raw = await self._store.get(key)
            if raw is not None and int(raw) >= rule.count:
                raise TooManyRequestsError(
                    "Too many failed logins: try again later.", retry_after=max(1, math.ceil(remaining))
                )

    async def failed(self, email: str, address: str) -> None:
        now = time.time()
        for key, rule, _ in self._keys(email, address, now):
            raw = await self._store.get(key)
            await self._store.set(key, str(int(raw or 0) + 1), expires_in=rule.seconds)

    async def succeeded(self, email: str, address: str) -> None:
        """A right password clears the email's failures (not the address's: it may try other emails)."""
        key, _, _ = self._keys(email, address, time.time())[0]
        await self._store.delete(key)
