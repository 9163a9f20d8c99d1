"""The authentications of one turn of the event loop read their devices in
one statement (``store/batched_reads.py``): each still gets its own device
and user, on both stores; a caller that goes away costs the others nothing;
a failed read fails every caller of its batch, as it would have each alone."""

from __future__ import annotations

import asyncio
import time

import pytest

from miss_server.store import batched_reads
from miss_server.store.base import Store, StoreUnavailable
from miss_server.store.batched_reads import BatchedReads
from tests.support.store_samples import NOW, message, user_with_devices


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_one_turn_of_authentications_is_one_read_and_each_gets_its_own(store: Store) -> None:
    now = now_ms()
    devices = []
    for i in range(3):
        user = await store.create_user(f"Dr {i}", f"1000000000{i}", "médecin", "CHRU", now)
        await store.add_enrollment_code(user.user_id, bytes([i]) * 32, now + 60_000)
        devices.append(
            (await store.enroll_device(bytes([i]) * 32, bytes([i]) * 32, b"b" * 32, "phone", now, 5), user)
        )
    await store.set_suspended(devices[2][1].user_id, True)
    reads: BatchedReads[str, object] = store._device_users  # type: ignore[attr-defined]
    before = reads.batches

    asked = [d.device_id for d, _ in devices] + [devices[0][0].device_id, "d_nobody"]
    answers = await asyncio.gather(*(store.get_device_user(d) for d in asked))

    assert reads.batches == before + 1  # five authentications, one statement
    assert answers[:3] == [(d, await store.get_user(u.user_id)) for d, u in devices]
    assert answers[3] == answers[0]  # the same device twice
    assert answers[4] == (None, None)  # an unknown device
    assert answers[2][1] is not None and answers[2][1].suspended  # read fresh, as each alone


async def test_the_drains_of_one_turn_read_their_pages_together_and_each_gets_its_own(store: Store) -> None:
    """A reconnection storm's first pages (and any drains of one turn): each
    device gets its own rows after its own cursor, up to its own limit, in
    seq order, whatever the others asked; team rows come with them."""
    alice, (alice_dev,) = await user_with_devices(store, "10000000001", 1)
    bob, bob_devs = await user_with_devices(store, "10000000002", 3)
    for mid in range(1, 6):
        await store.accept(message(mid, alice, alice_dev, bob, bob_devs))
    alone = {d: await store.pending(d, 0, 100, NOW) for d in bob_devs}
    assert all(len(rows) == 5 for rows in alone.values())
    reads: BatchedReads[object, object] = store._pages  # type: ignore[attr-defined]
    before = reads.batches

    first, second, third = bob_devs
    pages = await asyncio.gather(
        store.pending(first, 0, 100, NOW),
        store.pending(second, alone[second][1].seq, 2, NOW),  # after its second row, two rows
        store.pending(third, alone[third][-1].seq, 100, NOW),  # nothing left
        store.pending(first, 0, 100, NOW),  # the same page twice
        store.pending(alice_dev, 0, 100, NOW),
        store.pending(first, 0, 100, NOW + 2 * 86_400_000),  # every row expired by then
    )

    assert reads.batches == before + 1
    assert pages[0] == alone[first] == pages[3]
    assert pages[1] == alone[second][2:4]
    assert pages[2] == [] and pages[4] == [] and pages[5] == []


async def test_a_caller_that_goes_away_costs_the_others_nothing() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def read_many(keys: list[str]) -> dict[str, str]:
        started.set()
        await release.wait()
        return {k: k.upper() for k in keys}

    reads = BatchedReads(read_many, "?")
    gone = asyncio.create_task(reads.get("a"))
    stays = [asyncio.create_task(reads.get(k)) for k in ("a", "b", "c")]
    await started.wait()
    gone.cancel()  # its connection closed while the batch was read
    release.set()
    assert await asyncio.gather(*stays) == ["A", "B", "C"]
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert reads.batches == 1 and reads.asked == 4


async def test_a_failed_read_fails_each_caller_of_its_batch_and_not_the_next() -> None:
    calls: list[list[str]] = []

    async def read_many(keys: list[str]) -> dict[str, str]:
        calls.append(keys)
        if len(calls) == 1:
            raise StoreUnavailable("the store went away")
        return {k: k.upper() for k in keys}

    reads = BatchedReads(read_many, "?")
    first = await asyncio.gather(*(reads.get(k) for k in ("a", "b", "a")), return_exceptions=True)
    assert all(isinstance(e, StoreUnavailable) for e in first), first
    assert calls == [["a", "b"]]  # a key asked twice is read once
    assert await asyncio.gather(reads.get("a"), reads.get("z")) == ["A", "Z"]


async def test_a_storm_larger_than_one_statement_takes_several(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batched_reads, "MAX_KEYS", 4)
    sizes: list[int] = []

    async def read_many(keys: list[str]) -> dict[str, str]:
        sizes.append(len(keys))
        return {k: k for k in keys if k != "k5"}

    reads = BatchedReads(read_many, "missing")
    answers = await asyncio.gather(*(reads.get(f"k{i}") for i in range(10)))
    assert sorted(sizes) == [2, 4, 4]
    assert answers == [f"k{i}" if i != 5 else "missing" for i in range(10)]
