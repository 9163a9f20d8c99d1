"""Verified clinicians in the SDK (SPEC §11), against the real in-process hub
with real NaCl keys: what the client checks before it encrypts, key pinning
and acceptance, verification in person, directory search, own devices and
revocation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import nacl.signing
import pytest
from miss_client import Client, Message, Profile
from miss_client.connection import close_error
from miss_client.errors import KeyChangePending, UnverifiedPeer
from miss_client.models import Peer, PeerChange

from miss_server.app import HubServer
from miss_server.store.base import AuditEvent
from protocol import attestation, crypto
from protocol import frames as f
from protocol.errors import AccountSuspended, DeviceRevoked, Forbidden, NoDevices, NotVerified, UnknownUser
from tests.support.authority import verify
from tests.support.clock import DAY_MS, now_ms
from tests.support.tamper import HostileOperator
from tests.support.verified_hubs import (
    AttestedFakeHub,
    ClinicianFactory,
    enroll_linked,
    fake_clinician,
    verify_on,
)

ALICE, BOB, CAROL, DAVE = "10000000001", "10000000002", "10000000003", "10000000004"


class Changes:
    """An ``on_key_change`` that records what it is told."""

    def __init__(self) -> None:
        self.seen: list[tuple[Peer, PeerChange]] = []

    def __call__(self, peer: Peer, change: PeerChange) -> None:
        self.seen.append((peer, change))

    @property
    def changes(self) -> list[PeerChange]:
        return [c for _, c in self.seen]


async def queued(hub: HubServer, *profiles: Profile) -> list[int]:
    return [await hub.store.count_pending(p.device_id) for p in profiles]


# --- SPEC §11.2 step 1-2: peers that are refused ---------------------------------------------


#: What a hostile (or broken) hub serves for bob, by the reason the client refuses him.
FORGERIES: dict[str, Callable[[AttestedFakeHub, str, str], None]] = {
    "missing": lambda hub, alice, bob: hub.unverified.add(bob),
    "expired": lambda hub, alice, bob: hub.attestations.__setitem__(
        bob, hub.attest(bob, not_before=now_ms() - 2 * DAY_MS, not_after=now_ms() - DAY_MS)
    ),
    "not_yet_valid": lambda hub, alice, bob: hub.attestations.__setitem__(
        bob, hub.attest(bob, not_before=now_ms() + DAY_MS, not_after=now_ms() + 2 * DAY_MS)
    ),
    "signature": lambda hub, alice, bob: hub.attestations.__setitem__(
        bob, hub.attest(bob, key=nacl.signing.SigningKey.generate())
    ),
    "wrong_user": lambda hub, alice, bob: hub.attestations.__setitem__(bob, hub.attest(bob, as_user=alice)),
}


@pytest.mark.parametrize("reason", list(FORGERIES))
async def test_a_peer_whose_attestation_does_not_verify_is_refused(
    fakehub: AttestedFakeHub, tmp_path: Path, reason: str
) -> None:
    """SPEC §11.2 step 1, against a hub that lists what the real one hides."""
    alice = await fake_clinician(fakehub, tmp_path, "alice", ALICE)
    bob = await fake_clinician(fakehub, tmp_path, "bob", BOB)
    FORGERIES[reason](fakehub, alice.user_id, bob.user_id)
    async with Client.connect(alice) as a:
        with pytest.raises(UnverifiedPeer) as refused:
            await a.send(BOB, "Bonjour, êtes-vous de garde ?")
        assert (refused.value.user, refused.value.reason, refused.value.own) == (bob.user_id, reason, False)
        assert a.state.history() == [], "nothing recorded"
        assert a.state.get_peer(bob.user_id) is None, "not pinned, not shown as a clinician"
        with pytest.raises(UnverifiedPeer):
            await a.lookup(user=bob.user_id, refresh=True)
    assert not [fr for fr in fakehub.received if isinstance(fr, f.Send)], "nothing was sent for bob"


async def test_an_attestation_older_than_one_already_seen_is_refused(
    fakehub: AttestedFakeHub, tmp_path: Path
) -> None:
    """SPEC §11.2 step 1: a hub replaying the attestation from before a
    revocation, to a client that saw the one after it."""
    alice = await fake_clinician(fakehub, tmp_path, "alice", ALICE)
    bob = await fake_clinician(fakehub, tmp_path, "bob", BOB)
    before = fakehub.attest(bob.user_id, not_before=now_ms() - 120_000)
    fakehub.attestations[bob.user_id] = fakehub.attest(bob.user_id, not_before=now_ms() - 60_000)
    async with Client.connect(alice) as a:
        await a.send(BOB, "avec l'attestation du jour")
        fakehub.attestations[bob.user_id] = before
        with pytest.raises(UnverifiedPeer) as stale:
            await a.lookup(user=bob.user_id, refresh=True)
        assert stale.value.reason == "stale"
        with pytest.raises(UnverifiedPeer):
            await a.send(BOB, "avec l'ancienne")


@pytest.mark.parametrize("reason", ["missing", "expired", "not_yet_valid", "signature", "wrong_user"])
async def test_the_real_hub_does_not_list_clinicians_it_does_not_verify(
    hub: HubServer, clinician: ClinicianFactory, reason: str
) -> None:
    """SPEC §11.3: a lookup finds only verified, unsuspended clinicians."""
    alice = await clinician("alice", ALICE)
    bob = await clinician("bob", BOB, verified=False)
    if reason == "expired":
        await verify_on(hub, bob.user_id, not_before=now_ms() - 2 * DAY_MS, not_after=now_ms() - DAY_MS)
    elif reason == "not_yet_valid":
        await verify_on(hub, bob.user_id, not_before=now_ms() + DAY_MS, not_after=now_ms() + 2 * DAY_MS)
    elif reason == "signature":
        await verify_on(hub, bob.user_id, key=nacl.signing.SigningKey.generate())
    elif reason == "wrong_user":
        await HostileOperator(hub).give_attestation(bob.user_id, await verify_on(hub, alice.user_id))
    async with Client.connect(alice) as a:
        with pytest.raises(UnknownUser):
            await a.send(BOB, "Bonjour, êtes-vous de garde ?")
        assert a.state.history() == []
    assert await queued(hub, bob) == [0], "nothing was stored for bob"


async def test_a_peer_whose_attestation_does_not_match_its_device_keys_is_never_encrypted_to(
    hub: HubServer, clinician: ClinicianFactory
) -> None:
    alice = await clinician("alice", ALICE)
    bob = await clinician("bob", BOB, verified=False)
    forged = crypto.DeviceKeys.generate()
    # the authority signed other keys for bob's device than those the hub lists
    await verify(
        hub.store,
        bob.user_id,
        devices=[attestation.AttestedDevice(bob.device_id, forged.sign_pk, forged.box_pk)],
    )
    seen = Changes()
    async with Client.connect(alice) as a:
        a.on_key_change = seen
        with pytest.raises(KeyChangePending) as pending:
            await a.send(BOB, "Bonjour")
        assert pending.value.change.substituted == (bob.device_id,)
        assert seen.changes == [PeerChange(bob.user_id, first_seen=True, substituted=(bob.device_id,))]
        peer = await a.lookup(user=bob.user_id)
        assert peer.devices == () and peer.substituted == (bob.device_id,)
        # even once the user acknowledges it, the listed keys get nothing
        await a.accept_keys(bob.user_id)
        with pytest.raises(NoDevices):
            await a.send(BOB, "Bonjour")
    assert await queued(hub, bob) == [0], "nothing was stored for bob"


async def test_the_identity_shown_comes_from_the_attestation(
    hub: HubServer, clinician: ClinicianFactory
) -> None:
    alice = await clinician("alice", ALICE)
    bob = await clinician("bob", BOB)
    await HostileOperator(hub).rename_user(bob.user_id, "Dr Mallory")
    async with Client.connect(alice) as a:
        peer = await a.lookup(rpps=BOB)
        assert (peer.name, peer.rpps, peer.organisation) == ("Dr Bob", BOB, "CHRU Test")
        assert peer.attested_until > now_ms()
        assert a.state.get_peer(bob.user_id).name == "Dr Bob"  # type: ignore[union-attr]
        assert [e.name for e in await a.search(BOB)] == ["Dr Bob"]


# --- SPEC §11.2 step 3: pinning ---------------------------------------------------------------


async def test_a_substituted_device_key_warns_and_nothing_is_sealed_to_it(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    alice = await clinician("alice", ALICE)
    bob = await clinician("bob", BOB, label="phone")
    laptop = await enroll_linked(hub, bob, tmp_path / "bob-laptop")  # verified again: both attested
    async with Client.connect(alice) as a:
        first = await a.send(BOB, "première question")
    async with Client.connect(bob) as b, Client.connect(laptop) as lt:
        assert [m.id for m in await b.drain(idle=0.3) if isinstance(m, Message)] == [first]
        assert [m.id for m in await lt.drain(idle=0.3) if isinstance(m, Message)] == [first]
    assert await queued(hub, bob, laptop) == [0, 0]

    # The hub turns hostile: it lists its own box key for bob's laptop.
    evil = crypto.DeviceKeys.generate()
    await HostileOperator(hub).replace_box_key(laptop.device_id, evil.box_pk)
    seen = Changes()
    async with Client.connect(alice) as a:
        a.on_key_change = seen
        peer = await a.lookup(user=bob.user_id, refresh=True)
        assert seen.changes == [PeerChange(bob.user_id, substituted=(laptop.device_id,))]
        assert [d.device for d in peer.devices] == [bob.device_id] and peer.substituted == (laptop.device_id,)
        with pytest.raises(KeyChangePending) as pending:
            await a.send(BOB, "deuxième question")
        assert pending.value.change.substituted == (laptop.device_id,)
        assert [e.body for e in a.state.history()] == ["première question"]
        assert await queued(hub, bob, laptop) == [0, 0]

        # Acknowledged: messages go on to bob's genuine device, never to the substituted key.
        await a.accept_keys(bob.user_id)
        third = await a.send(BOB, "troisième question")
        assert seen.changes == [PeerChange(bob.user_id, substituted=(laptop.device_id,))], "warned once"
    assert await queued(hub, bob, laptop) == [1, 0]
    for row in await hub.store.pending(laptop.device_id, 0, 100, now_ms()):
        with pytest.raises(crypto.EnvelopeError):
            crypto.open_envelope(row.payload, evil, alice.keys.box_pk)
    async with Client.connect(bob) as b:
        assert [m.id for m in await b.drain(idle=0.3) if isinstance(m, Message)] == [third]


async def test_a_new_device_waits_for_acceptance_then_receives(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    alice = await clinician("alice", ALICE)
    bob = await clinician("bob", BOB, label="phone")
    async with Client.connect(alice) as a:
        await a.send(BOB, "avant")
    async with Client.connect(bob) as b:
        await b.drain(idle=0.3)
    laptop = await enroll_linked(hub, bob, tmp_path / "bob-laptop")  # and verified again
    seen = Changes()
    async with Client.connect(alice) as a:
        a.on_key_change = seen
        with pytest.raises(KeyChangePending) as pending:
            await a.send(BOB, "après")
        assert pending.value.change == PeerChange(bob.user_id, added=(laptop.device_id,))
        assert seen.changes == [PeerChange(bob.user_id, added=(laptop.device_id,))]
        assert await queued(hub, bob, laptop) == [0, 0], "nothing encrypted to anyone of bob's"
        before = await a.safety_number(BOB)
        accepted = await a.accept_keys(BOB)
        assert accepted.pending is None
        mid = await a.send(BOB, "après")
        assert await queued(hub, bob, laptop) == [1, 1]
        assert await a.safety_number(BOB) == before, "the number already covered the new device"
    async with Client.connect(laptop) as lt:
        assert [m.id for m in await lt.drain(idle=0.3) if isinstance(m, Message)] == [mid]


async def test_a_new_device_of_our_own_waits_for_acceptance(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    alice = await clinician("alice", ALICE)
    await clinician("bob", BOB)
    async with Client.connect(alice) as a:
        await a.send(BOB, "depuis le bureau")
    phone = await enroll_linked(hub, alice, tmp_path / "alice-phone", "phone")
    async with Client.connect(alice) as a:
        with pytest.raises(KeyChangePending) as pending:
            await a.send(BOB, "copie ?")
        assert pending.value.own and pending.value.change.added == (phone.device_id,)
        await a.accept_keys(alice.user_id)
        mid = await a.send(BOB, "copie ?")
    async with Client.connect(phone) as p:
        # the phone trusted its own account on first use
        [copy] = [m for m in await p.drain(idle=0.3) if isinstance(m, Message)]
        assert copy.id == mid and copy.outgoing_copy
        assert (await p.send(BOB, "du téléphone")) is not None


async def test_a_device_not_attested_yet_cannot_send(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    alice = await clinician("alice", ALICE)
    await clinician("bob", BOB)
    phone = await enroll_linked(hub, alice, tmp_path / "alice-phone", "phone", verified=False)
    async with Client.connect(phone) as p:
        # SPEC §11.4: an unattested device may not even look anyone up, nor list devices.
        with pytest.raises(NotVerified):
            await p.send(BOB, "x")
        assert p.state.history() == []
        with pytest.raises(NotVerified):
            await p.devices()
    async with Client.connect(alice) as a:
        [desk, other] = await a.devices()
        assert (desk.attested, other.attested, other.device) == (True, False, phone.device_id)
        # alice's desk does not encrypt to the phone either (not attested), and the hub agrees
        assert await a.send(BOB, "y")
    assert await queued(hub, phone) == [0]


async def test_verified_in_person_is_cleared_by_a_key_change(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    alice = await clinician("alice", ALICE)
    bob = await clinician("bob", BOB)
    async with Client.connect(alice) as a, Client.connect(bob) as b:
        assert await a.safety_number(BOB) == await b.safety_number(ALICE)
        peer = await a.mark_verified(BOB)
        assert peer.verified and (await a.lookup(user=bob.user_id, refresh=True)).verified
    await enroll_linked(hub, bob, tmp_path / "bob-laptop")
    async with Client.connect(alice) as a:
        assert a.state.get_peer(bob.user_id).verified  # type: ignore[union-attr]
        changed = await a.lookup(rpps=BOB, refresh=True)
        assert not changed.verified and changed.pending is not None
        await a.accept_keys(BOB)
        assert not (await a.lookup(rpps=BOB, refresh=True)).verified, "accepting is not verifying"
        assert (await a.mark_verified(BOB)).verified


# --- SPEC §11.3: search ---------------------------------------------------------------------------


async def test_search_shows_only_clinicians_whose_attestation_verifies(
    hub: HubServer, clinician: ClinicianFactory
) -> None:
    alice = await clinician("alice", ALICE)
    await clinician("bob", BOB)
    await clinician("carol", CAROL, verified=False)
    dave = await clinician("dave", DAVE)
    # the hub serves a tampered attestation for dave: a name the authority never signed
    await verify_on(hub, dave.user_id)
    await HostileOperator(hub).alter_attestation(dave.user_id, name="Dr Dave, chef de service")
    async with Client.connect(alice) as a:
        found = await a.search("CHRU Test")
        assert [(e.name, e.rpps, e.profession, e.organisation) for e in found] == [
            ("Dr Alice", ALICE, "médecin", "CHRU Test"),
            ("Dr Bob", BOB, "médecin", "CHRU Test"),
        ]
        assert [e.name for e in await a.search("10000000002")] == ["Dr Bob"]
        assert await a.search("nobody here") == []
        with pytest.raises(ValueError):
            await a.search(" ")
        with pytest.raises(ValueError, match="3 to 64"):
            await a.search(" Dr ")  # two characters: nobody
        with pytest.raises(ValueError):
            await a.search("x" * 65)
        assert not a.closed


# --- SPEC §11.4: devices and revocation ------------------------------------------------------------


async def test_devices_are_listed_and_a_lost_one_revoked_from_another(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    alice = await clinician("alice", ALICE)
    bob = await clinician("bob", BOB, label="phone")
    laptop = await enroll_linked(hub, bob, tmp_path / "bob-laptop")
    async with Client.connect(bob) as b, Client.connect(laptop) as lt:
        listed = await b.devices()
        assert [(d.device, d.label, d.attested, d.current) for d in listed] == [
            (bob.device_id, "phone", True, True),
            (laptop.device_id, "laptop", True, False),
        ]
        assert all(0 < d.created <= now_ms() for d in listed)
        with pytest.raises(Forbidden):
            await b.revoke(alice.device_id)
        await b.revoke(laptop.device_id)
        started = time.monotonic()
        with pytest.raises(DeviceRevoked):
            await asyncio.wait_for(lt.receive(), 2.5)
        assert time.monotonic() - started < 2.0 and lt.closed
        assert [d.device for d in await b.devices()] == [bob.device_id]
    with pytest.raises(DeviceRevoked):
        async with Client.connect(laptop):
            pass
    async with Client.connect(alice) as a:
        # bob's attestation still names the laptop, but the hub no longer lists it: nothing for it
        mid = await a.send(BOB, "encore là ?")
    assert await queued(hub, bob, laptop) == [1, 0]
    async with Client.connect(bob) as b:
        assert [m.id for m in await b.drain(idle=0.3) if isinstance(m, Message)] == [mid]


async def test_revoking_this_very_device(hub: HubServer, clinician: ClinicianFactory) -> None:
    bob = await clinician("bob", BOB)
    async with Client.connect(bob) as b:
        await b.revoke(bob.device_id)
        with pytest.raises(DeviceRevoked):
            await asyncio.wait_for(b.receive(), 2.5)
    with pytest.raises(DeviceRevoked):
        async with Client.connect(bob):
            pass


async def test_a_suspended_account_is_disconnected_and_refused(
    hub: HubServer, clinician: ClinicianFactory
) -> None:
    bob = await clinician("bob", BOB)
    async with Client.connect(bob) as b:
        await hub.store.set_suspended(bob.user_id, True)
        await hub.store.audit([AuditEvent(now_ms(), "admin:test", "account.suspended", bob.user_id)])
        with pytest.raises(AccountSuspended):
            await asyncio.wait_for(b.receive(), 3)
    with pytest.raises(AccountSuspended):
        async with Client.connect(bob):
            pass


def test_fatal_close_codes_map_to_their_errors_even_without_a_reason() -> None:
    assert isinstance(close_error(4410, "device_revoked"), DeviceRevoked)
    assert isinstance(close_error(4410, ""), DeviceRevoked)
    assert isinstance(close_error(4411, None), AccountSuspended)
