"""A wake-up lost to a failed publish is made up for (miss_server/rewake.py):
the device it was for gets a drain once Redis takes publishes again, while
the subscriber's connection never dropped (so no gap drains it)."""

from __future__ import annotations

import asyncio
import os

import pytest
import redis.asyncio as aioredis

from miss_server.broker.base import BrokerUnavailable, device_channel
from miss_server.broker.redis import RedisBroker
from miss_server.rewake import DELAYS, Rewake
from miss_server.store.base import Kind, Queued
from miss_server.wakeup import DRAIN_WAKEUP, row_wakeup

REDIS = os.environ.get("MISS_TEST_REDIS", "redis://127.0.0.1:6379/0")
ROW = Queued(7, "d_bob", Kind.MESSAGE, bytes(16), "u_alice", "d_alice", 1_700_000_000_000, b"e" * 40)


@pytest.mark.exclusive  # lowers the shared Redis's maxclients for a moment
async def test_a_device_whose_wake_up_was_lost_gets_a_drain_once_redis_takes_publishes(
    redis_prefix: str,
) -> None:
    url = f"{REDIS}?prefix={redis_prefix}"
    sender, receiver = RedisBroker(url), RedisBroker(url)  # two hub nodes
    admin = aioredis.Redis.from_url(REDIS)
    await sender.start()
    await receiver.start()
    gaps: list[None] = []
    receiver.on_gap(lambda: gaps.append(None))
    received: asyncio.Queue[bytes] = asyncio.Queue()
    channel = device_channel("d_bob")
    await receiver.subscribe(channel, received.put_nowait)
    rewake = Rewake(sender)
    task = asyncio.create_task(rewake.run_forever())
    maxclients = (await admin.config_get("maxclients"))["maxclients"]
    try:
        await sender.publish(channel, row_wakeup(ROW))
        assert await asyncio.wait_for(received.get(), 2) == row_wakeup(ROW)  # the path works

        # The sender's publishing connection is reset, and Redis takes no new one.
        [conn_id] = await sender.pipeline.call([("CLIENT", "ID")])
        assert await admin.client_kill_filter(_id=conn_id) == 1
        await admin.config_set("maxclients", len(await admin.client_list()))
        await asyncio.sleep(0.2)
        with pytest.raises(BrokerUnavailable):
            await sender.publish(channel, row_wakeup(ROW))  # this wake-up is lost
        rewake.add([channel, channel])

        await asyncio.sleep(DELAYS[0] + 0.3)  # the first try failed as well
        assert received.empty() and len(rewake) == 1

        await admin.config_set("maxclients", maxclients)
        assert await asyncio.wait_for(received.get(), DELAYS[1] + 2) == DRAIN_WAKEUP
        assert len(rewake) == 0
        await asyncio.sleep(DELAYS[1] + 0.2)
        assert received.empty()  # one drain, not one per try
        assert not gaps  # the subscriber never lost its connection: only the drain made up
    finally:
        await admin.config_set("maxclients", maxclients)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sender.close()
        await receiver.close()
        await admin.aclose()
