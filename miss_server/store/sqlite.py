"""The embedded Store: one SQLite file in WAL mode.

Theory of operation
-------------------
SQLite calls block, so none runs on the event loop. Two threads each own one
connection:

* the **writer** runs every write. When it wakes, no sooner than
  ``COMMIT_INTERVAL`` (``base.py``) after its previous commit, it takes
  every job waiting (up to ``MAX_BATCH``), runs them in one ``BEGIN
  IMMEDIATE`` transaction and commits once: group commit (if a job fails,
  the batch is rolled back and each job runs again in a transaction of its
  own, so that it fails alone). A job's future resolves only after that
  ``COMMIT`` returned, with ``synchronous=FULL``, so "accepted" always
  means "on disk" while a busy hub pays one fsync per batch rather than
  per message.
* the **reader** runs reads, which WAL lets proceed beside the writer;
* the **searcher** runs directory searches (SPEC §11.3), on a thread of
  their own so that one device searching at its budget never delays the
  reads that authentications and lookups wait for.

Other processes (``miss-admin`` while the hub runs) share the file; the busy
timeout makes them wait for the lock rather than fail.

The file holds ciphertext, but also who wrote to whom: it is created private
to its owner (directory 0700, database 0600, and so SQLite's -wal and -shm
files, which take the database's mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from protocol.frames import STATUSES

from . import migrations as migration_files
from .base import (
    COMMIT_INTERVAL,
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

__all__ = ["SQLiteStore"]

T = TypeVar("T")
Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]

MAX_BATCH = 512
BUSY_TIMEOUT_MS = 5000
DIALECT = "sqlite"

_QUEUED_COLUMNS = "seq, device_id, kind, message_id, peer_user, peer_device, ts, payload"


def _queued(row: tuple[Any, ...]) -> Queued:
    return Queued(row[0], row[1], Kind(row[2]), row[3], row[4], row[5], row[6], row[7])


def _user(row: tuple[Any, ...] | None) -> User | None:
    if row is None:
        return None
    return User(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]), row[7], row[8])


def _device(row: tuple[Any, ...]) -> Device:
    return Device(row[0], row[1], row[2], row[3], row[4], row[5], row[6] is not None, bool(row[7]))


def _audit_event(row: tuple[Any, ...]) -> AuditEvent:
    return AuditEvent(row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[0])


_USER_COLUMNS = "user_id, name, rpps, profession, organisation, created_at, suspended, status, attestation"
_DEVICE_COLUMNS = "device_id, user_id, sign_pk, box_pk, label, created_at, revoked_at, attested"
_AUDIT_COLUMNS = "seq, at, actor, action, user_id, device_id, address, detail"


# Lists of ids travel as one JSON array (json_each): one statement and one
# parameter whatever their length. Candidates are found by primary key, then
# kept if the viewer is them, shares their organisation, or is their contact:
# the viewer's contacts are read once (primary key, contacts_by_b), not
# looked up per candidate.
_VISIBLE_USERS = """
SELECT u.user_id FROM users u
WHERE u.user_id IN (SELECT value FROM json_each(:candidates))
  AND (u.user_id = :viewer
       OR (u.organisation <> '' AND u.organisation = (SELECT organisation FROM users WHERE user_id = :viewer))
       OR u.user_id IN (SELECT user_b FROM contacts WHERE user_a = :viewer
                        UNION ALL
                        SELECT user_a FROM contacts WHERE user_b = :viewer))"""

# The directory (migration 0005). A query that matches many users is best
# served by walking the directory in name order until enough rows match
# (a few hundred rows at most); one that matches few, by the trigram index
# (MATCH, Unicode case folding) and a sort of its matches. A search tries
# the first for DIRECTORY_WALK rows, then falls back to the second.
_DIRECTORY_WALK = """
SELECT u.rowid, s.text FROM users u INDEXED BY users_directory JOIN users_search s ON s.rowid = u.rowid
WHERE u.attestation IS NOT NULL AND NOT u.suspended
ORDER BY u.name, u.user_id
LIMIT :rows"""
_SEARCH_MATCHES = f"""
SELECT {_USER_COLUMNS} FROM users
WHERE rowid IN (SELECT rowid FROM users_search WHERE users_search MATCH :q)
  AND attestation IS NOT NULL AND NOT suspended
ORDER BY name, user_id
LIMIT :limit"""
_USERS_BY_ROWID = f"""
SELECT {_USER_COLUMNS} FROM users WHERE rowid IN (SELECT value FROM json_each(:rowids))
ORDER BY name, user_id"""
#: Directory rows a search walks before it asks the trigram index instead.
DIRECTORY_WALK = 600

# Places a user holds under the device cap (SPEC §5.3): active devices and
# unused, unexpired link codes.
_PLACES_TAKEN = """
SELECT (SELECT count(*) FROM devices WHERE user_id = :user AND revoked_at IS NULL)
     + (SELECT count(*) FROM enrollment_codes
        WHERE user_id = :user AND link AND used_at IS NULL AND expires_at > :now)"""


class _Conn(sqlite3.Connection):
    """A connection that remembers facts that never change once written, so
    the hot path skips reading them again: which user owns a device, and
    which pairs of users are already contacts. Only its own thread uses it;
    a rolled-back transaction forgets what it may have taught it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owners: dict[str, str] = {}
        self.contacts: set[tuple[str, str]] = set()

    def forget(self) -> None:
        self.contacts.clear()


def _make_private(path: Path) -> None:
    """Create the database file 0600, in a new directory 0700 if it has none
    yet; an existing file readable by others is made 0600. An existing
    directory is left as it is (it may be the operator's working directory)."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)  # mkdir's mode is filtered by the umask
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        with contextlib.suppress(OSError):  # a file we do not own: leave it
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)


def _connect(path: Path) -> _Conn:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, factory=_Conn)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


class _DbThread:
    """One connection, one thread, jobs in submission order (see module doc)."""

    def __init__(self, path: Path, name: str, group_commit: bool) -> None:
        self._path = path
        self._group_commit = group_commit
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.stats = GroupCommitStats()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise StoreUnavailable(f"cannot open {self._path}: {self._error}")

    def stop(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        assert self._loop is not None, "store not opened"
        fut: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((fn, args, fut))
        return fut

    def _run(self) -> None:
        try:
            conn = _connect(self._path)
        except Exception as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        last_commit = 0.0
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                batch = [job]
                stop = False
                if self._group_commit:
                    pause = last_commit + COMMIT_INTERVAL - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    while len(batch) < MAX_BATCH:
                        try:
                            nxt = self._jobs.get_nowait()
                        except queue.Empty:
                            break
                        if nxt is None:
                            stop = True
                            break
                        batch.append(nxt)
                results = self._run_batch(conn, batch) if self._group_commit else self._run_one(conn, job)
                if self._group_commit:
                    last_commit = time.monotonic()
                    self.stats.transactions += 1
                    self.stats.calls += len(batch)
                assert self._loop is not None
                if not self._loop.is_closed():
                    self._loop.call_soon_threadsafe(_resolve_all, results)
                if stop:
                    return
        finally:
            conn.close()

    @staticmethod
    def _run_one(conn: sqlite3.Connection, job: Job) -> list[tuple[asyncio.Future[Any], Any, Any]]:
        fn, args, fut = job
        try:
            return [(fut, fn(conn, *args), None)]
        except Exception as exc:
            return [(fut, None, _translate(exc))]

    @staticmethod
    def _run_batch(conn: _Conn, batch: list[Job]) -> list[tuple[asyncio.Future[Any], Any, Any]]:
        """All jobs in one transaction. If one fails, the transaction is
        rolled back and each job runs again in its own, so that one bad job
        fails alone (the rare path; the common one pays no savepoints)."""
        results: list[tuple[asyncio.Future[Any], Any, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, args, fut in batch:
                results.append((fut, fn(conn, *args), None))
            conn.execute("COMMIT")
            return results
        except Exception as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            conn.forget()
            if len(batch) == 1 or not isinstance(exc, _JOB_ERRORS):
                err = _translate(exc)
                return [(fut, None, err) for _, _, fut in batch]
        return [_DbThread._run_alone(conn, job) for job in batch]

    @staticmethod
    def _run_alone(conn: _Conn, job: Job) -> tuple[asyncio.Future[Any], Any, Any]:
        fn, args, fut = job
        try:
            conn.execute("BEGIN IMMEDIATE")
            value = fn(conn, *args)
            conn.execute("COMMIT")
            return (fut, value, None)
        except Exception as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            conn.forget()
            return (fut, None, _translate(exc))


#: Failures that belong to one job (its input), not to the database.
_JOB_ERRORS = (sqlite3.IntegrityError, CodeInvalid, ValueError)


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.IntegrityError):
        return ValueError(str(exc))
    if isinstance(exc, sqlite3.Error):
        return StoreUnavailable(f"{type(exc).__name__}: {exc}")
    return exc


def _resolve_all(results: list[tuple[asyncio.Future[Any], Any, Any]]) -> None:
    for fut, value, err in results:
        if fut.done():  # the awaiting task was cancelled
            continue
        if err is not None:
            fut.set_exception(err)
        else:
            fut.set_result(value)


class SQLiteStore:
    """Store on one SQLite file (see :class:`~miss_server.store.base.Store`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._writer: _DbThread | None = None
        self._reader: _DbThread | None = None
        self._searcher: _DbThread | None = None

    @property
    def group_commit_stats(self) -> GroupCommitStats:
        """The writer's batching (its transactions count failed ones too)."""
        return self._writer.stats if self._writer is not None else GroupCommitStats()

    # --- life cycle ---------------------------------------------------------

    async def _start(self) -> None:
        if self._writer is not None:
            return
        if not self.path.exists():  # sqlite3 would create an empty one
            raise SchemaMismatch(f"no store at {self.path}: create one with `miss-admin migrate`")
        loop = asyncio.get_running_loop()
        threads = (
            _DbThread(self.path, "sqlite-writer", group_commit=True),
            _DbThread(self.path, "sqlite-reader", group_commit=False),
            _DbThread(self.path, "sqlite-searcher", group_commit=False),
        )
        for thread in threads:
            await asyncio.to_thread(thread.start, loop)
        self._writer, self._reader, self._searcher = threads

    async def open(self) -> None:
        await self._start()
        version = await self._read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
        latest = migration_files.latest_version(DIALECT)
        if version != latest:
            await self.close()
            raise SchemaMismatch(
                f"{self.path} has schema version {version}, this hub needs {latest}: run `miss-admin migrate`"
                if version < latest
                else f"{self.path} has schema version {version}, newer than this hub knows ({latest})"
            )

    async def migrate(self) -> int:
        """Create the file if needed (private: module doc) and bring its
        schema to the newest version."""
        await asyncio.to_thread(_make_private, self.path)
        return await asyncio.to_thread(_migrate, self.path)

    async def close(self) -> None:
        for thread in (self._writer, self._reader, self._searcher):
            if thread is not None:
                await asyncio.to_thread(thread.stop)
        self._writer = self._reader = self._searcher = None

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        if self._reader is None:
            raise StoreUnavailable("store is closed")
        return await self._reader.submit(fn, *args)

    async def _search(self, fn: Callable[..., T], *args: Any) -> T:
        if self._searcher is None:
            raise StoreUnavailable("store is closed")
        return await self._searcher.submit(fn, *args)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        if self._writer is None:
            raise StoreUnavailable("store is closed")
        return await self._writer.submit(fn, *args)

    # --- accounts and devices -------------------------------------------------

    async def create_user(self, name: str, rpps: str, profession: str, organisation: str, now: int) -> User:
        user = User("u_" + secrets.token_hex(8), name, rpps, profession, organisation, now)

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 0, ?, NULL)",
                (user.user_id, name, rpps, profession, organisation, now, user.status),
            )

        await self._write(run)
        return user

    async def get_user(self, user_id: str) -> User | None:
        return await self._read(
            lambda c: _user(
                c.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = ?", (user_id,)).fetchone()
            )
        )

    async def find_user_by_rpps(self, rpps: str) -> User | None:
        return await self._read(
            lambda c: _user(
                c.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE rpps = ?", (rpps,)).fetchone()
            )
        )

    async def list_users(self) -> list[User]:
        def run(conn: sqlite3.Connection) -> list[User]:
            rows = conn.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY name, user_id").fetchall()
            return [u for u in map(_user, rows) if u is not None]

        return await self._read(run)

    async def add_enrollment_code(self, user_id: str, code_hash: bytes, expires_at: int) -> None:
        await self._write(
            lambda c: c.execute(
                "INSERT INTO enrollment_codes (code_hash, user_id, expires_at) VALUES (?, ?, ?)",
                (code_hash, user_id, expires_at),
            )
        )

    async def add_link_code(
        self, user_id: str, code_hash: bytes, expires_at: int, now: int, max_devices: int
    ) -> None:
        def run(conn: sqlite3.Connection) -> bool:
            taken = conn.execute(_PLACES_TAKEN, {"user": user_id, "now": now}).fetchone()[0]
            if taken >= max_devices:
                return False
            conn.execute(
                "INSERT INTO enrollment_codes (code_hash, user_id, expires_at, link) VALUES (?, ?, ?, 1)",
                (code_hash, user_id, expires_at),
            )
            return True

        # Refused here, not in the writer, so that it cannot fail the batch it rode in.
        if not await self._write(run):
            raise DeviceLimit(f"{user_id} has {max_devices} devices and link codes")

    async def set_status(self, user_id: str, status: str) -> None:
        """Unknown ``user_id``: nothing is written. Raises ValueError for a
        status not in ``protocol.frames.STATUSES``."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        await self._write(
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

        return await self._read(run)

    async def visible_users(self, viewer: str, candidates: list[str]) -> set[str]:
        if not candidates:
            return set()

        def run(conn: sqlite3.Connection) -> set[str]:
            rows = conn.execute(_VISIBLE_USERS, {"viewer": viewer, "candidates": json.dumps(candidates)})
            return {r[0] for r in rows}

        return await self._read(run)

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

        def run(conn: sqlite3.Connection) -> Device | None:
            row = conn.execute(
                "SELECT user_id FROM enrollment_codes "
                "WHERE code_hash = ? AND used_at IS NULL AND expires_at > ?",
                (code_hash, now),
            ).fetchone()
            if row is None:
                raise CodeInvalid("unknown, used or expired code")
            if max_devices is not None:
                active = conn.execute(
                    "SELECT count(*) FROM devices WHERE user_id = ? AND revoked_at IS NULL", (row[0],)
                ).fetchone()[0]
                if active >= max_devices:
                    return None
            conn.execute("UPDATE enrollment_codes SET used_at = ? WHERE code_hash = ?", (now, code_hash))
            conn.execute(
                f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL, 0)",
                (device_id, row[0], sign_pk, box_pk, label, now),
            )
            return Device(device_id, row[0], sign_pk, box_pk, label, now)

        device = await self._write(run)
        if device is None:  # raised here, not in the writer: the batch it rode in commits
            raise DeviceLimit(f"the code's user has {max_devices} active devices")
        return device

    async def get_device(self, device_id: str) -> Device | None:
        def run(conn: sqlite3.Connection) -> Device | None:
            row = conn.execute(
                f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE device_id = ?", (device_id,)
            ).fetchone()
            return None if row is None else _device(row)

        return await self._read(run)

    async def user_devices(self, user_id: str, include_revoked: bool = False) -> list[Device]:
        active = "" if include_revoked else " AND revoked_at IS NULL"

        def run(conn: sqlite3.Connection) -> list[Device]:
            rows = conn.execute(
                f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE user_id = ?{active} "
                "ORDER BY created_at, device_id",
                (user_id,),
            ).fetchall()
            return [_device(r) for r in rows]

        return await self._read(run)

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

        if not await self._write(run):
            raise LookupError(f"unknown user {user_id!r}")

    async def set_suspended(self, user_id: str, suspended: bool) -> None:
        await self._update_user(user_id, "suspended", int(suspended))

    async def _update_user(self, user_id: str, column: str, value: Any) -> None:
        """Set one column of a user's row. An unknown user makes the UPDATE
        write nothing, and LookupError is raised here, not in the writer, so
        that it cannot fail the batch it rode in."""

        def run(conn: sqlite3.Connection) -> int:
            return int(
                conn.execute(f"UPDATE users SET {column} = ? WHERE user_id = ?", (value, user_id)).rowcount
            )

        if not await self._write(run):
            raise LookupError(f"unknown user {user_id!r}")

    async def revoke_device(self, device_id: str, now: int) -> Device | None:
        def run(conn: sqlite3.Connection) -> Device | None:
            row = conn.execute(
                "UPDATE devices SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL "
                f"RETURNING {_DEVICE_COLUMNS}",
                (now, device_id),
            ).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM queue WHERE device_id = ?", (device_id,))
            # _Conn's caches stay true: a revoked device keeps its owner (_ack
            # finds nothing left to delete), and contacts are between users.
            # user_devices() reads the table, never a cache. An accept whose
            # targets were read before this commit may still queue rows for
            # the device; they stay until they expire (accept does not check).
            return Device(
                row[0], row[1], row[2], row[3], row[4], row[5], revoked=False, attested=bool(row[7])
            )

        return await self._write(run)

    async def search_users(self, query: str, limit: int) -> list[User]:
        if limit <= 0 or len(query) < SEARCH_MIN_CHARS or SEARCH_SEPARATOR in query:
            return []
        folded = query.lower()

        def run(conn: sqlite3.Connection) -> list[User]:
            found, walked = [], 0
            for rowid, text in conn.execute(_DIRECTORY_WALK, {"rows": DIRECTORY_WALK}):
                walked += 1
                if folded in text.lower():
                    found.append(rowid)
                    if len(found) == limit:
                        break
            else:
                if walked == DIRECTORY_WALK:  # the directory goes on: few match, ask the index
                    phrase = '"' + query.replace('"', '""') + '"'
                    rows = conn.execute(_SEARCH_MATCHES, {"q": phrase, "limit": limit}).fetchall()
                    return [u for u in map(_user, rows) if u is not None]
            rows = conn.execute(_USERS_BY_ROWID, {"rowids": json.dumps(found)}).fetchall()
            return [u for u in map(_user, rows) if u is not None]

        return await self._search(run)

    async def delete_user(self, user_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            devices = [
                d for (d,) in conn.execute("SELECT device_id FROM devices WHERE user_id = ?", (user_id,))
            ]
            conn.execute(
                "DELETE FROM queue WHERE device_id IN (SELECT value FROM json_each(?))",
                (json.dumps(devices),),
            )
            conn.execute("DELETE FROM enrollment_codes WHERE user_id = ?", (user_id,))
            conn.execute("DELETE FROM contacts WHERE user_a = ? OR user_b = ?", (user_id, user_id))
            conn.execute("DELETE FROM devices WHERE user_id = ?", (user_id,))
            return bool(conn.execute("DELETE FROM users WHERE user_id = ?", (user_id,)).rowcount)

        return await self._write(run)

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
        if not await self._write(run):
            raise ValueError(f"organisation {name!r} exists")
        return Organisation(name, now)

    async def list_organisations(self) -> list[Organisation]:
        return await self._read(
            lambda c: [
                Organisation(*row)
                for row in c.execute("SELECT name, created_at FROM organisations ORDER BY name")
            ]
        )

    async def invitations(self, now: int) -> list[Invitation]:
        return await self._read(
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
        await self._write(
            lambda c: c.executemany(
                "INSERT INTO audit_log (at, actor, action, user_id, device_id, address, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        )

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
        where: list[str] = ["at >= ?", "seq > ?"]
        params: list[object] = [since_at, after_seq]
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        if actions is not None:
            where.append("action IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(actions))
        # The newest (or oldest) ``limit`` that match, handed back oldest first.
        order = "ASC" if oldest else "DESC"
        sql = (
            f"SELECT {_AUDIT_COLUMNS} FROM audit_log WHERE {' AND '.join(where)} ORDER BY seq {order} LIMIT ?"
        )
        params.append(limit)

        def run(conn: sqlite3.Connection) -> list[AuditEvent]:
            rows = conn.execute(sql, params).fetchall()
            return [_audit_event(r) for r in (rows if oldest else reversed(rows))]

        return await self._read(run)

    # --- messages -----------------------------------------------------------

    async def accept(self, message: NewMessage) -> AcceptResult:
        return await self._write(_accept, message)

    async def pending(self, device_id: str, after_seq: int, limit: int, now: int) -> list[Queued]:
        def run(conn: sqlite3.Connection) -> list[Queued]:
            rows = conn.execute(
                f"SELECT {_QUEUED_COLUMNS} FROM queue "
                "WHERE device_id = ? AND seq > ? AND expires_at > ? ORDER BY seq LIMIT ?",
                (device_id, after_seq, now, limit),
            ).fetchall()
            return [_queued(r) for r in rows]

        return await self._read(run)

    async def ack(
        self,
        device_id: str,
        seqs: list[int],
        now: int,
        expires_at: int,
        refused: dict[int, str] | None = None,
    ) -> list[Queued]:
        return await self._write(_ack, device_id, seqs, now, expires_at, dict(refused or {}))

    async def expire(self, now: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            n = conn.execute("DELETE FROM queue WHERE expires_at <= ?", (now,)).rowcount
            conn.execute("DELETE FROM accepted_ids WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM enrollment_codes WHERE expires_at <= ?", (now,))
            return int(n)

        return await self._write(run)

    async def count_pending(self, device_id: str) -> int:
        return await self._read(
            lambda c: int(
                c.execute("SELECT count(*) FROM queue WHERE device_id = ?", (device_id,)).fetchone()[0]
            )
        )


def _migrate(path: Path) -> int:
    """Apply every migration newer than the file's ``user_version``."""
    conn = _connect(path)
    try:
        current = int(conn.execute("PRAGMA user_version").fetchone()[0])
        for version, _name, sql in migration_files.migrations(DIALECT):
            if version > current:
                conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;")
                current = version
        return current
    finally:
        conn.close()


def _accept(conn: _Conn, m: NewMessage) -> AcceptResult:
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
    conn: _Conn, device_id: str, seqs: list[int], now: int, expires_at: int, refused: dict[int, str]
) -> list[Queued]:
    """Delete the acked and refused rows; for each message of another user
    that this device's user received, queue a receipt (a refusal, with its
    reason, for a refused row) for each attested active device of the sender."""
    user = conn.owners.get(device_id)
    if user is None:
        owner = conn.execute("SELECT user_id FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        if owner is not None:
            user = conn.owners[device_id] = owner[0]
    rows = conn.execute(
        "DELETE FROM queue WHERE device_id = ? AND seq IN (SELECT value FROM json_each(?)) "
        "RETURNING seq, kind, message_id, peer_user, recipient_user",
        (device_id, json.dumps([*seqs, *refused])),
    ).fetchall()
    if user is None:
        return []
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
