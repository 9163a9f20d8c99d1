"""The Store contract (miss_server/store/base.py), run against every Store.

Each implementation joins ``STORES``; every test here runs on each.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import asyncpg
import pytest

from miss_server.codes import code_hash
from miss_server.store.base import CodeInvalid, Kind, NewMessage, SchemaMismatch, Store, StoreUnavailable
from miss_server.store.postgres import PostgresStore
from miss_server.store.sqlite import SQLiteStore

NOW = 1_800_000_000_000
DAY = 86_400_000


# Not skipped when unreachable: a PostgreSQL run that cannot connect fails.
POSTGRES_DSN = os.environ.get("MISS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.asynccontextmanager
async def _sqlite(tmp_path: Path) -> AsyncIterator[Store]:
    s = SQLiteStore(tmp_path / "conformance.db")
    try:
        yield s
    finally:
        await s.close()


@contextlib.asynccontextmanager
async def _postgres(tmp_path: Path) -> AsyncIterator[Store]:
    """A store in a schema of its own, dropped afterwards whatever happened."""
    schema = "miss_test_" + secrets.token_hex(6)
    s = PostgresStore(POSTGRES_DSN, schema=schema, pool_min=1, pool_max=4)
    try:
        yield s
    finally:
        try:
            await s.close()
        finally:
            conn = await asyncpg.connect(POSTGRES_DSN)
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            finally:
                await conn.close()


# Each entry makes a store that is not yet migrated nor open, and cleans up after it.
STORES: dict[str, Callable[[Path], AbstractAsyncContextManager[Store]]] = {
    "sqlite": _sqlite,
    "postgresql": _postgres,
}


@pytest.fixture(params=sorted(STORES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with STORES[request.param](tmp_path) as s:
        await s.migrate()
        await s.open()
        yield s


async def _user_with_devices(store: Store, rpps: str, n: int) -> tuple[str, list[str]]:
    user = await store.create_user(f"Dr {rpps}", rpps, "médecin", "CHRU", NOW)
    devices = []
    for i in range(n):
        code = f"CODE-{rpps}-{i}"
        await store.add_enrollment_code(user.user_id, code_hash(code), NOW + DAY)
        d = await store.enroll_device(
            code_hash(code), bytes([i]) + rpps.encode().ljust(31, b"k"), b"b" * 32, f"dev{i}", NOW + i
        )
        devices.append(d.device_id)
    return user.user_id, devices


def _message(
    mid: int, sender: str, sender_dev: str, to: str, targets: list[str], ts: int = NOW
) -> NewMessage:
    return NewMessage(
        message_id=mid.to_bytes(16, "big"),
        sender_user=sender,
        sender_device=sender_dev,
        recipient_user=to,
        envelopes={d: f"env-{mid}-{d}".encode() for d in targets},
        ts=ts,
        expires_at=ts + DAY,
    )


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
    d = await store.enroll_device(code_hash("ONE"), b"s" * 32, b"b" * 32, "phone", NOW)
    assert d.user_id == u.user_id and await store.get_device(d.device_id) == d
    with pytest.raises(CodeInvalid):  # used
        await store.enroll_device(code_hash("ONE"), b"t" * 32, b"b" * 32, "again", NOW)
    await store.add_enrollment_code(u.user_id, code_hash("TWO"), NOW + 1000)
    with pytest.raises(CodeInvalid):  # expired
        await store.enroll_device(code_hash("TWO"), b"t" * 32, b"b" * 32, "late", NOW + 1000)
    with pytest.raises(CodeInvalid):  # unknown
        await store.enroll_device(code_hash("NEVER"), b"t" * 32, b"b" * 32, "x", NOW)
    assert [x.device_id for x in await store.user_devices(u.user_id)] == [d.device_id]


async def test_accept_queues_one_row_per_device_and_is_idempotent(store: Store) -> None:
    a, (a1, a2) = await _user_with_devices(store, "10000000001", 2)
    b, (b1, b2) = await _user_with_devices(store, "10000000002", 2)
    m = _message(1, a, a1, b, [b1, b2, a2])
    first = await store.accept(m)
    assert not first.duplicate and sorted(r.device_id for r in first.queued) == sorted([b1, b2, a2])
    again = await store.accept(m)
    assert again.duplicate and again.queued == []
    for dev in (b1, b2, a2):
        rows = await store.pending(dev, 0, 100, NOW)
        assert len(rows) == 1 and rows[0].payload == f"env-1-{dev}".encode()
        assert rows[0].kind is Kind.MESSAGE and rows[0].peer_user == a and rows[0].peer_device == a1


async def test_pending_is_in_acceptance_order_and_pages(store: Store) -> None:
    a, (a1,) = await _user_with_devices(store, "10000000001", 1)
    b, (b1,) = await _user_with_devices(store, "10000000002", 1)
    for i in range(25):
        await store.accept(_message(i + 1, a, a1, b, [b1]))
    page1 = await store.pending(b1, 0, 10, NOW)
    page2 = await store.pending(b1, page1[-1].seq, 100, NOW)
    ids = [int.from_bytes(r.message_id, "big") for r in page1 + page2]
    assert ids == list(range(1, 26))
    assert await store.count_pending(b1) == 25


async def test_concurrent_accepts_are_all_stored(store: Store) -> None:
    a, (a1,) = await _user_with_devices(store, "10000000001", 1)
    b, (b1,) = await _user_with_devices(store, "10000000002", 1)
    results = await asyncio.gather(*(store.accept(_message(i, a, a1, b, [b1])) for i in range(1, 201)))
    assert all(not r.duplicate for r in results)
    assert len({r.queued[0].seq for r in results}) == 200
    assert await store.count_pending(b1) == 200


async def test_ack_deletes_and_queues_receipts_for_every_sender_device(store: Store) -> None:
    a, (a1, a2) = await _user_with_devices(store, "10000000001", 2)
    b, (b1,) = await _user_with_devices(store, "10000000002", 1)
    accepted = await store.accept(_message(7, a, a1, b, [b1, a2]))
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
    a, (a1,) = await _user_with_devices(store, "10000000001", 1)
    b, (b1,) = await _user_with_devices(store, "10000000002", 1)
    _, (c1,) = await _user_with_devices(store, "10000000003", 1)
    row = (await store.accept(_message(1, a, a1, b, [b1]))).queued[0]
    assert await store.ack(c1, [row.seq], NOW, NOW + DAY) == []  # not c1's row
    assert await store.count_pending(b1) == 1


async def test_expiry_deletes_rows_and_frees_ids(store: Store) -> None:
    a, (a1,) = await _user_with_devices(store, "10000000001", 1)
    b, (b1,) = await _user_with_devices(store, "10000000002", 1)
    await store.accept(_message(1, a, a1, b, [b1], ts=NOW))
    await store.accept(_message(2, a, a1, b, [b1], ts=NOW + DAY))
    assert len(await store.pending(b1, 0, 10, NOW + DAY)) == 1  # the first is past its expiry
    assert await store.expire(NOW + DAY) == 1
    assert await store.count_pending(b1) == 1
    # Past expiry, the id record is gone too.
    assert not (await store.accept(_message(1, a, a1, b, [b1], ts=NOW + DAY))).duplicate
