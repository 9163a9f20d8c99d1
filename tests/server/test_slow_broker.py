"""A slow Redis does not hold up ``accepted`` (``Waker.wake``,
``Broker.publish_soon``): the message is stored before it is answered, so
the sender hears ``accepted`` at once, and the recipient on another node
gets the message once Redis takes the wake-up."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from protocol.frames import Accepted, Deliver
from tests.support.inprocess_hub import HubFactory
from tests.support.pg_hub import postgres_store_url
from tests.support.traffic import wait_until
from tests.support.wire import enrolled

REDIS = os.environ.get("MISS_TEST_REDIS", "redis://127.0.0.1:6379/0")
#: How long Redis holds the sending node's publishing connection (s).
STALL = 1.5


@pytest.mark.slow
async def test_accepted_does_not_wait_for_a_stalled_redis(make_hub: HubFactory, redis_prefix: str) -> None:
    async with postgres_store_url() as store:
        broker = f"{REDIS}?prefix={redis_prefix}"
        node0, node1 = [await make_hub(store=store, broker=broker) for _ in "01"]
        alice = await enrolled(node0, "Dr Alice", "10000000001")
        bob = await enrolled(node1, "Dr Bob", "10000000002")
        to_bob = await alice.lookup(bob.user_id)

        # Redis holds node 0's publishing connection: a pop that blocks for
        # STALL seconds is in flight on it, and publishes queue behind it.
        popped: list[Exception | None] = []
        node0.broker.pipeline.call_soon(  # type: ignore[attr-defined]
            [("BLPOP", f"{redis_prefix}:never", str(STALL))], popped.append
        )
        await asyncio.sleep(0.05)
        started = time.monotonic()
        reply = await alice.ask(alice.message(to_bob, "Patient du lit 12 : kaliémie à 6,1."))
        answered = time.monotonic() - started
        assert isinstance(reply, Accepted), reply
        assert answered < STALL / 3, f"accepted took {answered:.2f} s behind Redis"

        delivered = await bob.recv(timeout=STALL + 5)
        assert isinstance(delivered, Deliver) and delivered.id == reply.id
        # The wake-up really waited for Redis (it was not delivered some other way).
        assert time.monotonic() - started > STALL * 0.8
        # The pop timed out in Redis: answered, nothing lost. Its reply and the
        # delivery reach this loop on two connections, in either order.
        assert await wait_until(lambda: popped == [None], 2), popped
