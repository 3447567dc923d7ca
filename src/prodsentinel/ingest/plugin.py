"""Starts and stops the ingest machinery with the app: a dedicated asyncpg pool and the group-commit writers.

A pool of its own (not the SQLAlchemy engine's) because the write path speaks asyncpg directly (``COPY``)
and must not compete with query traffic for connections; it is small since each table has one writer.
The same pool serves the per-request API-key lookup (``auth.lookup``), which is several times cheaper
than an ORM session per request.
"""

from __future__ import annotations

import gc

import asyncpg
from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.plugins import InitPluginProtocol

from prodsentinel.auth.lookup import (
    KEY_LOOKUP_STATE_KEY,
    SESSION_LOOKUP_STATE_KEY,
    CoalescingKeyLookup,
    CoalescingSessionLookup,
)
from prodsentinel.ingest.services import Ingestor
from prodsentinel.lib.database import CONNECT_TIMEOUT_SECONDS, asyncpg_pool_args, libpq_url
from prodsentinel.settings import Settings

__all__ = ("INGESTOR_STATE_KEY", "IngestPlugin")

INGESTOR_STATE_KEY = "ingestor"
POOL_SIZE = 6  # a writer per table plus API-key lookups


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Skip asyncpg's reset round trip (``RESET ALL; UNLISTEN *; ...``) on every release.

    Safe here: this pool only runs self-contained statements and transactions that always end (asyncpg's
    transaction context rolls back on error), and never changes session state.
    """
    del connection


class IngestPlugin(InitPluginProtocol):
    def __init__(self, settings: Settings, database_url: str) -> None:
        self._settings = settings
        self._dsn = libpq_url(database_url)

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.on_startup.append(self._start)
        app_config.on_shutdown.append(self._stop)
        return app_config

    async def _start(self, app: Litestar) -> None:
        pool = await asyncpg.create_pool(
            self._dsn,
            min_size=1,
            max_size=POOL_SIZE,
            server_settings={"application_name": "prodsentinel-ingest"},
            reset=_keep_session,
            timeout=CONNECT_TIMEOUT_SECONDS,
            **asyncpg_pool_args(self._settings.database_pooler),
        )
        ingestor = Ingestor(self._settings, pool)
        ingestor.start()
        app.state[INGESTOR_STATE_KEY] = ingestor
        app.state[KEY_LOOKUP_STATE_KEY] = CoalescingKeyLookup(pool)
        app.state[SESSION_LOOKUP_STATE_KEY] = CoalescingSessionLookup(pool)
        # Move everything allocated so far (the app, its routes, OpenAPI models, SQLAlchemy metadata: a few
        # hundred thousand long-lived objects) out of the collector's reach: without it every full
        # collection walks them all under load, pauses that showed in the ingest p99. Undone on shutdown,
        # so a process that builds many apps (the test suite) can still collect the ones it is done with.
        gc.collect()
        gc.freeze()

    async def _stop(self, app: Litestar) -> None:
        gc.unfreeze()
        ingestor: Ingestor | None = app.state.get(INGESTOR_STATE_KEY)
        if ingestor is None:
            return
        app.state.pop(KEY_LOOKUP_STATE_KEY, None)
        app.state.pop(SESSION_LOOKUP_STATE_KEY, None)
        await ingestor.stop()
        await ingestor.pool.close()
        del app.state[INGESTOR_STATE_KEY]
