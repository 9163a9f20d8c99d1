"""Reads of one kind asked in the same turn of the event loop, made together.

An authentication storm makes hundreds of connections read their device and
its user in the same turn of the loop (each resumes when the rate-limit
pipeline answers, and they are answered together), then their first queue
pages, together again. On PostgreSQL each read cost a pooled acquisition,
a statement and its round trip, about as much on the hub as on the server
(docs/PERFORMANCE.md, "The reads of one turn in one statement").
:class:`BatchedReads` gathers the keys asked in one turn and the store
reads them in one statement (``WHERE key = ANY(...)``, or a ``LATERAL``
join for pages), at most :data:`MAX_KEYS` at a time; each caller gets its
own answer. A quiet hub pays one turn of the loop more per read and the
same statement.

Contract: :meth:`BatchedReads.get` answers what a read of that one key would
have, or raises what the batch's read raised (a store failure fails every
caller of its batch, as it would have failed each alone). Each caller has a
future of its own, so a caller that is cancelled (its connection closed)
cancels nobody else's read; two callers of the same key share only the row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, NamedTuple, TypeVar

__all__ = ["MAX_KEYS", "BatchedReads", "Page"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: Most keys one statement reads; a larger turn's keys take several.
MAX_KEYS = 500


class Page(NamedTuple):
    """The key of one page of a drain (``Store.pending``'s arguments)."""

    device_id: str
    after_seq: int
    limit: int
    now: int


class BatchedReads(Generic[K, V]):
    """Reads by key, gathered per turn of the loop (module doc).

    ``read_many(keys)`` returns the value of each key it found; a key it
    did not find is answered ``missing``."""

    def __init__(self, read_many: Callable[[list[K]], Awaitable[dict[K, V]]], missing: V) -> None:
        self._read_many = read_many
        self._missing = missing
        self._waiting: list[tuple[K, asyncio.Future[V]]] = []
        self._tasks: set[asyncio.Task[None]] = set()  # batches in flight, kept from the collector
        #: Batches read, and keys asked (metrics and tests).
        self.batches = 0
        self.asked = 0

    async def get(self, key: K) -> V:
        """The value of ``key``, read with the keys asked in the same turn."""
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._flush)
        fut: asyncio.Future[V] = loop.create_future()
        self._waiting.append((key, fut))
        self.asked += 1
        return await fut

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        for i in range(0, len(waiting), MAX_KEYS):
            task = asyncio.get_running_loop().create_task(self._read(waiting[i : i + MAX_KEYS]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _read(self, waiting: list[tuple[K, asyncio.Future[V]]]) -> None:
        self.batches += 1
        try:
            found = await self._read_many(list(dict.fromkeys(key for key, _ in waiting)))
        except BaseException as exc:
            for _, fut in waiting:
                if not fut.done():
                    if isinstance(exc, asyncio.CancelledError):
                        fut.cancel()
                    else:
                        fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for key, fut in waiting:
            if not fut.done():  # its caller was cancelled meanwhile
                fut.set_result(found.get(key, self._missing))
