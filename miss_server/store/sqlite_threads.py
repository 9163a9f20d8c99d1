"""The embedded store's file (``sqlite.py``) and the threads that work on it.

Theory of operation
-------------------
SQLite calls block, so none runs on the event loop. Three threads
(:class:`Threads`) each own one connection and run the jobs handed to them,
in order: the **writer** every write, the **reader** reads (which WAL lets
proceed beside the writer), the **searcher** directory searches (SPEC
§11.3), on a thread of their own so that one device searching at its budget
never delays the reads that authentications and lookups wait for.

A job is a function of the connection. :meth:`DbThread.submit` queues it
and returns a future, which the event loop resolves with the job's value or
its error (:func:`translate`: a broken database is ``StoreUnavailable``, a
violated constraint ``ValueError``).

* A :class:`DbThread` (the store's reader and searcher) runs each job
  alone, in autocommit.
* The :class:`Writer` runs every write, by **group commit**: when it wakes,
  no sooner than ``COMMIT_INTERVAL`` after its previous batch ended
  (:class:`~miss_server.store.common.Pacing`), it takes every job waiting
  (up to ``MAX_BATCH``), runs them in one ``BEGIN IMMEDIATE`` transaction
  and commits once. If a job fails, the batch is rolled back and each job
  runs again in a transaction of its own, so that it fails alone (the rare
  path; the common one pays no savepoints). A job's future resolves only
  after that ``COMMIT`` returned, with ``synchronous=FULL``, so "accepted"
  always means "on disk" while a busy hub pays one fsync per batch rather
  than per message.

Other processes (``miss-admin`` while the hub runs) share the file:
connections (:func:`connect`) wait ``BUSY_TIMEOUT_MS`` for their lock
rather than fail. The file holds ciphertext, but also who wrote to whom: it
is created private to its owner (:func:`make_private`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from . import migrations
from .base import CodeInvalid, GroupCommitStats, SchemaMismatch, StoreUnavailable
from .common import Pacing

__all__ = [
    "BUSY_TIMEOUT_MS",
    "DIALECT",
    "Conn",
    "DbThread",
    "Threads",
    "Writer",
    "connect",
    "make_private",
    "migrate",
    "translate",
]

T = TypeVar("T")
Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]
#: A job's future with its value, or with its error.
Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]

BUSY_TIMEOUT_MS = 5000
DIALECT = "sqlite"


class Conn(sqlite3.Connection):
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


def make_private(path: Path) -> None:
    """Create the database file 0600 (SQLite's -wal and -shm files take its
    mode), in a new directory 0700 if it has none yet; an existing file
    readable by others is made 0600. An existing directory is left as it is
    (it may be the operator's working directory)."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)  # mkdir's mode is filtered by the umask
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        with contextlib.suppress(OSError):  # a file we do not own: leave it
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)


def migrate(path: Path) -> int:
    """Apply every migration newer than the file's ``user_version``; returns the version."""
    conn = connect(path)
    try:
        current = int(conn.execute("PRAGMA user_version").fetchone()[0])
        for version, _name, sql in migrations.migrations(DIALECT):
            if version > current:
                conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;")
                current = version
        return current
    finally:
        conn.close()


def connect(path: Path) -> Conn:
    """A connection to the store's file, as every thread and the migrator use it."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, factory=Conn)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


#: Failures that belong to one job (its input), not to the database.
_JOB_ERRORS = (sqlite3.IntegrityError, CodeInvalid, ValueError)


def translate(exc: BaseException) -> BaseException:
    """The Store error for a job's failure (``exc`` itself if it is not SQLite's)."""
    if isinstance(exc, sqlite3.IntegrityError):
        return ValueError(str(exc))
    if isinstance(exc, sqlite3.Error):
        return StoreUnavailable(f"{type(exc).__name__}: {exc}")
    return exc


def _resolve_all(outcomes: list[Outcome]) -> None:
    for fut, value, err in outcomes:
        if fut.done():  # the awaiting task was cancelled
            continue
        if err is not None:
            fut.set_exception(err)
        else:
            fut.set_result(value)


class DbThread:
    """One connection, one thread, jobs in submission order, each alone (module doc)."""

    def __init__(self, path: Path, name: str) -> None:
        self._path = path
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open the connection on the thread; raises StoreUnavailable if it cannot."""
        self._loop = loop
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise StoreUnavailable(f"cannot open {self._path}: {self._error}")

    def stop(self) -> None:
        """Run the jobs already submitted, then close the connection."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``fn(conn, *args)`` on the thread; its future resolves on ``start``'s loop."""
        assert self._loop is not None, "store not opened"
        fut: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((fn, args, fut))
        return fut

    def _run(self) -> None:
        try:
            conn = connect(self._path)
        except Exception as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                batch, stop = self._gather(job)
                outcomes = self._execute(conn, batch)
                assert self._loop is not None
                if not self._loop.is_closed():
                    self._loop.call_soon_threadsafe(_resolve_all, outcomes)
                if stop:
                    return
        finally:
            conn.close()

    def _gather(self, job: Job) -> tuple[list[Job], bool]:
        """The jobs to run now, starting with ``job``; and whether to stop after them."""
        return [job], False

    def _execute(self, conn: Conn, batch: list[Job]) -> list[Outcome]:
        fn, args, fut = batch[0]
        try:
            return [(fut, fn(conn, *args), None)]
        except Exception as exc:
            return [(fut, None, translate(exc))]


class Writer(DbThread):
    """The thread that runs every write, by group commit (module doc)."""

    def __init__(self, path: Path, name: str) -> None:
        super().__init__(path, name)
        self.pacing = Pacing()

    @property
    def stats(self) -> GroupCommitStats:
        """Its batches, failed ones included (each counts as one transaction)."""
        return self.pacing.stats

    def _gather(self, job: Job) -> tuple[list[Job], bool]:
        pause = self.pacing.pause(time.monotonic())
        if pause > 0:
            time.sleep(pause)
        batch = [job]
        while len(batch) < self.pacing.max_batch:
            try:
                nxt = self._jobs.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                return batch, True
            batch.append(nxt)
        return batch, False

    def _execute(self, conn: Conn, batch: list[Job]) -> list[Outcome]:
        outcomes = _run_batch(conn, batch)
        self.pacing.ended(time.monotonic(), len(batch))
        return outcomes


def _run_batch(conn: Conn, batch: list[Job]) -> list[Outcome]:
    """All jobs in one transaction; if one fails, each alone (module doc)."""
    outcomes: list[Outcome] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for fn, args, fut in batch:
            outcomes.append((fut, fn(conn, *args), None))
        conn.execute("COMMIT")
        return outcomes
    except Exception as exc:
        _roll_back(conn)
        if len(batch) == 1 or not isinstance(exc, _JOB_ERRORS):
            err = translate(exc)
            return [(fut, None, err) for _, _, fut in batch]
    return [_run_alone(conn, job) for job in batch]


def _run_alone(conn: Conn, job: Job) -> Outcome:
    fn, args, fut = job
    try:
        conn.execute("BEGIN IMMEDIATE")
        value = fn(conn, *args)
        conn.execute("COMMIT")
        return (fut, value, None)
    except Exception as exc:
        _roll_back(conn)
        return (fut, None, translate(exc))


def _roll_back(conn: Conn) -> None:
    """End a failed transaction, and forget what it may have taught ``conn``."""
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")
    conn.forget()


class Threads:
    """The writer, the reader and the searcher of one file (module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: Writer | None = None
        self._reader: DbThread | None = None
        self._searcher: DbThread | None = None

    @property
    def stats(self) -> GroupCommitStats:
        """The writer's batching (its failed batches count too)."""
        return self._writer.stats if self._writer is not None else GroupCommitStats()

    async def start(self) -> None:
        """Start the threads, unless they run; raises SchemaMismatch if the
        file does not exist (sqlite3 would create an empty one) and
        StoreUnavailable if it cannot be opened."""
        if self._writer is not None:
            return
        if not self.path.exists():
            raise SchemaMismatch(f"no store at {self.path}: create one with `miss-admin migrate`")
        loop = asyncio.get_running_loop()
        writer = Writer(self.path, "sqlite-writer")
        reader = DbThread(self.path, "sqlite-reader")
        searcher = DbThread(self.path, "sqlite-searcher")
        for thread in (writer, reader, searcher):
            await asyncio.to_thread(thread.start, loop)
        self._writer, self._reader, self._searcher = writer, reader, searcher

    async def stop(self) -> None:
        """Finish the jobs already submitted and close the connections."""
        for thread in (self._writer, self._reader, self._searcher):
            if thread is not None:
                await asyncio.to_thread(thread.stop)
        self._writer = self._reader = self._searcher = None

    def read(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``fn(conn, *args)`` on the reader; raises StoreUnavailable once stopped."""
        return _live(self._reader).submit(fn, *args)

    def search(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``fn(conn, *args)`` on the searcher; raises StoreUnavailable once stopped."""
        return _live(self._searcher).submit(fn, *args)

    def write(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``fn(conn, *args)`` in the writer's next batch; raises StoreUnavailable once stopped."""
        return _live(self._writer).submit(fn, *args)


def _live(thread: DbThread | None) -> DbThread:
    if thread is None:
        raise StoreUnavailable("store is closed")
    return thread
