"""The Store contract (miss_server/store/base.py), run against every Store.

Each implementation joins ``STORES``; every test here runs on each.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from store_samples import DAY, NOW, message, user_with_devices

from miss_server.codes import code_hash
from miss_server.store import migrations
from miss_server.store.base import (
    CodeInvalid,
    Kind,
    SchemaMismatch,
    Store,
    StoreUnavailable,
    User,
)
from miss_server.store.postgres import PostgresStore
from miss_server.store.sqlite import SQLiteStore
from protocol.frames import STATUSES

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


# --- migrating an existing database ------------------------------------------------------

# A version 1 database in use: three users, two devices, one message still
# queued from the clinic (u_c) to the hospital (u_a). Blobs are written by
# the dialect's formatter.
V1_DATA = """
INSERT INTO users (user_id, name, rpps, profession, organisation, created_at, suspended) VALUES
    ('u_a', 'Dr A', '10000000001', 'médecin', 'CHRU', {now}, FALSE),
    ('u_b', 'Dr B', '10000000002', 'infirmier', 'CHRU', {now}, FALSE),
    ('u_c', 'Dr C', '10000000003', 'médecin', 'Clinique du Parc', {now}, TRUE);
INSERT INTO devices (device_id, user_id, sign_pk, box_pk, label, created_at, revoked_at) VALUES
    ('d_a1', 'u_a', {sign_a}, {box}, 'phone', {now}, NULL),
    ('d_c1', 'u_c', {sign_c}, {box}, 'desk', {now}, NULL);
INSERT INTO accepted_ids (sender_user, message_id, expires_at) VALUES ('u_c', {mid}, {expires});
INSERT INTO queue
    (device_id, kind, message_id, peer_user, peer_device, recipient_user, ts, expires_at, payload)
VALUES ('d_a1', 1, {mid}, 'u_c', 'd_c1', 'u_a', {now}, {expires}, {payload});
"""


def _v1_data(blob: Callable[[bytes], str]) -> str:
    return V1_DATA.format(
        now=NOW,
        expires=NOW + DAY,
        sign_a=blob(b"a" * 32),
        sign_c=blob(b"c" * 32),
        box=blob(b"b" * 32),
        mid=blob((1).to_bytes(16, "big")),
        payload=blob(b"sealed"),
    )


async def _v1_sqlite(store: Store) -> None:
    assert isinstance(store, SQLiteStore)
    [(_, _, schema)] = [m for m in migrations.migrations("sqlite") if m[0] == 1]
    data = _v1_data(lambda b: f"X'{b.hex()}'")
    store.path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(store.path, isolation_level=None)
    try:
        conn.executescript(f"BEGIN;\n{schema}\n{data}\nPRAGMA user_version = 1;\nCOMMIT;")
    finally:
        conn.close()


async def _v1_postgres(store: Store) -> None:
    assert isinstance(store, PostgresStore) and store.schema is not None
    [(_, name, schema)] = [m for m in migrations.migrations("postgres") if m[0] == 1]
    data = _v1_data(lambda b: f"'\\x{b.hex()}'::bytea")
    conn = await asyncpg.connect(POSTGRES_DSN, server_settings={"search_path": store.schema})
    try:
        async with conn.transaction():
            await conn.execute(f"CREATE SCHEMA {store.schema}")
            await conn.execute(schema)
            await conn.execute(
                "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            await conn.execute("INSERT INTO schema_version (version, name) VALUES (1, $1)", name)
            await conn.execute(data)
    finally:
        await conn.close()


V1_BUILDERS: dict[str, Callable[[Store], Any]] = {"sqlite": _v1_sqlite, "postgresql": _v1_postgres}


@pytest.mark.parametrize("kind", sorted(STORES))
async def test_a_version_1_database_migrates_with_its_data(kind: str, tmp_path: Path) -> None:
    async with STORES[kind](tmp_path) as s:
        await V1_BUILDERS[kind](s)
        with pytest.raises(SchemaMismatch, match="migrate"):
            await s.open()
        latest = migrations.latest_version("sqlite" if kind == "sqlite" else "postgres")
        assert latest >= 2 and await s.migrate() == latest
        await s.open()
        assert await s.get_user("u_a") == User(
            "u_a", "Dr A", "10000000001", "médecin", "CHRU", NOW, False, "available"
        )
        assert [(u.user_id, u.suspended, u.status) for u in await s.list_users()] == [
            ("u_a", False, "available"),
            ("u_b", False, "available"),
            ("u_c", True, "available"),
        ]
        [row] = await s.pending("d_a1", 0, 10, NOW)
        assert (row.kind, row.message_id, row.peer_user, row.peer_device, row.payload) == (
            Kind.MESSAGE,
            (1).to_bytes(16, "big"),
            "u_c",
            "d_c1",
            b"sealed",
        )
        assert (await s.accept(message(1, "u_c", "d_c1", "u_a", ["d_a1"]))).duplicate  # ids kept
        # The message still queued made the two organisations contacts.
        assert await s.visible_users("u_a", ["u_a", "u_b", "u_c"]) == {"u_a", "u_b", "u_c"}
        assert await s.visible_users("u_c", ["u_a", "u_b"]) == {"u_a"}
        # And the new columns and tables work on the migrated data.
        await s.set_status("u_b", "off_duty")
        assert await s.statuses(["u_a", "u_b"]) == {"u_a": "available", "u_b": "off_duty"}
        await s.ack("d_a1", [row.seq], NOW + 1, NOW + DAY)
        assert await s.count_pending("d_c1") == 1  # the delivered receipt


async def test_an_empty_organisation_makes_nobody_a_colleague(store: Store) -> None:
    a = await store.create_user("Dr A", "10000000001", "médecin", "", NOW)
    b = await store.create_user("Dr B", "10000000002", "médecin", "", NOW)
    assert await store.visible_users(a.user_id, [b.user_id]) == set()
