"""Group commit for PostgresStore: ``accept`` and ``ack`` in batches.

Theory of operation
-------------------
Writes that keep the hub running, ``accept`` and ``ack``, go through **group
commit**: a single task, the committer (:class:`GroupCommit`), owns the queue
of waiting calls. When it wakes it takes every call waiting (up to
``max_batch``) and runs them in one transaction, as one call of the
server-side function ``miss_group_commit`` (migration 0007): set-based
statements over ``unnest`` arrays for the message ids, the contacts, the
queue rows, the acked rows and their receipts. That call is the batch's
only statement, so it runs in its own implicit transaction
(``postgres_pool.Database.statement``): PostgreSQL commits it before it
answers, and a batch costs one round trip whatever its size (an explicit
``BEGIN`` and ``COMMIT`` would make three, which is most of a small batch's
cost on both sides of the socket). That function is PostgreSQL's one
statement of the rules of accept() and ack(); this module only packs the
calls into its arrays and hands each caller its rows. A caller's future
resolves only after the server's answer, which follows the commit, so
"accepted" always means "durable" while a busy hub pays one commit (one WAL
flush) per batch rather than per message.

Calls arriving while a commit is in flight wait for the next batch, and the
next batch starts no sooner than an interval after the last commit
(:class:`AdaptivePacing`): ``COMMIT_INTERVAL`` on a quiet hub, which adds no
latency, and longer, up to ``MAX_COMMIT_INTERVAL``, while calls arrive too
slowly to fill ``TARGET_BATCH`` per batch. That is the case of each of
several nodes sharing a load: each sees a fraction of the calls, so with a
fixed interval N nodes would together commit N times as often as one, and
a commit's fixed cost (a WAL flush, the function call, a round trip, the
Redis pipeline of the wake-ups it resolves) would be shared by N times
fewer messages. If a statement of a batch fails (bad input, not a lost
connection) the batch is replayed in one transaction with one savepoint per
call, so one bad call fails alone. One batch is in flight at a time per
store, so within one hub node ``seq`` order is commit order.

Rows that other hubs may insert at the same time (message ids, contact pairs)
are inserted in sorted order, ids before contacts: every transaction takes
those locks in one global order, so concurrent batches never deadlock. A pair
is inserted once per committer: contacts are never deleted, so the pairs a
committed batch wrote are remembered (up to ``MAX_KNOWN_CONTACTS``) and not
sent again, as sqlite.py does.

The store lends the committer its two runners, ``postgres_pool.Database``'s
``statement`` for a batch (a connection lost once the call may have been
sent is an unknown outcome, :class:`StoreUnavailable`, never retried: a
resent ``accept`` is then answered ``duplicate``, a resent ``ack`` deletes
nothing twice) and ``transaction`` for the replay with savepoints; the
committer turns failures into each caller's error with ``postgres_errors``.
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

from .base import (
    COMMIT_INTERVAL,
    AcceptResult,
    GroupCommitStats,
    NewMessage,
    Queued,
    Refusals,
    StoreUnavailable,
)
from .common import Pacing
from .postgres_errors import failure, is_statement_error
from .rows import to_queued

__all__ = ["AdaptivePacing", "GroupCommit", "Transaction"]

log = logging.getLogger("miss.store.postgres")

#: Contact pairs a committer remembers before it starts afresh.
MAX_KNOWN_CONTACTS = 100_000

#: Calls a batch should carry before the interval stops growing (module doc):
#: a node taking 2,000 calls a second fills it at ``COMMIT_INTERVAL``. One
#: node at 1,000 messages/s brings about 1,400 (an accept a message, and an
#: ack for four or five rows, since clients batch their acks), so it commits
#: about every 7 ms. 7 here would keep it at 5 ms, with more commits; the
#: bench saw no difference in latency.
TARGET_BATCH = 10
#: The longest interval between commits: at most this much more before
#: ``accepted`` (and before a receipt leaves), whatever the load.
MAX_COMMIT_INTERVAL = 0.010
#: Below this many calls a second, longer intervals would batch nothing
#: worth a delay: the interval stays ``COMMIT_INTERVAL``.
BUSY_RATE = 2 / COMMIT_INTERVAL
#: Weight of the latest batch in the estimated arrival rate.
RATE_WEIGHT = 0.2

#: Runs a function on a pooled connection, in one transaction, and returns its value.
Transaction = Callable[[Callable[[asyncpg.Connection], Awaitable[Any]]], Awaitable[Any]]

#: One group commit: migrations/postgres/0007_group_commit_receipts.sql.
_GROUP_COMMIT = "SELECT * FROM miss_group_commit(" + ", ".join(f"${i}" for i in range(1, 20)) + ")"


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
    refused: Refusals
    future: asyncio.Future[Any]


_Job = _Accept | _Ack


class AdaptivePacing(Pacing):
    """:class:`~miss_server.store.common.Pacing` whose interval follows the
    calls' arrival rate, estimated over the last batches: long enough for
    ``TARGET_BATCH`` calls, within ``COMMIT_INTERVAL`` and
    ``MAX_COMMIT_INTERVAL``; ``COMMIT_INTERVAL`` below ``BUSY_RATE``."""

    def __init__(self, max_batch: int) -> None:
        super().__init__(max_batch)
        self.interval = COMMIT_INTERVAL
        self._rate = 0.0  # calls per second, moving average

    def pause(self, now: float) -> float:
        return self._ended + self.interval - now

    def ended(self, now: float, calls: int) -> None:
        if calls:  # a failed batch says nothing of the load
            since = now - self._ended  # the calls of this batch arrived in about that time
            if since > 0:
                self._rate += RATE_WEIGHT * (calls / since - self._rate)
            wanted = TARGET_BATCH / self._rate if self._rate >= BUSY_RATE else COMMIT_INTERVAL
            self.interval = min(max(wanted, COMMIT_INTERVAL), MAX_COMMIT_INTERVAL)
        super().ended(now, calls)


class GroupCommit:
    """One task committing waiting accept/ack calls in batches (module doc).

    Made inside a running event loop; :meth:`stop` before dropping it.
    """

    def __init__(self, statement: Transaction, transaction: Transaction, max_batch: int) -> None:
        self._statement = statement
        self._transaction = transaction
        self._pacing = AdaptivePacing(max_batch)
        self._waiting: deque[_Job] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._contacts: set[tuple[str, str]] = set()  # pairs committed to contacts (module doc)
        self._task = asyncio.create_task(self._loop(), name="miss-postgres-group-commit")

    @property
    def stats(self) -> GroupCommitStats:
        """Its committed batches (failed ones do not count)."""
        return self._pacing.stats

    async def accept(self, message: NewMessage) -> AcceptResult:
        """:meth:`Store.accept <miss_server.store.base.Store.accept>`, batched."""
        result: AcceptResult = await self._call(_Accept(message, asyncio.get_running_loop().create_future()))
        return result

    async def ack(
        self, device_id: str, seqs: list[int], now: int, expires_at: int, refused: Refusals
    ) -> list[Queued]:
        """:meth:`Store.ack <miss_server.store.base.Store.ack>`, batched."""
        future = asyncio.get_running_loop().create_future()
        job = _Ack(device_id, list(seqs), now, expires_at, dict(refused), future)
        receipts: list[Queued] = await self._call(job)
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
        try:
            while True:
                if not self._waiting:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                pause = self._pacing.pause(loop.time())
                if pause > 0 and not self._closing:
                    await asyncio.sleep(pause)
                batch: list[_Job] = []
                while self._waiting and len(batch) < self._pacing.max_batch:
                    job = self._waiting.popleft()
                    if not job.future.done():  # a cancelled caller was told nothing: skip it
                        batch.append(job)
                if batch:
                    committed = await self._commit(batch)
                    self._pacing.ended(loop.time(), len(batch) if committed else 0)
        except asyncio.CancelledError:
            for job in self._waiting:
                if not job.future.done():
                    job.future.set_exception(StoreUnavailable("store is closed"))
            raise

    async def _commit(self, batch: list[_Job]) -> bool:
        """Run the batch and resolve its callers; whether it committed."""
        try:
            outcomes = await self._run(batch)
        except Exception as exc:  # _run translates; this is the last guard
            outcomes, committed = [failure(exc) for _ in batch], False
        else:
            committed = True
        for job, outcome in zip(batch, outcomes, strict=True):
            if job.future.done():
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)
        return committed

    async def _run(self, jobs: list[_Job]) -> list[object]:
        """The fast path, or one savepoint per call; an outcome per job."""
        learned: set[tuple[str, str]] = set()
        try:
            outcomes: list[object] = await self._statement(
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


# --- the batch on the server --------------------------------------------------------


def _pair(a: str, b: str) -> tuple[str, str]:
    """The key of a contact pair in the committer's memory (either order)."""
    return (a, b) if a <= b else (b, a)


async def _apply(
    conn: asyncpg.Connection,
    jobs: Sequence[_Job],
    known: AbstractSet[tuple[str, str]],
    learned: set[tuple[str, str]] | None,
) -> list[object]:
    """Run a batch in one call of ``miss_group_commit``, which decides every
    outcome (module doc); an outcome per job. Contact pairs in ``known`` are
    not sent again; the pairs of the messages stored are added to
    ``learned`` (None: not remembered)."""
    # accept(): the server stores the first call of each (sender, id) unless
    # recorded; a repeat within the batch is a duplicate as it would be after it.
    accepts = {i: job.message for i, job in enumerate(jobs) if isinstance(job, _Accept)}
    calls = {i: job for i, job in enumerate(jobs) if isinstance(job, _Ack)}
    first: dict[tuple[str, bytes], int] = {}
    for i, m in accepts.items():
        first.setdefault((m.sender_user, m.message_id), i)
    keys = sorted(first)  # one lock order for every hub: concurrent resends do not deadlock
    messages = [(i, accepts[i]) for i in first.values()]
    pairs = [m for _, m in messages if _pair(m.sender_user, m.recipient_user) not in known]
    rows = [(i, m, device_id) for i, m in messages for device_id in m.envelopes]
    # ack(): each (device, seq) belongs to the first call that names it, with
    # that call's reason if it refused it (None: a plain ack).
    acked: dict[tuple[str, int], int] = {}
    for i, call in calls.items():
        for seq in (*call.seqs, *call.refused):
            acked.setdefault((call.device_id, seq), i)
    acks = [(d, seq, calls[i]) for (d, seq), i in acked.items()]
    records = await conn.fetch(
        _GROUP_COMMIT,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [accepts[first[k]].expires_at for k in keys],
        [m.sender_user for m in pairs],
        [m.recipient_user for m in pairs],
        [m.message_id for m in pairs],
        [r[2] for r in rows],
        [r[1].envelopes[r[2]] for r in rows],
        [r[1].message_id for r in rows],
        [r[1].sender_user for r in rows],
        [r[1].sender_device for r in rows],
        [r[1].recipient_user for r in rows],
        [r[1].ts for r in rows],
        [r[1].expires_at for r in rows],
        [a[0] for a in acks],
        [a[1] for a in acks],
        [a[2].now for a in acks],
        [a[2].expires_at for a in acks],
        [a[2].refused.get(a[1]) for a in acks],
    )
    by_tag: dict[str, list[asyncpg.Record]] = {"I": [], "Q": [], "R": []}
    for r in records:
        by_tag[r["tag"]].append(r)
    stored = {(r["peer_user"], r["message_id"]) for r in by_tag["I"]}
    if learned is not None:
        learned.update(
            _pair(m.sender_user, m.recipient_user) for m in pairs if (m.sender_user, m.message_id) in stored
        )

    outcomes: list[object] = [None] * len(jobs)
    queued: dict[int, list[Queued]] = {i: [] for i, m in messages if (m.sender_user, m.message_id) in stored}
    mine = [r for r in rows if (r[1].sender_user, r[1].message_id) in stored]
    got = sorted(by_tag["Q"], key=lambda r: r["seq"])
    if [(r["device_id"], r["message_id"]) for r in got] != [(r[2], r[1].message_id) for r in mine]:
        raise RuntimeError("queue rows did not get seqs in insertion order")
    for (i, m, device_id), r in zip(mine, got, strict=True):
        queued[i].append(m.queued(r["seq"], device_id))
    for i in accepts:
        outcomes[i] = AcceptResult(i not in queued, queued.get(i, []))
    receipts: dict[int, list[Queued]] = {i: [] for i in calls}
    for r in sorted(by_tag["R"], key=lambda r: r["seq"]):
        receipts[acked[(r["peer_device"], r["ref"])]].append(to_queued(r))
    for i, queued_receipts in receipts.items():
        outcomes[i] = queued_receipts
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
