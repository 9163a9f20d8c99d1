"""The production Store: PostgreSQL through an asyncpg connection pool.

Theory of operation
-------------------
Four modules, one job each:

* this one, :class:`PostgresStore`: every call that is one statement or one
  short transaction (accounts, devices and their revocation, statuses,
  presence visibility, search, organisations, the audit log, ``pending``,
  ``expire``);
* ``postgres_pool.py``: the pool and its life cycle, the runners of reads
  and transactions (retries, durability), the migrations;
* ``postgres_batch.py``: **group commit** for ``accept`` and ``ack``, the
  writes that keep the hub running (many calls, one transaction, one WAL
  flush), through the function ``miss_group_commit``, PostgreSQL's
  statement of the rules of accept() and ack();
* ``postgres_errors.py``: how asyncpg failures become the Store's errors.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

import asyncpg

from . import postgres_oncall as oncall
from . import postgres_teams as teams
from .base import (
    CodeInvalid,
    Device,
    DeviceLimit,
    GroupCommitStats,
    Invitation,
    Organisation,
    StoreUnavailable,
    User,
)
from .batched_reads import BatchedReads, Page
from .common import (
    MAX_BATCH,
    AuditFilter,
    SqlDialect,
    attested_keys,
    check_status,
    like_pattern,
    new_device_id,
    new_user_id,
    searchable,
)
from .postgres_batch import GroupCommit
from .postgres_pool import Database
from .rows import DEVICE_COLUMNS, NO_DEVICE, USER_COLUMNS, to_device, to_device_user, to_user
from .services import PostgresServices

if TYPE_CHECKING:  # names the type checker alone needs
    from typing_extensions import Unpack

    from .base import (
        AcceptResult,
        AuditEvent,
        NewMessage,
        NewTeamMessage,
        Queued,
        Refusals,
        TeamAppend,
        TeamInfo,
        TeamRecordRow,
    )

__all__ = ["PostgresStore"]

EXPIRE_BATCH = 10_000

#: Numbered parameters (``$1``), and lists as arrays.
POSTGRES = SqlDialect(
    param=lambda n: f"${n}",
    one_of=lambda column, param: f"{column} = ANY({param}::text[])",
    strings=list,
)

_VISIBLE_USERS = POSTGRES.visible_users()
_PLACES_TAKEN = POSTGRES.places_taken()
_DEVICE_USERS = POSTGRES.device_users()

# The directory index (migration 0006): the same expression and predicate as
# users_search, so that a pattern of three characters or more goes through
# its trigrams. LIKE's escape character is the backslash by default; $1 is
# the escaped, lower-cased query (like_pattern, common.py). COLLATE "C" as list_users.
_SEARCH_USERS = f"""
SELECT {USER_COLUMNS} FROM users
WHERE attestation IS NOT NULL AND NOT suspended AND NOT service
  AND lower(name || chr(31) || rpps || chr(31) || profession || chr(31) || organisation) LIKE '%' || $1 || '%'
ORDER BY name COLLATE "C", user_id
LIMIT $2"""

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


def _count(status: str) -> int:
    """The row count of a command status (``UPDATE 1``, ``INSERT 0 1``)."""
    return int(status.split()[-1])


async def _user_where(conn: asyncpg.Connection, column: str, value: str) -> User | None:
    """The user whose ``column`` (a unique one) holds ``value``."""
    row = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE {column} = $1", value)
    return None if row is None else to_user(row)


class PostgresStore(oncall.PostgresOncall, PostgresServices):
    """Store on PostgreSQL (see :class:`~miss_server.store.base.Store` and the
    module doc); on-call roles and urgent messages in ``postgres_oncall.py``,
    service accounts in ``services.py``.

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
        self._db = Database(
            dsn,
            schema,
            pool_min,
            pool_max,
            command_timeout=command_timeout,
            connect_timeout=connect_timeout,
            application_name=application_name,
        )
        self._max_batch = max_batch
        self._group_commit: GroupCommit | None = None
        #: Searches in flight at once: they hold pooled connections, which
        #: authentications and sends must still find (SPEC §11.3).
        self._searches = asyncio.Semaphore(max(1, pool_max // 4))
        #: Authentications' reads, one statement per turn of the loop (batched_reads.py).
        self._device_users = BatchedReads(self._read_device_users, NO_DEVICE)
        #: Drains' pages, one statement per turn (a storm's first pages).
        self._pages: BatchedReads[Page, list[Queued]] = BatchedReads(self._read_pages, [])

    @property
    def schema(self) -> str | None:
        return self._db.schema

    @property
    def where(self) -> str:
        """The database (and schema) without credentials, for messages."""
        return self._db.where

    @property
    def application_name(self) -> str:
        return self._db.application_name

    @property
    def group_commit_stats(self) -> GroupCommitStats:
        """The committer's batching (committed transactions only)."""
        return self._group_commit.stats if self._group_commit is not None else GroupCommitStats()

    # --- life cycle ---------------------------------------------------------

    async def open(self) -> None:
        if self._group_commit is not None:
            return
        await self._db.open()
        self._group_commit = GroupCommit(self._db.statement, self._db.transaction, self._max_batch)

    async def close(self) -> None:
        if self._group_commit is not None:
            await self._group_commit.stop()  # refuses new calls, commits those already made
            self._group_commit = None
        await self._db.close()

    async def ping(self) -> None:
        await self._db.ping()

    async def migrate(self) -> int:
        """See :meth:`.postgres_pool.Database.migrate`."""
        return await self._db.migrate()

    # --- accounts and devices -------------------------------------------------

    async def create_user(self, name: str, rpps: str, profession: str, organisation: str, now: int) -> User:
        user = User(new_user_id(), name, rpps, profession, organisation, now)
        await self._db.write(
            lambda c: c.execute(
                f"INSERT INTO users ({USER_COLUMNS}) "
                "VALUES ($1, $2, $3, $4, $5, $6, FALSE, $7, NULL, FALSE, TRUE)",
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
        return await self._db.retryable(lambda c: _user_where(c, "user_id", user_id))

    async def get_account(self, user_id: str) -> tuple[User | None, list[Device]]:
        async def run(c: asyncpg.Connection) -> tuple[User | None, list[Device]]:
            user = await _user_where(c, "user_id", user_id)
            if user is None:
                return None, []
            rows = await c.fetch(
                f"SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1 AND revoked_at IS NULL "
                "ORDER BY created_at, device_id",
                user_id,
            )
            return user, [to_device(r) for r in rows]

        return await self._db.retryable(run)

    async def find_user_by_rpps(self, rpps: str) -> User | None:
        return await self._db.retryable(lambda c: _user_where(c, "rpps", rpps))

    async def list_users(self) -> list[User]:
        # COLLATE "C": code point order, as SQLite sorts, whatever the database's locale.
        rows = await self._db.retryable(
            lambda c: c.fetch(f'SELECT {USER_COLUMNS} FROM users ORDER BY name COLLATE "C", user_id')
        )
        return [to_user(r) for r in rows]

    async def add_enrollment_code(self, user_id: str, code_hash: bytes, expires_at: int) -> None:
        await self._db.write(
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
        async def run(conn: asyncpg.Connection) -> None:
            # The user's row lock serialises the count and the insert against
            # concurrent link codes and enrollments of the same user.
            await conn.execute("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE", user_id)
            if await conn.fetchval(_PLACES_TAKEN, user_id, now) >= max_devices:
                raise DeviceLimit(f"{user_id} has {max_devices} devices and link codes")
            await conn.execute(
                "INSERT INTO enrollment_codes (code_hash, user_id, expires_at, link) "
                "VALUES ($1, $2, $3, TRUE)",
                code_hash,
                user_id,
                expires_at,
            )

        await self._db.write(run)

    async def set_status(self, user_id: str, status: str) -> None:
        check_status(status)  # first: for an unknown user the UPDATE writes nothing, and no CHECK fails
        await self._db.write(
            lambda c: c.execute("UPDATE users SET status = $1 WHERE user_id = $2", status, user_id)
        )

    async def statuses(self, user_ids: list[str]) -> dict[str, str]:
        if not user_ids:
            return {}
        rows = await self._db.retryable(
            lambda c: c.fetch("SELECT user_id, status FROM users WHERE user_id = ANY($1::text[])", user_ids)
        )
        return {r[0]: r[1] for r in rows}

    async def visible_users(self, viewer: str, candidates: list[str]) -> set[str]:
        if not candidates:
            return set()
        rows = await self._db.retryable(lambda c: c.fetch(_VISIBLE_USERS, viewer, candidates))
        return {r[0] for r in rows}

    async def enroll_device(
        self, code_hash: bytes, sign_pk: bytes, box_pk: bytes, label: str, now: int, max_devices: int
    ) -> Device:
        device_id = new_device_id()

        async def run(conn: asyncpg.Connection) -> Device:
            user_id = await conn.fetchval(
                "UPDATE enrollment_codes SET used_at = $1 "
                "WHERE code_hash = $2 AND used_at IS NULL AND expires_at > $1 RETURNING user_id",
                now,
                code_hash,
            )
            if user_id is None:
                raise CodeInvalid("unknown, used or expired code")
            # The user's row lock: two enrollments at once count each other.
            await conn.execute("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE", user_id)
            active = await conn.fetchval(
                "SELECT count(*) FROM devices WHERE user_id = $1 AND revoked_at IS NULL", user_id
            )
            if active >= max_devices:  # rolls back the use of the code
                raise DeviceLimit(f"{user_id} has {max_devices} active devices")
            # A duplicate signing key fails here and rolls back the use of the code.
            await conn.execute(
                f"INSERT INTO devices ({DEVICE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, NULL, FALSE)",
                device_id,
                user_id,
                sign_pk,
                box_pk,
                label,
                now,
            )
            return Device(device_id, user_id, sign_pk, box_pk, label, now)

        return await self._db.write(run)

    async def get_device(self, device_id: str) -> Device | None:
        row = await self._db.retryable(
            lambda c: c.fetchrow(f"SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = $1", device_id)
        )
        return None if row is None else to_device(row)

    async def get_device_user(self, device_id: str) -> tuple[Device | None, User | None]:
        return await self._device_users.get(device_id)

    async def _read_device_users(self, device_ids: list[str]) -> dict[str, tuple[Device | None, User | None]]:
        rows = await self._db.retryable(lambda c: c.fetch(_DEVICE_USERS, device_ids))
        return {row[0]: to_device_user(row) for row in rows}

    async def user_devices(self, user_id: str, include_revoked: bool = False) -> list[Device]:
        active = "" if include_revoked else " AND revoked_at IS NULL"
        rows = await self._db.retryable(
            lambda c: c.fetch(
                f"SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1{active} "
                "ORDER BY created_at, device_id",
                user_id,
            )
        )
        return [to_device(r) for r in rows]

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

        if not await self._db.write(run):
            raise LookupError(f"unknown user {user_id!r}")

    async def set_suspended(self, user_id: str, suspended: bool) -> None:
        await self._update_user(user_id, "suspended", suspended)

    async def _update_user(self, user_id: str, column: str, value: object) -> None:
        """Set one column of a user's row; LookupError if there is none."""
        status = await self._db.write(
            lambda c: c.execute(f"UPDATE users SET {column} = $1 WHERE user_id = $2", value, user_id)
        )
        if not _count(status):
            raise LookupError(f"unknown user {user_id!r}")

    async def revoke_device(self, device_id: str, now: int) -> Device | None:
        async def run(conn: asyncpg.Connection) -> Device | None:
            row = await conn.fetchrow(
                "UPDATE devices SET revoked_at = $1 WHERE device_id = $2 AND revoked_at IS NULL "
                f"RETURNING {DEVICE_COLUMNS}",
                now,
                device_id,
            )
            if row is None:
                return None
            # Rows that an accept batch inserts for the device after this
            # DELETE's snapshot stay until they expire: the hub reads targets
            # from user_devices() before accept, so only a race leaves any.
            await conn.execute("DELETE FROM queue WHERE device_id = $1", device_id)
            await conn.execute("DELETE FROM team_queue WHERE device_id = $1", device_id)
            await conn.execute("DELETE FROM held_queue WHERE device_id = $1", device_id)
            return replace(to_device(row), revoked=False)  # as it was

        return await self._db.write(run)

    async def search_users(self, query: str, limit: int) -> list[User]:
        if not searchable(query, limit):
            return []
        async with self._searches:
            rows = await self._db.retryable(
                lambda c: c.fetch(_SEARCH_USERS, like_pattern(query.lower()), limit)
            )
        return [to_user(r) for r in rows]

    async def delete_user(self, user_id: str) -> bool:
        async def run(conn: asyncpg.Connection) -> bool:
            devices = [
                r[0] for r in await conn.fetch("SELECT device_id FROM devices WHERE user_id = $1", user_id)
            ]
            await conn.execute("DELETE FROM queue WHERE device_id = ANY($1::text[])", devices)
            await conn.execute("DELETE FROM team_queue WHERE device_id = ANY($1::text[])", devices)
            await conn.execute("DELETE FROM held_queue WHERE device_id = ANY($1::text[])", devices)
            await conn.execute("DELETE FROM enrollment_codes WHERE user_id = $1", user_id)
            await conn.execute("DELETE FROM contacts WHERE user_a = $1 OR user_b = $1", user_id)
            await conn.execute("DELETE FROM devices WHERE user_id = $1", user_id)
            return bool(_count(await conn.execute("DELETE FROM users WHERE user_id = $1", user_id)))

        return await self._db.write(run)

    # --- organisations and invitations ------------------------------------------

    async def add_organisation(self, name: str, now: int) -> Organisation:
        status = await self._db.write(
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
        rows = await self._db.retryable(
            lambda c: c.fetch('SELECT name, created_at FROM organisations ORDER BY name COLLATE "C"')
        )
        return [Organisation(r[0], r[1]) for r in rows]

    async def invitations(self, now: int) -> list[Invitation]:
        rows = await self._db.retryable(
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
        await self._db.write(lambda c: c.execute(_INSERT_AUDIT, *columns))

    async def audit_log(self, **filters: Unpack[AuditFilter]) -> list[AuditEvent]:
        """:meth:`Store.audit_log <.base.Store.audit_log>`; ``actions=[]`` matches nothing."""
        query = POSTGRES.audit_query(filters)
        if query is None:
            return []
        rows = await self._db.retryable(lambda c: c.fetch(query.sql, *query.args))
        return query.events(rows)

    # --- messages -----------------------------------------------------------

    def _committer(self) -> GroupCommit:
        if self._group_commit is None:
            raise StoreUnavailable("store is closed")
        return self._group_commit

    async def accept(self, message: NewMessage) -> AcceptResult:
        return await self._committer().accept(message)

    async def pending(self, device_id: str, after_seq: int, limit: int, now: int) -> list[Queued]:
        return await self._pages.get(Page(device_id, after_seq, limit, now))

    async def _read_pages(self, pages: list[Page]) -> dict[Page, list[Queued]]:
        devices, after, now, limits = (
            [p.device_id for p in pages],
            [p.after_seq for p in pages],
            [p.now for p in pages],
            [p.limit for p in pages],
        )
        rows = await self._db.retryable(lambda c: c.fetch(teams.PENDING_MANY, devices, after, now, limits))
        found: dict[Page, list[Queued]] = {page: [] for page in pages}
        for r in rows:
            found[pages[r[0] - 1]].append(teams.to_queued_row(r))
        return found

    async def ack(
        self, device_id: str, seqs: list[int], now: int, expires_at: int, refused: Refusals | None = None
    ) -> list[Queued]:
        return await self._committer().ack(device_id, seqs, now, expires_at, refused or {})

    async def expire(self, now: int) -> int:
        """Delete in statements of at most ``EXPIRE_BATCH`` rows, each its own
        short transaction. If interrupted, what was deleted stays deleted."""
        deleted = 0
        for table, sql in {**_EXPIRE, **oncall.EXPIRE_ONCALL, **teams.EXPIRE_TEAM}.items():

            async def run(conn: asyncpg.Connection, sql: str = sql) -> str:
                return str(await conn.execute(sql, now, EXPIRE_BATCH))

            while True:
                n = int((await self._db.retryable(run)).split()[-1])  # status "DELETE n"
                if table in ("queue", "team_queue"):
                    deleted += n
                if n < EXPIRE_BATCH:
                    break
        return deleted

    async def count_pending(self, device_id: str) -> int:
        return int(
            await self._db.retryable(
                lambda c: c.fetchval(
                    "SELECT (SELECT count(*) FROM queue WHERE device_id = $1) "
                    "+ (SELECT count(*) FROM team_queue WHERE device_id = $1)",
                    device_id,
                )
            )
        )

    # --- care teams (SPEC §13; postgres_teams.py) ----------------------------------

    async def append_team_record(
        self, state: TeamInfo, record: TeamRecordRow, *, joining: tuple[str, ...], max_teams: int
    ) -> TeamAppend:
        return await self._db.write(
            lambda c: teams.append_team_record(c, state, record, tuple(joining), max_teams)
        )

    async def team_info(self, team: str) -> TeamInfo | None:
        return await self._db.retryable(lambda c: teams.team_info(c, team))

    async def team_records(
        self, team: str, from_seq: int, max_bytes: int
    ) -> tuple[list[TeamRecordRow], bool]:
        return await self._db.retryable(lambda c: teams.team_records(c, team, from_seq, max_bytes))

    async def user_teams(self, user_id: str, limit: int) -> list[tuple[str, int, bytes]]:
        return await self._db.retryable(lambda c: teams.user_teams(c, user_id, limit))

    async def list_teams(self) -> list[TeamInfo]:
        return await self._db.retryable(teams.list_teams)

    async def accept_team(self, message: NewTeamMessage) -> AcceptResult:
        if message.held or message.plan is not None:
            return await self._db.write(lambda c: oncall.accept_urgent(c, message))
        return await self._db.write(lambda c: teams.accept_team(c, message))

    async def recall(self, sender_user: str, message_id: bytes) -> int:
        async def run(conn: asyncpg.Connection) -> int:
            held = await oncall.recall_oncall(conn, sender_user, message_id)
            return held + await teams.recall(conn, sender_user, message_id)

        return await self._db.write(run)

    async def has_sent(self, sender_user: str, message_id: bytes) -> bool:
        row = await self._db.retryable(
            lambda c: c.fetchval(
                "SELECT 1 FROM accepted_ids WHERE sender_user = $1 AND message_id = $2",
                sender_user,
                message_id,
            )
        )
        return row is not None

    async def stored_bytes(self, sender_user: str, message_id: bytes) -> int:
        return await self._db.retryable(lambda c: teams.stored_bytes(c, sender_user, message_id))
