"""Service accounts on the hub (SPEC §17.1, §17.2, §17.4): created with
``miss-admin service``, attested like anyone, never in the directory,
refusing replies unless told otherwise, metered by ``rate_service``.

Real in-process hubs and real WebSocket devices (tests/support/wire.py);
``miss-admin`` runs in-process on the hub's store (``hub_admin``) or on a
fresh store (``run``)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from miss_server.app import HubServer
from miss_server.codes import code_hash, new_code
from protocol import attestation, crypto
from protocol.frames import (
    Accepted,
    Deliver,
    Error,
    Lookup,
    LookupOk,
    Search,
    SearchOk,
    Send,
    Urgent,
)
from tests.support.admin_cli import Admin
from tests.support.authority import AUTHORITY_PK
from tests.support.inprocess_hub import HubFactory
from tests.support.oncall_wire import OncallDevice, keys, sealed
from tests.support.team_wire import now_ms
from tests.support.verified_hubs import verify_on
from tests.support.wire import invite

ORG = "CHRU Test"
_rpps = iter(range(31_000_000_001, 31_000_099_999))


async def clinician(hub: HubServer, name: str) -> OncallDevice:
    """A verified clinician of ORG with one connected device."""
    _, code = await invite(hub, f"Dr {name}", str(next(_rpps)), ORG)
    dev = OncallDevice(hub.url)
    await dev.enroll(code)
    return dev


async def service(hub: HubServer, ident: str, *, replies: bool = False) -> OncallDevice:
    """What ``miss-admin service create`` and ``verify`` record, on the
    hub's store: a service of ORG, its device enrolled, connected and attested."""
    user = await hub.store.create_service(f"Admissions {ident}", ident, ORG, replies, now_ms(), 20)
    code = new_code()
    await hub.store.add_enrollment_code(user.user_id, code_hash(code), now_ms() + 3_600_000)
    dev = OncallDevice(hub.url)
    await dev.enroll(code)
    await verify_on(hub, dev.user_id)
    hub.hub.accounts.forget(dev.user_id)  # as the hub learns of a verification
    return dev


async def lookup(dev: OncallDevice, user: str) -> LookupOk:
    reply = await dev.ask(Lookup(rid=1, user=user))
    assert isinstance(reply, LookupOk), reply
    return reply


async def message(dev: OncallDevice, to: OncallDevice, text: str) -> Send:
    """A 1:1 ``send`` sealed for every device of ``to`` (the sender has no other)."""
    return dev.message(await lookup(dev, to.user_id), text)


async def delivered_text(dev: OncallDevice, sender: OncallDevice) -> str:
    """The body of the next message delivered to ``dev``."""
    while True:
        frame = await dev.recv()
        if isinstance(frame, Deliver):
            await dev.ack(frame.seq)
            return dev.open_deliver(frame, sender.keys.box_pk).body


async def wait_for_code(dev: OncallDevice, to: OncallDevice, code: str | None, timeout: float = 5) -> Send:
    """Send to ``to`` until the answer is the error ``code`` (None: accepted)."""
    deadline = time.monotonic() + timeout
    while True:
        send = await message(dev, to, "ping")
        reply = await dev.ask(send)
        got = reply.code if isinstance(reply, Error) else None
        if got == code or time.monotonic() > deadline:
            assert got == code, reply
            return send
        await asyncio.sleep(0.1)


async def test_miss_admin_creates_attests_and_switches_a_service(hub: HubServer, hub_admin: Admin) -> None:
    """The administrator's whole path, through miss-admin: create, enroll the
    integration server's device, attest it as a service, switch replies."""
    await asyncio.to_thread(hub_admin, "org", "add", ORG)
    created = await asyncio.to_thread(
        hub_admin, "service", "create", "--name", "CH Provins — Admissions", "--ident", "svc:provins-adt",
        "--organisation", ORG,
    )  # fmt: skip
    assert created["ident"] == "svc:provins-adt" and created["replies"] is False
    device = OncallDevice(hub.url)
    await device.enroll(created["code"])
    assert device.user_id == created["user"]
    done = await asyncio.to_thread(
        hub_admin.with_key, "verify", "svc:provins-adt", "--device", device.device_id
    )
    assert done["issued"] and done["devices"] == [device.device_id], done
    listed = await asyncio.to_thread(hub_admin, "service", "list")
    assert [(s["ident"], s["replies"], s["standing"]) for s in listed["services"]] == [
        ("svc:provins-adt", False, "verified")
    ]

    # A clinician finds it by its identifier: attested as a service, refusing replies.
    alice = await clinician(hub, "Alice")
    found = await alice.ask(Lookup(rid=2, rpps="svc:provins-adt"))
    assert isinstance(found, LookupOk) and found.replies is False and found.att is not None, found
    att = attestation.verify(found.att, AUTHORITY_PK, now_ms())
    assert (att.profession, att.rpps, att.name) == ("service", "svc:provins-adt", "CH Provins — Admissions")
    assert att.organisation == ORG and [d.device for d in att.devices] == [device.device_id]
    send = await message(alice, device, "Merci")
    refused = await alice.ask(send)
    assert isinstance(refused, Error) and (refused.code, refused.id) == ("replies_refused", send.id)

    # Replies on: the next message goes through; off again: every node
    # learns it from the audit log within about a second.
    await asyncio.to_thread(hub_admin, "service", "replies", "svc:provins-adt", "on")
    assert (await lookup(alice, device.user_id)).replies is None
    await wait_for_code(alice, device, None, timeout=0)
    assert await delivered_text(device, alice) == "ping"
    await asyncio.to_thread(hub_admin, "service", "replies", device.user_id, "off")
    await wait_for_code(alice, device, "replies_refused", timeout=5)
    await hub.audit.flush()
    actions = [e.action for e in await hub.store.audit_log(user_id=device.user_id, limit=100)]
    assert actions.count("service.replies") == 2 and "service.created" in actions


async def test_a_service_refusing_replies_gets_nothing_and_its_notices_go_out(hub: HubServer) -> None:
    svc = await service(hub, "svc:adt")
    alice = await clinician(hub, "Alice")
    assert (await lookup(alice, svc.user_id)).replies is False
    send = await message(alice, svc, "Bien reçu, merci")
    reply = await alice.ask(send)
    assert reply == Error("replies_refused", "this service does not accept replies", id=send.id)
    # Nothing stored: no row for the service, no record of the id (a
    # resend is refused again, not answered dup).
    assert await hub.store.count_pending(svc.device_id) == 0
    assert not await hub.store.has_sent(alice.user_id, send.id)
    assert await alice.ask(send) == reply
    # Urgent to it, sealed once: refused the same way.
    urgent = sealed(alice, svc.user_id, keys([svc]), "urgent", urgent=Urgent())
    reply = await alice.ask(urgent)
    assert isinstance(reply, Error) and (reply.code, reply.id) == ("replies_refused", urgent.id), reply
    assert await hub.store.count_pending(svc.device_id) == 0

    # The service's notices reach the clinician, whatever its replies.
    notice = await message(svc, alice, "Admission de M. DUPONT Jean")
    assert await svc.ask(notice) == Accepted(notice.id)
    assert await delivered_text(alice, svc) == "Admission de M. DUPONT Jean"
    # The service's own devices may write to each other (read notices, SPEC §13.5).
    second = await svc.link()
    await verify_on(hub, svc.user_id)
    hub.hub.accounts.forget(svc.user_id)
    own = await lookup(svc, svc.user_id)
    own = replace(own, devices=tuple(d for d in own.devices if d.device != svc.device_id))
    note = svc.message(own, "lu")
    assert list(note.envs) == [second.device_id]
    assert await svc.ask(note) == Accepted(note.id)


async def test_a_service_accepting_replies_is_written_to_like_anyone(hub: HubServer) -> None:
    svc = await service(hub, "svc:labo", replies=True)
    alice = await clinician(hub, "Alice")
    assert (await lookup(alice, svc.user_id)).replies is None
    assert (await lookup(svc, alice.user_id)).replies is None  # a clinician: never the key
    send = await message(alice, svc, "Résultat reçu ?")
    assert await alice.ask(send) == Accepted(send.id)
    assert await delivered_text(svc, alice) == "Résultat reçu ?"
    # Switched off on the store (the cache still says on until the node
    # hears of it): the hub's account cache is forgotten by the audit event.
    await hub.store.set_replies(svc.user_id, False)
    hub.hub.accounts.forget(svc.user_id)
    await wait_for_code(alice, svc, "replies_refused", timeout=0)


async def test_a_role_a_service_holds_is_not_affected(hub: HubServer) -> None:
    svc = await service(hub, "svc:garde")
    alice = await clinician(hub, "Alice")
    role = (await hub.store.create_role("Permanence", ORG, False, None, now_ms())).role
    assert await hub.store.assign_role(role, svc.user_id, now_ms())
    send = sealed(alice, role, keys([svc]), "pour la permanence")
    assert await alice.ask(send) == Accepted(send.id)
    assert await hub.store.count_pending(svc.device_id) == 1


async def test_services_are_never_found_by_a_search(hub: HubServer) -> None:
    await service(hub, "svc:provins", replies=True)
    alice = await clinician(hub, "Alice Provins")
    for rid, query in enumerate(("Admissions", "svc:provins", "service", "Provins"), start=1):
        found = await alice.ask(Search(rid=rid, query=query))
        assert isinstance(found, SearchOk), found
        names = [attestation.peek(a).name for a in found.atts]
        assert names == (["Dr Alice Provins"] if query == "Provins" else []), (query, names)


async def test_a_service_sends_at_its_own_rate(make_hub: HubFactory) -> None:
    """rate_service (100/s burst 500 by default) instead of rate_device."""
    hub = await make_hub(rate_device="10/s burst 20")
    svc = await service(hub, "svc:feed")
    alice = await clinician(hub, "Alice")
    await alice.close()  # the messages wait in the store: no delivery to read meanwhile
    bob = await clinician(hub, "Bob")

    async def burst(dev: OncallDevice, to: OncallDevice, n: int) -> tuple[list[str], float]:
        target = await lookup(dev, to.user_id)
        sends = [dev.message(target, f"{i}", mid=crypto.new_message_id()) for i in range(n)]
        started = time.monotonic()
        for send in sends:  # pipelined: every frame, then every answer
            await dev.send_frame(send)
        answers: list[str] = []
        while len(answers) < n:
            frame = await dev.recv()
            if isinstance(frame, Accepted | Error):
                answers.append(frame.code if isinstance(frame, Error) else "accepted")
        return answers, time.monotonic() - started

    answers, took = await burst(svc, alice, 60)
    assert set(answers) == {"accepted"} and took < 60 / 50, took  # 50+ messages/s, none limited
    answers, _ = await burst(bob, alice, 30)  # a clinician's device: rate_device
    assert "rate_limited" in answers and answers.count("accepted") < 30, answers
    for dev in (svc, bob):
        await dev.close()


def test_invite_refuses_what_names_a_service(run: Admin) -> None:
    run("org", "add", ORG)
    for profession in (
        "service",
        "Service",
        " SERVICE ",
        "\uff53\uff45\uff52\uff56\uff49\uff43\uff45",
        "ser vice",
    ):
        refused = run(
            "invite", "--name", "X", "--rpps", "10000000001", "--profession", profession,
            "--organisation", ORG, status=1,
        )  # fmt: skip
        assert "reserved for service accounts" in refused["error"], profession
    refused = run(
        "invite", "--name", "X", "--rpps", "svc:adt", "--profession", "médecin", "--organisation", ORG,
        status=1,
    )  # fmt: skip
    assert "svc: identifiers are for service accounts" in refused["error"]
    for ident in ("provins", "svc:", "svc:Provins", "svc:a_b", "svc:" + "a" * 29, "svc:ok\n"):
        refused = run("service", "create", "--name", "S", "--ident", ident, "--organisation", ORG, status=1)
        assert "svc: followed by 1 to 28" in refused["error"], ident
    assert run("users")["users"] == [] and run("service", "list")["services"] == []


def test_the_services_of_an_organisation_are_capped(run: Admin, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISS_MAX_SERVICES_PER_ORG", "2")
    run("org", "add", ORG)
    run("org", "add", "CH Provins")
    for ident in ("svc:a", "svc:b"):
        run("service", "create", "--name", ident, "--ident", ident, "--organisation", ORG)
    refused = run("service", "create", "--name", "c", "--ident", "svc:c", "--organisation", ORG, status=1)
    assert "already has 2 services, the cap (max_services_per_org)" in refused["error"]
    taken = run(
        "service", "create", "--name", "a", "--ident", "svc:a", "--organisation", "CH Provins", status=1
    )
    assert "svc:a is already taken" in taken["error"]
    run("service", "create", "--name", "c", "--ident", "svc:c", "--organisation", "CH Provins", "--replies")
    listed = run("service", "list", "--organisation", "CH Provins")["services"]
    assert [(s["ident"], s["replies"]) for s in listed] == [("svc:c", True)]
    assert len(run("service", "list")["services"]) == 3
    clinician = run("invite", "--name", "Dr A", "--rpps", "10000000001", "--profession", "médecin",
                    "--organisation", ORG)  # fmt: skip
    refused = run("service", "replies", clinician["user"], "off", status=1)
    assert "not a service" in refused["error"]
