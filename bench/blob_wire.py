"""Attachments on the wire, for the ``attachments`` scenario: a simulated
device (:class:`bench.client.Device`) that uploads blobs, sends a message
carrying them, and fetches what it is sent, speaking the frames of SPEC §16
directly so that the load generator stays cheap.

* upload: ``blob_begin`` (the ciphertext's size), then ``blob_put`` pieces
  of ``PIECE_MAX`` bytes with at most :data:`WINDOW` unanswered at a time
  (what the SDK does), then ``blob_end``;
* send: a 1:1 message whose plaintext carries the descriptors (``atts``),
  always as a sealed body with a 72-byte wrap of its key per target device
  (SPEC §13.3), and ``blobs`` naming the uploads; ``accepted`` awaited;
* fetch: ``blob_link``, then HTTP GET of every Range part on the hub's port
  (:func:`bench.http_baseline.download`), each part fed to the
  :class:`protocol.attachments.Decryptor` that checks length, hash and tags.

Every frame the hub sends is read by one task per connection; answers are
matched to their request by ``rid`` (by ``id`` for ``accepted``), deliveries
and receipts are acked as the SDK does (``Device.ack_forever``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import nacl.exceptions
from websockets.exceptions import ConnectionClosed

from protocol import crypto
from protocol.attachments import PIECE_MAX, Attachment, Decryptor
from protocol.frames import (
    CAP_BLOBS,
    CAP_TEAMS,
    SERVER_FRAMES,
    Accepted,
    BlobBegin,
    BlobEnd,
    BlobLink,
    BlobLinkOk,
    BlobOk,
    BlobPut,
    Deliver,
    Delivered,
    Error,
    Frame,
    Send,
    decode,
    encode,
)

from .client import Device
from .http_baseline import download
from .plan import Entry

__all__ = ["WINDOW", "BlobPeer", "Refused", "Tally"]

#: ``blob_put`` frames in flight on one upload (the SDK's window).
WINDOW = 8


class Refused(Exception):
    """The hub answered a request with an ``error`` frame."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class Tally:
    """What the devices of one process have moved so far (the progress
    display reads it while the transfers run)."""

    up_bytes: int = 0
    down_bytes: int = 0
    uploads: int = 0
    verified: int = 0
    #: GETs answered 503 (the hub's max_blob_downloads reached), then retried
    http_busy: int = 0
    #: GETs answered 429 (the address's rate_download spent), then retried
    http_limited: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


class BlobPeer:
    """One connected device and the requests it has in flight."""

    def __init__(self, dev: Device, tally: Tally) -> None:
        self.dev = dev
        self.tally = tally
        self.host = ""
        self.port = 0
        self._rid = 0
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._accepted: dict[bytes, asyncio.Future[Frame]] = {}
        self.delivers: asyncio.Queue[Deliver] = asyncio.Queue()

    async def connect(self, url: str, host: str, port: int) -> None:
        """Authenticate naming ``blobs`` and ``teams`` (a message with
        attachments is a sealed body, whose rows the hub holds for a
        connection that names ``teams``, SPEC §16.3); ``host``/``port``: the
        hub's HTTP side."""
        await self.dev.authenticate(url, (CAP_TEAMS, CAP_BLOBS))
        self.host, self.port = host, port
        self.dev.tasks += [asyncio.create_task(self._read()), asyncio.create_task(self.dev.ack_forever())]

    async def _read(self) -> None:
        assert self.dev.ws is not None
        try:
            async for data in self.dev.ws:
                assert isinstance(data, bytes)
                self._dispatch(decode(data, SERVER_FRAMES))
        except ConnectionClosed:
            pass
        gone = ConnectionError("connection closed")
        for fut in [*self._pending.values(), *self._accepted.values()]:
            if not fut.done():
                fut.set_exception(gone)

    def _dispatch(self, frame: Frame) -> None:
        if isinstance(frame, Deliver):
            self.dev.want_ack(frame.seq)
            self.delivers.put_nowait(frame)
        elif isinstance(frame, Delivered):
            self.dev.want_ack(frame.seq)
        elif isinstance(frame, Accepted) or (isinstance(frame, Error) and frame.id is not None):
            fut = self._accepted.pop(frame.id, None)  # type: ignore[arg-type]
            if fut is not None and not fut.done():
                fut.set_result(frame)
        else:
            rid = getattr(frame, "rid", None)
            waiting = self._pending.pop(rid, None) if rid is not None else None
            if waiting is not None and not waiting.done():
                waiting.set_result(frame)
            elif isinstance(frame, Error):
                self.tally.error(frame.code)

    async def _ask(self, make: Callable[[int], Frame]) -> asyncio.Future[Frame]:
        """Write the frame ``make(rid)``; the future of its answer."""
        assert self.dev.ws is not None
        self._rid += 1
        fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[self._rid] = fut
        await self.dev.ws.send(encode(make(self._rid)))
        return fut

    @staticmethod
    def _answer(frame: Frame, kind: type[Any]) -> Any:
        if isinstance(frame, Error):
            raise Refused(frame.code)
        if not isinstance(frame, kind):
            raise Refused(f"unexpected {frame.TYPE}")
        return frame

    async def request(self, make: Callable[[int], Frame], kind: type[Any]) -> Any:
        return self._answer(await (await self._ask(make)), kind)

    # --- upload and send ---------------------------------------------------------------

    async def upload(self, blob_bytes: bytes) -> str:
        """Upload one ciphertext blob; its id once ``blob_end`` is answered."""
        size = len(blob_bytes)
        begun: BlobOk = await self.request(lambda rid: BlobBegin(rid=rid, size=size), BlobOk)
        blob = begun.blob
        view = memoryview(blob_bytes)
        window: deque[tuple[asyncio.Future[Frame], int]] = deque()
        off = 0
        while off < size or window:
            if off < size and len(window) < WINDOW:
                piece = bytes(view[off : off + PIECE_MAX])
                put = await self._ask(partial(BlobPut, blob=blob, off=off, data=piece))
                window.append((put, len(piece)))
                off += len(piece)
                continue
            fut, n = window.popleft()
            self._answer(await fut, BlobOk)
            self.tally.up_bytes += n
        done: BlobOk = await self.request(lambda rid: BlobEnd(rid=rid, blob=blob), BlobOk)
        if done.have != size:
            raise Refused("blob_end answered with have != size")
        self.tally.uploads += 1
        return blob

    async def send(self, to_user: str, targets: Sequence[Entry], atts: Sequence[Attachment]) -> bytes:
        """A 1:1 message carrying ``atts`` (their blobs uploaded), sealed
        once with a wrap per target; returns its id once ``accepted``."""
        dev = self.dev
        mid = crypto.new_message_id()
        plain = crypto.pack_plaintext(
            crypto.Plaintext(mid, dev.user_id, to_user, time.time_ns() // 1_000_000, atts=tuple(atts)),
            pad_to=256,
        )
        key, body = crypto.seal_body(plain, mid, dev.keys)
        wraps = {t.device_id: bytes(dev.box(t).encrypt(key, os.urandom(crypto.NONCE_BYTES))) for t in targets}
        frame = Send(mid, dev.device_id, to_user, wraps, body=body, blobs=tuple(a.blob for a in atts))
        fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._accepted[mid] = fut
        assert dev.ws is not None
        await dev.ws.send(encode(frame))
        self._answer(await fut, Accepted)
        return mid

    # --- receive and fetch -------------------------------------------------------------

    def open(self, frame: Deliver, sender: Entry) -> tuple[Attachment, ...]:
        """The descriptors of a delivered 1:1 message with attachments: a
        sealed body and no ``team`` (SPEC §16.3, like an urgent 1:1 message,
        §14.5). The 72-byte wrap opened, then the body, its signature checked
        with the sending device's key, and the plaintext checked as for any
        1:1 message (SPEC §6.3); raises EnvelopeError."""
        dev = self.dev
        if frame.body is None or frame.team is not None:
            raise crypto.EnvelopeError("a message with attachments is a 1:1 sealed body")
        if len(frame.env) != crypto.NONCE_BYTES + crypto.MAC_BYTES + 32:
            raise crypto.EnvelopeError("a wrap is 72 bytes")
        try:
            key = dev.box(sender).decrypt(frame.env)
        except nacl.exceptions.CryptoError:
            raise crypto.EnvelopeError("wrap does not open") from None
        plain = crypto.unpack_plaintext(crypto.open_body(frame.body, key, frame.id, sender.sign_pk))
        if plain.id != frame.id or plain.from_user != frame.from_user:
            raise crypto.EnvelopeError("plaintext does not match its deliver frame")
        if frame.from_user != dev.user_id and plain.to_user != dev.user_id:
            raise crypto.EnvelopeError("message for another clinician")
        if not plain.atts:
            raise crypto.EnvelopeError("no attachments")
        return plain.atts

    async def fetch(self, att: Attachment) -> bytes:
        """The plaintext of ``att``: a link, every Range part over HTTP,
        each checked as it comes (AttachmentError if any check fails)."""
        link: BlobLinkOk = await self.request(lambda rid: BlobLink(rid=rid, blob=att.blob), BlobLinkOk)
        return await fetch_verified(self.host, self.port, link.url, link.size, att, self.tally)


async def fetch_verified(host: str, port: int, path: str, size: int, att: Attachment, tally: Tally) -> bytes:
    """Download ``path`` (``size`` bytes of ciphertext) in Range parts and
    decrypt it with ``att``'s key, hash and size as it comes."""
    dec = Decryptor(att.key, att.size, att.hash)
    out = bytearray()

    def on_part(data: bytes) -> None:
        tally.down_bytes += len(data)
        out.extend(dec.feed(data))

    def on_busy(status: int) -> None:
        if status == 429:
            tally.http_limited += 1
        else:
            tally.http_busy += 1

    await download(host, port, path, size, on_part, on_busy)
    dec.finish()
    tally.verified += 1
    return bytes(out)
