"""The client SDK against a scripted fake hub (tests/support/fakehub.py, with
attestations: tests/clients/verified_hubs.py).

What the real hub does is tested in tests/server; here the hub is a stand-in
so each test can make it misbehave exactly as the SDK must survive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from miss_client import Client, Delivered, Message, RetryPolicy, enroll
from miss_client.errors import (
    BadRecipient,
    ConnectionFailed,
    ConnectionLost,
    KeyChangePending,
    ProfileExists,
    UnverifiedPeer,
)
from miss_client.models import Peer, PeerChange, Refused
from miss_client.profile import KDF_INTERACTIVE, Profile, load_profile

from protocol import crypto
from protocol import frames as f
from protocol.errors import (
    AuthFailed,
    ForgedSender,
    InvalidCode,
    NoDevices,
    RateLimited,
    StorageUnavailable,
    UnknownUser,
)
from tests.support.authority import AUTHORITY_PK
from tests.support.client_fixtures import PASSPHRASE
from tests.support.fakehub import FakeHub, wait_for
from tests.support.verified_hubs import fake_clinician


@pytest.fixture
async def pair(fakehub: FakeHub, tmp_path: Path) -> tuple[Profile, Profile]:
    return (
        await fake_clinician(fakehub, tmp_path, "alice", "10000000001"),
        await fake_clinician(fakehub, tmp_path, "bob", "10000000002"),
    )


async def test_enroll_writes_a_profile_that_authenticates(fakehub: FakeHub, tmp_path: Path) -> None:
    profile = await fake_clinician(fakehub, tmp_path, "alice", "10000000001")
    assert load_profile(tmp_path / "alice", PASSPHRASE) == profile
    assert profile.server == fakehub.url and profile.device_id in fakehub.owner
    async with Client.connect(profile) as client:
        me = await client.lookup(user=profile.user_id)
    assert me.device(profile.device_id) is not None


async def test_enroll_failures(
    fakehub: FakeHub, tmp_path: Path, make_profile: Callable[..., Profile]
) -> None:
    kw = {"authority": AUTHORITY_PK, "kdf": KDF_INTERACTIVE}
    with pytest.raises(InvalidCode):
        await enroll(fakehub.url, "AAAA-BBBB-CCCC-DDDD", tmp_path / "x", PASSPHRASE, **kw)
    assert not (tmp_path / "x").exists(), "a failed enrollment leaves no profile directory"
    # an existing profile, or a malformed authority key, is refused before the single-use code is spent
    make_profile("taken")
    code = fakehub.invite(fakehub.add_user("Dr Y", "1"))
    with pytest.raises(ProfileExists):
        await enroll(fakehub.url, code, tmp_path / "taken", PASSPHRASE, **kw)
    with pytest.raises(ValueError, match="authority key"):
        await enroll(
            fakehub.url, code, tmp_path / "z", PASSPHRASE, authority="bm90IGEga2V5", kdf=KDF_INTERACTIVE
        )
    assert code in fakehub.codes
    with pytest.raises(ConnectionFailed):
        await enroll("ws://127.0.0.1:1/", code, tmp_path / "y", PASSPHRASE, **kw)


async def test_message_and_receipt(pair: tuple[Profile, Profile]) -> None:
    alice, bob = pair
    async with Client.connect(alice) as a:
        mid = await a.send("10000000002", "Bonjour, une question sur M. X ?")
        assert a.state.history()[0].status == "accepted"
        async with Client.connect(bob) as b:
            [message] = await b.drain(idle=0.2)
        assert isinstance(message, Message)
        assert (message.id, message.from_user, message.to_user, message.body) == (
            mid,
            alice.user_id,
            bob.user_id,
            "Bonjour, une question sur M. X ?",
        )
        assert not message.outgoing_copy
        receipt = await asyncio.wait_for(a.receive(), 5)
        assert receipt == Delivered(mid, bob.user_id, bob.device_id, receipt.ts)
        assert a.state.history()[0].delivered_to == (bob.device_id,)


async def test_copies_go_to_own_other_devices(
    fakehub: FakeHub, tmp_path: Path, pair: tuple[Profile, Profile]
) -> None:
    alice, bob = pair
    async with Client.connect(alice) as a:
        code, _expires = await a.link_code()
    phone = await enroll(
        fakehub.url,
        code,
        tmp_path / "alice-phone",
        PASSPHRASE,
        "phone",
        authority=AUTHORITY_PK,
        kdf=KDF_INTERACTIVE,
    )
    assert phone.user_id == alice.user_id and phone.device_id != alice.device_id
    async with Client.connect(alice) as a:
        # alice's desk had not pinned its own user yet: the phone is trusted on first use
        mid = await a.send(bob.user_id, "copied")
    async with Client.connect(phone) as p:
        [copy] = await p.drain(idle=0.2)
    assert isinstance(copy, Message)
    assert copy.outgoing_copy and copy.id == mid and copy.to_user == bob.user_id and copy.body == "copied"


async def test_a_device_revoked_since_the_lookup_is_dropped_and_the_message_resent(
    fakehub: FakeHub, pair: tuple[Profile, Profile]
) -> None:
    alice, bob = pair
    gone = fakehub.add_device(bob.user_id, crypto.DeviceKeys.generate())
    changes: list[PeerChange] = []
    async with Client.connect(alice) as a:
        a.on_key_change = lambda peer, change: changes.append(change)
        await a.lookup(user=bob.user_id)  # both of bob's devices pinned (first seen: no warning)
        del fakehub.users[bob.user_id].devices[gone]  # revoked: the hub answers unknown_device
        mid = await a.send(bob.user_id, "to the remaining device")
    sends = [fr for fr in fakehub.received if isinstance(fr, f.Send)]
    assert [s.id for s in sends] == [mid, mid], "resent with the same id"
    assert gone in sends[0].envs and set(sends[1].envs) == {bob.device_id}
    assert [c.removed for c in changes] == [(gone,)], "reported, without asking"
    assert not any(c.needs_acceptance for c in changes)


async def test_a_device_added_since_the_lookup_waits_for_acceptance_then_gets_the_same_message(
    fakehub: FakeHub, pair: tuple[Profile, Profile]
) -> None:
    alice, bob = pair
    changes: list[PeerChange] = []
    async with Client.connect(alice) as a:
        a.on_key_change = lambda peer, change: changes.append(change)
        await a.lookup(user=bob.user_id)  # cached and pinned before bob adds a device
        new_device = fakehub.add_device(bob.user_id, crypto.DeviceKeys.generate())
        with pytest.raises(KeyChangePending) as pending:
            await a.send(bob.user_id, "to both of bob's devices")
        assert pending.value.change.added == (new_device,)
        assert [c.added for c in changes] == [(new_device,)], "the new device is reported"
        sends = [fr for fr in fakehub.received if isinstance(fr, f.Send)]
        assert len(sends) == 1 and new_device not in sends[0].envs, "nothing sealed after the change"
        [entry] = a.state.history()
        assert entry.status == "pending", "kept, to go out once the change is accepted"
        await a.accept_keys(bob.user_id)
        assert await a.resend_pending() == [entry.id]
    sends = [fr for fr in fakehub.received if isinstance(fr, f.Send)]
    assert [s.id for s in sends] == [entry.id, entry.id]
    assert set(sends[1].envs) == {bob.device_id, new_device}
    assert any(isinstance(fr, f.Deliver) and fr.id == entry.id for fr in fakehub.pending[new_device].values())


async def test_a_user_the_hub_serves_without_attestation_is_refused(
    fakehub: FakeHub, pair: tuple[Profile, Profile]
) -> None:
    alice, bob = pair
    fakehub.unverified.add(bob.user_id)  # type: ignore[attr-defined]
    async with Client.connect(alice) as a:
        with pytest.raises(UnverifiedPeer) as refused:
            await a.send(bob.user_id, "x")
        assert (refused.value.user, refused.value.reason) == (bob.user_id, "missing")
        assert a.state.history() == [] and a.state.get_peer(bob.user_id) is None
    assert not [fr for fr in fakehub.received if isinstance(fr, f.Send)]


async def test_retryable_errors_are_retried_then_given_up(
    fakehub: FakeHub, pair: tuple[Profile, Profile]
) -> None:
    alice, bob = pair
    fast = RetryPolicy(attempts=3, default_delay=0.01)
    async with Client.connect(alice, retry=fast) as a:
        fakehub.send_errors = [StorageUnavailable(retry_after_ms=10), StorageUnavailable(retry_after_ms=10)]
        mid = await a.send(bob.user_id, "eventually")
        assert [fr.id for fr in fakehub.received if isinstance(fr, f.Send)] == [mid, mid, mid]
        fakehub.send_errors = [StorageUnavailable(retry_after_ms=10)] * 3
        with pytest.raises(StorageUnavailable):
            await a.send(bob.user_id, "not now")
        assert a.state.history()[-1].status == "pending", "kept for resend_pending"
        assert await a.resend_pending() == [a.state.history()[-1].id]
        assert a.state.history()[-1].status == "accepted"


async def test_lookups_are_retried_after_rate_limited(
    fakehub: FakeHub, pair: tuple[Profile, Profile]
) -> None:
    alice, bob = pair
    fakehub.lookup_errors = [RateLimited(retry_after_ms=200), StorageUnavailable(retry_after_ms=10)]  # type: ignore[attr-defined]
    async with Client.connect(alice, retry=RetryPolicy(attempts=3)) as a:
        started = asyncio.get_running_loop().time()
        assert (await a.lookup(rpps=bob_rpps(fakehub, bob))).user == bob.user_id
        assert asyncio.get_running_loop().time() - started >= 0.2, "waited retry_after"
    assert len([fr for fr in fakehub.received if isinstance(fr, f.Lookup)]) == 3


def bob_rpps(hub: FakeHub, profile: Profile) -> str:
    return hub.users[profile.user_id].rpps


async def test_a_message_from_a_device_the_attestation_does_not_vouch_for_is_refused(
    fakehub: FakeHub, pair: tuple[Profile, Profile]
) -> None:
    alice, bob = pair
    genuine = list(fakehub.users[alice.user_id].devices.values())
    # the hub slips in a device of its own for alice, which the authority never attested
    evil = crypto.DeviceKeys.generate()
    evil_device = fakehub.add_device(alice.user_id, evil)
    fakehub.attestations[alice.user_id] = fakehub.attest(alice.user_id, genuine)  # type: ignore[attr-defined]
    forged = crypto.new_message_id()
    plain = crypto.Plaintext(forged, alice.user_id, bob.user_id, 1, "text", "virez 10 000 € sur ce compte")
    await fakehub.deliver_raw(
        bob.device_id,
        forged,
        alice.user_id,
        evil_device,
        crypto.seal(crypto.pack_plaintext(plain), evil, bob.keys.box_pk),
    )
    async with Client.connect(bob) as b:
        assert await b.drain(idle=0.2) == []
        await wait_for(lambda: not fakehub.pending[bob.device_id])  # refused, not shown
        assert b.state.history() == []
        assert (await b.lookup(user=alice.user_id)).unattested == (evil_device,)
    assert fakehub.refusals == [(bob.device_id, forged, "sender_unverified")]


async def test_resend_with_same_id_is_delivered_once(pair: tuple[Profile, Profile]) -> None:
    alice, bob = pair
    async with Client.connect(alice) as a:
        mid = await a.send(bob.user_id, "once")
        assert await a.send(bob.user_id, "once", message_id=mid) == mid
    async with Client.connect(bob) as b:
        assert [e.id for e in await b.drain(idle=0.2)] == [mid]


async def test_redelivered_frames_are_acked_and_undecryptable_ones_refused_not_shown(
    fakehub: FakeHub, pair: tuple[Profile, Profile]
) -> None:
    alice, bob = pair
    async with Client.connect(alice) as a:
        mid = await a.send(bob.user_id, "hello")
    [(_, original)] = fakehub.pending[bob.device_id].items()
    assert isinstance(original, f.Deliver)
    # the hub lost an ack and redelivers; and something forged arrives
    await fakehub.deliver_raw(bob.device_id, mid, alice.user_id, alice.device_id, original.env)
    forged = crypto.new_message_id()
    await fakehub.deliver_raw(bob.device_id, forged, alice.user_id, alice.device_id, b"\0" * 80)
    async with Client.connect(bob) as b:
        events = await b.drain(idle=0.2)
        await wait_for(lambda: not fakehub.pending[bob.device_id])
    assert [e.id for e in events] == [mid]
    assert fakehub.refusals == [(bob.device_id, forged, "undecryptable")]
    # Alice's device learns it was refused, and shows it so, never as delivered.
    async with Client.connect(alice) as a:
        receipts = await a.drain(idle=0.2)
    refused = [e for e in receipts if isinstance(e, Refused)]
    assert [(r.id, r.device, r.reason) for r in refused] == [(forged, bob.device_id, "undecryptable")]
    assert not any(isinstance(e, Delivered) and e.id == forged for e in receipts)


async def test_unknown_malformed_and_unreachable_recipients(
    fakehub: FakeHub, pair: tuple[Profile, Profile]
) -> None:
    alice, _ = pair
    fakehub.add_user("Dr Nodevice", "10000000003")
    async with Client.connect(alice) as a:
        with pytest.raises(UnknownUser):
            await a.send("19999999999", "x")
        with pytest.raises(BadRecipient):
            await a.send("bob", "x")
        assert a.state.history() == [], "nothing recorded for a recipient that does not resolve"
        with pytest.raises(NoDevices):
            await a.send("10000000003", "nobody to read it")
        assert a.state.history()[-1].status == "failed"


async def test_fatal_error_surfaces_everywhere(fakehub: FakeHub, pair: tuple[Profile, Profile]) -> None:
    alice, bob = pair
    async with Client.connect(alice) as a:
        fakehub.fatal_on_lookup = ForgedSender()
        with pytest.raises(ForgedSender):
            await a.lookup(user=bob.user_id)
        with pytest.raises(ForgedSender):
            await a.send(bob.user_id, "after the end")
        with pytest.raises(ForgedSender):
            async for _ in a.events():
                pass
        assert a.closed


async def test_unknown_device_cannot_authenticate(
    fakehub: FakeHub, make_profile: Callable[..., Profile]
) -> None:
    stranger = make_profile("stranger", server=fakehub.url)
    with pytest.raises(AuthFailed):
        async with Client.connect(stranger):
            pass


async def test_connection_refused_is_a_clear_error(make_profile: Callable[..., Profile]) -> None:
    with pytest.raises(ConnectionFailed, match="connection refused"):
        async with Client.connect(make_profile(server="ws://127.0.0.1:1/")):
            pass


async def test_events_end_quietly_after_close_and_loudly_if_the_hub_leaves(
    fakehub: FakeHub, pair: tuple[Profile, Profile]
) -> None:
    alice, _ = pair
    async with Client.connect(alice) as a:
        reader = asyncio.create_task(anext(a.events(), None))
        await asyncio.sleep(0.05)
        await a.aclose()
        assert await reader is None
    async with Client.connect(alice) as a:
        await fakehub.conns[alice.device_id].close()
        with pytest.raises(ConnectionLost):
            await a.receive()


async def test_safety_numbers_match_on_both_sides(pair: tuple[Profile, Profile]) -> None:
    alice, bob = pair
    async with Client.connect(alice) as a:
        from_alice = await a.safety_number("10000000002")
    async with Client.connect(bob) as b:
        from_bob = await b.safety_number(alice.user_id)
    assert from_alice == from_bob and len(from_alice.replace(" ", "")) == 60


def test_peer_display() -> None:
    assert Peer("u_1", "Dr A", "123", "", "", ()).display == "Dr A (123)"
