"""The production Store: PostgreSQL through an asyncpg connection pool.

Theory of operation
-------------------
Reads (``pending``, ``get_user``...) take a pooled connection, run one
statement and give it back. Writes that keep the hub running, ``accept`` and
``ack``, go through **group commit**: a single task, the committer, owns the
queue of waiting calls. When it wakes it takes every call waiting (up to
``max_batch``) and runs them in one transaction with set-based statements
(``unnest`` arrays: one ``INSERT`` for the message ids, one for all the queue
rows, ``RETURNING seq``). A caller's future resolves only after ``COMMIT``
returned, and ``synchronous_commit`` is forced back on if the server turned it
off, so "accepted" always means "durable" while a busy hub pays one commit
(one WAL flush) per batch rather than per message. Calls arriving while a
commit is in flight wait for the next batch: an idle hub adds no latency, a
busy one batches more. If a statement of a batch fails (bad input, not a lost
connection) the transaction is rolled back and the batch replayed with one
savepoint per call, so one bad call fails alone. One transaction is in flight
at a time per store, so within one hub node ``seq`` order is commit order.

Failures. Every backend failure becomes :class:`StoreUnavailable`; an
integrity or data error becomes ``ValueError`` (duplicate RPPS, duplicate
signing key). asyncpg pools replace a closed connection at the next acquire,
so the store recovers by itself once PostgreSQL is back. Work that loses its
connection *before* ``COMMIT`` was sent rolled back for sure, and runs again
on a fresh connection (``ATTEMPTS`` in all; the broken connection is closed
so the pool does not lend it again); a connection lost *during* ``COMMIT`` leaves the
outcome unknown, which is reported as ``StoreUnavailable`` and never retried
(a resent ``accept`` is then answered ``duplicate`` by idempotency, and a
resent ``ack`` deletes nothing twice). A command timeout turns a hung server
into ``StoreUnavailable``.

Schema. Versioned SQL in ``migrations/postgres/``, the applied versions in
``schema_version``. :meth:`PostgresStore.migrate` applies pending ones in one
transaction under an advisory lock, so hubs and admins migrating at once are
safe; :meth:`PostgresStore.open` refuses any schema that is not exactly the
code's version. ``schema`` (argument, or ``?schema=NAME`` in the DSN) puts
every table in that PostgreSQL schema through the connections' search_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import asyncpg.exceptions as pgerr

from . import migrations as migration_files
from .base import (
    AcceptResult,
    CodeInvalid,
    Device,
    Kind,
    NewMessage,
    Queued,
    SchemaMismatch,
    StoreUnavailable,
    User,
)

__all__ = ["GroupCommitStats", "PostgresStore"]

log = logging.getLogger("miss.store.postgres")

T = TypeVar("T")

DIALECT = "postgres"
MAX_BATCH = 512
EXPIRE_BATCH = 10_000
CLOSE_TIMEOUT = 5.0
ATTEMPTS = 3  # work that lost its connection before COMMIT runs again on a fresh one, twice at most
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_USER_COLUMNS = "user_id, name, rpps, profession, organisation, created_at, suspended"
_DEVICE_COLUMNS = "device_id, user_id, sign_pk, box_pk, label, created_at, revoked_at"
_QUEUED_COLUMNS = "seq, device_id, kind, message_id, peer_user, peer_device, ts, payload"

_SCHEMA_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)"""

_INSERT_IDS = """
INSERT INTO accepted_ids (sender_user, message_id, expires_at)
SELECT * FROM unnest($1::text[], $2::bytea[], $3::bigint[])
ON CONFLICT DO NOTHING
RETURNING sender_user, message_id"""

# Rows are inserted in array order, so the identity hands out seqs in that order.
_ROW_COLUMNS = "device_id, kind, payload, message_id, peer_user, peer_device, recipient_user, ts, expires_at"
_INSERT_ROWS = f"""
INSERT INTO queue ({_ROW_COLUMNS})
SELECT {_ROW_COLUMNS}
FROM unnest($1::text[], $2::smallint[], $3::bytea[], $4::bytea[], $5::text[], $6::text[], $7::text[],
            $8::bigint[], $9::bigint[]) WITH ORDINALITY AS r ({_ROW_COLUMNS}, ord)
ORDER BY ord
RETURNING seq, device_id, message_id"""

_DELETE_ACKED = """
WITH gone AS (
    DELETE FROM queue q USING unnest($1::text[], $2::bigint[]) AS a (device_id, seq)
    WHERE q.seq = a.seq AND q.device_id = a.device_id
    RETURNING q.seq, q.device_id, q.kind, q.message_id, q.peer_user, q.recipient_user
)
SELECT g.seq, g.device_id, g.kind, g.message_id, g.peer_user, g.recipient_user, d.user_id AS owner
FROM gone g LEFT JOIN devices d ON d.device_id = g.device_id"""

_ACTIVE_DEVICES = """
SELECT user_id, device_id FROM devices WHERE user_id = ANY($1::text[]) AND revoked_at IS NULL
ORDER BY user_id, created_at, device_id"""

# SKIP LOCKED: expiry never waits behind the hub's own writes; what it skips, the next run takes.
_EXPIRE = {
    "queue": "DELETE FROM queue WHERE seq = ANY(ARRAY("
    "SELECT seq FROM queue WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED))",
    "accepted_ids": "DELETE FROM accepted_ids WHERE (sender_user, message_id) IN ("
    "SELECT sender_user, message_id FROM accepted_ids WHERE expires_at <= $1 LIMIT $2 "
    "FOR UPDATE SKIP LOCKED)",
    "enrollment_codes": "DELETE FROM enrollment_codes WHERE code_hash IN ("
    "SELECT code_hash FROM enrollment_codes WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
}


# --- errors ---------------------------------------------------------------------

_BACKEND_DOWN = (
    OSError,
    TimeoutError,
    pgerr.PostgresConnectionError,  # class 08, ConnectionDoesNotExistError
    pgerr.OperatorInterventionError,  # class 57: admin shutdown, cannot connect now
    pgerr.InsufficientResourcesError,  # class 53: too many connections, disk full
)
_CONNECTION_LOST = (
    ConnectionError,
    pgerr.PostgresConnectionError,
    pgerr.AdminShutdownError,
    pgerr.CrashShutdownError,
    # asyncpg's protocol state after the server dropped an idle connection and
    # before the loop noticed the socket closed ("another operation is in progress").
    pgerr.InternalClientError,
)


def _is_statement_error(exc: BaseException) -> bool:
    """The statement failed but the connection is fine: the input is at fault."""
    if isinstance(exc, asyncpg.InterfaceError):
        return isinstance(exc, ValueError)  # asyncpg could not encode an argument
    return isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, _BACKEND_DOWN)


def _is_connection_lost(exc: BaseException) -> bool:
    if isinstance(exc, _CONNECTION_LOST):
        return True
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, StoreUnavailable | CodeInvalid | SchemaMismatch):
        return exc
    if isinstance(exc, pgerr.IntegrityConstraintViolationError):
        return ValueError(str(exc))
    if isinstance(exc, pgerr.DataError) or (
        isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError)
    ):
        return ValueError(f"invalid value: {exc}")
    if isinstance(
        exc,
        asyncpg.PostgresError | asyncpg.InterfaceError | pgerr.InternalClientError | OSError | TimeoutError,
    ):
        return StoreUnavailable(f"{type(exc).__name__}: {exc}")
    return exc


@contextlib.contextmanager
def _discard_if_broken(conn: asyncpg.Connection) -> Iterator[None]:
    """Close a connection that failed for a backend reason, so that the pool
    opens a new one rather than lend it again."""
    try:
        yield
    except Exception as exc:
        if isinstance(_translate(exc), StoreUnavailable) and not conn.is_closed():
            conn.terminate()
        raise


def _reraise(exc: BaseException) -> NoReturn:
    err = _translate(exc)
    if err is exc:
        raise exc
    raise err from exc


def _failure(exc: BaseException) -> BaseException:
    """What one caller of a failed batch gets: the translated error, a fresh
    instance each (one instance raised in many tasks piles up tracebacks)."""
    err = _translate(exc)
    try:
        copy = type(err)(*err.args)
    except Exception:
        return err
    copy.__cause__ = exc if err is not exc else exc.__cause__
    return copy


# --- connections ----------------------------------------------------------------


class _HubConnection(asyncpg.Connection):  # type: ignore[misc]
    def get_reset_query(self) -> str:
        # The store changes no session state (no SET beyond _init_connection,
        # LISTEN, cursors or session locks): skip RESET ALL's round trip on
        # every release, and keep synchronous_commit as _init_connection set it.
        return ""


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "SELECT set_config('synchronous_commit', 'on', false) "
        "WHERE current_setting('synchronous_commit') = 'off'"
    )


def _split_dsn(dsn: str, schema: str | None) -> tuple[str, str | None]:
    """Take ``?schema=NAME`` out of the DSN (asyncpg would send it to the
    server as a setting); an explicit ``schema`` must agree with it."""
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    named = [v for k, v in query if k == "schema"]
    if len(named) > 1 or (named and schema is not None and named[0] != schema):
        raise ValueError("conflicting schema names in the store URL and the configuration")
    chosen = schema if schema is not None else (named[0] if named else None)
    if chosen is not None and not _SCHEMA_NAME.fullmatch(chosen):
        raise ValueError(f"schema name {chosen!r}: use lowercase letters, digits and _ (at most 63)")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), chosen


def _where(dsn: str, schema: str | None) -> str:
    """The DSN without credentials, for messages."""
    parts = urlsplit(dsn)
    place = f"{parts.netloc.rpartition('@')[2] or 'localhost'}{parts.path}"
    return f"{place} (schema {schema})" if schema else place


# --- rows -----------------------------------------------------------------------


def _user(row: asyncpg.Record | None) -> User | None:
    if row is None:
        return None
    return User(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))


def _device(row: asyncpg.Record | None) -> Device | None:
    if row is None:
        return None
    return Device(row[0], row[1], row[2], row[3], row[4], row[5], row[6] is not None)


def _queued(row: asyncpg.Record) -> Queued:
    return Queued(row[0], row[1], Kind(row[2]), row[3], row[4], row[5], row[6], row[7])


# --- group commit -----------------------------------------------------------------


@dataclass(slots=True)
class _Accept:
    message: NewMessage
    future: asyncio.Future[Any]


@dataclass(slots=True)
class _Ack:
    device_id: str
    seqs: list[int]
    now: int
    expires_at: int
    future: asyncio.Future[Any]


_Job = _Accept | _Ack


@dataclass(slots=True)
class GroupCommitStats:
    """Counters of the committer: ``calls / transactions`` is the batching factor."""

    transactions: int = 0  # committed transactions that carried calls
    calls: int = 0  # accept/ack calls resolved by them


class _GroupCommit:
    """One task committing waiting accept/ack calls in batches (module doc)."""

    def __init__(self, run: Callable[[list[_Job]], Awaitable[list[object]]], max_batch: int) -> None:
        self._run = run
        self._max_batch = max_batch
        self._waiting: deque[_Job] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._loop(), name="miss-postgres-group-commit")
        self.stats = GroupCommitStats()

    async def call(self, job: _Job) -> Any:
        if self._closing:
            raise StoreUnavailable("store is closed")
        self._waiting.append(job)
        self._wakeup.set()
        return await job.future

    async def stop(self) -> None:
        """Finish every call already made, then end the task."""
        self._closing = True
        self._wakeup.set()
        await self._task

    async def _loop(self) -> None:
        try:
            while True:
                if not self._waiting:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                batch: list[_Job] = []
                while self._waiting and len(batch) < self._max_batch:
                    job = self._waiting.popleft()
                    if not job.future.done():  # a cancelled caller was told nothing: skip it
                        batch.append(job)
                if batch:
                    await self._commit(batch)
        except asyncio.CancelledError:
            for job in self._waiting:
                if not job.future.done():
                    job.future.set_exception(StoreUnavailable("store is closed"))
            raise

    async def _commit(self, batch: list[_Job]) -> None:
        try:
            outcomes = await self._run(batch)
        except Exception as exc:  # _run translates; this is the last guard
            outcomes = [_failure(exc) for _ in batch]
        else:
            self.stats.transactions += 1
            self.stats.calls += len(batch)
        for job, outcome in zip(batch, outcomes, strict=True):
            if job.future.done():
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)


async def _insert_rows(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> list[Queued]:
    """Insert queue rows (tuples in ``_ROW_COLUMNS`` order) in one statement."""
    records = sorted(await conn.fetch(_INSERT_ROWS, *map(list, zip(*rows, strict=True))), key=lambda r: r[0])
    if [(r[1], r[2]) for r in records] != [(row[0], row[3]) for row in rows]:
        raise RuntimeError("queue rows did not get seqs in insertion order")
    return [
        Queued(r[0], row[0], Kind(row[1]), row[3], row[4], row[5], row[7], row[2])
        for r, row in zip(records, rows, strict=True)
    ]


async def _accept_many(conn: asyncpg.Connection, messages: list[NewMessage]) -> list[AcceptResult]:
    first: dict[tuple[str, bytes], int] = {}
    for i, m in enumerate(messages):
        first.setdefault((m.sender_user, m.message_id), i)  # a repeat in the same batch is a duplicate
    keys = sorted(first)  # one lock order for every hub: concurrent resends do not deadlock
    inserted = {
        (r[0], r[1])
        for r in await conn.fetch(
            _INSERT_IDS,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [messages[first[k]].expires_at for k in keys],
        )
    }
    queued: dict[int, list[Queued]] = {}  # by message index, for the stored ones
    owners: list[int] = []
    rows: list[tuple[Any, ...]] = []
    for i, m in enumerate(messages):
        key = (m.sender_user, m.message_id)
        if first[key] != i or key not in inserted:
            continue
        queued[i] = []
        common = (m.message_id, m.sender_user, m.sender_device, m.recipient_user, m.ts, m.expires_at)
        for device_id, envelope in m.envelopes.items():
            owners.append(i)
            rows.append((device_id, int(Kind.MESSAGE), envelope, *common))
    if rows:
        for i, q in zip(owners, await _insert_rows(conn, rows), strict=True):
            queued[i].append(q)
    return [
        AcceptResult(duplicate=False, queued=queued[i])
        if i in queued
        else AcceptResult(duplicate=True, queued=[])
        for i in range(len(messages))
    ]


async def _ack_many(conn: asyncpg.Connection, jobs: list[_Ack]) -> list[list[Queued]]:
    """Like sqlite.py's ``_ack`` for every job, in three statements."""
    results: list[list[Queued]] = [[] for _ in jobs]
    devices = [job.device_id for job in jobs for _ in job.seqs]
    if not devices:
        return results
    gone = {
        (r["device_id"], r["seq"]): r
        for r in await conn.fetch(_DELETE_ACKED, devices, [seq for job in jobs for seq in job.seqs])
    }
    claims: list[tuple[int, asyncpg.Record]] = []
    for i, job in enumerate(jobs):
        for seq in job.seqs:
            row = gone.pop((job.device_id, seq), None)  # a seq acked twice counts once
            if row is None or row["kind"] != Kind.MESSAGE or row["owner"] is None:
                continue
            if row["owner"] != row["recipient_user"] or row["peer_user"] == row["recipient_user"]:
                continue  # a copy for the sender's own device: no receipt
            claims.append((i, row))
    if not claims:
        return results
    sender_devices: dict[str, list[str]] = {}
    for user_id, device_id in await conn.fetch(_ACTIVE_DEVICES, sorted({r["peer_user"] for _, r in claims})):
        sender_devices.setdefault(user_id, []).append(device_id)
    owners: list[int] = []
    rows: list[tuple[Any, ...]] = []
    for i, row in claims:
        job = jobs[i]
        # peer = the acking device, recipient_user = the original sender (sqlite.py's layout)
        common = (row["message_id"], row["owner"], job.device_id, row["peer_user"], job.now, job.expires_at)
        for sender_device in sender_devices.get(row["peer_user"], []):
            owners.append(i)
            rows.append((sender_device, int(Kind.RECEIPT), b"", *common))
    if rows:
        for i, q in zip(owners, await _insert_rows(conn, rows), strict=True):
            results[i].append(q)
    return results


async def _apply(conn: asyncpg.Connection, jobs: Sequence[_Job]) -> list[object]:
    """Run a batch with set-based statements; accepts first (an ack in the
    same batch cannot name a seq the batch creates)."""
    outcomes: list[object] = [None] * len(jobs)
    accepts = [i for i, job in enumerate(jobs) if isinstance(job, _Accept)]
    acks = [i for i, job in enumerate(jobs) if isinstance(job, _Ack)]
    if accepts:
        messages = [jobs[i].message for i in accepts]  # type: ignore[union-attr]
        for i, result in zip(accepts, await _accept_many(conn, messages), strict=True):
            outcomes[i] = result
    if acks:
        ack_jobs = [jobs[i] for i in acks]
        for i, receipts in zip(acks, await _ack_many(conn, ack_jobs), strict=True):  # type: ignore[arg-type]
            outcomes[i] = receipts
    return outcomes


async def _apply_each(conn: asyncpg.Connection, jobs: Sequence[_Job]) -> list[object]:
    """The slow path after a failed batch: one savepoint per call."""
    outcomes: list[object] = []
    for job in jobs:
        try:
            async with conn.transaction():
                outcomes.extend(await _apply(conn, [job]))
        except Exception as exc:
            if not _is_statement_error(exc):
                raise
            outcomes.append(_failure(exc))
    return outcomes


# --- the store --------------------------------------------------------------------


class PostgresStore:
    """Store on PostgreSQL (see :class:`~miss_server.store.base.Store` and the module doc).

    ``dsn`` is a ``postgresql://`` URL, optionally with ``?schema=NAME``.
    ``application_name`` names the connections in ``pg_stat_activity``.
    """

    def __init__(
        self,
        dsn: str,
        schema: str | None = None,
        pool_min: int = 2,
        pool_max: int = 10,
        *,
        command_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        max_batch: int = MAX_BATCH,
        application_name: str = "miss-hub",
    ) -> None:
        self._dsn, self.schema = _split_dsn(dsn, schema)
        self.where = _where(self._dsn, self.schema)
        self._pool_min, self._pool_max = pool_min, pool_max
        self._command_timeout = command_timeout
        self._connect_timeout = connect_timeout
        self._acquire_timeout = connect_timeout + command_timeout
        self._max_batch = max_batch
        self.application_name = application_name
        self._settings = {"application_name": application_name}
        if self.schema is not None:
            self._settings["search_path"] = self.schema
        digest = hashlib.sha256(f"miss-migrate:{self.schema or ''}".encode()).digest()
        self._migrate_lock = int.from_bytes(digest[:8], "big", signed=True)
        self._pool: asyncpg.Pool | None = None
        self._group_commit: _GroupCommit | None = None

    @property
    def group_commit_stats(self) -> GroupCommitStats:
        return self._group_commit.stats if self._group_commit is not None else GroupCommitStats()

    # --- life cycle ---------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._pool_min,
                max_size=self._pool_max,
                command_timeout=self._command_timeout,
                timeout=self._connect_timeout,
                server_settings=self._settings,
                init=_init_connection,
                connection_class=_HubConnection,
            )
        except Exception as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {self.where}: {exc}") from exc
        try:
            async with pool.acquire(timeout=self._acquire_timeout) as conn:
                version = await _schema_version(conn)
        except Exception as exc:
            await _close_pool(pool)
            _reraise(exc)
        latest = migration_files.latest_version(DIALECT)
        if version != latest:
            await _close_pool(pool)
            if version is None:
                raise SchemaMismatch(f"no MiSS schema in {self.where}: run `miss-admin migrate`")
            if version < latest:
                raise SchemaMismatch(
                    f"{self.where} has schema version {version}, this hub needs {latest}: "
                    "run `miss-admin migrate`"
                )
            raise SchemaMismatch(
                f"{self.where} has schema version {version}, newer than this hub knows ({latest}): "
                "upgrade the hub (`miss-admin migrate` never downgrades)"
            )
        self._pool = pool
        self._group_commit = _GroupCommit(self._run_batch, self._max_batch)

    async def close(self) -> None:
        if self._group_commit is not None:
            await self._group_commit.stop()  # refuses new calls, commits those already made
            self._group_commit = None
        pool, self._pool = self._pool, None
        if pool is not None:
            await _close_pool(pool)

    async def migrate(self) -> int:
        """Create the schema if named, apply pending migrations in one
        transaction under an advisory lock; returns the schema version."""
        try:
            conn = await asyncpg.connect(
                self._dsn, timeout=self._connect_timeout, server_settings=self._settings
            )
        except Exception as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {self.where}: {exc}") from exc
        try:
            await _init_connection(conn)
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", self._migrate_lock)
                if self.schema is not None:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                await conn.execute(_SCHEMA_VERSION_TABLE)
                current = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
                latest = migration_files.latest_version(DIALECT)
                if current > latest:
                    raise SchemaMismatch(
                        f"{self.where} has schema version {current}, newer than this code knows ({latest})"
                    )
                for version, name, sql in migration_files.migrations(DIALECT):
                    if version > current:
                        await conn.execute(sql)
                        await conn.execute(
                            "INSERT INTO schema_version (version, name) VALUES ($1, $2)", version, name
                        )
                        log.info("schema migrated", extra={"version": version, "migration": name})
                        current = version
                return current
        except Exception as exc:
            _reraise(exc)
        finally:
            await _close_connection(conn)

    def _live_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("store is closed")
        return self._pool

    async def _retryable(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run a read, or a write that may run twice (expiry), on a pooled
        connection; retried on a fresh one when the connection was lost."""
        pool = self._live_pool()
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with pool.acquire(timeout=self._acquire_timeout) as conn:
                    with _discard_if_broken(conn):
                        return await fn(conn)
            except Exception as exc:
                if attempt < ATTEMPTS and _is_connection_lost(exc):
                    log.warning("connection lost, retrying", extra={"attempt": attempt, "error": str(exc)})
                    continue
                _reraise(exc)
        raise AssertionError("unreachable")

    async def _transaction(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn`` in one transaction; raises untranslated errors, except
        an unknown commit outcome (StoreUnavailable). A connection lost before
        COMMIT was sent means nothing was written: retry on a fresh one."""
        pool = self._live_pool()
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with pool.acquire(timeout=self._acquire_timeout) as conn:
                    with _discard_if_broken(conn):
                        tx = conn.transaction()
                        await tx.start()
                        try:
                            value = await fn(conn)
                        except BaseException:
                            if not conn.is_closed():
                                with contextlib.suppress(Exception):
                                    await tx.rollback()
                            raise
                        try:
                            await tx.commit()
                        except Exception as exc:
                            if _is_statement_error(exc):
                                raise  # the server answered: it rolled back
                            log.error("commit outcome unknown", extra={"error": str(exc)})
                            raise StoreUnavailable(
                                f"commit outcome unknown: {type(exc).__name__}: {exc}"
                            ) from exc
                        return value
            except Exception as exc:
                if attempt < ATTEMPTS and _is_connection_lost(exc):
                    log.warning(
                        "connection lost before commit, retrying",
                        extra={"attempt": attempt, "error": str(exc)},
                    )
                    continue
                raise
        raise AssertionError("unreachable")

    async def _write(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        try:
            return await self._transaction(fn)
        except Exception as exc:
            _reraise(exc)

    async def _run_batch(self, jobs: list[_Job]) -> list[object]:
        """The committer's work: the fast path, or one savepoint per call."""
        try:
            return await self._transaction(lambda conn: _apply(conn, jobs))
        except Exception as exc:
            if len(jobs) == 1 or not _is_statement_error(exc):
                return [_failure(exc) for _ in jobs]
            log.warning("a batched call failed, replaying one by one", extra={"calls": len(jobs)})
        try:
            return await self._transaction(lambda conn: _apply_each(conn, jobs))
        except Exception as exc:
            return [_failure(exc) for _ in jobs]

    # --- accounts and devices -------------------------------------------------

    async def create_user(self, name: str, rpps: str, profession: str, organisation: str, now: int) -> User:
        user = User("u_" + secrets.token_hex(8), name, rpps, profession, organisation, now)
        await self._write(
            lambda c: c.execute(
                f"INSERT INTO users ({_USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, FALSE)",
                user.user_id,
                name,
                rpps,
                profession,
                organisation,
                now,
            )
        )
        return user

    async def get_user(self, user_id: str) -> User | None:
        return _user(
            await self._retryable(
                lambda c: c.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = $1", user_id)
            )
        )

    async def find_user_by_rpps(self, rpps: str) -> User | None:
        return _user(
            await self._retryable(
                lambda c: c.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE rpps = $1", rpps)
            )
        )

    async def list_users(self) -> list[User]:
        # COLLATE "C": code point order, as SQLite sorts, whatever the database's locale.
        rows = await self._retryable(
            lambda c: c.fetch(f'SELECT {_USER_COLUMNS} FROM users ORDER BY name COLLATE "C", user_id')
        )
        return [u for u in map(_user, rows) if u is not None]

    async def add_enrollment_code(self, user_id: str, code_hash: bytes, expires_at: int) -> None:
        await self._write(
            lambda c: c.execute(
                "INSERT INTO enrollment_codes (code_hash, user_id, expires_at) VALUES ($1, $2, $3)",
                code_hash,
                user_id,
                expires_at,
            )
        )

    async def enroll_device(
        self, code_hash: bytes, sign_pk: bytes, box_pk: bytes, label: str, now: int
    ) -> Device:
        device_id = "d_" + secrets.token_hex(8)

        async def run(conn: asyncpg.Connection) -> Device:
            user_id = await conn.fetchval(
                "UPDATE enrollment_codes SET used_at = $1 "
                "WHERE code_hash = $2 AND used_at IS NULL AND expires_at > $1 RETURNING user_id",
                now,
                code_hash,
            )
            if user_id is None:
                raise CodeInvalid("unknown, used or expired code")
            # A duplicate signing key fails here and rolls back the use of the code.
            await conn.execute(
                f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, NULL)",
                device_id,
                user_id,
                sign_pk,
                box_pk,
                label,
                now,
            )
            return Device(device_id, user_id, sign_pk, box_pk, label, now)

        return await self._write(run)

    async def get_device(self, device_id: str) -> Device | None:
        return _device(
            await self._retryable(
                lambda c: c.fetchrow(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE device_id = $1", device_id)
            )
        )

    async def user_devices(self, user_id: str) -> list[Device]:
        rows = await self._retryable(
            lambda c: c.fetch(
                f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE user_id = $1 AND revoked_at IS NULL "
                "ORDER BY created_at, device_id",
                user_id,
            )
        )
        return [d for d in map(_device, rows) if d is not None]

    # --- messages -----------------------------------------------------------

    def _committer(self) -> _GroupCommit:
        if self._group_commit is None:
            raise StoreUnavailable("store is closed")
        return self._group_commit

    async def accept(self, message: NewMessage) -> AcceptResult:
        committer = self._committer()
        result: AcceptResult = await committer.call(
            _Accept(message, asyncio.get_running_loop().create_future())
        )
        return result

    async def pending(self, device_id: str, after_seq: int, limit: int, now: int) -> list[Queued]:
        rows = await self._retryable(
            lambda c: c.fetch(
                f"SELECT {_QUEUED_COLUMNS} FROM queue "
                "WHERE device_id = $1 AND seq > $2 AND expires_at > $3 ORDER BY seq LIMIT $4",
                device_id,
                after_seq,
                now,
                limit,
            )
        )
        return [_queued(r) for r in rows]

    async def ack(self, device_id: str, seqs: list[int], now: int, expires_at: int) -> list[Queued]:
        committer = self._committer()
        future = asyncio.get_running_loop().create_future()
        receipts: list[Queued] = await committer.call(_Ack(device_id, list(seqs), now, expires_at, future))
        return receipts

    async def expire(self, now: int) -> int:
        """Delete in statements of at most ``EXPIRE_BATCH`` rows, each its own
        short transaction. If interrupted, what was deleted stays deleted."""
        deleted = 0
        for table, sql in _EXPIRE.items():

            async def run(conn: asyncpg.Connection, sql: str = sql) -> str:
                return str(await conn.execute(sql, now, EXPIRE_BATCH))

            while True:
                n = int((await self._retryable(run)).split()[-1])  # status "DELETE n"
                if table == "queue":
                    deleted += n
                if n < EXPIRE_BATCH:
                    break
        return deleted

    async def count_pending(self, device_id: str) -> int:
        return int(
            await self._retryable(
                lambda c: c.fetchval("SELECT count(*) FROM queue WHERE device_id = $1", device_id)
            )
        )


async def _schema_version(conn: asyncpg.Connection) -> int | None:
    if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
        return None
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
    except Exception:
        pool.terminate()


async def _close_connection(conn: asyncpg.Connection) -> None:
    try:
        await conn.close(timeout=CLOSE_TIMEOUT)
    except Exception:
        conn.terminate()
