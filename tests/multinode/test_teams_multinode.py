"""Care teams across two hub nodes (PostgreSQL + Redis, SPEC §13): a change
made on one node is pushed (``team_changed``) to members connected to the
other, and a team message sent on one reaches every member device on
either, with its receipts back."""

from __future__ import annotations

import pytest

from protocol.frames import Accepted, Deliver, Delivered, LinkCode, LinkCodeOk, TeamChanged
from tests.support.authority import AUTHORITY_PK
from tests.support.cluster import Cluster
from tests.support.team_wire import Team, TeamDevice, change, open_team_deliver, team_send

pytestmark = pytest.mark.slow


async def _clinician(cluster: Cluster, node: int, name: str, rpps: str) -> TeamDevice:
    (code,) = await cluster.invite_many([(name, rpps)])
    dev = TeamDevice(cluster.urls[node])
    await dev.enroll(code)
    await cluster.verify(dev.user_id)
    return dev


async def test_team_changes_and_messages_cross_nodes(cluster: Cluster) -> None:
    alice = await _clinician(cluster, 0, "Dr Alice", "10000000001")
    bob = await _clinician(cluster, 1, "Dr Bob", "10000000002")
    # Bob's second device, on node 0.
    reply = await bob.ask(LinkCode(rid=1))
    assert isinstance(reply, LinkCodeOk)
    bob2 = TeamDevice(cluster.urls[0])
    await bob2.enroll(reply.code)
    await cluster.verify(bob.user_id)

    from miss_server.store.postgres import PostgresStore

    store = PostgresStore(cluster.env["MISS_STORE"])
    await store.open()
    try:
        team = Team()
        assert (
            type(await change(alice, team, "create", alice.user_id, store, AUTHORITY_PK)).__name__ == "TeamOk"
        )
        assert type(await change(alice, team, "add", bob.user_id, store, AUTHORITY_PK)).__name__ == "TeamOk"
    finally:
        await store.close()
    for dev in (bob, bob2):  # node 1 hears of it through Redis, node 0 itself
        pushed = await dev.next_of(TeamChanged, timeout=10)
        assert (pushed.team, pushed.seq, pushed.head) == (team.team_id, 2, team.head)

    send = team_send(alice, team, {d.device_id: d.keys.box_pk for d in (bob, bob2)}, "relève à 19 h")
    assert await alice.ask(send) == Accepted(send.id)
    for dev in (bob, bob2):
        got = await dev.next_of(Deliver, timeout=10)
        assert got.team == team.team_id and open_team_deliver(dev, got, alice).body == "relève à 19 h"
        await dev.ack(got.seq)
    seen = {(await alice.next_of(Delivered, timeout=10)).device for _ in range(2)}
    assert seen == {bob.device_id, bob2.device_id}
