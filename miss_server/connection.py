"""One WebSocket connection, from challenge to close (SPEC.md §4).

The handler is the thin shell around :class:`protocol.session.ServerSession`:
it reads a message, lets the session check it, hands the frame to the
:class:`~miss_server.hub.Hub`, and writes the reply. Fatal protocol errors
become an ``error`` frame followed by a close with the error's close code;
request errors become an ``error`` frame and the connection goes on. An
exception we did not expect closes this connection with 1011 and is logged;
it never reaches another connection.
"""

from __future__ import annotations

import asyncio
import logging

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from protocol import errors
from protocol.frames import (
    CAP_BLOBS,
    Ack,
    Auth,
    BlobPut,
    Frame,
    Ping,
    RoleSearch,
    Search,
    Send,
    Welcome,
    encode,
)
from protocol.session import ServerSession, error_frame

from .admission import GatedConnection
from .delivery import DeviceLink
from .hub import Hub
from .logs import CONN, REQ, new_conn_id

__all__ = ["serve_connection"]

log = logging.getLogger("miss.connection")


#: Longest pause in reading a device that keeps sending while rate-limited (s).
MAX_PENALTY = 1.0
#: Largest frame before the connection's ``auth``/``enroll`` is accepted
#: (SPEC §2): the largest ``enroll`` takes about 1,200 bytes. Frames a client sends
#: while its authentication is checked wait in the connection's queue; at
#: the full frame size, 4,096 pending connections could make the hub hold
#: gigabytes for nobody.
PRE_AUTH_FRAME_BYTES = 8192


def client_address(ws: ServerConnection, trust_forwarded_for: bool) -> str:
    """The client's IP address: the peer's, or behind a trusted reverse
    proxy the last entry of ``X-Forwarded-For`` (the one the proxy added)."""
    if trust_forwarded_for and ws.request is not None:
        # The proxy appends to the last header; a client may have sent more
        # than one (``get`` would raise MultipleValuesError).
        forwarded = ws.request.headers.get_all("X-Forwarded-For")
        if forwarded:
            return forwarded[-1].rsplit(",", 1)[-1].strip()[:64] or "?"
    return str(ws.remote_address[0]) if ws.remote_address else "?"


def _binary(data: str | bytes) -> bytes:
    if not isinstance(data, bytes):
        raise errors.MalformedFrame("text frame")
    return data


async def serve_connection(ws: ServerConnection, hub: Hub) -> None:
    """Run one connection to its end. Never raises. Every log line of its
    task, and of the delivery task it starts, carries its ``conn`` (logs.py)."""
    CONN.set(new_conn_id())
    metrics = hub.metrics
    metrics.connections.inc()
    session = ServerSession(
        authority=hub.settings.authority_public_key, rotations=hub.settings.rotation_statements
    )
    link: DeviceLink | None = None
    peer = client_address(ws, hub.settings.trust_forwarded_for)
    # Read per frame by the WebSocket parser: restored once authenticated.
    ws.protocol.max_message_size = min(PRE_AUTH_FRAME_BYTES, hub.settings.max_frame_bytes)
    try:
        await ws.send(session.challenge())
        try:
            async with asyncio.timeout(hub.settings.auth_timeout_seconds):
                first = await ws.recv()
        except TimeoutError:
            raise errors.AuthTimeout() from None
        frame = session.receive(_binary(first))
        metrics.frame_received(frame.TYPE)
        service: bool | None = None  # an enrollment: attach reads the account
        if isinstance(frame, Auth):
            service = await hub.authenticate(session, frame, peer)
        else:
            await hub.enroll(session, frame, peer)  # type: ignore[arg-type]
        assert session.user_id is not None and session.device_id is not None
        ws.protocol.max_message_size = hub.settings.max_frame_bytes
        log.info("authenticated", extra={"device": session.device_id, "peer": peer})
        if isinstance(ws, GatedConnection):
            ws.settle()  # no longer a pending connection (admission.py)
        _forget_handshake(ws)
        link = await hub.attach(
            session.user_id,
            session.device_id,
            lambda frames: send_frames(ws, frames),
            ws.close,
            session.caps,
            capped=isinstance(frame, Auth),  # an enrollment is not: its code is spent (Hub.attach)
            service=service,
        )
        await ws.send(encode(_welcome(hub, session)))
        link.start()
        while True:
            # ``recv`` rather than ``async for``: no async generator and its
            # frame held by every idle connection; the end of the connection
            # raises ConnectionClosed, handled below as ``async for`` would.
            data = await ws.recv()
            frame = session.receive(_binary(data))
            metrics.frame_received(frame.TYPE)
            await _dispatch(hub, session, link, ws, frame, peer, len(data))
    except errors.FatalError as exc:
        metrics.errors.labels(exc.code).inc()
        # Before authentication, at debug only: anyone can open connections
        # and send junk as fast as the hub closes them, and must not be able
        # to fill its log (the metric counts them; failed auths are audited).
        log.log(
            logging.INFO if link is not None or session.device_id is not None else logging.DEBUG,
            "closing on protocol error",
            extra={"code": exc.code, "detail": exc.detail, "device": session.device_id, "peer": peer},
        )
        try:
            await ws.send(error_frame(exc))
            await ws.close(exc.close_code or 4400, exc.code)
        except ConnectionClosed:
            pass
    except errors.RequestError as exc:  # during authentication: storage_unavailable, rate_limited...
        metrics.errors.labels(exc.code).inc()
        try:
            await ws.send(error_frame(exc))
            # 1013: try again later; 1008: policy violation (too many attempts, devices, connections)
            policy = isinstance(exc, errors.RateLimited | errors.TooManyDevices | errors.TooManyConnections)
            await ws.close(1008 if policy else 1013, exc.code)
        except ConnectionClosed:
            pass
    except ConnectionClosed:
        pass
    except Exception:
        log.exception("connection failed", extra={"device": session.device_id, "peer": peer})
        try:
            await ws.close(1011, "internal error")
        except ConnectionClosed:
            pass
    finally:
        if link is not None and session.user_id is not None:
            await hub.detach(session.user_id, link)
        metrics.connections.dec()


def _forget_handshake(ws: ServerConnection) -> None:
    """Drop the headers of an authenticated connection's HTTP upgrade. They
    are a fifth of what an idle connection costs the hub (about 4.5 KiB of
    small strings, lists and dicts), and nothing reads them once the
    connection is authenticated: the client's address is read before
    (``client_address``), and admission.py looks at the handshake only while
    the connection is pending (``settle`` ended that). The request is
    emptied rather than dropped: websockets' parser keeps a reference to it
    for the connection's life, and reads ``request`` None as "no request
    received yet"; the response, which nothing keeps, goes."""
    if ws.request is not None:
        ws.request.headers.clear()
    ws.response = None


def _welcome(hub: Hub, session: ServerSession) -> Welcome:
    """``welcome``, with the attachment limits for a client that named
    ``blobs`` (SPEC §16)."""
    assert session.user_id is not None and session.device_id is not None
    if CAP_BLOBS in session.caps:
        settings = hub.settings
        return Welcome(
            session.user_id,
            session.device_id,
            att_max=settings.max_attachments,
            blob_max=settings.max_attachment_bytes,
        )
    return Welcome(session.user_id, session.device_id)


async def send_frames(ws: ServerConnection, frames: list[bytes]) -> None:
    """Send binary frames in one write to the socket.

    ``ws.send`` makes one system call per frame; on the delivery path those
    calls cost more than everything else, so this queues the frames on the
    connection's sans-I/O protocol (``ws.protocol``, the layer websockets
    builds every connection on) and writes them together, then waits for
    the socket's buffer to drain like ``ws.send`` does. A single frame takes
    the same path: it skips ``ws.send``'s context manager, a measurable part
    of the hub's cost per frame. Raises ConnectionClosed once the connection
    is closing.
    """
    if ws.protocol.state is not State.OPEN:
        await ws.send(frames[0])  # raises ConnectionClosed, as ws.send would
        return
    for frame in frames:
        ws.protocol.send_binary(frame)
    ws.transport.write(b"".join(ws.protocol.data_to_send()))
    await ws.drain()


async def _dispatch(
    hub: Hub,
    session: ServerSession,
    link: DeviceLink,
    ws: ServerConnection,
    frame: Frame,
    address: str,
    size: int,
) -> None:
    """Handle one authenticated frame of ``size`` bytes; request errors
    answer that request only.

    Every request spends the device's and the address's budget first
    (guard.py), a search (of users or roles) its own too, an ``ack`` and a
    ``ping`` the device's ack budget, a ``blob_put`` only its own upload budget; then
    :meth:`Hub.request`, the dispatch, answers it. A device over its budget
    gets ``rate_limited`` and its next frame is read only after the delay
    (at most MAX_PENALTY); an ack over budget waits for its tokens first. A
    flood then queues in its own socket, not in the hub. Lines logged
    meanwhile carry the request's id (logs.py)."""
    token = REQ.set(frame)
    try:
        await _answer(hub, session, link, ws, frame, address, size)
    finally:
        REQ.reset(token)


async def _answer(
    hub: Hub,
    session: ServerSession,
    link: DeviceLink,
    ws: ServerConnection,
    frame: Frame,
    address: str,
    size: int,
) -> None:
    """:func:`_dispatch`'s work, with the request in the logging context."""
    penalty = 0.0
    reply: bytes | None = None
    outcome = "ok"
    assert session.user_id is not None and session.device_id is not None
    try:
        if type(frame) is Ack:
            await hub.guard.ack(session.device_id, size)
            await hub.ack(session, link, frame)
        elif type(frame) is Ping:  # costs what an ack costs, and nothing shared: metered like one
            await hub.guard.ack(session.device_id, size)
            reply = await hub.request(session, link, frame)
        elif type(frame) is BlobPut:  # an upload's pieces have their own budget, and wait for it
            await hub.guard.blob_put(session.device_id)
            reply = await hub.request(session, link, frame)
        else:
            # A role search reads the directory too: it spends the search budget.
            searches = type(frame) in (Search, RoleSearch)
            await hub.guard.request(
                session.user_id, session.device_id, address, search=searches, service=link.service
            )
            reply = await hub.request(session, link, frame)
    except errors.RequestError as exc:
        hub.metrics.errors.labels(exc.code).inc()
        outcome = exc.code
        if isinstance(exc, errors.RateLimited) and exc.retry_after_ms:
            penalty = exc.retry_after_ms / 1000
        # The error names the request it answers: a send by its id, any
        # other request by its rid.
        message_id = frame.id if type(frame) is Send else None
        reply = error_frame(exc, id=message_id, rid=getattr(frame, "rid", None))
    if frame.TYPE != "ack":
        log.debug("request", extra={"type": frame.TYPE, "outcome": outcome})
    if reply is not None:
        await send_frames(ws, [reply, *link.take_ready()])
    if penalty:
        await asyncio.sleep(min(MAX_PENALTY, penalty))
