"""PostgreSQL-only behaviour of PostgresStore: migrations, group commit,
recovery from lost connections, timeouts. The shared contract is in
test_store_conformance.py.

Every test works in a schema of its own on ``MISS_TEST_POSTGRES`` and never
stops the server (others share it). Unreachable PostgreSQL fails, not skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from miss_server.codes import code_hash
from miss_server.store import postgres, postgres_batch
from miss_server.store.base import COMMIT_INTERVAL, AcceptResult, Kind, SchemaMismatch, StoreUnavailable
from miss_server.store.migrations import latest_version
from miss_server.store.postgres import PostgresStore
from miss_server.store.postgres_batch import AdaptivePacing
from tests.support.store_samples import DAY, MAX_DEVICES, NOW, message, user_with_devices

DSN = os.environ.get("MISS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
LATEST = latest_version("postgres")

MakeStore = Callable[..., PostgresStore]


@pytest.fixture
async def admin() -> AsyncIterator[asyncpg.Connection]:
    """A connection of our own, to look at and disturb the store's database."""
    conn = await asyncpg.connect(DSN)
    yield conn
    await conn.close()


@pytest.fixture
async def schema(admin: asyncpg.Connection) -> AsyncIterator[str]:
    name = "miss_test_" + secrets.token_hex(6)
    yield name
    await admin.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture
async def make_store(schema: str) -> AsyncIterator[MakeStore]:
    """Stores on ``schema``, each with a unique application_name, closed at the end."""
    made: list[PostgresStore] = []

    def make(**kwargs: Any) -> PostgresStore:
        kwargs.setdefault("pool_min", 1)
        kwargs.setdefault("pool_max", 4)
        kwargs.setdefault("application_name", "miss-test-" + secrets.token_hex(6))
        store = PostgresStore(DSN, schema=schema, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


@pytest.fixture
async def store(make_store: MakeStore) -> PostgresStore:
    s = make_store()
    await s.migrate()
    await s.open()
    return s


async def _terminate(admin: asyncpg.Connection, store: PostgresStore) -> int:
    """Kill the server processes serving ``store``'s pool; how many."""
    app = store.application_name
    return int(
        await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", app
        )
    )


class _Outage:
    """A TCP relay to PostgreSQL that a test can cut and restore: an outage
    as the hub sees it, without stopping the server others share."""

    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._dsn = parts
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def dsn(self) -> str:
        userinfo = self._dsn.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(self._dsn._replace(netloc=netloc))

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Refuse new connections and drop every open one."""
        assert self._server is not None
        self._server.close()
        for writer in self._links:
            writer.transport.abort()
        self._links.clear()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._links -= {writer, up_writer}


async def _eventually(call: Callable[[], Any], seconds: float = 5.0) -> Any:
    """``call()``'s result once it stops raising StoreUnavailable."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await call()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


# --- migrations -------------------------------------------------------------------


async def test_migrate_creates_the_schema_and_is_idempotent(
    make_store: MakeStore, admin: asyncpg.Connection, schema: str
) -> None:
    s = make_store()
    assert await s.migrate() == LATEST
    assert await s.migrate() == LATEST
    versions = await admin.fetch(f"SELECT version FROM {schema}.schema_version ORDER BY version")
    assert [r["version"] for r in versions] == list(range(1, LATEST + 1))
    tables = await admin.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
    )
    assert {
        "users",
        "devices",
        "enrollment_codes",
        "accepted_ids",
        "queue",
        "contacts",
        "organisations",
        "audit_log",
    } <= {r[0] for r in tables}
    # Each migration that redefines the group commit drops the function it replaces.
    functions = await admin.fetchval(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = $1 AND p.proname = 'miss_group_commit'",
        schema,
    )
    assert functions == 1
    await s.open()
    assert await s.list_users() == []


async def test_concurrent_migrations_are_serialized(
    make_store: MakeStore, admin: asyncpg.Connection, schema: str
) -> None:
    stores = [make_store() for _ in range(4)]
    assert await asyncio.gather(*(s.migrate() for s in stores)) == [LATEST] * 4
    assert await admin.fetchval(f"SELECT count(*) FROM {schema}.schema_version") == LATEST
    for s in stores:
        await s.open()


async def test_open_refuses_a_newer_schema(
    make_store: MakeStore, admin: asyncpg.Connection, schema: str
) -> None:
    s = make_store()
    await s.migrate()
    await admin.execute(
        f"INSERT INTO {schema}.schema_version (version, name) VALUES ($1, 'from the future')", LATEST + 1
    )
    with pytest.raises(SchemaMismatch, match="newer"):
        await s.open()
    with pytest.raises(StoreUnavailable):  # the hub refuses to run on it
        await s.count_pending("d_x")
    with pytest.raises(SchemaMismatch, match="newer"):  # and never downgrades it
        await s.migrate()


async def test_open_refuses_an_older_or_empty_schema(
    make_store: MakeStore, admin: asyncpg.Connection, schema: str
) -> None:
    await admin.execute(f"CREATE SCHEMA {schema}")
    s = make_store()
    with pytest.raises(SchemaMismatch, match="run `miss-admin migrate`"):
        await s.open()
    await admin.execute(
        f"CREATE TABLE {schema}.schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL)"
    )
    with pytest.raises(SchemaMismatch, match=r"version 0.*run `miss-admin migrate`"):
        await s.open()


async def test_schema_can_come_from_the_url(admin: asyncpg.Connection, schema: str) -> None:
    s = PostgresStore(f"{DSN}?schema={schema}", pool_min=1, pool_max=2)
    assert s.schema == schema and "schema=" not in s._db.dsn
    try:
        await s.migrate()
        await s.open()
        user = await s.create_user("Dr A", "10000000001", "médecin", "CHRU", NOW)
    finally:
        await s.close()
    assert await admin.fetchval(f"SELECT name FROM {schema}.users WHERE user_id = $1", user.user_id) == "Dr A"
    with pytest.raises(ValueError):
        PostgresStore(f"{DSN}?schema={schema}", schema="other")
    with pytest.raises(ValueError):
        PostgresStore(DSN, schema='x"; DROP TABLE users; --')


async def test_synchronous_commit_stays_on(make_store: MakeStore) -> None:
    s = make_store()
    s._db.settings["synchronous_commit"] = "off"  # as if the server's or the role's default were off
    await s.migrate()
    await s.open()
    query = "SELECT current_setting('synchronous_commit') FROM pg_sleep(0.05)"
    seen = await asyncio.gather(*(s._db.retryable(lambda c: c.fetchval(query)) for _ in range(4)))
    assert seen == ["on"] * 4  # on each of the pool's 4 connections


async def test_unreachable_server_is_store_unavailable() -> None:
    s = PostgresStore("postgresql://postgres@127.0.0.1:1/test", pool_min=1, pool_max=1, connect_timeout=2)
    with pytest.raises(StoreUnavailable):
        await s.migrate()
    with pytest.raises(StoreUnavailable):
        await s.open()
    await s.close()


# --- group commit -----------------------------------------------------------------


async def test_group_commit_batches_concurrent_accepts(
    store: PostgresStore, admin: asyncpg.Connection, schema: str
) -> None:
    a, (a1,) = await user_with_devices(store, "10000000001", 1)
    b, (b1,) = await user_with_devices(store, "10000000002", 1)
    before = replace(store.group_commit_stats)
    results = await asyncio.gather(*(store.accept(message(i, a, a1, b, [b1])) for i in range(500)))
    transactions = store.group_commit_stats.transactions - before.transactions
    assert all(not r.duplicate for r in results)
    seqs = [r.queued[0].seq for r in results]
    assert len(set(seqs)) == 500 and seqs == sorted(seqs)  # calls made in order get seqs in order
    assert store.group_commit_stats.calls - before.calls == 500  # every call counted
    assert 1 <= transactions < 50, f"500 calls in {transactions} transactions"
    # Committed, not just inserted: another connection sees every row.
    assert await admin.fetchval(f"SELECT count(*) FROM {schema}.queue WHERE device_id = $1", b1) == 500


def test_commit_interval_grows_while_batches_are_small_and_stays_bounded() -> None:
    """A node that sees a fraction of a busy load waits longer between
    commits, so its batches fill up; a busy node with full batches and a
    quiet one keep the shortest interval; none waits longer than the bound."""

    def settle(calls_per_second: float) -> float:
        pacing = AdaptivePacing(512)
        now = 0.0
        for _ in range(200):
            gap = pacing.interval + 0.001  # the pause, then a commit of 1 ms
            now += gap
            pacing.ended(now, max(1, round(calls_per_second * gap)))
        return pacing.interval

    assert settle(100) == COMMIT_INTERVAL  # quiet: nothing worth a delay
    assert settle(5000) == COMMIT_INTERVAL  # busy: batches full at the shortest interval
    assert settle(2000) == pytest.approx(COMMIT_INTERVAL, rel=0.01)  # a busy node: its pace
    half = settle(1000)  # one of two nodes sharing 2,000 calls a second
    assert COMMIT_INTERVAL < half <= postgres_batch.MAX_COMMIT_INTERVAL
    assert round(1000 * (half + 0.001)) >= postgres_batch.TARGET_BATCH  # its batches are full again
    assert settle(500) == postgres_batch.MAX_COMMIT_INTERVAL  # bounded, however slow the calls


async def test_accepted_means_committed(store: PostgresStore, admin: asyncpg.Connection, schema: str) -> None:
    a, (a1,) = await user_with_devices(store, "10000000001", 1)
    b, (b1,) = await user_with_devices(store, "10000000002", 1)
    seen_when_accepted: list[int] = []

    async def send(i: int) -> None:
        result = await store.accept(message(i, a, a1, b, [b1]))
        seen_when_accepted.append(
            await admin.fetchval(f"SELECT count(*) FROM {schema}.queue WHERE seq = $1", result.queued[0].seq)
        )

    for i in range(20):  # admin is one connection: one check at a time
        await send(i)
    assert seen_when_accepted == [1] * 20


async def test_one_bad_call_fails_alone(store: PostgresStore) -> None:
    a, (a1,) = await user_with_devices(store, "10000000001", 1)
    b, (b1,) = await user_with_devices(store, "10000000002", 1)
    bad = message(999, "u_\x00nul", a1, b, [b1])  # PostgreSQL text cannot hold NUL
    calls = [store.accept(message(i, a, a1, b, [b1])) for i in range(50)]
    calls.insert(25, store.accept(bad))
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[25], ValueError)
    good = results[:25] + results[26:]
    assert all(isinstance(r, AcceptResult) and not r.duplicate for r in good)
    assert await store.count_pending(b1) == 50


async def test_concurrent_acks_and_accepts_batch_with_receipts(store: PostgresStore) -> None:
    a, (a1, a2) = await user_with_devices(store, "10000000001", 2)
    b, (b1,) = await user_with_devices(store, "10000000002", 1)
    accepted = await asyncio.gather(*(store.accept(message(i, a, a1, b, [b1, a2])) for i in range(100)))
    to_b = [next(q for q in r.queued if q.device_id == b1) for r in accepted]
    copies = [next(q for q in r.queued if q.device_id == a2) for r in accepted]
    calls: list[Any] = [store.ack(b1, [q.seq], NOW + 1, NOW + DAY) for q in to_b]
    calls += [store.ack(b1, [to_b[0].seq, to_b[1].seq], NOW + 1, NOW + DAY)]  # acked twice: no new receipt
    calls += [store.ack(a2, [q.seq for q in copies], NOW + 1, NOW + DAY)]  # own copies: no receipt
    calls += [store.accept(message(1000 + i, a, a1, b, [b1])) for i in range(10)]
    results = await asyncio.gather(*calls)
    receipts = [r for batch in results[:100] for r in batch]
    assert len(receipts) == 200 and results[100] == [] and results[101] == []
    assert sorted(r.device_id for r in receipts) == sorted([a1, a2] * 100)
    assert all(r.kind is Kind.RECEIPT and r.peer_user == b and r.peer_device == b1 for r in receipts)
    assert await store.count_pending(b1) == 10  # only the 10 new messages
    assert await store.count_pending(a1) == 100 and await store.count_pending(a2) == 100
    rows = await store.pending(a1, 0, 500, NOW)
    assert [r.message_id for r in rows] == [i.to_bytes(16, "big") for i in range(100)]


async def test_contacts_are_recorded_by_the_batch_once_per_pair(
    store: PostgresStore, admin: asyncpg.Connection, schema: str
) -> None:
    # Eight clinicians, each alone in their organisation: only messages make contacts.
    users = [await user_with_devices(store, f"1000000000{i}", 1, f"Org {i}") for i in range(8)]
    pairs = [(i, (i + 1) % 8) for i in range(8)] + [(0, 4)]  # a ring and one chord
    before = replace(store.group_commit_stats)
    calls = []
    for _ in range(10):  # every pair, both ways, many times, all at once
        for x, y in pairs:
            (sx, (dx,)), (sy, (dy,)) = users[x], users[y]
            calls.append(store.accept(message(len(calls), sx, dx, sy, [dy])))
            calls.append(store.accept(message(len(calls), sy, dy, sx, [dx])))
    results = await asyncio.gather(*calls)
    assert all(not r.duplicate for r in results)
    assert store.group_commit_stats.calls - before.calls == len(calls) == 180
    # Contacts did not break batching.
    assert 1 <= store.group_commit_stats.transactions - before.transactions < 20
    ids = [u for u, _ in users]
    for i, user in enumerate(ids):
        partners = {ids[y] for x, y in pairs if x == i} | {ids[x] for x, y in pairs if y == i}
        assert await store.visible_users(user, ids) == partners | {user}
    rows = await admin.fetch(f"SELECT user_a, user_b FROM {schema}.contacts")
    assert sorted((r[0], r[1]) for r in rows) == sorted(
        (min(ids[x], ids[y]), max(ids[x], ids[y])) for x, y in pairs
    )


async def test_close_finishes_calls_already_made(store: PostgresStore) -> None:
    a, (a1,) = await user_with_devices(store, "10000000001", 1)
    b, (b1,) = await user_with_devices(store, "10000000002", 1)
    tasks = [asyncio.create_task(store.accept(message(i, a, a1, b, [b1]))) for i in range(100)]
    await asyncio.sleep(0)  # every task has made its call
    await store.close()
    assert all(not t.result().duplicate for t in tasks)
    with pytest.raises(StoreUnavailable):
        await store.accept(message(500, a, a1, b, [b1]))
    await store.open()
    assert await store.count_pending(b1) == 100


# --- failures and recovery ----------------------------------------------------------


async def test_recovers_after_its_connections_are_killed(
    store: PostgresStore, admin: asyncpg.Connection
) -> None:
    a, (a1,) = await user_with_devices(store, "10000000001", 1)
    b, (b1,) = await user_with_devices(store, "10000000002", 1)
    for i in range(20):
        await store.accept(message(i, a, a1, b, [b1]))
    assert await _terminate(admin, store) >= 1
    try:  # the very next call may fail; the store retries a lost connection once
        assert await store.count_pending(b1) == 20
    except StoreUnavailable:
        pass
    # Without reopening the store, calls work again shortly.
    assert await _eventually(lambda: store.count_pending(b1)) == 20
    assert await _terminate(admin, store) >= 1
    await _eventually(lambda: store.accept(message(20, a, a1, b, [b1])))
    assert await _eventually(lambda: store.ack(b1, [], NOW, NOW + DAY)) == []
    assert await store.count_pending(b1) == 21
    assert [r.payload for r in await store.pending(b1, 0, 100, NOW)] == [
        f"env-{i}-{b1}".encode() for i in range(21)
    ]


async def test_recovers_when_the_server_comes_back(schema: str) -> None:
    outage = _Outage(DSN)
    await outage.up()
    s = PostgresStore(outage.dsn, schema=schema, pool_min=2, pool_max=4, connect_timeout=2)
    try:
        await s.migrate()
        await s.open()
        a, (a1,) = await user_with_devices(s, "10000000001", 1)
        b, (b1,) = await user_with_devices(s, "10000000002", 1)
        for i in range(10):
            await s.accept(message(i, a, a1, b, [b1]))
        await outage.down()
        with pytest.raises(StoreUnavailable):
            await s.count_pending(b1)
        with pytest.raises(StoreUnavailable):
            await s.accept(message(10, a, a1, b, [b1]))
        with pytest.raises(StoreUnavailable):
            await s.ack(b1, [1], NOW, NOW + DAY)
        await outage.up()
        # The same store, not reopened, works again; nothing accepted was lost.
        assert await _eventually(lambda: s.count_pending(b1)) == 10
        assert not (await s.accept(message(10, a, a1, b, [b1]))).duplicate  # the failed call wrote nothing
        assert await s.count_pending(b1) == 11
    finally:
        await s.close()
        await outage.down()


async def test_no_accepted_message_is_lost_when_connections_die(
    store: PostgresStore, admin: asyncpg.Connection
) -> None:
    a, (a1,) = await user_with_devices(store, "10000000001", 1)
    b, (b1,) = await user_with_devices(store, "10000000002", 1)
    accepted: set[int] = set()
    failed: set[int] = set()

    async def send(i: int) -> None:
        await asyncio.sleep(i * 0.002)  # spread the calls over the killings
        try:
            await store.accept(message(i, a, a1, b, [b1]))
            accepted.add(i)
        except StoreUnavailable:
            failed.add(i)

    async def kill() -> int:
        killed = 0
        for _ in range(5):
            await asyncio.sleep(0.1)
            killed += await _terminate(admin, store)
        return killed

    killed, *_ = await asyncio.gather(kill(), *(send(i) for i in range(300)))
    assert killed >= 5 and len(accepted) + len(failed) == 300 and accepted
    stored = {
        int.from_bytes(r.message_id, "big")
        for r in await _eventually(lambda: store.pending(b1, 0, 1000, NOW))
    }
    assert accepted <= stored  # every "accepted" survived
    for i in sorted(failed):  # a failed call is resent, as a client would: stored once, whatever happened
        await _eventually(lambda i=i: store.accept(message(i, a, a1, b, [b1])))
    assert await store.count_pending(b1) == 300


async def test_a_hung_server_is_store_unavailable(
    make_store: MakeStore, admin: asyncpg.Connection, schema: str
) -> None:
    s = make_store(command_timeout=0.5)
    await s.migrate()
    await s.open()
    a, (a1,) = await user_with_devices(s, "10000000001", 1)
    b, (b1,) = await user_with_devices(s, "10000000002", 1)
    blocker = admin.transaction()
    await blocker.start()
    await admin.execute(f"LOCK TABLE {schema}.queue IN ACCESS EXCLUSIVE MODE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await s.count_pending(b1)
        with pytest.raises(StoreUnavailable):
            await s.accept(message(1, a, a1, b, [b1]))
        assert time.monotonic() - started < 5
    finally:
        await blocker.rollback()
    # The batch that timed out is one statement committed by the server alone
    # (postgres_pool.Database.statement): it may still commit once the lock
    # is gone, so its outcome was unknown. The resend stores it exactly once.
    await s.accept(message(1, a, a1, b, [b1]))
    assert await s.count_pending(b1) == 1


async def test_duplicate_signing_key_is_value_error_and_keeps_the_code(store: PostgresStore) -> None:
    user = await store.create_user("Dr A", "10000000001", "médecin", "CHRU", NOW)
    await store.add_enrollment_code(user.user_id, code_hash("ONE"), NOW + DAY)
    await store.add_enrollment_code(user.user_id, code_hash("TWO"), NOW + DAY)
    await store.enroll_device(code_hash("ONE"), b"s" * 32, b"b" * 32, "phone", NOW, MAX_DEVICES)
    with pytest.raises(ValueError):
        await store.enroll_device(code_hash("TWO"), b"s" * 32, b"b" * 32, "clone", NOW, MAX_DEVICES)
    # The failed enrollment rolled back: the code is still good for another key.
    d = await store.enroll_device(code_hash("TWO"), b"t" * 32, b"b" * 32, "laptop", NOW, MAX_DEVICES)
    assert d.device_id in [x.device_id for x in await store.user_devices(user.user_id)]


async def test_expire_deletes_in_bounded_batches(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "EXPIRE_BATCH", 7)
    a, (a1,) = await user_with_devices(store, "10000000001", 1)
    b, (b1,) = await user_with_devices(store, "10000000002", 1)
    await asyncio.gather(*(store.accept(message(i, a, a1, b, [b1], ts=NOW)) for i in range(30)))
    await store.accept(message(100, a, a1, b, [b1], ts=NOW + DAY))
    assert await store.expire(NOW + DAY) == 30
    assert await store.count_pending(b1) == 1
    assert not (await store.accept(message(3, a, a1, b, [b1], ts=NOW + DAY))).duplicate  # its id was freed


async def test_the_readiness_probe_is_answered_while_every_pooled_connection_is_busy(
    make_store: MakeStore, admin: asyncpg.Connection
) -> None:
    """A reconnection storm's reads hold every pooled connection: the
    readiness probe (Store.ping) still gets its answer at once, on a
    connection of its own, so /readyz does not call PostgreSQL unreachable.
    A probe whose connection the server ended fails once; the next one
    connects again."""
    store = make_store(pool_min=1, pool_max=2)
    await store.migrate()
    await store.open()
    busy = [
        asyncio.create_task(store._db.retryable(lambda c: c.execute("SELECT pg_sleep(2)"))) for _ in range(2)
    ]
    await asyncio.sleep(0.3)  # both pooled connections are in their sleep
    started = time.monotonic()
    await asyncio.wait_for(store.ping(), 1.0)
    assert time.monotonic() - started < 0.5
    await asyncio.gather(*busy)

    assert await _terminate(admin, store) >= 1  # the probe's connection too (same application_name)
    await asyncio.sleep(0.2)
    with contextlib.suppress(StoreUnavailable):
        await store.ping()  # may fail: its connection was ended under it
    await asyncio.wait_for(store.ping(), 2.0)
