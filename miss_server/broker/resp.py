"""A bare Redis connection for the broker's two hot paths (``redis.py``):
the pub/sub reader and the publisher.

Theory of operation
-------------------
redis-py costs tens of microseconds of Python per message it reads or
publishes (a coroutine chain, a timeout context and a retry wrapper per
reply, a task per write when a socket timeout is set), and a hub node
carries a wake-up per message and per receipt. :class:`RespConnection`
lets redis-py open and authenticate the connection (URL, TLS, AUTH, HELLO,
SELECT: its ``Connection.connect``), then takes its stream over: commands
are packed by redis-py and written at once; replies are read a chunk at a
time and parsed by hiredis, every complete value of the chunk in one pass
(:class:`RespParser`). Nothing here retries: a failure is the caller's to
report (the broker's reconnection and gap, or BrokerUnavailable).
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

__all__ = ["RespConnection", "RespParser"]

READ_CHUNK = 65536

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
        return self._writer is not None and not self._writer.transport.is_closing()

    def write(self, *commands: tuple[Any, ...]) -> None:
        """Queue commands on the socket (no wait: the transport buffers)."""
        if self._writer is None or self._writer.transport.is_closing():
            raise RedisConnectionError("Redis connection closed")
        self._writer.writelines(self._conn.pack_commands(commands))

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
