"""Crypto v1: device keys, authentication signatures, envelopes, safety numbers.

Everything here is deterministic given its inputs (keys, nonces, times), so
that ``vectors/crypto.json`` pins every byte; callers that want fresh
randomness leave the optional ``nonce``/``rand`` arguments out.

* Each device has an Ed25519 signing key and an X25519 box key (SPEC §5).
* The hub authenticates a device by a signature over its own fresh 32-byte
  challenge, bound to a context string, so that a signature made for one
  connection is worthless on another (SPEC §5.2).
* A message is sealed for each target device with NaCl ``crypto_box``
  (X25519 + XSalsa20-Poly1305) under a random 24-byte nonce; the envelope is
  ``nonce || ciphertext`` (SPEC §6.1).
* The inner plaintext is a msgpack map that repeats the message id and the
  users at both ends, so the hub cannot replay a sealed body under another id
  or into another conversation without the recipient noticing (SPEC §6.3).
* A team message (SPEC §13.3) is sealed **once**: the plaintext, signed by
  the sending device, is encrypted with XChaCha20-Poly1305 under a fresh
  32-byte key K bound to the message id; K travels in a 72-byte envelope
  (a "wrap") per target device. The signature is what stops a member who
  knows K from forging another body under the sender's name.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, replace
from typing import Any

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing

from .attachments import MAX_ATTACHMENTS_WIRE, Attachment, AttachmentError
from .frame_base import RepeatedKey, unique_map
from .notices import Notice, NoticeError

__all__ = [
    "AUTH_CONTEXT",
    "BODY_CONTEXT",
    "BODY_KEY_BYTES",
    "BODY_NONCE_BYTES",
    "BODY_OVERHEAD",
    "ENROLL_CONTEXT",
    "KINDS",
    "MAX_REFS",
    "NONCE_BYTES",
    "WRAP_BYTES",
    "DeviceKeys",
    "EnvelopeError",
    "Plaintext",
    "auth_message",
    "device_identity",
    "enroll_message",
    "message_id_time_ms",
    "new_message_id",
    "open_body",
    "open_envelope",
    "pack_plaintext",
    "safety_number",
    "seal",
    "seal_body",
    "unpack_plaintext",
    "unwrap_key",
    "verify_signature",
    "wrap_key",
]

AUTH_CONTEXT = b"miss.v1/auth\x00"
ENROLL_CONTEXT = b"miss.v1/enroll\x00"
SAFETY_CONTEXT = b"miss.v1/safety\x00"
#: Signed with the message id and plaintext of a sealed body, and its AEAD
#: associated data with the id (SPEC §13.3).
BODY_CONTEXT = b"miss.v1/body\x00"
NONCE_BYTES = nacl.bindings.crypto_box_NONCEBYTES  # 24
#: Poly1305 tag length; PyNaCl exposes no crypto_box_MACBYTES.
MAC_BYTES = nacl.bindings.crypto_box_ZEROBYTES - nacl.bindings.crypto_box_BOXZEROBYTES  # 16
#: A sealed body's key K and nonce (XChaCha20-Poly1305, SPEC §13.3).
BODY_KEY_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_KEYBYTES  # 32
BODY_NONCE_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
#: len(body) - len(plaintext): nonce, Ed25519 signature, Poly1305 tag.
BODY_OVERHEAD = BODY_NONCE_BYTES + 64 + MAC_BYTES  # 104
#: A wrap: the envelope (SPEC §6.1) of a 32-byte key.
WRAP_BYTES = NONCE_BYTES + MAC_BYTES + BODY_KEY_BYTES  # 72
#: Kinds of plaintext this version knows (SPEC §13.5); a client acks and
#: ignores any other.
KINDS = ("text", "read", "recall")
#: Most message ids one notice's ``refs`` holds.
MAX_REFS = 256
_ID_BYTES = 16
_HEAD_BYTES = 32


class EnvelopeError(Exception):
    """An envelope that does not open: wrong key, tampered, or truncated."""


@dataclass(frozen=True)
class DeviceKeys:
    """A device's two private keys (32-byte seeds). Never leaves the device."""

    sign_seed: bytes
    box_secret: bytes

    @classmethod
    def generate(cls) -> DeviceKeys:
        return cls(os.urandom(32), os.urandom(32))

    @property
    def signing_key(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.sign_seed)

    @property
    def box_key(self) -> nacl.public.PrivateKey:
        return nacl.public.PrivateKey(self.box_secret)

    @property
    def sign_pk(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def box_pk(self) -> bytes:
        return bytes(self.box_key.public_key)

    def sign(self, message: bytes) -> bytes:
        """Detached Ed25519 signature (64 bytes)."""
        return self.signing_key.sign(message).signature


def auth_message(nonce: bytes, device_id: str) -> bytes:
    """What a device signs to authenticate on a connection (SPEC §5.2)."""
    return AUTH_CONTEXT + nonce + device_id.encode()


def enroll_message(nonce: bytes, code: str, sign_pk: bytes, box_pk: bytes) -> bytes:
    """What a new device signs to enroll: proves it holds the signing key and
    binds its box key to it (SPEC §5.1)."""
    return ENROLL_CONTEXT + nonce + sign_pk + box_pk + code.encode()


def verify_signature(sign_pk: bytes, message: bytes, sig: bytes) -> bool:
    """True if ``sig`` is a valid Ed25519 signature of ``message`` by ``sign_pk``."""
    try:
        nacl.signing.VerifyKey(sign_pk).verify(message, sig)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


def seal(plaintext: bytes, sender: DeviceKeys, recipient_box_pk: bytes, nonce: bytes | None = None) -> bytes:
    """Encrypt for one device: ``nonce(24) || crypto_box(plaintext)``."""
    if nonce is None:
        nonce = os.urandom(NONCE_BYTES)
    box = nacl.public.Box(sender.box_key, nacl.public.PublicKey(recipient_box_pk))
    return bytes(box.encrypt(plaintext, nonce))


def open_envelope(envelope: bytes, recipient: DeviceKeys, sender_box_pk: bytes) -> bytes:
    """Decrypt an envelope sealed for ``recipient`` by the device with ``sender_box_pk``."""
    if len(envelope) < NONCE_BYTES + MAC_BYTES:
        raise EnvelopeError("envelope too short")
    try:
        # Inside the try: a malformed or low-order sender key also fails here.
        box = nacl.public.Box(recipient.box_key, nacl.public.PublicKey(sender_box_pk))
        return box.decrypt(envelope)
    except nacl.exceptions.CryptoError:
        raise EnvelopeError("envelope does not open") from None


@dataclass(frozen=True)
class Plaintext:
    """The inner message, visible only to devices (SPEC §6.3, §13.5).

    The optional keys of revision 3 come after ``reply_to``, in this order:
    ``head`` (32 bytes: the sender's head of a team's chain), ``expires_at``
    (ms, sender's clock), ``refs`` (1-256 message ids of 16 bytes, for
    ``read`` and ``recall`` notices) and ``team`` (the team a notice sent
    1:1 is about). ``to_user`` is the team id for a team message.
    ``atts`` (revision 6, SPEC §16.2): 1 to 16 attachment descriptors,
    packed after every other key but ``pad``; empty: no key.
    ``notice`` (revision 7, SPEC §17.3): a notice, packed after ``atts``
    and before ``pad``; only in a ``text``."""

    id: bytes
    from_user: str
    to_user: str
    sent_at: int  # ms since the Unix epoch, sender's clock
    kind: str = "text"
    body: str = ""
    reply_to: bytes | None = None
    head: bytes | None = None
    expires_at: int | None = None
    refs: tuple[bytes, ...] | None = None
    team: str | None = None
    urgent: bool = False
    atts: tuple[Attachment, ...] = ()
    notice: Notice | None = None


#: ``pack_plaintext`` measures the map with an empty ``pad`` already in it,
#: so the map's header (fixmap, or map 16 when every key is present) is
#: counted, and each pad byte then adds exactly one byte.
_PAD_KEY = msgpack.packb("pad", use_bin_type=True)


def _plaintext_map(p: Plaintext) -> dict[str, Any]:
    m: dict[str, Any] = {
        "v": 1,
        "id": p.id,
        "from": p.from_user,
        "to": p.to_user,
        "sent_at": p.sent_at,
        "kind": p.kind,
        "body": p.body,
    }
    if p.reply_to is not None:
        m["reply_to"] = p.reply_to
    if p.head is not None:
        m["head"] = p.head
    if p.expires_at is not None:
        m["expires_at"] = p.expires_at
    if p.refs is not None:
        m["refs"] = list(p.refs)
    if p.team is not None:
        m["team"] = p.team
    if p.urgent:
        m["urgent"] = True
    if p.atts:
        if len(p.atts) > MAX_ATTACHMENTS_WIRE:
            raise ValueError("more than 16 attachments")
        m["atts"] = [a.to_map() for a in p.atts]
    if p.notice is not None:
        m["notice"] = p.notice.to_wire()
    return m


def pack_plaintext(p: Plaintext, pad_to: int = 0, urgent: bool = False) -> bytes:
    """The canonical msgpack bytes of ``p`` (SPEC §6.3, §13.5).

    ``pad_to`` > 0 appends a last key ``pad`` of *n* zero bytes, *n* the
    smallest count that makes the packed length a multiple of ``pad_to``
    (reference clients pass 256, so a read notice and a short message have
    the same size). ``pad_to`` = 0 adds no key: the bytes of revision 2.
    ``urgent`` True packs ``p`` as if ``p.urgent`` were (SPEC §14.5)."""
    if pad_to < 0:
        raise ValueError("pad_to must be >= 0")
    m = _plaintext_map(replace(p, urgent=True) if urgent and not p.urgent else p)
    if not pad_to:
        packed: bytes = msgpack.packb(m, use_bin_type=True)
        return packed
    m["pad"] = b""
    # With an empty pad: header(map) + ... + "pad" + c4 00. Each pad byte adds
    # one byte while n < 256 (bin 8); from 256 on, bin 16 adds one header byte.
    base = len(msgpack.packb(m, use_bin_type=True))
    n = -base % pad_to
    if n > 255:  # only when pad_to > 256: a bin 16 header, one byte longer
        n = -(base + 1) % pad_to
        while n < 256:
            n += pad_to
    m["pad"] = bytes(n)
    packed = msgpack.packb(m, use_bin_type=True)
    assert len(packed) % pad_to == 0, (len(packed), pad_to)
    return packed


def unpack_plaintext(data: bytes) -> Plaintext:
    """Parse an opened envelope or body; raises EnvelopeError if it is not a
    v1 plaintext. Unknown keys are ignored, and so is ``pad``'s content;
    the keys of revision 3 are type-checked when present, and every
    descriptor of ``atts`` is checked (SPEC §16.2; only in a ``text``), and
    so is ``notice`` (SPEC §17.3; only in a ``text``)."""
    try:
        m = msgpack.unpackb(data, raw=False, strict_map_key=True, object_pairs_hook=unique_map)
        if m["v"] != 1:
            raise EnvelopeError("unknown plaintext version")
        refs = m.get("refs")
        atts = m.get("atts")
        if atts is not None and (type(atts) is not list or not 0 < len(atts) <= MAX_ATTACHMENTS_WIRE):
            raise EnvelopeError("bad plaintext: atts")
        p = Plaintext(
            id=m["id"],
            from_user=m["from"],
            to_user=m["to"],
            sent_at=m["sent_at"],
            kind=m["kind"],
            body=m["body"],
            reply_to=m.get("reply_to"),
            head=m.get("head"),
            expires_at=m.get("expires_at"),
            refs=tuple(refs) if type(refs) is list else refs,
            team=m.get("team"),
            urgent=m.get("urgent", False),
            atts=tuple(Attachment.from_map(a) for a in atts) if atts is not None else (),
            notice=Notice.from_wire(m["notice"]) if "notice" in m else None,
        )
    except EnvelopeError:
        raise
    except (AttachmentError, NoticeError) as exc:
        raise EnvelopeError(f"bad plaintext: {exc}") from None
    except RepeatedKey:
        raise EnvelopeError("bad plaintext: a key twice in one map") from None
    except Exception as exc:
        raise EnvelopeError(f"bad plaintext: {type(exc).__name__}") from None
    if not (
        type(m["v"]) is int
        and type(p.id) is bytes
        and len(p.id) == _ID_BYTES
        and type(p.from_user) is str
        and type(p.to_user) is str
        and type(p.sent_at) is int
        and type(p.kind) is str
        and type(p.body) is str
        and (p.reply_to is None or (type(p.reply_to) is bytes and len(p.reply_to) == _ID_BYTES))
        and (p.head is None or (type(p.head) is bytes and len(p.head) == _HEAD_BYTES))
        and (p.expires_at is None or (type(p.expires_at) is int and p.expires_at >= 0))
        and (
            p.refs is None
            or (
                type(p.refs) is tuple
                and 0 < len(p.refs) <= MAX_REFS
                and all(type(r) is bytes and len(r) == _ID_BYTES for r in p.refs)
            )
        )
        and (p.team is None or type(p.team) is str)
        and type(p.urgent) is bool
        and ("pad" not in m or type(m["pad"]) is bytes)
        and (not p.atts or p.kind == "text")
        and (p.notice is None or p.kind == "text")
    ):
        raise EnvelopeError("bad plaintext fields")
    return p


# --- sealed bodies (SPEC §13.3) ---------------------------------------------------


def seal_body(
    plaintext: bytes,
    message_id: bytes,
    sender: DeviceKeys,
    *,
    key: bytes | None = None,
    nonce: bytes | None = None,
) -> tuple[bytes, bytes]:
    """Seal a team message once: returns ``(K, body)``.

    ``body = nonce(24) || XChaCha20-Poly1305(sig || plaintext, ad =
    BODY_CONTEXT || id, nonce, K)`` where ``sig`` is the sending device's
    Ed25519 signature of ``BODY_CONTEXT || id || plaintext``. ``key`` and
    ``nonce`` are fresh random values unless given (vectors only); K must
    never be reused for another message."""
    if type(message_id) is not bytes or len(message_id) != _ID_BYTES:
        raise ValueError("message_id must be 16 bytes")
    if key is None:
        key = os.urandom(BODY_KEY_BYTES)
    if nonce is None:
        nonce = os.urandom(BODY_NONCE_BYTES)
    if len(key) != BODY_KEY_BYTES or len(nonce) != BODY_NONCE_BYTES:
        raise ValueError("a body key is 32 bytes and its nonce 24")
    sig = sender.sign(BODY_CONTEXT + message_id + plaintext)
    ciphertext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        sig + plaintext, BODY_CONTEXT + message_id, nonce, key
    )
    return key, nonce + ciphertext


def open_body(body: bytes, key: bytes, message_id: bytes, sender_sign_pk: bytes) -> bytes:
    """The plaintext of a sealed body, once decrypted with ``key`` under
    ``message_id`` and its signature checked with the sending device's
    ``sender_sign_pk``. Raises EnvelopeError on any failure: wrong key or
    id, tampered or truncated body, or a body not signed by that device
    (e.g. re-encrypted by another member who knows K)."""
    if (
        type(body) is not bytes
        or len(body) < BODY_OVERHEAD
        or type(key) is not bytes
        or len(key) != BODY_KEY_BYTES
        or type(message_id) is not bytes
        or len(message_id) != _ID_BYTES
    ):
        raise EnvelopeError("body does not open")
    try:
        opened = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            body[BODY_NONCE_BYTES:], BODY_CONTEXT + message_id, body[:BODY_NONCE_BYTES], key
        )
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise EnvelopeError("body does not open") from None
    sig, plaintext = opened[:64], opened[64:]
    if not verify_signature(sender_sign_pk, BODY_CONTEXT + message_id + plaintext, sig):
        raise EnvelopeError("body not signed by the sending device")
    return plaintext


def wrap_key(key: bytes, sender: DeviceKeys, recipient_box_pk: bytes, nonce: bytes | None = None) -> bytes:
    """The wrap of a body key for one device: an envelope (SPEC §6.1) whose
    plaintext is the 32-byte K, 72 bytes in all."""
    if len(key) != BODY_KEY_BYTES:
        raise ValueError("a body key is 32 bytes")
    return seal(key, sender, recipient_box_pk, nonce)


def unwrap_key(wrap: bytes, recipient: DeviceKeys, sender_box_pk: bytes) -> bytes:
    """K from a wrap sealed for ``recipient`` by the device with
    ``sender_box_pk``; EnvelopeError if it does not open or is not 32 bytes."""
    if type(wrap) is not bytes or len(wrap) != WRAP_BYTES:
        raise EnvelopeError("a wrap is 72 bytes")
    key = open_envelope(wrap, recipient, sender_box_pk)
    if len(key) != BODY_KEY_BYTES:  # pragma: no cover - implied by the length check
        raise EnvelopeError("a wrap holds a 32-byte key")
    return key


def new_message_id(now_ms: int | None = None, rand: bytes | None = None) -> bytes:
    """A 128-bit, time-ordered message id laid out as a UUIDv7 (RFC 9562):
    48 bits of Unix milliseconds, version 7, 74 random bits, variant 10."""
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    if rand is None:
        rand = os.urandom(10)
    b = bytearray(now_ms.to_bytes(6, "big") + rand)
    b[6] = 0x70 | (b[6] & 0x0F)
    b[8] = 0x80 | (b[8] & 0x3F)
    return bytes(b)


def message_id_time_ms(message_id: bytes) -> int:
    """The creation time (ms) carried by a message id."""
    return int.from_bytes(message_id[:6], "big")


def device_identity(sign_pk: bytes, box_pk: bytes) -> bytes:
    """What a safety number covers of one device: both its public keys
    (``sign_pk || box_pk``, 64 bytes). Covering the box key matters: it is
    the key messages are sealed to, so substituting it must show."""
    return sign_pk + box_pk


def _fingerprint(user_id: str, identities: list[bytes]) -> str:
    h = hashlib.sha512()
    h.update(SAFETY_CONTEXT)
    uid = user_id.encode()
    h.update(len(uid).to_bytes(2, "big") + uid)
    for identity in sorted(identities):
        h.update(identity)
    digest = h.digest()
    # Six chunks of 5 bytes, each reduced to 5 decimal digits: 30 digits.
    return "".join(f"{int.from_bytes(digest[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


def safety_number(user_a: str, keys_a: list[bytes], user_b: str, keys_b: list[bytes]) -> str:
    """The 60-digit safety number of a conversation (SPEC §8).

    ``keys_a``/``keys_b`` hold each device's :func:`device_identity` (both
    public keys). Both sides compute the same number: each user's 30-digit
    fingerprint covers their user id and every device's keys; the two are
    concatenated in user-id order and shown as 12 groups of 5 digits. Any
    added, removed or substituted device key changes it.
    """
    fa, fb = _fingerprint(user_a, keys_a), _fingerprint(user_b, keys_b)
    digits = fa + fb if user_a <= user_b else fb + fa
    return " ".join(digits[i : i + 5] for i in range(0, 60, 5))
