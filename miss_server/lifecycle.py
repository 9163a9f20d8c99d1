"""A hub node's life for operations: readiness, and a graceful shutdown.

Theory of operation
-------------------
*Readiness* (``GET /readyz``) says whether a load balancer should send this
node new clients: not while it drains, nor while it cannot reach its store
or its broker (a node that cannot store a message can only answer
``storage_unavailable``). :class:`Readiness` keeps the answer; a background
task (:meth:`Readiness.run_forever`) probes the store (a trivial query) and
the broker (a ping) every :data:`PROBE_INTERVAL` seconds, each bounded by
:data:`PROBE_TIMEOUT`, and ``/readyz`` answers from that cache: a health
check costs the event loop a dictionary lookup, whatever the checker's
rate, and a store that hangs makes the node unready within interval +
timeout. ``/healthz`` stays liveness: 200 while the process serves.

*Draining* (SIGTERM, ``HubServer.shutdown`` in ``app.py``) never cuts a
request in half. :class:`DrainableConnection`, the hub's connection class,
knows whether a frame is *in hand*: from the moment the connection handler
receives it (``recv`` returns) to the handler's next ``recv``, by which
time its reply, ``accepted`` or an error, is written. :meth:`go_away`
closes with 1001 at once when nothing is in hand, else as soon as the
handler asks for its next frame. A frame that arrives once going away has
begun is not handed over: nothing was done for it and nothing promised,
and the client resends it, with the same id, once reconnected (the hub
drops the duplicate). :func:`go_away_spread` tells a node's connections to
go away a few at a time over a window, so that their reconnections do not
reach the other nodes all in the same instant.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Iterable
from typing import Any, Literal, overload

from prometheus_client import CollectorRegistry, Gauge
from websockets.asyncio.server import Server, ServerConnection
from websockets.frames import CloseCode
from websockets.protocol import State
from websockets.typing import Data

from .admission import GatedConnection
from .broker.base import Broker
from .store.base import Store

__all__ = [
    "PROBE_INTERVAL",
    "PROBE_TIMEOUT",
    "DrainableConnection",
    "Readiness",
    "cut_remaining",
    "go_away_spread",
    "wait_for_handlers",
]

log = logging.getLogger("miss.lifecycle")

#: How often the store and the broker are probed (s).
PROBE_INTERVAL = 1.0
#: Longest wait for either probe's answer (s); past it, that one is unreachable.
PROBE_TIMEOUT = 2.0
#: Step of the spreading of closes (s).
SPREAD_TICK = 0.05

STORE_UNREACHABLE = "store unreachable"
BROKER_UNREACHABLE = "broker unreachable"
DRAINING = "draining"


class Readiness:
    """Whether this node should get new clients, cached (module doc).

    :attr:`problem` is None when ready, else the reason, short and fit for
    an HTTP body: ``draining``, ``store unreachable`` or ``broker
    unreachable``. :meth:`start_draining` is final. The gauge
    ``miss_ready`` (1 or 0) says the same to Prometheus."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        registry: CollectorRegistry,
        *,
        interval: float = PROBE_INTERVAL,
        timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self._store = store
        self._broker = broker
        self._interval = interval
        self._timeout = timeout
        self._unreachable: str | None = None  # the last probe's finding
        self._draining = False
        self._gauge = Gauge(
            "miss_ready",
            "1 while this node answers GET /readyz with 200: not draining, store and broker reachable",
            registry=registry,
        )
        self._gauge.set(1)

    @property
    def problem(self) -> str | None:
        return DRAINING if self._draining else self._unreachable

    @property
    def draining(self) -> bool:
        return self._draining

    def start_draining(self) -> None:
        self._draining = True
        self._gauge.set(0)

    async def probe(self) -> None:
        """Probe the store and the broker once (together) and update the cache."""
        store_ok, broker_ok = await asyncio.gather(
            self._answers(self._store.ping(), "store"), self._answers(self._broker.ping(), "broker")
        )
        found = None if store_ok and broker_ok else STORE_UNREACHABLE if not store_ok else BROKER_UNREACHABLE
        if found != self._unreachable:
            if found is None:
                log.info("ready again: store and broker answer")
            else:
                log.warning("not ready", extra={"reason": found})
        self._unreachable = found
        self._gauge.set(0 if self.problem is not None else 1)

    async def _answers(self, ping: Awaitable[None], what: str) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                await ping
        except Exception as exc:  # whatever fails, the node is not fit for new clients
            log.debug("readiness probe failed", extra={"what": what, "error": f"{type(exc).__name__}: {exc}"})
            return False
        return True

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.probe()


class DrainableConnection(GatedConnection):
    """The hub's WebSocket connection: a :class:`GatedConnection` that can
    go away (close 1001) without cutting a request in half (module doc).
    Build it with :meth:`GatedConnection.factory`."""

    __slots__ = ("_closer", "_going_away", "_in_hand")  # as GatedConnection's

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_hand = False
        self._going_away = False
        self._closer: asyncio.Task[None] | None = None

    @property
    def going_away(self) -> bool:
        return self._going_away

    def go_away(self) -> None:
        """Close with 1001 once no frame is in hand. Idempotent."""
        self._going_away = True
        if not self._in_hand:
            self._close_now()

    def _close_now(self) -> None:
        if self._closer is None:
            self._closer = asyncio.create_task(self.close(CloseCode.GOING_AWAY), name="go-away")

    @overload
    async def recv(self, decode: Literal[True]) -> str: ...

    @overload
    async def recv(self, decode: Literal[False]) -> bytes: ...

    @overload
    async def recv(self, decode: bool | None = None) -> Data: ...

    async def recv(self, decode: bool | None = None) -> Data:
        # The handler asks for its next frame: the previous one is answered.
        self._in_hand = False
        while True:
            if self._going_away:
                self._close_now()
            data = await super().recv(decode)
            if not self._going_away:
                self._in_hand = True
                return data
            # Arrived after going away began: not handled (module doc); read
            # on until the close handshake ends the connection.


def _open(connections: Iterable[ServerConnection]) -> list[ServerConnection]:
    return [c for c in connections if c.protocol.state is State.OPEN]


def _tell(connection: ServerConnection) -> None:
    if isinstance(connection, DrainableConnection):
        connection.go_away()
    else:  # not ours (a test's server): close it the plain way
        asyncio.get_running_loop().create_task(connection.close(CloseCode.GOING_AWAY))


async def go_away_spread(server: Server, window: float) -> int:
    """Tell every open connection of ``server`` to go away, evenly over
    ``window`` seconds (all at once for 0), then any that opened meanwhile
    (a handshake already answered when draining began). Returns how many
    were told. Call it once the server refuses new sessions."""
    loop = asyncio.get_running_loop()
    connections = _open(server.all_connections)
    told: set[ServerConnection] = set()
    start, n, i = loop.time(), len(connections), 0
    while i < n:
        elapsed = loop.time() - start
        due = n if window <= 0 else min(n, math.ceil(n * (elapsed + SPREAD_TICK) / window))
        for connection in connections[i:due]:
            _tell(connection)
            told.add(connection)
        i = due
        if i < n:
            await asyncio.sleep(SPREAD_TICK)
    for connection in _open(server.all_connections):
        if connection not in told:
            _tell(connection)
            told.add(connection)
    return len(told)


async def wait_for_handlers(server: Server, deadline: float) -> None:
    """Wait until every connection handler of ``server`` has returned, or
    the event loop's clock reaches ``deadline``."""
    loop = asyncio.get_running_loop()
    while server.handler_tasks and (left := deadline - loop.time()) > 0:
        await asyncio.wait(set(server.handler_tasks), timeout=left)


async def cut_remaining(server: Server, settle: float = 1.0) -> int:
    """Abort every connection of ``server`` still there, give their handlers
    ``settle`` seconds to see it (and detach), cancel those still running.
    Returns how many connections were cut."""
    remaining = [c for c in server.all_connections if c.protocol.state is not State.CLOSED]
    for connection in remaining:
        connection.transport.abort()
    if server.handler_tasks:
        _, pending = await asyncio.wait(set(server.handler_tasks), timeout=settle)
        for task in pending:
            task.cancel()
    return len(remaining)
