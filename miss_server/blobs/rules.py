"""Rules both blob stores apply the same way (``filesystem.py``, ``postgres.py``).

Nothing here does I/O: blob ids, the UTC day of the daily quotas, the quota
decision, and the bounds of what a device can make the store keep.
"""

from __future__ import annotations

import re
import secrets

from protocol.attachments import HTTP_PART_MAX, PIECE_MAX

from .base import BlobQuotaExceeded, Quotas, UnknownBlob

__all__ = [
    "DAY_MS",
    "EXPIRE_BATCH",
    "MAX_TOKENS_PER_DEVICE",
    "check_piece",
    "check_quotas",
    "check_range",
    "new_blob_id",
    "utc_day",
    "valid_blob_id",
]

DAY_MS = 86_400_000
#: Live download tokens one device may hold; granting one more drops its
#: oldest (each lives ``blob_link_seconds``, 600 s by default, so only a
#: device linking over 256 blobs in that time notices).
MAX_TOKENS_PER_DEVICE = 256
#: Blobs deleted per transaction by expire() and recall(): other work
#: interleaves with a long expiry.
EXPIRE_BATCH = 500

_BLOB_ID = re.compile(r"b_[0-9a-f]{32}")


def new_blob_id() -> str:
    """A fresh blob id, ``b_`` + 32 lowercase hex digits of 16 random bytes (SPEC §16)."""
    return "b_" + secrets.token_hex(16)


def valid_blob_id(blob: str) -> str:
    """``blob`` if it has the form of an id the stores make; else UnknownBlob.

    Checked before any lookup, so a file name is never made of anything else.
    """
    if not isinstance(blob, str) or not _BLOB_ID.fullmatch(blob):
        raise UnknownBlob("unknown blob")
    return blob


def utc_day(now: int) -> int:
    """The UTC day number (days since the epoch) of ``now`` in ms."""
    return now // DAY_MS


def check_quotas(
    quotas: Quotas,
    size: int,
    now: int,
    *,
    day_bytes: int,
    day_count: int,
    open_uploads: int,
    stored_bytes: int,
) -> None:
    """Raise BlobQuotaExceeded if beginning ``size`` more bytes breaks a quota.

    ``day_*``: what the device began today; ``open_uploads``: its incomplete
    uploads; ``stored_bytes``: the user's blobs. The daily quotas carry
    ``retry_after_ms`` until the next UTC midnight, unless ``size`` alone is
    over the daily bytes (waiting cannot help).
    """
    if size <= 0:
        raise ValueError("a blob has at least one byte")
    midnight = (utc_day(now) + 1) * DAY_MS - now
    if day_count + 1 > quotas.count_per_day:
        raise BlobQuotaExceeded("uploads per day", retry_after_ms=midnight)
    if day_bytes + size > quotas.bytes_per_day:
        retry = midnight if size <= quotas.bytes_per_day else None
        raise BlobQuotaExceeded("bytes per day", retry_after_ms=retry)
    if open_uploads + 1 > quotas.open_uploads:
        raise BlobQuotaExceeded("open uploads")
    if stored_bytes + size > quotas.stored_bytes_per_user:
        raise BlobQuotaExceeded("stored bytes")


def check_piece(off: int, data: bytes) -> None:
    """ValueError unless ``data`` is 1..PIECE_MAX bytes at a non-negative offset (the hub checks first)."""
    if off < 0 or not 1 <= len(data) <= PIECE_MAX:
        raise ValueError(f"a piece is 1..{PIECE_MAX} bytes at an offset >= 0")


def check_range(start: int, length: int) -> None:
    """ValueError unless ``start >= 0`` and ``0 <= length <= HTTP_PART_MAX``."""
    if start < 0 or not 0 <= length <= HTTP_PART_MAX:
        raise ValueError(f"a read is 0..{HTTP_PART_MAX} bytes at an offset >= 0")
