"""Devices on two hub nodes (PostgreSQL + Redis) talk as if on one."""

from __future__ import annotations

import asyncio
import time

import pytest

from protocol.frames import Accepted, Deliver, Delivered, Ok, Presence, SetStatus, Watch, Watching
from tests.support.cluster import PRESENCE_TTL, Cluster

pytestmark = pytest.mark.slow


async def test_messages_receipts_and_presence_cross_nodes(cluster: Cluster) -> None:
    alice = await cluster.enroll(0, "Dr Alice", "10000000001")
    bob = await cluster.enroll(1, "Dr Bob", "10000000002")
    await alice.send_frame(Watch(rid=1, users=(bob.user_id,)))
    assert await alice.recv() == Watching(1, (Presence(bob.user_id, "available", True),))

    # A message from node 0 to node 1, and its receipt back.
    lb, la = await alice.lookup(bob.user_id), await alice.lookup(alice.user_id)
    send = alice.message(lb, "cross-node", la)
    await alice.send_frame(send)
    assert await alice.recv() == Accepted(send.id)
    got = await bob.recv()
    assert isinstance(got, Deliver) and bob.open_deliver(got, alice.keys.box_pk).body == "cross-node"
    await bob.ack(got.seq)
    receipt = await alice.recv()
    assert isinstance(receipt, Delivered) and receipt.id == send.id and receipt.device == bob.device_id

    # Presence changes on node 1 reach the watcher on node 0.
    await bob.send_frame(SetStatus(rid=2, status="on_call"))
    assert await bob.recv() == Ok(2)
    assert await alice.recv() == Presence(bob.user_id, "on_call", True)
    await bob.close()
    assert await alice.recv(timeout=10) == Presence(bob.user_id, "on_call", False)

    # Queued while Bob is away; he comes back on the other node and gets all, in order.
    sent = []
    for i in range(5):
        s = alice.message(lb, f"queued {i}", la)
        await alice.send_frame(s)
        assert await alice.recv() == Accepted(s.id)
        sent.append(s.id)
    bob.url = cluster.urls[0]
    await bob.auth()
    assert await alice.recv(timeout=10) == Presence(bob.user_id, "on_call", True)
    queued = [await bob.recv() for _ in sent]
    assert [f.id for f in queued if isinstance(f, Deliver)] == sent


async def test_dead_nodes_devices_go_offline_within_the_presence_ttl(cluster: Cluster) -> None:
    alice = await cluster.enroll(0, "Dr Alice", "10000000001")
    bob = await cluster.enroll(1, "Dr Bob", "10000000002")
    await alice.send_frame(Watch(rid=1, users=(bob.user_id,)))
    assert await alice.recv() == Watching(1, (Presence(bob.user_id, "available", True),))
    killed_at = time.monotonic()
    await asyncio.to_thread(cluster.nodes[1].kill)
    offline = await alice.recv(timeout=PRESENCE_TTL + 5)
    took = time.monotonic() - killed_at
    print(f"\nBob shown offline {took:.2f} s after his node died (TTL {PRESENCE_TTL} s)")
    assert offline == Presence(bob.user_id, "available", False)
    assert took <= PRESENCE_TTL + 0.5  # the TTL, plus scheduling slack on a loaded machine
