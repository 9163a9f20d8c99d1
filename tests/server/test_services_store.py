"""Service accounts in the Store (SPEC §17.1), run against every Store
(the ``store`` fixture: SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest

from miss_server.codes import code_hash
from miss_server.store.base import ServiceLimit, Store
from tests.support.authority import verify
from tests.support.store_samples import NOW, user_with_devices


async def test_a_service_is_a_user_that_says_so_and_refuses_replies_by_default(store: Store) -> None:
    clinician = await store.create_user("Dr A", "10000000001", "médecin", "CHRU", NOW)
    assert not clinician.service and clinician.replies and not clinician.refuses_replies
    svc = await store.create_service("Admissions", "svc:provins-adt", "CHRU", False, NOW, 20)
    assert (svc.service, svc.replies, svc.profession, svc.rpps) == (True, False, "service", "svc:provins-adt")
    assert svc.refuses_replies
    # Read back as it was written, by id and by its identifier, like any user.
    assert await store.get_user(svc.user_id) == svc
    assert await store.find_user_by_rpps("svc:provins-adt") == svc
    assert await store.get_user(clinician.user_id) == clinician
    with pytest.raises(ValueError):  # identifiers are unique like RPPS numbers
        await store.create_service("Other", "svc:provins-adt", "CHRU", False, NOW, 20)


async def test_replies_are_switched_for_services_only(store: Store) -> None:
    svc = await store.create_service("Admissions", "svc:adt", "CHRU", False, NOW, 20)
    await store.set_replies(svc.user_id, True)
    assert (await store.get_user(svc.user_id)).replies is True  # type: ignore[union-attr]
    await store.set_replies(svc.user_id, False)
    assert (await store.get_user(svc.user_id)).refuses_replies  # type: ignore[union-attr]
    clinician = await store.create_user("Dr A", "10000000001", "médecin", "CHRU", NOW)
    with pytest.raises(LookupError):  # a clinician always accepts replies
        await store.set_replies(clinician.user_id, False)
    assert (await store.get_user(clinician.user_id)).replies is True  # type: ignore[union-attr]
    with pytest.raises(LookupError):
        await store.set_replies("u_nobody", True)


async def test_services_are_listed_by_organisation(store: Store) -> None:
    await store.create_user("Dr A", "10000000001", "médecin", "CHRU", NOW)
    b = await store.create_service("Urgences", "svc:b", "CHRU", True, NOW, 20)
    a = await store.create_service("Admissions", "svc:a", "CHRU", False, NOW, 20)
    c = await store.create_service("Admissions", "svc:c", "CH Provins", False, NOW, 20)
    assert [u.user_id for u in await store.list_services()] == [c.user_id, a.user_id, b.user_id]
    assert [u.user_id for u in await store.list_services("CHRU")] == [a.user_id, b.user_id]
    assert await store.list_services("Nowhere") == []


async def test_the_cap_counts_an_organisations_services_at_once(store: Store) -> None:
    await store.add_organisation("CHRU", NOW)
    await store.add_organisation("CHU", NOW)
    # Five administrators at once under a cap of 3: exactly three succeed.
    results = await asyncio.gather(
        *(store.create_service(f"S{i}", f"svc:s{i}", "CHRU", False, NOW, 3) for i in range(5)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, ServiceLimit) for r in results) == 2
    assert len(await store.list_services("CHRU")) == 3
    with pytest.raises(ServiceLimit):
        await store.create_service("Late", "svc:late", "CHRU", False, NOW, 3)
    assert await store.find_user_by_rpps("svc:late") is None  # nothing written
    # Another organisation's cap is its own, and clinicians do not count.
    await user_with_devices(store, "10000000001", 1, "CHU")
    assert (await store.create_service("X", "svc:x", "CHU", False, NOW, 1)).service


async def test_services_are_never_in_the_directory(store: Store) -> None:
    a, _ = await user_with_devices(store, "10000000001", 1, "CH Provins")
    svc = await store.create_service("Provins Admissions", "svc:provins", "CH Provins", True, NOW, 20)
    await store.add_enrollment_code(svc.user_id, code_hash("SVC"), NOW + 1000)
    await store.enroll_device(code_hash("SVC"), b"v" * 32, b"b" * 32, "adt", NOW, 8)
    await verify(store, svc.user_id)  # attests the stored profession, "service"
    assert (await store.get_user(svc.user_id)).attestation is not None  # type: ignore[union-attr]
    for query in ("Provins", "svc:", "service", "Admissions"):
        found = await store.search_users(query, 50)
        assert svc.user_id not in {u.user_id for u in found}, query
    assert [u.user_id for u in await store.search_users("Provins", 50)] == [a]
