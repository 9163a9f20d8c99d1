"""Routing frames over one authenticated connection (SPEC §4-§6).

Theory of operation
-------------------
:class:`Router` owns the WebSocket once the handshake is done. One
background *reader* task (:meth:`Router.start`) owns ``recv``:

* answers are matched to their request: ``lookup_ok``/``link_code_ok``/
  ``ok``/``watching``/``search_ok``/``devices_ok`` (and the others of
  ``_ANSWERS``, ``blob_ok`` and ``blob_link_ok`` included) and ``error`` frames by
  ``rid``, ``accepted`` and ``error`` frames by message ``id``, each to a
  future the caller awaits, whatever else arrives in between. Every answer
  that names a ``rid`` is shown to :attr:`Router.on_answer` first;
* ``deliver``, ``delivered``, ``refused`` and ``team_changed`` frames (and,
  SPEC §14, ``urgent_status``, ``urgent_reminder`` and ``role_changed``) go, untouched, to the
  incoming queue (:meth:`Router.next_push`); ``presence`` pushes go to
  :attr:`Router.on_presence`, which may queue events there too
  (:meth:`Router.post`), in arrival order;
* a fatal ``error`` frame or a close ends the connection: every waiting
  future and every later call raises the :mod:`protocol.errors` exception the
  hub named (or ConnectionLost);
* a frame that does not decode does not end the connection: if it names a
  ``rid`` or an ``id``, that request fails (ConnectionFailed), otherwise it
  is logged and skipped. A hub's bad answer about one sender must never
  stop the client from reading the rest of its queue.

Requests that may be resent go through :meth:`Router.request_retrying`
(:class:`~miss_client.retry.RetryPolicy`), each try with a new ``rid``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

import msgpack
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from protocol import frames as f
from protocol.errors import ProtocolError, SessionReplaced

from .connection import close_error, error_from_frame
from .errors import ConnectionFailed, ConnectionLost, RequestTimeout
from .models import PresenceChanged
from .retry import RetryPolicy

__all__ = ["Push", "Router"]

log = logging.getLogger("miss_client")

#: What :meth:`Router.next_push` hands out, in arrival order.
Push = (
    f.Deliver
    | f.Delivered
    | f.Refused
    | f.TeamChanged
    | f.UrgentStatus
    | f.UrgentReminder
    | f.RoleChanged
    | PresenceChanged
)
#: The hub's frames queued in arrival order for the consumer.
_QUEUED = (f.Deliver, f.Delivered, f.Refused, f.TeamChanged, f.UrgentStatus, f.UrgentReminder, f.RoleChanged)

_CLOSED = object()  # queued by the reader when the connection has ended
_ANSWERS = (
    f.LookupOk,
    f.LinkCodeOk,
    f.Ok,
    f.Watching,
    f.SearchOk,
    f.DevicesOk,
    f.TeamOk,
    f.TeamsOk,
    f.TeamChainOk,
    f.RecallOk,
    f.RoleSearchOk,
    f.RoleOk,
    f.AcknowledgeOk,
    f.BlobOk,
    f.BlobLinkOk,
)


def _ignore_push(frame: f.Presence) -> None:
    pass


def _ignore_answer(rid: int, frame: f.Frame) -> None:
    pass


def _retrieved(fut: asyncio.Future[f.Frame] | asyncio.Future[f.Accepted]) -> None:
    """Mark the outcome of a request's future as seen. When the connection
    ends while the request is being written (a hub draining closes with
    1001), the reader fails the future and :meth:`Router.send` raises the
    same error to the caller: the future's copy must not be reported as
    "never retrieved"."""
    if fut.done() and not fut.cancelled():
        fut.exception()


class Router:
    """Requests and their answers over ``ws`` (see the module docstring).

    Set the hooks before :meth:`start`; they run in the reader, must not
    block and must not raise. All methods must be called from the event loop
    that runs the reader.
    """

    def __init__(self, ws: ClientConnection, *, request_timeout: float, retry: RetryPolicy) -> None:
        #: Seconds any request waits for its answer (RequestTimeout).
        self.request_timeout = request_timeout
        #: How :meth:`request_retrying` and sends retry.
        self.retry = retry
        #: Called with each ``presence`` push.
        self.on_presence: Callable[[f.Presence], None] = _ignore_push
        #: Called with each answer naming a ``rid`` (an ``error`` too, fatal
        #: or not), before its request sees it.
        self.on_answer: Callable[[int, f.Frame], None] = _ignore_answer
        self._ws = ws
        self._rids = itertools.count(1)
        self._requests: dict[int, asyncio.Future[f.Frame]] = {}
        self._sends: dict[bytes, asyncio.Future[f.Accepted]] = {}
        self._incoming: asyncio.Queue[object] = asyncio.Queue()
        self._fatal: ProtocolError | None = None
        self._terminal: Exception | None = None
        self._closing = False
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the reader; call once."""
        self._reader = asyncio.create_task(self._read_loop(), name="miss-client-reader")

    @property
    def closed(self) -> bool:
        """True once the connection has ended (for whatever reason)."""
        return self._terminal is not None

    @property
    def closing(self) -> bool:
        """True once :meth:`aclose` was called."""
        return self._closing

    async def aclose(self) -> None:
        """Close the connection and wait for the reader; pending requests
        raise ConnectionLost. Idempotent."""
        self._closing = True
        await self._ws.close()
        if self._reader is not None:
            await self._reader

    # --- pushes --------------------------------------------------------------

    def post(self, event: PresenceChanged) -> None:
        """Queue ``event`` behind the frames received so far."""
        self._incoming.put_nowait(event)

    async def next_push(self, wait: float | None = None) -> Push:
        """The next pushed frame or posted event. Raises TimeoutError if none
        comes within ``wait`` seconds (None: no limit); once the connection
        has ended and nothing is left, the error that ended it (ConnectionLost
        after :meth:`aclose`), at every call."""
        async with asyncio.timeout(wait):
            item = await self._incoming.get()
        if item is _CLOSED:
            self._incoming.put_nowait(_CLOSED)
            assert self._terminal is not None
            raise self._terminal
        assert isinstance(item, (*_QUEUED, PresenceChanged))
        return item

    # --- requests ------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        """Send one encoded frame; raises what ended the connection if it has."""
        if self._terminal is not None:
            raise self._terminal
        try:
            await self._ws.send(data)
        except ConnectionClosed:
            if self._reader is not None:
                await self._reader  # it sets _terminal from the close
            raise self._terminal or ConnectionLost("connection lost") from None

    async def ping(self) -> None:
        """A WebSocket ping, answered by the hub's pong; raises RequestTimeout
        or what ended the connection."""
        if self._terminal is not None:
            raise self._terminal
        try:
            pong = await self._ws.ping()
            async with asyncio.timeout(self.request_timeout):
                await pong
        except TimeoutError:
            raise RequestTimeout(f"no pong from the hub within {self.request_timeout:g} s") from None
        except ConnectionClosed:
            if self._reader is not None:
                await self._reader
            raise self._terminal or ConnectionLost("connection lost") from None

    async def request(self, build: Callable[[int], f.Frame]) -> f.Frame:
        """Send ``build(rid)`` under a fresh ``rid`` and return its answer.
        Raises the hub's error for it, RequestTimeout, ConnectionFailed (an
        answer that does not decode) or what ended the connection."""
        rid = next(self._rids)
        fut: asyncio.Future[f.Frame] = asyncio.get_running_loop().create_future()
        self._requests[rid] = fut
        try:
            await self.send(f.encode(build(rid)))
            return await self._wait(fut)
        finally:
            self._requests.pop(rid, None)
            _retrieved(fut)

    async def send_request(self, build: Callable[[int], f.Frame]) -> tuple[int, asyncio.Future[f.Frame]]:
        """Send ``build(rid)`` under a fresh ``rid`` and return the rid and
        the future of its answer at once, without waiting for it: requests
        in flight together (an upload's window of ``blob_put``, SPEC §16)
        leave in the order of the calls. Every pair must then go to
        :meth:`wait_answer` or :meth:`abandon`. Raises what ended the
        connection (nothing is then in flight)."""
        rid = next(self._rids)
        fut: asyncio.Future[f.Frame] = asyncio.get_running_loop().create_future()
        self._requests[rid] = fut
        try:
            await self.send(f.encode(build(rid)))
        except BaseException:
            self.abandon(rid, fut)
            raise
        return rid, fut

    async def wait_answer(self, rid: int, fut: asyncio.Future[f.Frame]) -> f.Frame:
        """The answer to a request of :meth:`send_request`; raises like :meth:`request`."""
        try:
            return await self._wait(fut)
        finally:
            self.abandon(rid, fut)

    def abandon(self, rid: int, fut: asyncio.Future[f.Frame]) -> None:
        """Stop waiting for the answer to a request of :meth:`send_request`."""
        self._requests.pop(rid, None)
        if not fut.done():
            fut.cancel()
        _retrieved(fut)

    async def request_retrying(self, build: Callable[[int], f.Frame], what: str) -> f.Frame:
        """:meth:`request` for idempotent requests: retried as :attr:`retry`
        says (storage_unavailable, rate_limited), each try with a new rid."""
        async for attempt in self.retry.retrying(f"retrying {what}"):
            with attempt:
                return await self.request(build)
        raise AssertionError("unreachable: the policy retries until an answer or an error")

    def sending(self, message_id: bytes) -> bool:
        """True while a ``send`` of ``message_id`` waits for its answer."""
        return message_id in self._sends

    async def send_message(self, message_id: bytes, data: bytes) -> f.Accepted:
        """Send the encoded ``send`` frame of ``message_id`` and return its
        ``accepted``; raises like :meth:`request`."""
        fut: asyncio.Future[f.Accepted] = asyncio.get_running_loop().create_future()
        self._sends[message_id] = fut
        try:
            await self.send(data)
            accepted = await self._wait(fut)
            assert isinstance(accepted, f.Accepted)
            return accepted
        finally:
            self._sends.pop(message_id, None)
            _retrieved(fut)

    async def _wait(self, fut: asyncio.Future[f.Frame] | asyncio.Future[f.Accepted]) -> f.Frame:
        try:
            async with asyncio.timeout(self.request_timeout):
                return await fut
        except TimeoutError:
            raise RequestTimeout(f"no answer from the hub within {self.request_timeout:g} s") from None

    # --- reader --------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            async for data in self._ws:
                if isinstance(data, str):
                    raise ConnectionFailed("the hub sent a text frame")
                try:
                    frame = f.decode(data, f.SERVER_FRAMES)
                except ProtocolError as exc:
                    self._unreadable(data, exc)
                    continue
                self._dispatch(frame)
        except ConnectionClosed:
            pass
        except ConnectionFailed as exc:
            log.warning("closing: the hub sent a text frame")
            self._terminal = exc
            await self._ws.close(4400, "malformed_frame")
        finally:
            if self._terminal is None:
                if self._fatal is not None:
                    self._terminal = self._fatal
                elif self._closing:
                    self._terminal = ConnectionLost("connection closed by the client", self._ws.close_code)
                else:
                    self._terminal = close_error(self._ws.close_code, self._ws.close_reason)
            for request in self._requests.values():
                if not request.done():
                    request.set_exception(self._terminal)
            for sending in self._sends.values():
                if not sending.done():
                    sending.set_exception(self._terminal)
            self._incoming.put_nowait(_CLOSED)

    def _unreadable(self, data: bytes, exc: ProtocolError) -> None:
        """A frame that does not decode (e.g. a ``lookup_ok`` listing more
        devices than SPEC §2 allows): the request it answers fails, if it
        names one; the connection goes on either way."""
        try:
            m = msgpack.unpackb(data, raw=False)
        except Exception:
            m = None
        rid = m.get("rid") if isinstance(m, dict) else None
        mid = m.get("id") if isinstance(m, dict) else None
        kind = m.get("t") if isinstance(m, dict) else None
        failed = ConnectionFailed(f"the hub's answer could not be read ({exc.code})")
        target: asyncio.Future[f.Frame] | asyncio.Future[f.Accepted] | None = None
        if type(rid) is int:
            target = self._requests.get(rid)
        elif type(mid) is bytes and kind in ("accepted", "error"):
            target = self._sends.get(mid)
        if target is not None and not target.done():
            target.set_exception(failed)
        log.warning("ignoring a %r frame from the hub that does not decode (%s)", kind, exc.code)

    def _dispatch(self, frame: f.Frame) -> None:
        # team_changed is queued in order with deliveries: the consumer
        # fetches the chain (a request the reader must stay free to route).
        if isinstance(frame, _QUEUED):
            self._incoming.put_nowait(frame)
        elif isinstance(frame, f.Presence):
            self.on_presence(frame)
        elif isinstance(frame, f.Accepted):
            accepted = self._sends.get(frame.id)
            if accepted is not None and not accepted.done():
                accepted.set_result(frame)
        elif isinstance(frame, _ANSWERS):
            self.on_answer(frame.rid, frame)
            answered = self._requests.get(frame.rid)
            if answered is not None and not answered.done():
                answered.set_result(frame)
        elif isinstance(frame, f.Error):
            if frame.rid is not None:
                self.on_answer(frame.rid, frame)
            exc = error_from_frame(frame)
            target: asyncio.Future[f.Frame] | asyncio.Future[f.Accepted] | None = None
            if frame.fatal:
                self._fatal = exc  # the hub closes next; the reader's exit reports it
                # Another connection of this device (a one-shot command while a
                # chat runs) is routine; the caller decides what it means.
                level = logging.INFO if isinstance(exc, SessionReplaced) else logging.WARNING
                log.log(level, "the hub reported a fatal error: %s", frame.code)
            elif frame.rid is not None:
                target = self._requests.get(frame.rid)
            elif frame.id is not None:
                target = self._sends.get(frame.id)
            else:
                log.warning("the hub reported an error: %s", frame.code)
            if target is not None and not target.done():
                target.set_exception(exc)
        else:
            log.warning("ignoring an unexpected %r frame from the hub", frame.TYPE)
