"""FilesystemBlobStore: the embedded hub's blobs, one file each (SPEC §16).

Theory of operation
-------------------
The directory (created 0700) holds one file per blob, named by its id (an
id the store made, checked against ``b_`` + 32 hex before any lookup: no
name a client chose ever reaches the file system), created 0600, and
``index.db``, a SQLite file (WAL) with the metadata: who uploaded what, how
many bytes are held, the linked message and its expiry, the devices allowed
to fetch, download tokens (by hash) and the daily counters of the quotas.

Every metadata query and every piece write runs on one thread of the
store's own (:attr:`_thread`), in order: a piece is at most PIECE_MAX bytes
written to the page cache (tens of microseconds), so one thread keeps up
with many uploads and makes each check-then-write atomic without locks.
What may block for long runs elsewhere (``asyncio.to_thread``): the fsync of
a completed blob, and reading ranges for downloads.

Durability: a piece is written to the file, then ``have`` is committed
without a sync (``synchronous = NORMAL``). :meth:`complete` fsyncs the file
and the directory, then commits ``complete`` with a synced WAL; the link,
recall and expiry commits are synced too. After a crash, :meth:`resume`
reports ``min(have, file length)``, so a client resumes from bytes that are
really there; files no row names (a crash between a delete's commit and the
unlinks) are removed by :meth:`open`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .base import (
    BlobNotComplete,
    BlobOffsetMismatch,
    BlobStoreUnavailable,
    Grant,
    Quotas,
    UnknownBlob,
    Upload,
)
from .rules import (
    EXPIRE_BATCH,
    MAX_TOKENS_PER_DEVICE,
    check_piece,
    check_quotas,
    check_range,
    new_blob_id,
    utc_day,
    valid_blob_id,
)

__all__ = ["FilesystemBlobStore"]

T = TypeVar("T")

INDEX = "index.db"
_COMPLETE_SIZE = "SELECT size FROM blobs WHERE blob = ? AND complete"
_VERSION = 1
_SCHEMA = """
CREATE TABLE blobs (
    blob       TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    device     TEXT NOT NULL,
    size       INTEGER NOT NULL,
    have       INTEGER NOT NULL DEFAULT 0,
    complete   INTEGER NOT NULL DEFAULT 0,
    begun_at   INTEGER NOT NULL,
    message_id BLOB,
    expires_at INTEGER
) WITHOUT ROWID;
CREATE INDEX blobs_by_owner ON blobs (owner, message_id, size);
CREATE INDEX blobs_open_by_device ON blobs (device) WHERE NOT complete;
CREATE INDEX blobs_linked_expiry ON blobs (expires_at) WHERE message_id IS NOT NULL;
CREATE INDEX blobs_unlinked_age ON blobs (begun_at) WHERE message_id IS NULL;
CREATE TABLE blob_access (
    blob   TEXT NOT NULL REFERENCES blobs (blob) ON DELETE CASCADE,
    device TEXT NOT NULL,
    PRIMARY KEY (blob, device)
) WITHOUT ROWID;
CREATE TABLE blob_tokens (
    token_hash BLOB PRIMARY KEY,
    blob       TEXT NOT NULL REFERENCES blobs (blob) ON DELETE CASCADE,
    device     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX blob_tokens_by_blob ON blob_tokens (blob);
CREATE INDEX blob_tokens_by_device ON blob_tokens (device, expires_at);
CREATE INDEX blob_tokens_expiry ON blob_tokens (expires_at);
CREATE TABLE blob_days (
    device TEXT NOT NULL,
    day    INTEGER NOT NULL,
    bytes  INTEGER NOT NULL,
    count  INTEGER NOT NULL,
    PRIMARY KEY (device, day)
) WITHOUT ROWID;
CREATE INDEX blob_days_by_day ON blob_days (day);
"""


class FilesystemBlobStore:
    """Blobs as files in ``directory``, metadata in ``directory/index.db`` (module doc)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._thread: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    # --- life cycle -------------------------------------------------------------

    async def open(self) -> None:
        """Create the directory (0700), the index (0600) and its tables if missing;
        remove files no row names. BlobStoreUnavailable if the directory is unusable."""
        if self._thread is not None:
            return
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="miss-blobs")
        try:
            await self._run(self._open_sync)
        except BaseException:
            self._thread.shutdown(wait=False)
            self._thread = None
            raise

    def _open_sync(self) -> None:
        if not self.directory.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)  # mkdir's mode is filtered by the umask
        index = self.directory / INDEX
        with contextlib.suppress(FileExistsError):
            os.close(os.open(index, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        conn = sqlite3.connect(index, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version == 0:
                conn.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nPRAGMA user_version = {_VERSION};\nCOMMIT;")
            elif version != _VERSION:
                raise sqlite3.DatabaseError(f"{index} has version {version}, this hub knows {_VERSION}")
            known = {row[0] for row in conn.execute("SELECT blob FROM blobs")}
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        for entry in os.scandir(self.directory):
            if entry.name.startswith("b_") and entry.name not in known:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(thread, conn.close)
        thread.shutdown(wait=True)

    # --- running work -------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the store's thread; disk and SQLite failures are BlobStoreUnavailable."""
        if self._thread is None:
            raise BlobStoreUnavailable("blob store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        except (sqlite3.Error, OSError) as exc:
            raise BlobStoreUnavailable(
                f"blob store at {self.directory}: {type(exc).__name__}: {exc}"
            ) from exc

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BlobStoreUnavailable("blob store is closed")
        return self._conn

    def _tx(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = False) -> T:
        """``fn`` in one write transaction; with ``durable`` the commit syncs the WAL."""
        conn = self._db()
        if durable:
            conn.execute("PRAGMA synchronous = FULL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                value = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return value
        finally:
            if durable:
                conn.execute("PRAGMA synchronous = NORMAL")

    def _path(self, blob: str) -> Path:
        return self.directory / valid_blob_id(blob)

    def _unlink(self, blobs: Iterable[str]) -> None:
        for blob in blobs:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(blob))

    @staticmethod
    def _own_row(conn: sqlite3.Connection, device: str, blob: str) -> tuple[int, int, bool]:
        row = conn.execute(
            "SELECT size, have, complete FROM blobs WHERE blob = ? AND device = ?", (blob, device)
        ).fetchone()
        if row is None:
            raise UnknownBlob("unknown blob")
        return int(row[0]), int(row[1]), bool(row[2])

    # --- uploads ------------------------------------------------------------------

    async def begin(self, user: str, device: str, size: int, now: int, quotas: Quotas) -> Upload:
        return await self._run(self._begin_sync, user, device, size, now, quotas)

    def _begin_sync(self, user: str, device: str, size: int, now: int, quotas: Quotas) -> Upload:
        blob = new_blob_id()
        day = utc_day(now)

        def work(conn: sqlite3.Connection) -> None:
            counted = conn.execute(
                "SELECT bytes, count FROM blob_days WHERE device = ? AND day = ?", (device, day)
            ).fetchone()
            (open_uploads,) = conn.execute(
                "SELECT count(*) FROM blobs WHERE device = ? AND NOT complete", (device,)
            ).fetchone()
            (stored,) = conn.execute(
                "SELECT coalesce(sum(size), 0) FROM blobs WHERE owner = ?", (user,)
            ).fetchone()
            check_quotas(
                quotas,
                size,
                now,
                day_bytes=counted[0] if counted else 0,
                day_count=counted[1] if counted else 0,
                open_uploads=int(open_uploads),
                stored_bytes=int(stored),
            )
            conn.execute(
                "INSERT INTO blob_days (device, day, bytes, count) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (device, day) DO UPDATE SET bytes = bytes + excluded.bytes, count = count + 1",
                (device, day, size),
            )
            conn.execute(
                "INSERT INTO blobs (blob, owner, device, size, begun_at) VALUES (?, ?, ?, ?, ?)",
                (blob, user, device, size, now),
            )

        self._tx(work)
        os.close(os.open(self._path(blob), os.O_WRONLY | os.O_CREAT, 0o600))
        return Upload(blob, size, 0, False)

    async def resume(self, device: str, blob: str) -> Upload:
        valid_blob_id(blob)
        return await self._run(self._resume_sync, device, blob)

    def _resume_sync(self, device: str, blob: str) -> Upload:
        conn = self._db()
        size, have, complete = self._own_row(conn, device, blob)
        if complete:
            return Upload(blob, size, size, True)
        try:
            length = os.stat(self._path(blob)).st_size
        except FileNotFoundError:
            length = 0
        if length < have:  # a crash lost bytes the index counted: resume from what is there
            have = length
            self._tx(lambda c: c.execute("UPDATE blobs SET have = ? WHERE blob = ?", (have, blob)))
        return Upload(blob, size, have, False)

    async def put(self, device: str, blob: str, off: int, data: bytes) -> Upload:
        valid_blob_id(blob)
        check_piece(off, data)
        return await self._run(self._put_sync, device, blob, off, data)

    def _put_sync(self, device: str, blob: str, off: int, data: bytes) -> Upload:
        conn = self._db()
        size, have, _complete = self._own_row(conn, device, blob)
        if off != have or off + len(data) > size:
            raise BlobOffsetMismatch(have)
        fd = os.open(self._path(blob), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            written = os.pwrite(fd, data, off)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(f"short write: {written} of {len(data)} bytes")
        have = off + len(data)
        self._tx(lambda c: c.execute("UPDATE blobs SET have = ? WHERE blob = ?", (have, blob)))
        return Upload(blob, size, have, False)

    async def complete(self, device: str, blob: str, now: int) -> Upload:
        valid_blob_id(blob)
        size, have, complete = await self._run(lambda: self._own_row(self._db(), device, blob))
        if complete:
            return Upload(blob, size, size, True)
        if have != size:
            raise BlobNotComplete("blob incomplete")
        path = self._path(blob)
        try:
            await asyncio.to_thread(_sync_file, path, size)
        except FileNotFoundError as exc:
            raise UnknownBlob("unknown blob") from exc
        except OSError as exc:
            raise BlobStoreUnavailable(f"blob store at {self.directory}: {exc}") from exc
        await self._run(self._complete_sync, device, blob)
        return Upload(blob, size, size, True)

    def _complete_sync(self, device: str, blob: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            done = conn.execute(
                "UPDATE blobs SET complete = 1 WHERE blob = ? AND device = ? AND have = size", (blob, device)
            ).rowcount
            if done != 1:  # recalled or expired while syncing
                raise UnknownBlob("unknown blob")

        self._tx(work, durable=True)

    # --- messages and downloads -------------------------------------------------------

    async def link(
        self,
        user: str,
        message_id: bytes,
        blobs: Sequence[str],
        devices: Collection[str],
        expires_at: int,
    ) -> None:
        for blob in blobs:
            valid_blob_id(blob)
        await self._run(self._link_sync, user, bytes(message_id), list(blobs), list(devices), expires_at)

    def _link_sync(
        self, user: str, message_id: bytes, blobs: list[str], devices: list[str], expires_at: int
    ) -> None:
        def work(conn: sqlite3.Connection) -> None:
            for blob in blobs:
                row = conn.execute(
                    "SELECT owner, complete, message_id FROM blobs WHERE blob = ?", (blob,)
                ).fetchone()
                if row is None or row[0] != user or not row[1] or row[2] not in (None, message_id):
                    raise UnknownBlob("unknown blob")
            for blob in blobs:
                conn.execute(
                    "UPDATE blobs SET message_id = ?, expires_at = max(coalesce(expires_at, ?), ?) "
                    "WHERE blob = ?",
                    (message_id, expires_at, expires_at, blob),
                )
                conn.executemany(
                    "INSERT OR IGNORE INTO blob_access (blob, device) VALUES (?, ?)",
                    [(blob, d) for d in devices],
                )

        self._tx(work, durable=True)

    async def grant(
        self, user: str, device: str, blob: str, token_hash: bytes, expires_at: int, now: int
    ) -> Grant:
        valid_blob_id(blob)
        return await self._run(self._grant_sync, user, device, blob, bytes(token_hash), expires_at)

    def _grant_sync(self, user: str, device: str, blob: str, token_hash: bytes, expires_at: int) -> Grant:
        def work(conn: sqlite3.Connection) -> Grant:
            row = conn.execute(
                "SELECT size FROM blobs b WHERE blob = ? AND complete AND (owner = ? OR EXISTS "
                "(SELECT 1 FROM blob_access a WHERE a.blob = b.blob AND a.device = ?))",
                (blob, user, device),
            ).fetchone()
            if row is None:
                raise UnknownBlob("unknown blob")
            conn.execute(
                "INSERT INTO blob_tokens (token_hash, blob, device, expires_at) VALUES (?, ?, ?, ?)",
                (token_hash, blob, device, expires_at),
            )
            conn.execute(
                "DELETE FROM blob_tokens WHERE token_hash IN (SELECT token_hash FROM blob_tokens "
                "WHERE device = ? ORDER BY expires_at DESC LIMIT -1 OFFSET ?)",
                (device, MAX_TOKENS_PER_DEVICE),
            )
            return Grant(blob, int(row[0]), expires_at)

        return self._tx(work)

    async def resolve(self, token_hash: bytes, now: int) -> Grant | None:
        def work() -> Grant | None:
            row = (
                self._db()
                .execute(
                    "SELECT t.blob, b.size, t.expires_at FROM blob_tokens t JOIN blobs b ON b.blob = t.blob "
                    "WHERE t.token_hash = ? AND t.expires_at > ? AND b.complete",
                    (bytes(token_hash), now),
                )
                .fetchone()
            )
            return None if row is None else Grant(row[0], int(row[1]), int(row[2]))

        return await self._run(work)

    async def read(self, blob: str, start: int, length: int) -> bytes:
        valid_blob_id(blob)
        check_range(start, length)
        row = await self._run(
            lambda: (
                self._db().execute("SELECT size FROM blobs WHERE blob = ? AND complete", (blob,)).fetchone()
            )
        )
        if row is None:
            raise UnknownBlob("unknown blob")
        length = max(0, min(length, int(row[0]) - start))
        if length == 0:
            return b""
        try:
            return await asyncio.to_thread(_read_range, self._path(blob), start, length)
        except FileNotFoundError as exc:  # deleted since the lookup
            raise UnknownBlob("unknown blob") from exc
        except OSError as exc:
            raise BlobStoreUnavailable(f"blob store at {self.directory}: {exc}") from exc

    # --- deletion -----------------------------------------------------------------

    async def recall(self, user: str, message_id: bytes) -> int:
        sql = "SELECT blob FROM blobs WHERE owner = ? AND message_id = ? LIMIT ?"
        return await self._delete_where(sql, (user, bytes(message_id), EXPIRE_BATCH))

    async def expire(self, now: int, upload_ttl_ms: int) -> int:
        linked = "SELECT blob FROM blobs WHERE message_id IS NOT NULL AND expires_at <= ? LIMIT ?"
        unlinked = "SELECT blob FROM blobs WHERE message_id IS NULL AND begun_at < ? LIMIT ?"
        deleted = await self._delete_where(linked, (now, EXPIRE_BATCH))
        deleted += await self._delete_where(unlinked, (now - upload_ttl_ms, EXPIRE_BATCH))

        def sweep(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM blob_tokens WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM blob_days WHERE day < ?", (utc_day(now),))

        await self._run(self._tx, sweep)
        return deleted

    async def _delete_where(self, select: str, args: tuple[Any, ...]) -> int:
        """Delete the blobs ``select`` names, a batch per transaction, files after each commit."""
        total = 0
        while True:
            n = await self._run(self._delete_batch, select, args)
            total += n
            if n < EXPIRE_BATCH:
                return total

    def _delete_batch(self, select: str, args: tuple[Any, ...]) -> int:
        def work(conn: sqlite3.Connection) -> list[str]:
            blobs = [row[0] for row in conn.execute(select, args)]
            conn.executemany("DELETE FROM blobs WHERE blob = ?", [(b,) for b in blobs])
            return blobs

        blobs = self._tx(work, durable=True)
        self._unlink(blobs)
        return len(blobs)

    async def holds(self, blob: str) -> bool:
        try:
            path = self._path(blob)
        except UnknownBlob:
            return False

        def work() -> bool:
            row = self._db().execute("SELECT 1 FROM blobs WHERE blob = ?", (blob,)).fetchone()
            return row is not None or path.exists()

        return await self._run(work)


def _sync_file(path: Path, size: int) -> None:
    """fsync the blob's file (and its directory, which names it); OSError if it is not ``size`` bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size != size:
            raise OSError(f"{path.name} is not {size} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_range(path: Path, start: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        out = bytearray()
        while len(out) < length:
            chunk = os.pread(fd, length - len(out), start + len(out))
            if not chunk:
                raise OSError(f"{path.name} is shorter than its index says")
            out += chunk
        return bytes(out)
    finally:
        os.close(fd)
