"""The production Store: PostgreSQL through an asyncpg connection pool.

Theory of operation
-------------------
Three modules, one job each:

* this one, :class:`PostgresStore`: the pool and its life cycle, migrations,
  and every call that is one statement or one short transaction (accounts,
  devices and their revocation, statuses, presence visibility, search,
  organisations, the audit log, ``pending``, ``expire``);
* ``postgres_batch.py``: **group commit** for ``accept`` and ``ack``, the
  writes that keep the hub running (many calls, one transaction, one WAL
  flush; see its theory of operation);
* ``postgres_errors.py``: how asyncpg failures become the Store's errors.

Reads (``pending``, ``get_user``...) take a pooled connection, run one
statement and give it back. Every transaction, the batches' included, runs
through :meth:`PostgresStore._transaction`. ``synchronous_commit`` is forced
back on if the server turned it off, so a committed write is durable.

Failures. Every backend failure becomes :class:`StoreUnavailable`; an
integrity or data error becomes ``ValueError`` (duplicate RPPS, duplicate
signing key, unknown status). asyncpg pools replace a closed connection at
the next acquire, so the store recovers by itself once PostgreSQL is back.
Work that loses its connection *before* ``COMMIT`` was sent rolled back for
sure, and runs again on a fresh connection (``ATTEMPTS`` in all; the broken
connection is closed so the pool does not lend it again); a connection lost
*during* ``COMMIT`` leaves the outcome unknown, which is reported as
``StoreUnavailable`` and never retried (a resent ``accept`` is then answered
``duplicate`` by idempotency, and a resent ``ack`` deletes nothing twice). A
command timeout turns a hung server into ``StoreUnavailable``.

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
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from protocol.frames import STATUSES

from . import migrations as migration_files
from .base import (
    AcceptResult,
    AuditEvent,
    CodeInvalid,
    Device,
    DeviceLimit,
    GroupCommitStats,
    Invitation,
    Kind,
    NewMessage,
    Organisation,
    Queued,
    SchemaMismatch,
    StoreUnavailable,
    User,
)
from .common import SEARCH_MIN_CHARS, SEARCH_SEPARATOR, attested_keys
from .postgres_batch import GroupCommit
from .postgres_errors import discard_if_broken, is_connection_lost, is_statement_error, reraise

__all__ = ["PostgresStore"]

log = logging.getLogger("miss.store.postgres")

T = TypeVar("T")

DIALECT = "postgres"
MAX_BATCH = 512
EXPIRE_BATCH = 10_000
CLOSE_TIMEOUT = 5.0
ATTEMPTS = 3  # work that lost its connection before COMMIT runs again on a fresh one, twice at most
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_USER_COLUMNS = "user_id, name, rpps, profession, organisation, created_at, suspended, status, attestation"
_DEVICE_COLUMNS = "device_id, user_id, sign_pk, box_pk, label, created_at, revoked_at, attested"
_QUEUED_COLUMNS = "seq, device_id, kind, message_id, peer_user, peer_device, ts, payload"
_AUDIT_COLUMNS = "seq, at, actor, action, user_id, device_id, address, detail"

_SCHEMA_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)"""

# Candidates are found by primary key, then kept if the viewer is them, shares
# their organisation, or is their contact: the viewer's contacts are read once
# (primary key, contacts_by_b) into a hashed subplan, not looked up per candidate.
_VISIBLE_USERS = """
SELECT u.user_id FROM users u
WHERE u.user_id = ANY($2::text[])
  AND (u.user_id = $1
       OR (u.organisation <> '' AND u.organisation = (SELECT organisation FROM users WHERE user_id = $1))
       OR u.user_id IN (SELECT user_b FROM contacts WHERE user_a = $1
                        UNION ALL
                        SELECT user_a FROM contacts WHERE user_b = $1))"""

# The directory index (migration 0006): the same expression and predicate as
# users_search, so that a pattern of three characters or more goes through
# its trigrams. LIKE's escape character is the backslash by default; $1 is
# the escaped, lower-cased query (_like_pattern). COLLATE "C" as list_users.
_SEARCH_USERS = f"""
SELECT {_USER_COLUMNS} FROM users
WHERE attestation IS NOT NULL AND NOT suspended
  AND lower(name || chr(31) || rpps || chr(31) || profession || chr(31) || organisation) LIKE '%' || $1 || '%'
ORDER BY name COLLATE "C", user_id
LIMIT $2"""

# Places a user holds under the device cap (SPEC §5.3): active devices and
# unused, unexpired link codes.
_PLACES_TAKEN = """
SELECT (SELECT count(*) FROM devices WHERE user_id = $1 AND revoked_at IS NULL)
     + (SELECT count(*) FROM enrollment_codes
        WHERE user_id = $1 AND link AND used_at IS NULL AND expires_at > $2)"""

# Rows are inserted in array order, so the identity hands out seqs in that order.
_INSERT_AUDIT = """
INSERT INTO audit_log (at, actor, action, user_id, device_id, address, detail)
SELECT at, actor, action, user_id, device_id, address, detail
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
     WITH ORDINALITY AS e (at, actor, action, user_id, device_id, address, detail, ord)
ORDER BY ord"""

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
    return User(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]), row[7], row[8])


def _device(row: asyncpg.Record | None) -> Device | None:
    if row is None:
        return None
    return Device(row[0], row[1], row[2], row[3], row[4], row[5], row[6] is not None, row[7])


def _queued(row: asyncpg.Record) -> Queued:
    return Queued(row[0], row[1], Kind(row[2]), row[3], row[4], row[5], row[6], row[7])


def _audit_event(row: asyncpg.Record) -> AuditEvent:
    return AuditEvent(row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[0])


def _like_pattern(query: str) -> str:
    """``query`` for ``ILIKE '%' || $1 || '%'``: its own %, _ and \\ are literal."""
    return query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _count(status: str) -> int:
    """The row count of a command status (``UPDATE 1``, ``INSERT 0 1``)."""
    return int(status.split()[-1])


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
        self._group_commit: GroupCommit | None = None
        #: Searches in flight at once: they hold pooled connections, which
        #: authentications and sends must still find (SPEC §11.3).
        self._searches = asyncio.Semaphore(max(1, pool_max // 4))

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
            reraise(exc)
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
        self._group_commit = GroupCommit(self._transaction, self._max_batch)

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
            reraise(exc)
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
                    with discard_if_broken(conn):
                        return await fn(conn)
            except Exception as exc:
                if attempt < ATTEMPTS and is_connection_lost(exc):
                    log.warning("connection lost, retrying", extra={"attempt": attempt, "error": str(exc)})
                    continue
                reraise(exc)
        raise AssertionError("unreachable")

    async def _transaction(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn`` in one transaction; raises untranslated errors, except
        an unknown commit outcome (StoreUnavailable). A connection lost before
        COMMIT was sent means nothing was written: retry on a fresh one."""
        pool = self._live_pool()
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with pool.acquire(timeout=self._acquire_timeout) as conn:
                    with discard_if_broken(conn):
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
                            if is_statement_error(exc):
                                raise  # the server answered: it rolled back
                            log.error("commit outcome unknown", extra={"error": str(exc)})
                            raise StoreUnavailable(
                                f"commit outcome unknown: {type(exc).__name__}: {exc}"
                            ) from exc
                        return value
            except Exception as exc:
                if attempt < ATTEMPTS and is_connection_lost(exc):
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
            reraise(exc)

    # --- accounts and devices -------------------------------------------------

    async def create_user(self, name: str, rpps: str, profession: str, organisation: str, now: int) -> User:
        user = User("u_" + secrets.token_hex(8), name, rpps, profession, organisation, now)
        await self._write(
            lambda c: c.execute(
                f"INSERT INTO users ({_USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, FALSE, $7, NULL)",
                user.user_id,
                name,
                rpps,
                profession,
                organisation,
                now,
                user.status,
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

    async def add_link_code(
        self, user_id: str, code_hash: bytes, expires_at: int, now: int, max_devices: int
    ) -> None:
        async def run(conn: asyncpg.Connection) -> bool:
            # The user's row lock serialises the count and the insert against
            # concurrent link codes and enrollments of the same user.
            await conn.execute("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE", user_id)
            if await conn.fetchval(_PLACES_TAKEN, user_id, now) >= max_devices:
                return False
            await conn.execute(
                "INSERT INTO enrollment_codes (code_hash, user_id, expires_at, link) "
                "VALUES ($1, $2, $3, TRUE)",
                code_hash,
                user_id,
                expires_at,
            )
            return True

        if not await self._write(run):
            raise DeviceLimit(f"{user_id} has {max_devices} devices and link codes")

    async def set_status(self, user_id: str, status: str) -> None:
        """Unknown ``user_id``: nothing is written. Raises ValueError for a
        status not in ``protocol.frames.STATUSES``."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        await self._write(
            lambda c: c.execute("UPDATE users SET status = $1 WHERE user_id = $2", status, user_id)
        )

    async def statuses(self, user_ids: list[str]) -> dict[str, str]:
        if not user_ids:
            return {}
        rows = await self._retryable(
            lambda c: c.fetch("SELECT user_id, status FROM users WHERE user_id = ANY($1::text[])", user_ids)
        )
        return {r[0]: r[1] for r in rows}

    async def visible_users(self, viewer: str, candidates: list[str]) -> set[str]:
        if not candidates:
            return set()
        rows = await self._retryable(lambda c: c.fetch(_VISIBLE_USERS, viewer, candidates))
        return {r[0] for r in rows}

    async def enroll_device(
        self,
        code_hash: bytes,
        sign_pk: bytes,
        box_pk: bytes,
        label: str,
        now: int,
        max_devices: int | None = None,
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
            if max_devices is not None:
                # The user's row lock: two enrollments at once count each other.
                await conn.execute("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE", user_id)
                active = await conn.fetchval(
                    "SELECT count(*) FROM devices WHERE user_id = $1 AND revoked_at IS NULL", user_id
                )
                if active >= max_devices:  # rolls back the use of the code
                    raise DeviceLimit(f"{user_id} has {max_devices} active devices")
            # A duplicate signing key fails here and rolls back the use of the code.
            await conn.execute(
                f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, NULL, FALSE)",
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

    async def user_devices(self, user_id: str, include_revoked: bool = False) -> list[Device]:
        active = "" if include_revoked else " AND revoked_at IS NULL"
        rows = await self._retryable(
            lambda c: c.fetch(
                f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE user_id = $1{active} "
                "ORDER BY created_at, device_id",
                user_id,
            )
        )
        return [d for d in map(_device, rows) if d is not None]

    # --- verification, suspension, revocation ----------------------------------

    async def set_attestation(self, user_id: str, attestation: bytes) -> None:
        named = attested_keys(attestation)

        async def run(conn: asyncpg.Connection) -> int:
            n = _count(
                await conn.execute(
                    "UPDATE users SET attestation = $1 WHERE user_id = $2", attestation, user_id
                )
            )
            rows = await conn.fetch(
                "SELECT device_id, sign_pk, box_pk FROM devices WHERE user_id = $1", user_id
            )
            await conn.execute(
                "UPDATE devices SET attested = (device_id = ANY($2::text[])) WHERE user_id = $1",
                user_id,
                [r[0] for r in rows if (r[0], r[1], r[2]) in named],
            )
            return n

        if not await self._write(run):
            raise LookupError(f"unknown user {user_id!r}")

    async def set_suspended(self, user_id: str, suspended: bool) -> None:
        await self._update_user(user_id, "suspended", suspended)

    async def _update_user(self, user_id: str, column: str, value: object) -> None:
        """Set one column of a user's row; LookupError if there is none."""
        status = await self._write(
            lambda c: c.execute(f"UPDATE users SET {column} = $1 WHERE user_id = $2", value, user_id)
        )
        if not _count(status):
            raise LookupError(f"unknown user {user_id!r}")

    async def revoke_device(self, device_id: str, now: int) -> Device | None:
        async def run(conn: asyncpg.Connection) -> Device | None:
            row = await conn.fetchrow(
                "UPDATE devices SET revoked_at = $1 WHERE device_id = $2 AND revoked_at IS NULL "
                f"RETURNING {_DEVICE_COLUMNS}",
                now,
                device_id,
            )
            if row is None:
                return None
            # Rows that an accept batch inserts for the device after this
            # DELETE's snapshot stay until they expire: the hub reads targets
            # from user_devices() before accept, so only a race leaves any.
            await conn.execute("DELETE FROM queue WHERE device_id = $1", device_id)
            return Device(row[0], row[1], row[2], row[3], row[4], row[5], revoked=False, attested=row[7])

        return await self._write(run)

    async def search_users(self, query: str, limit: int) -> list[User]:
        if limit <= 0 or len(query) < SEARCH_MIN_CHARS or SEARCH_SEPARATOR in query:
            return []
        async with self._searches:
            rows = await self._retryable(
                lambda c: c.fetch(_SEARCH_USERS, _like_pattern(query.lower()), limit)
            )
        return [u for u in map(_user, rows) if u is not None]

    async def delete_user(self, user_id: str) -> bool:
        async def run(conn: asyncpg.Connection) -> bool:
            devices = [
                r[0] for r in await conn.fetch("SELECT device_id FROM devices WHERE user_id = $1", user_id)
            ]
            await conn.execute("DELETE FROM queue WHERE device_id = ANY($1::text[])", devices)
            await conn.execute("DELETE FROM enrollment_codes WHERE user_id = $1", user_id)
            await conn.execute("DELETE FROM contacts WHERE user_a = $1 OR user_b = $1", user_id)
            await conn.execute("DELETE FROM devices WHERE user_id = $1", user_id)
            return bool(_count(await conn.execute("DELETE FROM users WHERE user_id = $1", user_id)))

        return await self._write(run)

    # --- organisations and invitations ------------------------------------------

    async def add_organisation(self, name: str, now: int) -> Organisation:
        status = await self._write(
            lambda c: c.execute(
                "INSERT INTO organisations (name, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                name,
                now,
            )
        )
        if not _count(status):
            raise ValueError(f"organisation {name!r} exists")
        return Organisation(name, now)

    async def list_organisations(self) -> list[Organisation]:
        rows = await self._retryable(
            lambda c: c.fetch('SELECT name, created_at FROM organisations ORDER BY name COLLATE "C"')
        )
        return [Organisation(r[0], r[1]) for r in rows]

    async def invitations(self, now: int) -> list[Invitation]:
        rows = await self._retryable(
            lambda c: c.fetch(
                "SELECT user_id, expires_at FROM enrollment_codes WHERE used_at IS NULL AND expires_at > $1 "
                'ORDER BY expires_at, user_id COLLATE "C", code_hash',
                now,
            )
        )
        return [Invitation(r[0], r[1]) for r in rows]

    # --- audit log ----------------------------------------------------------------

    async def audit(self, events: list[AuditEvent]) -> None:
        if not events:
            return
        columns = [
            [e.at for e in events],
            [e.actor for e in events],
            [e.action for e in events],
            [e.user_id for e in events],
            [e.device_id for e in events],
            [e.address for e in events],
            [e.detail for e in events],
        ]
        await self._write(lambda c: c.execute(_INSERT_AUDIT, *columns))

    async def audit_log(
        self,
        *,
        since_at: int = 0,
        user_id: str | None = None,
        actions: list[str] | None = None,
        limit: int = 100,
        after_seq: int = 0,
        oldest: bool = False,
    ) -> list[AuditEvent]:
        """``actions=[]`` matches nothing."""
        actions = None if actions is None else list(actions)
        if limit <= 0 or actions == []:
            return []
        # One statement per combination of filters (four in all), so that each
        # gets a plan of its own rather than a generic one full of ORs.
        where: list[str] = ["at >= $1", "seq > $2"]
        args: list[object] = [since_at, after_seq]
        if user_id is not None:
            args.append(user_id)
            where.append(f"user_id = ${len(args)}")
        if actions is not None:
            args.append(actions)
            where.append(f"action = ANY(${len(args)}::text[])")
        args.append(limit)
        # The newest (or oldest) ``limit`` that match, handed back oldest first.
        sql = (
            f"SELECT {_AUDIT_COLUMNS} FROM audit_log WHERE {' AND '.join(where)} "
            f"ORDER BY seq {'ASC' if oldest else 'DESC'} LIMIT ${len(args)}"
        )
        rows = await self._retryable(lambda c: c.fetch(sql, *args))
        return [_audit_event(r) for r in (rows if oldest else reversed(rows))]

    # --- messages -----------------------------------------------------------

    def _committer(self) -> GroupCommit:
        if self._group_commit is None:
            raise StoreUnavailable("store is closed")
        return self._group_commit

    async def accept(self, message: NewMessage) -> AcceptResult:
        return await self._committer().accept(message)

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

    async def ack(
        self,
        device_id: str,
        seqs: list[int],
        now: int,
        expires_at: int,
        refused: dict[int, str] | None = None,
    ) -> list[Queued]:
        return await self._committer().ack(device_id, seqs, now, expires_at, refused or {})

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
