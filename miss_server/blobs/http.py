"""``GET /blobs/<token>`` on the hub's port (SPEC §16): a blob's ciphertext
for whoever holds a valid download link.

Theory of operation
-------------------
``blob_link`` (service.py) hands a target device a token; this module
answers a GET of ``/blobs/<token>`` while the token is valid, for the
blob it names only. A response is **one bounded part**: the whole blob if
it is at most HTTP_PART_MAX bytes and no Range is asked, else the range
asked, clipped to HTTP_PART_MAX bytes (206); clients loop until they have
``size``. websockets closes the connection after every non-101 response
and bounds it by the handshake timeout, so a download holds at most one
part in memory, whatever the file's size, and at most
``max_blob_downloads`` of them are in progress on a node: a slot is taken
when the request is read and given back when its connection has closed
(the part left the socket, or the client is gone), so slow readers count
too. Over the cap, or when the store cannot be reached: 503 with
Retry-After. Every GET first spends a token of its client address's
``rate_download`` bucket (node-local, like ``rate_device``): an address
over it gets 429 with Retry-After before the store is asked anything, so a
flood of guesses costs the store nothing and other addresses nothing.

One answer, 404, for a token that is malformed, unknown, expired or
revoked (its blob recalled or expired): nothing tells a guesser more. The
token is never logged: no line here names the path, and websockets' own
logger is kept at warnings (logs.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from protocol.attachments import HTTP_PART_MAX

from ..admission import address_key
from ..config import Settings
from ..connection import client_address
from ..metrics import Metrics
from ..ratelimit import MemoryLimiter, parse_rate
from .base import BlobStore, BlobStoreUnavailable, UnknownBlob
from .service import URL_PREFIX, now_ms, token_hash

__all__ = ["BlobDownloads", "parse_range"]

log = logging.getLogger("miss.blobs.http")

#: A token as ``blob_link`` makes them: 43 base64url characters.
TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
#: One range of bytes: ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n``.
RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")
#: Retry-After (s) of a 503.
RETRY_AFTER_S = 1

BLOB_HEADERS = (
    ("Content-Type", "application/octet-stream"),
    ("Cache-Control", "no-store"),
    ("Accept-Ranges", "bytes"),
    ("X-Content-Type-Options", "nosniff"),
    ("Connection", "close"),
)


class RangeNotSatisfiable(ValueError):
    """The Range header cannot be served (416)."""


def parse_range(header: str, size: int) -> tuple[int, int]:
    """``(start, end)`` inclusive of one ``Range`` header against a blob of
    ``size`` bytes, clipped to the blob (not yet to HTTP_PART_MAX); raises
    RangeNotSatisfiable for several ranges, another unit, a start past the
    end or an empty suffix."""
    m = RANGE.fullmatch(header.strip())
    if m is None:
        raise RangeNotSatisfiable(header[:40])
    first, last = m.group(1), m.group(2)
    if not first:
        if not last or int(last) == 0:
            raise RangeNotSatisfiable("empty suffix")
        return max(0, size - int(last)), size - 1
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable("outside the blob")
    return start, end


class BlobDownloads:
    """Answers ``GET /blobs/...`` (module doc). :meth:`respond` is called by
    the hub's ``process_request`` for any path under ``/blobs/``."""

    def __init__(
        self, store: BlobStore, settings: Settings, metrics: Metrics, limiter: MemoryLimiter
    ) -> None:
        self.store = store
        self._cap = settings.max_blob_downloads
        self._rate = parse_rate(settings.rate_download)
        self._limiter = limiter
        self._trust_forwarded_for = settings.trust_forwarded_for
        self._metrics = metrics
        self._active = 0
        self._waiters: set[asyncio.Task[None]] = set()
        metrics.blob_downloads_active.set_function(lambda: self._active)

    @staticmethod
    def handles(path: str) -> bool:
        return path.startswith(URL_PREFIX)

    async def respond(self, ws: ServerConnection, request: Request, path: str) -> Response:
        """The response to a GET of ``path`` (under ``/blobs/``)."""
        address = address_key(client_address(ws, self._trust_forwarded_for))
        if wait := self._limiter.take_now(f"get:{address}", self._rate):
            refused = ws.respond(HTTPStatus.TOO_MANY_REQUESTS, "too many requests\n")
            refused.headers["Retry-After"] = str(max(1, -(-wait // 1000)))
            return self._answer(refused)
        if self._active >= self._cap:
            return self._answer(self._unavailable(ws, "too many downloads\n"))
        self._active += 1
        released = False
        try:
            response = await self._serve(ws, request, path.removeprefix(URL_PREFIX))
            if response.status_code in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
                # The slot is kept until the part has left: the connection closes after it.
                waiter = asyncio.get_running_loop().create_task(self._release_when_closed(ws))
                self._waiters.add(waiter)
                waiter.add_done_callback(self._waiters.discard)
                released = True
            return self._answer(response)
        finally:
            if not released:
                self._active -= 1

    async def _release_when_closed(self, ws: ServerConnection) -> None:
        try:
            await ws.wait_closed()
        finally:
            self._active -= 1

    def _answer(self, response: Response) -> Response:
        self._metrics.blob_downloads.labels(str(response.status_code)).inc()
        return response

    async def _serve(self, ws: ServerConnection, request: Request, token: str) -> Response:
        if TOKEN.fullmatch(token) is None:
            return ws.respond(HTTPStatus.NOT_FOUND, "not found\n")
        now = now_ms()
        try:
            grant = await self.store.resolve(token_hash(token), now)
        except BlobStoreUnavailable as exc:
            log.warning("blob store unavailable", extra={"error": str(exc)})
            return self._unavailable(ws, "storage unavailable\n")
        if grant is None:
            return ws.respond(HTTPStatus.NOT_FOUND, "not found\n")
        ranges = request.headers.get_all("Range")
        if not ranges:
            if grant.size > HTTP_PART_MAX:
                return ws.respond(HTTPStatus.BAD_REQUEST, "range required\n")
            start, end, status = 0, grant.size - 1, HTTPStatus.OK
        else:
            try:
                if len(ranges) > 1:
                    raise RangeNotSatisfiable("several Range headers")
                start, end = parse_range(ranges[0], grant.size)
            except RangeNotSatisfiable:
                refused = ws.respond(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "range not satisfiable\n")
                refused.headers["Content-Range"] = f"bytes */{grant.size}"
                return refused
            end = min(end, start + HTTP_PART_MAX - 1)
            status = HTTPStatus.PARTIAL_CONTENT
        try:
            data = await self.store.read(grant.blob, start, end - start + 1)
        except UnknownBlob:  # recalled or expired since the token was resolved
            return ws.respond(HTTPStatus.NOT_FOUND, "not found\n")
        except BlobStoreUnavailable as exc:
            log.warning("blob store unavailable", extra={"error": str(exc)})
            return self._unavailable(ws, "storage unavailable\n")
        headers = Headers(BLOB_HEADERS)
        headers["Content-Length"] = str(len(data))
        if status == HTTPStatus.PARTIAL_CONTENT:
            headers["Content-Range"] = f"bytes {start}-{start + len(data) - 1}/{grant.size}"
        self._metrics.blob_bytes_downloaded.inc(len(data))
        return Response(status.value, status.phrase, headers, data)

    @staticmethod
    def _unavailable(ws: ServerConnection, text: str) -> Response:
        response = ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, text)
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response
