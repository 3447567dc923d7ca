"""A dispatcher in its own process (the kill -9 test SIGKILLs it mid-send).

Usage: python dispatcher_proc.py DATABASE_URL PROJECT_ID TIMEOUT_SECONDS VISIBILITY_SECONDS
"""

from __future__ import annotations

import asyncio
import sys
from uuid import UUID

from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from prodsentinel.notifications import dispatcher
from prodsentinel.settings import Settings


async def main(database_url: str, project_id: str, timeout: float, visibility: float) -> None:
    engine = create_async_engine(database_url, pool_size=2)
    settings = Settings(
        database_url=database_url, notify_timeout_seconds=timeout, notify_visibility_seconds=visibility
    )
    try:
        await dispatcher.run_dispatch(
            async_sessionmaker(engine, expire_on_commit=False), settings, project_id=UUID(project_id)
        )
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
