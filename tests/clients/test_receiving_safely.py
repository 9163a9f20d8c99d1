"""What a device does with messages it cannot accept, and the checks that keep
a clinician from a profile that could not work, through the SDK against the
real in-process hub or the fake one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import nacl.signing
import pytest
from miss_client import KDF_INTERACTIVE, Client, Message, enroll
from miss_client.errors import AuthorityMismatch, BadRecipient, ConnectionFailed
from miss_client.models import Delivered, MessageHeld, Refused
from miss_client.profile import Profile, set_authority

from miss_server.app import HubServer
from protocol import crypto
from protocol.attestation import encode_authority_key
from tests.support.authority import AUTHORITY_PK
from tests.support.client_fixtures import PASSPHRASE
from tests.support.verified_hubs import AttestedFakeHub, fake_clinician, verify_on
from tests.support.wire import invite

ALICE, BOB, CAROL = "10000000001", "10000000002", "10000000003"


async def test_a_device_that_cannot_verify_the_sender_refuses_and_the_sender_is_told(
    hub: HubServer, clinician: object, tmp_path: Path
) -> None:
    """Bob's profile holds a wrong authority key. Before, his device
    acked Alice's message as "not from a verified clinician" and Alice saw
    ✓ delivered; now it refuses, and Alice sees the refusal, never delivered."""
    make = clinician  # the fixture: await make(name, rpps, **kw) -> Profile
    alice = await make("alice", ALICE)  # type: ignore[operator]
    bob = await make("bob", BOB)  # type: ignore[operator]
    wrong = bytes(nacl.signing.SigningKey.generate().verify_key)
    bob = set_authority(bob.directory, PASSPHRASE, wrong)
    async with Client.connect(alice) as a:
        mid = await a.send(BOB, "Le patient de la chambre 12 ?")
    async with Client.connect(bob) as b:
        assert b.hub_authority == AUTHORITY_PK != bob.authority_pk  # what the chat warns about
        assert await b.drain(idle=0.3) == []
        assert b.state.history() == []
    assert await hub.store.count_pending(bob.device_id) == 0  # refused rows are gone
    async with Client.connect(alice) as a:
        events = await a.drain(idle=0.3)
        assert [e for e in events if isinstance(e, Delivered)] == []
        [refused] = [e for e in events if isinstance(e, Refused)]
        assert (refused.id, refused.user, refused.device, refused.reason) == (
            mid,
            bob.user_id,
            bob.device_id,
            "sender_unverified",
        )
        [entry] = a.state.history()
        assert entry.delivered_to == () and entry.refused_by == ((bob.device_id, "sender_unverified"),)


async def test_a_sender_the_hub_lists_beyond_the_limits_holds_that_message_not_the_queue(
    fakehub: AttestedFakeHub, tmp_path: Path
) -> None:
    """A lookup_ok listing 65 devices (more than a frame may) made
    the SDK close the connection on that sender's message, at every
    connection: no later message was ever seen."""
    alice = await fake_clinician(fakehub, tmp_path, "alice", ALICE)
    bob = await fake_clinician(fakehub, tmp_path, "bob", BOB)
    carol = await fake_clinician(fakehub, tmp_path, "carol", CAROL)
    async with Client.connect(alice) as a:
        poisoned = await a.send(BOB, "un message de plus")
    for _ in range(64):  # the hub now lists 65 devices for Alice
        fakehub.add_device(alice.user_id, crypto.DeviceKeys.generate())
    async with Client.connect(carol) as c:
        later = await c.send(BOB, "et celui-ci ?")
    async with Client.connect(bob) as b:
        events = await b.drain(idle=0.3)
        assert not b.closed, "one sender must not end the connection"
        held = [e for e in events if isinstance(e, MessageHeld)]
        shown = [e for e in events if isinstance(e, Message)]
        assert [h.id for h in held] == [poisoned] and [m.id for m in shown] == [later]
        assert await b.lookup(user=carol.user_id)  # the connection still answers
    pending = fakehub.pending.get(bob.device_id, {})
    assert [fr.id for fr in pending.values()] == [poisoned], "kept for the next connection"


async def test_enrolling_with_another_authority_key_than_the_hubs_stops_before_the_code_is_spent(
    hub: HubServer, tmp_path: Path
) -> None:
    """The clinician typed the wrong key; before, the profile was
    made with it and then saw nobody."""
    _, code = await invite(hub, "Dr Alice", ALICE, verified=False)
    wrong = encode_authority_key(bytes(nacl.signing.SigningKey.generate().verify_key))
    with pytest.raises(AuthorityMismatch, match="not the one this hub uses"):
        await enroll(hub.url, code, tmp_path / "alice", PASSPHRASE, authority=wrong, kdf=KDF_INTERACTIVE)
    assert not (tmp_path / "alice").exists()
    profile = await enroll(
        hub.url, code, tmp_path / "alice", PASSPHRASE, authority=AUTHORITY_PK, kdf=KDF_INTERACTIVE
    )
    assert profile.authority_pk == AUTHORITY_PK


async def test_plain_ws_is_only_for_a_hub_on_this_machine(tmp_path: Path) -> None:
    """SPEC §2 allows ws:// on loopback only."""
    for url in ("ws://hub.chru-lille.fr/", "ws://10.1.2.3:8765/"):
        with pytest.raises(ConnectionFailed, match="use wss://"):
            await enroll(url, "AAAA-BBBB-CCCC-DDDD", tmp_path / "x", PASSPHRASE, authority=AUTHORITY_PK)
    with pytest.raises(ConnectionFailed, match="connection refused"):  # allowed, nobody listening
        await enroll("ws://127.0.0.1:1/", "AAAA", tmp_path / "y", PASSPHRASE, authority=AUTHORITY_PK)


async def test_sending_to_oneself_a_short_rpps_or_nothing_is_refused_at_once(
    hub: HubServer, clinician: object
) -> None:
    """They said "no device enrolled" and "unknown recipient"."""
    alice: Profile = await clinician("alice", ALICE)  # type: ignore[operator]
    async with Client.connect(alice) as a:
        with pytest.raises(BadRecipient, match="yourself"):
            await a.send(ALICE, "moi")
        with pytest.raises(BadRecipient, match="11 digits"):
            await a.send("10000000", "x")
        with pytest.raises(ValueError, match="empty"):
            await a.send(ALICE, "   ")
        assert a.state.history() == []


async def test_the_device_cap_answers_link_codes_with_too_many_devices(
    hub: HubServer, clinician: object, tmp_path: Path
) -> None:
    """A clinician holds at most max_devices (8)
    devices, unused link codes included."""
    from protocol.errors import TooManyDevices

    alice: Profile = await clinician("alice", ALICE)  # type: ignore[operator]
    async with Client.connect(alice) as a:
        codes = [await a.link_code() for _ in range(hub.settings.max_devices - 1)]
        with pytest.raises(TooManyDevices):
            await a.link_code()
    assert len(codes) == 7
    # Every code still works, up to the cap; the device list shows the eight.
    await asyncio.gather(
        *(
            enroll(
                hub.url, code, tmp_path / f"dev{i}", PASSPHRASE, authority=AUTHORITY_PK, kdf=KDF_INTERACTIVE
            )
            for i, (code, _) in enumerate(codes)
        )
    )
    await verify_on(hub, alice.user_id)
    async with Client.connect(alice) as a:
        assert len(await a.devices()) == 8
