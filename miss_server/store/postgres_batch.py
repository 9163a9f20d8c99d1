"""Group commit for PostgresStore: ``accept`` and ``ack`` in batches.

Theory of operation
-------------------
Writes that keep the hub running, ``accept`` and ``ack``, go through **group
commit**: a single task, the committer (:class:`GroupCommit`), owns the queue
of waiting calls. When it wakes it takes every call waiting (up to
``max_batch``) and runs them in one transaction with set-based statements
(``unnest`` arrays: one ``INSERT`` for the message ids, one for the contacts,
one for all the queue rows, ``RETURNING seq``). A caller's future resolves
only after ``COMMIT`` returned, so "accepted" always means "durable" while a
busy hub pays one commit (one WAL flush) per batch rather than per message.
Calls arriving while a commit is in flight wait for the next batch, and the
next batch starts no sooner than ``COMMIT_INTERVAL`` after the last commit
(``base.py``): a quiet hub adds no latency, a busy one batches more. If a
statement of a batch fails (bad input, not a lost connection) the
transaction is rolled back and the batch replayed with one savepoint per
call, so one bad call fails alone. One
transaction is in flight at a time per store, so within one hub node ``seq``
order is commit order.

Rows that other hubs may insert at the same time (message ids, contact pairs)
are inserted in sorted order, ids before contacts: every transaction takes
those locks in one global order, so concurrent batches never deadlock. A pair
is inserted once per committer: contacts are never deleted, so the pairs a
committed batch wrote (or found) are remembered (up to
``MAX_KNOWN_CONTACTS``) and a batch of messages between known contacts
skips that statement, as sqlite.py does.

The store lends the committer its transaction runner (``PostgresStore``'s
``_transaction``: retries a connection lost before ``COMMIT``, reports an
unknown commit outcome as :class:`StoreUnavailable`); the committer turns
failures into each caller's error with ``postgres_errors``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import asyncpg

from .base import COMMIT_INTERVAL, AcceptResult, GroupCommitStats, Kind, NewMessage, Queued, StoreUnavailable
from .postgres_errors import failure, is_statement_error

__all__ = ["GroupCommit", "GroupCommitStats", "Transaction"]

log = logging.getLogger("miss.store.postgres")

#: Contact pairs a committer remembers before it starts afresh.
MAX_KNOWN_CONTACTS = 100_000

#: Runs a function in one transaction on a pooled connection and returns its value.
Transaction = Callable[[Callable[[asyncpg.Connection], Awaitable[Any]]], Awaitable[Any]]

_INSERT_IDS = """
INSERT INTO accepted_ids (sender_user, message_id, expires_at)
SELECT * FROM unnest($1::text[], $2::bytea[], $3::bigint[])
ON CONFLICT DO NOTHING
RETURNING sender_user, message_id"""

# least/greatest and ORDER BY use the column collation, as the table's CHECK does.
_INSERT_CONTACTS = """
INSERT INTO contacts (user_a, user_b)
SELECT DISTINCT least(s, r), greatest(s, r) FROM unnest($1::text[], $2::text[]) AS p (s, r)
ORDER BY 1, 2
ON CONFLICT DO NOTHING"""

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
SELECT g.seq, g.device_id, g.kind, g.message_id, g.peer_user, g.recipient_user, d.user_id AS owner,
       CASE WHEN g.kind = 1 THEN ARRAY(
           SELECT s.device_id FROM devices s WHERE s.user_id = g.peer_user AND s.revoked_at IS NULL
           ORDER BY s.created_at, s.device_id) END AS sender_devices
FROM gone g LEFT JOIN devices d ON d.device_id = g.device_id"""


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


class GroupCommit:
    """One task committing waiting accept/ack calls in batches (module doc).

    Made inside a running event loop; :meth:`stop` before dropping it.
    """

    def __init__(self, transaction: Transaction, max_batch: int) -> None:
        self._transaction = transaction
        self._max_batch = max_batch
        self._waiting: deque[_Job] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._contacts: set[tuple[str, str]] = set()  # pairs committed to contacts (module doc)
        self._task = asyncio.create_task(self._loop(), name="miss-postgres-group-commit")
        self.stats = GroupCommitStats()

    async def accept(self, message: NewMessage) -> AcceptResult:
        """:meth:`Store.accept <miss_server.store.base.Store.accept>`, batched."""
        result: AcceptResult = await self._call(_Accept(message, asyncio.get_running_loop().create_future()))
        return result

    async def ack(self, device_id: str, seqs: list[int], now: int, expires_at: int) -> list[Queued]:
        """:meth:`Store.ack <miss_server.store.base.Store.ack>`, batched."""
        future = asyncio.get_running_loop().create_future()
        receipts: list[Queued] = await self._call(_Ack(device_id, list(seqs), now, expires_at, future))
        return receipts

    async def stop(self) -> None:
        """Finish every call already made, then end the task."""
        self._closing = True
        self._wakeup.set()
        await self._task

    async def _call(self, job: _Job) -> Any:
        if self._closing:
            raise StoreUnavailable("store is closed")
        self._waiting.append(job)
        self._wakeup.set()
        return await job.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_commit = 0.0
        try:
            while True:
                if not self._waiting:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                pause = last_commit + COMMIT_INTERVAL - loop.time()
                if pause > 0 and not self._closing:
                    await asyncio.sleep(pause)
                batch: list[_Job] = []
                while self._waiting and len(batch) < self._max_batch:
                    job = self._waiting.popleft()
                    if not job.future.done():  # a cancelled caller was told nothing: skip it
                        batch.append(job)
                if batch:
                    await self._commit(batch)
                    last_commit = loop.time()
        except asyncio.CancelledError:
            for job in self._waiting:
                if not job.future.done():
                    job.future.set_exception(StoreUnavailable("store is closed"))
            raise

    async def _commit(self, batch: list[_Job]) -> None:
        try:
            outcomes = await self._run(batch)
        except Exception as exc:  # _run translates; this is the last guard
            outcomes = [failure(exc) for _ in batch]
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

    async def _run(self, jobs: list[_Job]) -> list[object]:
        """The fast path, or one savepoint per call; an outcome per job."""
        learned: set[tuple[str, str]] = set()
        try:
            outcomes: list[object] = await self._transaction(
                lambda conn: _apply(conn, jobs, self._contacts, learned)
            )
        except Exception as exc:
            if len(jobs) == 1 or not is_statement_error(exc):
                return [failure(exc) for _ in jobs]
            log.warning("a batched call failed, replaying one by one", extra={"calls": len(jobs)})
        else:
            if len(self._contacts) + len(learned) > MAX_KNOWN_CONTACTS:
                self._contacts.clear()
            self._contacts |= learned
            return outcomes
        try:
            outcomes = await self._transaction(lambda conn: _apply_each(conn, jobs))
            return outcomes
        except Exception as exc:
            return [failure(exc) for _ in jobs]


# --- the batch's statements ---------------------------------------------------------


async def _insert_rows(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> list[Queued]:
    """Insert queue rows (tuples in ``_ROW_COLUMNS`` order) in one statement."""
    records = sorted(await conn.fetch(_INSERT_ROWS, *map(list, zip(*rows, strict=True))), key=lambda r: r[0])
    if [(r[1], r[2]) for r in records] != [(row[0], row[3]) for row in rows]:
        raise RuntimeError("queue rows did not get seqs in insertion order")
    return [
        Queued(r[0], row[0], Kind(row[1]), row[3], row[4], row[5], row[7], row[2])
        for r, row in zip(records, rows, strict=True)
    ]


def _pair(a: str, b: str) -> tuple[str, str]:
    """The key of a contact pair in the committer's memory (either order)."""
    return (a, b) if a <= b else (b, a)


async def _accept_many(
    conn: asyncpg.Connection,
    messages: list[NewMessage],
    known: AbstractSet[tuple[str, str]],
    learned: set[tuple[str, str]],
) -> list[AcceptResult]:
    """Like sqlite.py's ``_accept`` for every message, in at most three
    statements: contact pairs not in ``known`` are inserted, and added to
    ``learned``."""
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
    stored: list[int] = []  # indexes of the messages this batch stores
    for i, m in enumerate(messages):
        key = (m.sender_user, m.message_id)
        if first[key] == i and key in inserted:
            stored.append(i)
    # A duplicate stores nothing, not even a contact; a note to oneself makes none.
    met = [
        messages[i]
        for i in stored
        if messages[i].sender_user != messages[i].recipient_user
        and _pair(messages[i].sender_user, messages[i].recipient_user) not in known
    ]
    if met:
        await conn.execute(_INSERT_CONTACTS, [m.sender_user for m in met], [m.recipient_user for m in met])
        learned.update(_pair(m.sender_user, m.recipient_user) for m in met)
    queued: dict[int, list[Queued]] = {i: [] for i in stored}
    owners: list[int] = []
    rows: list[tuple[Any, ...]] = []
    for i in stored:
        m = messages[i]
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
    """Like sqlite.py's ``_ack`` for every job, in two statements: the
    deletion (which also reads each sender's active devices) and the
    receipts."""
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
    owners: list[int] = []
    rows: list[tuple[Any, ...]] = []
    for i, row in claims:
        job = jobs[i]
        # peer = the acking device, recipient_user = the original sender (sqlite.py's layout)
        common = (row["message_id"], row["owner"], job.device_id, row["peer_user"], job.now, job.expires_at)
        for sender_device in row["sender_devices"]:
            owners.append(i)
            rows.append((sender_device, int(Kind.RECEIPT), b"", *common))
    if rows:
        for i, q in zip(owners, await _insert_rows(conn, rows), strict=True):
            results[i].append(q)
    return results


async def _apply(
    conn: asyncpg.Connection,
    jobs: Sequence[_Job],
    known: AbstractSet[tuple[str, str]],
    learned: set[tuple[str, str]] | None,
) -> list[object]:
    """Run a batch with set-based statements; accepts first (an ack in the
    same batch cannot name a seq the batch creates). Contact pairs: see
    :func:`_accept_many` (``learned`` None: not remembered)."""
    outcomes: list[object] = [None] * len(jobs)
    accepts = [i for i, job in enumerate(jobs) if isinstance(job, _Accept)]
    acks = [i for i, job in enumerate(jobs) if isinstance(job, _Ack)]
    if accepts:
        messages = [jobs[i].message for i in accepts]  # type: ignore[union-attr]
        results = await _accept_many(conn, messages, known, set() if learned is None else learned)
        for i, result in zip(accepts, results, strict=True):
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
                outcomes.extend(await _apply(conn, [job], frozenset(), None))
        except Exception as exc:
            if not is_statement_error(exc):
                raise
            outcomes.append(failure(exc))
    return outcomes
