"""Encrypted attachments: the file cipher and the descriptor (SPEC.md §16).

Theory of operation
-------------------
A file is encrypted on the sender's device under a fresh 32-byte key ``K``
with libsodium's ``crypto_secretstream_xchacha20poly1305``, in chunks of
:data:`CHUNK` bytes. The ciphertext ("blob") is uploaded to the hub, which
stores it opaquely; ``K``, the blob's SHA-256, the plaintext size, the MIME
type, the name and an optional thumbnail travel inside the end-to-end
encrypted message, as one :class:`Attachment` descriptor per file (the
plaintext key ``atts``, :mod:`protocol.crypto`).

The blob is ``header (24) ‖ c_1 ‖ … ‖ c_n``: ``n = max(1, ceil(size / CHUNK))``
(an empty file is one empty chunk), every chunk but the last exactly
``CHUNK`` bytes of plaintext, ``c_i`` = push(chunk_i) with tag ``MESSAGE``,
the last with tag ``FINAL``; each ``c_i`` is 17 bytes longer than its chunk,
so the blob's length is :func:`cipher_size` of the plaintext size.

A recipient accepts the bytes only if their length is ``cipher_size(size)``,
their SHA-256 is ``hash``, every chunk decrypts, chunk n carries ``FINAL``
and every earlier chunk ``MESSAGE`` (:class:`Decryptor`); anything else is
:class:`AttachmentError`. The chunk tags stop truncation and extension;
the hash binds the blob to the descriptor the sender signed, so that
another holder of ``K`` (any recipient) cannot have the hub serve a
different file under it.

This module does no I/O and imports nothing else of ``protocol/``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Any

import nacl.bindings
import nacl.exceptions

__all__ = [
    "ABYTES",
    "ALLOWED_TYPES",
    "BLOB_ID_PREFIX",
    "CHUNK",
    "HASH_BYTES",
    "HEADER_BYTES",
    "HTTP_PART_MAX",
    "IMAGE_TYPES",
    "KEY_BYTES",
    "MAX_ATTACHMENTS_WIRE",
    "MAX_DIMENSION",
    "MAX_NAME_BYTES",
    "MAX_SIZE",
    "MAX_TYPE_BYTES",
    "MIN_CIPHER_SIZE",
    "PIECE_MAX",
    "THUMB_MAX",
    "Attachment",
    "AttachmentError",
    "Decryptor",
    "Encryptor",
    "chunk_count",
    "cipher_size",
    "decrypt_bytes",
    "encrypt_bytes",
    "is_blob_id",
    "new_blob_id",
    "plain_size",
    "sniff_type",
]

#: Plaintext bytes per chunk (the last chunk may be shorter, or empty).
CHUNK = 65536
#: The secretstream header that opens a blob.
HEADER_BYTES = nacl.bindings.crypto_secretstream_xchacha20poly1305_HEADERBYTES
#: What each chunk's encryption adds (its tag byte and a 16-byte MAC).
ABYTES = nacl.bindings.crypto_secretstream_xchacha20poly1305_ABYTES
KEY_BYTES = 32
HASH_BYTES = 32
#: The smallest blob: an empty file (header and one empty chunk).
MIN_CIPHER_SIZE = HEADER_BYTES + ABYTES
#: Largest thumbnail a descriptor carries (a JPEG).
THUMB_MAX = 4096
#: Largest ``blob_put.data`` (SPEC §16.4): a piece with its frame stays
#: under the 64 KiB frame limit.
PIECE_MAX = 61440
#: Most bytes one HTTP download response carries (SPEC §16.5).
HTTP_PART_MAX = 1048576
#: Most attachments one message (``atts``) or one ``send.blobs`` names on
#: the wire; a hub's ``max_attachments`` may be lower.
MAX_ATTACHMENTS_WIRE = 16
#: Largest plaintext size a descriptor may state (1 TiB): far beyond any
#: hub's ``max_attachment_bytes``, and every derived size stays an exact
#: integer in a JavaScript number.
MAX_SIZE = 2**40
MAX_TYPE_BYTES = 100
MAX_NAME_BYTES = 255
#: Bounds of ``w`` and ``h`` (pixels).
MAX_DIMENSION = 100000
#: Types the reference clients send. A receiver accepts any type string
#: but renders only the image types it can.
ALLOWED_TYPES = ("image/jpeg", "image/png", "image/heic", "image/heif", "application/pdf")
IMAGE_TYPES = ("image/jpeg", "image/png", "image/heic", "image/heif")
BLOB_ID_PREFIX = "b_"

_TAG_MESSAGE = nacl.bindings.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
_TAG_FINAL = nacl.bindings.crypto_secretstream_xchacha20poly1305_TAG_FINAL
_HEX = frozenset("0123456789abcdef")
_pull = nacl.bindings.crypto_secretstream_xchacha20poly1305_pull


class AttachmentError(ValueError):
    """A blob that does not match its descriptor (length, hash, a chunk
    that does not decrypt, a missing or early final tag), or a descriptor
    that breaks SPEC §16.2."""


def is_blob_id(v: object) -> bool:
    """True for a blob id: ``"b_"`` and 32 lowercase hex digits (SPEC §16.2)."""
    return type(v) is str and len(v) == 34 and v.startswith(BLOB_ID_PREFIX) and _HEX.issuperset(v[2:])


def new_blob_id() -> str:
    """A fresh random blob id (the hub assigns them, at ``blob_begin``)."""
    return BLOB_ID_PREFIX + os.urandom(16).hex()


def chunk_count(size: int) -> int:
    """How many chunks a file of ``size`` plaintext bytes is cut into (≥ 1)."""
    if size < 0:
        raise ValueError("size must be >= 0")
    return max(1, -(-size // CHUNK))


def cipher_size(size: int) -> int:
    """The length of the blob of a file of ``size`` plaintext bytes:
    ``24 + size + 17 * n``."""
    return HEADER_BYTES + size + ABYTES * chunk_count(size)


def plain_size(cipher: int) -> int | None:
    """The plaintext size whose blob is ``cipher`` bytes long, or None if
    no plaintext size gives that length (below 41, or 42 to 58 bytes past
    a whole number of full chunks)."""
    body = cipher - HEADER_BYTES
    if body < ABYTES:
        return None
    full, rest = divmod(body, CHUNK + ABYTES)
    if rest == 0:  # n full chunks
        size = full * CHUNK
    elif rest >= ABYTES + 1:  # full chunks then a partial one
        size = full * CHUNK + rest - ABYTES
    elif full == 0 and rest == ABYTES:  # the empty file
        size = 0
    else:
        return None
    return size if cipher_size(size) == cipher else None


class Encryptor:
    """Encrypts one file, chunk by chunk: write :attr:`header`, then the
    result of :meth:`push` for each chunk in order. Every chunk but the
    last must be exactly :data:`CHUNK` bytes and the last (``final``)
    0 to CHUNK bytes, else ValueError: the layout fixes the chunk sizes so
    that a recipient can check the blob's length from the descriptor."""

    __slots__ = ("_done", "_state", "header")

    def __init__(self, key: bytes) -> None:
        if type(key) is not bytes or len(key) != KEY_BYTES:
            raise ValueError("the file key is 32 bytes")
        self._state = nacl.bindings.crypto_secretstream_xchacha20poly1305_state()
        #: The 24 bytes that open the blob (libsodium draws them at random).
        self.header: bytes = nacl.bindings.crypto_secretstream_xchacha20poly1305_init_push(self._state, key)
        self._done = False

    def push(self, chunk: bytes, final: bool) -> bytes:
        """The ciphertext of the next chunk (``len(chunk) + 17`` bytes)."""
        if self._done:
            raise ValueError("the final chunk was already pushed")
        if len(chunk) > CHUNK or (not final and len(chunk) != CHUNK):
            raise ValueError("every chunk but the last holds exactly CHUNK bytes")
        self._done = final
        tag = _TAG_FINAL if final else _TAG_MESSAGE
        return nacl.bindings.crypto_secretstream_xchacha20poly1305_push(self._state, bytes(chunk), None, tag)


class Decryptor:
    """Checks and decrypts one blob against its descriptor's ``key``,
    ``size`` and ``hash``, fed in pieces of any size.

    :meth:`feed` returns the plaintext of the chunks it completed; each
    chunk is authenticated under ``K`` before it is returned, but the blob
    as a whole is the sender's only once :meth:`finish` has returned: keep
    the output aside (a temporary file) and discard it if ``finish`` or a
    later ``feed`` raises. Both raise :class:`AttachmentError` and the
    decryptor is then unusable.
    """

    __slots__ = (
        "_buf",
        "_chunk",
        "_failed",
        "_hash",
        "_key",
        "_n",
        "_received",
        "_sha",
        "_state",
        "expected",
        "size",
    )

    def __init__(self, key: bytes, size: int, hash: bytes) -> None:
        if type(key) is not bytes or len(key) != KEY_BYTES:
            raise ValueError("the file key is 32 bytes")
        if type(hash) is not bytes or len(hash) != HASH_BYTES:
            raise ValueError("the hash is 32 bytes")
        if type(size) is not int or not 0 <= size <= MAX_SIZE:
            raise ValueError("size out of range")
        self.size = size
        #: The blob's length: ``cipher_size(size)``.
        self.expected = cipher_size(size)
        self._key = key
        self._hash = hash
        self._n = chunk_count(size)
        self._chunk = 0  # chunks decrypted so far
        self._received = 0
        self._buf = bytearray()
        self._state: Any = None  # set once the header is in
        self._failed = False
        self._sha = hashlib.sha256()

    def _chunk_len(self, i: int) -> int:
        if i < self._n - 1:
            return CHUNK + ABYTES
        return self.size - (self._n - 1) * CHUNK + ABYTES

    def _fail(self, why: str) -> AttachmentError:
        self._failed = True
        self._buf.clear()
        return AttachmentError(why)

    def feed(self, data: bytes) -> bytes:
        """The next bytes of the blob; returns the plaintext now available
        (possibly empty). Raises AttachmentError past the expected length or
        on a chunk that does not decrypt or carries the wrong tag."""
        if self._failed:
            raise AttachmentError("this blob was already refused")
        self._received += len(data)
        if self._received > self.expected:
            raise self._fail("more bytes than the descriptor's size allows")
        self._sha.update(data)
        self._buf += data
        out = bytearray()
        if self._state is None:
            if len(self._buf) < HEADER_BYTES:
                return b""
            self._state = nacl.bindings.crypto_secretstream_xchacha20poly1305_state()
            try:
                nacl.bindings.crypto_secretstream_xchacha20poly1305_init_pull(
                    self._state, bytes(self._buf[:HEADER_BYTES]), self._key
                )
            except (nacl.exceptions.CryptoError, ValueError):
                raise self._fail("bad header") from None
            del self._buf[:HEADER_BYTES]
        while self._chunk < self._n:
            need = self._chunk_len(self._chunk)
            if len(self._buf) < need:
                break
            piece = bytes(self._buf[:need])
            del self._buf[:need]
            try:
                plain, tag = _pull(self._state, piece, None)
            except (nacl.exceptions.CryptoError, ValueError):
                raise self._fail(f"chunk {self._chunk + 1} does not decrypt") from None
            self._chunk += 1
            last = self._chunk == self._n
            if tag != (_TAG_FINAL if last else _TAG_MESSAGE):
                raise self._fail(f"chunk {self._chunk} carries tag {tag}")
            out += plain
        return bytes(out)

    def finish(self) -> None:
        """Check the whole blob: its length and its SHA-256 (every chunk,
        the last with tag FINAL, was checked by :meth:`feed`). Raises
        AttachmentError."""
        if self._failed:
            raise AttachmentError("this blob was already refused")
        if self._received != self.expected or self._chunk != self._n:
            raise self._fail(f"{self._received} bytes, {self.expected} expected")
        if not hmac.compare_digest(self._sha.digest(), self._hash):
            raise self._fail("the blob's hash is not the descriptor's")


def encrypt_bytes(data: bytes, key: bytes | None = None) -> tuple[bytes, bytes, bytes]:
    """Encrypt a whole file held in memory: ``(key, blob, hash)``, with a
    fresh random key unless one is given."""
    if key is None:
        key = os.urandom(KEY_BYTES)
    enc = Encryptor(key)
    parts = [enc.header]
    n = chunk_count(len(data))
    for i in range(n):
        parts.append(enc.push(data[i * CHUNK : (i + 1) * CHUNK], final=i == n - 1))
    blob = b"".join(parts)
    return key, blob, hashlib.sha256(blob).digest()


def decrypt_bytes(blob: bytes, key: bytes, size: int, hash: bytes) -> bytes:
    """The plaintext of a whole blob held in memory, checked against its
    descriptor (:class:`Decryptor`). Raises AttachmentError."""
    dec = Decryptor(key, size, hash)
    if len(blob) != dec.expected:  # before any decryption work
        raise AttachmentError(f"{len(blob)} bytes, {dec.expected} expected")
    plain = dec.feed(blob)
    dec.finish()
    return plain


_HEIF_BRANDS = {b"heic": "image/heic", b"heix": "image/heic", b"mif1": "image/heif", b"msf1": "image/heif"}
_HEIF_BRANDS[b"heif"] = "image/heif"


def sniff_type(first_bytes: bytes, name: str) -> str | None:
    """The type of a file from its first bytes (16 are enough): one of
    :data:`ALLOWED_TYPES`, or None. JPEG ``FF D8 FF``, PNG ``89 50 4E 47``,
    PDF ``%PDF-``, HEIC/HEIF ``ftyp`` at offset 4 and the brand ``heic``,
    ``heix`` (image/heic), ``mif1``, ``msf1`` or ``heif`` (image/heif; a
    name ending ``.heic`` makes these image/heic). The name never makes a
    file of another type acceptable."""
    head = bytes(first_bytes[:16])
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG"):
        return "image/png"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        kind = _HEIF_BRANDS.get(head[8:12])
        if kind == "image/heif" and name.lower().endswith(".heic"):
            return "image/heic"
        return kind
    return None


# --- the descriptor (SPEC §16.2) ---------------------------------------------------


def _check_name(v: object) -> str:
    if type(v) is not str or "\x00" in v or "/" in v or "\\" in v or v in (".", ".."):
        raise AttachmentError("bad attachment name")
    try:
        raw = v.encode()
    except UnicodeEncodeError:  # a lone surrogate
        raise AttachmentError("bad attachment name") from None
    if not 0 < len(raw) <= MAX_NAME_BYTES:
        raise AttachmentError("bad attachment name length")
    return v


def _check_type(v: object) -> str:
    if type(v) is not str or not 0 < len(v) <= MAX_TYPE_BYTES or not all("!" <= c <= "~" for c in v):
        raise AttachmentError("bad attachment type")
    return v


def _check_dimension(v: object) -> int | None:
    if v is not None and (type(v) is not int or not 1 <= v <= MAX_DIMENSION):
        raise AttachmentError("bad image dimension")
    return v


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attached file, as the message's plaintext carries it (SPEC §16.2).

    A msgpack map, keys in this order: ``blob`` (the hub's blob id),
    ``key`` (32 bytes), ``hash`` (SHA-256 of the blob, 32 bytes), ``size``
    (plaintext bytes), ``type`` (MIME, 1-100 printable ASCII characters
    without space), ``name`` (1-255 UTF-8 bytes, no NUL, ``/`` or ``\\``,
    not ``.`` or ``..``), then optionally ``thumb`` (a JPEG of 1 to
    THUMB_MAX bytes), ``w`` and ``h`` (the image's pixels, 1-100000, both
    or neither). Building one checks all of it: AttachmentError."""

    blob: str
    key: bytes
    hash: bytes
    size: int
    type: str
    name: str
    thumb: bytes | None = None
    w: int | None = None
    h: int | None = None

    def __post_init__(self) -> None:
        if not is_blob_id(self.blob):
            raise AttachmentError("bad blob id")
        if type(self.key) is not bytes or len(self.key) != KEY_BYTES:
            raise AttachmentError("bad attachment key")
        if type(self.hash) is not bytes or len(self.hash) != HASH_BYTES:
            raise AttachmentError("bad attachment hash")
        if type(self.size) is not int or not 0 <= self.size <= MAX_SIZE:
            raise AttachmentError("bad attachment size")
        _check_type(self.type)
        _check_name(self.name)
        if self.thumb is not None and (type(self.thumb) is not bytes or not 0 < len(self.thumb) <= THUMB_MAX):
            raise AttachmentError("bad thumbnail")
        _check_dimension(self.w)
        _check_dimension(self.h)
        if (self.w is None) != (self.h is None):
            raise AttachmentError("w and h go together")

    @property
    def cipher_size(self) -> int:
        """The length of the blob (what the hub stores and serves)."""
        return cipher_size(self.size)

    @property
    def is_image(self) -> bool:
        return self.type in IMAGE_TYPES

    def to_map(self) -> dict[str, Any]:
        """The canonical map (keys in the order above, optional ones
        omitted when absent)."""
        m: dict[str, Any] = {
            "blob": self.blob,
            "key": self.key,
            "hash": self.hash,
            "size": self.size,
            "type": self.type,
            "name": self.name,
        }
        if self.thumb is not None:
            m["thumb"] = self.thumb
        if self.w is not None:
            m["w"] = self.w
            m["h"] = self.h
        return m

    @classmethod
    def from_map(cls, m: object) -> Attachment:
        """A descriptor from a decoded map; unknown keys are ignored (a
        later revision may add some). Raises AttachmentError."""
        if type(m) is not dict:
            raise AttachmentError("a descriptor is a map")
        try:
            return cls(
                blob=m["blob"],
                key=m["key"],
                hash=m["hash"],
                size=m["size"],
                type=m["type"],
                name=m["name"],
                thumb=m.get("thumb"),
                w=m.get("w"),
                h=m.get("h"),
            )
        except KeyError as exc:
            raise AttachmentError(f"descriptor lacks {exc}") from None
