"""Admission of new connections: caps on connections that have not
authenticated yet (SPEC §2, "Connections before authentication").

Theory of operation
-------------------
A connection that has not authenticated costs the hub a socket and a file
descriptor while it does nothing for anyone: a thousand silent ones from one
address once took every descriptor a hub had, and every clinician's next
connection with them. :class:`PendingGate` counts such connections, per
client address and in all, and refuses one past either cap:

* at TCP accept (:class:`Acceptor`), before a byte is read or an object is
  made for it: the socket is closed at once, it never reaches the
  handshake, nothing is logged for it (a metric counts it). The address is
  the TCP peer's. The hub accepts connections itself, a batch at a time,
  because asyncio's own accept would first build every connection's
  WebSocket objects: a thousand refused connections a second from one
  address then cost the event loop (and its garbage collector) tens of
  milliseconds at a stretch, which the clinicians' messages waited for.
  :class:`GatedConnection`, the hub's WebSocket connection class, counts
  the connections admitted, by the same rules;
* behind a trusted reverse proxy every TCP peer is the proxy, so there the
  per-address cap waits for the HTTP request, which names the client
  (``X-Forwarded-For``): :meth:`PendingGate.admit_forwarded` answers before
  the WebSocket handshake, and the hub refuses with HTTP 503.

A connection leaves the count when it authenticates (:meth:`settle`) or
closes, whichever comes first. One that closes first is reported with the
stage it reached (:data:`CLOSE_STAGES`), so that the metrics say whether
half-open connections are being cut by the handshake timeout or clients
leave before authenticating.

An address counts as :func:`address_key` says, here and in the per-address
budgets (guard.py): an IPv6 client by its /64, the block a subscriber or a
LAN gets, since a client that can pick any address of its /64 would
otherwise pass every per-address cap and, with 4,096 addresses, fill the
total one that everybody else needs.

:func:`raise_open_file_limit` lifts the process's soft limit on open files
to its hard limit at start, and :func:`effective_pending_cap` keeps the
overall cap at a quarter of what the process may open, so that pending
connections can never take the descriptors authenticated ones need.
:class:`AcceptErrorFilter` makes asyncio's "out of system resource" errors,
which it logs with a traceback at every failed accept, one line per ten
seconds with a count.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import resource
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from .keepalive import KeepaliveWheel, KeptConnection

__all__ = [
    "CLOSE_STAGES",
    "AcceptErrorFilter",
    "Acceptor",
    "GatedConnection",
    "PendingGate",
    "address_key",
    "effective_pending_cap",
    "raise_open_file_limit",
]

log = logging.getLogger("miss.admission")

#: Where a connection that closed before authenticating had got to:
#: ``handshake``, its HTTP request never came whole (the handshake timeout
#: cut it, or the client left); ``http``, a request answered without a
#: WebSocket (``/healthz``, a file, a refusal); ``auth``, a WebSocket that
#: no accepted ``auth``/``enroll`` followed (the auth timeout, a failure).
CLOSE_STAGES = ("handshake", "http", "auth")


@functools.lru_cache(maxsize=4096)
def address_key(address: str) -> str:
    """What a client address counts as for per-address caps and budgets:
    an IPv4 address (an IPv4-mapped IPv6 one too) as it is, an IPv6 address
    by its /64 network (``2001:db8:1:2::/64``), anything else (not an IP
    address) unchanged."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class PendingGate:
    """Counts connections not authenticated yet, per address (by
    :func:`address_key`) and in all."""

    def __init__(
        self,
        per_address: int,
        total: int,
        on_refused: Callable[[str], None] = lambda scope: None,
        on_closed: Callable[[str], None] = lambda stage: None,
    ) -> None:
        self.per_address = per_address
        self.total = total
        self._on_refused = on_refused
        #: Called with the stage (CLOSE_STAGES) of an admitted connection
        #: that closed before it authenticated.
        self.on_closed = on_closed
        self._by_address: dict[str, int] = {}
        self._count = 0

    @property
    def pending(self) -> int:
        return self._count

    def admit(self, address: str | None) -> bool:
        """Count one more pending connection (from ``address``; None: count
        it in the total only); False, counting nothing, past a cap."""
        if self._count >= self.total:
            self._on_refused("total")
            return False
        if address is not None:
            address = address_key(address)
            n = self._by_address.get(address, 0)
            if n >= self.per_address:
                self._on_refused("address")
                return False
            self._by_address[address] = n + 1
        self._count += 1
        return True

    def would_admit(self, address: str | None) -> bool:
        """What :meth:`admit` would answer, counting nothing but a refusal."""
        if self._count >= self.total:
            self._on_refused("total")
            return False
        if address is not None and self._by_address.get(address_key(address), 0) >= self.per_address:
            self._on_refused("address")
            return False
        return True

    def admit_forwarded(self, address: str) -> bool:
        """The per-address cap for a connection already counted in the total
        (behind a proxy); False, counting nothing, past it."""
        address = address_key(address)
        n = self._by_address.get(address, 0)
        if n >= self.per_address:
            self._on_refused("address")
            return False
        self._by_address[address] = n + 1
        return True

    def release(self, address: str | None, *, counted: bool = True) -> None:
        """Forget one pending connection: of ``address`` (if given) and, if
        ``counted``, of the total."""
        if counted:
            self._count -= 1
        if address is not None:
            address = address_key(address)
            n = self._by_address.get(address, 0) - 1
            if n > 0:
                self._by_address[address] = n
            else:
                self._by_address.pop(address, None)


class _Frames(list[Any]):
    """The part of a deque's interface that websockets' queue of received
    frames uses (``asyncio.messages.SimpleQueue``), on a list: the queue
    holds a few frames (reading pauses past ``max_queue``), and an empty
    deque costs 0.7 KiB, an empty list 56 bytes."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)

    def extendleft(self, items: Iterable[Any]) -> None:
        # As deque.extendleft: each item in turn goes to the front.
        self[:0] = reversed(list(items))


class GatedConnection(KeptConnection):
    """The hub's WebSocket connection: counted by a :class:`PendingGate`
    from TCP accept until it authenticates or closes, and kept alive by the
    node's :class:`~miss_server.keepalive.KeepaliveWheel` if the factory was
    given one. Build it with :meth:`factory`."""

    # Slots: websockets' connection has 27 attributes; past 30, CPython 3.11
    # gives every instance a full dict of its own (1.5 KiB per connection).
    __slots__ = ("_forwarded_address", "_pending", "_pending_address", "_refused")

    gate: PendingGate
    by_peer: bool  # count per TCP peer address (False behind a trusted proxy)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending = False
        self._pending_address: str | None = None
        self._forwarded_address: str | None = None
        self._refused = False
        # A list, not websockets' deque: appended, removed from and iterated
        # only, and an empty deque is a 64-slot block (0.7 KiB a connection).
        self.drain_waiters = cast(Any, [])

    @classmethod
    def factory(
        cls, gate: PendingGate, *, by_peer: bool, keepalive: KeepaliveWheel | None = None
    ) -> type[GatedConnection]:
        """A subclass bound to ``gate`` and, if given, to the ``keepalive``
        wheel (then pass ``ping_interval=None``), for ``serve(create_connection=...)``."""
        return type("HubConnection", (cls,), {"gate": gate, "by_peer": by_peer, "keepalive_wheel": keepalive})

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer and self.by_peer else None
        if not self.gate.admit(address):
            # Before the handshake exists: no handler task, nothing to log.
            self._refused = True
            cast(asyncio.Transport, transport).abort()
            return
        self._pending, self._pending_address = True, address
        super().connection_made(transport)
        self.recv_messages.frames.queue = cast(Any, _Frames())  # as drain_waiters (__init__)

    def admit_forwarded(self, address: str) -> bool:
        """Behind a proxy: the per-address cap, once the request names the client."""
        if not self._pending or self._forwarded_address is not None:
            return True
        if not self.gate.admit_forwarded(address):
            return False
        self._forwarded_address = address
        return True

    def settle(self) -> None:
        """The connection authenticated (or is done): it no longer counts. Idempotent."""
        if self._pending:
            self._pending = False
            self.gate.release(self._pending_address)
            if self._forwarded_address is not None:
                self.gate.release(self._forwarded_address, counted=False)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return  # connection_made stopped before the connection existed
        if self._pending:
            if self.request is None:
                self.gate.on_closed("handshake")
            elif self.response is None or self.response.status_code != 101:
                self.gate.on_closed("http")
            else:
                self.gate.on_closed("auth")
        self.settle()
        super().connection_lost(exc)


#: Accept failures for lack of resources, after which accepting pauses.
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
#: How long accepting pauses after such a failure (s), as asyncio does.
ACCEPT_RETRY_SECONDS = 1.0


class Acceptor:
    """Accepts the connections of a listening ``server`` in place of asyncio
    (module doc): at most ``batch`` per wake-up; one that ``gate`` would
    refuse is closed at once; the others get ``factory``'s protocol, as
    asyncio would have given them (``tls``, whose handshake has
    ``tls_timeout`` seconds, asyncio's 60 by default).

    ``start`` takes over the server's listening sockets; ``close`` gives
    them back to nobody (call it before closing the server)."""

    def __init__(
        self,
        listening: list[socket.socket],
        factory: Callable[[], asyncio.BaseProtocol],
        gate: PendingGate,
        *,
        by_peer: bool,
        batch: int,
        tls: ssl.SSLContext | None = None,
        tls_timeout: float | None = None,
    ) -> None:
        self._listening = listening
        self._factory = factory
        self._gate = gate
        self._by_peer = by_peer
        self._batch = batch
        self._tls = tls
        self._tls_timeout = tls_timeout if tls is not None else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for sock in self._listening:
            sock.setblocking(False)
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        if self._loop is not None:
            for sock in self._listening:
                self._loop.remove_reader(sock.fileno())
        for sock in self._listening:
            sock.close()

    def _accept(self, sock: socket.socket) -> None:
        assert self._loop is not None
        for _ in range(self._batch):
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    log.warning("accept failed", extra={"error": str(exc)})
                    return
                # The socket stays readable: stop listening a while (AcceptErrorFilter logs it).
                self._loop.call_exception_handler(
                    {"message": "socket.accept() out of system resource", "exception": exc}
                )
                self._loop.remove_reader(sock.fileno())
                self._loop.call_later(
                    ACCEPT_RETRY_SECONDS, self._loop.add_reader, sock.fileno(), self._accept, sock
                )
                return
            address = str(peer[0]) if self._by_peer and peer else None
            if not self._gate.would_admit(address):
                conn.close()
                continue
            conn.setblocking(False)
            task = self._loop.create_task(self._connect(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket) -> None:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(
                self._factory, conn, ssl=self._tls, ssl_handshake_timeout=self._tls_timeout
            )
        except (OSError, ssl.SSLError) as exc:  # the peer left, or its TLS handshake failed
            log.debug("connection not set up", extra={"error": str(exc)})
            conn.close()


def raise_open_file_limit() -> int:
    """Lift the soft limit on open files to the hard one; returns the soft
    limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit", extra={"soft": soft, "error": str(exc)})
    return soft


def effective_pending_cap(configured: int) -> int:
    """``configured``, at most a quarter of this process's open-file limit."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft // 4))


class AcceptErrorFilter:
    """An event loop exception handler: accept failures for lack of
    resources (EMFILE, ENFILE, ENOBUFS, ENOMEM), which asyncio reports with a
    traceback each time it retries, become one warning per ``interval``
    seconds with the count; everything else goes to ``previous``."""

    def __init__(
        self,
        previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None,
        interval: float = 10.0,
    ) -> None:
        self.previous = previous
        self._interval = interval
        self._last = -interval
        self._folded = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            now = time.monotonic()
            if now - self._last < self._interval:
                self._folded += 1
                return
            error = context.get("exception")
            log.warning(
                "cannot accept connections: out of system resources",
                extra={"error": str(error), "since_last": self._folded},
            )
            self._last, self._folded = now, 0
            return
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)
