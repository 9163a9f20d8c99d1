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
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing

__all__ = [
    "AUTH_CONTEXT",
    "ENROLL_CONTEXT",
    "NONCE_BYTES",
    "DeviceKeys",
    "EnvelopeError",
    "Plaintext",
    "auth_message",
    "device_identity",
    "enroll_message",
    "message_id_time_ms",
    "new_message_id",
    "open_envelope",
    "pack_plaintext",
    "safety_number",
    "seal",
    "unpack_plaintext",
    "verify_signature",
]

AUTH_CONTEXT = b"miss.v1/auth\x00"
ENROLL_CONTEXT = b"miss.v1/enroll\x00"
SAFETY_CONTEXT = b"miss.v1/safety\x00"
NONCE_BYTES = nacl.bindings.crypto_box_NONCEBYTES  # 24
#: Poly1305 tag length; PyNaCl exposes no crypto_box_MACBYTES.
MAC_BYTES = nacl.bindings.crypto_box_ZEROBYTES - nacl.bindings.crypto_box_BOXZEROBYTES  # 16


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
    """The inner message, visible only to devices (SPEC §6.3)."""

    id: bytes
    from_user: str
    to_user: str
    sent_at: int  # ms since the Unix epoch, sender's clock
    kind: str = "text"
    body: str = ""
    reply_to: bytes | None = None


def pack_plaintext(p: Plaintext) -> bytes:
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
    packed: bytes = msgpack.packb(m, use_bin_type=True)
    return packed


def unpack_plaintext(data: bytes) -> Plaintext:
    """Parse an opened envelope; raises EnvelopeError if it is not a v1 plaintext."""
    try:
        m = msgpack.unpackb(data, raw=False, strict_map_key=True)
        if m["v"] != 1:
            raise EnvelopeError("unknown plaintext version")
        p = Plaintext(
            id=m["id"],
            from_user=m["from"],
            to_user=m["to"],
            sent_at=m["sent_at"],
            kind=m["kind"],
            body=m["body"],
            reply_to=m.get("reply_to"),
        )
    except EnvelopeError:
        raise
    except Exception as exc:
        raise EnvelopeError(f"bad plaintext: {type(exc).__name__}") from None
    if not (
        type(m["v"]) is int
        and type(p.id) is bytes
        and len(p.id) == 16
        and type(p.from_user) is str
        and type(p.to_user) is str
        and type(p.sent_at) is int
        and type(p.kind) is str
        and type(p.body) is str
        and (p.reply_to is None or (type(p.reply_to) is bytes and len(p.reply_to) == 16))
    ):
        raise EnvelopeError("bad plaintext fields")
    return p


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
