"""The BlobStore interface: encrypted attachment blobs (SPEC §16).

A blob is ciphertext the hub cannot read (``protocol/attachments.py``): the
store keeps bytes, their size, who uploaded them, which message they belong
to and which devices may fetch them. Every implementation
(``filesystem.py`` embedded, ``postgres.py`` production) passes the same
conformance suite (``tests/server/test_blob_store.py``).

Life of a blob:

1. :meth:`BlobStore.begin` by a device: a new id (``b_`` + 32 lowercase hex,
   made by the store, never by the client), ``have = 0``. Quotas are checked
   in the same transaction that would exceed them.
2. :meth:`BlobStore.put` appends ``data`` at ``off`` (``off`` must equal
   ``have``; ``off + len(data)`` must not pass ``size``). Only the uploading
   device may put, resume or complete.
3. :meth:`BlobStore.complete` once ``have == size``: the bytes are durable
   (fsync / commit) when it returns.
4. :meth:`BlobStore.link` binds complete blobs to one message
   ``(user, message_id)`` with its expiry and the devices allowed to fetch.
5. :meth:`BlobStore.grant` records a download token (by its SHA-256 hash, the
   token itself is never stored) for a device in the access set;
   :meth:`BlobStore.resolve` turns a token hash back into the blob while it
   is valid; :meth:`BlobStore.read` returns byte ranges.
6. :meth:`BlobStore.recall` (the sender's recall) and :meth:`BlobStore.expire`
   delete blobs, their bytes, access rows and tokens.

One answer, no oracle: every "not there / not yours / not complete / linked
elsewhere / expired" case raises :class:`UnknownBlob`.

Quotas are per device per UTC day (bytes begun, uploads begun), open
(incomplete) uploads per device, and stored bytes per user (every blob of
the user the store still holds, complete or not).

Errors: every method may raise :class:`BlobStoreUnavailable` when the backend
cannot be reached (the hub answers ``storage_unavailable`` / HTTP 503).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Upload:
    """An upload's state: ``have`` bytes of ``size`` held; ``complete`` once durable."""

    blob: str
    size: int
    have: int
    complete: bool


@dataclass(frozen=True, slots=True)
class Grant:
    """A download right: ``blob`` (``size`` bytes) until ``expires_at`` (ms)."""

    blob: str
    size: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class Quotas:
    """Limits :meth:`BlobStore.begin` enforces (hub settings ``blob_quota_*``).

    ``bytes_per_day`` and ``count_per_day``: ciphertext bytes and uploads a
    device may begin per UTC day; ``open_uploads``: incomplete uploads a
    device may have; ``stored_bytes_per_user``: bytes of every blob a user
    has in the store (counting the new one's full size).
    """

    bytes_per_day: int
    count_per_day: int
    open_uploads: int
    stored_bytes_per_user: int


class BlobError(Exception):
    """Base of the blob store's errors."""


class UnknownBlob(BlobError):
    """Unknown, not yours, not complete, linked elsewhere, expired or recalled: one answer."""


class BlobQuotaExceeded(BlobError):
    """A quota would be exceeded; ``retry_after_ms`` when waiting helps (the daily ones)."""

    def __init__(self, message: str = "blob quota exceeded", retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class BlobOffsetMismatch(BlobError):
    """``off`` is not what the store holds (``have``), or the data runs past ``size``."""

    def __init__(self, have: int, message: str = "offset mismatch") -> None:
        super().__init__(message)
        self.have = have


class BlobNotComplete(BlobError):
    """:meth:`BlobStore.complete` before all ``size`` bytes were put."""


class BlobStoreUnavailable(BlobError):
    """The backend cannot be reached; nothing was written. The hub answers storage_unavailable / 503."""


class BlobStore(Protocol):
    """Storage for attachment ciphertext, see the module docstring for the life of a blob."""

    async def open(self) -> None:
        """Create what is missing (directory, index, pool) and get ready; call once before use."""
        ...

    async def close(self) -> None:
        """Release files and connections; the store is unusable afterwards."""
        ...

    async def begin(self, user: str, device: str, size: int, now: int, quotas: Quotas) -> Upload:
        """Start a new upload of ``size`` ciphertext bytes by ``device`` of ``user`` at ``now`` (ms).

        Returns ``Upload(blob, size, 0, False)`` with a fresh id. Raises
        :class:`BlobQuotaExceeded` when any of ``quotas`` would be exceeded
        (the daily ones with ``retry_after_ms`` until the next UTC midnight).
        """
        ...

    async def resume(self, device: str, blob: str) -> Upload:
        """The upload's state (``have`` bytes held) for the device that began it.

        :class:`UnknownBlob` for any other device or a blob that is gone.
        """
        ...

    async def put(self, device: str, blob: str, off: int, data: bytes) -> Upload:
        """Append ``data`` (1..PIECE_MAX bytes) at ``off``; returns the new state.

        :class:`UnknownBlob` unless ``device`` began ``blob``;
        :class:`BlobOffsetMismatch` (with ``have``) when ``off != have`` or
        ``off + len(data) > size`` (so any put on a complete blob, whose
        ``have`` is ``size``). Nothing is written on error.
        """
        ...

    async def complete(self, device: str, blob: str, now: int) -> Upload:
        """Mark the upload complete once all bytes are held; durable (fsync / commit) on return.

        Idempotent on a complete blob. :class:`BlobNotComplete` before all
        bytes; :class:`UnknownBlob` if not this device's upload.
        """
        ...

    async def link(
        self,
        user: str,
        message_id: bytes,
        blobs: Sequence[str],
        devices: Collection[str],
        expires_at: int,
    ) -> None:
        """Bind ``blobs`` to the message ``(user, message_id)``, expiring at ``expires_at`` (ms).

        Every blob must be complete, uploaded by ``user``, and unlinked or
        linked to this same ``(user, message_id)`` (idempotent: devices are
        added); else :class:`UnknownBlob` and nothing is linked. Access:
        ``devices`` plus every device of ``user``.
        """
        ...

    async def grant(
        self, user: str, device: str, blob: str, token_hash: bytes, expires_at: int, now: int
    ) -> Grant:
        """Record a download token (its SHA-256 ``token_hash``) for ``blob`` until ``expires_at``.

        Allowed when the blob is complete and ``device`` is in its access set
        or ``user`` uploaded it; else :class:`UnknownBlob`.
        """
        ...

    async def resolve(self, token_hash: bytes, now: int) -> Grant | None:
        """The grant of a token hash while ``now < expires_at`` and the blob exists; else None."""
        ...

    async def read(self, blob: str, start: int, length: int) -> bytes:
        """Bytes ``[start, start + length)`` of a complete blob (clipped at its size).

        ``length`` ≤ HTTP_PART_MAX; the store reads only that range, never the
        whole blob. :class:`UnknownBlob` if the blob is gone or incomplete.
        """
        ...

    async def recall(self, user: str, message_id: bytes) -> int:
        """Delete the blobs linked to ``(user, message_id)`` (bytes, access, tokens); returns how many."""
        ...

    async def expire(self, now: int, upload_ttl_ms: int) -> int:
        """Delete what has expired; returns the number of blobs deleted.

        Deletes linked blobs past their message's ``expires_at``, uploads
        (complete or not) never linked and begun more than ``upload_ttl_ms``
        ago, and tokens past their expiry.
        """
        ...

    async def holds(self, blob: str) -> bool:
        """Whether the blob's bytes are still stored (tests, marker and expiry checks)."""
        ...
