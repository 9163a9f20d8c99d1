"""One keepalive for every WebSocket connection of a hub node (DESIGN.md,
liveness: a dead client is cut within ``ping_interval + ping_timeout``, with
close code 1011 ``keepalive ping timeout``).

Why: ``websockets`` runs a keepalive task per connection: a sleeping task,
its coroutine frame, a future and a timer each, and one wake-up of the
event loop per connection per interval for the ping and again for its
timeout. Twenty thousand idle connections then wake the loop a thousand
times a second, one connection at a time. Here one task, the wheel, wakes
every :attr:`KeepaliveWheel.tick` and handles every connection due in that
tick together.

Theory of operation
-------------------
Each connection is in exactly one bucket of the wheel, keyed by the tick at
which it is next looked at; the wheel does per connection what
``websockets``' ``Connection.keepalive`` does:

* **waiting to be pinged** (:attr:`KeptConnection._ka_ping` None): in the
  bucket of its next ping. The first ping of a connection falls at random
  within the first interval, so that the connections of a reconnection
  storm are spread over the interval rather than pinged together for ever
  after. The ping is written at once (a random 4-byte payload, as
  ``websockets``), without waiting for the socket to drain: a connection
  whose peer does not read delays no one else's ping.
* **waiting for the pong** (payload kept): in the bucket of ``sent +
  ping_timeout``. The pong (:meth:`KeepaliveWheel.answered`, from the
  connection's ``acknowledge_pings``) moves it to the bucket of its next
  ping, ``ping_interval`` after the previous one was sent, or at once if
  the pong took longer than that (as ``websockets`` does). A connection
  still there when its bucket comes is failed with 1011 ``keepalive ping
  timeout`` exactly as ``websockets`` fails it (``protocol.fail`` within
  ``send_context``: the close frame, then the TCP connection closed, within
  ``close_timeout`` at most).

A bucket is processed at the first tick at or after its time: a timeout is
never early. A ping is sent up to two ticks early, so that rounding to
ticks never makes it late and the bound holds whole (but for the event
loop's own lag, as with ``websockets``): a client that stops answering was
pinged last at most ``ping_interval`` before, and is cut ``ping_timeout``
after its next ping. A tick is a twentieth of the shorter of the two
settings, at most 100 ms.

A connection the hub has **heard from** within the interval (any bytes:
a frame, its own ping, a pong) is alive, and is not pinged: it is looked
at again ``ping_interval`` after it was last heard. A client that pings
the hub itself (``websockets``' clients do, every 20 s), or that sends
anything as often, then costs two frames per interval instead of four,
and the bound is unchanged: a client last heard at ``h`` is pinged by
``h + ping_interval`` if it says nothing more, and cut ``ping_timeout``
after. Noting the time costs one ``loop.time()`` per read.

A connection leaves the wheel when it is lost (``connection_lost``). One
that is closing (its close handshake begun) is not pinged again; the close
timeout ends it. The wheel's task ends when it holds no connection and
starts again with the next one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.protocol import State

__all__ = ["KeepaliveWheel", "KeptConnection"]

log = logging.getLogger("miss.keepalive")

#: Bounds of a tick (s): long ticks would batch too many pings into one
#: stretch of the event loop, short ones wake it for nothing.
MAX_TICK = 0.1
MIN_TICK = 0.005


class KeptConnection(ServerConnection):
    """A server connection kept alive by the class's :attr:`keepalive_wheel`
    wheel, if set (else by ``websockets``' own task, if ``serve`` was given
    a ``ping_interval``). Its four slots are the wheel's bookkeeping."""

    # Slots, not instance attributes: see GatedConnection (admission.py).
    __slots__ = ("_ka_heard", "_ka_key", "_ka_ping", "_ka_sent")

    keepalive_wheel: KeepaliveWheel | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ka_key: int | None = None  # the bucket it is in; None: not in the wheel
        self._ka_ping: bytes | None = None  # the payload of the ping not yet answered
        self._ka_sent = 0.0  # when that ping was sent (loop time)
        self._ka_heard = 0.0  # when bytes from the peer last came (loop time)

    def data_received(self, data: bytes) -> None:
        self._ka_heard = self.loop.time()
        super().data_received(data)

    def start_keepalive(self) -> None:
        # Called by websockets' serve once the handshake succeeded, before the handler.
        if self.keepalive_wheel is not None:
            self.keepalive_wheel.add(self)
        else:
            super().start_keepalive()

    def acknowledge_pings(self, data: bytes) -> None:
        if self._ka_ping is not None and data == self._ka_ping and self.keepalive_wheel is not None:
            self.keepalive_wheel.answered(self)
            return
        super().acknowledge_pings(data)  # pings sent with ws.ping()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.keepalive_wheel is not None:
            self.keepalive_wheel.remove(self)
        super().connection_lost(exc)


class KeepaliveWheel:
    """Pings every connection added every ``interval`` seconds and fails
    with 1011 any whose pong is ``timeout`` seconds late (module doc)."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.tick = min(MAX_TICK, max(MIN_TICK, min(interval, timeout) / 20))
        self._buckets: dict[int, dict[KeptConnection, None]] = {}
        self._count = 0
        self._next = 0  # the first bucket not processed yet
        self._task: asyncio.Task[None] | None = None
        self._cuts: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        """Connections in the wheel."""
        return self._count

    # --- connections ----------------------------------------------------------

    def add(self, conn: KeptConnection) -> None:
        """Keep ``conn`` alive from now on (its handshake is done)."""
        if conn._ka_key is not None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._task is None:
            self._next = self._key(now)
            self._task = loop.create_task(self._run(), name="keepalive")
        conn._ka_ping = None
        self._place(conn, self._ping_key(now + random.uniform(0, self.interval)))

    def remove(self, conn: KeptConnection) -> None:
        """Forget ``conn`` (lost). Idempotent."""
        key = conn._ka_key
        if key is None:
            return
        bucket = self._buckets[key]
        del bucket[conn]
        if not bucket:
            del self._buckets[key]
        conn._ka_key = None
        conn._ka_ping = None
        self._count -= 1

    def answered(self, conn: KeptConnection) -> None:
        """``conn``'s pong to the wheel's ping came: its next ping is due
        ``interval`` after this one was sent (or now, if later)."""
        now = asyncio.get_running_loop().time()
        conn.latency = now - conn._ka_sent
        conn._ka_ping = None
        if conn._ka_key is None:
            return
        self.remove(conn)
        self._place(conn, self._ping_key(max(conn._ka_sent + self.interval, now)))

    # --- the wheel ------------------------------------------------------------

    def _key(self, when: float) -> int:
        return math.floor(when / self.tick)

    def _ping_key(self, when: float) -> int:
        # One tick early: processed from ``when`` - 2 ticks (plus the loop's
        # lag), so that rounding to ticks never makes a ping late (module doc).
        return self._key(when) - 1

    def _place(self, conn: KeptConnection, key: int) -> None:
        key = max(key, self._next)  # never behind the wheel
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = {}
        bucket[conn] = None
        conn._ka_key = key
        self._count += 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._count:
                now = loop.time()
                current = self._key(now)
                while self._next <= current:
                    bucket = self._buckets.pop(self._next, None)
                    self._next += 1
                    if bucket:
                        self._turn(bucket, now)
                await asyncio.sleep((current + 1) * self.tick - now)
        finally:
            self._task = None

    def _turn(self, bucket: dict[KeptConnection, None], now: float) -> None:
        """Handle the connections of a bucket that has come."""
        self._count -= len(bucket)
        timeout_key = math.ceil((now + self.timeout) / self.tick)
        for conn in bucket:
            conn._ka_key = None
        for conn in bucket:
            try:
                self._visit(conn, now, timeout_key)
            except Exception:  # a bug must not end every other connection's liveness
                log.exception("keepalive failed", extra={"peer": str(conn.remote_address)})

    def _visit(self, conn: KeptConnection, now: float, timeout_key: int) -> None:
        """Ping ``conn``, or cut it if its pong is late."""
        if conn._ka_ping is not None:
            if now - conn._ka_sent >= self.timeout:
                self._cut(conn)
            else:  # a bucket come before its time (rounding): look again when it is late
                self._place(conn, math.ceil((conn._ka_sent + self.timeout) / self.tick))
            return
        if conn.protocol.state is not State.OPEN or conn.transport.is_closing():
            return  # closing: no more pings, the close timeout ends it
        if now - conn._ka_heard < self.interval:  # heard from lately: alive (module doc)
            self._place(conn, self._ping_key(conn._ka_heard + self.interval))
            return
        payload = random.getrandbits(32).to_bytes(4, "big")
        try:
            conn.protocol.send_ping(payload)
            conn.send_data()
        except Exception as exc:  # the transport failed under us; connection_lost follows
            log.debug("keepalive ping not sent", extra={"error": str(exc)})
            return
        conn._ka_ping, conn._ka_sent = payload, now
        self._place(conn, timeout_key)

    def _cut(self, conn: KeptConnection) -> None:
        task = asyncio.get_running_loop().create_task(self._fail(conn))
        self._cuts.add(task)
        task.add_done_callback(self._cuts.discard)

    @staticmethod
    async def _fail(conn: KeptConnection) -> None:
        """What ``websockets``' keepalive does when a pong is late."""
        conn._ka_ping = None
        try:
            async with conn.send_context():
                conn.protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("keepalive cut failed")
