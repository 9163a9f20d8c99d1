"""The Store contract added by SPEC revision 2, run against every Store: the
device cap, attested receipt targets, refusals, the directory index, the
erasure of an account; and the migrations of databases that older hubs
wrote, with their data."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from miss_server.codes import code_hash
from miss_server.store import migrations
from miss_server.store.base import CodeInvalid, DeviceLimit, Kind, Organisation, SchemaMismatch, Store, User
from miss_server.store.postgres import PostgresStore
from miss_server.store.sqlite import SQLiteStore
from protocol import attestation
from tests.support.authority import AUTHORITY, verify
from tests.support.store_fixtures import POSTGRES_DSN, STORES
from tests.support.store_samples import DAY, MAX_DEVICES, NOW, message, user_with_devices


async def enroll(store: Store, user_id: str, n: int, *, max_devices: int = MAX_DEVICES) -> str:
    code = f"ENROLL-{user_id}-{n}"
    await store.add_enrollment_code(user_id, code_hash(code), NOW + DAY)
    d = await store.enroll_device(
        code_hash(code), bytes([n]) * 32, bytes([n]) * 32, f"dev{n}", NOW + n, max_devices
    )
    return d.device_id


async def test_enrollment_stops_at_the_device_cap_and_leaves_the_code_unused(store: Store) -> None:
    user = await store.create_user("Dr A", "10000000001", "médecin", "CHRU", NOW)
    first = await enroll(store, user.user_id, 1, max_devices=2)
    await enroll(store, user.user_id, 2, max_devices=2)
    await store.add_enrollment_code(user.user_id, code_hash("THIRD"), NOW + DAY)
    with pytest.raises(DeviceLimit):
        await store.enroll_device(code_hash("THIRD"), b"\x03" * 32, b"\x03" * 32, "third", NOW, 2)
    assert len(await store.user_devices(user.user_id)) == 2
    # The code was not spent: once a device is revoked, it enrolls the third one.
    await store.revoke_device(first, NOW + 10)
    third = await store.enroll_device(code_hash("THIRD"), b"\x03" * 32, b"\x03" * 32, "third", NOW, 2)
    assert third.user_id == user.user_id
    with pytest.raises(CodeInvalid):
        await store.enroll_device(code_hash("THIRD"), b"\x04" * 32, b"\x04" * 32, "again", NOW, 2)


async def test_link_codes_hold_a_place_under_the_cap_until_used_or_expired(store: Store) -> None:
    user = await store.create_user("Dr A", "10000000001", "médecin", "CHRU", NOW)
    await enroll(store, user.user_id, 1)
    await store.add_link_code(user.user_id, code_hash("L1"), NOW + 1000, NOW, 3)
    await store.add_link_code(user.user_id, code_hash("L2"), NOW + 1000, NOW, 3)
    with pytest.raises(DeviceLimit):  # one device and two codes: three places
        await store.add_link_code(user.user_id, code_hash("L3"), NOW + 1000, NOW, 3)
    # An invitation does not hold a place; expired link codes no longer do.
    await store.add_enrollment_code(user.user_id, code_hash("INVITE"), NOW + DAY)
    later = NOW + 1000
    await store.add_link_code(user.user_id, code_hash("L3"), later + 1000, later, 3)
    await store.add_link_code(user.user_id, code_hash("L4"), later + 1000, later, 3)
    with pytest.raises(DeviceLimit):
        await store.add_link_code(user.user_id, code_hash("L5"), later + 1000, later, 3)
    # A used code's place becomes its device's: still three.
    await store.enroll_device(code_hash("L3"), b"\x09" * 32, b"\x09" * 32, "linked", later + 1, 3)
    assert len(await store.user_devices(user.user_id)) == 2
    with pytest.raises(DeviceLimit):
        await store.add_link_code(user.user_id, code_hash("L5"), later + 1000, later + 1, 3)
    await store.add_link_code(user.user_id, code_hash("L5"), later + 1000, later + 1, 4)


async def test_the_attestation_decides_which_devices_are_attested(store: Store) -> None:
    a, (a1, a2) = await user_with_devices(store, "10000000001", 2, attested=False)
    assert [d.attested for d in await store.user_devices(a)] == [False, False]
    await verify(store, a)
    assert [d.attested for d in await store.user_devices(a)] == [True, True]
    [d1, d2] = await store.user_devices(a)
    # Named with other keys (a substitution) is not attested; left out neither.
    await verify(
        store,
        a,
        devices=[attestation.AttestedDevice(a1, d1.sign_pk, b"\xee" * 32)],
    )
    assert [d.attested for d in await store.user_devices(a)] == [False, False]
    await verify(store, a, devices=[attestation.AttestedDevice(a2, d2.sign_pk, d2.box_pk)])
    assert {d.device_id: d.attested for d in await store.user_devices(a)} == {a1: False, a2: True}
    assert (await store.get_device(a2)) is not None and (await store.get_device(a2)).attested  # type: ignore[union-attr]


async def test_receipts_go_to_attested_devices_only(store: Store) -> None:
    a, (a1, a2) = await user_with_devices(store, "10000000001", 2)
    hidden = await enroll(store, a, 7)  # enrolled since the attestation: not attested
    b, (b1,) = await user_with_devices(store, "10000000002", 1)
    accepted = await store.accept(message(1, a, a1, b, [b1, a2]))
    to_b = next(r for r in accepted.queued if r.device_id == b1)
    receipts = await store.ack(b1, [to_b.seq], NOW + 5, NOW + DAY)
    assert sorted(r.device_id for r in receipts) == sorted([a1, a2])
    assert await store.count_pending(hidden) == 0


async def test_a_refusal_queues_refused_receipts_with_the_reason(store: Store) -> None:
    a, (a1, a2) = await user_with_devices(store, "10000000001", 2)
    b, (b1, b2) = await user_with_devices(store, "10000000002", 2)
    m1 = await store.accept(message(1, a, a1, b, [b1, b2, a2]))
    m2 = await store.accept(message(2, a, a1, b, [b1, b2, a2]))
    row1 = next(r for r in m1.queued if r.device_id == b1)
    row2 = next(r for r in m2.queued if r.device_id == b1)
    receipts = await store.ack(b1, [row1.seq], NOW + 5, NOW + DAY, {row2.seq: "sender_unverified"})
    assert await store.count_pending(b1) == 0
    by_kind = sorted((r.kind, r.message_id[-1], r.device_id, r.payload) for r in receipts)
    assert by_kind == sorted(
        [(Kind.RECEIPT, 1, d, b"") for d in (a1, a2)]
        + [(Kind.REFUSAL, 2, d, b"sender_unverified") for d in (a1, a2)]
    )
    assert all((r.peer_user, r.peer_device, r.ts) == (b, b1, NOW + 5) for r in receipts)
    # What the sender's device then reads, in seq order.
    pending = await store.pending(a1, 0, 10, NOW)
    assert [(r.kind, r.message_id[-1], r.payload) for r in pending] == [
        (Kind.RECEIPT, 1, b""),
        (Kind.REFUSAL, 2, b"sender_unverified"),
    ]
    # The copy on the sender's own device, refused, earns no receipt.
    copy = next(r for r in m1.queued if r.device_id == a2)
    assert await store.ack(a2, [], NOW + 6, NOW + DAY, {copy.seq: "undecryptable"}) == []


async def test_search_finds_substrings_through_the_index(store: Store) -> None:
    for n, (rpps, name, profession) in enumerate(
        (
            ("10000000001", "Dr Élodie Martin", "Cardiologue"),
            ("10000000002", "Dr Wu Li", "Pharmacien"),
            ("10000000003", "Dr Jean Dupont", "Médecin généraliste"),
        )
    ):
        user = await store.create_user(name, rpps, profession, "CHRU", NOW)
        await enroll(store, user.user_id, n)
        await verify(store, user.user_id)
        await store.create_user(f"{name} (unverified)", "2" + rpps[1:], profession, "CHRU", NOW)

    async def search(query: str) -> list[str]:
        return [u.name for u in await store.search_users(query, 10)]

    assert await search("martin") == ["Dr Élodie Martin"]
    assert await search("MARTIN") == ["Dr Élodie Martin"]
    assert await search("wu") == []  # fewer than three characters: nobody (SPEC §11.3)
    assert await search("r wu") == ["Dr Wu Li"]
    assert await search("0000000") == ["Dr Jean Dupont", "Dr Wu Li", "Dr Élodie Martin"]  # code point order
    assert await search("r wu l") == ["Dr Wu Li"]
    assert await search("\x1f") == []  # the index's separator matches nothing
    assert await search("Li\x1f1000") == []  # nor does a match across two fields
    assert await search("li 1000") == []
    assert await search("élodie") == await search("ÉLODIE") == ["Dr Élodie Martin"]


async def test_erasing_an_account_leaves_nothing_of_it_but_what_others_hold(store: Store) -> None:
    a, (a1, a2) = await user_with_devices(store, "10000000001", 2)
    b, (b1,) = await user_with_devices(store, "10000000002", 1)
    to_a = await store.accept(message(1, b, b1, a, [a1, a2]))
    from_a = await store.accept(message(2, a, a1, b, [b1, a2]))
    await store.add_enrollment_code(a, code_hash("SPARE"), NOW + DAY)
    assert await store.delete_user(a)
    assert await store.get_user(a) is None and await store.find_user_by_rpps("10000000001") is None
    assert await store.user_devices(a, include_revoked=True) == []
    assert await store.get_device(a1) is None
    assert [await store.count_pending(d) for d in (a1, a2)] == [0, 0]
    assert await store.count_pending(b1) == 1  # the message it sent is Bob's now
    assert await store.visible_users(b, [a]) == set()
    assert await store.search_users("10000000001", 10) == []
    with pytest.raises(CodeInvalid):
        await store.enroll_device(code_hash("SPARE"), b"\x05" * 32, b"\x05" * 32, "x", NOW, MAX_DEVICES)
    assert not await store.delete_user(a)
    assert to_a.queued and from_a.queued
    # The RPPS number is free for a new account.
    await store.create_user("Dr A again", "10000000001", "médecin", "CHRU", NOW)


async def test_user_devices_can_include_the_revoked_ones(store: Store) -> None:
    a, (a1, a2) = await user_with_devices(store, "10000000001", 2)
    await store.revoke_device(a1, NOW + 1)
    assert [d.device_id for d in await store.user_devices(a)] == [a2]
    everything = await store.user_devices(a, include_revoked=True)
    assert [(d.device_id, d.revoked) for d in everything] == [(a1, True), (a2, False)]


# --- migration: devices attested before the attested column -------------------------------


async def _build_at(store: Store, version: int) -> None:
    """Migrations up to ``version`` only (the schema a hub of that time made)."""
    if isinstance(store, SQLiteStore):
        store.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(store.path, isolation_level=None)
        try:
            for v, _, sql in migrations.migrations("sqlite"):
                if v <= version:
                    conn.executescript(f"BEGIN;\n{sql}\nPRAGMA user_version = {v};\nCOMMIT;")
        finally:
            conn.close()
        return
    assert isinstance(store, PostgresStore) and store.schema is not None
    conn = await asyncpg.connect(POSTGRES_DSN, server_settings={"search_path": store.schema})
    try:
        async with conn.transaction():
            await conn.execute(f"CREATE SCHEMA {store.schema}")
            await conn.execute(
                "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            for v, name, sql in migrations.migrations("postgres"):
                if v <= version:
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_version (version, name) VALUES ($1, $2)", v, name)
    finally:
        await conn.close()


async def _raw_insert(store: Store, statements: list[tuple[str, tuple[object, ...]]]) -> None:
    """Rows written as the older hub did, with ``?`` placeholders."""
    if isinstance(store, SQLiteStore):
        conn = sqlite3.connect(store.path, isolation_level=None)
        try:
            for sql, args in statements:
                conn.execute(sql, args)
        finally:
            conn.close()
        return
    assert isinstance(store, PostgresStore)
    pg = await asyncpg.connect(POSTGRES_DSN, server_settings={"search_path": str(store.schema)})
    try:
        for sql, args in statements:
            n = iter(range(1, 100))
            await pg.execute("".join(f"${next(n)}" if c == "?" else c for c in sql), *args)
    finally:
        await pg.close()


async def _run_script(store: Store, sql: str) -> None:
    """Statements written as an older hub did, in one transaction."""
    if isinstance(store, SQLiteStore):
        conn = sqlite3.connect(store.path, isolation_level=None)
        try:
            conn.executescript(f"BEGIN;\n{sql}\nCOMMIT;")
        finally:
            conn.close()
        return
    assert isinstance(store, PostgresStore)
    pg = await asyncpg.connect(POSTGRES_DSN, server_settings={"search_path": str(store.schema)})
    try:
        async with pg.transaction():
            await pg.execute(sql)
    finally:
        await pg.close()


# A version 1 database in use: four users (one of no organisation), two
# devices, one message still queued from the clinic (u_c) to the hospital
# (u_a). Blobs are written by the dialect's formatter.
V1_DATA = """
INSERT INTO users (user_id, name, rpps, profession, organisation, created_at, suspended) VALUES
    ('u_a', 'Dr A', '10000000001', 'médecin', 'CHRU', {now}, FALSE),
    ('u_b', 'Dr B', '10000000002', 'infirmier', 'CHRU', {earlier}, FALSE),
    ('u_c', 'Dr C', '10000000003', 'médecin', 'Clinique du Parc', {now}, TRUE),
    ('u_d', 'Dr D', '10000000004', 'médecin', '', {now}, FALSE);
INSERT INTO devices (device_id, user_id, sign_pk, box_pk, label, created_at, revoked_at) VALUES
    ('d_a1', 'u_a', {sign_a}, {box}, 'phone', {now}, NULL),
    ('d_c1', 'u_c', {sign_c}, {box}, 'desk', {now}, NULL);
INSERT INTO accepted_ids (sender_user, message_id, expires_at) VALUES ('u_c', {mid}, {expires});
INSERT INTO queue
    (device_id, kind, message_id, peer_user, peer_device, recipient_user, ts, expires_at, payload)
VALUES ('d_a1', 1, {mid}, 'u_c', 'd_c1', 'u_a', {now}, {expires}, {payload});
"""

#: How each dialect writes a blob in SQL text.
BLOBS: dict[str, Callable[[bytes], str]] = {
    "sqlite": lambda b: f"X'{b.hex()}'",
    "postgresql": lambda b: f"'\\x{b.hex()}'::bytea",
}


def _v1_data(blob: Callable[[bytes], str]) -> str:
    return V1_DATA.format(
        now=NOW,
        earlier=NOW - 5,
        expires=NOW + DAY,
        sign_a=blob(b"a" * 32),
        sign_c=blob(b"c" * 32),
        box=blob(b"b" * 32),
        mid=blob((1).to_bytes(16, "big")),
        payload=blob(b"sealed"),
    )


@pytest.mark.parametrize("kind", sorted(STORES))
async def test_a_version_1_database_migrates_with_its_data(kind: str, tmp_path: Path) -> None:
    async with STORES[kind](tmp_path) as s:
        await _build_at(s, 1)
        await _run_script(s, _v1_data(BLOBS[kind]))
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
            ("u_d", False, "available"),
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
        assert await s.count_pending("d_a1") == 0
        # No receipt: version 1 knew no attestations, and receipts go to attested devices only.
        assert await s.count_pending("d_c1") == 0
        # Version 3: the organisations users named, dated by their first user; nobody attested yet.
        assert await s.list_organisations() == [
            Organisation("CHRU", NOW - 5),
            Organisation("Clinique du Parc", NOW),
        ]
        assert [u.attestation for u in await s.list_users()] == [None] * 4
        await s.set_attestation("u_a", b"attested")
        assert [u.user_id for u in await s.search_users("dr ", 10)] == ["u_a"]
        assert await s.audit_log() == []


@pytest.mark.parametrize("kind", sorted(STORES))
async def test_devices_attested_before_the_column_are_found_in_their_attestation(
    kind: str, tmp_path: Path
) -> None:
    async with STORES[kind](tmp_path) as s:
        before = {"sqlite": 4, "postgresql": 5}[kind]
        await _build_at(s, before)
        good, other, later = "d_000000000000000a", "d_000000000000000b", "d_000000000000000c"
        keys = {
            good: (b"\x01" * 32, b"\x02" * 32),
            other: (b"\x03" * 32, b"\x04" * 32),
            later: (b"\x05" * 32, b"\x06" * 32),
        }
        att = attestation.Attestation(
            "u_0000000000000001",
            "10000000001",
            "Dr A",
            "médecin",
            "CHRU",
            (
                attestation.AttestedDevice(good, *keys[good]),
                attestation.AttestedDevice(other, keys[other][0], b"\xff" * 32),  # other box key
            ),
            NOW,
            NOW + DAY,
        )
        blob = attestation.sign(att, AUTHORITY)
        false, null = (0, None) if kind == "sqlite" else (False, None)
        rows: list[tuple[str, tuple[object, ...]]] = [
            (
                "INSERT INTO users (user_id, name, rpps, profession, organisation, created_at, suspended, "
                "attestation) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                ("u_0000000000000001", "Dr A", "10000000001", "médecin", "CHRU", NOW, false, blob),
            )
        ]
        for d in (good, other, later):
            rows.append(
                (
                    "INSERT INTO devices (device_id, user_id, sign_pk, box_pk, label, created_at, "
                    "revoked_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (d, "u_0000000000000001", *keys[d], "dev", NOW, null),
                )
            )
        await _raw_insert(s, rows)
        await s.migrate()
        await s.open()
        devices = {d.device_id: d.attested for d in await s.user_devices("u_0000000000000001")}
        assert devices == {good: True, other: False, later: False}
        assert [u.name for u in await s.search_users("dr a", 5)] == ["Dr A"]


async def test_the_embedded_store_is_private_to_its_owner(tmp_path: Path) -> None:
    """It was created 0755/0644 (who wrote to whom, readable by all)."""
    store = SQLiteStore(tmp_path / "miss-data" / "miss.db")
    await store.migrate()
    await store.open()
    try:
        await store.create_user("Dr A", "10000000001", "médecin", "CHRU", NOW)
    finally:
        await store.close()
    assert (tmp_path / "miss-data").stat().st_mode & 0o777 == 0o700
    for name in ("miss.db", "miss.db-wal", "miss.db-shm"):
        path = tmp_path / "miss-data" / name
        if path.exists():
            assert path.stat().st_mode & 0o777 == 0o600, name
    # A store made readable by others is taken back at the next start.
    (tmp_path / "miss-data" / "miss.db").chmod(0o644)
    await SQLiteStore(tmp_path / "miss-data" / "miss.db").migrate()
    assert (tmp_path / "miss-data" / "miss.db").stat().st_mode & 0o777 == 0o600


async def test_opening_a_store_that_does_not_exist_creates_nothing(tmp_path: Path) -> None:
    """Miss-admin in another directory made an empty store."""
    store = SQLiteStore(tmp_path / "nowhere" / "miss.db")
    with pytest.raises(SchemaMismatch, match="no store at"):
        await store.open()
    assert not (tmp_path / "nowhere").exists()
