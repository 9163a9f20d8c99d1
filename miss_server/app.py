"""Composition root: the one place that reads Settings and picks implementations.

``build_store``, ``build_broker`` and ``build_limiter`` turn the configured
URLs into a Store, a Broker and the Limiter of the buckets every node
shares, and ``blobs.open_blob_store`` the attachments' BlobStore;
:class:`HubServer` wires them into a :class:`~miss_server.hub.Hub` and
serves WebSocket connections, the HTTP endpoints (``/healthz``,
``/readyz``, ``/metrics``), attachment downloads (``/blobs/<token>``,
``blobs/http.py``) and the browser client's files (``web.py``) on one
port. Everything else receives its dependencies from here through
constructors.

A node stops in one of two ways: :meth:`HubServer.stop` at once (tests,
errors at start), or :meth:`HubServer.shutdown`, the graceful drain that
``miss-server`` runs on SIGTERM (``lifecycle.py`` has its parts).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import ssl
import time
from collections.abc import Awaitable
from http import HTTPStatus
from types import TracebackType

from prometheus_client import CONTENT_TYPE_LATEST, Counter
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from protocol.frames import SUBPROTOCOL

from .admission import AcceptErrorFilter, Acceptor, GatedConnection, PendingGate, effective_pending_cap
from .audit import AuditTrail
from .blobs import open_blob_store
from .blobs.http import BlobDownloads
from .blobs.service import BlobService
from .broker.base import CONTROL_CHANNEL, Broker, Presence
from .broker.memory import MemoryBroker, MemoryPresence
from .broker.redis import RedisBroker, RedisPresence
from .config import Settings
from .connection import client_address, serve_connection
from .guard import Guard
from .hub import Hub
from .keepalive import KeepaliveWheel
from .lifecycle import DrainableConnection, Readiness, cut_remaining, go_away_spread, wait_for_handlers
from .metrics import Metrics
from .presence import PresenceService
from .ratelimit import Limiter, MemoryLimiter
from .ratelimit_redis import RedisLimiter
from .store.base import Store
from .store.postgres import PostgresStore
from .store.sqlite import SQLiteStore
from .web import OriginPolicy, WebBundle, is_upgrade

__all__ = ["HubServer", "build_broker", "build_limiter", "build_store"]

log = logging.getLogger("miss.app")

#: Connections the hub accepts per wake-up of its listening socket: a burst
#: is set up a batch at a time, between other work (admission.py).
ACCEPT_BATCH = 64
#: Connections the kernel queues until the hub accepts them.
LISTEN_BACKLOG = 4096
#: Headers by which a proxy names the client it forwards a request for.
FORWARDING_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")
#: Broker URLs that name a Redis, which the shared rate limits then use too.
REDIS_SCHEMES = ("redis://", "rediss://")
#: Part of the grace period kept for closing the store, the broker and the
#: audit trail after the connections (at most; a fifth of a short grace).
TEARDOWN_RESERVE = 2.0


def build_store(settings: Settings) -> Store:
    if settings.store.startswith("sqlite:///"):
        return SQLiteStore(settings.sqlite_path)
    if settings.store.startswith(("postgresql://", "postgres://")):
        return PostgresStore(settings.store, pool_max=settings.store_pool_size)
    raise NotImplementedError(f"store {settings.store.split(':', 1)[0]} is not available in this build")


def build_broker(settings: Settings) -> tuple[Broker, Presence]:
    """The broker and the presence backend, which share their connection."""
    if settings.broker.startswith("memory://"):
        return MemoryBroker(), MemoryPresence()
    if settings.broker.startswith(REDIS_SCHEMES):
        broker = RedisBroker(settings.broker)
        return broker, RedisPresence(broker)
    raise NotImplementedError(f"broker {settings.broker.split(':', 1)[0]} is not available in this build")


def build_limiter(settings: Settings) -> Limiter:
    """The buckets every node shares (addresses, authentication): in the
    broker's Redis, under its key prefix, when Redis is the broker; in this
    process otherwise, where the embedded broker's single node sees all."""
    if settings.broker.startswith(REDIS_SCHEMES):
        return RedisLimiter.from_url(settings.broker)
    return MemoryLimiter()


def embedded_store(settings: Settings) -> bool:
    """The embedded store migrates itself at start; production ones need
    ``miss-admin migrate`` so that a schema change is an operator's decision."""
    return settings.store.startswith("sqlite:///")


class HubServer:
    """A running hub node. Use ``async with HubServer(settings) as hub:``,
    or :meth:`start` / :meth:`stop`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.store = build_store(settings)
        self.broker, presence_backend = build_broker(settings)
        self.presence = PresenceService(
            presence_backend, self.broker, self.store, settings.presence_ttl_seconds
        )
        self.audit = AuditTrail(self.store)
        self.limiter = build_limiter(settings)
        self.guard = Guard(settings, self.limiter, self.audit, self.metrics)
        #: Attachments' ciphertext (SPEC §16): frames in blobs/service.py, GET /blobs/ in blobs/http.py.
        self.blob_store = open_blob_store(settings.blob_store_url)
        self.blobs = BlobService(self.blob_store, settings, self.metrics)
        self.downloads = BlobDownloads(self.blob_store, settings, self.metrics, self.guard.local)
        self.hub = Hub(
            self.store, self.broker, self.presence, settings, self.metrics, self.guard, self.audit, self.blobs
        )
        total = effective_pending_cap(settings.max_pending)
        self.gate = PendingGate(
            # One address never fills the whole gate: with a low open-file
            # limit the total shrinks, and others must still get in.
            min(settings.max_pending_per_address, max(1, total // 4)),
            total,
            lambda scope: self.metrics.pending_refused.labels(scope).inc(),
            lambda stage: self.metrics.pending_closed.labels(stage).inc(),
        )
        self.metrics.pending.set_function(lambda: self.gate.pending)
        #: What GET /readyz answers (lifecycle.py).
        self.readiness = Readiness(self.store, self.broker, self.metrics.registry)
        self._metrics_token = settings.metrics_token
        self.origins = OriginPolicy(settings.allowed_origins)
        self.origin_refused = Counter(
            "miss_origin_refused_total",
            "WebSocket upgrades refused for their Origin header (SPEC §2)",
            registry=self.metrics.registry,
        )
        self.web: WebBundle | None = None
        if settings.web_client:
            try:
                self.web = WebBundle.load()  # read once: only these files are ever served
            except FileNotFoundError as exc:
                log.warning("web client not served: %s", exc)
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop_handler: AcceptErrorFilter | None = None
        self._acceptor: Acceptor | None = None
        self._stopped = False
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port listened on (kept while draining, once asyncio's socket is closed)."""
        assert self._port is not None, "not started"
        return self._port

    @property
    def websocket_connections(self) -> int:
        """WebSocket connections open now (handshake done, not closing)."""
        return len(self._server.connections) if self._server is not None else 0

    @property
    def url(self) -> str:
        scheme = "wss" if self.settings.tls_cert else "ws"
        return f"{scheme}://{self.settings.host}:{self.port}/"

    async def start(self) -> None:
        if embedded_store(self.settings):
            await self.store.migrate()
        await self.store.open()
        await self.blob_store.open()
        await self.broker.start()
        self.broker.on_gap(self.hub.on_broker_gap)
        await self.broker.subscribe(CONTROL_CHANNEL, self.hub.on_control)
        tls = None
        if self.settings.tls_cert and self.settings.tls_key:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        loop = asyncio.get_running_loop()
        self._loop_handler = AcceptErrorFilter(loop.get_exception_handler())
        loop.set_exception_handler(self._loop_handler)
        self._server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            # One keepalive wheel for every connection, not a task each (keepalive.py).
            create_connection=DrainableConnection.factory(
                self.gate,
                by_peer=not self.settings.trust_forwarded_for,
                keepalive=KeepaliveWheel(
                    self.settings.ping_interval_seconds, self.settings.ping_timeout_seconds
                ),
            ),
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            process_request=self._process_request,
            max_size=self.settings.max_frame_bytes,
            max_queue=16,
            compression=None,  # envelopes are ciphertext: deflate gains nothing
            ssl=tls,
            server_header="MiSS",
            backlog=LISTEN_BACKLOG,  # a morning reconnect storm must not overflow the SYN queue
            # Workers of one machine listen on the same port; the kernel spreads connections (supervisor.py).
            reuse_port=self.settings.workers > 1,
            open_timeout=self.settings.handshake_timeout_seconds,
            ping_interval=None,  # the wheel pings (keepalive.py)
            ping_timeout=None,
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        self._take_over_accept(tls)
        self.audit.start()
        self._tasks = [
            asyncio.create_task(self.hub.expire_forever(), name="expiry"),
            asyncio.create_task(self.blobs.expire_forever(), name="blob-expiry"),
            asyncio.create_task(self.presence.run_forever(), name="presence"),
            asyncio.create_task(self.hub.security.run_forever(), name="security"),
            asyncio.create_task(self.hub.escalator.run_forever(), name="escalation"),
            asyncio.create_task(self.hub.waker.rewake.run_forever(), name="rewake"),
            asyncio.create_task(self.readiness.run_forever(), name="readiness"),
        ]
        if self.settings.authority_public_key is None:
            log.warning(
                "no verification authority configured (authority_key): no account counts as verified, "
                "so nobody can send; see `miss-admin authority init`"
            )
        log.info(
            "hub listening",
            extra={
                "url": self.url,
                "store": self.settings.store_display,
                "blob_store": self.settings.blob_store_display,
                "broker": self.settings.broker_display,
                "max_pending": self.gate.total,
                "web_client": self.web.hash if self.web is not None else "off",
            },
        )

    def _take_over_accept(self, tls: ssl.SSLContext | None) -> None:
        """Accept connections with admission.Acceptor rather than asyncio's
        own accept (admission.py says why). It needs the protocol factory
        websockets gave asyncio, which only asyncio's private
        ``_protocol_factory`` holds: without it (another Python), asyncio
        keeps accepting, and the caps still hold, only at a higher cost."""
        assert self._server is not None
        listening = self._server.server
        factory = getattr(listening, "_protocol_factory", None)
        if factory is None:
            log.warning("asyncio accepts the connections: refused ones cost more")
            return
        loop = asyncio.get_running_loop()
        sockets = []
        for transport_socket in listening.sockets:
            loop.remove_reader(transport_socket.fileno())
            sockets.append(transport_socket.dup())  # closed by the Acceptor; asyncio closes its own
        self._acceptor = Acceptor(
            sockets,
            factory,
            self.gate,
            by_peer=not self.settings.trust_forwarded_for,
            batch=ACCEPT_BATCH,
            tls=tls,
            tls_timeout=self.settings.handshake_timeout_seconds,
        )
        self._acceptor.start()

    async def stop(self) -> None:
        """Stop at once: connections closed with 1001 together, requests in
        hand not waited for (their clients resend them). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.readiness.start_draining()
        self._close_acceptor()
        await self._cancel_tasks()
        if self._server is not None:
            self._server.close()  # closes connections with 1001
            await self._server.wait_closed()
        await self._release()

    async def shutdown(self) -> int:
        """Drain, then stop (SIGTERM; docs/OPERATIONS.md). Returns how many
        connections the grace period's end cut.

        In order: ``/readyz`` answers 503 ``draining`` and new WebSocket
        sessions are refused (503); the open connections are told to go away
        (1001), spread over ``shutdown_spread_seconds`` (at most half the
        grace), each once its request in hand is answered
        (lifecycle.DrainableConnection); the listening socket closes; the
        connection handlers finish (detaching their devices); the audit
        trail is flushed and the store and broker closed. Whatever is left
        when ``shutdown_grace_seconds`` is nearly over is cut. Idempotent
        with :meth:`stop`."""
        if self._stopped:
            return 0
        self._stopped = True
        assert self._server is not None, "not started"
        loop = asyncio.get_running_loop()
        began, grace = time.monotonic(), self.settings.shutdown_grace_seconds
        deadline = loop.time() + grace
        spread = min(self.settings.shutdown_spread_seconds, grace / 2)
        self.readiness.start_draining()
        # Upgrades now get 503; the Acceptor still listens, so that health
        # checks see "draining" (where asyncio accepts, the port closes now).
        self._server.close(close_connections=False)
        log.info(
            "draining: readiness 503, new sessions refused",
            extra={
                "connections": self.websocket_connections,
                "grace_seconds": grace,
                "spread_seconds": spread,
            },
        )
        told = await go_away_spread(self._server, spread)
        self._close_acceptor()
        log.info("stopped listening; connections told to go away (1001)", extra={"told": told})
        reserve = min(TEARDOWN_RESERVE, grace / 5)
        await wait_for_handlers(self._server, deadline - reserve)
        cut = await cut_remaining(self._server, settle=reserve / 2)
        if cut:
            log.warning("grace period over: connections cut", extra={"cut": cut})
        else:
            log.info("connections closed, requests in hand answered")
        await self._cancel_tasks()
        try:
            async with asyncio.timeout(max(0.5, deadline - loop.time())):
                await self._server.wait_closed()
                await self._release()
            log.info("audit trail flushed; store and broker closed")
        except TimeoutError:
            log.warning("grace period over before the store and broker were closed")
        log.info("shut down", extra={"seconds": round(time.monotonic() - began, 3), "cut": cut})
        return cut

    def _close_acceptor(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            self._acceptor = None

    async def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _release(self) -> None:
        """Flush the audit trail, close the limiter, broker and store."""
        await self.audit.stop()
        await self.limiter.close()
        await self.broker.close()
        await self.blob_store.close()
        await self.store.close()
        if self._loop_handler is not None:
            asyncio.get_running_loop().set_exception_handler(self._loop_handler.previous)
            self._loop_handler = None

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> HubServer:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _handle(self, ws: ServerConnection) -> None:
        await serve_connection(ws, self.hub)

    def _process_request(
        self, ws: ServerConnection, request: Request
    ) -> Response | Awaitable[Response] | None:
        """The answer to an HTTP request, or None for a WebSocket upgrade on
        ``/``. Only a download (``/blobs/...``, which reads the blob store)
        is answered by a coroutine, which websockets awaits; every other
        path is answered at once."""
        path = request.path.split("?", 1)[0]
        if self.downloads.handles(path):
            return self.downloads.respond(ws, request, path)
        if (answer := self.ops_response(ws, request, path)) is not None:
            return answer
        upgrade = path == "/" and is_upgrade(request)
        if not upgrade and self.web is not None and (asset := self.web.asset_for(path)) is not None:
            return self.web.response(request, asset)
        if path != "/":
            return ws.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if self.readiness.draining:
            refused = ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
            refused.headers["Retry-After"] = "1"  # another node, or this one restarted
            return refused
        if not self.origins.allows(request):
            self.origin_refused.inc()
            # Says what to add to allowed_origins, or that a proxy does not forward Host.
            seen = {k.lower(): ascii(", ".join(request.headers.get_all(k)))[:200] for k in ("Origin", "Host")}
            log.info("websocket upgrade refused: origin not allowed", extra=seen)
            return ws.respond(HTTPStatus.FORBIDDEN, "origin not allowed\n")
        if self.settings.trust_forwarded_for and isinstance(ws, GatedConnection):
            if not ws.admit_forwarded(client_address(ws, True)):
                return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        return None  # the WebSocket endpoint

    def ops_response(self, ws: ServerConnection, request: Request, path: str) -> Response | None:
        """The answer to ``/healthz``, ``/readyz`` or ``/metrics`` (``path``,
        without its query), None for any other path. A worker's metrics port
        (worker.py) answers these and nothing else."""
        if path == "/healthz":
            return ws.respond(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            problem = self.readiness.problem
            if problem is None:
                return ws.respond(HTTPStatus.OK, "ready\n")
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, f"{problem}\n")
        if path == "/metrics":
            if not self._may_read_metrics(ws, request):
                return ws.respond(HTTPStatus.FORBIDDEN, "forbidden\n")
            body = self.metrics.render()
            headers = Headers([("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
            return Response(200, "OK", headers, body)
        return None

    def _may_read_metrics(self, ws: ServerConnection, request: Request) -> bool:
        """With a token, a request that bears it; without, a loopback peer
        (the socket's, never X-Forwarded-For) whose request names no other
        client: a reverse proxy on this machine is a loopback peer too, and
        one that forwarded /metrics would otherwise show them to anyone."""
        if self._metrics_token is not None:
            given = request.headers.get("Authorization", "")
            return hmac.compare_digest(given.encode(), f"Bearer {self._metrics_token}".encode())
        if any(request.headers.get_all(name) for name in FORWARDING_HEADERS):
            return False
        peer = ws.remote_address[0] if ws.remote_address else ""
        try:
            return ipaddress.ip_address(str(peer).split("%", 1)[0]).is_loopback
        except ValueError:
            return False
