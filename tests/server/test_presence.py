"""Presence through one hub: statuses and online state, pushed to those who
may see them (colleagues of the same organisation and contacts), and to
nobody else."""

from __future__ import annotations

import asyncio

import pytest

from miss_server.app import HubServer
from protocol.frames import Accepted, Deliver, Ok, Presence, SetStatus, Watch, Watching
from tests.support.wire import RawDevice, enrolled


async def connections_settle(hub: HubServer, authenticated: int) -> None:
    for _ in range(200):
        if hub.metrics.authenticated._value.get() == authenticated:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the hub did not see the connections close")


async def watch(dev: RawDevice, *users: str) -> Watching:
    await dev.send_frame(Watch(rid=5, users=users))
    reply = await dev.recv()
    assert isinstance(reply, Watching) and reply.rid == 5, reply
    return reply


async def test_colleague_sees_status_and_online_changes(hub: HubServer) -> None:
    alice = await enrolled(hub, "Alice", "10000000001")
    bob = await enrolled(hub, "Bob", "10000000002")
    bob_id = bob.user_id
    await bob.close()
    await connections_settle(hub, 1)  # Bob's going offline is announced before Alice watches
    assert (await watch(alice, bob_id)).presence == (Presence(bob_id, "available", False),)

    await bob.auth()
    assert await alice.recv() == Presence(bob_id, "available", True)
    await bob.send_frame(SetStatus(rid=9, status="on_call"))
    assert await bob.recv() == Ok(9)
    assert await alice.recv() == Presence(bob_id, "on_call", True)
    await bob.close()
    assert await alice.recv() == Presence(bob_id, "on_call", False)
    # The status is durable: it is what the next watcher sees.
    carol = await enrolled(hub, "Carol", "10000000003")
    assert (await watch(carol, bob_id)).presence == (Presence(bob_id, "on_call", False),)


async def test_other_organisation_is_invisible_until_a_conversation(hub: HubServer) -> None:
    alice = await enrolled(hub, "Alice", "10000000001", "CHRU de Lille")
    pharmacist = await enrolled(hub, "Paul", "10000000002", "Pharmacie du Centre")
    assert (await watch(pharmacist, alice.user_id, "u_doesnotexist")).presence == ()
    # Alice changes status: the pharmacist, who may not see her, hears nothing.
    await alice.send_frame(SetStatus(rid=1, status="busy"))
    assert await alice.recv() == Ok(1)
    with pytest.raises(TimeoutError):
        await pharmacist.recv(timeout=0.5)
    # Once one has written to the other, they are contacts.
    la, lp = await pharmacist.lookup(alice.user_id), await pharmacist.lookup(pharmacist.user_id)
    send = pharmacist.message(la, "Ordonnance de M. R. : posologie ?", lp)
    await pharmacist.send_frame(send)
    assert await pharmacist.recv() == Accepted(send.id)
    assert isinstance(await alice.recv(), Deliver)
    assert (await watch(pharmacist, alice.user_id)).presence == (Presence(alice.user_id, "busy", True),)


async def test_watch_replaces_the_previous_list(hub: HubServer) -> None:
    alice = await enrolled(hub, "Alice", "10000000001")
    bob = await enrolled(hub, "Bob", "10000000002")
    carol = await enrolled(hub, "Carol", "10000000003")
    await watch(alice, bob.user_id)
    await watch(alice, carol.user_id)  # Bob is no longer watched
    await bob.send_frame(SetStatus(rid=1, status="off_duty"))
    assert await bob.recv() == Ok(1)
    await carol.send_frame(SetStatus(rid=2, status="busy"))
    assert await carol.recv() == Ok(2)
    assert await alice.recv() == Presence(carol.user_id, "busy", True)
    with pytest.raises(TimeoutError):
        await alice.recv(timeout=0.5)
