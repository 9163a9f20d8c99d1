"""A node that dies between ``accepted`` and its wake-ups' publish
(``Waker.on_entries_expired``): its rows are stored, and its presence entries,
no longer refreshed, expire; the node whose sweep deletes them tells every
node to drain its devices, so a recipient that stayed connected elsewhere
gets the message without reconnecting."""

from __future__ import annotations

import os
import time

import pytest

from miss_server.app import HubServer
from protocol.frames import Accepted, Deliver
from tests.support.inprocess_hub import HubFactory
from tests.support.pg_hub import postgres_store_url
from tests.support.wire import enrolled

REDIS = os.environ.get("MISS_TEST_REDIS", "redis://127.0.0.1:6379/0")
TTL = 1.0  # presence TTL (s): entries expire 2/3 of it after their last refresh


def die_quietly(node: HubServer) -> None:
    """What ``kill -9`` does to a node, as far as others can tell, while it
    keeps its sockets: no more wake-ups leave it, no presence refresh."""
    node.hub.broker.publish_soon = lambda messages, lost: None  # type: ignore[method-assign]
    for task in node._tasks:
        if task.get_name() == "presence":
            task.cancel()


@pytest.mark.slow
async def test_a_message_whose_node_died_before_its_wake_up_is_delivered_after_the_sweep(
    make_hub: HubFactory, redis_prefix: str
) -> None:
    async with postgres_store_url() as store:
        broker = f"{REDIS}?prefix={redis_prefix}"
        node0, node1 = [await make_hub(store=store, broker=broker, presence_ttl_seconds=TTL) for _ in "01"]
        alice = await enrolled(node0, "Dr Alice", "10000000001")
        bob = await enrolled(node1, "Dr Bob", "10000000002")
        to_bob = await alice.lookup(bob.user_id)

        die_quietly(node0)
        died = time.monotonic()
        reply = await alice.ask(alice.message(to_bob, "Lit 4 : INR à 5,2, avis ?"))
        assert isinstance(reply, Accepted)  # stored: the wake-up never left node 0

        delivered = await bob.recv(timeout=TTL * 4)
        assert isinstance(delivered, Deliver) and delivered.id == reply.id
        took = time.monotonic() - died
        assert took > TTL / 3, f"delivered {took:.2f} s after, not by the sweep"
        assert node1.hub.metrics.node_lost_drains._value.get() >= 1
