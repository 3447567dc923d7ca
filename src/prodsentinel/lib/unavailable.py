"""Telling "the database is unreachable or restarting" apart from every other database error.

Why one predicate: the same outage surfaces as a dozen exception types depending on where it hits (a
refused or missing socket while connecting, ``57P01 terminating connection due to administrator
command`` on a busy connection, ``57P03 the database system is starting up``, asyncpg's "connection is
closed" on a pooled connection the server dropped, SQLAlchemy's wrappers around each, advanced-alchemy's
wrapper around those). All of them mean the same thing to a client, SPEC §4's overload answer: 503 with
``Retry-After``, never 500. ``lib.errors`` uses it for every endpoint; the ingest writer and the API-key
lookup use it to retry once on a fresh connection and to fail a whole batch without splitting it.
"""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

__all__ = ("DATABASE_UNAVAILABLE", "RETRY_AFTER_SECONDS", "is_database_unavailable")

#: The 503 detail and the ``Retry-After`` (seconds) every endpoint answers while the database is away.
DATABASE_UNAVAILABLE = "The database is unavailable; retry."
RETRY_AFTER_SECONDS = 2

# SQLSTATEs of an outage rather than of the statement: class 08 (connection exception), the server
# shutting down or starting (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now,
# 57P05 idle session timeout) and 53300 too many connections. 57014 (query cancelled) is not one.
_OUTAGE_STATES = frozenset({"57P01", "57P02", "57P03", "57P05", "53300"})
# Only OSErrors raised inside the database drivers count: a refused/missing socket or a connect timeout.
_DRIVER_MODULES = ("asyncpg", "sqlalchemy", "advanced_alchemy")
_MAX_CHAIN = 8


def is_database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) says the database cannot be reached right now."""
    return any(_is_outage(error) for error in _chain(exc))


def _is_outage(error: BaseException) -> bool:
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, PoolTimeoutError):  # every pooled connection is stuck waiting on the database
        return True
    if isinstance(error, asyncpg.ConnectionDoesNotExistError):
        return True
    if isinstance(error, asyncpg.InternalClientError):
        # "cannot switch to state 12; another operation (2) is in progress": asyncpg's protocol on a
        # pooled connection the server terminated (57P01) while it sat idle; seen on every fast restart.
        return True
    if isinstance(error, asyncpg.InterfaceError) and "connection is closed" in str(error):
        return True
    state = getattr(error, "sqlstate", None)
    if isinstance(state, str) and (state.startswith("08") or state in _OUTAGE_STATES):
        return True
    return isinstance(error, OSError) and _raised_in_driver(error)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it wraps (``orig``, ``__cause__``, ``__context__``), each once."""
    seen: set[int] = set()
    pending = [exc]
    while pending and len(seen) < _MAX_CHAIN:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        for inner in (getattr(error, "orig", None), error.__cause__, error.__context__):
            if isinstance(inner, BaseException):
                pending.append(inner)


def _raised_in_driver(error: BaseException) -> bool:
    traceback = error.__traceback__
    while traceback is not None:
        module = traceback.tb_frame.f_globals.get("__name__", "")
        if isinstance(module, str) and module.startswith(_DRIVER_MODULES):
            return True
        traceback = traceback.tb_next
    return False
