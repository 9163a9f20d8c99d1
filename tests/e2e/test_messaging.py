"""End to end: the Python SDK against a real hub over real WebSockets.

Alice has one device; Bob has two (a phone enrolled from an invitation and
a laptop linked from the phone). Both are verified by the authority once
their devices are enrolled, as an administrator would (``miss-admin
verify``). Every message is sealed with real NaCl keys on the sending
device and opened on the receiving one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from miss_client import Client, Delivered, Message, Profile

from miss_server.app import HubServer
from protocol import crypto
from tests.support.client_fixtures import next_event
from tests.support.verified_hubs import enroll_clinician, enroll_linked


@dataclass
class Clinicians:
    alice: Profile
    bob_phone: Profile
    bob_laptop: Profile


@pytest.fixture
async def people(hub: HubServer, tmp_path: Path) -> Clinicians:
    alice = await enroll_clinician(hub, tmp_path / "alice", "alice martin", "10000000001")
    # only an attested device may link another (SPEC §11.4); linking verifies Bob again
    phone = await enroll_clinician(hub, tmp_path / "bob-phone", "bob durand", "10000000002", label="phone")
    laptop = await enroll_linked(hub, phone, tmp_path / "bob-laptop", "laptop")
    assert laptop.user_id == phone.user_id and laptop.device_id != phone.device_id
    return Clinicians(alice, phone, laptop)


async def test_online_delivery_to_every_device_with_receipts(people: Clinicians) -> None:
    async with (
        Client.connect(people.alice) as alice,
        Client.connect(people.bob_phone) as phone,
        Client.connect(people.bob_laptop) as laptop,
    ):
        mid = await alice.send("10000000002", "Bonjour, avis sur l'ECG de Mme D. ?")
        for device in (phone, laptop):
            got = await next_event(device)
            assert isinstance(got, Message) and got.id == mid and not got.outgoing_copy
            assert got.body == "Bonjour, avis sur l'ECG de Mme D. ?"
            assert got.from_user == people.alice.user_id and got.to_user == people.bob_phone.user_id
        receipts = {await next_event(alice), await next_event(alice)}
        assert all(isinstance(r, Delivered) and r.id == mid for r in receipts)
        assert {r.device for r in receipts if isinstance(r, Delivered)} == {
            people.bob_phone.device_id,
            people.bob_laptop.device_id,
        }


async def test_copies_reach_the_senders_other_device(people: Clinicians) -> None:
    async with (
        Client.connect(people.alice) as alice,
        Client.connect(people.bob_phone) as phone,
        Client.connect(people.bob_laptop) as laptop,
    ):
        mid = await phone.send(people.alice.user_id, "Oui, je regarde.")
        got = await next_event(alice)
        assert isinstance(got, Message) and got.id == mid and got.body == "Oui, je regarde."
        copy = await next_event(laptop)
        assert isinstance(copy, Message) and copy.id == mid and copy.outgoing_copy
        assert copy.body == "Oui, je regarde." and copy.to_user == people.alice.user_id
        # The phone hears that Alice's device got it, and nothing about its own copy.
        receipt = await next_event(phone)
        assert isinstance(receipt, Delivered) and receipt.device == people.alice.device_id
        with pytest.raises(TimeoutError):
            await next_event(phone, timeout=0.5)


async def test_offline_device_gets_everything_in_order_on_reconnect(
    hub: HubServer, people: Clinicians
) -> None:
    bodies = [f"message {i:02d}" for i in range(30)]
    async with Client.connect(people.alice) as alice, Client.connect(people.bob_phone) as phone:
        for body in bodies:
            await alice.send("10000000002", body)
        # The phone is online: it gets them at once, in order.
        online = [await next_event(phone) for _ in bodies]
        assert [m.body for m in online if isinstance(m, Message)] == bodies
    # The laptop was offline the whole time.
    assert await hub.store.count_pending(people.bob_laptop.device_id) == len(bodies)
    async with Client.connect(people.bob_laptop) as laptop:
        waiting = await laptop.drain(idle=1.0)
    assert [m.body for m in waiting if isinstance(m, Message)] == bodies
    assert await hub.store.count_pending(people.bob_laptop.device_id) == 0  # acked
    async with Client.connect(people.bob_laptop) as laptop:
        assert await laptop.drain(idle=0.5) == []  # nothing comes twice


async def test_resend_with_the_same_id_stores_one_copy(hub: HubServer, people: Clinicians) -> None:
    mid = crypto.new_message_id()
    async with Client.connect(people.alice) as alice:
        assert await alice.send("10000000002", "prescription OK ?", message_id=mid) == mid
        assert await alice.send("10000000002", "prescription OK ?", message_id=mid) == mid
    # One row per Bob device, not two: the hub itself kept one copy.
    assert await hub.store.count_pending(people.bob_phone.device_id) == 1
    assert await hub.store.count_pending(people.bob_laptop.device_id) == 1
    async with Client.connect(people.bob_phone) as phone:
        waiting = await phone.drain(idle=1.0)
    assert [(m.id, m.body) for m in waiting if isinstance(m, Message)] == [(mid, "prescription OK ?")]


async def test_receipt_waits_for_an_offline_sender(people: Clinicians) -> None:
    async with Client.connect(people.alice) as alice:
        mid = await alice.send("10000000002", "rappel : bilan demain")
    async with Client.connect(people.bob_phone) as phone:
        assert [m.id for m in await phone.drain(idle=1.0) if isinstance(m, Message)] == [mid]
    async with Client.connect(people.alice) as alice:
        receipts = await alice.drain(idle=1.0)
    assert [(r.id, r.device) for r in receipts if isinstance(r, Delivered)] == [
        (mid, people.bob_phone.device_id)
    ]


async def test_safety_numbers_match_on_both_sides(people: Clinicians) -> None:
    async with Client.connect(people.alice) as alice, Client.connect(people.bob_phone) as phone:
        a_view = await alice.safety_number("10000000002")
        b_view = await phone.safety_number(people.alice.user_id)
    assert a_view == b_view and len(a_view.replace(" ", "")) == 60
