"""The embedded Store: one SQLite file in WAL mode.

Theory of operation
-------------------
SQLite calls block, so none runs on the event loop: every call is a job
for one of the three threads of ``sqlite_threads.py``, the writer (every
write, by group commit: "accepted" means "on disk"), the reader, or the
searcher (``sqlite_directory.py``). This module holds what the jobs do: the
statements, and in :func:`_accept` and :func:`_ack` the embedded store's
statement of the rules of accept() and ack(), which PostgreSQL states in
its function ``miss_group_commit``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import migrations
from . import sqlite_oncall as oncall
from . import sqlite_teams as teams
from .base import (
    AcceptResult,
    CodeInvalid,
    Device,
    DeviceLimit,
    Invitation,
    Kind,
    Organisation,
    Queued,
    SchemaMismatch,
    User,
)
from .batched_reads import BatchedReads, Page
from .common import (
    AuditFilter,
    SqlDialect,
    attested_keys,
    check_status,
    new_device_id,
    new_user_id,
    searchable,
)
from .rows import DEVICE_COLUMNS, NO_DEVICE, USER_COLUMNS, to_device, to_device_user, to_user
from .services import SQLiteServices
from .sqlite_directory import search_directory
from .sqlite_threads import DIALECT, Conn, Threads, make_private, migrate

if TYPE_CHECKING:  # names the type checker alone needs
    from typing_extensions import Unpack

    from .base import (
        AuditEvent,
        GroupCommitStats,
        NewMessage,
        NewTeamMessage,
        Refusals,
        TeamAppend,
        TeamInfo,
        TeamRecordRow,
    )

__all__ = ["SQLiteStore"]

#: Numbered parameters (``?1``), and lists as one JSON array (json_each):
#: one statement and one parameter whatever their length.
SQLITE = SqlDialect(
    param=lambda n: f"?{n}",
    one_of=lambda column, param: f"{column} IN (SELECT value FROM json_each({param}))",
    strings=json.dumps,
)

_VISIBLE_USERS = SQLITE.visible_users()
_PLACES_TAKEN = SQLITE.places_taken()
_DEVICE_USERS = SQLITE.device_users()


def _user_where(conn: sqlite3.Connection, column: str, value: str) -> User | None:
    """The user whose ``column`` (a unique one) holds ``value``."""
    row = conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE {column} = ?", (value,)).fetchone()
    return None if row is None else to_user(row)


class SQLiteStore(oncall.SQLiteOncall, SQLiteServices):
    """Store on one SQLite file (see :class:`~miss_server.store.base.Store`);
    on-call roles and urgent messages in ``sqlite_oncall.py``, service
    accounts in ``services.py``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = Threads(self.path)
        #: Authentications' reads, one reader job per turn of the loop (batched_reads.py).
        self._device_users = BatchedReads(self._read_device_users, NO_DEVICE)
        #: Drains' pages, one reader job per turn (a storm's first pages).
        self._pages: BatchedReads[Page, list[Queued]] = BatchedReads(self._read_pages, [])

    @property
    def group_commit_stats(self) -> GroupCommitStats:
        """The writer's batching (its transactions count failed ones too)."""
        return self._db.stats

    # --- life cycle ---------------------------------------------------------

    async def open(self) -> None:
        await self._db.start()
        version = await self._db.read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
        latest = migrations.latest_version(DIALECT)
        if version != latest:
            await self.close()
            raise SchemaMismatch(
                f"{self.path} has schema version {version}, this hub needs {latest}: run `miss-admin migrate`"
                if version < latest
                else f"{self.path} has schema version {version}, newer than this hub knows ({latest})"
            )

    async def migrate(self) -> int:
        """Create the file if needed (private to its owner:
        :func:`.sqlite_threads.make_private`) and bring its schema to the
        newest version."""
        await asyncio.to_thread(make_private, self.path)
        return await asyncio.to_thread(migrate, self.path)

    async def close(self) -> None:
        await self._db.stop()

    async def ping(self) -> None:
        await self._db.read(lambda c: c.execute("SELECT 1").fetchone())

    # --- accounts and devices -------------------------------------------------

    async def create_user(self, name: str, rpps: str, profession: str, organisation: str, now: int) -> User:
        user = User(new_user_id(), name, rpps, profession, organisation, now)

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO users ({USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 0, ?, NULL, 0, 1)",
                (user.user_id, name, rpps, profession, organisation, now, user.status),
            )

        await self._db.write(run)
        return user

    async def get_user(self, user_id: str) -> User | None:
        return await self._db.read(_user_where, "user_id", user_id)

    async def get_account(self, user_id: str) -> tuple[User | None, list[Device]]:
        def run(conn: sqlite3.Connection) -> tuple[User | None, list[Device]]:
            user = _user_where(conn, "user_id", user_id)
            if user is None:
                return None, []
            rows = conn.execute(
                f"SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = ? AND revoked_at IS NULL "
                "ORDER BY created_at, device_id",
                (user_id,),
            ).fetchall()
            return user, [to_device(r) for r in rows]

        return await self._db.read(run)

    async def find_user_by_rpps(self, rpps: str) -> User | None:
        return await self._db.read(_user_where, "rpps", rpps)

    async def list_users(self) -> list[User]:
        def run(conn: sqlite3.Connection) -> list[User]:
            rows = conn.execute(f"SELECT {USER_COLUMNS} FROM users ORDER BY name, user_id").fetchall()
            return [to_user(r) for r in rows]

        return await self._db.read(run)

    async def add_enrollment_code(self, user_id: str, code_hash: bytes, expires_at: int) -> None:
        await self._db.write(
            lambda c: c.execute(
                "INSERT INTO enrollment_codes (code_hash, user_id, expires_at) VALUES (?, ?, ?)",
                (code_hash, user_id, expires_at),
            )
        )

    async def add_link_code(
        self, user_id: str, code_hash: bytes, expires_at: int, now: int, max_devices: int
    ) -> None:
        def run(conn: sqlite3.Connection) -> bool:
            taken = conn.execute(_PLACES_TAKEN, (user_id, now)).fetchone()[0]
            if taken >= max_devices:
                return False
            conn.execute(
                "INSERT INTO enrollment_codes (code_hash, user_id, expires_at, link) VALUES (?, ?, ?, 1)",
                (code_hash, user_id, expires_at),
            )
            return True

        # Refused here, not in the writer, so that it cannot fail the batch it rode in.
        if not await self._db.write(run):
            raise DeviceLimit(f"{user_id} has {max_devices} devices and link codes")

    async def set_status(self, user_id: str, status: str) -> None:
        check_status(status)  # first: for an unknown user the UPDATE writes nothing, and no CHECK fails
        await self._db.write(
            lambda c: c.execute("UPDATE users SET status = ? WHERE user_id = ?", (status, user_id))
        )

    async def statuses(self, user_ids: list[str]) -> dict[str, str]:
        if not user_ids:
            return {}

        def run(conn: sqlite3.Connection) -> dict[str, str]:
            rows = conn.execute(
                "SELECT user_id, status FROM users WHERE user_id IN (SELECT value FROM json_each(?))",
                (json.dumps(user_ids),),
            ).fetchall()
            return dict(rows)

        return await self._db.read(run)

    async def visible_users(self, viewer: str, candidates: list[str]) -> set[str]:
        if not candidates:
            return set()

        def run(conn: sqlite3.Connection) -> set[str]:
            rows = conn.execute(_VISIBLE_USERS, (viewer, json.dumps(candidates)))
            return {r[0] for r in rows}

        return await self._db.read(run)

    async def enroll_device(
        self, code_hash: bytes, sign_pk: bytes, box_pk: bytes, label: str, now: int, max_devices: int
    ) -> Device:
        device_id = new_device_id()

        def run(conn: sqlite3.Connection) -> Device | None:
            row = conn.execute(
                "SELECT user_id FROM enrollment_codes "
                "WHERE code_hash = ? AND used_at IS NULL AND expires_at > ?",
                (code_hash, now),
            ).fetchone()
            if row is None:
                raise CodeInvalid("unknown, used or expired code")
            active = conn.execute(
                "SELECT count(*) FROM devices WHERE user_id = ? AND revoked_at IS NULL", (row[0],)
            ).fetchone()[0]
            if active >= max_devices:
                return None
            conn.execute("UPDATE enrollment_codes SET used_at = ? WHERE code_hash = ?", (now, code_hash))
            conn.execute(
                f"INSERT INTO devices ({DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL, 0)",
                (device_id, row[0], sign_pk, box_pk, label, now),
            )
            return Device(device_id, row[0], sign_pk, box_pk, label, now)

        device = await self._db.write(run)
        if device is None:  # raised here, not in the writer: the batch it rode in commits
            raise DeviceLimit(f"the code's user has {max_devices} active devices")
        return device

    async def get_device(self, device_id: str) -> Device | None:
        def run(conn: sqlite3.Connection) -> Device | None:
            row = conn.execute(
                f"SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = ?", (device_id,)
            ).fetchone()
            return None if row is None else to_device(row)

        return await self._db.read(run)

    async def get_device_user(self, device_id: str) -> tuple[Device | None, User | None]:
        return await self._device_users.get(device_id)

    async def _read_device_users(self, device_ids: list[str]) -> dict[str, tuple[Device | None, User | None]]:
        def run(conn: sqlite3.Connection) -> dict[str, tuple[Device | None, User | None]]:
            rows = conn.execute(_DEVICE_USERS, (SQLITE.strings(device_ids),)).fetchall()
            return {row[0]: to_device_user(row) for row in rows}

        return await self._db.read(run)

    async def user_devices(self, user_id: str, include_revoked: bool = False) -> list[Device]:
        active = "" if include_revoked else " AND revoked_at IS NULL"

        def run(conn: sqlite3.Connection) -> list[Device]:
            rows = conn.execute(
                f"SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = ?{active} "
                "ORDER BY created_at, device_id",
                (user_id,),
            ).fetchall()
            return [to_device(r) for r in rows]

        return await self._db.read(run)

    # --- verification, suspension, revocation ----------------------------------

    async def set_attestation(self, user_id: str, attestation: bytes) -> None:
        named = attested_keys(attestation)

        def run(conn: sqlite3.Connection) -> int:
            n = conn.execute(
                "UPDATE users SET attestation = ? WHERE user_id = ?", (attestation, user_id)
            ).rowcount
            for device_id, sign_pk, box_pk, _ in conn.execute(
                "SELECT device_id, sign_pk, box_pk, attested FROM devices WHERE user_id = ?", (user_id,)
            ).fetchall():
                conn.execute(
                    "UPDATE devices SET attested = ? WHERE device_id = ?",
                    (int((device_id, sign_pk, box_pk) in named), device_id),
                )
            return int(n)

        if not await self._db.write(run):
            raise LookupError(f"unknown user {user_id!r}")

    async def set_suspended(self, user_id: str, suspended: bool) -> None:
        await self._update_user(user_id, "suspended", int(suspended))

    async def _update_user(self, user_id: str, column: str, value: object) -> None:
        """Set one column of a user's row. An unknown user makes the UPDATE
        write nothing, and LookupError is raised here, not in the writer, so
        that it cannot fail the batch it rode in."""

        def run(conn: sqlite3.Connection) -> int:
            return int(
                conn.execute(f"UPDATE users SET {column} = ? WHERE user_id = ?", (value, user_id)).rowcount
            )

        if not await self._db.write(run):
            raise LookupError(f"unknown user {user_id!r}")

    async def revoke_device(self, device_id: str, now: int) -> Device | None:
        def run(conn: sqlite3.Connection) -> Device | None:
            row = conn.execute(
                "UPDATE devices SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL "
                f"RETURNING {DEVICE_COLUMNS}",
                (now, device_id),
            ).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM queue WHERE device_id = ?", (device_id,))
            conn.execute("DELETE FROM team_queue WHERE device_id = ?", (device_id,))
            conn.execute("DELETE FROM held_queue WHERE device_id = ?", (device_id,))
            # Conn's caches stay true: a revoked device keeps its owner (_ack
            # finds nothing left to delete), and contacts are between users.
            # user_devices() reads the table, never a cache. An accept whose
            # targets were read before this commit may still queue rows for
            # the device; they stay until they expire (accept does not check).
            return replace(to_device(row), revoked=False)  # as it was

        return await self._db.write(run)

    async def search_users(self, query: str, limit: int) -> list[User]:
        if not searchable(query, limit):
            return []
        return await self._db.search(search_directory, query, limit)

    async def delete_user(self, user_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            devices = [
                d for (d,) in conn.execute("SELECT device_id FROM devices WHERE user_id = ?", (user_id,))
            ]
            for table in ("queue", "team_queue", "held_queue"):
                conn.execute(
                    f"DELETE FROM {table} WHERE device_id IN (SELECT value FROM json_each(?))",
                    (json.dumps(devices),),
                )
            conn.execute("DELETE FROM enrollment_codes WHERE user_id = ?", (user_id,))
            conn.execute("DELETE FROM contacts WHERE user_a = ? OR user_b = ?", (user_id, user_id))
            conn.execute("DELETE FROM devices WHERE user_id = ?", (user_id,))
            return bool(conn.execute("DELETE FROM users WHERE user_id = ?", (user_id,)).rowcount)

        return await self._db.write(run)

    # --- organisations and invitations ------------------------------------------

    async def add_organisation(self, name: str, now: int) -> Organisation:
        def run(conn: sqlite3.Connection) -> int:
            return int(
                conn.execute(
                    "INSERT INTO organisations (name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (name, now),
                ).rowcount
            )

        # A duplicate inserts nothing and fails here, not in the writer's batch.
        if not await self._db.write(run):
            raise ValueError(f"organisation {name!r} exists")
        return Organisation(name, now)

    async def list_organisations(self) -> list[Organisation]:
        return await self._db.read(
            lambda c: [
                Organisation(*row)
                for row in c.execute("SELECT name, created_at FROM organisations ORDER BY name")
            ]
        )

    async def invitations(self, now: int) -> list[Invitation]:
        return await self._db.read(
            lambda c: [
                Invitation(*row)
                for row in c.execute(
                    "SELECT user_id, expires_at FROM enrollment_codes "
                    "WHERE used_at IS NULL AND expires_at > ? ORDER BY expires_at, user_id, code_hash",
                    (now,),
                )
            ]
        )

    # --- audit log ----------------------------------------------------------------

    async def audit(self, events: list[AuditEvent]) -> None:
        if not events:
            return
        rows = [(e.at, e.actor, e.action, e.user_id, e.device_id, e.address, e.detail) for e in events]
        await self._db.write(
            lambda c: c.executemany(
                "INSERT INTO audit_log (at, actor, action, user_id, device_id, address, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        )

    async def audit_log(self, **filters: Unpack[AuditFilter]) -> list[AuditEvent]:
        """:meth:`Store.audit_log <.base.Store.audit_log>`; ``actions=[]`` matches nothing."""
        query = SQLITE.audit_query(filters)
        if query is None:
            return []
        return await self._db.read(lambda c: query.events(c.execute(query.sql, query.args).fetchall()))

    # --- messages -----------------------------------------------------------

    async def accept(self, message: NewMessage) -> AcceptResult:
        return await self._db.write(_accept, message)

    async def pending(self, device_id: str, after_seq: int, limit: int, now: int) -> list[Queued]:
        return await self._pages.get(Page(device_id, after_seq, limit, now))

    async def _read_pages(self, pages: list[Page]) -> dict[Page, list[Queued]]:
        def run(conn: sqlite3.Connection) -> dict[Page, list[Queued]]:
            # One reader job for the turn's pages, a statement each: SQLite
            # has no LATERAL join, and the job's hand-off is what costs.
            found = {}
            for page in pages:
                args = (page.device_id, page.after_seq, page.now, page.limit)
                found[page] = [teams.to_queued_row(r) for r in conn.execute(teams.pending_union, args)]
            return found

        return await self._db.read(run)

    async def ack(
        self, device_id: str, seqs: list[int], now: int, expires_at: int, refused: Refusals | None = None
    ) -> list[Queued]:
        return await self._db.write(_ack, device_id, seqs, now, expires_at, dict(refused or {}))

    async def expire(self, now: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            n = conn.execute("DELETE FROM queue WHERE expires_at <= ?", (now,)).rowcount
            oncall.expire_oncall(conn, now)
            n += teams.expire_team_rows(conn, now)
            conn.execute("DELETE FROM accepted_ids WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM enrollment_codes WHERE expires_at <= ?", (now,))
            return int(n)

        return await self._db.write(run)

    async def count_pending(self, device_id: str) -> int:
        return await self._db.read(
            lambda c: int(
                c.execute(
                    "SELECT (SELECT count(*) FROM queue WHERE device_id = ?1) "
                    "+ (SELECT count(*) FROM team_queue WHERE device_id = ?1)",
                    (device_id,),
                ).fetchone()[0]
            )
        )

    # --- care teams (SPEC §13; sqlite_teams.py) ----------------------------------

    async def append_team_record(
        self, state: TeamInfo, record: TeamRecordRow, *, joining: tuple[str, ...], max_teams: int
    ) -> TeamAppend:
        return await self._db.write(teams.append_team_record, state, record, tuple(joining), max_teams)

    async def team_info(self, team: str) -> TeamInfo | None:
        return await self._db.read(teams.team_info, team)

    async def team_records(
        self, team: str, from_seq: int, max_bytes: int
    ) -> tuple[list[TeamRecordRow], bool]:
        return await self._db.read(teams.team_records, team, from_seq, max_bytes)

    async def user_teams(self, user_id: str, limit: int) -> list[tuple[str, int, bytes]]:
        return await self._db.read(teams.user_teams, user_id, limit)

    async def list_teams(self) -> list[TeamInfo]:
        return await self._db.read(teams.list_teams)

    async def accept_team(self, message: NewTeamMessage) -> AcceptResult:
        if message.held or message.plan is not None:
            return await self._db.write(oncall.accept_urgent, message)
        return await self._db.write(teams.accept_team, message)

    async def recall(self, sender_user: str, message_id: bytes) -> int:
        def run(conn: sqlite3.Connection) -> int:
            return oncall.recall_oncall(conn, sender_user, message_id) + teams.recall(
                conn, sender_user, message_id
            )

        return await self._db.write(run)

    async def has_sent(self, sender_user: str, message_id: bytes) -> bool:
        return await self._db.read(
            lambda c: (
                c.execute(
                    "SELECT 1 FROM accepted_ids WHERE sender_user = ? AND message_id = ?",
                    (sender_user, message_id),
                ).fetchone()
                is not None
            )
        )

    async def stored_bytes(self, sender_user: str, message_id: bytes) -> int:
        return await self._db.read(teams.stored_bytes, sender_user, message_id)


# The rules of accept() and ack() (base.py), as the embedded store states
# them. PostgreSQL states them in its function miss_group_commit
# (migrations/postgres/0007_group_commit_receipts.sql); the two must agree,
# and tests/server/test_store_conformance.py holds both to the same outcomes.


def _accept(conn: Conn, m: NewMessage) -> AcceptResult:
    """Record the message id unless recorded (else a duplicate, storing
    nothing); make sender and recipient contacts (unless one and the same);
    queue one row per envelope."""
    inserted = conn.execute(
        "INSERT OR IGNORE INTO accepted_ids (sender_user, message_id, expires_at) VALUES (?, ?, ?)",
        (m.sender_user, m.message_id, m.expires_at),
    ).rowcount
    if not inserted:
        return AcceptResult(duplicate=True, queued=[])
    if m.sender_user != m.recipient_user:
        # Code point order, which is SQLite's BINARY collation for the CHECK.
        a, b = sorted((m.sender_user, m.recipient_user))
        if (a, b) not in conn.contacts:
            conn.execute("INSERT INTO contacts (user_a, user_b) VALUES (?, ?) ON CONFLICT DO NOTHING", (a, b))
            conn.contacts.add((a, b))
    queued = []
    for device_id, envelope in m.envelopes.items():
        cur = conn.execute(
            "INSERT INTO queue (device_id, kind, message_id, peer_user, peer_device, recipient_user, ts, "
            "expires_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                device_id,
                int(Kind.MESSAGE),
                m.message_id,
                m.sender_user,
                m.sender_device,
                m.recipient_user,
                m.ts,
                m.expires_at,
                envelope,
            ),
        )
        assert cur.lastrowid is not None
        queued.append(m.queued(cur.lastrowid, device_id))
    return AcceptResult(duplicate=False, queued=queued)


def _ack(
    conn: Conn, device_id: str, seqs: list[int], now: int, expires_at: int, refused: dict[int, str]
) -> list[Queued]:
    """Delete the acked and refused rows; for each message of another user
    that this device's user received, queue a receipt (a refusal, with its
    reason, for a refused row) for each attested active device of the sender."""
    user = conn.owners.get(device_id)
    if user is None:
        owner = conn.execute("SELECT user_id FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        if owner is not None:
            user = conn.owners[device_id] = owner[0]
    named = [*seqs, *refused]
    rows = conn.execute(
        "DELETE FROM queue WHERE device_id = ? AND seq IN (SELECT value FROM json_each(?)) "
        "RETURNING seq, kind, message_id, peer_user, recipient_user",
        (device_id, json.dumps(named)),
    ).fetchall()
    if user is None:
        return []
    if len(rows) < len(named):  # seqs are unique over both tables: the rest may be team rows
        # A team row reads as a message from the body's sender to this device's user.
        rows += [(*r[:4], user) for r in teams.ack_team_rows(conn, device_id, named)]
    receipts: list[Queued] = []
    sender_devices: dict[str, list[str]] = {}
    for seq, kind, message_id, sender_user, recipient_user in sorted(rows):
        if kind != Kind.MESSAGE or user != recipient_user or sender_user == recipient_user:
            continue  # a receipt, or a copy for the sender's own device: no receipt
        if sender_user not in sender_devices:
            sender_devices[sender_user] = [
                d
                for (d,) in conn.execute(
                    "SELECT device_id FROM devices WHERE user_id = ? AND revoked_at IS NULL AND attested "
                    "ORDER BY created_at, device_id",
                    (sender_user,),
                )
            ]
        reason = refused.get(seq)
        kind, payload = (Kind.RECEIPT, b"") if reason is None else (Kind.REFUSAL, reason.encode())
        for sender_device in sender_devices[sender_user]:
            cur = conn.execute(
                "INSERT INTO queue (device_id, kind, message_id, peer_user, peer_device, recipient_user, ts, "
                "expires_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sender_device,
                    int(kind),
                    message_id,
                    user,
                    device_id,
                    sender_user,
                    now,
                    expires_at,
                    payload,
                ),
            )
            assert cur.lastrowid is not None
            receipts.append(
                Queued(cur.lastrowid, sender_device, kind, message_id, user, device_id, now, payload)
            )
    return receipts
