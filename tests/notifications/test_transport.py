"""The webhook client's lane transport: keep-alive reuse, bounded lanes, lanes freed on failures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from prodsentinel.notifications.delivery import LaneTransport
from tests.receivers import Receiver, Reply


async def test_connections_are_reused_and_bounded(receivers: Callable[..., Receiver]) -> None:
    receiver = receivers()
    async with httpx.AsyncClient(transport=LaneTransport(max_lanes_per_origin=4)) as client:
        gate = asyncio.Semaphore(10)  # more callers than lanes: the extra ones wait for a lane

        async def post(i: int) -> int:
            async with gate:
                return (await client.post(receiver.url, content=b"%d" % i)).status_code

        statuses = await asyncio.gather(*(post(i) for i in range(200)))
    assert statuses == [200] * 200
    assert receiver.count == 200
    assert 1 <= receiver.connections <= 4  # keep-alive: a handful of connections for 200 requests


async def test_lanes_are_released_after_timeouts_and_errors(receivers: Callable[..., Receiver]) -> None:
    receiver = receivers(Reply(200, delay=2.0), Reply(200, delay=2.0), default=Reply(503))
    async with httpx.AsyncClient(transport=LaneTransport(max_lanes_per_origin=2)) as client:
        for _ in range(2):
            with pytest.raises(httpx.ReadTimeout):
                await client.post(receiver.url, content=b"x", timeout=0.2)
        # Both lanes timed out once; they serve again (no leak would block here forever).
        answers = await asyncio.wait_for(
            asyncio.gather(*(client.post(receiver.url, content=b"y") for _ in range(6))), timeout=10
        )
    assert [r.status_code for r in answers] == [503] * 6
