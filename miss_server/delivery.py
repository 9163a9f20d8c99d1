"""Delivery to one authenticated connection: store drain plus live wake-ups.

Theory of operation
-------------------
The store holds every row a device has not acked; the broker only says "a
row for you was just committed" and carries a copy so that the common case
costs no read. A :class:`DeviceLink` owns one task that writes to the
socket, so frames leave in one order:

1. On attach, ``need_drain`` is set: the task pages through
   :meth:`Store.pending` in ``seq`` order and sends every row. Wake-ups that
   arrive meanwhile wait in the outbox.
2. Afterwards each wake-up's frame is sent as it comes.
3. ``inflight`` holds the seqs sent on this connection and not yet acked, so
   a row seen both by the drain and by a wake-up is sent once.
4. A peer that reads slower than rows arrive fills the outbox; past
   ``OUTBOX_LIMIT`` frames or ``OUTBOX_BYTES`` the outbox is dropped and the
   link falls back to a drain once the socket has caught up. Nothing is
   lost, since every dropped frame is a row in the store, and what a peer
   that stops reading costs the hub stays small: the outbox, one write of
   at most ``WRITE_BYTES`` waiting in the socket's buffer, and one drain
   page of about ``PAGE_BYTES``.

Wake-ups follow the format of ``wakeup.py``: a row's seq and frame, a
drain request, or the fatal error that ends the connection. A payload that
format cannot parse is taken as a drain request (the store tells the
truth); a tag it does not know is ignored.

Writes are batched: whatever is ready when the task runs (a page of a
drain, several wake-ups) leaves in one write to the socket, up to
``WRITE_BYTES``, since on this path the system calls cost more than
everything else; the task waits for the socket to take each write before
the next. Receipts, which no one waits for, are held up to
``RECEIPT_DELAY`` so that several share a write; messages are never held.

The answer to a request of the device (``accepted``, say) takes the rows
waiting in the outbox with it (:meth:`DeviceLink.take_ready`), unless the
task is writing or a drain is due: a held receipt then costs no write.

Frames that are not queued rows (presence pushes) go through :meth:`push`:
they are sent in order with the rest but never dropped for a drain; a peer
that lets more than ``PUSH_LIMIT`` of them pile up loses the oldest.

:class:`LocalLinks` is the node's register of its links, by device and by
user, for whatever must reach the devices connected here (a broker gap, a
revocation read from the audit log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator

from protocol import errors
from protocol.session import error_frame

from .store.base import Kind, Queued, Store, StoreUnavailable
from .wakeup import (
    TAG_CLOSE,
    TAG_DRAIN,
    TAG_MESSAGE,
    TAG_ONCALL,
    TAG_RECEIPT,
    TAG_REFUSAL,
    TAG_STATUS,
    TAG_TEAM,
    MalformedWakeup,
    close_generation,
    is_oncall_row,
    parse,
    request_id,
    row_frame,
)
from .wakeup import close_error as wakeup_error

__all__ = ["DeviceLink", "LocalLinks"]

log = logging.getLogger("miss.delivery")

#: How long a receipt may wait for others, or for the answer to the
#: device's next request, to share its write (s): a receipt is a tick on a
#: message already sent, which no one reads to the tenth of a second,
#: and a write of its own costs the hub more than the rest of the receipt.
RECEIPT_DELAY = 0.2
PUSH_LIMIT = 256
#: A drain page: at most PAGE rows; the first FIRST_PAGE, the next about
#: PAGE_BYTES of envelopes by the size of the rows before.
PAGE = 500
FIRST_PAGE = 64
PAGE_BYTES = 1 << 20
#: Wake-ups an outbox holds (frames, bytes) before the link drains instead.
OUTBOX_LIMIT = 2000
OUTBOX_BYTES = 1 << 20
#: The most one write to the socket carries (it carries one frame at least).
WRITE_BYTES = 256 * 1024
#: A drain that failed (store unreachable) is tried again after a random
#: delay of up to ``STORE_RETRY_SECONDS * 2**(failures - 1)``, at most
#: ``STORE_RETRY_MAX``: thousands of links that failed together (a store
#: outage, a saturated pool) then spread their retries instead of all
#: coming back each second, which kept a saturated pool saturated.
STORE_RETRY_SECONDS = 1.0
STORE_RETRY_MAX = 8.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Wake:
    """An :class:`asyncio.Event` for one waiter (a link's task), without the
    deque of waiters an Event allocates at once."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class DeviceLink:
    """Sends a device's queued rows over one connection (see module doc).

    ``send`` writes frames to the socket, in order, in as few writes as it
    can; ``close`` closes it with a code and reason. ``refusals``: the
    client named that capability, so refusal receipts are sent to it;
    ``teams``: likewise for team messages and ``team_changed`` pushes;
    ``oncall``: likewise for ``urgent_status`` rows and the
    ``urgent_reminder`` and ``role_changed`` pushes, and, with ``teams``,
    for messages to roles and urgent messages (SPEC §14). Call
    :meth:`start` once, :meth:`acked` when the device acks, and :meth:`stop`
    when the connection ends.
    """

    def __init__(
        self,
        device_id: str,
        store: Store,
        send: Callable[[list[bytes]], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
        on_sent: Callable[[int], None] = lambda n: None,
        *,
        refusals: bool = False,
        teams: bool = False,
        oncall: bool = False,
    ) -> None:
        self.device_id = device_id
        self.refusals = refusals
        self.teams = teams
        self.oncall = oncall
        #: the connection's presence entry, set by the hub once attached
        self.presence_key = ""
        #: the device is a service account's (SPEC §17.1), set by the hub
        #: once attached: its requests spend ``rate_service`` (guard.py)
        self.service = False
        #: its device's connections before this one, on every node, plus one
        #: (hub.py): a ``session_replaced`` of a generation not above this
        #: one comes from this connection or an older one, and is ignored
        self.generation = 0
        self._store = store
        self._send = send
        self._close = close
        self._on_sent = on_sent
        # Lists and a one-waiter wake-up rather than deques and an Event:
        # an empty deque is a 64-slot block, ~700 bytes per idle connection.
        self._outbox: list[tuple[int, bytes]] = []
        self._outbox_bytes = 0
        self._pushes: list[bytes] = []
        self._inflight: set[int] = set()
        self._need_drain = True
        #: the drain due is one of many gated together (:meth:`request_drain`)
        self._drain_gate: asyncio.Semaphore | None = None
        self._wake = _Wake()
        self._task: asyncio.Task[None] | None = None
        self._receipt_timer: asyncio.TimerHandle | None = None
        #: the task is between taking rows and the socket taking them: rows
        #: taken now by :meth:`take_ready` would overtake older ones
        self._busy = False

    def start(self) -> None:
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name=f"link-{self.device_id}")

    async def stop(self) -> None:
        if self._receipt_timer is not None:
            self._receipt_timer.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def on_wakeup(self, payload: bytes) -> None:
        """Broker handler: runs on the event loop, never blocks."""
        try:
            tag, seq, body = parse(payload)
        except MalformedWakeup as exc:
            log.warning("unreadable wake-up, draining", extra={"device": self.device_id, "error": str(exc)})
            self.request_drain()
            return
        if tag == TAG_REFUSAL:
            if not self.refusals:
                return  # the client would not understand it (wakeup.py)
            tag = TAG_RECEIPT  # otherwise it travels like a receipt
        elif tag == TAG_TEAM:
            if not self.teams:
                return  # held in the store for a connection that names ``teams``
            tag = TAG_MESSAGE  # otherwise it travels like a message
        elif tag == TAG_ONCALL or tag == TAG_STATUS:
            if not self.oncall or (tag == TAG_ONCALL and not self.teams):
                return  # held in the store for a connection that names them
            tag = TAG_MESSAGE  # urgent: never held back like a receipt
        if tag == TAG_MESSAGE or tag == TAG_RECEIPT:
            if not self._need_drain:
                if len(self._outbox) >= OUTBOX_LIMIT or self._outbox_bytes + len(body) > OUTBOX_BYTES:
                    self._take_outbox()
                    self._need_drain = True
                else:
                    self._outbox.append((seq, body))
                    self._outbox_bytes += len(body)
            if tag == TAG_MESSAGE or self._need_drain:
                self._wake.set()
            elif self._receipt_timer is None:
                self._receipt_timer = asyncio.get_running_loop().call_later(RECEIPT_DELAY, self._receipts_due)
        elif tag == TAG_DRAIN:
            self.request_drain()
        elif tag == TAG_CLOSE:
            error = wakeup_error(body)
            newer = close_generation(body)
            if error is not None and (newer is None or newer > self.generation):
                self.end(error)

    def end(self, error: type[errors.FatalError]) -> None:
        """End the connection with ``error``: the peer gets the ``error``
        frame, then the close code. Returns at once; a task does it."""
        asyncio.get_running_loop().create_task(self._end(error()))

    def _receipts_due(self) -> None:
        self._receipt_timer = None
        self._wake.set()

    def request_drain(self, gate: asyncio.Semaphore | None = None) -> None:
        """Read the store again: wake-ups may have been lost. With ``gate``
        (a drain of every device of the node, :meth:`Waker.drain_all`),
        each store read of the drain first takes one of the gate's slots,
        so that thousands of links drained together leave the store's other
        callers (group commits, authentications) room; a drain asked
        without one meanwhile is not gated."""
        if not self._need_drain:
            self._drain_gate = gate
        elif gate is None:
            self._drain_gate = None
        self._need_drain = True
        self._wake.set()

    def push(self, frame: bytes) -> None:
        """Send a frame that is not a queued row (e.g. ``presence``)."""
        if len(self._pushes) >= PUSH_LIMIT:
            del self._pushes[0]  # the oldest is lost (module doc)
        self._pushes.append(frame)
        self._wake.set()

    async def _end(self, exc: errors.FatalError) -> None:
        # The peer may be gone already; then there is nothing to tell it.
        with contextlib.suppress(Exception):
            await self._send([error_frame(exc)])
        with contextlib.suppress(Exception):
            await self._close(exc.close_code or 4400, exc.code)

    def _take_outbox(self) -> list[tuple[int, bytes]]:
        rows, self._outbox = self._outbox, []
        self._outbox_bytes = 0
        return rows

    def acked(self, seqs: tuple[int, ...]) -> None:
        self._inflight.difference_update(seqs)

    def take_ready(self) -> list[bytes]:
        """The frames of the rows waiting in the outbox, now counted as
        sent, for a write that leaves anyway (the answer to this device's
        request): held receipts ride it rather than cost a write of their
        own, which on this path costs more than the frame. Nothing while the
        task is writing or a drain is due, so rows still leave in seq order."""
        if self._busy or self._need_drain or not self._outbox:
            return []
        if self._receipt_timer is not None:
            self._receipt_timer.cancel()
            self._receipt_timer = None
        frames = [frame for _, frame in self._unsent(self._take_outbox())]
        if frames:
            self._on_sent(len(frames))
        return frames

    async def _run(self) -> None:
        failures = 0  # drains failed in a row
        while True:
            self._busy = False
            await self._wake.wait()
            self._wake.clear()
            self._busy = True
            if self._pushes:
                pushes, self._pushes = self._pushes, []
                await self._send(pushes)
            if self._need_drain:
                self._need_drain = False
                gate, self._drain_gate = self._drain_gate, None
                self._take_outbox()  # every frame there is a committed row the drain reads
                try:
                    await self._drain(gate)
                    failures = 0
                except StoreUnavailable as exc:
                    failures += 1
                    log.warning("drain failed, retrying", extra={"device": self.device_id, "error": str(exc)})
                    if not self._need_drain:  # else asked again meanwhile, gated or not
                        self._drain_gate = gate
                    self._need_drain = True
                    ceiling = min(STORE_RETRY_MAX, STORE_RETRY_SECONDS * 2 ** min(failures - 1, 8))
                    await asyncio.sleep(random.uniform(0.1, ceiling))
                    self._wake.set()
                    continue
            if self._outbox and not self._need_drain:
                # Taken before the write, which waits while the socket is
                # full: wake-ups that come meanwhile stay for the next turn.
                await self._send_rows(self._take_outbox())

    def _unsent(self, rows: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
        """The rows not already in flight on this connection, now counted in
        flight (the caller sends them)."""
        debug = log.isEnabledFor(logging.DEBUG)
        for seq, frame in rows:
            if seq in self._inflight:
                continue
            self._inflight.add(seq)
            if debug:  # the request id of the send this row comes from (logs.py)
                log.debug("row sent", extra={"seq": seq, "req": request_id(frame), "device": self.device_id})
            yield seq, frame

    async def _send_rows(self, rows: Iterable[tuple[int, bytes]]) -> None:
        """Send the rows not already in flight, in order, in writes of at
        most ``WRITE_BYTES``, each taken by the socket before the next."""
        frames: list[bytes] = []
        size = 0
        for _, frame in self._unsent(rows):
            if frames and size + len(frame) > WRITE_BYTES:
                await self._send(frames)
                self._on_sent(len(frames))
                frames, size = [], 0
            frames.append(frame)
            size += len(frame)
        if frames:
            await self._send(frames)
            self._on_sent(len(frames))

    def _understood(self, row: Queued) -> bool:
        """Whether this connection's client knows the frame of ``row``
        (SPEC §6.5, §13, §14): other rows wait in the store for one that does."""
        if is_oncall_row(row):
            return self.oncall and self.teams
        if row.kind is Kind.URGENT_STATUS:
            return self.oncall
        if row.kind is Kind.REFUSAL:
            return self.refusals
        if row.kind is Kind.TEAM:
            return self.teams
        return True

    async def _drain(self, gate: asyncio.Semaphore | None) -> None:
        cursor, limit = 0, FIRST_PAGE
        while True:
            if gate is None:
                rows = await self._store.pending(self.device_id, cursor, limit, _now_ms())
            else:  # only the read waits for the gate: a slow reader's socket holds no slot
                async with gate:
                    rows = await self._store.pending(self.device_id, cursor, limit, _now_ms())
            await self._send_rows((row.seq, row_frame(row)) for row in rows if self._understood(row))
            if len(rows) < limit:
                return
            cursor = rows[-1].seq
            size = sum(len(row.payload) + len(row.body or b"") for row in rows) or 1
            limit = max(1, min(PAGE, PAGE_BYTES * len(rows) // size))


class LocalLinks:
    """The links of the devices connected to this node, by device and by
    user. A device has one link here at most: :meth:`add` replaces an older
    one, and :meth:`remove` forgets a link only while it is the current one."""

    def __init__(self) -> None:
        self._links: dict[str, DeviceLink] = {}
        self._by_user: dict[str, set[str]] = {}  # user id -> ids of their devices connected here

    def __iter__(self) -> Iterator[DeviceLink]:
        return iter(self._links.values())

    def add(self, user_id: str, link: DeviceLink) -> None:
        self._links[link.device_id] = link
        self._by_user.setdefault(user_id, set()).add(link.device_id)

    def remove(self, user_id: str, link: DeviceLink) -> None:
        if self._links.get(link.device_id) is link:
            del self._links[link.device_id]
            local = self._by_user.get(user_id)
            if local is not None:
                local.discard(link.device_id)
                if not local:
                    del self._by_user[user_id]

    def of_user(self, user_id: str) -> list[DeviceLink]:
        """The links here of the user's devices."""
        return [self._links[d] for d in self._by_user.get(user_id, ()) if d in self._links]

    def push(self, frame: bytes, users: Iterable[str], wants: Callable[[DeviceLink], bool]) -> None:
        """Hand the pushed ``frame`` to this node's links of ``users`` for
        which ``wants`` holds (the capability the frame needs)."""
        for user in users:
            for link in self.of_user(user):
                if wants(link):
                    link.push(frame)

    def end_device(self, device_id: str, error: type[errors.FatalError]) -> None:
        """End the device's connection here, if it has one, with ``error``."""
        link = self._links.get(device_id)
        if link is not None:
            link.end(error)

    def end_user(self, user_id: str, error: type[errors.FatalError]) -> None:
        """End every connection here of the user's devices with ``error``."""
        for device_id in list(self._by_user.get(user_id, ())):
            self.end_device(device_id, error)
