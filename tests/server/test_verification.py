"""Only verified clinicians talk (SPEC.md §11), seen from the wire: the hub
refuses unverified and suspended accounts, revokes devices for ever, serves
the directory of attested clinicians, and audits what happened."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import nacl.signing
import pytest

from miss_server import security_feed
from miss_server.app import HubServer
from miss_server.store.base import AuditEvent
from protocol import attestation, crypto, errors
from protocol.frames import (
    Accepted,
    Deliver,
    DeviceInfo,
    Devices,
    DevicesOk,
    Enroll,
    Error,
    Lookup,
    LookupOk,
    Ok,
    Revoke,
    Search,
    SearchOk,
)
from tests.support.admin_cli import Admin
from tests.support.clock import now_ms
from tests.support.inprocess_hub import HubFactory
from tests.support.verified_hubs import verify_on
from tests.support.wire import RawDevice, enrolled, invite


async def send_text(sender: RawDevice, to: str, body: str) -> Accepted | Error:
    """Look both users up, seal for their devices, send; the hub's answer."""
    peer, own = await sender.lookup(to), await sender.lookup(sender.user_id)
    return await send_sealed(sender, peer, own, body)


async def send_sealed(sender: RawDevice, peer: LookupOk, own: LookupOk | None, body: str) -> Accepted | Error:
    """Seal for the devices listed in ``peer`` and ``own``, send; the hub's answer."""
    frame = sender.message(peer, body, own)
    await sender.send_frame(frame)
    while True:  # deliveries to the sender may come first
        reply = await sender.recv()
        if isinstance(reply, (Accepted, Error)) and reply.id == frame.id:
            return reply


async def listing(hub: HubServer, user_id: str) -> LookupOk:
    """What a lookup of ``user_id`` would list, read from the store: the hub
    no longer answers lookups from, or about, unverified users (SPEC §11.3),
    and these tests need their devices to show what a send does."""
    user = await hub.store.get_user(user_id)
    assert user is not None
    devices = await hub.store.user_devices(user_id)
    info = tuple(DeviceInfo(d.device_id, d.sign_pk, d.box_pk) for d in devices)
    return LookupOk(
        0, user_id, user.name, user.rpps, user.profession, user.organisation, info, user.attestation
    )


async def refused_lookup(dev: RawDevice, user: str) -> str:
    """The error code the hub answers a lookup of ``user`` by ``dev`` with."""
    reply = await dev.ask(Lookup(rid=3, user=user))
    assert isinstance(reply, Error) and reply.rid == 3, reply
    return reply.code


# --- verification -------------------------------------------------------------------


async def test_unverified_accounts_can_neither_send_nor_be_written_to(hub: HubServer) -> None:
    alice = await enrolled(hub, "Alice", "10000000001", verified=False)
    bob = await enrolled(hub, "Bob", "10000000002")

    # Alice may not even look anyone up; nobody finds her.
    assert await refused_lookup(alice, bob.user_id) == errors.NotVerified.code
    assert await refused_lookup(bob, alice.user_id) == errors.UnknownUser.code
    reply = await send_sealed(alice, await listing(hub, bob.user_id), None, "hello")
    assert isinstance(reply, Error) and reply.code == errors.NotVerified.code
    reply = await send_sealed(bob, await listing(hub, alice.user_id), await bob.lookup(bob.user_id), "hello")
    assert isinstance(reply, Error) and reply.code == errors.RecipientNotVerified.code
    assert await hub.store.count_pending(bob.device_id) == 0
    assert await hub.store.count_pending(alice.device_id) == 0

    # Verified while connected: the next send goes through, no reconnection needed.
    await verify_on(hub, alice.user_id)
    assert isinstance(await send_text(alice, bob.user_id, "hello again"), Accepted)


@pytest.mark.parametrize("flaw", ["expired", "other key", "other device keys"])
async def test_an_invalid_attestation_does_not_verify(hub: HubServer, flaw: str) -> None:
    alice = await enrolled(hub, "Alice", "10000000001", verified=False)
    bob = await enrolled(hub, "Bob", "10000000002")
    now = now_ms()
    if flaw == "expired":
        await verify_on(hub, alice.user_id, not_before=now - 10_000, not_after=now - 1)
    elif flaw == "other key":
        await verify_on(hub, alice.user_id, key=nacl.signing.SigningKey.generate())
    else:
        impostor = crypto.DeviceKeys.generate()
        devices = [attestation.AttestedDevice(alice.device_id, impostor.sign_pk, impostor.box_pk)]
        await verify_on(hub, alice.user_id, devices=devices)
    reply = await send_sealed(alice, await listing(hub, bob.user_id), None, "hello")
    assert isinstance(reply, Error) and reply.code == errors.NotVerified.code
    assert await refused_lookup(alice, alice.user_id) == errors.NotVerified.code
    if flaw != "other device keys":  # then Alice is verified, but not her device
        assert await refused_lookup(bob, alice.user_id) == errors.UnknownUser.code


async def test_a_linked_device_is_no_target_until_verified_again(hub: HubServer) -> None:
    alice = await enrolled(hub, "Alice", "10000000001")
    bob = await enrolled(hub, "Bob", "10000000002")
    laptop = await bob.link()  # same user: not attested yet

    # Alice seals for the attested phone only: accepted, and the laptop gets nothing.
    peer = await alice.lookup(bob.user_id)
    phone_only = dataclasses.replace(
        peer, devices=tuple(d for d in peer.devices if d.device == bob.device_id)
    )
    frame = alice.message(phone_only, "to the phone")
    await alice.send_frame(frame)
    assert await alice.recv() == Accepted(frame.id)
    assert isinstance(await bob.recv(), Deliver)
    assert await hub.store.count_pending(laptop.device_id) == 0
    reply = await send_sealed(
        laptop, await listing(hub, alice.user_id), await listing(hub, bob.user_id), "from the laptop"
    )
    assert isinstance(reply, Error) and reply.code == errors.NotVerified.code
    await bob.send_frame(Devices(rid=4))
    listed = await bob.recv()
    assert isinstance(listed, DevicesOk)
    assert {(d.device, d.attested) for d in listed.devices} == {
        (bob.device_id, True),
        (laptop.device_id, False),
    }

    await verify_on(hub, bob.user_id)  # the administrator attests the laptop too
    reply = await send_text(laptop, alice.user_id, "from the laptop")
    assert isinstance(reply, Accepted)
    assert isinstance(await alice.recv(), Deliver)  # the laptop's message
    await alice.send_frame(alice.message(phone_only, "stale"))
    missing = await alice.recv()
    assert isinstance(missing, Error) and missing.code == errors.MissingDevices.code
    assert missing.missing == (laptop.device_id,)


async def test_too_many_envelopes_are_refused(make_hub: HubFactory) -> None:
    hub = await make_hub(max_envelopes=1)
    alice = await enrolled(hub, "Alice", "10000000001")
    bob = await enrolled(hub, "Bob", "10000000002")
    await alice.link()
    await verify_on(hub, alice.user_id)
    reply = await send_text(alice, bob.user_id, "bob's phone and my laptop: two envelopes")
    assert isinstance(reply, Error) and reply.code == errors.TooManyRecipients.code


# --- directory ------------------------------------------------------------------------


async def test_search_answers_with_attestations_of_verified_clinicians_only(hub: HubServer) -> None:
    alice = await enrolled(hub, "Dr Alice Martin", "10000000001")
    await enrolled(hub, "Dr Martine Petit", "10000000002", verified=False)
    bob = await enrolled(hub, "Dr Bob Martinez", "10000000003")
    lapsed = await enrolled(hub, "Dr Carole Martin", "10000000004", verified=False)
    now = now_ms()
    await verify_on(hub, lapsed.user_id, not_before=now - 10_000, not_after=now - 1)  # expired
    await alice.send_frame(Search(rid=9, query="MARTIN"))
    found = await alice.recv()
    assert isinstance(found, SearchOk) and found.rid == 9
    people = [attestation.verify(a, hub.settings.authority_public_key or b"", now_ms()) for a in found.atts]
    assert [(p.user, p.name) for p in people] == [
        (alice.user_id, "Dr Alice Martin"),
        (bob.user_id, "Dr Bob Martinez"),
    ]
    await alice.send_frame(Search(rid=10, query="10000000003"))
    by_rpps = await alice.recv()
    assert isinstance(by_rpps, SearchOk) and len(by_rpps.atts) == 1


# --- suspension and revocation ---------------------------------------------------------------


async def test_a_suspended_account_is_disconnected_and_cannot_authenticate(
    hub: HubServer, hub_admin: Admin
) -> None:
    alice = await enrolled(hub, "Alice", "10000000001")
    bob = await enrolled(hub, "Bob", "10000000002")
    started = time.monotonic()
    await asyncio.to_thread(hub_admin, "suspend", alice.user_id, "--reason", "left the hospital")
    error, code = await alice.until_closed(3)
    assert time.monotonic() - started < 2.0
    assert code == errors.AccountSuspended.close_code and error and error.code == "account_suspended"
    assert await alice.auth_refused() == (
        Error("account_suspended", errors.AccountSuspended.message, fatal=True),
        errors.AccountSuspended.close_code,
    )
    assert await refused_lookup(bob, alice.user_id) == errors.UnknownUser.code  # hidden
    own = await bob.lookup(bob.user_id)
    reply = await send_sealed(bob, await listing(hub, alice.user_id), own, "are you there?")
    assert isinstance(reply, Error) and reply.code == errors.RecipientNotVerified.code

    await asyncio.to_thread(hub_admin, "unsuspend", alice.user_id)
    assert (await alice.auth()).device == alice.device_id
    events = await hub.store.audit_log(user_id=alice.user_id)
    actions = [(e.action, e.actor.startswith("admin")) for e in events]
    assert ("account.suspended", True) in actions and ("account.unsuspended", True) in actions


async def test_a_clinician_revokes_a_lost_device_from_another(hub: HubServer) -> None:
    phone = await enrolled(hub, "Alice", "10000000001")
    bob = await enrolled(hub, "Bob", "10000000002")
    laptop = await phone.link()
    await verify_on(hub, phone.user_id)

    await laptop.send_frame(Revoke(rid=2, device=bob.device_id))
    forbidden = await laptop.recv()
    assert isinstance(forbidden, Error) and forbidden.code == errors.Forbidden.code and forbidden.rid == 2

    started = time.monotonic()
    await laptop.send_frame(Revoke(rid=3, device=phone.device_id))
    assert await laptop.recv() == Ok(3)
    error, close = await phone.until_closed(3)
    assert time.monotonic() - started < 2.0
    assert close == errors.DeviceRevoked.close_code and error and error.code == "device_revoked"
    assert await phone.auth_refused() == (
        Error("device_revoked", errors.DeviceRevoked.message, fatal=True),
        errors.DeviceRevoked.close_code,
    )
    await laptop.send_frame(Devices(rid=4))
    listed = await laptop.recv()
    assert isinstance(listed, DevicesOk) and [d.device for d in listed.devices] == [laptop.device_id]
    # Bob no longer needs to (nor may) seal for the revoked phone.
    assert isinstance(await send_text(bob, phone.user_id, "to the laptop only"), Accepted)
    await hub.audit.flush()
    revoked = await hub.store.audit_log(actions=["device.revoked"])
    assert [(e.actor, e.device_id) for e in revoked] == [(phone.user_id, phone.device_id)]


async def test_an_administrator_revokes_a_device_within_two_seconds(hub: HubServer, hub_admin: Admin) -> None:
    alice = await enrolled(hub, "Alice", "10000000001")
    started = time.monotonic()
    await asyncio.to_thread(hub_admin, "revoke", alice.device_id, "--reason", "stolen")
    error, close = await alice.until_closed(3)
    assert time.monotonic() - started < 2.0
    assert close == errors.DeviceRevoked.close_code and error and error.code == "device_revoked"
    assert (await alice.auth_refused())[1] == errors.DeviceRevoked.close_code


async def test_a_burst_of_security_events_is_read_for_seconds_not_a_minute(
    hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10,000 devices enrolled at once must not make every poll of the audit
    log read them all again for a minute (it stalled the hub's clinicians)."""
    monkeypatch.setattr(security_feed, "SECURITY_SETTLE_SECONDS", 0.5)
    polls: list[int] = []
    read = hub.store.audit_log

    async def counted(**kwargs: Any) -> list[AuditEvent]:
        events = await read(**kwargs)
        if kwargs.get("actions") == security_feed.SECURITY_ACTIONS:
            polls.append(len(events))
        return events

    monkeypatch.setattr(hub.store, "audit_log", counted)
    now = now_ms()
    burst = [
        AuditEvent(now, "hub", "device.enrolled", user_id=f"u_{i}", device_id=f"d_{i}") for i in range(2000)
    ]
    await hub.store.audit(burst)
    await asyncio.sleep(3.0)  # six polls
    full = [n for n in polls if n >= len(burst)]
    assert 1 <= len(full) <= 3, polls  # read until the burst is 0.5 s old, then skipped
    assert polls[-2:] == [0, 0], polls


async def test_a_revocation_followed_by_a_larger_burst_is_still_enforced(
    hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll must read every event above its cursor, not only the newest
    page: a revocation followed, before the next poll, by more events than
    one read returns (another tool enrolling a ward at once) still closes
    the revoked device."""
    monkeypatch.setattr(security_feed, "SECURITY_SETTLE_SECONDS", 0.5)
    alice = await enrolled(hub, "Alice", "10000000001")
    await asyncio.sleep(1.0)  # the hub's polls have seen Alice's enrollment and moved on
    now = now_ms()
    assert await hub.store.revoke_device(alice.device_id, now) is not None  # as another process would
    revoked = AuditEvent(
        now, "admin:test", "device.revoked", user_id=alice.user_id, device_id=alice.device_id
    )
    burst = [
        AuditEvent(now, "admin:test", "device.enrolled", user_id=f"u_{i}", device_id=f"d_{i}")
        for i in range(security_feed.SECURITY_PAGE + 500)
    ]
    await hub.store.audit([revoked, *burst])
    error, close = await alice.until_closed(5)
    assert close == errors.DeviceRevoked.close_code and error and error.code == "device_revoked"


# --- anti-abuse -------------------------------------------------------------------------------


async def test_a_device_over_its_budget_is_told_when_to_retry(make_hub: HubFactory) -> None:
    hub = await make_hub(rate_device="5/s burst 10")
    alice = await enrolled(hub, "Alice", "10000000001")
    bob = await enrolled(hub, "Bob", "10000000002")
    peer, own = await alice.lookup(bob.user_id), await alice.lookup(alice.user_id)  # 2 requests
    frames = [alice.message(peer, f"m{i}", own) for i in range(20)]
    started = time.monotonic()
    for frame in frames:
        await alice.send_frame(frame)
    replies = [await alice.recv() for _ in frames]  # Bob is not connected: only answers come
    elapsed = time.monotonic() - started
    accepted = [r for r in replies if isinstance(r, Accepted)]
    limited = [r for r in replies if isinstance(r, Error) and r.code == "rate_limited"]
    assert len(accepted) + len(limited) == 20 and len(limited) >= 5
    # The burst (less the two lookups), then no faster than 5/s: the hub
    # paused reading the flood for as long as it told the sender to wait.
    assert 8 <= len(accepted) <= 8 + 5 * elapsed + 1
    assert all(r.retry_after and 0 < r.retry_after <= 1000 for r in limited)
    # Bob, another device, is not affected; Alice gets through after waiting.
    assert isinstance(await send_text(bob, alice.user_id, "fine here"), Accepted)
    await asyncio.sleep(max(r.retry_after or 0 for r in limited) / 1000)
    resend = next(f for f, r in zip(frames, replies, strict=True) if isinstance(r, Error))
    await alice.send_frame(resend)
    answers = [await alice.recv(), await alice.recv()]  # and Bob's message
    assert Accepted(resend.id) in answers


async def test_failed_authentications_slow_the_guesser_not_the_device(make_hub: HubFactory) -> None:
    """SPEC §11.5: failures naming a device id never lock that device out."""
    hub = await make_hub(rate_failed_auth="5/min burst 5")
    alice = await enrolled(hub, "Alice", "10000000001")
    await alice.close()
    thief = RawDevice(hub.url, device_id=alice.device_id)  # the device id, not the key
    for _ in range(5):
        assert (await thief.auth_refused())[1] == errors.AuthFailed.close_code
    started = time.monotonic()
    assert (await thief.auth_refused())[1] == errors.AuthFailed.close_code
    slowed = time.monotonic() - started
    assert slowed >= 1.0, slowed  # the guesser's failures now come after a pause
    # The device itself, with its key, gets in at once.
    started = time.monotonic()
    assert (await alice.auth()).device == alice.device_id
    assert time.monotonic() - started < 0.5
    await hub.audit.flush()
    events = await hub.store.audit_log(actions=["auth.failed"])
    assert len(events) >= 5
    assert all(e.device_id == alice.device_id and e.address == "127.0.0.1" for e in events)


async def test_wrong_enrollment_codes_hold_the_address_without_refusing_a_good_code(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(rate_failed_auth="3/min burst 3")
    _, real_code = await invite(hub, "Alice", "10000000001")
    guesser = RawDevice(hub.url)
    for i in range(3):
        await guesser.open()
        keys = guesser.keys
        code = f"AAAA-AAAA-AAAA-AAA{i}"
        sig = keys.sign(crypto.enroll_message(guesser.nonce, code, keys.sign_pk, keys.box_pk))
        await guesser.send_frame(Enroll(1, code, keys.sign_pk, keys.box_pk, "", sig))
        assert (await guesser.until_closed(5))[1] == errors.InvalidCode.close_code
    # A clinician behind the same address (a hospital's NAT) with the real
    # code is held a moment, then enrolled.
    clinician = RawDevice(hub.url)
    started = time.monotonic()
    welcome = await clinician.enroll(real_code)
    assert welcome.user and time.monotonic() - started >= 1.0
    await hub.audit.flush()
    events = await hub.store.audit_log(actions=["enroll.failed", "auth.throttled"])
    assert [e.action for e in events] == ["enroll.failed"] * 3 + ["auth.throttled"]
    assert all(real_code not in e.detail for e in await hub.store.audit_log())


async def test_admin_commands_write_the_audit_log(hub: HubServer, hub_admin: Admin) -> None:
    async def run(*args: str) -> dict[str, Any]:
        return await asyncio.to_thread(hub_admin, *args)

    bob = await enrolled(hub, "Bob", "10000000002")
    await run("org", "add", "CHRU de Lille")
    invited = await run(
        "invite",
        "--name",
        "Dr A",
        "--rpps",
        "10000000009",
        "--profession",
        "médecin",
        "--organisation",
        "CHRU de Lille",
    )
    dev = RawDevice(hub.url)
    await dev.enroll(invited["code"])
    assert isinstance(await send_sealed(dev, await listing(hub, bob.user_id), None, "too early"), Error)
    await hub.audit.flush()
    verified = await asyncio.to_thread(hub_admin.with_key, "verify", "10000000009", "--device", dev.device_id)
    assert verified["devices"] == [dev.device_id]
    assert isinstance(await send_text(dev, bob.user_id, "verified now"), Accepted)

    events = (await run("audit", "--user", "10000000009"))["events"]
    assert [(e["action"], e["actor"].startswith("admin")) for e in events] == [
        ("account.invited", True),
        ("device.enrolled", False),
        ("account.verified", True),
    ]
    assert invited["code"] not in json.dumps(events)
