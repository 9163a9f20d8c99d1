"""Care teams on a real hub over real WebSockets (SPEC §13): membership
changes checked and stored, team messages stored once and delivered once
to every device of the members with receipts, recall, lifespan, and every
bad change refused with its error, nothing stored, others unaffected."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from miss_server.app import HubServer
from miss_server.store.base import TeamInfo, TeamRecordRow
from protocol import crypto
from protocol import teams as pt
from protocol.frames import (
    Accepted,
    ChainEntry,
    Deliver,
    Delivered,
    Error,
    LinkCode,
    LinkCodeOk,
    Recall,
    RecallOk,
    TeamChain,
    TeamChainOk,
    TeamChange,
    TeamChanged,
    TeamOk,
    Teams,
    TeamsOk,
    decode,
)
from tests.support.authority import AUTHORITY_PK
from tests.support.inprocess_hub import HubFactory
from tests.support.pg_hub import postgres_store_url
from tests.support.team_wire import (
    Team,
    TeamDevice,
    attestation_of,
    change,
    now_ms,
    open_team_deliver,
    sign,
    team_send,
)
from tests.support.verified_hubs import verify_on
from tests.support.wire import invite

_rpps = iter(range(20_000_000_001, 20_000_099_999))


async def clinician(hub: HubServer, name: str, devices: int = 1, **device: Any) -> list[TeamDevice]:
    """A verified clinician with ``devices`` connected devices (all attested)."""
    _, code = await invite(hub, f"Dr {name}", str(next(_rpps)))
    first = TeamDevice(hub.url, **device)
    await first.enroll(code)
    out = [first]
    for _ in range(devices - 1):
        reply = await first.ask(LinkCode(rid=9))
        assert isinstance(reply, LinkCodeOk), reply
        other = TeamDevice(hub.url, **device)
        await other.enroll(reply.code)
        out.append(other)
    if devices > 1:
        await verify_on(hub, first.user_id)
        hub.hub.accounts.forget(first.user_id)
    return out


def targets(*users: list[TeamDevice], but: TeamDevice) -> dict[str, bytes]:
    return {d.device_id: d.keys.box_pk for devs in users for d in devs if d is not but}


async def ok(dev: TeamDevice, team: Team, op: str, user: str, hub: HubServer, **extra: object) -> TeamOk:
    reply = await change(dev, team, op, user, hub.store, AUTHORITY_PK, **extra)
    assert isinstance(reply, TeamOk), reply
    return reply


async def refused(dev: TeamDevice, frame: Any, code: str) -> Error:
    reply = await dev.ask(frame)
    assert isinstance(reply, Error) and reply.code == code and not reply.fatal, reply
    return reply


async def nothing_for(dev: TeamDevice, seconds: float = 0.3) -> None:
    """``dev`` receives no frame for ``seconds``."""
    with pytest.raises(TimeoutError):
        frame = await dev.recv(timeout=seconds)
        pytest.fail(f"unexpected {frame}")


async def bystanders_still_talk(hub: HubServer) -> None:
    """Two other clinicians exchange a message at once: the hub is unaffected."""
    (x,) = await clinician(hub, "Xavier")
    (y,) = await clinician(hub, "Yasmine")
    send = x.message(await x.lookup(y.user_id), "toujours là")
    assert isinstance(await x.ask(send), Accepted)
    got = await y.next_of(Deliver, timeout=2)
    assert got.id == send.id


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    """Each store under the hub: SQLite (the default) and PostgreSQL."""
    if request.param == "sqlite":
        yield None
    else:
        async with postgres_store_url() as url:
            yield url


def on(store_url: str | None) -> dict[str, str]:
    """The ``make_hub`` settings for ``store_url`` (None: its own SQLite file)."""
    return {} if store_url is None else {"store": store_url}


@pytest.fixture
async def hub(store_url: str | None, make_hub: HubFactory) -> HubServer:
    # store_url first: set up before make_hub, so torn down after the hub stops.
    return await make_hub(**on(store_url))


async def test_membership_changes_follow_the_chain_and_are_pushed(hub: HubServer) -> None:
    (alice,) = await clinician(hub, "Alice")
    (bob,) = await clinician(hub, "Bob")
    (carol,) = await clinician(hub, "Carol")
    team = Team()
    created = await ok(alice, team, "create", alice.user_id, hub)
    assert (created.team, created.seq, created.head) == (team.team_id, 1, team.head)
    await ok(alice, team, "add", bob.user_id, hub)
    pushed = await bob.next_of(TeamChanged)
    assert (pushed.team, pushed.seq, pushed.head) == (team.team_id, 2, team.head)
    await ok(alice, team, "add", carol.user_id, hub)
    await ok(alice, team, "promote", bob.user_id, hub)
    await ok(bob, team, "demote", alice.user_id, hub)
    await ok(bob, team, "remove", carol.user_id, hub)
    # Carol hears of every change from her addition on, her removal included.
    assert [(await carol.next_of(TeamChanged)).seq for _ in range(4)] == [3, 4, 5, 6]
    await ok(alice, team, "leave", alice.user_id, hub)
    # What the hub routes by is what the chain says.
    info = await hub.store.team_info(team.team_id)
    assert info is not None and info.members == {bob.user_id} and info.admins == {bob.user_id}
    listed = await bob.ask(Teams(rid=4))
    assert isinstance(listed, TeamsOk) and [(t.team, t.seq, t.head) for t in listed.teams] == [
        (team.team_id, 7, team.head)
    ]
    assert (await alice.ask(Teams(rid=5))) == TeamsOk(5, ())
    # The chain, to a member and to a user a record names; whole, it verifies.
    for reader in (bob, carol, alice):
        chain = await reader.ask(TeamChain(rid=6, team=team.team_id, from_seq=0))
        assert isinstance(chain, TeamChainOk) and not chain.more
        state = pt.verify_chain(
            [pt.SignedRecord(e.rec, e.sig) for e in chain.recs], AUTHORITY_PK, team.team_id
        )
        assert state.members == {bob.user_id} and state.head == team.head
    tail = await bob.ask(TeamChain(rid=7, team=team.team_id, from_seq=5))
    assert isinstance(tail, TeamChainOk) and tail.recs == tuple(
        ChainEntry(r.rec, r.sig) for r in team.records[5:]
    )
    (stranger,) = await clinician(hub, "Sam")
    await refused(stranger, TeamChain(rid=8, team=team.team_id, from_seq=0), "unknown_team")
    # Bob, the last member, leaves: the team is closed for ever.
    await ok(bob, team, "leave", bob.user_id, hub)
    assert (await hub.store.team_info(team.team_id)).closed  # type: ignore[union-attr]


async def test_a_team_message_reaches_every_device_once_with_receipts(hub: HubServer) -> None:
    alice = await clinician(hub, "Alice", 2)
    bob = await clinician(hub, "Bob", 2)
    carol = await clinician(hub, "Carol", 2)
    team = Team()
    await ok(alice[0], team, "create", alice[0].user_id, hub)
    await ok(alice[0], team, "add", bob[0].user_id, hub)
    await ok(alice[0], team, "add", carol[0].user_id, hub)
    send = team_send(
        alice[0], team, targets(alice, bob, carol, but=alice[0]), "Patient du lit 12 : glycémie ?"
    )
    accepted = await alice[0].ask(send)
    assert accepted == Accepted(send.id)
    # Stored once: the body, and at most 150 bytes per device.
    stored = await hub.store.stored_bytes(alice[0].user_id, send.id)
    assert stored <= len(send.body or b"") + 150 * 5
    for dev in (alice[1], *bob, *carol):
        got = await dev.next_of(Deliver)
        assert (got.id, got.team, got.from_user, got.from_device) == (
            send.id,
            team.team_id,
            alice[0].user_id,
            alice[0].device_id,
        )
        plain = open_team_deliver(dev, got, alice[0])
        assert (plain.body, plain.to_user, plain.head) == (
            "Patient du lit 12 : glycémie ?",
            team.team_id,
            team.head,
        )
        await dev.ack(got.seq)
    # Each of alice's devices hears from each of bob's and carol's; her own copy earns none.
    for dev in alice:
        seen = set()
        for _ in range(4):
            receipt = await dev.next_of(Delivered)
            assert receipt.id == send.id
            seen.add(receipt.device)
        assert seen == {d.device_id for d in (*bob, *carol)}
    for dev in (*alice, *bob, *carol):
        await nothing_for(dev, 0.2)  # exactly once
    # A resend of the id stores nothing new.
    assert await alice[0].ask(send) == Accepted(send.id, dup=True)


async def test_a_removed_or_departed_member_gets_nothing_after(hub: HubServer) -> None:
    (alice,) = await clinician(hub, "Alice")
    bob = await clinician(hub, "Bob", 2)
    (carol,) = await clinician(hub, "Carol")
    team = Team()
    await ok(alice, team, "create", alice.user_id, hub)
    await ok(alice, team, "add", bob[0].user_id, hub)
    await ok(alice, team, "add", carol.user_id, hub)
    await ok(alice, team, "remove", bob[0].user_id, hub)
    # Bob's devices are no longer targets: a send naming them is refused.
    await refused(alice, team_send(alice, team, targets(bob, [carol], but=alice), "x"), "unknown_device")
    send = team_send(alice, team, targets([carol], but=alice), "après le départ de Bob")
    assert isinstance(await alice.ask(send), Accepted)
    assert (await carol.next_of(Deliver)).id == send.id
    for dev in bob:
        assert await hub.store.count_pending(dev.device_id) == 0
        with pytest.raises(TimeoutError):
            await dev.next_of(Deliver, timeout=0.3)
    # Carol leaves: her sends are refused, not stored.
    await ok(carol, team, "leave", carol.user_id, hub)
    late = team_send(carol, team, targets([alice], but=carol), "encore moi")
    await refused(carol, late, "not_member")
    assert not await hub.store.has_sent(carol.user_id, late.id)
    await refused(
        carol,
        team_send(carol, Team(), {alice.device_id: alice.keys.box_pk}, "?", head=bytes(32)),
        "unknown_team",
    )


async def test_missing_devices_names_the_members_devices_not_covered(hub: HubServer) -> None:
    (alice,) = await clinician(hub, "Alice")
    bob = await clinician(hub, "Bob", 2)
    team = Team()
    await ok(alice, team, "create", alice.user_id, hub)
    await ok(alice, team, "add", bob[0].user_id, hub)
    reply = await refused(alice, team_send(alice, team, targets(bob[:1], but=alice), "x"), "missing_devices")
    assert reply.missing == (bob[1].device_id,)


async def _stored(hub: HubServer, team: Team) -> tuple[TeamInfo | None, list[TeamRecordRow]]:
    records, _ = await hub.store.team_records(team.team_id, 0, 1 << 30)
    return await hub.store.team_info(team.team_id), records


async def test_bad_changes_are_refused_and_store_nothing(store_url: str | None, make_hub: HubFactory) -> None:
    hub = await make_hub(max_team_members=3, max_teams_per_user=2, **on(store_url))
    (alice,) = await clinician(hub, "Alice")
    (bob,) = await clinician(hub, "Bob")
    (carol,) = await clinician(hub, "Carol")
    (dan,) = await clinician(hub, "Dan")
    att = await attestation_of(hub.store, alice.user_id)
    team = Team()
    await ok(alice, team, "create", alice.user_id, hub)
    await ok(alice, team, "add", bob.user_id, hub)
    before = await _stored(hub, team)

    def frame(signed: pt.SignedRecord, team_id: str | None = None) -> TeamChange:
        return TeamChange(rid=11, team=team_id or team.team_id, rec=signed.rec, sig=signed.sig)

    bob_att = await attestation_of(hub.store, bob.user_id)
    cases = [
        # not an admin
        (bob, frame(sign(bob, team, "add", carol.user_id, bob_att)), "team_forbidden"),
        # the last admin leaving while others remain
        (alice, frame(sign(alice, team, "leave", alice.user_id, att)), "team_forbidden"),
        # a signature that does not verify
        (
            alice,
            TeamChange(11, team.team_id, sign(alice, team, "add", carol.user_id, att).rec, bytes(64)),
            "bad_team_record",
        ),
        # the frame names another team than the record
        (alice, frame(sign(alice, team, "add", carol.user_id, att), pt.new_team_id()), "bad_team_record"),
        # signed with another user's attestation
        (alice, frame(sign(alice, team, "add", carol.user_id, bob_att)), "bad_team_record"),
        # 'at' ten minutes off the hub's clock
        (
            alice,
            frame(sign(alice, team, "add", carol.user_id, att, at=now_ms() - 600_000)),
            "bad_team_record",
        ),
        # garbage
        (alice, TeamChange(11, team.team_id, b"\x81\xa1v\x02", bytes(64)), "bad_team_record"),
    ]
    # a record that does not follow the head (someone changed the team meanwhile)
    assert team.state is not None
    stale = Team(team.state, list(team.records), team.team_id)
    stale.state = pt.TeamState(
        team.team_id, "x", None, None, team.state.members, team.state.admins, 1, team.records[0].hash()
    )
    cases.append((alice, frame(sign(alice, stale, "add", carol.user_id, att)), "team_conflict"))
    # a creation of a team that exists
    again = Team(team_id=team.team_id)
    cases.append(
        (alice, frame(sign(alice, again, "create", alice.user_id, att, name="Doublon")), "team_conflict")
    )
    # a change of a team that does not exist
    ghost = Team(team.state, [], pt.new_team_id())
    ghost.state = pt.TeamState(
        ghost.team_id, "x", None, None, frozenset({alice.user_id}), frozenset({alice.user_id}), 1, bytes(32)
    )
    cases.append((alice, frame(sign(alice, ghost, "add", carol.user_id, att), ghost.team_id), "unknown_team"))
    for dev, bad, code in cases:
        await refused(dev, bad, code)
        assert await _stored(hub, team) == before, code
    # Caps: the team at max_team_members; a user at max_teams_per_user.
    await ok(alice, team, "add", carol.user_id, hub)
    full = await _stored(hub, team)
    await refused(alice, frame(sign(alice, team, "add", dan.user_id, att)), "team_full")
    assert await _stored(hub, team) == full
    other = Team()
    await ok(dan, other, "create", dan.user_id, hub)
    third = Team()
    await ok(carol, third, "create", carol.user_id, hub)  # carol: now in 2 teams
    await refused(
        dan,
        frame(
            sign(dan, other, "add", carol.user_id, await attestation_of(hub.store, dan.user_id)),
            other.team_id,
        ),
        "team_full",
    )
    assert (await hub.store.team_info(other.team_id)).members == {dan.user_id}  # type: ignore[union-attr]
    await bystanders_still_talk(hub)


async def test_a_send_with_a_stale_head_is_told_the_team_changed(hub: HubServer) -> None:
    (alice,) = await clinician(hub, "Alice")
    (bob,) = await clinician(hub, "Bob")
    team = Team()
    await ok(alice, team, "create", alice.user_id, hub)
    await ok(alice, team, "add", bob.user_id, hub)
    send = team_send(alice, team, targets([bob], but=alice), "x", head=team.records[0].hash())
    await refused(alice, send, "team_changed")
    assert not await hub.store.has_sent(alice.user_id, send.id)
    assert await hub.store.count_pending(bob.device_id) == 0
    await bystanders_still_talk(hub)


async def test_recall_before_delivery_leaves_nothing_to_deliver(hub: HubServer) -> None:
    (alice,) = await clinician(hub, "Alice")
    bob = await clinician(hub, "Bob", 2)
    team = Team()
    await ok(alice, team, "create", alice.user_id, hub)
    await ok(alice, team, "add", bob[0].user_id, hub)
    for dev in bob:
        await dev.close()
    send = team_send(alice, team, targets(bob, but=alice), "erreur de patient")
    assert isinstance(await alice.ask(send), Accepted)
    done = await alice.ask(Recall(rid=12, id=send.id))
    assert done == RecallOk(12, send.id, 2)
    for dev in bob:
        await dev.auth()
        with pytest.raises(TimeoutError):
            await dev.next_of(Deliver, timeout=0.3)
    # Not one's own message: refused; nothing deleted.
    await refused(bob[0], Recall(rid=13, id=send.id), "team_forbidden")


async def test_rows_of_a_message_with_a_lifespan_go_at_its_end(hub: HubServer) -> None:
    (alice,) = await clinician(hub, "Alice")
    (bob,) = await clinician(hub, "Bob")
    team = Team()
    await ok(alice, team, "create", alice.user_id, hub)
    await ok(alice, team, "add", bob.user_id, hub)
    await bob.close()
    hour = 3_600_000
    short = team_send(alice, team, targets([bob], but=alice), "1 h", ttl=hour)
    plain = team_send(alice, team, targets([bob], but=alice), "30 jours")
    one_to_one = alice.message(await alice.lookup(bob.user_id), "1:1, 1 h")
    one_to_one = type(one_to_one)(one_to_one.id, one_to_one.sender, one_to_one.to, one_to_one.envs, ttl=hour)
    for frame in (short, plain, one_to_one):
        assert isinstance(await alice.ask(frame), Accepted)
    assert await hub.store.count_pending(bob.device_id) == 3
    # The expiry sweep, an hour later: the two messages with a lifespan are gone.
    assert await hub.store.expire(now_ms() + hour + 1000) == 2
    assert await hub.store.count_pending(bob.device_id) == 1
    await bob.auth()
    got = await bob.next_of(Deliver)
    assert got.id == plain.id


async def test_team_rows_wait_for_a_connection_that_names_teams(hub: HubServer) -> None:
    (alice,) = await clinician(hub, "Alice")
    (bob,) = await clinician(hub, "Bob")
    team = Team()
    await ok(alice, team, "create", alice.user_id, hub)
    await ok(alice, team, "add", bob.user_id, hub)
    await bob.close()
    bob.caps = None  # an older client
    await bob.auth()
    send = team_send(alice, team, targets([bob], but=alice), "pour Bob")
    assert isinstance(await alice.ask(send), Accepted)
    await nothing_for(bob, 0.4)  # neither the row nor team_changed
    assert await hub.store.count_pending(bob.device_id) == 1
    await bob.close()
    bob.caps = ("teams",)
    await bob.auth()
    got = await bob.next_of(Deliver)
    assert got.id == send.id and open_team_deliver(bob, got, alice).body == "pour Bob"


async def test_an_authority_created_team_is_routed_like_any(hub: HubServer) -> None:
    """A team created with the authority's key (as miss-admin does) takes
    changes and messages from its first admin's devices."""
    from tests.support.authority import AUTHORITY

    (alice,) = await clinician(hub, "Alice")
    (bob,) = await clinician(hub, "Bob")
    team = Team()
    rec = pt.next_record(
        None, "create", alice.user_id, by=pt.AUTHORITY, at=now_ms(), team=team.team_id, name="Garde"
    )
    signed = pt.sign_record_authority(rec, AUTHORITY)
    assert isinstance(await alice.ask(TeamChange(1, team.team_id, signed.rec, signed.sig)), TeamOk)
    team.accepted(signed, AUTHORITY_PK)
    await ok(alice, team, "add", bob.user_id, hub)
    send = team_send(alice, team, targets([bob], but=alice), "ok")
    assert isinstance(await alice.ask(send), Accepted)
    assert (await bob.next_of(Deliver)).id == send.id
    assert crypto.BODY_CONTEXT  # the protocol's body context exists


async def test_concurrent_changes_one_wins_the_other_conflicts(hub: HubServer) -> None:
    alice = await clinician(hub, "Alice", 2)
    (bob,) = await clinician(hub, "Bob")
    (carol,) = await clinician(hub, "Carol")
    team = Team()
    await ok(alice[0], team, "create", alice[0].user_id, hub)
    att = await attestation_of(hub.store, alice[0].user_id)
    one = sign(alice[0], team, "add", bob.user_id, att)
    two = sign(alice[1], team, "add", carol.user_id, att)
    replies = await asyncio.gather(
        alice[0].ask(TeamChange(1, team.team_id, one.rec, one.sig)),
        alice[1].ask(TeamChange(1, team.team_id, two.rec, two.sig)),
    )
    assert sorted(type(r).__name__ for r in replies) == ["Error", "TeamOk"]
    assert [r.code for r in replies if isinstance(r, Error)] == ["team_conflict"]
    assert (await hub.store.team_info(team.team_id)).seq == 2  # type: ignore[union-attr]


async def test_a_long_chain_comes_in_pages_of_at_most_48_kib(hub: HubServer) -> None:
    (alice,) = await clinician(hub, "Alice")
    (bob,) = await clinician(hub, "Bob")
    team = Team()
    await ok(alice, team, "create", alice.user_id, hub)
    for _ in range(60):
        await ok(alice, team, "add", bob.user_id, hub)
        await ok(alice, team, "remove", bob.user_id, hub)
    got: list[ChainEntry] = []
    pages = 0
    while True:
        await bob.send_frame(TeamChain(rid=20, team=team.team_id, from_seq=len(got)))
        while not isinstance(page := decode(raw := await bob._recv_bytes()), TeamChainOk):
            pass  # team_changed pushes of the changes above
        assert page.recs and len(raw) <= 48 * 1024  # the whole frame
        got.extend(page.recs)
        pages += 1
        if not page.more:
            break
    assert pages > 1 and len(got) == 121
    state = pt.verify_chain([pt.SignedRecord(e.rec, e.sig) for e in got], AUTHORITY_PK, team.team_id)
    assert state.head == team.head and state.members == {alice.user_id}


async def test_team_requests_spend_the_devices_budget(make_hub: HubFactory) -> None:
    hub = await make_hub(rate_device="1/min burst 3")
    (alice,) = await clinician(hub, "Alice")
    team = Team()
    await ok(alice, team, "create", alice.user_id, hub)  # 1
    assert isinstance(await alice.ask(Teams(rid=1)), TeamsOk)  # 2
    assert isinstance(await alice.ask(TeamChain(rid=2, team=team.team_id, from_seq=0)), TeamChainOk)  # 3
    limited = await refused(alice, Recall(rid=3, id=bytes(16)), "rate_limited")
    assert limited.rid == 3 and limited.retry_after
