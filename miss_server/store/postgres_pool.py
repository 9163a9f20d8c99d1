"""PostgresStore's database (``postgres.py``): the connection pool and its
life cycle, the runners of reads and transactions, and the migrations.

Theory of operation
-------------------
Reads take a pooled connection, run and give it back
(:meth:`Database.retryable`); every transaction runs through
:meth:`Database.transaction`, except the group commit's batch, one
statement that the server commits alone (:meth:`Database.statement`, one
round trip instead of three). ``synchronous_commit`` is forced back on if
the server turned it off, so a committed write is durable.

Failures. Every backend failure becomes :class:`StoreUnavailable`; an
integrity or data error becomes ``ValueError`` (``postgres_errors.py``).
asyncpg pools replace a closed connection at the next acquire, so the store
recovers by itself once PostgreSQL is back. Work that loses its connection
*before* ``COMMIT`` was sent rolled back for sure, and runs again on a fresh
connection (``ATTEMPTS`` in all; the broken connection is closed so the pool
does not lend it again); a connection lost *during* ``COMMIT`` leaves the
outcome unknown, which is reported as ``StoreUnavailable`` and never retried
(a resent ``accept`` is then answered ``duplicate`` by idempotency, and a
resent ``ack`` deletes nothing twice). The same holds for a lone statement
once it may have been sent, a command timeout included: the server may
still commit it. A command timeout turns a hung server into
``StoreUnavailable``.

Schema. Versioned SQL in ``migrations/postgres/``, the applied versions in
``schema_version``. :meth:`Database.migrate` applies pending ones in one
transaction under an advisory lock, so hubs and admins migrating at once are
safe; :meth:`Database.open` refuses any schema that is not exactly the
code's version. ``schema`` (argument, or ``?schema=NAME`` in the DSN) puts
every table in that PostgreSQL schema through the connections' search_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from . import migrations
from .base import SchemaMismatch, StoreUnavailable
from .postgres_errors import discard_if_broken, is_connection_lost, is_statement_error, reraise

__all__ = ["ATTEMPTS", "DIALECT", "Database"]

log = logging.getLogger("miss.store.postgres")

T = TypeVar("T")

DIALECT = "postgres"
CLOSE_TIMEOUT = 5.0
ATTEMPTS = 3  # work that lost its connection before COMMIT runs again on a fresh one, twice at most
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_SCHEMA_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)"""


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


class Database:
    """One PostgreSQL database (and schema) seen through a pool (module doc).

    ``dsn`` is a ``postgresql://`` URL, optionally with ``?schema=NAME``;
    raises ValueError if that schema and ``schema`` disagree or the name is
    not a plain identifier. ``application_name`` names the connections in
    ``pg_stat_activity``.
    """

    def __init__(
        self,
        dsn: str,
        schema: str | None,
        pool_min: int,
        pool_max: int,
        *,
        command_timeout: float,
        connect_timeout: float,
        application_name: str,
    ) -> None:
        #: The DSN asyncpg connects with (no ``schema`` in it).
        self.dsn, self.schema = _split_dsn(dsn, schema)
        self.where = _where(self.dsn, self.schema)
        self.application_name = application_name
        #: The connections' server settings.
        self.settings = {"application_name": application_name}
        if self.schema is not None:
            self.settings["search_path"] = self.schema
        self._pool_min, self._pool_max = pool_min, pool_max
        self._command_timeout = command_timeout
        self._connect_timeout = connect_timeout
        self._acquire_timeout = connect_timeout + command_timeout
        digest = hashlib.sha256(f"miss-migrate:{self.schema or ''}".encode()).digest()
        self._migrate_lock = int.from_bytes(digest[:8], "big", signed=True)
        self._pool: asyncpg.Pool | None = None
        #: The readiness probe's connection (:meth:`ping`), outside the pool.
        self._probe: asyncpg.Connection | None = None
        self._probe_lock = asyncio.Lock()

    # --- life cycle ---------------------------------------------------------

    async def open(self) -> None:
        """Open the pool (unless open) on a schema of exactly this code's
        version; raises SchemaMismatch otherwise, StoreUnavailable if the
        server cannot be reached."""
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._pool_min,
                max_size=self._pool_max,
                command_timeout=self._command_timeout,
                timeout=self._connect_timeout,
                server_settings=self.settings,
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
        latest = migrations.latest_version(DIALECT)
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

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        self._drop_probe()
        if pool is not None:
            await _close_pool(pool)

    async def migrate(self) -> int:
        """Create the schema if named, apply pending migrations in one
        transaction under an advisory lock; returns the schema version."""
        try:
            conn = await asyncpg.connect(
                self.dsn, timeout=self._connect_timeout, server_settings=self.settings
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
                latest = migrations.latest_version(DIALECT)
                if current > latest:
                    raise SchemaMismatch(
                        f"{self.where} has schema version {current}, newer than this code knows ({latest})"
                    )
                for version, name, sql in migrations.migrations(DIALECT):
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

    # --- running work ---------------------------------------------------------

    def _live_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("store is closed")
        return self._pool

    async def retryable(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run a read, or a write that may run twice (expiry), on a pooled
        connection; retried on a fresh one when the connection was lost.
        Raises the Store's errors."""
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

    async def transaction(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
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
                            raise _outcome_unknown(exc) from exc
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

    async def statement(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn``, one statement, outside any explicit transaction: the
        server commits it alone before it answers, so the work costs one
        round trip where :meth:`transaction` costs three (``BEGIN``, the
        statement, ``COMMIT``). Raises untranslated errors, except an unknown
        outcome (StoreUnavailable): a connection lost once the statement may
        have been sent is never retried, since it may have committed. Only
        asyncpg's own refusal of a connection it knows closed (nothing sent)
        runs again on a fresh one."""
        pool = self._live_pool()
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with pool.acquire(timeout=self._acquire_timeout) as conn:
                    with discard_if_broken(conn):
                        try:
                            return await fn(conn)
                        except Exception as exc:
                            if is_statement_error(exc) or _unsent(exc) or not is_connection_lost(exc):
                                raise
                            raise _outcome_unknown(exc) from exc
            except Exception as exc:
                if attempt < ATTEMPTS and _unsent(exc):
                    log.warning("connection closed, retrying", extra={"attempt": attempt, "error": str(exc)})
                    continue
                raise
        raise AssertionError("unreachable")

    async def ping(self) -> None:
        """One ``SELECT 1`` on a connection of its own, outside the pool,
        opened at the first ping and again after any failure: a pool whose
        connections all serve a reconnection storm is a busy node, not a
        server out of reach, and must not turn ``/readyz`` to ``store
        unreachable`` (a load balancer would take every node out at once).
        No retry, nothing logged (the readiness probe runs it every second,
        outages included); raises the Store's errors."""
        self._live_pool()  # closed: StoreUnavailable
        async with self._probe_lock:
            try:
                if self._probe is None or self._probe.is_closed():
                    self._probe = await asyncpg.connect(
                        self.dsn, timeout=self._connect_timeout, server_settings=self.settings
                    )
                await self._probe.fetchval("SELECT 1", timeout=self._command_timeout)
            except BaseException as exc:  # a cancelled probe too: its connection's state is unknown
                self._drop_probe()
                if isinstance(exc, Exception):
                    reraise(exc)
                raise

    def _drop_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.terminate()

    async def write(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """:meth:`transaction`, raising the Store's errors."""
        try:
            return await self.transaction(fn)
        except Exception as exc:
            reraise(exc)


def _outcome_unknown(exc: BaseException) -> StoreUnavailable:
    """The error for a commit that may or may not have happened (logged:
    an operator may have to look at what the store holds)."""
    log.error("commit outcome unknown", extra={"error": str(exc)})
    return StoreUnavailable(f"commit outcome unknown: {type(exc).__name__}: {exc}")


def _unsent(exc: BaseException) -> bool:
    """asyncpg refused to use a connection it knew closed: nothing was sent."""
    return type(exc) is asyncpg.InterfaceError and "connection is closed" in str(exc)


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
