"""Attachments on the device (SPEC §16): checking files, encrypting them to
the spool, thumbnails, and writing received files safely.

Theory of operation
-------------------
Sending a file is three steps, the first two here, without the network:

1. :func:`check_files` refuses, **before anything is encrypted or
   uploaded**, more files than the hub's ``att_max``
   (:class:`~miss_client.errors.TooManyAttachments`), a file over its
   ``blob_max`` (:class:`~miss_client.errors.AttachmentTooLarge`) and a
   file whose first bytes are not one of
   :data:`protocol.attachments.ALLOWED_TYPES`
   (:class:`~miss_client.errors.AttachmentTypeNotAllowed`): the type is
   what the bytes say (:func:`protocol.attachments.sniff_type`), never the
   file name.
2. :func:`encrypt_to_spool` encrypts one file with a fresh 32-byte key
   (``secretstream``, :class:`protocol.attachments.Encryptor`, chunks of
   :data:`~protocol.attachments.CHUNK`) into a file of the profile's
   ``spool`` directory (mode 0600), hashing the ciphertext as it is
   written: memory stays one chunk whatever the file's size, and the
   upload reads the spool, so it can resume after a reconnection (or a
   restart) with the very same bytes. JPEG and PNG images get a thumbnail
   (:func:`thumbnail`: JPEG, longest side ≤ :data:`THUMB_SIDE` px, at most
   :data:`~protocol.attachments.THUMB_MAX` bytes) and their size in pixels.
3. :mod:`miss_client.uploads` uploads the spool file.

Receiving: :func:`target_path` picks where :meth:`Client.save
<miss_client.client.Client.save>` writes a file: always inside the
directory given, named after the descriptor's ``name`` reduced to a plain
file name, with `` (2)``, `` (3)``… when the name exists. The bytes are
written to a hidden temporary file first and renamed only once they have
verified (:class:`protocol.attachments.Decryptor`), so an altered
attachment is never saved.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from protocol.attachments import (
    ALLOWED_TYPES,
    CHUNK,
    THUMB_MAX,
    Attachment,
    Encryptor,
    cipher_size,
    sniff_type,
)

from .errors import AttachmentTooLarge, AttachmentTypeNotAllowed, TooManyAttachments

__all__ = [
    "SPOOL_DIR",
    "THUMB_SIDE",
    "FileToSend",
    "SpooledFile",
    "check_files",
    "check_local_file",
    "describe_size",
    "describe_type",
    "encrypt_to_spool",
    "file_name",
    "target_path",
    "thumbnail",
]

#: The profile's subdirectory holding encrypted files waiting for upload.
SPOOL_DIR = "spool"
#: Longest side of a thumbnail, in pixels.
THUMB_SIDE = 160
#: Bytes read to sniff a file's type.
SNIFF_BYTES = 64
#: Largest name of a descriptor, in UTF-8 bytes.
NAME_MAX = 255
#: Image types Pillow turns into a thumbnail here.
_THUMBNAILED = ("image/jpeg", "image/png")


@dataclass(frozen=True, slots=True)
class FileToSend:
    """A file that passed :func:`check_files`: its path, the ``name`` the
    recipient sees, its plaintext ``size`` and sniffed MIME ``type``."""

    path: Path
    name: str
    size: int
    type: str


@dataclass(frozen=True, slots=True)
class SpooledFile:
    """A file encrypted into the spool: everything its descriptor needs
    but the hub's blob id (:meth:`descriptor`)."""

    spool: Path
    key: bytes
    hash: bytes
    size: int
    type: str
    name: str
    thumb: bytes | None = None
    w: int | None = None
    h: int | None = None

    @property
    def cipher_size(self) -> int:
        return cipher_size(self.size)

    def descriptor(self, blob: str) -> Attachment:
        """The descriptor of this file once uploaded as ``blob``."""
        return Attachment(
            blob=blob,
            key=self.key,
            hash=self.hash,
            size=self.size,
            type=self.type,
            name=self.name,
            thumb=self.thumb,
            w=self.w,
            h=self.h,
        )


def file_name(name: str) -> str:
    """``name`` reduced to what a descriptor may carry (SPEC §16): the last
    path component, without NUL, ``/`` or ``\\``, 1 to 255 UTF-8 bytes
    (shortened before its extension), never ``.`` or ``..``."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join("_" if ch == "\x00" or ord(ch) < 32 else ch for ch in base).strip()
    if base in ("", ".", ".."):
        base = "fichier"
    if len(base.encode()) > NAME_MAX:
        stem, dot, ext = base.rpartition(".")
        if not dot or len(ext.encode()) > 16:
            stem, ext = base, ""
        room = NAME_MAX - (len(ext.encode()) + 1 if ext else 0)
        stem = stem.encode()[:room].decode("utf-8", "ignore")
        base = f"{stem}.{ext}" if ext else stem
    return base


def check_files(paths: Sequence[str | os.PathLike[str]], att_max: int, blob_max: int) -> list[FileToSend]:
    """The files to attach, checked in this order before anything is
    encrypted or sent: their count (TooManyAttachments past ``att_max``),
    then each one's size (AttachmentTooLarge past ``blob_max`` bytes) and
    type (AttachmentTypeNotAllowed unless its first bytes are one of
    ALLOWED_TYPES). Raises OSError (FileNotFoundError...) for a file that
    cannot be read, IsADirectoryError for a directory."""
    if len(paths) > att_max:
        raise TooManyAttachments(len(paths), att_max)
    out = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            raise IsADirectoryError(f"{path} est un dossier, pas un fichier")
        size = path.stat().st_size
        name = file_name(path.name)
        if size > blob_max:
            raise AttachmentTooLarge(name, size, blob_max)
        with path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
        mime = sniff_type(head, name)
        if mime is None or mime not in ALLOWED_TYPES:
            raise AttachmentTypeNotAllowed(name)
        out.append(FileToSend(path, name, size, mime))
    return out


def check_local_file(path: Path) -> str | None:
    """What makes ``path`` impossible to attach whatever the hub's limits
    (missing, a directory, unreadable, not an accepted type), in French;
    None if nothing does."""
    try:
        with path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except FileNotFoundError:
        return f"{path} : fichier introuvable"
    except IsADirectoryError:
        return f"{path} est un dossier, pas un fichier"
    except OSError as exc:
        return f"{path} : lecture impossible ({exc.strerror or exc})"
    if sniff_type(head, path.name) not in ALLOWED_TYPES:
        return str(AttachmentTypeNotAllowed(file_name(path.name)))
    return None


def thumbnail(path: Path) -> tuple[bytes | None, int | None, int | None]:
    """``(thumb, w, h)`` of a JPEG or PNG image: a JPEG whose longest side
    is at most THUMB_SIDE px and whose size is at most THUMB_MAX bytes, and
    the image's width and height as it is shown (after its EXIF
    orientation); ``(None, None, None)`` if Pillow cannot read it (the file
    is sent without)."""
    from PIL import Image, ImageOps  # imported when an image is sent, not with the SDK

    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated a quarter turn
                w, h = h, w
            img.draft("RGB", (2 * THUMB_SIDE, 2 * THUMB_SIDE))  # a JPEG decodes at 1/2..1/8 scale
            shown = ImageOps.exif_transpose(img)
            if shown.mode in ("RGBA", "LA", "P"):
                shown = shown.convert("RGBA")
                flat = Image.new("RGB", shown.size, "white")
                flat.paste(shown, mask=shown.getchannel("A"))
                shown = flat
            shown = shown.convert("RGB")
        for side in (THUMB_SIDE, 120, 96, 64, 32):
            small = shown.copy()
            small.thumbnail((side, side))
            for quality in (70, 50, 30):
                buf = io.BytesIO()
                small.save(buf, "JPEG", quality=quality, optimize=True)
                if buf.tell() <= THUMB_MAX:
                    if not (1 <= w <= 100_000 and 1 <= h <= 100_000):
                        return buf.getvalue(), None, None
                    return buf.getvalue(), w, h
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        pass
    return None, None, None


def encrypt_to_spool(item: FileToSend, spool_dir: Path) -> SpooledFile:
    """Encrypt ``item`` with a fresh key into a new file of ``spool_dir``
    (created mode 0700; the file 0600), hashing the ciphertext as it is
    written; with a thumbnail for JPEG and PNG images. Blocking: run it in
    a thread. Raises OSError; AttachmentTooLarge if the file grew past the
    size it was checked at (it is read exactly once)."""
    spool_dir.mkdir(mode=0o700, exist_ok=True)
    key = secrets.token_bytes(32)
    enc = Encryptor(key)
    digest = hashlib.sha256(enc.header)
    target = spool_dir / f"{secrets.token_hex(16)}.blob"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    done = 0
    try:
        with os.fdopen(fd, "wb") as out, item.path.open("rb") as src:
            out.write(enc.header)
            chunk = src.read(CHUNK)
            while True:
                following = src.read(CHUNK) if len(chunk) == CHUNK else b""
                done += len(chunk)
                if done > item.size:
                    raise AttachmentTooLarge(item.name, done, item.size)
                sealed = enc.push(chunk, final=not following)
                digest.update(sealed)
                out.write(sealed)
                if not following:
                    break
                chunk = following
            if done != item.size:
                raise OSError(f"{item.name} a changé pendant son chiffrement")
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    thumb, w, h = thumbnail(item.path) if item.type in _THUMBNAILED else (None, None, None)
    return SpooledFile(target, key, digest.digest(), item.size, item.type, item.name, thumb, w, h)


def target_path(directory: Path, name: str) -> Path:
    """Where to save an attachment called ``name`` in ``directory``: a
    plain file name (:func:`file_name`: no path, so never outside the
    directory), with `` (2)``, `` (3)``… before the extension when that
    name is taken."""
    base = file_name(name)
    if base.startswith("."):
        base = "_" + base[1:]  # never a hidden file, never a name the OS treats specially
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:
        stem, dot, ext = base, "", ""
    candidate = directory / base
    n = 2
    while candidate.exists() or candidate.is_symlink():
        candidate = directory / f"{stem} ({n}){dot}{ext}"
        n += 1
    return candidate


_TYPE_LABELS = {
    "image/jpeg": "image JPEG",
    "image/png": "image PNG",
    "image/heic": "image HEIC",
    "image/heif": "image HEIF",
    "application/pdf": "document PDF",
}


def describe_type(mime: str) -> str:
    """``image JPEG``, ``document PDF``: a type as the user reads it
    (other types as they come; the caller cleans them for a terminal)."""
    return _TYPE_LABELS.get(mime, mime)


def describe_size(size: int) -> str:
    """``1,2 Mo``, ``350 Ko``, ``12 octets``: a size in French units of
    1024 (the limit of 20 MiB reads ``20 Mo``)."""
    if size < 1024:
        return f"{size} octet{'s' if size > 1 else ''}"
    if size < 1024 * 1024:
        value, unit = size / 1024, "Ko"
    else:
        value, unit = size / (1024 * 1024), "Mo"
    text = f"{value:.0f}" if value >= 100 else f"{value:.1f}".removesuffix(".0")
    return f"{text.replace('.', ',')} {unit}"
