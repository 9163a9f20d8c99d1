"""The Store's care teams and team messages (SPEC §13), on every Store.

Team chains are stored as given (the hub verifies them; tests/server/test_teams.py),
so the records here are opaque bytes: what matters is the compare-and-set on
the chain's length, the caps, the derived members, and that a team message
is one body plus one lean row per device, delivered, acked with receipts,
recalled and expired like the rest of a device's queue.
"""

from __future__ import annotations

import hashlib

from miss_server.store.base import (
    Kind,
    NewTeamMessage,
    Store,
    TeamAppend,
    TeamInfo,
    TeamRecordRow,
)
from tests.support.store_samples import DAY, NOW, message, user_with_devices

TEAM = "t_00112233445566aa"


def _record(seq: int, tag: str = "") -> TeamRecordRow:
    rec = f"rec-{seq}-{tag}".encode()
    return TeamRecordRow(seq, rec, b"s" * 64, hashlib.blake2b(rec, digest_size=32).digest())


def _state(
    record: TeamRecordRow, members: set[str], admins: set[str], creator: str, team: str = TEAM
) -> TeamInfo:
    return TeamInfo(
        team,
        "Soins intensifs",
        "CHRU",
        None,
        record.seq + 1,
        record.hash,
        not members,
        frozenset(members),
        frozenset(admins),
        creator,
    )


async def _team(store: Store, admin: str, *others: str, team: str = TEAM) -> TeamInfo:
    """A team created by ``admin`` with ``others`` added, one record each."""
    members = {admin}
    r = _record(0, team)
    state = _state(r, members, {admin}, admin, team)
    assert await store.append_team_record(state, r, joining=(admin,), max_teams=64) is TeamAppend.OK
    for i, user in enumerate(others, 1):
        members.add(user)
        r = _record(i, team)
        state = _state(r, members, {admin}, admin, team)
        assert await store.append_team_record(state, r, joining=(user,), max_teams=64) is TeamAppend.OK
    return state


def _team_message(
    mid: int,
    sender: str,
    sender_dev: str,
    targets: list[str],
    *,
    ts: int = NOW,
    ttl: int = DAY,
    body: bytes = b"B" * 200,
) -> NewTeamMessage:
    return NewTeamMessage(
        mid.to_bytes(16, "big"),
        sender,
        sender_dev,
        TEAM,
        body,
        {d: bytes([mid % 256]) * 72 for d in targets},
        ts,
        ts + ttl,
    )


async def test_a_chain_grows_one_record_at_a_time_and_members_follow_it(store: Store) -> None:
    alice, _ = await user_with_devices(store, "10000000001", 1)
    bob, _ = await user_with_devices(store, "10000000002", 1)
    state = await _team(store, alice, bob)
    info = await store.team_info(TEAM)
    assert info == state and info.members == {alice, bob} and info.admins == {alice} and info.seq == 2
    assert await store.user_teams(bob, 256) == [(TEAM, 2, state.head)]
    # A creation of an existing team, and a record that does not follow the head: nothing stored.
    again = _record(0, "again")
    assert (
        await store.append_team_record(_state(again, {bob}, {bob}, bob), again, joining=(bob,), max_teams=64)
        is TeamAppend.CONFLICT
    )
    stale = _record(1, "stale")
    assert (
        await store.append_team_record(
            _state(stale, {alice}, {alice}, alice), stale, joining=(), max_teams=64
        )
        is TeamAppend.CONFLICT
    )
    assert await store.team_info(TEAM) == state
    # Bob removed: he is no longer routed to, the chain keeps every record.
    r = _record(2)
    after = _state(r, {alice}, {alice}, alice)
    assert await store.append_team_record(after, r, joining=(), max_teams=64) is TeamAppend.OK
    assert await store.team_info(TEAM) == after
    assert await store.user_teams(bob, 256) == []
    records, more = await store.team_records(TEAM, 0, 48 * 1024)
    assert [x.seq for x in records] == [0, 1, 2] and not more
    assert records[2] == r
    # Pages: at least one record, and `more` when others follow.
    page, more = await store.team_records(TEAM, 1, 1)
    assert [x.seq for x in page] == [1] and more
    assert await store.team_records(TEAM, 3, 1000) == ([], False)
    assert await store.team_info("t_ffffffffffffffff") is None
    assert [t.team for t in await store.list_teams()] == [TEAM]


async def test_caps_on_teams_per_user_store_nothing(store: Store) -> None:
    alice, _ = await user_with_devices(store, "10000000001", 1)
    bob, _ = await user_with_devices(store, "10000000002", 1)
    await _team(store, bob, team="t_0000000000000001")
    await _team(store, alice, team="t_0000000000000002")
    # Bob is in one team: at a cap of one he cannot be added to another.
    r = _record(1, "t_0000000000000002")
    full = _state(r, {alice, bob}, {alice}, alice, "t_0000000000000002")
    assert await store.append_team_record(full, r, joining=(bob,), max_teams=1) is TeamAppend.FULL
    kept = await store.team_info("t_0000000000000002")
    assert kept is not None and kept.members == {alice}
    # Alice created one team: at a cap of one she creates no other.
    r0 = _record(0, "x")
    assert (
        await store.append_team_record(
            _state(r0, {alice}, {alice}, alice, "t_0000000000000003"), r0, joining=(), max_teams=1
        )
        is TeamAppend.FULL
    )
    assert await store.team_info("t_0000000000000003") is None
    # The authority's creations count for nobody's creations.
    assert (
        await store.append_team_record(
            _state(r0, {alice}, {alice}, "authority", "t_0000000000000004"), r0, joining=(), max_teams=1
        )
        is TeamAppend.OK
    )


async def test_a_team_message_is_one_body_and_one_lean_row_per_device(store: Store) -> None:
    alice, (a1, a2) = await user_with_devices(store, "10000000001", 2)
    bob, (b1, b2) = await user_with_devices(store, "10000000002", 2)
    carol, (c1, c2) = await user_with_devices(store, "10000000003", 2)
    targets = [a2, b1, b2, c1, c2]
    body = b"B" * 1000
    m = _team_message(1, alice, a1, targets, body=body)
    result = await store.accept_team(m)
    assert not result.duplicate and [q.device_id for q in result.queued] == targets
    assert (await store.accept_team(m)).duplicate  # idempotent per (sender, id)
    # Stored once: the body, and at most 150 bytes per device, everything counted.
    stored = await store.stored_bytes(alice, m.message_id)
    assert len(body) + 72 * len(targets) < stored <= len(body) + 150 * len(targets)
    # Each device reads its row with the body and the team, in its seq space.
    before = await store.accept(message(2, bob, b1, carol, [c1]))
    rows = await store.pending(c1, 0, 10, NOW)
    assert [r.kind for r in rows] == [Kind.TEAM, Kind.MESSAGE]
    assert rows[0].seq < rows[1].seq == before.queued[0].seq
    team_row = rows[0]
    assert (team_row.body, team_row.team, team_row.payload) == (body, TEAM, m.wraps[c1])
    assert (team_row.message_id, team_row.peer_user, team_row.peer_device, team_row.ts) == (
        m.message_id,
        alice,
        a1,
        NOW,
    )
    assert result.queued[3] == team_row
    assert await store.count_pending(c1) == 2
    # A member's ack: a `delivered` receipt for each of alice's attested devices.
    receipts = await store.ack(b1, [result.queued[1].seq], NOW + 5, NOW + DAY)
    assert sorted((r.device_id, r.kind, r.peer_user, r.peer_device) for r in receipts) == sorted(
        [(a1, Kind.RECEIPT, bob, b1), (a2, Kind.RECEIPT, bob, b1)]
    )
    assert [r.message_id for r in await store.pending(a1, 0, 10, NOW)] == [m.message_id]
    # A refusal: refused receipts; alice's own other device: none.
    refusals = await store.ack(c2, [], NOW + 5, NOW + DAY, {result.queued[4].seq: "undecryptable"})
    assert {(r.kind, r.payload) for r in refusals} == {(Kind.REFUSAL, b"undecryptable")}
    assert await store.ack(a2, [result.queued[0].seq], NOW + 5, NOW + DAY) == []
    assert await store.pending(b1, 0, 10, NOW) == []


async def test_recall_deletes_what_no_device_acked_and_the_body(store: Store) -> None:
    alice, (a1,) = await user_with_devices(store, "10000000001", 1)
    bob, (b1, b2) = await user_with_devices(store, "10000000002", 2)
    m = _team_message(7, alice, a1, [b1, b2])
    queued = (await store.accept_team(m)).queued
    await store.ack(b1, [queued[0].seq], NOW, NOW + DAY)
    assert await store.has_sent(alice, m.message_id) and not await store.has_sent(bob, m.message_id)
    assert await store.recall(bob, m.message_id) == 0  # not bob's message
    assert await store.recall(alice, m.message_id) == 1
    assert await store.pending(b2, 0, 10, NOW) == []
    assert await store.stored_bytes(alice, m.message_id) < 100  # only the id's record is left
    # 1:1 too.
    one = await store.accept(message(8, alice, a1, bob, [b1, b2]))
    await store.ack(b2, [one.queued[1].seq], NOW, NOW + DAY)
    assert await store.recall(alice, (8).to_bytes(16, "big")) == 1
    assert [r for r in await store.pending(b1, 0, 10, NOW) if r.kind is Kind.MESSAGE] == []


async def test_team_rows_expire_with_their_ttl_and_bodies_with_their_last_row(store: Store) -> None:
    alice, (a1,) = await user_with_devices(store, "10000000001", 1)
    _, (b1,) = await user_with_devices(store, "10000000002", 1)
    short = _team_message(1, alice, a1, [b1], ttl=3_600_000)
    long = _team_message(2, alice, a1, [b1], ttl=DAY)
    await store.accept_team(short)
    q = (await store.accept_team(long)).queued
    later = NOW + 3_600_000
    assert [r.message_id for r in await store.pending(b1, 0, 10, later)] == [long.message_id]
    assert await store.expire(later) == 1
    assert await store.count_pending(b1) == 1
    assert await store.stored_bytes(alice, short.message_id) < 100
    # Acked everywhere: the sweep removes the body too.
    await store.ack(b1, [q[0].seq], NOW, NOW + DAY)
    await store.expire(NOW + 1)
    assert await store.stored_bytes(alice, long.message_id) < 100


async def test_revoking_a_device_drops_its_team_rows(store: Store) -> None:
    alice, (a1,) = await user_with_devices(store, "10000000001", 1)
    _, (b1, b2) = await user_with_devices(store, "10000000002", 2)
    await store.accept_team(_team_message(1, alice, a1, [b1, b2]))
    await store.revoke_device(b2, NOW)
    assert await store.count_pending(b2) == 0 and await store.count_pending(b1) == 1
