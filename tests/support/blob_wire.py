"""Attachments on the wire (SPEC §16), for the hub's blob tests: a raw
device that names ``blobs`` (and ``refusals``, ``teams``, ``oncall``), what
a client does to upload a blob and to send a message that carries it, and
a plain HTTP GET of a download link. No SDK in between.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from protocol import crypto
from protocol.attachments import PIECE_MAX, Attachment, encrypt_bytes
from protocol.frames import (
    CAP_BLOBS,
    CAP_ONCALL,
    CAP_REFUSALS,
    CAP_TEAMS,
    BlobBegin,
    BlobEnd,
    BlobLink,
    BlobLinkOk,
    BlobOk,
    BlobPut,
    Error,
    Frame,
    Send,
    Urgent,
    decode,
)
from tests.support.oncall_wire import OncallDevice

#: Pieces a device keeps in flight while uploading (as the SDK does).
WINDOW = 8


@dataclass
class BlobDevice(OncallDevice):
    """A raw device whose handshake names ``refusals``, ``teams``, ``oncall`` and ``blobs``."""

    caps: tuple[str, ...] | None = (CAP_REFUSALS, CAP_TEAMS, CAP_ONCALL, CAP_BLOBS)


class UploadRefused(Exception):
    def __init__(self, error: Error) -> None:
        super().__init__(error.code)
        self.error = error


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def begin(dev: OncallDevice, size: int, blob: str | None = None) -> BlobOk:
    reply = await dev.ask(BlobBegin(rid=1, size=size, blob=blob))
    if isinstance(reply, Error):
        raise UploadRefused(reply)
    assert isinstance(reply, BlobOk), reply
    return reply


async def put_all(dev: OncallDevice, blob: str, data: bytes, start: int = 0, stop: int | None = None) -> int:
    """Upload ``data[start:stop]`` in pieces of PIECE_MAX, WINDOW in flight,
    reading the answers straight off the socket (no pushes expected);
    returns the ``have`` of the last answer."""
    assert dev.ws is not None
    stop = len(data) if stop is None else stop
    offsets = list(range(start, stop, PIECE_MAX))
    have = start
    sent = 0
    answered = 0
    while answered < len(offsets):
        while sent < len(offsets) and sent - answered < WINDOW:
            off = offsets[sent]
            piece = data[off : min(off + PIECE_MAX, stop)]
            await dev.send_frame(BlobPut(rid=100 + sent, blob=blob, off=off, data=piece))
            sent += 1
        reply = decode(await dev.ws.recv())  # type: ignore[arg-type]
        if isinstance(reply, Error):
            raise UploadRefused(reply)
        assert isinstance(reply, BlobOk), reply
        have = reply.have
        answered += 1
    return have


async def end(dev: OncallDevice, blob: str) -> BlobOk:
    reply = await dev.ask(BlobEnd(rid=2, blob=blob))
    if isinstance(reply, Error):
        raise UploadRefused(reply)
    assert isinstance(reply, BlobOk), reply
    return reply


async def upload(dev: OncallDevice, data: bytes) -> str:
    """Upload ``data`` (ciphertext) whole: its blob id, complete."""
    ok = await begin(dev, len(data))
    assert ok.have == 0
    assert await put_all(dev, ok.blob, data) == len(data)
    done = await end(dev, ok.blob)
    assert done.have == len(data)
    return ok.blob


@dataclass
class File:
    """A file as a sender encrypts it: plaintext, blob, descriptor."""

    plain: bytes
    blob: bytes
    key: bytes
    hash: bytes
    name: str
    type: str = "image/jpeg"
    blob_id: str = ""

    @classmethod
    def of(cls, plain: bytes, name: str = "plaie.jpg", type: str = "image/jpeg") -> File:
        key, blob, digest = encrypt_bytes(plain)
        return cls(plain, blob, key, digest, name, type)

    def descriptor(self) -> Attachment:
        assert self.blob_id
        return Attachment(self.blob_id, self.key, self.hash, len(self.plain), self.type, self.name)


def with_files(
    dev: OncallDevice,
    to: str,
    targets: dict[str, bytes],
    text: str,
    files: list[File],
    *,
    blobs: tuple[str, ...] | None = None,
    urgent: Urgent | None = None,
    head: bytes | None = None,
    mid: bytes | None = None,
) -> Send:
    """A ``send`` of ``text`` with ``files`` (uploaded: their blob ids set),
    sealed once, its key wrapped for each of ``targets``; ``blobs`` (by
    default the files' ids) names the blobs to the hub."""
    mid = mid or crypto.new_message_id()
    atts = tuple(f.descriptor() for f in files)
    plain = crypto.Plaintext(
        mid, dev.user_id, to, now_ms(), "text", text, urgent=urgent is not None, head=head, atts=atts
    )
    key, body = crypto.seal_body(crypto.pack_plaintext(plain, pad_to=256), mid, dev.keys)
    wraps = {d: crypto.wrap_key(key, dev.keys, box_pk) for d, box_pk in targets.items()}
    names = tuple(f.blob_id for f in files) if blobs is None else blobs
    return Send(mid, dev.device_id, to, wraps, body=body, head=head, urgent=urgent, blobs=names)


async def link(dev: OncallDevice, blob: str) -> BlobLinkOk:
    reply = await dev.ask(BlobLink(rid=5, blob=blob))
    assert isinstance(reply, BlobLinkOk), reply
    return reply


async def http_get(
    hub_url: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` on the hub's port over a plain TCP connection: (status,
    headers with lower-case names, body). The hub closes after each answer."""
    parts = urlsplit(hub_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    lines = [f"GET {path} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    length = int(fields.get("content-length", len(body)))
    assert len(body) == length, (len(body), length)
    return int(status_line.split()[1]), fields, body


async def download(hub_url: str, url: str, size: int, part: int | None = None) -> bytes:
    """Every byte of a blob through ranged GETs, as clients loop (each
    answer is at most HTTP_PART_MAX; ``part`` asks for less)."""
    out = bytearray()
    while len(out) < size:
        wanted = f"bytes={len(out)}-" if part is None else f"bytes={len(out)}-{len(out) + part - 1}"
        status, fields, body = await http_get(hub_url, url, {"Range": wanted})
        assert status == 206, (status, body[:100])
        assert fields["content-range"] == f"bytes {len(out)}-{len(out) + len(body) - 1}/{size}"
        out += body
    return bytes(out)


def frames_of(frames: list[Frame], kind: type) -> list[Frame]:
    return [f for f in frames if isinstance(f, kind)]
