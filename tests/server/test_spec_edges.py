"""The corners of SPEC.md that a client written from the text alone must not
have to guess, checked against the real hub: how each kind of refusal ends a
connection (close code and reason, with or without an ``error`` frame),
which check wins when several fail, what a ``send`` to oneself or to a
clinician without an attested device does, how the directory sorts and
folds case, which requests the budgets count, and what the decoder makes of
a map that holds a key twice."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from websockets.exceptions import ConnectionClosed

import protocol
from miss_server.app import HubServer
from miss_server.codes import code_hash, new_code
from miss_server.config import Settings, load_settings
from miss_server.ratelimit import parse_rate
from protocol import attestation, crypto, errors
from protocol.frames import (
    Accepted,
    Ack,
    Deliver,
    Devices,
    DevicesOk,
    Error,
    Frame,
    LookupOk,
    Ok,
    Revoke,
    Search,
    SearchOk,
    Send,
)
from tests.support.authority import AUTHORITY_TEXT, UNLIMITED
from tests.support.verified_hubs import verify_on
from tests.support.wire import RawDevice, enrolled

#: ``make_hub`` (tests/server/conftest.py): ``await make_hub(**settings)``.
HubFactory = Callable[..., Any]
SPEC = Path(protocol.__file__).resolve().parent / "SPEC.md"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def to_the_close(dev: RawDevice) -> tuple[list[Frame], int | None, str | None]:
    """Every frame the hub sends until it closes: (frames, close code, reason)."""
    assert dev.ws is not None
    frames: list[Frame] = []
    try:
        while True:
            frames.append(await dev.recv(timeout=5))
    except ConnectionClosed:
        pass
    return frames, dev.ws.close_code, dev.ws.close_reason


async def send_enroll(dev: RawDevice, code: str, *, signer: crypto.DeviceKeys | None = None) -> None:
    """Open a connection and send ``enroll`` for ``dev``'s keys, signed by
    ``signer`` (by default those keys)."""
    await dev.open()
    answer = dev.enroll_frame(code, "edge")
    if signer is not None:  # a forgery: the same frame, signed by other keys
        message = crypto.enroll_message(dev.nonce, code, dev.keys.sign_pk, dev.keys.box_pk)
        answer = dataclasses.replace(answer, sig=signer.sign(message))
    await dev.send_frame(answer)


async def another_code(hub: HubServer, user_id: str) -> str:
    """A fresh invitation code for ``user_id``."""
    code = new_code()
    await hub.store.add_enrollment_code(user_id, code_hash(code), now_ms() + 3_600_000)
    return code


async def send_auth(dev: RawDevice, *, signer: crypto.DeviceKeys | None = None) -> None:
    """Open a connection and send ``auth`` for ``dev``'s device id, signed by
    ``signer`` (by default ``dev``'s own keys)."""
    await dev.open()
    answer = dev.auth_frame()
    if signer is not None:  # a forgery: the same frame, signed by other keys
        answer = dataclasses.replace(answer, sig=signer.sign(crypto.auth_message(dev.nonce, dev.device_id)))
    await dev.send_frame(answer)


def fatal(error: type[errors.FatalError]) -> tuple[list[Frame], int, str]:
    """What the hub sends for a fatal error: one ``error`` frame, then the close."""
    assert error.close_code is not None
    return [Error(error.code, error.message, fatal=True)], error.close_code, error.code


def sealed_send(sender: RawDevice, to: str, targets: LookupOk, only: set[str]) -> Send:
    """A ``send`` to user ``to`` with an envelope for each device of
    ``targets`` whose id is in ``only``."""
    mid = crypto.new_message_id()
    plain = crypto.pack_plaintext(crypto.Plaintext(mid, sender.user_id, to, now_ms(), "text", "note"))
    envs = {d.device: crypto.seal(plain, sender.keys, d.box_pk) for d in targets.devices if d.device in only}
    return Send(mid, sender.device_id, to, envs)


# --- §2: how the hub closes -------------------------------------------------------------------


async def test_hub_shutdown_closes_every_connection_1001_without_an_error_frame(tmp_path: Path) -> None:
    settings = load_settings(
        store=f"sqlite:///{tmp_path}/miss.db", port=0, authority_key=AUTHORITY_TEXT, **UNLIMITED
    )
    server = HubServer(settings)
    await server.start()
    try:
        welcomed = await enrolled(server, "Alice", "10000000001")
        pending = RawDevice(server.url)
        await pending.open()
    finally:
        await server.stop()
    assert await to_the_close(welcomed) == ([], 1001, "")
    assert await to_the_close(pending) == ([], 1001, "")


async def test_a_store_outage_during_authentication_closes_1013(hub: HubServer) -> None:
    alice = await enrolled(hub, "Alice", "10000000001")
    await alice.close()
    await hub.store.close()
    await send_auth(alice)
    frames, code, reason = await to_the_close(alice)
    assert (code, reason) == (1013, "storage_unavailable")
    [error] = frames
    assert isinstance(error, Error)
    assert (error.code, error.fatal, error.id, error.rid) == ("storage_unavailable", False, None, None)
    assert error.retry_after and error.retry_after > 0


# --- §4, §5.2, §11.5: authentication -------------------------------------------------------------


async def test_a_revoked_device_is_told_4410_only_with_its_own_signature(hub: HubServer) -> None:
    alice = await enrolled(hub, "Alice", "10000000001")
    await alice.close()
    assert await hub.store.revoke_device(alice.device_id, now_ms()) is not None
    await send_auth(alice, signer=crypto.DeviceKeys.generate())  # the id, not the key
    assert await to_the_close(alice) == fatal(errors.AuthFailed)
    # Revocation wins over suspension: the device is gone for ever.
    await hub.store.set_suspended(alice.user_id, True)
    await send_auth(alice)
    assert await to_the_close(alice) == fatal(errors.DeviceRevoked)


async def test_too_many_attempts_from_an_address_close_1008(make_hub: HubFactory) -> None:
    hub = await make_hub(rate_auth="1/h burst 3")
    alice = await enrolled(hub, "Alice", "10000000001")  # attempt 1
    for _ in range(2):  # attempts 2 and 3
        await alice.close()
        await alice.auth()
    await alice.close()
    await send_auth(alice)  # a good signature, over the address's budget
    frames, code, reason = await to_the_close(alice)
    assert (code, reason) == (1008, "rate_limited")
    [error] = frames
    assert isinstance(error, Error)
    assert (error.code, error.fatal, error.id, error.rid) == ("rate_limited", False, None, None)
    assert error.retry_after and error.retry_after > 0


# --- §5.1: enrollment ------------------------------------------------------------------------------


async def test_enrolling_a_key_already_enrolled_leaves_the_code_for_another_device(hub: HubServer) -> None:
    alice = await enrolled(hub, "Alice", "10000000001")
    code = await another_code(hub, alice.user_id)
    again = RawDevice(hub.url, keys=alice.keys)
    # The code is checked before the key: a wrong code is invalid_code.
    await send_enroll(again, "0000-0000-0000-0000")
    assert await to_the_close(again) == fatal(errors.InvalidCode)
    # A good code with a key already enrolled: auth_failed, the code unused.
    await send_enroll(again, code)
    assert await to_the_close(again) == fatal(errors.AuthFailed)
    # A bad signature: auth_failed before the code is looked at.
    stranger = RawDevice(hub.url)
    await send_enroll(stranger, code, signer=crypto.DeviceKeys.generate())
    assert await to_the_close(stranger) == fatal(errors.AuthFailed)
    laptop = RawDevice(hub.url)
    welcome = await laptop.enroll(code)
    assert welcome.user == alice.user_id and welcome.device != alice.device_id


async def test_enrolling_at_the_device_cap_closes_1008_and_keeps_the_code(make_hub: HubFactory) -> None:
    hub = await make_hub(max_devices=1)
    alice = await enrolled(hub, "Alice", "10000000001")
    code = await another_code(hub, alice.user_id)
    refusal = ([Error("too_many_devices", errors.TooManyDevices.message)], 1008, "too_many_devices")
    newcomer = RawDevice(hub.url)
    await send_enroll(newcomer, code)
    assert await to_the_close(newcomer) == refusal
    # The cap is checked before the key: an enrolled key is refused the same way.
    duplicate = RawDevice(hub.url, keys=alice.keys)
    await send_enroll(duplicate, code)
    assert await to_the_close(duplicate) == refusal
    # Once a device is revoked, the same code enrolls.
    assert await hub.store.revoke_device(alice.device_id, now_ms()) is not None
    assert (await newcomer.enroll(code)).user == alice.user_id


# --- §6.2: who a send may reach ---------------------------------------------------------------------


async def test_a_send_to_oneself_reaches_ones_other_devices_without_receipts(hub: HubServer) -> None:
    phone = await enrolled(hub, "Alice", "10000000001")
    own = await phone.lookup(phone.user_id)
    # Alone, the sending device is no target: any envelope is unknown_device.
    alone = sealed_send(phone, phone.user_id, own, {phone.device_id})
    reply = await phone.ask(alone)
    assert isinstance(reply, Error) and (reply.code, reply.id) == ("unknown_device", alone.id)

    laptop = await phone.link()
    await verify_on(hub, phone.user_id)
    own = await phone.lookup(phone.user_id)
    note = sealed_send(phone, phone.user_id, own, {laptop.device_id})
    assert await phone.ask(note) == Accepted(note.id)
    deliver = await laptop.recv()
    assert isinstance(deliver, Deliver) and (deliver.from_user, deliver.from_device) == (
        phone.user_id,
        phone.device_id,
    )
    plain = laptop.open_deliver(deliver, phone.keys.box_pk)
    assert (plain.from_user, plain.to_user) == (phone.user_id, phone.user_id)
    await laptop.ack(deliver.seq)
    with pytest.raises(TimeoutError):  # no delivered receipt for one's own copies
        await phone.recv(timeout=0.5)
    assert await hub.store.count_pending(phone.device_id) == 0


async def test_a_clinician_without_an_attested_device_gets_nothing(hub: HubServer) -> None:
    alice = await enrolled(hub, "Alice", "10000000001")
    bob = await enrolled(hub, "Bob", "10000000002", verified=False)
    await verify_on(hub, bob.user_id, devices=[])  # verified, but no device vouched for
    listed = await alice.lookup(bob.user_id)
    assert [d.device for d in listed.devices] == [bob.device_id]  # active, listed, not attested
    to_bob = sealed_send(alice, bob.user_id, listed, {bob.device_id})
    reply = await alice.ask(to_bob)
    assert isinstance(reply, Error) and (reply.code, reply.id) == ("no_devices", to_bob.id)

    # With another device of her own, the target set is that device only,
    # and a send sealed for it alone is accepted: Bob gets nothing.
    laptop = await alice.link()
    await verify_on(hub, alice.user_id)
    own = await alice.lookup(alice.user_id)
    copy_only = sealed_send(alice, bob.user_id, own, {laptop.device_id})
    assert await alice.ask(copy_only) == Accepted(copy_only.id)
    deliver = await laptop.recv()
    assert isinstance(deliver, Deliver) and deliver.id == copy_only.id
    assert await hub.store.count_pending(bob.device_id) == 0


# --- §11.3: the directory -----------------------------------------------------------------------------


async def test_search_folds_case_keeps_accents_and_sorts_by_code_point(hub: HubServer) -> None:
    alice = await enrolled(hub, "Alice", "10000000001")
    names = ["anne Martin", "Émile Roux", "Zoé Lefèvre", "Bernard Petit"]
    for i, name in enumerate(names):
        user = await hub.store.create_user(name, f"9990000000{i}", "médecin", "Clinique Xyzzy", now_ms())
        await verify_on(hub, user.user_id, devices=[])

    async def found(query: str) -> list[str]:
        reply = await alice.ask(Search(rid=1, query=query))
        assert isinstance(reply, SearchOk) and reply.rid == 1, reply
        return [attestation.peek(att).name for att in reply.atts]

    # Case-insensitive, surrounding spaces ignored, sorted by code point
    # (uppercase before lowercase, accented letters after both).
    assert await found("  XYZZY ") == ["Bernard Petit", "Zoé Lefèvre", "anne Martin", "Émile Roux"]
    assert await found("éMILE") == ["Émile Roux"]
    assert await found("emile") == []  # accents are not folded
    assert await found(" xy  ") == []  # two characters once stripped


# --- §11.4: devices and revocation ---------------------------------------------------------------------


async def test_revoking_oneself_ends_the_connection_and_others_are_forbidden(hub: HubServer) -> None:
    phone = await enrolled(hub, "Alice", "10000000001")
    laptop = await phone.link()
    await verify_on(hub, phone.user_id)
    bob = await enrolled(hub, "Bob", "10000000002")

    await laptop.send_frame(Revoke(rid=9, device=laptop.device_id))
    frames, code, reason = await to_the_close(laptop)
    assert (code, reason) == (4410, "device_revoked")
    assert Error("device_revoked", errors.DeviceRevoked.message, fatal=True) in frames
    assert all(f == Ok(9) for f in frames if not isinstance(f, Error))  # the ok may come, or not

    for rid, device in ((10, laptop.device_id), (11, bob.device_id), (12, "d_0000000000000000")):
        reply = await phone.ask(Revoke(rid=rid, device=device))
        assert reply == Error("forbidden", errors.Forbidden.message, rid=rid)
    listed = await phone.ask(Devices(rid=13))
    assert isinstance(listed, DevicesOk)
    assert [(d.device, d.attested) for d in listed.devices] == [(phone.device_id, True)]


# --- §11.5: budgets -------------------------------------------------------------------------------------


async def test_acks_and_refused_searches_cost_no_request_token(make_hub: HubFactory) -> None:
    hub = await make_hub(rate_device="1/h burst 3", rate_search="1/h burst 1")
    alice = await enrolled(hub, "Alice", "10000000001")
    for _ in range(20):
        await alice.send_frame(Ack(()))
    assert isinstance(await alice.ask(Search(rid=1, query="Alice")), SearchOk)  # device token 1
    limited = await alice.ask(Search(rid=2, query="Alice"))  # the search budget: no device token
    assert isinstance(limited, Error) and (limited.code, limited.rid) == ("rate_limited", 2)
    assert limited.retry_after and limited.retry_after > 0
    assert isinstance(await alice.ask(Devices(rid=3)), DevicesOk)  # device token 2
    assert isinstance(await alice.ask(Devices(rid=4)), DevicesOk)  # device token 3
    limited = await alice.ask(Devices(rid=5))
    assert isinstance(limited, Error) and (limited.code, limited.rid) == ("rate_limited", 5)


def test_the_default_budgets_are_the_specs() -> None:
    """SPEC §11.5 lists each bucket's setting and its default."""
    section = SPEC.read_text(encoding="utf-8").split("### 11.5", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\|[^|]*\| `(rate_[a-z_]+)` \| `([^`]+)` \|", section, re.M))
    defaults = {
        name: field.default for name, field in Settings.model_fields.items() if name.startswith("rate_")
    }
    assert set(rows) == set(defaults)
    for name, text in rows.items():
        assert parse_rate(text) == parse_rate(defaults[name]), name


# --- §3.1: a key twice in a map -----------------------------------------------------------------------


async def test_the_hub_refuses_a_repeated_key(hub: HubServer) -> None:
    """A key twice in one map is malformed_frame (4400), never "the last one
    wins": two readers could disagree on which occurrence counts."""
    alice = await enrolled(hub, "Alice", "10000000001")
    pack = msgpack.packb
    twice = (
        b"\x83" + pack("t") + pack("devices") + pack("rid") + pack(1) + pack("rid") + pack(2),
        b"\x83" + pack("t") + pack("auth") + pack("t") + pack("devices") + pack("rid") + pack(3),
    )
    for frame in twice:
        await alice.auth()
        assert alice.ws is not None
        await alice.ws.send(frame)
        error, code = await alice.until_closed(5)
        assert error is not None and (error.code, error.fatal) == ("malformed_frame", True), error
        assert code == 4400
