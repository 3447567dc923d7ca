"""The scheduler heartbeat rows (``scheduler_ticks``): one upsert per loop run."""

from __future__ import annotations

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert

from prodsentinel.system.models import SchedulerTick

__all__ = ("SchedulerTickRepository",)


class SchedulerTickRepository(SQLAlchemyAsyncRepository[SchedulerTick]):
    """``scheduler_ticks``, keyed by the loop name."""

    model_type = SchedulerTick
    id_attribute = "loop"

    async def upsert_tick(self, loop: str) -> None:
        """Set ``loop``'s last tick to the transaction's ``now()`` (one statement, no read first)."""
        statement = insert(SchedulerTick).values(loop=loop, last_tick_at=func.now())
        await self.session.execute(
            statement.on_conflict_do_update(
                index_elements=[SchedulerTick.loop], set_={"last_tick_at": statement.excluded.last_tick_at}
            )
        )
