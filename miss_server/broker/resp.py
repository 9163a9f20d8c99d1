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
time and parsed here, every complete value of the chunk in one pass
(:class:`RespParser`). Nothing here retries: a failure is the caller's to
report (the broker's reconnection and gap, or BrokerUnavailable).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

__all__ = ["RespConnection", "RespParser"]

READ_CHUNK = 65536

#: A RESP value as parsed here: bytes (bulk or simple string), int, None,
#: ResponseError (an error reply), or a list of them (array, push, set, map as pairs).
Value = Any


class _Incomplete(Exception):
    """The buffer ends inside a value: wait for more bytes."""


class RespParser:
    """Incremental RESP2/RESP3 parser: :meth:`feed` bytes, get back every
    value they complete, in order."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[Value]:
        buf = self._buf + data if self._buf else data
        values: list[Value] = []
        pos = 0
        try:
            while pos < len(buf):
                value, pos = self._value(buf, pos)
                values.append(value)
        except _Incomplete:
            pass
        self._buf = buf[pos:]
        return values

    def _value(self, buf: bytes, pos: int) -> tuple[Value, int]:
        end = buf.find(b"\r\n", pos)
        if end < 0:
            raise _Incomplete
        kind, line, pos = buf[pos : pos + 1], buf[pos + 1 : end], end + 2
        if kind in b"$=!":  # bulk string, verbatim string, bulk error
            size = int(line)
            if size < 0:
                return None, pos
            if len(buf) < pos + size + 2:
                raise _Incomplete
            data = buf[pos : pos + size]
            return (ResponseError(data.decode(errors="replace")) if kind == b"!" else data), pos + size + 2
        if kind in b"*>~%|":  # array, push, set, map (pairs), attribute
            count = int(line) * (2 if kind in b"%|" else 1)
            if count < 0:
                return None, pos
            items = []
            for _ in range(count):
                item, pos = self._value(buf, pos)
                items.append(item)
            return items, pos
        if kind == b":":
            return int(line), pos
        if kind == b"+" or kind == b",":
            return line, pos
        if kind == b"-":
            return ResponseError(line.decode(errors="replace")), pos
        if kind == b"_":
            return None, pos
        if kind == b"#":
            return line == b"t", pos
        raise RedisConnectionError(f"unexpected RESP type {kind!r}")


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
