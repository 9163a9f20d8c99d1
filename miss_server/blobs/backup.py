"""The embedded hub's blob directory (:mod:`.filesystem`) in ``miss-admin
backup`` and ``miss-admin restore`` (miss_server/admin_backup.py).

A backup ``FILE`` of the database has its attachments beside it, in the
directory ``FILE.blobs`` (mode 700, files 600): ``index.db`` and one file per
blob, as in the hub's directory. Only what a restored hub can serve is kept.

Theory of operation
-------------------
**Backup** (:func:`backup_blobs`, while the hub runs, after the database
copy: every blob a message of that copy names is then in the index copy,
unless it expired or was recalled meanwhile). ``index.db`` is copied with
SQLite's online backup in one step, one read transaction: one consistent
instant, which the index's WAL mode lets the hub's writers pass. In the copy,
incomplete uploads (the device begins them again) and every download token
(links are short-lived capabilities: a restore never revives one) are
deleted. Then, for each complete blob the copy names, the first ``size``
bytes of its file are copied: a complete blob never changes, so the copy
needs no lock. A blob whose file is gone (expired or recalled since the
index was copied) or shorter than its size has its row dropped from the
copy. Everything is written into a temporary directory beside ``FILE.blobs``,
checked (:func:`check_blob_dir`), flushed, and only then renamed to
``FILE.blobs`` (an older one of that name is replaced): ``FILE.blobs`` is a
whole, checked copy or is not touched.

**Restore** (:func:`stage_restore` then :meth:`StagedRestore.commit`, the hub
stopped). Staging refuses a blob directory whose index a hub has open (an
exclusive lock is refused, as for the database), copies the backup into a
temporary directory beside the blob directory and checks it; the caller then
restores the database, and only then commits: the current directory is kept
as ``NAME.before-restore-STAMP`` and the copy renamed into place (mode 700).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from .filesystem import INDEX

__all__ = [
    "StagedRestore",
    "backup_blobs",
    "blob_backup_of",
    "blob_directory",
    "check_blob_dir",
    "describe",
    "fsync_path",
    "mib",
    "remove_stale_backup",
    "sqlite_in_use",
    "stage_restore",
]

_BLOB_ID = re.compile(r"b_[0-9a-f]{32}")
_CHUNK = 1 << 20
#: Tables of the index's schema (filesystem.py, version 1).
_TABLES = frozenset({"blobs", "blob_access", "blob_tokens", "blob_days"})


def blob_directory(url: str) -> Path | None:
    """The directory of a ``file:///dir`` blob store URL; None for any other (PostgreSQL)."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        return None
    return Path(unquote(parts.path))


def blob_backup_of(file: Path) -> Path:
    """Where the blobs of the database backup ``file`` are: ``FILE.blobs`` beside it."""
    return file.with_name(file.name + ".blobs")


def mib(n: int) -> str:
    """``n`` bytes in MiB for the text (with the bytes when that rounds to almost nothing)."""
    text = f"{n / (1 << 20):.1f} MiB"
    return text if n >= 100 * 1024 or n == 0 else f"{text} ({n} bytes)"


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file, or a directory after a rename in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _private_dir(parent: Path, name: str) -> Path:
    """A new empty directory 0700 in ``parent`` (the rename target's, so the rename is atomic)."""
    path = parent / f".{name}.{secrets.token_hex(4)}.tmp"
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    return path


def _new_private_file(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)


def _copy_prefix(src: Path, dst: Path, size: int) -> bool:
    """Copy the first ``size`` bytes of ``src`` into the new file ``dst`` (0600)
    and flush it; False (and no ``dst``) if ``src`` is gone or shorter."""
    try:
        fd_in = os.open(src, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fd_out = _new_private_file(dst)
        try:
            left = size
            while left:
                chunk = os.read(fd_in, min(_CHUNK, left))
                if not chunk:
                    break
                os.write(fd_out, chunk)  # regular files: written whole
                left -= len(chunk)
            if left == 0:
                os.fsync(fd_out)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
    if left:
        dst.unlink()
        return False
    return True


def _connect(path: Path, *, timeout: float = 5.0) -> sqlite3.Connection:
    """A connection to an existing file (never creates one)."""
    return sqlite3.connect(
        f"file:{quote(str(path))}?mode=rw", uri=True, isolation_level=None, timeout=timeout
    )


def _complete_rows(conn: sqlite3.Connection) -> list[tuple[str, int]]:
    return [(str(r[0]), int(r[1])) for r in conn.execute("SELECT blob, size FROM blobs WHERE complete")]


def check_blob_dir(directory: Path) -> dict[str, Any]:
    """Check that ``directory`` is a sound copy of a blob directory:
    ``index.db`` passes ``PRAGMA integrity_check`` and has the index's
    tables, and every complete blob it names has its file of exactly
    ``size`` bytes. Its counts (``count``, ``bytes``, ``incomplete``,
    ``links``); ValueError saying what is wrong."""
    index = directory / INDEX
    if not index.is_file():
        raise ValueError(f"{directory} has no {INDEX}")
    try:
        conn = _connect(index)
        try:
            problems = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if problems != ["ok"]:
                raise ValueError(f"{index} fails SQLite's integrity check: " + "; ".join(problems[:5]))
            if not _TABLES <= tables:
                raise ValueError(
                    f"{index} is not a MiSS blob index (no {', '.join(sorted(_TABLES - tables))})"
                )
            rows = _complete_rows(conn)
            incomplete = int(conn.execute("SELECT count(*) FROM blobs WHERE NOT complete").fetchone()[0])
            links = int(conn.execute("SELECT count(*) FROM blob_tokens").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{index} is not a readable SQLite database ({exc})") from None
    total = 0
    for blob, size in rows:
        if not _BLOB_ID.fullmatch(blob):
            raise ValueError(f"{index} names a blob {blob!r} that is no blob id")
        try:
            length = (directory / blob).stat().st_size
        except FileNotFoundError:
            raise ValueError(f"{directory} has no file for the complete blob {blob}") from None
        if length != size:
            raise ValueError(f"{directory}/{blob} has {length} bytes, its index says {size}")
        total += size
    return {"count": len(rows), "bytes": total, "incomplete": incomplete, "links": links}


def _remove_dir(path: Path) -> None:
    """Remove the directory ``path`` (renamed aside first, so that its name is free at once)."""
    if not path.exists():
        return
    aside = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old")
    os.replace(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


def remove_stale_backup(file: Path) -> bool:
    """Remove ``FILE.blobs`` left by an earlier backup to ``file`` (the new
    one has no blobs to go with it); whether there was one."""
    old = blob_backup_of(file)
    if old.is_dir():
        _remove_dir(old)
        return True
    return False


def backup_blobs(directory: Path, file: Path) -> dict[str, Any] | None:
    """Copy the blob directory ``directory`` into ``FILE.blobs`` beside the
    database backup ``file``, while the hub runs (module doc); None if there
    is no blob directory (nothing is written). Returns what the copy holds:
    ``dir``, ``count`` and ``bytes`` of complete blobs, and what was left out:
    ``dropped_incomplete`` uploads, ``dropped_links`` (every download token),
    ``dropped_gone`` blobs whose file went (or was short) while copying.
    Raises ValueError (a copy that does not check) or OSError; on failure
    ``FILE.blobs`` is left as it was and no temporary directory remains."""
    index = directory / INDEX
    if not directory.is_dir() or not index.is_file():
        return None
    file = file.absolute()
    final = blob_backup_of(file)
    tmp = _private_dir(final.parent, final.name)
    try:
        copy = tmp / INDEX
        os.close(_new_private_file(copy))
        src = _connect(index)
        try:
            dst = sqlite3.connect(copy, isolation_level=None)
            try:
                src.backup(dst)  # one step: one read transaction, one instant
            finally:
                dst.close()
        except sqlite3.Error as exc:
            raise ValueError(f"backup of {index} failed: {exc}") from None
        finally:
            src.close()
        dst = _connect(copy)
        try:
            dst.execute("PRAGMA journal_mode = DELETE")  # one file, no -wal beside it
            dst.execute("PRAGMA foreign_keys = ON")  # blob_access rows go with their blob
            dst.execute("BEGIN")
            links = dst.execute("DELETE FROM blob_tokens").rowcount
            incomplete = dst.execute("DELETE FROM blobs WHERE NOT complete").rowcount
            dst.execute("COMMIT")
            gone: list[str] = []
            for blob, size in _complete_rows(dst):
                if not _BLOB_ID.fullmatch(blob) or not _copy_prefix(directory / blob, tmp / blob, size):
                    gone.append(blob)
            if gone:
                dst.execute("BEGIN")
                dst.executemany("DELETE FROM blobs WHERE blob = ?", [(b,) for b in gone])
                dst.execute("COMMIT")
            dst.execute("VACUUM")  # no deleted row (a token's hash) left in a free page
        finally:
            dst.close()
        info = check_blob_dir(tmp)
        fsync_path(copy)
        fsync_path(tmp)
        if final.exists():
            _remove_dir(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(final.parent)
    return {
        "dir": str(final),
        "source": str(directory),
        "count": info["count"],
        "bytes": info["bytes"],
        "dropped_incomplete": incomplete,
        "dropped_links": links,
        "dropped_gone": len(gone),
    }


def sqlite_in_use(path: Path) -> bool:
    """True if another connection (a hub, a ``miss-admin``) has the SQLite
    database at ``path`` open (the store, or the blob index): SQLite refuses
    an exclusive lock on a WAL database then. As a side effect, a WAL left
    by a killed hub is checkpointed into the file. A file that is not a
    database is not in use."""
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=rw", uri=True, isolation_level=None, timeout=0)
    except sqlite3.OperationalError:
        return True
    try:
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("ROLLBACK")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return False
    except sqlite3.OperationalError as exc:
        return "locked" in str(exc) or "busy" in str(exc)
    except sqlite3.DatabaseError:  # not a database: nobody can be using it, and it is kept aside
        return False
    finally:
        conn.close()


def _refuse_in_use(directory: Path) -> None:
    index = directory / INDEX
    if index.exists() and sqlite_in_use(index):
        raise ValueError(
            f"the blob index {index} is in use (a hub or another miss-admin has it open): "
            "stop the hub, then restore"
        )


@dataclass
class StagedRestore:
    """A checked copy of a blob backup beside the blob directory, waiting
    for :meth:`commit` (put it in place) or :meth:`discard`."""

    source: Path
    directory: Path
    staged: Path
    info: dict[str, Any]

    def discard(self) -> None:
        """Remove the staged copy; the blob directory is untouched."""
        shutil.rmtree(self.staged, ignore_errors=True)

    def commit(self) -> dict[str, Any]:
        """Put the staged copy in place of the blob directory: refused
        (ValueError, the copy discarded) if a hub has opened the index since
        staging; the current directory, if any, kept as
        ``NAME.before-restore-STAMP``. What was restored (``count``,
        ``bytes``, ``dir``, ``replaced``)."""
        kept = None
        try:
            _refuse_in_use(self.directory)
            if self.directory.exists():
                kept = self.directory.with_name(
                    f"{self.directory.name}.before-restore-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
                )
                os.replace(self.directory, kept)
            os.replace(self.staged, self.directory)
        except BaseException:
            self.discard()
            raise
        os.chmod(self.directory, 0o700)
        fsync_path(self.directory.parent)
        return {
            "dir": str(self.directory),
            "source": str(self.source),
            "count": self.info["count"],
            "bytes": self.info["bytes"],
            "replaced": str(kept) if kept else None,
        }


def stage_restore(source: Path, directory: Path) -> StagedRestore:
    """Copy the blob backup ``source`` (a ``FILE.blobs``) into a temporary
    directory (0700, files 0600) beside the blob directory ``directory`` and
    check it (:func:`check_blob_dir`); nothing else is touched. Raises
    ValueError if the index in ``directory`` is in use (a hub runs) or the
    backup does not check, OSError; no temporary directory is left then."""
    source = source.absolute()
    _refuse_in_use(directory)
    if not directory.parent.exists():
        directory.parent.mkdir(parents=True)
        os.chmod(directory.parent, 0o700)
    check_blob_dir(source)  # before copying what it names
    tmp = _private_dir(directory.parent, directory.name)
    try:
        copy = tmp / INDEX
        os.close(_new_private_file(copy))
        with (source / INDEX).open("rb") as src, copy.open("wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)
            out.flush()
            os.fsync(out.fileno())
        conn = _connect(copy)
        try:
            rows = _complete_rows(conn)
        finally:
            conn.close()
        for blob, size in rows:
            if not _BLOB_ID.fullmatch(blob) or not _copy_prefix(source / blob, tmp / blob, size):
                raise ValueError(f"{source} lacks the {size} bytes of blob {blob}")
        info = check_blob_dir(tmp)
        fsync_path(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return StagedRestore(source, directory, tmp, info)


def describe(info: dict[str, Any] | None) -> str:
    """The text line for a backup's blobs (:func:`backup_blobs`'s result)."""
    if info is None:
        return "no attachments"
    line = f"attachments: {info['count']} attachment(s), {mib(info['bytes'])} in {info['dir']} (mode 700)"
    left = []
    if info["dropped_incomplete"]:
        left.append(f"{info['dropped_incomplete']} incomplete upload(s)")
    if info["dropped_links"]:
        left.append(f"{info['dropped_links']} download link(s)")
    if info["dropped_gone"]:
        left.append(f"{info['dropped_gone']} blob(s) expired or recalled while copying")
    if left:
        line += "; left out: " + ", ".join(left)
    return line
