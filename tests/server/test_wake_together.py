"""The wake-ups of sends that one group commit stored leave in one publish
(``Waker.wake_together``): fewer writes to Redis than messages, and every
message delivered on the other node."""

from __future__ import annotations

import asyncio
import os

import pytest

from protocol.frames import Accepted, Deliver
from tests.support.inprocess_hub import HubFactory
from tests.support.pg_hub import postgres_store_url
from tests.support.redis_writes import count_publishes
from tests.support.wire import enrolled

REDIS = os.environ.get("MISS_TEST_REDIS", "redis://127.0.0.1:6379/0")
SENDERS = 6


@pytest.mark.slow
async def test_sends_stored_together_are_announced_in_one_publish(
    make_hub: HubFactory, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with postgres_store_url() as store:
        broker = f"{REDIS}?prefix={redis_prefix}"
        node0, node1 = [await make_hub(store=store, broker=broker) for _ in "01"]
        senders = [await enrolled(node0, f"Dr Sender {i}", f"2000000000{i}") for i in range(SENDERS)]
        bob = await enrolled(node1, "Dr Bob", "10000000002")
        lookups = [await s.lookup(bob.user_id) for s in senders]

        publishes = count_publishes(monkeypatch)  # the SPUBLISH commands of each write to Redis
        asks = [
            s.ask(s.message(to, f"Lit {i} : glycémie à 0,5 g/l."))
            for i, (s, to) in enumerate(zip(senders, lookups, strict=True))
        ]
        replies = await asyncio.gather(*asks)
        assert all(isinstance(r, Accepted) for r in replies), replies
        delivered = [await bob.recv() for _ in range(SENDERS)]
        assert all(isinstance(d, Deliver) for d in delivered)
        assert sorted(d.id for d in delivered) == sorted(r.id for r in replies)  # type: ignore[union-attr]
        assert sum(publishes) >= SENDERS
        assert len(publishes) < SENDERS, publishes  # a group commit's sends shared writes
