"""A bare Redis connection for the broker's two hot paths (``redis.py``):
the pub/sub reader and the publisher.

Theory of operation
-------------------
redis-py costs tens of microseconds of Python per message it reads or
publishes (a coroutine chain, a timeout context and a retry wrapper per
reply, a task per write when a socket timeout is set), and a hub node
carries a wake-up per message and per receipt, and a few commands per
authentication (presence, the shared rate limits). :class:`RespConnection`
lets redis-py open and authenticate the connection (URL, TLS, AUTH, HELLO,
SELECT: its ``Connection.connect``), then takes its stream over: commands
are packed by hiredis (``pack_command``, in C: redis-py's own packing loops
over the arguments in Python, 9 µs a publish and 11 µs a script call) and
written at once; replies are read a chunk at a
time and parsed by hiredis, every complete value of the chunk in one pass
(:class:`RespParser`). Nothing here retries: a failure is the caller's to
report (the broker's reconnection and gap, or BrokerUnavailable).

:class:`RespPipeline` sends commands on one such connection without
waiting for the replies of those before: the commands of one turn of the
event loop leave in one write, in call order, and a single reader hands
the replies out in that order, so each caller gets its own once Redis has
answered them; Redis runs them in call order, as they share a connection.
A caller that needs no reply writes its commands with ``call_soon``, which
puts them on the socket before it returns (with any queued before them)
and does not wait; a callback tells it, once, whether they were answered.
That order is what lets the hub answer ``accepted`` before Redis answers
the message's wake-up: the wake-up is in the kernel's hands first, and a
hub killed right after the answer does not take it along.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["RespConnection", "RespParser", "RespPipeline", "RespScript", "Value"]

READ_CHUNK = 65536

log = logging.getLogger("miss.broker.resp")

#: A RESP value as parsed here: bytes (bulk or simple string), int, None,
#: ResponseError (an error reply), a list of them (array, push, set) or a dict (map).
Value = Any


class RespParser:
    """Incremental RESP2/RESP3 parser (hiredis's, in C): :meth:`feed` bytes,
    get back every value they complete, in order: bytes (bulk and simple
    strings), int, None, a list (array, push, set), a dict (map), or a
    ResponseError for an error reply. A byte stream that is not RESP raises
    ConnectionError."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(replyError=ResponseError, protocolError=RedisConnectionError)

    def feed(self, data: bytes) -> list[Value]:
        self._reader.feed(data)
        values: list[Value] = []
        while (value := self._reader.gets()) is not False:
            values.append(value)
        return values


class RespConnection:
    """One connection opened by redis-py's pool settings, then read and
    written here (module doc). Not safe to read from two tasks at once."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._conn = client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        self._parser = RespParser()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        """Connect and authenticate (redis-py's handshake); raises redis-py's
        connection errors or OSError."""
        await self._conn.connect()
        # The handshake's replies were read by redis-py's pure-Python parser,
        # which keeps nothing buffered beyond the stream itself.
        self._reader, self._writer = self._conn._reader, self._conn._writer

    @property
    def usable(self) -> bool:
        """Open, and not closed by the server: a stream keeps its transport
        open for writing after the peer's EOF, so a connection Redis closed
        (a restart) would take the next commands and never answer them."""
        return (
            self._writer is not None
            and self._reader is not None
            and not self._writer.transport.is_closing()
            and not self._reader.at_eof()
        )

    def write(self, *commands: tuple[Any, ...]) -> None:
        """Queue commands on the socket (no wait: the transport buffers)."""
        try:
            packed = b"".join(map(hiredis.pack_command, commands))
        except TypeError as exc:  # an argument of no RESP type: redis-py's error, for the callers' handlers
            raise DataError(str(exc)) from None
        self.write_packed(packed)

    def write_packed(self, packed: bytes) -> None:
        """Write commands packed already: handed to the socket at once
        unless its buffer is full (the transport keeps the rest)."""
        if self._writer is None or self._writer.transport.is_closing():
            raise RedisConnectionError("Redis connection closed")
        self._writer.write(packed)

    async def read(self) -> list[Value]:
        """The values completed by the next chunk from the socket (maybe
        none); raises ConnectionError once the server closed it."""
        assert self._reader is not None
        data = await self._reader.read(READ_CHUNK)
        if not data:
            raise RedisConnectionError("Redis closed the connection")
        return self._parser.feed(data)

    async def close(self) -> None:
        self._reader = self._writer = None
        await self._conn.disconnect(nowait=True)


#: Who waits for a pipeline: a caller's future, or call_soon's callback.
_Caller = asyncio.Future[list[Value]] | Callable[[RedisError | None], None]

#: Commands written and not yet answered for this long (s): Redis is down.
PIPELINE_TIMEOUT = 5.0
_DOWN = (RedisConnectionError, RedisTimeoutError, OSError, ConnectionError, TimeoutError)


class RespPipeline:
    """Commands pipelined on one connection of ``client``'s settings,
    opened on first use and again after a failure (module doc)."""

    def __init__(self, client: aioredis.Redis, name: str, timeout: float = PIPELINE_TIMEOUT) -> None:
        self._client = client
        self._name = name
        self._timeout = timeout
        self._conn: RespConnection | None = None  # set once open, until it fails
        # Commands not written yet (packed), and each one's caller with its
        # count of commands: those of this turn of the loop, or all of them
        # while the connection is being opened.
        self._unsent: list[bytes] = []
        self._unsent_callers: list[tuple[_Caller, int]] = []
        self._write_due = False  # a write of the unsent commands is scheduled for the end of this turn
        # Callers whose commands were written, in write order, each with its
        # count of commands: replies come back in that order.
        self._inflight: collections.deque[tuple[_Caller, int]] = collections.deque()
        self._worker: asyncio.Task[None] | None = None
        # What the worker waits for while nothing is in flight: it lives as
        # long as the pipeline rather than a task per pipeline sent.
        self._idle: asyncio.Future[None] | None = None

    async def call(self, commands: list[tuple[Any, ...]]) -> list[Value]:
        """The replies of ``commands`` (an error reply as the ResponseError
        it is), once Redis has answered them. Raises
        redis.exceptions.ConnectionError if it did not (the commands may
        have run). Commands of one turn of the loop leave in one write. The
        outcome outlives a cancelled caller."""
        # A future per caller, resolved by the worker: a cancelled caller
        # cancels only its own, which the worker then skips, and its
        # commands go out all the same.
        future: asyncio.Future[list[Value]] = asyncio.get_running_loop().create_future()
        self._queue(commands, future, now=False)
        return await future

    def call_soon(self, commands: list[tuple[Any, ...]], done: Callable[[RedisError | None], None]) -> None:
        """Write ``commands`` now, with any queued before them, and return:
        while the connection is open they are on its socket when this
        returns, so a process killed next does not take them along (a
        wake-up, written before the ``accepted`` it follows: ``redis.py``).
        Their replies are not handed back; once Redis has answered, or the
        connection failed, ``done`` is called on the loop, once, with None,
        the first error reply among them (a ResponseError), or the
        ConnectionError of commands that were not answered (they may have
        run)."""
        self._queue(commands, done, now=True)

    def _queue(self, commands: list[tuple[Any, ...]], caller: _Caller, now: bool) -> None:
        if not commands:  # no reply would ever come to hand it out
            if isinstance(caller, asyncio.Future):
                caller.set_result([])
            else:
                _tell(caller, None)
            return
        try:
            packed = b"".join(map(hiredis.pack_command, commands))
        except TypeError as exc:  # an argument of no RESP type: a bug of the caller's
            _fail_all([(caller, 0)], RedisConnectionError(f"DataError: {exc}"))
            return
        self._unsent.append(packed)
        self._unsent_callers.append((caller, len(commands)))
        conn = self._conn
        if conn is None or not conn.usable:
            self._wake_worker()  # it opens a connection, then writes
        elif now:
            self._write(conn)
        elif not self._write_due:
            self._write_due = True
            asyncio.get_running_loop().call_soon(self._write_scheduled)

    def _write_scheduled(self) -> None:
        self._write_due = False
        if not self._unsent:
            return  # the worker wrote them
        conn = self._conn
        if conn is not None and conn.usable:
            self._write(conn)
        else:
            self._wake_worker()

    def _write(self, conn: RespConnection) -> None:
        """Write every unsent command on ``conn``; should it have closed
        meanwhile, they wait for the worker's next connection."""
        try:
            conn.write_packed(b"".join(self._unsent))
        except RedisConnectionError:
            self._wake_worker()
            return
        self._inflight.extend(self._unsent_callers)
        self._unsent, self._unsent_callers = [], []
        self._wake_worker()

    def _wake_worker(self) -> None:
        if self._idle is not None:
            if not self._idle.done():
                self._idle.set_result(None)
        elif self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name=self._name)

    async def close(self) -> None:
        """Fail what is queued or in flight, and close the connection."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        closed = RedisConnectionError("pipeline closed")
        _fail_all(self._inflight, closed)
        _fail_all(self._unsent_callers, closed)
        self._inflight.clear()
        self._unsent, self._unsent_callers = [], []
        await self._drop()

    async def _work(self) -> None:
        """Open the connection when commands wait for one, and hand the
        replies out in order; then wait for more."""
        while True:
            if not self._inflight and not self._unsent:
                self._idle = asyncio.get_running_loop().create_future()
                try:
                    await self._idle
                finally:
                    self._idle = None
                continue
            opened = self._conn is not None and self._conn.usable
            try:
                if not opened:
                    await self._open()
                    opened = True
                if self._unsent:  # what waited for the connection, or this turn's end
                    self._write(self._conn)  # type: ignore[arg-type]
                await self._answer()
            except asyncio.CancelledError:
                raise
            except (*_DOWN, RedisError) as exc:
                # A reply may be missing or late: the connection is not
                # reused. Commands not written yet wait for the next one,
                # unless none could be opened.
                await self._drop()
                named = str(exc) if isinstance(exc, RedisConnectionError) else f"{type(exc).__name__}: {exc}"
                failed = list(self._inflight)
                self._inflight.clear()
                if not opened:
                    failed += self._unsent_callers
                    self._unsent, self._unsent_callers = [], []
                _fail_all(failed, RedisConnectionError(named))

    async def _open(self) -> None:
        """A new connection (nothing was written on the old one since it
        stopped being usable, so no command goes out twice)."""
        await self._drop()
        conn = RespConnection(self._client)
        async with asyncio.timeout(self._timeout):
            await conn.open()
        self._conn = conn

    async def _answer(self) -> None:
        """Read replies until every caller in flight has its own; no reply
        for ``timeout`` seconds while some are awaited means Redis is down."""
        conn = self._conn
        assert conn is not None
        values: collections.deque[Value] = collections.deque()
        while self._inflight:
            async with asyncio.timeout(self._timeout):
                values.extend(await conn.read())
            while self._inflight and len(values) >= self._inflight[0][1]:
                caller, count = self._inflight.popleft()
                replies = [values.popleft() for _ in range(count)]
                if isinstance(caller, asyncio.Future):
                    if not caller.done():
                        caller.set_result(replies)
                else:
                    _tell(caller, next((r for r in replies if isinstance(r, ResponseError)), None))
        if values:
            raise RedisConnectionError("more replies than commands")

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


class RespScript:
    """A Lua script run through a :class:`RespPipeline`: by its SHA1, and
    by its text once more if Redis does not know it yet (``NOSCRIPT``)."""

    def __init__(self, pipeline: RespPipeline, text: str) -> None:
        self._pipeline = pipeline
        self._text = text
        self._sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, keys: list[str], args: list[Any]) -> Value:
        """The script's reply; raises its error reply (ResponseError), or
        redis.exceptions.ConnectionError if Redis did not answer."""
        [reply] = await self._pipeline.call([("EVALSHA", self._sha, len(keys), *keys, *args)])
        if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT"):
            [reply] = await self._pipeline.call([("EVAL", self._text, len(keys), *keys, *args)])
        if isinstance(reply, ResponseError):
            raise reply
        return reply


def _fail_all(callers: Iterable[tuple[_Caller, int]], exc: RedisConnectionError) -> None:
    """Fail every caller still waiting (a cancelled one is done already),
    and tell every ``call_soon`` caller."""
    for caller, _ in callers:
        if isinstance(caller, asyncio.Future):
            if not caller.done():
                caller.set_exception(exc)
        else:
            _tell(caller, exc)


def _tell(done: Callable[[RedisError | None], None], exc: RedisError | None) -> None:
    """A ``call_soon`` caller's callback; its own failure ends no pipeline."""
    try:
        done(exc)
    except Exception:
        log.exception("pipeline callback failed")
