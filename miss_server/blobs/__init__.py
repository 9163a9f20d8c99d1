"""Attachment blob storage (SPEC §16): the interface and its implementations.

:func:`open_blob_store` is the only place that picks an implementation from a
URL: ``file:///abs/dir`` (:class:`FilesystemBlobStore`) or ``postgresql://…``
(:class:`PostgresBlobStore`, ``?schema=`` as the main store).
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from miss_server.blobs.base import (
    BlobError,
    BlobNotComplete,
    BlobOffsetMismatch,
    BlobQuotaExceeded,
    BlobStore,
    BlobStoreUnavailable,
    Grant,
    Quotas,
    UnknownBlob,
    Upload,
)

__all__ = [
    "BlobError",
    "BlobNotComplete",
    "BlobOffsetMismatch",
    "BlobQuotaExceeded",
    "BlobStore",
    "BlobStoreUnavailable",
    "Grant",
    "Quotas",
    "UnknownBlob",
    "Upload",
    "open_blob_store",
]


def open_blob_store(url: str) -> BlobStore:
    """The blob store a URL names (not yet opened: call ``await store.open()``).

    ``file:///abs/dir``: one file per blob in ``dir`` (created, mode 700);
    ``postgresql://…`` or ``postgres://…``: tables of the main store's schema.
    Raises ValueError for anything else.
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"blob store {url!r}: use file:///absolute/directory")
        from .filesystem import FilesystemBlobStore

        return FilesystemBlobStore(unquote(parts.path))
    if parts.scheme in ("postgresql", "postgres"):
        from .postgres import PostgresBlobStore

        return PostgresBlobStore(url)
    raise ValueError(f"blob store {url.split(':', 1)[0]!r}: use file:///dir or postgresql://…")
