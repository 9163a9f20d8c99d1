"""Message traffic that survives hub faults, for the multi-node tests.

A :class:`Sender` sends numbered messages one after another, waiting for
each ``accepted``; when its connection dies it reconnects to the next hub
URL and resends the message it was waiting on with the same id, and it
waits out retryable errors. A :class:`Recipient` reads, opens and acks
everything, reconnecting likewise, and counts each message id it sees.
Together they check the user-visible guarantee: every message a sender
heard ``accepted`` for reaches its recipient, and nothing else does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from dataclasses import dataclass, field

from websockets.exceptions import ConnectionClosed, InvalidHandshake

from protocol import crypto, errors
from protocol.frames import Accepted, Deliver, Delivered, Error, LookupOk, Send
from tests.support.wire import RawDevice

CONNECTION_TROUBLE = (ConnectionClosed, InvalidHandshake, OSError, TimeoutError, asyncio.TimeoutError)


async def reconnect(dev: RawDevice, urls: list[str], start: int = 0) -> None:
    """Authenticate on the first hub of ``urls`` (from ``start``) that answers."""
    for attempt in itertools.count():
        dev.url = urls[(start + attempt) % len(urls)]
        try:
            await dev.auth()
            return
        except (*CONNECTION_TROUBLE, AssertionError, errors.ProtocolError):
            await asyncio.sleep(min(0.05 * (attempt + 1), 0.5))
            if attempt > 400:
                raise


@dataclass
class Sender:
    dev: RawDevice
    peer: LookupOk
    own: LookupOk
    urls: list[str]
    accepted: list[bytes] = field(default_factory=list)
    retryable_errors: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0

    async def run(self, count: int, progress: asyncio.Event | None = None) -> None:
        pending: Send | None = None
        node = 0
        while len(self.accepted) < count:
            if pending is None:
                pending = self.dev.message(self.peer, f"n°{len(self.accepted)}", self.own)
            try:
                await self.dev.send_frame(pending)
                reply = await self._reply_to(pending.id)
            except CONNECTION_TROUBLE:
                self.reconnects += 1
                node += 1
                await reconnect(self.dev, self.urls, node)
                continue  # resend the same id
            if isinstance(reply, Accepted):
                self.accepted.append(pending.id)
                pending = None
                if progress is not None:
                    progress.set()
            else:
                assert reply.code in (errors.StorageUnavailable.code, errors.RateLimited.code), reply
                self.retryable_errors[reply.code] += 1
                await asyncio.sleep((reply.retry_after or 100) / 1000)

    async def _reply_to(self, mid: bytes) -> Accepted | Error:
        while True:
            frame = await self.dev.recv(timeout=15)
            if isinstance(frame, Accepted | Error) and frame.id == mid:
                return frame
            if isinstance(frame, Delivered):
                await self.dev.ack(frame.seq)


@dataclass
class Recipient:
    dev: RawDevice
    sender_box_pk: bytes
    urls: list[str]
    seen: Counter[bytes] = field(default_factory=Counter)
    deliveries: int = 0
    reconnects: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        node = 0
        while not stop.is_set():
            try:
                frame = await self.dev.recv(timeout=0.5)
            except TimeoutError:
                continue
            except CONNECTION_TROUBLE:
                self.reconnects += 1
                node += 1
                await reconnect(self.dev, self.urls, node)
                continue
            if isinstance(frame, Deliver):
                plain = crypto.unpack_plaintext(
                    crypto.open_envelope(frame.env, self.dev.keys, self.sender_box_pk)
                )
                assert plain.id == frame.id
                self.deliveries += 1
                self.seen[frame.id] += 1
                with contextlib.suppress(*CONNECTION_TROUBLE):
                    await self.dev.ack(frame.seq)

    def missing(self, accepted: list[bytes]) -> set[bytes]:
        return set(accepted) - set(self.seen)

    def unexpected(self, accepted: list[bytes]) -> set[bytes]:
        return set(self.seen) - set(accepted)


async def wait_until(predicate: object, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.1)
    return bool(predicate())  # type: ignore[operator]


@dataclass(frozen=True)
class Outcome:
    """What a run of paired senders and recipients came to (the counts the
    fault tests print and assert): accepted, distinct deliveries, the
    redeliveries dropped by id, missing and unexpected ones, reconnections
    of each side and retryable errors the senders met."""

    accepted: int
    seen: int
    redelivered: int
    missing: int
    unexpected: int
    sender_reconnects: int
    recipient_reconnects: int
    retried: int


def outcome(senders: list[Sender], recipients: list[Recipient]) -> Outcome:
    """The :class:`Outcome` of ``senders[i]`` writing to ``recipients[i]``."""
    pairs = list(zip(senders, recipients, strict=True))
    seen = sum(len(r.seen) for r in recipients)
    return Outcome(
        accepted=sum(len(s.accepted) for s in senders),
        seen=seen,
        redelivered=sum(r.deliveries for r in recipients) - seen,
        missing=sum(len(r.missing(s.accepted)) for s, r in pairs),
        unexpected=sum(len(r.unexpected(s.accepted)) for s, r in pairs),
        sender_reconnects=sum(s.reconnects for s in senders),
        recipient_reconnects=sum(r.reconnects for r in recipients),
        retried=sum(sum(s.retryable_errors.values()) for s in senders),
    )
