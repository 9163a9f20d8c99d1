"""``miss-admin backup`` and ``miss-admin restore``: a copy of the embedded
(SQLite) store taken while the hub runs, and putting one back.

Commands::

    miss-admin backup --to FILE      copy the store into FILE (mode 600), check the copy,
                                     say what it holds; the hub keeps running
    miss-admin restore --from FILE   put a copy in place of the store (the hub stopped)

With the embedded blob store (a ``file://`` directory, SPEC §16) both also
cover the attachments: ``backup`` writes them to the directory
``FILE.blobs`` beside FILE, ``restore`` puts that back in place of the blob
directory; how is miss_server/blobs/backup.py's business.

A PostgreSQL store is backed up with ``pg_dump`` (docs/OPERATIONS.md,
"Backup and restore"): for it both commands say so and exit 2.

Theory of operation
-------------------
**Backup.** SQLite's online backup API (:meth:`sqlite3.Connection.backup`)
copies the file :data:`STEP_PAGES` pages at a time, sleeping
:data:`STEP_SLEEP` between steps so the hub's writer gets the file between
them. A write by the hub between two steps makes SQLite start the copy again
(that is how the copy stays one consistent instant); on a hub busy enough to
do that :data:`MAX_RESTARTS` times, the whole file is copied again in one
step, which is one read transaction: the store runs in WAL mode, where a
reader never blocks a writer (the WAL only grows until the copy ends). The copy goes to a
temporary file beside FILE, created 0600 (it holds who wrote to whom), is
switched to a rollback journal (one self-contained file), checked with
``PRAGMA integrity_check`` and for a MiSS schema, flushed to disk, and only
then renamed to FILE: FILE is a whole, checked copy or is not touched.

**Restore.** The file must be a MiSS database (its tables, a schema version
this ``miss-admin`` knows: a newer one is refused, an older one is migrated
by the hub when it starts, as the embedded store always does) and pass
``integrity_check``. A hub (or another ``miss-admin``) that has the store
open is detected by asking SQLite for an exclusive lock, which any other
open connection to a WAL database prevents: the restore is then refused. The
copy is written beside the store under a temporary name, checked, flushed;
the current store (if any) is checkpointed into its one file and kept as
``NAME.before-restore-STAMP``; stale ``-wal``/``-shm`` files are removed (a
WAL left by a killed hub must never be replayed onto the restored file); the
copy is renamed into place. A hub started between the check and the rename
is not detected: stop the hub first. With ``FILE.blobs`` the attachments'
copy is made and checked before the store is touched (a blob index in use
refuses the restore), and put in place right after the store.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .admin_common import iso, now_ms
from .app import embedded_store
from .blobs import backup as blob_backup
from .config import Settings
from .store import migrations
from .store.sqlite_threads import BUSY_TIMEOUT_MS, DIALECT

__all__ = [
    "MAX_RESTARTS",
    "STEP_PAGES",
    "STEP_SLEEP",
    "NotEmbedded",
    "add_backup_parser",
    "cmd_backup",
    "cmd_restore",
]

#: Pages copied per step of the online backup (4 MiB with SQLite's 4 KiB pages).
STEP_PAGES = 1024
#: Seconds between two steps: the hub's writer gets the file meanwhile.
STEP_SLEEP = 0.005
#: Restarts (the hub wrote between two steps) after which the rest is copied in one step.
MAX_RESTARTS = 3
#: Tables every MiSS schema has had since version 1.
REQUIRED_TABLES = frozenset({"users", "devices", "enrollment_codes", "accepted_ids", "queue"})
SQLITE_MAGIC = b"SQLite format 3\x00"


class NotEmbedded(Exception):
    """The store is not the embedded one: these commands do not apply (exit 2)."""


class _TooBusy(Exception):
    """The hub wrote between steps MAX_RESTARTS times: copy the rest in one step."""


def _refuse_postgres(settings: Settings, verb: str) -> Path:
    if not embedded_store(settings):
        raise NotEmbedded(
            f"the store is {settings.store_display}, not the embedded SQLite store: miss-admin {verb} "
            "copies only a SQLite store; back PostgreSQL up with pg_dump and restore it with "
            'pg_restore as docs/OPERATIONS.md ("Backup and restore") says'
        )
    return settings.sqlite_path.absolute()


def _connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """A connection to an existing file (never creates one), waiting for locks as the hub's do."""
    mode = "ro" if read_only else "rw"
    conn = sqlite3.connect(
        f"file:{quote(str(path))}?mode={mode}", uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
    )
    return conn


def _private_temp(directory: Path, name: str) -> Path:
    """A new empty file 0600 in ``directory`` (the rename target's, so the rename is atomic)."""
    path = directory / f".{name}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return path


@contextlib.contextmanager
def _removed_on_error(path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _table_names(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _count(conn: sqlite3.Connection, tables: set[str], table: str, where: str = "") -> int:
    if table not in tables:
        return 0  # an older schema, from before that table
    return int(conn.execute(f"SELECT count(*) FROM {table} {where}").fetchone()[0])


def _checked(conn: sqlite3.Connection, what: str) -> dict[str, Any]:
    """Check that ``conn`` is a sound MiSS database; its schema version and
    what it holds. Raises ValueError saying what is wrong."""
    try:
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
        tables = _table_names(conn)
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{what} is not a readable SQLite database ({exc})") from None
    if problems != ["ok"]:
        raise ValueError(f"{what} fails SQLite's integrity check: " + "; ".join(problems[:5]))
    missing = REQUIRED_TABLES - tables
    if version < 1 or missing:
        raise ValueError(
            f"{what} is not a MiSS database (no {', '.join(sorted(missing)) or 'schema version'})"
        )
    columns = {r[1] for r in conn.execute("PRAGMA table_info(users)")}
    counts = {
        "users": _count(conn, tables, "users"),
        "devices": _count(conn, tables, "devices", "WHERE revoked_at IS NULL"),
        "attestations": _count(conn, tables, "users", "WHERE attestation IS NOT NULL")
        if "attestation" in columns
        else 0,
        "teams": _count(conn, tables, "teams", "WHERE closed = 0"),
        # What devices have not acknowledged yet: 1:1 envelopes (queue kind
        # 1), team, role and urgent copies (team_queue), backups' copies of
        # urgent messages held until their escalation step (held_queue).
        "queued_messages": _count(conn, tables, "queue", "WHERE kind = 1")
        + _count(conn, tables, "team_queue"),
        "queued_receipts": _count(conn, tables, "queue", "WHERE kind <> 1"),
        "held_for_escalation": _count(conn, tables, "held_queue"),
        "audit_events": _count(conn, tables, "audit_log"),
    }
    oldest = None
    if "queue" in tables:
        oldest = conn.execute("SELECT min(ts) FROM queue WHERE kind = 1").fetchone()[0]
    return {"schema_version": version, "integrity": "ok", "counts": counts, "oldest_queued": oldest}


def _summary(info: dict[str, Any]) -> str:
    c = info["counts"]
    lines = [
        f"integrity ok, schema version {info['schema_version']} "
        f"(this miss-admin knows up to {migrations.latest_version(DIALECT)})",
        f"{c['users']} clinician(s), {c['devices']} active device(s), {c['attestations']} attestation(s), "
        f"{c['teams']} team(s), {c['audit_events']} audit event(s)",
        f"queued: {c['queued_messages']} message(s) not yet acknowledged, {c['queued_receipts']} receipt(s), "
        f"{c['held_for_escalation']} urgent cop(ies) held for escalation"
        + (f"; oldest queued {iso(info['oldest_queued'])}" if info["oldest_queued"] else ""),
    ]
    return "\n".join(lines)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def backup(source: Path, dest: Path) -> dict[str, Any]:
    """Copy the store ``source`` into ``dest`` while a hub may be writing to
    it (module doc); what the copy holds. Raises ValueError (no store, a
    copy that does not check) or OSError."""
    if not source.exists():
        raise ValueError(
            f"no store at {source}: pass --store/--config as the hub's, or run from its directory"
        )
    dest = dest.absolute()
    if dest.exists() and dest.samefile(source):
        raise ValueError(f"{dest} is the store itself")
    tmp = _private_temp(dest.parent, dest.name)
    with _removed_on_error(tmp):
        src = _connect(source)
        steps = restarts = 0
        left: int | None = None

        def progress(status: int, remaining: int, total: int) -> None:
            nonlocal steps, restarts, left
            steps += 1
            if left is not None and remaining >= left:  # no progress: the hub wrote, the copy began again
                restarts += 1
                if restarts >= MAX_RESTARTS:
                    raise _TooBusy
            left = remaining
            if remaining:
                # sqlite3's own ``sleep`` pauses only after a busy step: this
                # pause, with no lock held, is the hub writer's turn.
                time.sleep(STEP_SLEEP)

        started = time.monotonic()
        try:
            dst = sqlite3.connect(tmp, isolation_level=None)
            try:
                try:
                    src.backup(dst, pages=STEP_PAGES, progress=progress)
                    one_step = False
                except _TooBusy:
                    src.backup(dst)  # one read transaction; WAL lets the writers go on
                    one_step = True
                dst.execute("PRAGMA journal_mode = DELETE")  # one file, no -wal beside it
                info = _checked(dst, f"the copy {tmp}")
            finally:
                dst.close()
        except sqlite3.Error as exc:
            raise ValueError(f"backup of {source} failed: {exc}") from None
        finally:
            src.close()
        blob_backup.fsync_path(tmp)
        os.replace(tmp, dest)
    blob_backup.fsync_path(dest.parent)
    size = dest.stat().st_size
    how = f"in {steps} step(s)" + (
        f", the last one whole after {restarts} restarts (the hub was writing)" if one_step else ""
    )
    return {
        "file": str(dest),
        "store": str(source),
        "bytes": size,
        "seconds": round(time.monotonic() - started, 3),
        "steps": steps,
        "restarts": restarts,
        "taken_at": now_ms(),
        **info,
        "text": f"backed up {source} to {dest} ({_size(size)}, mode 600) {how}\n{_summary(info)}",
    }


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def restore(source: Path, target: Path, blobs: Path | None = None, blob_store: str = "") -> dict[str, Any]:
    """Put the backup ``source`` in place of the store ``target`` (module
    doc) and, if ``SOURCE.blobs`` exists and ``blobs`` (the blob directory)
    is given, its attachments in place of that directory; what it holds.
    ``blob_store`` names a blob store that is no directory (PostgreSQL) for
    the text. Raises ValueError for a file that is not a MiSS database, one
    with a newer schema, or a store or blob index in use."""
    source = source.absolute()
    if not source.is_file():
        raise ValueError(f"no backup file {source}")
    with source.open("rb") as fh:
        if fh.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            raise ValueError(f"{source} is not a MiSS database (not a SQLite file)")
    if target.parent.exists():
        if target.exists() and blob_backup.sqlite_in_use(target):
            raise ValueError(
                f"{target} is in use (a hub or another miss-admin has it open): stop the hub, then restore"
            )
    else:
        target.parent.mkdir(parents=True)
        os.chmod(target.parent, 0o700)  # as the hub makes its data directory (sqlite_threads.make_private)
    blob_source = blob_backup.blob_backup_of(source)
    staged = None
    if blobs is not None and blob_source.is_dir():
        # Copied and checked before the store is touched; put in place after it.
        staged = blob_backup.stage_restore(blob_source, blobs)
    with _discarded_on_error(staged):
        info, kept = _restore_store(source, target)
    blob_info = None
    if staged is not None:
        try:
            blob_info = staged.commit()
        except (ValueError, OSError) as exc:
            raise ValueError(f"{target} was restored, but the attachments were not: {exc}") from None
    lines = [f"restored {source} to {target}", _summary(info)]
    if info["schema_version"] < migrations.latest_version(DIALECT):
        lines.append(
            f"schema version {info['schema_version']} < {migrations.latest_version(DIALECT)}: "
            "the hub migrates it when it starts"
        )
    if kept is not None:
        lines.append(f"the store it replaces is kept as {kept}: delete it once the restore is checked")
    lines.append(_restored_blobs_text(blob_info, blob_source, blobs, blob_store))
    lines.append(
        "start the hub: it delivers the queued messages. What happened after the backup was taken "
        "(enrollments, attestations, revocations, suspensions, deletions, team changes) is not in it: "
        "do it again (docs/OPERATIONS.md)"
    )
    return {
        "file": str(source),
        "store": str(target),
        "replaced": str(kept) if kept else None,
        **info,
        "blobs": blob_info,
        "text": "\n".join(lines),
    }


@contextlib.contextmanager
def _discarded_on_error(staged: blob_backup.StagedRestore | None) -> Iterator[None]:
    try:
        yield
    except BaseException:
        if staged is not None:
            staged.discard()
        raise


def _restored_blobs_text(
    info: dict[str, Any] | None, blob_source: Path, blobs: Path | None, blob_store: str
) -> str:
    if blobs is None:
        return f"attachments: in PostgreSQL ({blob_store}), not in this backup: not restored"
    if info is None:
        return (
            f"attachments NOT restored (no {blob_source}): messages naming them will get 404 / "
            f"unknown_blob until they expire; {blobs} is untouched"
        )
    line = (
        f"attachments: {info['count']} attachment(s), {blob_backup.mib(info['bytes'])} "
        f"restored from {blob_source} to {blobs}"
    )
    if info["replaced"]:
        line += f"; the blob directory it replaces is kept as {info['replaced']}"
    return line


def _restore_store(source: Path, target: Path) -> tuple[dict[str, Any], Path | None]:
    """The database part of :func:`restore`: what the copy holds, where the replaced store is kept."""
    tmp = _private_temp(target.parent, target.name)
    with _removed_on_error(tmp):
        with source.open("rb") as src, tmp.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        conn = _connect(tmp)
        try:
            info = _checked(conn, str(source))
        finally:
            conn.close()
        latest = migrations.latest_version(DIALECT)
        if info["schema_version"] > latest:
            raise ValueError(
                f"{source} has schema version {info['schema_version']}, newer than this MiSS knows "
                f"({latest}): restore it with the MiSS version that made it"
            )
        kept = None
        if target.exists():
            if blob_backup.sqlite_in_use(target):
                raise ValueError(f"{target} is in use: stop the hub, then restore")
            kept = target.with_name(f"{target.name}.before-restore-{_stamp()}")
            os.replace(target, kept)
        for suffix in ("-wal", "-shm", "-journal"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, target)
    blob_backup.fsync_path(target.parent)
    return info, kept


def backup_with_blobs(source: Path, dest: Path, blobs: Path | None, blob_store: str = "") -> dict[str, Any]:
    """:func:`backup` of the store ``source`` into ``dest``, then of the blob
    directory ``blobs`` into ``DEST.blobs`` (miss_server/blobs/backup.py):
    the result of :func:`backup` with ``blobs`` (what that copy holds, or
    None) and a line about the attachments in its text. With no blob
    directory (``blobs`` None: the blob store ``blob_store`` is PostgreSQL;
    or no such directory yet) no ``DEST.blobs`` is written, and one left by
    an earlier backup to ``dest`` is removed: it would not match."""
    result = backup(source, dest)
    dest = dest.absolute()
    info = None
    if blobs is None:
        line = (
            f"attachments: in PostgreSQL ({blob_store}), not in this backup: back them up with "
            "pg_dump (docs/OPERATIONS.md)"
        )
    else:
        try:
            info = blob_backup.backup_blobs(blobs, dest)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{dest} was written, but its attachments were not backed up: {exc}") from None
        line = blob_backup.describe(info)
        if info is None:
            line += f" (no blob directory, or no index in it, at {blobs})"
    if info is None and blob_backup.remove_stale_backup(dest):
        line += f"; the older {blob_backup.blob_backup_of(dest)} was removed"
    result["blobs"] = info
    result["text"] += "\n" + line
    return result


async def cmd_backup(store: object, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    source = _refuse_postgres(settings, "backup")
    blobs = blob_backup.blob_directory(settings.blob_store_url)
    return backup_with_blobs(source, Path(args.to), blobs, settings.blob_store_display)


async def cmd_restore(store: object, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    target = _refuse_postgres(settings, "restore")
    blobs = blob_backup.blob_directory(settings.blob_store_url)
    return restore(Path(getattr(args, "from")), target, blobs, settings.blob_store_display)


def add_backup_parser(command: Any) -> None:
    """``backup`` and ``restore``, on the parser-making ``command`` of admin.py."""
    b = command(
        "backup",
        "copy the embedded store into a file while the hub runs, and check the copy",
        "Copy the embedded SQLite store into FILE (mode 600) with SQLite's online backup, "
        "while the hub runs; check the copy (integrity, MiSS schema) and say what it holds. "
        "FILE is written whole or not at all. The attachments of a blob directory (file://) go "
        "to the directory FILE.blobs beside it, likewise. A PostgreSQL store is backed up with "
        "pg_dump (docs/OPERATIONS.md).",
    )
    b.add_argument("--to", required=True, metavar="FILE", help="the backup file (replaced if it exists)")
    r = command(
        "restore",
        "put a backup in place of the embedded store (stop the hub first)",
        "Put a backup made by `miss-admin backup` in place of the embedded SQLite store: "
        "refused while a hub has the store open, for a file that is not a MiSS database, "
        "and for a schema newer than this version knows (an older one is migrated when the "
        "hub starts). The store replaced is kept beside it as NAME.before-restore-STAMP. "
        "FILE.blobs, if beside FILE, replaces the blob directory (kept likewise).",
    )
    r.add_argument("--from", required=True, metavar="FILE", help="the backup file")
