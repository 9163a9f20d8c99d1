"""The BlobStore contract (miss_server/blobs/base.py), one suite run on every
implementation: files + SQLite index in a temporary directory, and
PostgreSQL in a schema of this module's own on ``MISS_TEST_POSTGRES``,
migrated by the main store's ``migrate`` and dropped afterwards.
A PostgreSQL that cannot be reached fails the tests, never skips them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import secrets
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from miss_server.blobs import (
    BlobNotComplete,
    BlobOffsetMismatch,
    BlobQuotaExceeded,
    BlobStore,
    BlobStoreUnavailable,
    Quotas,
    UnknownBlob,
    open_blob_store,
)
from miss_server.blobs.filesystem import FilesystemBlobStore
from miss_server.blobs.postgres import PostgresBlobStore
from miss_server.store.postgres import PostgresStore
from protocol.attachments import HTTP_PART_MAX, PIECE_MAX
from tests.support.store_fixtures import POSTGRES_DSN

DAY = 86_400_000
NOW = 1_800_000_000_000 - 1_800_000_000_000 % DAY + 10 * 3_600_000  # 10:00 UTC
TTL = DAY
ROOMY = Quotas(bytes_per_day=1 << 30, count_per_day=500, open_uploads=12, stored_bytes_per_user=1 << 33)
MID = b"\x01" * 16
OTHER_MID = b"\x02" * 16


@pytest.fixture(scope="module")
def pg_schema() -> Iterator[str]:
    """A schema for this module, migrated by the main store, dropped at the end."""
    schema = "miss_test_blobs_" + secrets.token_hex(4)

    async def create() -> None:
        main = PostgresStore(POSTGRES_DSN, schema=schema, pool_min=1, pool_max=1)
        try:
            await main.migrate()
        finally:
            await main.close()

    async def drop() -> None:
        conn = await asyncpg.connect(POSTGRES_DSN)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()

    asyncio.run(create())
    try:
        yield schema
    finally:
        asyncio.run(drop())


def _pg_url(schema: str) -> str:
    sep = "&" if "?" in POSTGRES_DSN else "?"
    return f"{POSTGRES_DSN}{sep}schema={schema}"


@contextlib.asynccontextmanager
async def _empty_pg(schema: str) -> AsyncIterator[None]:
    conn = await asyncpg.connect(POSTGRES_DSN, server_settings={"search_path": schema})
    try:
        await conn.execute("TRUNCATE blobs, blob_parts, blob_access, blob_tokens, blob_days")
    finally:
        await conn.close()
    yield


@pytest.fixture(params=["filesystem", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "filesystem":
        return (tmp_path / "blobs").as_uri()
    return _pg_url(request.getfixturevalue("pg_schema"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[BlobStore]:
    """An open store with nothing in it."""
    if store_url.startswith("postgresql"):
        async with _empty_pg(store_url.rsplit("schema=", 1)[1]):
            pass
    s = open_blob_store(store_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def _upload(
    store: BlobStore,
    data: bytes,
    *,
    user: str = "u_alice",
    device: str = "d_alice1",
    now: int = NOW,
    piece: int = PIECE_MAX,
    complete: bool = True,
) -> str:
    up = await store.begin(user, device, len(data), now, ROOMY)
    for off in range(0, len(data), piece):
        await store.put(device, up.blob, off, data[off : off + piece])
    if complete:
        await store.complete(device, up.blob, now)
    return up.blob


async def _gone(store: BlobStore, blob: str) -> bool:
    """Neither bytes nor ranges nor tokens left (what a downloader would see)."""
    if await store.holds(blob):
        return False
    with pytest.raises(UnknownBlob):
        await store.read(blob, 0, 10)
    return True


def _token() -> bytes:
    return hashlib.sha256(secrets.token_bytes(32)).digest()


# --- uploads ------------------------------------------------------------------------


async def test_a_blob_of_many_pieces_reads_back_by_ranges(store: BlobStore) -> None:
    data = os.urandom(3 * PIECE_MAX + 1234)
    up = await store.begin("u_alice", "d_alice1", len(data), NOW, ROOMY)
    assert (
        up.blob.startswith("b_")
        and len(up.blob) == 34
        and (up.size, up.have, up.complete)
        == (
            len(data),
            0,
            False,
        )
    )
    # Pieces of uneven sizes, as a client may send after resuming.
    cuts = [0, 1000, 1000 + PIECE_MAX, 2 * PIECE_MAX, 2 * PIECE_MAX + 7, 3 * PIECE_MAX, len(data)]
    for a, b in itertools.pairwise(cuts):
        got = await store.put("d_alice1", up.blob, a, data[a:b])
        assert (got.have, got.complete) == (b, False)
    assert (await store.complete("d_alice1", up.blob, NOW)).complete
    assert (await store.complete("d_alice1", up.blob, NOW)).have == len(data)  # idempotent

    assert await store.read(up.blob, 0, HTTP_PART_MAX) == data
    for start, length in [(0, 1), (999, 2), (PIECE_MAX - 5, 10), (1000 + PIECE_MAX, PIECE_MAX + 8), (2, 0)]:
        assert await store.read(up.blob, start, length) == data[start : start + length]
    assert await store.read(up.blob, len(data) - 4, 100) == data[-4:]  # clipped at the size
    assert await store.read(up.blob, len(data), 10) == b""
    with pytest.raises(ValueError):
        await store.read(up.blob, 0, HTTP_PART_MAX + 1)


async def test_an_upload_resumes_after_reconnection_from_what_the_store_holds(store_url: str) -> None:
    data = os.urandom(2 * PIECE_MAX + 99)
    first = open_blob_store(store_url)
    await first.open()
    try:
        up = await first.begin("u_alice", "d_alice1", len(data), NOW, ROOMY)
        await first.put("d_alice1", up.blob, 0, data[:PIECE_MAX])
    finally:
        await first.close()

    again = open_blob_store(store_url)  # a hub restart, or another node
    await again.open()
    try:
        resumed = await again.resume("d_alice1", up.blob)
        assert (resumed.have, resumed.complete) == (PIECE_MAX, False)
        with pytest.raises(UnknownBlob):
            await again.resume("d_mallory", up.blob)
        for off in range(resumed.have, len(data), PIECE_MAX):
            await again.put("d_alice1", up.blob, off, data[off : off + PIECE_MAX])
        await again.complete("d_alice1", up.blob, NOW)
        done = resumed.__class__(up.blob, len(data), len(data), True)
        assert await again.resume("d_alice1", up.blob) == done
        assert await again.read(up.blob, 0, len(data)) == data
    finally:
        await again.close()


async def test_a_piece_at_the_wrong_offset_or_past_the_size_is_refused(store: BlobStore) -> None:
    up = await store.begin("u_alice", "d_alice1", 100, NOW, ROOMY)
    await store.put("d_alice1", up.blob, 0, b"a" * 40)
    for off, data in [(0, b"b" * 10), (50, b"c" * 10), (40, b"d" * 61)]:
        with pytest.raises(BlobOffsetMismatch) as err:
            await store.put("d_alice1", up.blob, off, data)
        assert err.value.have == 40
    with pytest.raises(UnknownBlob):
        await store.put("d_bob1", up.blob, 40, b"e")  # not the uploader
    with pytest.raises(UnknownBlob):
        await store.put("d_alice1", "b_" + "0" * 32, 0, b"e")
    with pytest.raises(UnknownBlob):
        await store.put("d_alice1", "../index.db", 0, b"e")
    assert (await store.resume("d_alice1", up.blob)).have == 40  # nothing written by the refusals
    await store.put("d_alice1", up.blob, 40, b"f" * 60)
    await store.complete("d_alice1", up.blob, NOW)
    with pytest.raises(BlobOffsetMismatch) as done:
        await store.put("d_alice1", up.blob, 100, b"g")
    assert done.value.have == 100
    assert await store.read(up.blob, 0, 200) == b"a" * 40 + b"f" * 60


async def test_complete_before_all_bytes_is_refused_and_an_incomplete_blob_is_not_served(
    store: BlobStore,
) -> None:
    up = await store.begin("u_alice", "d_alice1", 100, NOW, ROOMY)
    await store.put("d_alice1", up.blob, 0, b"x" * 99)
    with pytest.raises(BlobNotComplete):
        await store.complete("d_alice1", up.blob, NOW)
    with pytest.raises(UnknownBlob):
        await store.complete("d_bob1", up.blob, NOW)
    with pytest.raises(UnknownBlob):
        await store.read(up.blob, 0, 10)
    with pytest.raises(UnknownBlob):
        await store.link("u_alice", MID, [up.blob], ["d_bob1"], NOW + DAY)
    with pytest.raises(UnknownBlob):
        await store.grant("u_alice", "d_alice1", up.blob, _token(), NOW + 600_000, NOW)


async def test_each_quota_refuses_beginning_with_its_kind(store: BlobStore) -> None:
    to_midnight = DAY - NOW % DAY
    few = Quotas(bytes_per_day=1000, count_per_day=3, open_uploads=2, stored_bytes_per_user=1500)

    await store.begin("u_alice", "d_alice1", 100, NOW, few)
    await store.begin("u_alice", "d_alice1", 100, NOW, few)
    with pytest.raises(BlobQuotaExceeded) as open_uploads:  # two open on this device
        await store.begin("u_alice", "d_alice1", 100, NOW, few)
    assert open_uploads.value.retry_after_ms is None

    done = await store.begin("u_alice", "d_alice2", 800, NOW, few)
    for off in range(0, 800, 400):
        await store.put("d_alice2", done.blob, off, b"z" * 400)
    await store.complete("d_alice2", done.blob, NOW)
    with pytest.raises(BlobQuotaExceeded) as per_day_bytes:  # 800 + 300 > 1000 today
        await store.begin("u_alice", "d_alice2", 300, NOW, few)
    assert per_day_bytes.value.retry_after_ms == to_midnight
    with pytest.raises(BlobQuotaExceeded) as too_big:  # waiting cannot help
        await store.begin("u_alice", "d_alice3", 1001, NOW, few)
    assert too_big.value.retry_after_ms is None

    await store.begin("u_alice", "d_alice2", 100, NOW, few)
    await store.begin("u_alice", "d_alice2", 50, NOW, few)
    with pytest.raises(BlobQuotaExceeded) as per_day_count:  # a fourth upload today
        await store.begin("u_alice", "d_alice2", 10, NOW, few)
    assert per_day_count.value.retry_after_ms == to_midnight

    # Stored bytes are the user's, over all devices: 100+100+800+100+50 = 1150 held.
    with pytest.raises(BlobQuotaExceeded) as stored:
        await store.begin("u_alice", "d_alice3", 351, NOW, few)
    assert stored.value.retry_after_ms is None
    await store.begin("u_bob", "d_bob1", 900, NOW, few)  # another user's quotas are their own

    tomorrow = NOW + to_midnight
    await store.begin("u_alice", "d_alice3", 300, tomorrow, few)  # daily quotas are per UTC day


async def test_link_binds_complete_blobs_of_the_sender_to_one_message(store: BlobStore) -> None:
    first = await _upload(store, b"1" * 100)
    second = await _upload(store, b"2" * 100)
    bobs = await _upload(store, b"3" * 100, user="u_bob", device="d_bob1")
    pending = await _upload(store, b"4" * 100, complete=False)

    await store.link("u_alice", MID, [first, second], ["d_bob1"], NOW + DAY)
    await store.link("u_alice", MID, [first, second], ["d_bob1", "d_carol1"], NOW + DAY)  # a resend
    for bad in ([first], [bobs], [pending], ["b_" + "f" * 32]):
        with pytest.raises(UnknownBlob):
            await store.link("u_alice", OTHER_MID, bad, ["d_bob1"], NOW + DAY)
    with pytest.raises(UnknownBlob):  # someone else's blob, even to its own message
        await store.link("u_alice", MID, [bobs], ["d_bob1"], NOW + DAY)

    # All or nothing: a list with one bad blob links none of them.
    third = await _upload(store, b"5" * 100)
    with pytest.raises(UnknownBlob):
        await store.link("u_alice", OTHER_MID, [third, bobs], ["d_bob1"], NOW + DAY)
    await store.link("u_alice", OTHER_MID, [third], ["d_dave1"], NOW + DAY)

    # The resend added carol's device to the access set.
    assert (await store.grant("u_carol", "d_carol1", second, _token(), NOW + 1000, NOW)).size == 100


async def test_grant_serves_the_access_set_and_the_owners_devices_only(store: BlobStore) -> None:
    data = os.urandom(5000)
    blob = await _upload(store, data)
    await store.link("u_alice", MID, [blob], ["d_bob1"], NOW + DAY)

    bob = _token()
    granted = await store.grant("u_bob", "d_bob1", blob, bob, NOW + 600_000, NOW)
    assert (granted.blob, granted.size, granted.expires_at) == (blob, 5000, NOW + 600_000)
    # The owner's other device may fetch it too.
    assert await store.grant("u_alice", "d_alice2", blob, _token(), NOW + 600_000, NOW)
    for user, device in [("u_mallory", "d_mallory1"), ("u_bob", "d_bob2")]:
        with pytest.raises(UnknownBlob):
            await store.grant(user, device, blob, _token(), NOW + 600_000, NOW)

    assert await store.resolve(bob, NOW + 599_999) == granted
    assert await store.read(granted.blob, 0, granted.size) == data
    assert await store.resolve(bob, NOW + 600_000) is None  # expired
    assert await store.resolve(_token(), NOW) is None
    await store.expire(NOW + 600_000, TTL)
    assert await store.resolve(bob, NOW) is None  # expiry deleted the token
    assert await store.holds(blob)


# --- deletion -----------------------------------------------------------------------


async def test_recall_and_expiry_remove_the_bytes_and_leave_other_blobs(store: BlobStore) -> None:
    recalled = await _upload(store, os.urandom(PIECE_MAX + 10))
    kept_same_user = await _upload(store, b"k" * 100)
    short_lived = await _upload(store, b"s" * 100, user="u_bob", device="d_bob1")
    long_lived = await _upload(store, b"l" * 100, user="u_bob", device="d_bob1")
    await store.link("u_alice", MID, [recalled], ["d_bob1"], NOW + 7 * DAY)
    await store.link("u_alice", OTHER_MID, [kept_same_user], ["d_bob1"], NOW + 7 * DAY)
    await store.link("u_bob", MID, [short_lived], ["d_alice1"], NOW + DAY)
    await store.link("u_bob", OTHER_MID, [long_lived], ["d_alice1"], NOW + 2 * DAY)
    token = _token()
    await store.grant("u_bob", "d_bob1", recalled, token, NOW + 600_000, NOW)

    assert await store.recall("u_bob", MID + b"\x00") == 0
    assert await store.recall("u_alice", MID) == 1
    assert await _gone(store, recalled)
    assert await store.resolve(token, NOW) is None
    assert await store.recall("u_alice", MID) == 0
    assert await store.holds(kept_same_user) and await store.holds(short_lived)

    assert await store.expire(NOW + DAY - 1, TTL) == 0
    assert await store.expire(NOW + DAY, TTL) == 1
    assert await _gone(store, short_lived)
    for blob in (kept_same_user, long_lived):
        assert await store.holds(blob)
        assert await store.read(blob, 0, 1) in (b"k", b"l")


async def test_uploads_never_linked_expire_after_the_ttl(store: BlobStore) -> None:
    unlinked = await _upload(store, b"u" * 100)
    unfinished = await _upload(store, b"p" * 100, complete=False)
    linked = await _upload(store, b"l" * 100)
    await store.link("u_alice", MID, [linked], [], NOW + 30 * DAY)
    later = await _upload(store, b"n" * 100, now=NOW + 1000)

    assert await store.expire(NOW + TTL, TTL) == 0
    assert await store.expire(NOW + TTL + 1, TTL) == 2
    assert await _gone(store, unlinked) and await _gone(store, unfinished)
    with pytest.raises(UnknownBlob):
        await store.resume("d_alice1", unfinished)
    assert await store.holds(linked) and await store.holds(later)
    # The open upload no longer counts against the device's quota.
    one_open = Quotas(1 << 30, 500, open_uploads=1, stored_bytes_per_user=1 << 33)
    await store.begin("u_alice", "d_alice1", 10, NOW + TTL + 1, one_open)


async def test_concurrent_uploads_each_read_back_whole(store: BlobStore) -> None:
    blobs = [os.urandom(4 * PIECE_MAX + i) for i in range(6)]
    ids = await asyncio.gather(
        *(_upload(store, data, user=f"u_{i}", device=f"d_{i}") for i, data in enumerate(blobs))
    )
    for blob, data in zip(ids, blobs, strict=True):
        assert await store.read(blob, 0, len(data)) == data

    # Two pieces racing for one offset: exactly one lands.
    up = await store.begin("u_alice", "d_alice1", 200, NOW, ROOMY)
    outcomes = await asyncio.gather(
        store.put("d_alice1", up.blob, 0, b"a" * 100),
        store.put("d_alice1", up.blob, 0, b"b" * 100),
        return_exceptions=True,
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["BlobOffsetMismatch", "Upload"]
    assert (await store.resume("d_alice1", up.blob)).have == 100


# --- implementation-specific -------------------------------------------------------------


async def test_files_are_private_and_named_only_by_the_store(tmp_path: Path) -> None:
    directory = tmp_path / "hub" / "blobs"
    s = open_blob_store(directory.as_uri())
    assert isinstance(s, FilesystemBlobStore)
    await s.open()
    try:
        blob = await _upload(s, b"x" * 100)
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for name in (blob, "index.db"):
            assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
        assert sorted(p.name for p in directory.iterdir() if not p.name.startswith("index.db")) == [blob]
    finally:
        await s.close()


def test_urls_choose_the_implementation() -> None:
    assert isinstance(open_blob_store("postgresql://h/db?schema=x"), PostgresBlobStore)
    for bad in ("file://relative/dir", "s3://bucket", "/abs/dir"):
        with pytest.raises(ValueError):
            open_blob_store(bad)


async def test_an_unreachable_postgresql_is_unavailable() -> None:
    s = PostgresBlobStore("postgresql://postgres@127.0.0.1:1/test", connect_timeout=1.0)
    with pytest.raises(BlobStoreUnavailable):
        await s.open()
    with pytest.raises(BlobStoreUnavailable):  # never opened
        await s.resume("d_alice1", "b_" + "0" * 32)
