"""Attachments on one hub node (SPEC §16): the blob frames, the linking of
a ``send``'s blobs to its message, recall and expiry.

Theory of operation
-------------------
A client encrypts each file on the device and uploads the ciphertext in
pieces over its authenticated WebSocket: ``blob_begin`` (the size; the hub
names a new blob, or with ``blob`` tells how many bytes of it it holds),
``blob_put`` (one piece at the offset the hub holds), ``blob_end`` (durable
and complete). The hub never sees a key: it stores bytes and checks only
sizes, offsets, quotas and who may do what.

A complete blob is attached to a message by the ``send`` that names it in
``blobs``: :meth:`BlobService.link` runs in every send path (a 1:1 sealed
body, a team, a role or an urgent send) once the targets are checked and
**before** the store accepts the message, so an accepted message never
names a blob its targets cannot fetch; a resend links again (the store's
link is idempotent). The access set is the message's target devices, held
backup devices included, and the sender's device; every device of the
sender's user may fetch it too (the store adds them).

A target device fetches a blob with ``blob_link``: the hub gives it an
unguessable token, valid ``blob_link_seconds`` for that blob only, and the
client GETs ``/blobs/<token>`` on the hub's port (``http.py``). The hub
keeps only the token's SHA-256.

Every refusal a device can provoke is a typed request error
(:mod:`protocol.errors`); ``unknown_blob`` is one answer for unknown, not
yours, not complete, linked elsewhere, expired and recalled, so that no
answer tells a device anything about another's blobs.

Metering (connection.py, guard.py): ``blob_put`` spends the device's
``rate_blob`` bucket (over it, the piece waits); the other three frames one
token of the device's request bucket; only an attested device of a verified
account makes any of them (:meth:`Hub.requester`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Collection
from typing import TypeVar

from protocol import errors
from protocol.attachments import cipher_size
from protocol.frames import (
    BlobBegin,
    BlobEnd,
    BlobLink,
    BlobLinkOk,
    BlobOk,
    BlobPut,
    Frame,
    Send,
    encode,
)

from ..config import Settings
from ..metrics import Metrics
from .base import (
    BlobNotComplete,
    BlobOffsetMismatch,
    BlobQuotaExceeded,
    BlobStore,
    BlobStoreUnavailable,
    Quotas,
    UnknownBlob,
)

__all__ = ["BLOB_FRAMES", "BlobService", "new_token", "token_hash"]

log = logging.getLogger("miss.blobs")
T = TypeVar("T")

#: The request frames this module answers.
BLOB_FRAMES: tuple[type[Frame], ...] = (BlobBegin, BlobPut, BlobEnd, BlobLink)
#: ``retry_after`` of storage_unavailable (ms).
STORE_RETRY_MS = 1000
#: Where a download link points: ``/blobs/`` and the token.
URL_PREFIX = "/blobs/"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_token() -> str:
    """A download token: 32 random bytes, base64url without padding (43 characters)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")


def token_hash(token: str) -> bytes:
    """What the store keeps of a token: the SHA-256 of its ASCII text."""
    return hashlib.sha256(token.encode("ascii")).digest()


class BlobService:
    """The blob frames and the attachment side of sends, recalls and expiry
    (module doc). Store errors become request errors here; nothing else
    in the hub imports the BlobStore's exceptions."""

    def __init__(self, store: BlobStore, settings: Settings, metrics: Metrics) -> None:
        self.store = store
        self._settings = settings
        self._metrics = metrics
        self._quotas = Quotas(
            bytes_per_day=settings.blob_quota_bytes_per_day,
            count_per_day=settings.blob_quota_per_day,
            open_uploads=settings.max_open_uploads,
            stored_bytes_per_user=settings.blob_stored_bytes_per_user,
        )
        #: Largest upload: the ciphertext of ``max_attachment_bytes``.
        self.max_cipher_bytes = cipher_size(settings.max_attachment_bytes)

    @staticmethod
    def handles(frame: Frame) -> bool:
        return type(frame) in BLOB_FRAMES

    async def request(self, user: str, device: str, frame: Frame) -> bytes:
        """The answer to one blob frame of an attested device of a verified
        user (the hub checked that). Raises BlobTooLarge, BlobQuota,
        UnknownBlob, BlobOffset, BlobIncomplete or StorageUnavailable."""
        if type(frame) is BlobPut:
            return await self._put(device, frame)
        if type(frame) is BlobBegin:
            return await self._begin(user, device, frame)
        if type(frame) is BlobEnd:
            upload = await self._call(self.store.complete(device, frame.blob, now_ms()), "incomplete")
            self._metrics.blobs_stored.inc()
            return encode(BlobOk(frame.rid, upload.blob, upload.have))
        if type(frame) is BlobLink:
            return await self._link(user, device, frame)
        raise errors.FrameNotAllowed(frame.TYPE)

    async def _begin(self, user: str, device: str, frame: BlobBegin) -> bytes:
        if frame.blob is not None:
            upload = await self._call(self.store.resume(device, frame.blob), "unknown")
            if upload.size != frame.size:
                self._metrics.blob_refused.labels("unknown").inc()
                raise errors.UnknownBlob("no such upload")
            return encode(BlobOk(frame.rid, upload.blob, upload.have))
        if frame.size > self.max_cipher_bytes:
            self._metrics.blob_refused.labels("too_large").inc()
            raise errors.BlobTooLarge(f"{frame.size} bytes over {self.max_cipher_bytes}")
        upload = await self._call(self.store.begin(user, device, frame.size, now_ms(), self._quotas), "quota")
        return encode(BlobOk(frame.rid, upload.blob, upload.have))

    async def _put(self, device: str, frame: BlobPut) -> bytes:
        upload = await self._call(self.store.put(device, frame.blob, frame.off, frame.data), "offset")
        self._metrics.blob_bytes_uploaded.inc(len(frame.data))
        return encode(BlobOk(frame.rid, upload.blob, upload.have))

    async def _link(self, user: str, device: str, frame: BlobLink) -> bytes:
        now = now_ms()
        token = new_token()
        expires_at = now + int(self._settings.blob_link_seconds * 1000)
        grant = await self._call(
            self.store.grant(user, device, frame.blob, token_hash(token), expires_at, now), "unknown"
        )
        url = URL_PREFIX + token
        return encode(BlobLinkOk(frame.rid, grant.blob, url, grant.size, grant.expires_at))

    # --- sends, recalls, expiry ------------------------------------------------------

    def check_count(self, frame: Send) -> None:
        """TooManyAttachments for a send naming more blobs than
        ``max_attachments``; MalformedFrame for blobs without a sealed body."""
        if not frame.blobs:
            return
        if frame.body is None:
            raise errors.MalformedFrame("blobs need a sealed body")
        if len(frame.blobs) > self._settings.max_attachments:
            raise errors.TooManyAttachments(f"{len(frame.blobs)} attachments")

    async def link(
        self, user: str, device: str, frame: Send, targets: Collection[str], expires_at: int
    ) -> None:
        """Attach ``frame``'s blobs (if any) to its message, fetchable by
        ``targets`` (every device the message is for, held ones included),
        the sending device and its user's devices, until ``expires_at``.
        Before the store accepts the message (module doc). Raises
        UnknownBlob (one answer whatever the reason) or StorageUnavailable."""
        if not frame.blobs:
            return
        devices = {*targets, device}
        await self._call(self.store.link(user, frame.id, frame.blobs, devices, expires_at), "unknown")

    async def recall(self, user: str, message_id: bytes) -> int:
        """Delete the blobs of a message ``user`` sent (bytes too); how many."""
        removed = await self._call(self.store.recall(user, message_id), "unknown")
        if removed:
            self._metrics.blobs_deleted.labels("recalled").inc(removed)
        return removed

    async def expire_forever(self) -> None:
        """Delete expired blobs, stale uploads and tokens every
        ``expiry_interval_seconds`` (runs as a task on every node; the
        store's deletes are idempotent)."""
        ttl_ms = int(self._settings.blob_upload_ttl_seconds * 1000)
        while True:
            await asyncio.sleep(self._settings.expiry_interval_seconds)
            try:
                n = await self.store.expire(now_ms(), ttl_ms)
            except BlobStoreUnavailable as exc:
                log.warning("blob expiry failed", extra={"error": str(exc)})
                continue
            except Exception:  # the next round tries again; the task must not die
                log.exception("blob expiry failed")
                continue
            if n:
                self._metrics.blobs_deleted.labels("expired").inc(n)
                log.info("expired blobs", extra={"blobs": n})

    async def _call(self, call: Awaitable[T], reason: str) -> T:
        """Await a store call, its errors as the request errors of SPEC §16;
        ``reason`` labels a refusal in the metrics when the store does not
        say more."""
        try:
            return await call
        except UnknownBlob:
            self._metrics.blob_refused.labels("unknown").inc()
            raise errors.UnknownBlob("no such blob") from None
        except BlobQuotaExceeded as exc:
            self._metrics.blob_refused.labels("quota").inc()
            raise errors.BlobQuota("quota", retry_after_ms=exc.retry_after_ms) from None
        except BlobOffsetMismatch as exc:
            self._metrics.blob_refused.labels("offset").inc()
            raise errors.BlobOffset(f"the hub holds {exc.have} bytes") from None
        except BlobNotComplete:
            self._metrics.blob_refused.labels("incomplete").inc()
            raise errors.BlobIncomplete("not all bytes uploaded") from None
        except BlobStoreUnavailable as exc:
            log.warning("blob store unavailable", extra={"error": str(exc), "during": reason})
            raise errors.StorageUnavailable("blob store", retry_after_ms=STORE_RETRY_MS) from None
