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

:class:`RespPipeline` sends commands on one such connection in pipelines:
every command queued in the same turn of the event loop, or while the
previous pipeline is in flight, leaves in the next one, in call order, and
each caller gets its replies once its pipeline has been answered. One
pipeline is in flight at a time, so Redis runs the commands in call order.
A caller that needs no reply queues its commands with ``call_soon`` and
does not wait; a callback tells it, once, whether they were answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
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
        if self._writer is None or self._writer.transport.is_closing():
            raise RedisConnectionError("Redis connection closed")
        try:
            packed = b"".join(map(hiredis.pack_command, commands))
        except TypeError as exc:  # an argument of no RESP type: redis-py's error, for the callers' handlers
            raise DataError(str(exc)) from None
        self._writer.write(packed)

    async def read(self) -> list[Value]:
        """The values completed by the next chunk from the socket (maybe
        none); raises ConnectionError once the server closed it."""
        assert self._reader is not None
        data = await self._reader.read(READ_CHUNK)
        if not data:
            raise RedisConnectionError("Redis closed the connection")
        return self._parser.feed(data)

    async def replies(self, count: int, timeout: float) -> list[Value]:
        """Exactly the next ``count`` values, within ``timeout`` seconds."""
        values: list[Value] = []
        async with asyncio.timeout(timeout):
            while len(values) < count:
                values += await self.read()
        if len(values) > count:
            raise RedisConnectionError("more replies than commands")
        return values

    async def close(self) -> None:
        self._reader = self._writer = None
        await self._conn.disconnect(nowait=True)


#: Who waits for a pipeline: a caller's future, or call_soon's callback.
_Caller = asyncio.Future[list[Value]] | Callable[[RedisError | None], None]

#: A pipeline whose replies take longer than this (s): Redis is down.
PIPELINE_TIMEOUT = 5.0
_DOWN = (RedisConnectionError, RedisTimeoutError, OSError, ConnectionError, TimeoutError)


class RespPipeline:
    """Commands pipelined on one connection of ``client``'s settings,
    opened on first use and again after a failure (module doc)."""

    def __init__(self, client: aioredis.Redis, name: str, timeout: float = PIPELINE_TIMEOUT) -> None:
        self._client = client
        self._name = name
        self._timeout = timeout
        self._conn: RespConnection | None = None
        self._outgoing: list[tuple[Any, ...]] = []  # the commands of the next pipeline
        # Each caller of the next pipeline (its future, or call_soon's
        # callback), and where its commands start and end.
        self._callers: list[tuple[_Caller, int, int]] = []
        self._flusher: asyncio.Task[None] | None = None
        # What the flusher waits for while nothing is queued: it lives as
        # long as the pipeline rather than a task per pipeline sent.
        self._idle: asyncio.Future[None] | None = None

    async def call(self, commands: list[tuple[Any, ...]]) -> list[Value]:
        """The replies of ``commands`` (an error reply as the ResponseError
        it is), once their pipeline has been answered. Raises
        redis.exceptions.ConnectionError if it was not (the commands may
        have run). The pipeline's outcome outlives a cancelled caller."""
        # A future per caller, resolved by the flusher: a cancelled caller
        # cancels only its own, which the flusher then skips, and its
        # commands go out all the same.
        future: asyncio.Future[list[Value]] = asyncio.get_running_loop().create_future()
        self._queue(commands, future)
        return await future

    def call_soon(self, commands: list[tuple[Any, ...]], done: Callable[[RedisError | None], None]) -> None:
        """Queue ``commands`` for the next pipeline and return at once. Their
        replies are not handed back; once their pipeline has been answered,
        or has failed, ``done`` is called on the loop, once, with None, the
        first error reply among them (a ResponseError), or the
        ConnectionError of a pipeline that was not answered (the commands
        may have run). For a caller that needs no reply and must not wait
        for Redis, yet has to know of a loss (a wake-up, ``redis.py``)."""
        self._queue(commands, done)

    def _queue(self, commands: list[tuple[Any, ...]], caller: _Caller) -> None:
        start = len(self._outgoing)
        self._outgoing.extend(commands)
        self._callers.append((caller, start, start + len(commands)))
        if self._idle is not None:
            if not self._idle.done():
                self._idle.set_result(None)
        elif self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name=self._name)

    async def close(self) -> None:
        """Fail what is queued, and close the connection."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        _fail_all(self._callers, RedisConnectionError("pipeline closed"))
        self._outgoing, self._callers = [], []
        await self._drop()

    async def _flush(self) -> None:
        """Send what is queued, one pipeline at a time; then wait for more."""
        while True:
            if not self._outgoing:
                self._idle = asyncio.get_running_loop().create_future()
                try:
                    await self._idle
                finally:
                    self._idle = None
                continue
            batch, self._outgoing = self._outgoing, []
            callers, self._callers = self._callers, []
            try:
                replies = await self._send(batch)
            except asyncio.CancelledError:
                _fail_all(callers, RedisConnectionError("pipeline closed"))
                raise
            except (*_DOWN, RedisError) as exc:
                # A reply may be missing or late: the connection is not reused.
                await self._drop()
                named = str(exc) if isinstance(exc, RedisConnectionError) else f"{type(exc).__name__}: {exc}"
                _fail_all(callers, RedisConnectionError(named))
            else:
                for caller, start, end in callers:
                    if isinstance(caller, asyncio.Future):
                        if not caller.done():
                            caller.set_result(replies[start:end])
                        continue
                    _tell(caller, next((r for r in replies[start:end] if isinstance(r, ResponseError)), None))

    async def _send(self, batch: list[tuple[Any, ...]]) -> list[Value]:
        """One pipeline, on the connection opened afresh if it is not usable
        (nothing was written on it then, so the commands go out once)."""
        if self._conn is None or not self._conn.usable:
            await self._drop()
            conn = RespConnection(self._client)
            async with asyncio.timeout(self._timeout):
                await conn.open()
            self._conn = conn
        self._conn.write(*batch)
        return await self._conn.replies(len(batch), self._timeout)

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


def _fail_all(callers: list[tuple[_Caller, int, int]], exc: RedisConnectionError) -> None:
    """Fail every caller still waiting (a cancelled one is done already),
    and tell every ``call_soon`` caller."""
    for caller, _, _ in callers:
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
