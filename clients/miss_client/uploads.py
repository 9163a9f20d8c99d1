"""Uploading and fetching attachments over one connection (SPEC §16).

Theory of operation
-------------------
:class:`Attachments` is the part of a :class:`~miss_client.client.Client`
that moves attachment bytes. It knows the hub's limits from ``welcome``
(``att_max``, ``blob_max``), and refuses files before anything leaves
(:func:`miss_client.attachments.check_files`).

**Upload** (:meth:`Attachments.upload`), one file after the other, each
from its spool file (:mod:`miss_client.attachments`):

* ``blob_begin {size}`` opens an upload and gives its blob id, recorded at
  once (:mod:`miss_client.upload_state`); for a file that has one already
  (an upload a lost connection or a restart interrupted),
  ``blob_begin {size, blob}`` answers the bytes the hub holds, ``have``,
  and the upload goes on from there, never from zero (if the hub no longer
  knows the blob, ``unknown_blob``, it begins again);
* ``blob_put {blob, off, data}`` pieces of :data:`PIECE_MAX` bytes, with
  at most :data:`WINDOW` unanswered at any time: each ``blob_ok {have}``
  lets one more go (flow control: a hub that writes slowly slows the
  upload, and at most WINDOW pieces of this device are ever in flight).
  ``blob_offset`` (the hub holds another length than we thought) and the
  retryable errors (``rate_limited``, ``storage_unavailable``: after their
  ``retry_after``) resume with ``blob_begin {blob}``; after
  :data:`STALLS` of them in a row with no progress, the error is raised;
* ``blob_end {blob}``: the blob is complete and durable.

``on_progress(name, have, total)`` is called with the bytes of the
encrypted file the hub holds, as it grows. A lost connection raises
ConnectionLost with the upload state kept: :meth:`Client.resend_pending
<miss_client.client.Client.resend_pending>` finishes it.

**Fetch** (:meth:`Attachments.fetch_into`): ``blob_link {blob}`` gives a
capability path ``/blobs/<token>``; :func:`miss_client.http_fetch.fetch_blob`
GETs it by ranges into a :class:`protocol.attachments.Decryptor` (length,
SHA-256, every chunk, the final tag), whose plaintext goes to ``sink``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import BinaryIO

from protocol import frames as f
from protocol.attachments import PIECE_MAX, Attachment, AttachmentError, Decryptor, cipher_size
from protocol.errors import BlobOffset, RequestError, UnknownBlob

from .attachments import FileToSend, SpooledFile, check_files, encrypt_to_spool, target_path
from .errors import (
    AttachmentCorrupt,
    AttachmentsNotSupported,
    AttachmentUnavailable,
    ConnectionFailed,
)
from .http_fetch import BlobGone, blob_url, fetch_blob
from .requests import Router
from .upload_state import UploadRow, UploadState

__all__ = ["STALLS", "WINDOW", "Attachments", "Progress", "save_attachments"]

log = logging.getLogger("miss_client")

#: ``blob_put`` frames in flight, unanswered, at most.
WINDOW = 8
#: Resumptions in a row without a byte of progress before giving up.
STALLS = 5

#: ``on_progress(name, have, total)``: bytes of the encrypted file the hub holds.
Progress = Callable[[str, int, int], None]


def _put(rid: int, *, blob: str, off: int, data: bytes) -> f.Frame:
    return f.BlobPut(rid=rid, blob=blob, off=off, data=data)


def _no_progress(name: str, have: int, total: int) -> None:
    pass


class Attachments:
    """Attachments over ``router`` (module doc). ``att_max``/``blob_max``
    are the hub's limits (None: the hub does not speak ``blobs``);
    ``server`` the WebSocket URL connected to (downloads go to its
    HTTP(S) twin); ``uploads`` the local upload records."""

    def __init__(
        self,
        router: Router,
        uploads: UploadState,
        server: str,
        att_max: int | None,
        blob_max: int | None,
    ) -> None:
        self._router = router
        self.uploads = uploads
        self._server = server
        self.att_max = att_max
        self.blob_max = blob_max

    @property
    def spool_dir(self) -> Path:
        return self.uploads.spool_dir

    # --- before anything is sent ---------------------------------------------------

    def check(self, paths: Sequence[str | os.PathLike[str]]) -> list[FileToSend]:
        """The files, checked against the hub's limits (no I/O but reading
        their first bytes); raises AttachmentsNotSupported, TooManyAttachments,
        AttachmentTooLarge, AttachmentTypeNotAllowed, OSError."""
        if self.att_max is None or self.blob_max is None:
            raise AttachmentsNotSupported()
        return check_files(paths, self.att_max, self.blob_max)

    async def spool(self, files: Sequence[FileToSend]) -> list[SpooledFile]:
        """Encrypt each file into the spool (in a worker thread); on any
        error, the spool files made so far are deleted."""
        done: list[SpooledFile] = []
        try:
            for item in files:
                done.append(await asyncio.to_thread(encrypt_to_spool, item, self.spool_dir))
        except BaseException:
            for made in done:
                made.spool.unlink(missing_ok=True)
            raise
        return done

    # --- upload ---------------------------------------------------------------------

    async def upload(self, message_id: bytes, on_progress: Progress | None = None) -> tuple[Attachment, ...]:
        """Upload every file of ``message_id`` still uploading (resuming
        those begun), then move their descriptors into the message's row
        (:meth:`UploadState.finish`) and return them. Raises the hub's
        errors, ConnectionLost, RequestTimeout; the records stay for a
        later call, except after :meth:`UploadState.discard`."""
        report = on_progress or _no_progress
        rows = self.uploads.rows(message_id)
        blobs: list[str] = []
        for row in rows:
            blob = row.blob
            if not row.done:
                blob = await self._upload_one(message_id, row, report)
                self.uploads.set_done(message_id, row.idx)
            assert blob is not None
            blobs.append(blob)
        atts = tuple(row.file.descriptor(blob) for row, blob in zip(rows, blobs, strict=True))
        self.uploads.finish(message_id, atts)
        return atts

    async def _request(self, build: Callable[[int], f.Frame], what: str) -> f.BlobOk:
        reply = await self._router.request_retrying(build, what)
        if not isinstance(reply, f.BlobOk):
            raise ConnectionFailed(f"the hub answered {what} with something else")
        return reply

    async def _begin(self, message_id: bytes, row: UploadRow, blob: str | None) -> tuple[str, int]:
        """``(blob, have)``: the upload resumed (``blob`` given and known to
        the hub) or begun anew."""
        total = row.file.cipher_size
        if blob is not None:
            try:
                ok = await self._request(
                    lambda rid: f.BlobBegin(rid=rid, size=total, blob=blob), "blob_begin"
                )
                if ok.blob == blob and 0 <= ok.have <= total:
                    return blob, ok.have
                raise ConnectionFailed("the hub resumed another upload than asked")
            except UnknownBlob:
                log.info("upload %d of a message: the hub no longer has it, beginning again", row.idx)
                self.uploads.set_blob(message_id, row.idx, None)
        ok = await self._request(lambda rid: f.BlobBegin(rid=rid, size=total), "blob_begin")
        if ok.have != 0:
            raise ConnectionFailed("the hub began an upload that is not empty")
        self.uploads.set_blob(message_id, row.idx, ok.blob)
        return ok.blob, 0

    async def _upload_one(self, message_id: bytes, row: UploadRow, report: Progress) -> str:
        total = row.file.cipher_size
        blob, have = await self._begin(message_id, row, row.blob)
        report(row.file.name, have, total)
        stalls = 0
        with row.file.spool.open("rb") as spool:
            while have < total:
                before = have
                try:
                    have = await self._put_window(spool, blob, have, total, row.file.name, report)
                except (BlobOffset, RequestError) as exc:
                    if not (isinstance(exc, BlobOffset) or exc.retryable):
                        raise
                    if exc.retryable:
                        await asyncio.sleep(self._router.retry.delay(exc))
                    blob, have = await self._begin(message_id, row, blob)
                    report(row.file.name, have, total)
                    stalls = 0 if have > before else stalls + 1
                    if stalls >= STALLS:
                        raise
        end = await self._request(lambda rid: f.BlobEnd(rid=rid, blob=blob), "blob_end")
        if end.blob != blob or end.have != total:
            raise ConnectionFailed("the hub did not complete the upload")
        return blob

    async def _put_window(
        self, spool: BinaryIO, blob: str, have: int, total: int, name: str, report: Progress
    ) -> int:
        """``blob_put`` from ``have`` to the end, WINDOW pieces in flight;
        returns the bytes the hub holds. Raises the first error answered (the
        pieces after it are abandoned) or what ended the connection."""
        router = self._router
        window: deque[tuple[int, asyncio.Future[f.Frame], int]] = deque()
        off = have
        spool.seek(off)
        try:
            while have < total:
                while off < total and len(window) < WINDOW:
                    data = spool.read(min(PIECE_MAX, total - off))
                    if not data:
                        raise ConnectionFailed("the spool file is shorter than its ciphertext")
                    rid, fut = await router.send_request(partial(_put, blob=blob, off=off, data=data))
                    off += len(data)
                    window.append((rid, fut, off))
                rid, fut, end = window.popleft()
                reply = await router.wait_answer(rid, fut)
                if not isinstance(reply, f.BlobOk) or reply.blob != blob:
                    raise ConnectionFailed("the hub answered blob_put with something else")
                if reply.have != end:
                    raise BlobOffset(f"the hub holds {reply.have} bytes, expected {end}")
                have = reply.have
                report(name, have, total)
        finally:
            for rid, fut, _ in window:
                router.abandon(rid, fut)
        return have

    # --- fetch ----------------------------------------------------------------------

    async def fetch_into(self, att: Attachment, sink: Callable[[bytes], object]) -> None:
        """Fetch, verify and decrypt ``att``, handing its plaintext to
        ``sink`` piece by piece; the last piece comes only once everything
        verified. Raises AttachmentUnavailable (unknown to the hub for this
        device, expired, recalled: ``unknown_blob`` or HTTP 404),
        AttachmentCorrupt (the bytes do not verify: whatever ``sink`` got
        must be thrown away), BlobFetchFailed, the hub's other errors."""
        if self.att_max is None:
            raise AttachmentsNotSupported()
        try:
            reply = await self._router.request_retrying(
                lambda rid: f.BlobLink(rid=rid, blob=att.blob), "blob_link"
            )
        except UnknownBlob:
            raise AttachmentUnavailable(att.name) from None
        if not isinstance(reply, f.BlobLinkOk) or reply.blob != att.blob:
            raise ConnectionFailed("the hub answered blob_link with something else")
        if reply.size != cipher_size(att.size):
            raise AttachmentCorrupt(att.name)
        url = blob_url(self._server, reply.url)
        decryptor = Decryptor(att.key, att.size, att.hash)
        held = bytearray()  # the plaintext of the last chunk waits for finish()

        def feed(data: bytes) -> None:
            plain = decryptor.feed(data)
            if plain:
                if held:
                    sink(bytes(held))
                    held.clear()
                held.extend(plain)

        try:
            await fetch_blob(url, reply.size, feed)
            decryptor.finish()
        except AttachmentError:
            raise AttachmentCorrupt(att.name) from None
        except BlobGone:
            raise AttachmentUnavailable(att.name) from None
        if held:
            sink(bytes(held))


async def save_attachments(
    attachments: Attachments, atts: Sequence[Attachment], directory: Path
) -> list[Path]:
    """Fetch each of ``atts`` into a hidden temporary file of
    ``directory`` (mode 0600), and give it its name
    (:func:`miss_client.attachments.target_path`) only once it verified;
    an attachment that does not verify (AttachmentCorrupt) or cannot be
    fetched leaves nothing behind, and the error is raised (the files
    before it stay saved). Returns the paths written."""
    saved: list[Path] = []
    for att in atts:
        tmp = directory / f".miss-{secrets.token_hex(8)}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                await attachments.fetch_into(att, out.write)
                out.flush()
                os.fsync(out.fileno())
            while True:
                final = target_path(directory, att.name)
                try:
                    os.link(tmp, final)  # never replaces a file that appeared meanwhile
                    break
                except FileExistsError:
                    continue
        finally:
            tmp.unlink(missing_ok=True)
        saved.append(final)
    return saved
