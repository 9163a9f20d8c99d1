"""The Store contract (miss_server/store/base.py), run against every Store.

Each implementation joins ``STORES`` (tests/support/store_fixtures.py);
every test here runs on each.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from miss_server.codes import code_hash
from miss_server.store.base import (
    COMMIT_INTERVAL,
    AuditEvent,
    CodeInvalid,
    Invitation,
    Kind,
    Organisation,
    SchemaMismatch,
    Store,
    StoreUnavailable,
    User,
)
from protocol.frames import STATUSES
from tests.support.store_fixtures import STORES
from tests.support.store_samples import DAY, MAX_DEVICES, NOW, message, user_with_devices


@pytest.mark.parametrize("kind", sorted(STORES))
async def test_open_refuses_an_unmigrated_schema(kind: str, tmp_path: Path) -> None:
    async with STORES[kind](tmp_path / "fresh") as s:
        with pytest.raises(SchemaMismatch, match="migrate"):
            await s.open()
        with pytest.raises(StoreUnavailable):  # refused means not open
            await s.get_user("u_nobody")


async def test_users_and_rpps_are_unique(store: Store) -> None:
    u = await store.create_user("Dr A", "10000000001", "médecin", "CHRU", NOW)
    assert await store.get_user(u.user_id) == u
    assert await store.find_user_by_rpps("10000000001") == u
    assert await store.get_user("u_nobody") is None
    with pytest.raises(ValueError):
        await store.create_user("Dr B", "10000000001", "médecin", "CHRU", NOW)
    assert [x.user_id for x in await store.list_users()] == [u.user_id]


async def test_enrollment_codes_are_single_use_and_expire(store: Store) -> None:
    u = await store.create_user("Dr A", "10000000001", "médecin", "CHRU", NOW)
    await store.add_enrollment_code(u.user_id, code_hash("ONE"), NOW + 1000)
    d = await store.enroll_device(code_hash("ONE"), b"s" * 32, b"b" * 32, "phone", NOW, MAX_DEVICES)
    assert d.user_id == u.user_id and await store.get_device(d.device_id) == d
    with pytest.raises(CodeInvalid):  # used
        await store.enroll_device(code_hash("ONE"), b"t" * 32, b"b" * 32, "again", NOW, MAX_DEVICES)
    await store.add_enrollment_code(u.user_id, code_hash("TWO"), NOW + 1000)
    with pytest.raises(CodeInvalid):  # expired
        await store.enroll_device(code_hash("TWO"), b"t" * 32, b"b" * 32, "late", NOW + 1000, MAX_DEVICES)
    with pytest.raises(CodeInvalid):  # unknown
        await store.enroll_device(code_hash("NEVER"), b"t" * 32, b"b" * 32, "x", NOW, MAX_DEVICES)
    assert [x.device_id for x in await store.user_devices(u.user_id)] == [d.device_id]


async def test_accept_queues_one_row_per_device_and_is_idempotent(store: Store) -> None:
    a, (a1, a2) = await user_with_devices(store, "10000000001", 2)
    b, (b1, b2) = await user_with_devices(store, "10000000002", 2)
    m = message(1, a, a1, b, [b1, b2, a2])
    first = await store.accept(m)
    assert not first.duplicate and sorted(r.device_id for r in first.queued) == sorted([b1, b2, a2])
    again = await store.accept(m)
    assert again.duplicate and again.queued == []
    for dev in (b1, b2, a2):
        rows = await store.pending(dev, 0, 100, NOW)
        assert len(rows) == 1 and rows[0].payload == f"env-1-{dev}".encode()
        assert rows[0].kind is Kind.MESSAGE and rows[0].peer_user == a and rows[0].peer_device == a1


async def test_pending_is_in_acceptance_order_and_pages(store: Store) -> None:
    a, (a1,) = await user_with_devices(store, "10000000001", 1)
    b, (b1,) = await user_with_devices(store, "10000000002", 1)
    for i in range(25):
        await store.accept(message(i + 1, a, a1, b, [b1]))
    page1 = await store.pending(b1, 0, 10, NOW)
    page2 = await store.pending(b1, page1[-1].seq, 100, NOW)
    ids = [int.from_bytes(r.message_id, "big") for r in page1 + page2]
    assert ids == list(range(1, 26))
    assert await store.count_pending(b1) == 25


async def test_concurrent_accepts_are_all_stored(store: Store) -> None:
    a, (a1,) = await user_with_devices(store, "10000000001", 1)
    b, (b1,) = await user_with_devices(store, "10000000002", 1)
    results = await asyncio.gather(*(store.accept(message(i, a, a1, b, [b1])) for i in range(1, 201)))
    assert all(not r.duplicate for r in results)
    assert len({r.queued[0].seq for r in results}) == 200
    assert await store.count_pending(b1) == 200


async def test_repeats_within_one_batch_are_stored_once(store: Store) -> None:
    a, (a1,) = await user_with_devices(store, "10000000001", 1)
    b, (b1,) = await user_with_devices(store, "10000000002", 1)
    results = await asyncio.gather(*(store.accept(message(i % 10, a, a1, b, [b1])) for i in range(40)))
    assert sum(not r.duplicate for r in results) == 10
    assert all(r.duplicate for r in results[10:])
    assert await store.count_pending(b1) == 10


async def test_ack_deletes_and_queues_receipts_for_every_sender_device(store: Store) -> None:
    a, (a1, a2) = await user_with_devices(store, "10000000001", 2)
    b, (b1,) = await user_with_devices(store, "10000000002", 1)
    accepted = await store.accept(message(7, a, a1, b, [b1, a2]))
    to_b = next(r for r in accepted.queued if r.device_id == b1)
    copy = next(r for r in accepted.queued if r.device_id == a2)
    receipts = await store.ack(b1, [to_b.seq], NOW + 5, NOW + DAY)
    assert sorted(r.device_id for r in receipts) == sorted([a1, a2])
    for r in receipts:
        assert r.kind is Kind.RECEIPT and r.message_id == (7).to_bytes(16, "big")
        assert r.peer_user == b and r.peer_device == b1
    assert await store.pending(b1, 0, 10, NOW) == []
    # The sender's own copy produces no receipt when acked.
    assert await store.ack(a2, [copy.seq], NOW + 6, NOW + DAY) == []
    # Receipts are queued rows too, and ack like them.
    a1_rows = await store.pending(a1, 0, 10, NOW)
    assert [r.kind for r in a1_rows] == [Kind.RECEIPT]
    assert await store.ack(a1, [a1_rows[0].seq], NOW + 7, NOW + DAY) == []
    assert await store.count_pending(a1) == 0


async def test_ack_ignores_other_devices_rows(store: Store) -> None:
    a, (a1,) = await user_with_devices(store, "10000000001", 1)
    b, (b1,) = await user_with_devices(store, "10000000002", 1)
    _, (c1,) = await user_with_devices(store, "10000000003", 1)
    row = (await store.accept(message(1, a, a1, b, [b1]))).queued[0]
    assert await store.ack(c1, [row.seq], NOW, NOW + DAY) == []  # not c1's row
    assert await store.count_pending(b1) == 1


async def test_expiry_deletes_rows_and_frees_ids(store: Store) -> None:
    a, (a1,) = await user_with_devices(store, "10000000001", 1)
    b, (b1,) = await user_with_devices(store, "10000000002", 1)
    await store.accept(message(1, a, a1, b, [b1], ts=NOW))
    await store.accept(message(2, a, a1, b, [b1], ts=NOW + DAY))
    assert len(await store.pending(b1, 0, 10, NOW + DAY)) == 1  # the first is past its expiry
    assert await store.expire(NOW + DAY) == 1
    assert await store.count_pending(b1) == 1
    # Past expiry, the id record is gone too.
    assert not (await store.accept(message(1, a, a1, b, [b1], ts=NOW + DAY))).duplicate


# --- statuses and presence visibility ------------------------------------------------


async def test_status_is_available_until_set_and_survives_reopening(store: Store) -> None:
    a = await store.create_user("Dr A", "10000000001", "médecin", "CHRU", NOW)
    b = await store.create_user("Dr B", "10000000002", "infirmier", "CHRU", NOW)
    assert a.status == b.status == "available"
    assert await store.statuses([a.user_id, b.user_id, "u_nobody"]) == {
        a.user_id: "available",
        b.user_id: "available",
    }
    await store.set_status(a.user_id, "on_call")
    await store.close()
    await store.open()
    found_a = await store.get_user(a.user_id)
    assert found_a is not None and found_a.status == "on_call"
    by_rpps = await store.find_user_by_rpps("10000000001")
    assert by_rpps is not None and by_rpps.status == "on_call"
    assert {u.user_id: u.status for u in await store.list_users()} == {
        a.user_id: "on_call",
        b.user_id: "available",
    }
    assert await store.statuses([a.user_id, b.user_id]) == {a.user_id: "on_call", b.user_id: "available"}
    assert await store.statuses([]) == {}


async def test_every_protocol_status_can_be_set_and_no_other(store: Store) -> None:
    a = await store.create_user("Dr A", "10000000001", "médecin", "CHRU", NOW)
    for status in STATUSES:  # the schema's CHECK agrees with the protocol
        await store.set_status(a.user_id, status)
        assert await store.statuses([a.user_id]) == {a.user_id: status}
    for bad in ("away", "", "Available", "busy "):
        with pytest.raises(ValueError):
            await store.set_status(a.user_id, bad)
    assert await store.statuses([a.user_id]) == {a.user_id: STATUSES[-1]}


async def test_status_of_an_unknown_user_creates_nobody(store: Store) -> None:
    await store.set_status("u_nobody", "busy")
    assert await store.statuses(["u_nobody"]) == {}
    assert await store.list_users() == []


async def test_presence_is_visible_within_an_organisation(store: Store) -> None:
    a = (await store.create_user("Dr A", "10000000001", "médecin", "CHRU", NOW)).user_id
    b = (await store.create_user("Dr B", "10000000002", "médecin", "CHRU", NOW)).user_id
    c = (await store.create_user("Dr C", "10000000003", "médecin", "Clinique du Parc", NOW)).user_id
    assert await store.visible_users(a, [a, b, c, "u_nobody"]) == {a, b}
    assert await store.visible_users(b, [a, c]) == {a}
    assert await store.visible_users(c, [a, b, c]) == {c}  # alone in their organisation: only themself
    assert await store.visible_users(a, [a]) == {a}
    assert await store.visible_users(a, ["u_nobody"]) == set()
    assert await store.visible_users(a, []) == set()


async def test_a_message_either_way_makes_two_organisations_contacts(store: Store) -> None:
    a, (a1,) = await user_with_devices(store, "10000000001", 1, "CHRU")
    b, _ = await user_with_devices(store, "10000000002", 1, "CHRU")
    c, (c1,) = await user_with_devices(store, "10000000003", 1, "Clinique du Parc")
    c_colleague, _ = await user_with_devices(store, "10000000004", 1, "Clinique du Parc")
    d, (d1,) = await user_with_devices(store, "10000000005", 1, "Cabinet Dupont")
    assert await store.visible_users(a, [c, d]) == set()
    await store.accept(message(1, a, a1, c, [c1]))  # a wrote to c
    await store.accept(message(1, d, d1, a, [a1]))  # d wrote to a
    assert await store.visible_users(a, [a, b, c, c_colleague, d]) == {a, b, c, d}
    assert await store.visible_users(c, [a, b, c, c_colleague, d]) == {a, c, c_colleague}
    assert await store.visible_users(d, [a, b, c, c_colleague, d]) == {a, d}
    assert await store.visible_users(b, [c, d]) == set()  # a's contacts are not b's


async def test_contacts_survive_resends_replies_and_notes_to_self(store: Store) -> None:
    a, (a1, a2) = await user_with_devices(store, "10000000001", 2, "CHRU")
    c, (c1,) = await user_with_devices(store, "10000000003", 1, "Clinique du Parc")
    m = message(1, a, a1, c, [c1, a2])
    assert not (await store.accept(m)).duplicate
    assert (await store.accept(m)).duplicate
    assert not (await store.accept(message(1, c, c1, a, [a1, a2]))).duplicate  # a reply, same id
    assert not (await store.accept(message(2, a, a1, a, [a2]))).duplicate  # a note to oneself
    # Many at once, both ways (one batch where the store batches).
    results = await asyncio.gather(
        *(store.accept(message(100 + i, a, a1, c, [c1])) for i in range(10)),
        *(store.accept(message(100 + i, c, c1, a, [a1])) for i in range(10)),
        store.accept(m),
    )
    assert [r.duplicate for r in results] == [False] * 20 + [True]
    assert await store.count_pending(c1) == 11 and await store.count_pending(a1) == 11
    assert await store.count_pending(a2) == 3
    assert await store.visible_users(a, [a, c]) == {a, c}
    assert await store.visible_users(c, [a, c]) == {a, c}


async def test_an_empty_organisation_makes_nobody_a_colleague(store: Store) -> None:
    a = await store.create_user("Dr A", "10000000001", "médecin", "", NOW)
    b = await store.create_user("Dr B", "10000000002", "médecin", "", NOW)
    assert await store.visible_users(a.user_id, [b.user_id]) == set()


# --- verification, suspension, revocation ----------------------------------------------


async def test_attestation_round_trips_through_every_user_read(store: Store) -> None:
    a = await store.create_user("Dr A", "10000000001", "médecin", "CHRU", NOW)
    b = await store.create_user("Dr B", "10000000002", "médecin", "CHRU", NOW)
    assert a.attestation is None and await store.get_user(a.user_id) == a
    await store.set_attestation(a.user_id, b"first")
    att = bytes(range(256))  # any bytes, NUL included
    await store.set_attestation(a.user_id, att)  # replaces the first
    expected = replace(a, attestation=att)
    assert await store.get_user(a.user_id) == expected
    assert await store.find_user_by_rpps("10000000001") == expected
    assert await store.list_users() == [expected, b]
    with pytest.raises(LookupError):
        await store.set_attestation("u_nobody", b"x")
    assert await store.list_users() == [expected, b]


async def test_an_unknown_user_fails_alone_among_concurrent_writes(store: Store) -> None:
    a = await store.create_user("Dr A", "10000000001", "médecin", "CHRU", NOW)
    results = await asyncio.gather(
        store.set_attestation("u_nobody", b"x"),
        store.set_suspended("u_nobody", True),
        store.set_attestation(a.user_id, b"att"),
        store.set_status(a.user_id, "busy"),
        store.create_user("Dr B", "10000000002", "médecin", "CHRU", NOW),
        return_exceptions=True,
    )
    assert [type(r) for r in results[:2]] == [LookupError, LookupError]
    assert results[2:4] == [None, None] and isinstance(results[4], User)
    assert await store.get_user(a.user_id) == replace(a, attestation=b"att", status="busy")


async def test_suspension_is_recorded_and_lifted(store: Store) -> None:
    a = await store.create_user("Dr A", "10000000001", "médecin", "CHRU", NOW)
    b = await store.create_user("Dr B", "10000000002", "médecin", "CHRU", NOW)
    assert not a.suspended
    await store.set_suspended(a.user_id, True)
    await store.set_suspended(a.user_id, True)  # twice is once
    assert await store.get_user(a.user_id) == replace(a, suspended=True)
    assert await store.find_user_by_rpps("10000000001") == replace(a, suspended=True)
    assert [u.suspended for u in await store.list_users()] == [True, False]
    await store.set_suspended(a.user_id, False)
    assert await store.get_user(a.user_id) == a and await store.get_user(b.user_id) == b
    with pytest.raises(LookupError):
        await store.set_suspended("u_nobody", True)


async def test_revoking_a_device_is_for_ever_and_drops_its_queue(store: Store) -> None:
    a, (a1,) = await user_with_devices(store, "10000000001", 1)
    b, (b1, b2) = await user_with_devices(store, "10000000002", 2)
    first = await store.accept(message(1, a, a1, b, [b1, b2]))
    await store.accept(message(2, a, a1, b, [b1, b2]))
    before = await store.get_device(b1)
    assert before is not None and not before.revoked
    assert await store.revoke_device(b1, NOW + 10) == before  # as it was
    assert await store.get_device(b1) == replace(before, revoked=True)
    assert [d.device_id for d in await store.user_devices(b)] == [b2]
    assert await store.pending(b1, 0, 10, NOW) == [] and await store.count_pending(b1) == 0
    assert await store.count_pending(b2) == 2  # the other device keeps its rows
    # Acking a row the revocation deleted does nothing.
    to_b1 = next(q for q in first.queued if q.device_id == b1)
    assert await store.ack(b1, [to_b1.seq], NOW + 11, NOW + DAY) == []
    assert await store.count_pending(a1) == 0
    # Again, or an unknown device: nothing.
    assert await store.revoke_device(b1, NOW + 20) is None
    assert await store.revoke_device("d_nobody", NOW + 20) is None
    assert await store.get_device(b1) == replace(before, revoked=True)
    # Messages afterwards go to the devices that remain.
    targets = [d.device_id for d in await store.user_devices(b)]
    result = await store.accept(message(3, a, a1, b, targets))
    assert not result.duplicate and [q.device_id for q in result.queued] == [b2]
    assert await store.count_pending(b1) == 0 and await store.count_pending(b2) == 3


async def test_get_account_is_the_user_and_their_active_devices(store: Store) -> None:
    """What the hub loads per account in one trip (accounts.py): the same as
    get_user and user_devices, a revoked device left out, a suspension seen."""
    b, (b1, b2) = await user_with_devices(store, "10000000002", 2)
    await store.revoke_device(b1, NOW + 10)
    await store.set_suspended(b, True)
    user, devices = await store.get_account(b)
    assert user == await store.get_user(b) and user is not None and user.suspended
    assert devices == await store.user_devices(b) and [d.device_id for d in devices] == [b2]
    assert await store.get_account("u_nobody") == (None, [])


async def test_receipts_skip_a_revoked_sender_device(store: Store) -> None:
    a, (a1, a2) = await user_with_devices(store, "10000000001", 2)
    b, (b1,) = await user_with_devices(store, "10000000002", 1)
    row = (await store.accept(message(1, a, a1, b, [b1]))).queued[0]
    # The owners cache of a store that keeps one learns of a2 before its revocation.
    assert await store.ack(a2, [], NOW, NOW + DAY) == []
    revoked = await store.revoke_device(a2, NOW + 1)
    assert revoked is not None and revoked.device_id == a2 and not revoked.revoked
    receipts = await store.ack(b1, [row.seq], NOW + 2, NOW + DAY)
    assert [r.device_id for r in receipts] == [a1]
    assert await store.count_pending(a2) == 0


async def test_revocations_and_other_writes_at_once(store: Store) -> None:
    a, (a1,) = await user_with_devices(store, "10000000001", 1)
    b, (b1, b2, b3) = await user_with_devices(store, "10000000002", 3)
    await store.accept(message(1, a, a1, b, [b1, b2, b3]))
    results = await asyncio.gather(
        store.revoke_device(b1, NOW + 1),
        store.revoke_device(b1, NOW + 1),
        store.revoke_device(b2, NOW + 1),
        store.accept(message(2, a, a1, b, [b3])),
    )
    assert sorted(r is None for r in results[:3]) == [False, False, True]
    assert [d.device_id for d in await store.user_devices(b)] == [b3]
    assert [await store.count_pending(d) for d in (b1, b2, b3)] == [0, 0, 2]


# --- search ------------------------------------------------------------------------------


async def _attested(store: Store, name: str, rpps: str, profession: str, organisation: str) -> str:
    user = await store.create_user(name, rpps, profession, organisation, NOW)
    await store.set_attestation(user.user_id, b"att-" + rpps.encode())
    return user.user_id


async def test_search_matches_each_field_case_insensitively(store: Store) -> None:
    alice = await _attested(store, "Alice Martin", "10000000001", "Cardiologue", "CHRU Lille")
    bob = await _attested(store, "bob durand", "10000000002", "Infirmier", "Clinique_du_Parc")
    chloe = await _attested(store, "Chloé 100% Dispo", "10000000003", "médecin", "Cabinet Dupont")
    denis = await _attested(store, "Denis Back\\slash", "10000000004", "sage-femme", "Maternité")

    async def search(query: str, limit: int = 10) -> list[str]:
        return [u.user_id for u in await store.search_users(query, limit)]

    assert await search("alice") == await search("ALICE") == await search("iCe mAr") == [alice]
    assert await search("0000000002") == [bob]  # RPPS
    assert await search("INFIRM") == await search("infirmier") == [bob]  # profession
    assert await search("lille") == await search("chru") == [alice]  # organisation
    assert await search("DUPONT") == await search("chloé") == [chloe]
    assert await search("nobody") == []
    # Wildcards and the escape character in the query are literal.
    assert await search("e_d") == await search("_du") == [bob]
    assert await search("00%") == await search("0% D") == [chloe]
    assert await search("k\\s") == [denis]
    assert await search("a%n") == await search("b_b") == []
    # A query of fewer than three characters finds nobody (SPEC §11.3).
    assert await search("_") == await search("ch") == await search("") == []
    # By name (code point order: capitals first), then at most ``limit``.
    assert await search("000000000") == [alice, chloe, denis, bob]
    assert await search("000000000", 2) == [alice, chloe]
    assert await search("000000000", 0) == []
    found = await store.search_users("alice", 10)
    assert [u.attestation for u in found] == [b"att-10000000001"]


async def test_search_shows_only_attested_unsuspended_users(store: Store) -> None:
    alice = await _attested(store, "Dr Alice", "10000000001", "médecin", "CHRU")
    unverified = await store.create_user("Dr Alice Unverified", "10000000002", "médecin", "CHRU", NOW)
    suspended = await _attested(store, "Dr Alice Suspended", "10000000003", "médecin", "CHRU")
    await store.set_suspended(suspended, True)
    assert [u.user_id for u in await store.search_users("alice", 10)] == [alice]
    await store.set_suspended(suspended, False)
    await store.set_attestation(unverified.user_id, b"now verified")
    assert [u.user_id for u in await store.search_users("alice", 10)] == [
        alice,
        suspended,
        unverified.user_id,
    ]


async def test_search_orders_namesakes_by_user_id(store: Store) -> None:
    ids = [await _attested(store, "Dr Martin", f"1000000000{i}", "médecin", "CHRU") for i in range(4)]
    assert [u.user_id for u in await store.search_users("martin", 10)] == sorted(ids)
    assert [u.user_id for u in await store.search_users("martin", 3)] == sorted(ids)[:3]


# --- organisations and invitations ---------------------------------------------------------


async def test_organisations_are_unique_and_listed_by_name(store: Store) -> None:
    assert await store.list_organisations() == []
    assert await store.add_organisation("Clinique du Parc", NOW) == Organisation("Clinique du Parc", NOW)
    assert await store.add_organisation("CHRU", NOW + 1) == Organisation("CHRU", NOW + 1)
    with pytest.raises(ValueError):
        await store.add_organisation("CHRU", NOW + 2)
    assert await store.list_organisations() == [
        Organisation("CHRU", NOW + 1),
        Organisation("Clinique du Parc", NOW),
    ]
    # A duplicate fails alone among concurrent writes.
    results = await asyncio.gather(
        store.add_organisation("Cabinet Dupont", NOW + 3),
        store.add_organisation("Cabinet Dupont", NOW + 3),
        store.create_user("Dr A", "10000000001", "médecin", "Cabinet Dupont", NOW),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results[:2]) == ["Organisation", "ValueError"]
    assert isinstance(results[2], User)
    assert [o.name for o in await store.list_organisations()] == [
        "CHRU",
        "Cabinet Dupont",
        "Clinique du Parc",
    ]


async def test_invitations_are_unused_unexpired_codes_soonest_first(store: Store) -> None:
    a = (await store.create_user("Dr A", "10000000001", "médecin", "CHRU", NOW)).user_id
    b = (await store.create_user("Dr B", "10000000002", "médecin", "CHRU", NOW)).user_id
    assert await store.invitations(NOW) == []
    await store.add_enrollment_code(a, code_hash("A-LATE"), NOW + 3000)
    await store.add_enrollment_code(b, code_hash("B-SOON"), NOW + 1000)
    await store.add_enrollment_code(a, code_hash("A-MID"), NOW + 2000)
    await store.add_enrollment_code(b, code_hash("B-GONE"), NOW)  # expires at NOW: expired
    assert await store.invitations(NOW) == [
        Invitation(b, NOW + 1000),
        Invitation(a, NOW + 2000),
        Invitation(a, NOW + 3000),
    ]
    await store.enroll_device(code_hash("B-SOON"), b"s" * 32, b"b" * 32, "phone", NOW + 1, MAX_DEVICES)
    assert await store.invitations(NOW + 1) == [Invitation(a, NOW + 2000), Invitation(a, NOW + 3000)]
    assert await store.invitations(NOW + 2000) == [Invitation(a, NOW + 3000)]
    assert await store.invitations(NOW + 3000) == []


# --- audit log -------------------------------------------------------------------------------

EVENTS = [
    AuditEvent(NOW, "admin:root", "user.created", user_id="u_a", detail="RPPS 10000000001"),
    AuditEvent(NOW + 1, "u_a", "auth.failed", user_id="u_a", device_id="d_a1", address="192.0.2.7"),
    AuditEvent(NOW + 2, "admin:root", "device.revoked", user_id="u_b", device_id="d_b1"),
    AuditEvent(NOW + 3, "hub", "user.suspended", user_id="u_b", address="2001:db8::1", detail="é ✓"),
    AuditEvent(NOW + 3, "hub", "hub.started"),
]


async def test_audit_appends_and_reads_oldest_first(store: Store) -> None:
    assert await store.audit_log() == []
    await store.audit(EVENTS[:2])
    await store.audit([])
    await store.audit(EVENTS[2:])
    log = await store.audit_log()
    assert [replace(e, seq=0) for e in log] == EVENTS
    seqs = [e.seq for e in log]
    assert seqs[0] > 0 and seqs == sorted(set(seqs))

    async def read(**kwargs: Any) -> list[AuditEvent]:
        return [replace(e, seq=0) for e in await store.audit_log(**kwargs)]

    assert await read(since_at=NOW + 2) == EVENTS[2:]
    assert await read(since_at=NOW + 4) == []
    assert await read(user_id="u_b") == EVENTS[2:4]
    assert await read(user_id="u_nobody") == []
    assert await read(actions=["user.suspended", "device.revoked"]) == EVENTS[2:4]
    assert await read(actions=["device.revoked"], since_at=NOW + 3) == []
    assert await read(actions=[]) == []
    assert await read(user_id="u_a", actions=["auth.failed", "device.revoked"]) == [EVENTS[1]]
    assert await read(user_id="u_a", since_at=NOW + 1, actions=["auth.failed"]) == [EVENTS[1]]
    # More match than ``limit``: the newest, still oldest first.
    assert await read(limit=2) == EVENTS[3:]
    assert await read(user_id="u_a", limit=1) == [EVENTS[1]]
    assert await read(limit=0) == []
    # Above a seq (a poll's cursor), with the other filters.
    assert await read(after_seq=seqs[1]) == EVENTS[2:]
    assert await read(after_seq=seqs[1], actions=["auth.failed", "device.revoked"]) == [EVENTS[2]]
    assert await read(after_seq=seqs[-1]) == []
    # Read forward a page at a time (a poll): the oldest first, every event once.
    assert await read(limit=2, oldest=True) == EVENTS[:2]
    assert await read(limit=2, oldest=True, after_seq=seqs[1]) == EVENTS[2:4]
    assert await read(limit=2, oldest=True, after_seq=seqs[3]) == EVENTS[4:]
    assert await read(limit=2, oldest=True, after_seq=seqs[1], user_id="u_b", since_at=NOW + 3) == [EVENTS[3]]
    # The store assigns seq, whatever the event carried.
    await store.audit([replace(EVENTS[0], at=NOW + 9, seq=1)])
    [last] = await store.audit_log(since_at=NOW + 9)
    assert last.seq > seqs[-1] and last.seq not in seqs


async def test_audit_keeps_order_and_takes_concurrent_appends(store: Store) -> None:
    batch = [AuditEvent(NOW, "hub", "test.batch", detail=str(i)) for i in range(150)]
    await store.audit(batch)
    await asyncio.gather(*(store.audit([AuditEvent(NOW + 1, f"u_{i}", "test.one")]) for i in range(20)))
    newest = await store.audit_log()  # the default limit: 100
    assert len(newest) == 100 and [e.detail for e in newest[:80]] == [str(i) for i in range(70, 150)]
    assert sorted(e.actor for e in newest[80:]) == sorted(f"u_{i}" for i in range(20))
    assert [e.seq for e in newest] == sorted({e.seq for e in newest})
    in_order = await store.audit_log(actions=["test.batch"], limit=1000)
    assert [e.detail for e in in_order] == [str(i) for i in range(150)]


async def test_expire_keeps_the_audit_log(store: Store) -> None:
    a, (a1,) = await user_with_devices(store, "10000000001", 1)
    b, (b1,) = await user_with_devices(store, "10000000002", 1)
    await store.audit(EVENTS)
    await store.accept(message(1, a, a1, b, [b1], ts=NOW))
    assert await store.expire(NOW + 10 * DAY) == 1
    assert [replace(e, seq=0) for e in await store.audit_log()] == EVENTS


async def test_a_steady_stream_of_writes_commits_at_most_once_per_interval(store: Store) -> None:
    """Group commit pacing (store/base.py): calls arriving one at a time,
    a millisecond apart, share transactions instead of syncing one each, and
    the store's counters see every one of them."""
    a, (a1,) = await user_with_devices(store, "10000000001", 1)
    b, (b1,) = await user_with_devices(store, "10000000002", 1)
    stats = store.group_commit_stats  # type: ignore[attr-defined]
    before = replace(stats)
    loop = asyncio.get_running_loop()
    started = loop.time()
    calls = []
    for i in range(100):
        calls.append(asyncio.ensure_future(store.accept(message(i, a, a1, b, [b1]))))
        await asyncio.sleep(0.001)
    results = await asyncio.gather(*calls)
    elapsed = loop.time() - started
    assert all(not r.duplicate and len(r.queued) == 1 for r in results)
    transactions = stats.transactions - before.transactions
    assert stats.calls - before.calls == 100  # every call counted, in some transaction
    assert 1 <= transactions <= elapsed / COMMIT_INTERVAL + 2, f"{transactions} commits in {elapsed:.3f} s"


# --- accept and ack: the rules both dialects state -----------------------------------------


async def _unattested_device(store: Store, user_id: str, n: int) -> str:
    """A device enrolled after the user's attestation, which therefore does not name it."""
    code = f"LATE-{user_id}-{n}"
    await store.add_enrollment_code(user_id, code_hash(code), NOW + DAY)
    device = await store.enroll_device(
        code_hash(code), bytes([n]) * 32, b"b" * 32, f"late{n}", NOW + n, MAX_DEVICES
    )
    return device.device_id


@pytest.mark.parametrize("together", [False, True], ids=["one_at_a_time", "batched"])
async def test_accept_and_ack_rules_give_the_same_outcomes_one_at_a_time_or_batched(
    store: Store, together: bool
) -> None:
    """Every rule of accept() and ack() (store/base.py) in one story. SQLite
    states them in sqlite.py (_accept, _ack), PostgreSQL in miss_group_commit
    (migrations/postgres/0007): both must tell it the same, whether the calls
    come one at a time or ride in one batch."""
    a, (a1, a2) = await user_with_devices(store, "10000000001", 2)
    a3 = await _unattested_device(store, a, 7)
    b, (b1, b2) = await user_with_devices(store, "10000000002", 2)
    c, (c1,) = await user_with_devices(store, "10000000003", 1, "Clinique du Parc")

    async def run(calls: list[Any]) -> list[Any]:
        if together:
            return list(await asyncio.gather(*calls))
        return [await call for call in calls]

    accepted = await run(
        [
            store.accept(message(1, a, a1, b, [b1, b2, a2])),
            store.accept(message(1, a, a1, b, [b1, b2, a2])),  # a resend: a duplicate
            store.accept(message(1, c, c1, b, [b1])),  # the same id from another sender
            store.accept(message(2, a, a1, a, [a2])),  # a note to oneself
            store.accept(message(3, a, a1, b, [b1])),
            store.accept(message(4, a, a1, b, [b1])),
            store.accept(message(5, a, a1, b, [])),  # no envelope at all: still stored
            store.accept(message(3, a, a1, b, [b1])),  # a resend right behind the first
        ]
    )
    assert [r.duplicate for r in accepted] == [False, True, False, False, False, False, False, True]
    assert [[q.device_id for q in r.queued] for r in accepted] == [
        [b1, b2, a2],
        [],
        [b1],
        [a2],
        [b1],
        [b1],
        [],
        [],
    ]
    rows = {(q.message_id[-1], q.peer_user, q.device_id): q for r in accepted for q in r.queued}
    for q in rows.values():  # what accept() returns is what is stored
        assert await store.pending(q.device_id, q.seq - 1, 1, NOW) == [q]
    assert await store.visible_users(c, [a, b]) == {b}  # a message makes contacts; a note to oneself none

    m1_b1, m1_b2, m1_copy = rows[1, a, b1], rows[1, a, b2], rows[1, a, a2]
    from_c, note, m3, m4 = rows[1, c, b1], rows[2, a, a2], rows[3, a, b1], rows[4, a, b1]
    later, expiry = NOW + 5, NOW + DAY
    acks = await run(
        [
            store.ack(b1, [m1_b1.seq], later, expiry, {from_c.seq: "spam"}),  # one id, two senders
            store.ack(b1, [m1_b1.seq], later, expiry),  # acked again: nothing more
            store.ack(c1, [m1_b2.seq], later, expiry),  # another device's row: ignored
            store.ack(b1, [10**12], later, expiry),  # a seq that never was
            store.ack(a2, [m1_copy.seq], later, expiry, {note.seq: "unreadable"}),  # the sender's own
            store.ack(b1, [m3.seq], later, expiry, {m3.seq: "sender_unverified"}),  # both: refused
            store.ack(b2, [m1_b2.seq], later, expiry),  # each device of the recipient answers
            store.ack("d_nobody", [m4.seq], later, expiry),  # an unknown device: ignored
            store.ack(b1, [], later, expiry, {m4.seq: ""}),  # a refusal with no reason
        ]
    )

    def receipts(mid: int, by: str, reason: str | None = None) -> list[tuple[Any, ...]]:
        """The receipts that a's attested devices get: a1 and a2, never a3."""
        kind, payload = (Kind.RECEIPT, b"") if reason is None else (Kind.REFUSAL, reason.encode())
        return [(d, kind, mid, b, by, later, payload) for d in (a1, a2)]

    got = [
        [(q.device_id, q.kind, q.message_id[-1], q.peer_user, q.peer_device, q.ts, q.payload) for q in r]
        for r in acks
    ]
    assert got == [
        [*receipts(1, b1), (c1, Kind.REFUSAL, 1, b, b1, later, b"spam")],
        [],
        [],
        [],
        [],
        receipts(3, b1, "sender_unverified"),  # acked and refused at once: refused
        receipts(1, b2),
        [],
        receipts(4, b1, ""),
    ]
    for q in (q for r in acks for q in r):  # what ack() returns is what is stored
        assert await store.pending(q.device_id, q.seq - 1, 1, NOW) == [q]
    assert [await store.count_pending(d) for d in (a1, a2, a3, b1, b2, c1)] == [4, 4, 0, 0, 0, 1]
