"""Presence in the client SDK (SPEC §6.7) against the fake hub: set_status,
watch, PresenceChanged events, and request matching with pushes in between."""

from __future__ import annotations

from pathlib import Path

import pytest
from miss_client import Client, Message, PresenceChanged, PresenceInfo, RetryPolicy
from miss_client.errors import BadRecipient
from miss_client.profile import Profile

from protocol import frames as f
from protocol.errors import StorageUnavailable, UnknownUser
from tests.support.client_fixtures import next_event
from tests.support.fakehub import FakeHub, wait_for
from tests.support.verified_hubs import fake_clinician

ALICE_RPPS, BOB_RPPS, CAROL_RPPS = "10000000001", "10000000002", "10000000003"


@pytest.fixture
async def trio(fakehub: FakeHub, tmp_path: Path) -> tuple[Profile, Profile, Profile]:
    return (
        await fake_clinician(fakehub, tmp_path, "alice", ALICE_RPPS),
        await fake_clinician(fakehub, tmp_path, "bob", BOB_RPPS),
        await fake_clinician(fakehub, tmp_path, "carol", CAROL_RPPS),
    )


async def no_presence_event(client: Client) -> None:
    assert not [e for e in await client.drain(idle=0.2) if isinstance(e, PresenceChanged)]


def watching(hub: FakeHub, profile: Profile) -> tuple[str, ...]:
    return hub.watchers.get(hub.conns[profile.device_id], ())


async def test_status_is_set_and_watch_answers_the_visible_users(
    fakehub: FakeHub, trio: tuple[Profile, Profile, Profile]
) -> None:
    alice, bob, carol = trio
    fakehub.hidden.add(carol.user_id)
    async with Client.connect(alice) as a:
        await a.set_status("on_call")
        assert fakehub.statuses[alice.user_id] == "on_call"
        async with Client.connect(bob) as b:
            unknown = "u_" + "9" * 16
            # RPPS numbers and user ids, a duplicate, a hidden and an unknown user
            got = await b.watch([ALICE_RPPS, bob.user_id, ALICE_RPPS, carol.user_id, unknown])
            assert got == [
                PresenceInfo(alice.user_id, "on_call", True),
                PresenceInfo(bob.user_id, "available", True),
            ]
            sent = [fr for fr in fakehub.received if isinstance(fr, f.Watch)]
            assert sent[-1].users == (alice.user_id, bob.user_id, carol.user_id, unknown)
            assert b.watched == {alice.user_id, bob.user_id}
            assert b.presence(alice.user_id) == b.presence(ALICE_RPPS) == got[0]
            assert b.presence(carol.user_id) is None


async def test_changes_arrive_as_events_not_in_history(
    fakehub: FakeHub, trio: tuple[Profile, Profile, Profile]
) -> None:
    alice, bob, _ = trio
    async with Client.connect(bob) as b:
        assert await b.watch([alice.user_id]) == [PresenceInfo(alice.user_id, "available", False)]
        async with Client.connect(alice) as a:
            assert await next_event(b) == PresenceChanged(alice.user_id, "available", True)
            await a.set_status("busy")
            assert await next_event(b) == PresenceChanged(alice.user_id, "busy", True)
            # a repeat of what bob knows is not an event; the next change is
            await fakehub.push_presence(alice.user_id)
            await a.set_status("off_duty")
            assert await next_event(b) == PresenceChanged(alice.user_id, "off_duty", True)
        assert await next_event(b) == PresenceChanged(alice.user_id, "off_duty", False)
        assert b.presence(alice.user_id) == PresenceInfo(alice.user_id, "off_duty", False)
        assert b.state.history() == []


async def test_watch_replaces_the_previous_list(
    fakehub: FakeHub, trio: tuple[Profile, Profile, Profile]
) -> None:
    alice, bob, carol = trio
    async with Client.connect(bob) as b:
        await b.watch([alice.user_id])
        assert await b.watch([CAROL_RPPS]) == [PresenceInfo(carol.user_id, "available", False)]
        assert b.watched == {carol.user_id} and b.presence(alice.user_id) is None
        assert watching(fakehub, bob) == (carol.user_id,)
        # a push for alice sent before the hub saw the new list is stale: dropped
        await fakehub.conns[bob.device_id].send(f.encode(f.Presence(alice.user_id, "busy", True)))
        await fakehub.set_status(carol.user_id, "on_call")
        assert await next_event(b) == PresenceChanged(carol.user_id, "on_call", False)
        assert b.presence(alice.user_id) is None
        # an empty list stops watching
        assert await b.watch([]) == []
        assert b.watched == frozenset() and watching(fakehub, bob) == ()
        await fakehub.set_status(carol.user_id, "busy")
        await no_presence_event(b)


async def test_pushes_between_requests_and_answers_do_not_confuse_matching(
    fakehub: FakeHub, trio: tuple[Profile, Profile, Profile]
) -> None:
    alice, bob, carol = trio
    async with Client.connect(bob) as b:
        # a push for a user being added arrives before the watching answer
        fakehub.before_reply = [f.Presence(alice.user_id, "busy", True), f.Ok(rid=9999)]
        got = await b.watch([alice.user_id, carol.user_id])
        assert [p.user for p in got] == [alice.user_id, carol.user_id]
        assert await next_event(b) == PresenceChanged(alice.user_id, "busy", True)
        # the snapshot read after it is what the cache holds
        assert b.presence(alice.user_id) == PresenceInfo(alice.user_id, "available", False)
        # and a push right behind a snapshot is not overwritten by it
        fakehub.after_reply = [f.Presence(alice.user_id, "on_call", True)]
        await b.watch([alice.user_id, carol.user_id])
        assert await next_event(b) == PresenceChanged(alice.user_id, "on_call", True)
        assert b.presence(alice.user_id) == PresenceInfo(alice.user_id, "on_call", True)

        for request in ("lookup", "set_status", "link_code", "watch"):
            fakehub.before_reply = [
                f.Presence(carol.user_id, "on_call", True),
                f.Presence(carol.user_id, "off_duty", False),
            ]
            if request == "lookup":
                assert (await b.lookup(user=carol.user_id, refresh=True)).user == carol.user_id
            elif request == "set_status":
                await b.set_status("busy")
            elif request == "link_code":
                code, _ = await b.link_code()
                assert code in fakehub.codes
            else:
                assert [p.user for p in await b.watch([carol.user_id])] == [carol.user_id]
            assert [await next_event(b), await next_event(b)] == [
                PresenceChanged(carol.user_id, "on_call", True),
                PresenceChanged(carol.user_id, "off_duty", False),
            ], request


async def test_messages_and_presence_share_the_event_stream(
    fakehub: FakeHub, trio: tuple[Profile, Profile, Profile]
) -> None:
    alice, bob, _ = trio
    async with Client.connect(bob) as b:
        await b.watch([ALICE_RPPS])
        async with Client.connect(alice) as a:
            await a.send(BOB_RPPS, "vous êtes de garde ?")
            await a.set_status("on_call")
        events = []
        async for event in b.events():
            events.append(event)
            if len(events) == 4:
                break
        assert [e.body for e in b.state.history()] == ["vous êtes de garde ?"]
    assert [type(e) for e in events] == [PresenceChanged, Message, PresenceChanged, PresenceChanged]
    assert [(e.status, e.online) for e in events if isinstance(e, PresenceChanged)] == [
        ("available", True),
        ("on_call", True),
        ("on_call", False),
    ]


async def test_retryable_errors_are_retried_then_given_up(
    fakehub: FakeHub, trio: tuple[Profile, Profile, Profile]
) -> None:
    alice, bob, _ = trio
    fast = RetryPolicy(attempts=2, default_delay=0.01)
    async with Client.connect(bob, retry=fast) as b:
        fakehub.presence_errors = [StorageUnavailable(retry_after_ms=10)]
        await b.set_status("on_call")
        assert [fr.status for fr in fakehub.received if isinstance(fr, f.SetStatus)] == ["on_call"] * 2
        assert fakehub.statuses[bob.user_id] == "on_call"

        fakehub.presence_errors = [StorageUnavailable(retry_after_ms=10)]
        assert [p.user for p in await b.watch([alice.user_id])] == [alice.user_id]

        fakehub.presence_errors = [StorageUnavailable(retry_after_ms=10)] * 2
        with pytest.raises(StorageUnavailable):
            await b.watch([bob.user_id])
        assert b.watched == {alice.user_id}, "a failed watch leaves the last confirmed list"
        # the connection is still usable
        assert [p.user for p in await b.watch([bob.user_id])] == [bob.user_id]


async def test_bad_arguments_are_refused_before_the_hub_sees_them(
    fakehub: FakeHub, trio: tuple[Profile, Profile, Profile]
) -> None:
    _, bob, _ = trio
    async with Client.connect(bob) as b:
        with pytest.raises(ValueError, match="unknown status"):
            await b.set_status("away")
        with pytest.raises(BadRecipient):
            await b.watch(["alice"])
        with pytest.raises(UnknownUser):
            await b.watch(["19999999999"])
        with pytest.raises(ValueError, match="at most 512"):
            await b.watch([f"u_{i:016x}" for i in range(513)])
        assert not [fr for fr in fakehub.received if isinstance(fr, f.SetStatus | f.Watch)]
        assert not b.closed


async def test_presence_ends_with_the_connection(
    fakehub: FakeHub, trio: tuple[Profile, Profile, Profile]
) -> None:
    alice, bob, _ = trio
    async with Client.connect(bob) as b:
        await b.watch([alice.user_id])
        assert watching(fakehub, bob) == (alice.user_id,)
    await wait_for(lambda: not fakehub.watchers)
    async with Client.connect(bob) as b:
        assert b.watched == frozenset() and b.presence(alice.user_id) is None
