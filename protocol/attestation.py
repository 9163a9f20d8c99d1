"""Attestations of the verification authority (SPEC.md §11).

An attestation is the hospital administrators' signed statement that a user
id is a verified clinician (RPPS number, name, profession, organisation)
whose devices hold exactly these public keys, between two instants. It is
signed with the **authority key**, an Ed25519 key that the administrators
keep outside the hub (``miss-admin authority init``); the hub and every
client know only its public half. A hub that lies about a clinician or slips
in a device key of its own cannot produce a valid attestation for the lie.

Wire form (the ``att`` of ``lookup_ok``, an entry of ``search_ok``)::

    att  = sig (64 bytes) || body
    body = msgpack [ "miss-att", 1, user, rpps, name, profession,
                     organisation, [[device, sign_pk, box_pk], ...],
                     not_before_ms, not_after_ms ]
    sig  = Ed25519(authority, CONTEXT || body)

Devices are sorted by device id, so one statement has one encoding.

:func:`verify` is what a client runs before it encrypts anything to a peer;
it raises an :class:`AttestationError` subclass naming what is wrong and
never anything else.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import msgpack
import nacl.exceptions
import nacl.signing

from .rotation import AuthorityKeys, keys_at

__all__ = [
    "CONTEXT",
    "Attestation",
    "AttestationError",
    "AttestationExpired",
    "AttestationMalformed",
    "AttestationNotYetValid",
    "AttestationSignatureInvalid",
    "AttestedDevice",
    "authority_fingerprint",
    "check_signature",
    "counts_until",
    "decode_authority_key",
    "encode_authority_key",
    "peek",
    "sign",
    "verify",
    "verify_counted",
]

CONTEXT = b"miss.v1/attestation\x00"
_MAGIC = "miss-att"
_VERSION = 1
#: Largest attestation accepted (bytes): 64 devices and long names fit.
MAX_BYTES = 8192


class AttestationError(Exception):
    """The attestation cannot be trusted; ``str()`` says why, for a user."""


class AttestationMalformed(AttestationError):
    """Not an attestation of this version."""


class AttestationSignatureInvalid(AttestationError):
    """Not signed by the authority key this client trusts."""


class AttestationExpired(AttestationError):
    """Past its validity period: the clinician must be verified again."""


class AttestationNotYetValid(AttestationError):
    """Its validity period has not started."""


@dataclass(frozen=True, slots=True)
class AttestedDevice:
    device: str
    sign_pk: bytes
    box_pk: bytes


@dataclass(frozen=True, slots=True)
class Attestation:
    """What the authority vouches for (times in ms since the epoch)."""

    user: str
    rpps: str
    name: str
    profession: str
    organisation: str
    devices: tuple[AttestedDevice, ...]
    not_before: int
    not_after: int

    def device(self, device_id: str) -> AttestedDevice | None:
        for d in self.devices:
            if d.device == device_id:
                return d
        return None

    def body(self) -> bytes:
        devices = [[d.device, d.sign_pk, d.box_pk] for d in sorted(self.devices, key=lambda d: d.device)]
        packed: bytes = msgpack.packb(
            [
                _MAGIC,
                _VERSION,
                self.user,
                self.rpps,
                self.name,
                self.profession,
                self.organisation,
                devices,
                self.not_before,
                self.not_after,
            ],
            use_bin_type=True,
        )
        return packed


def sign(attestation: Attestation, authority: nacl.signing.SigningKey) -> bytes:
    """The wire form of ``attestation`` signed by ``authority``."""
    body = attestation.body()
    if len(body) + 64 > MAX_BYTES:
        raise ValueError("attestation too large (too many devices?)")
    sig: bytes = authority.sign(CONTEXT + body).signature
    return sig + body


def peek(blob: bytes) -> Attestation:
    """Decode without checking the signature or the dates (for the hub's
    routing and for display of *why* an entry was refused, never for trust).
    Raises AttestationMalformed."""
    if type(blob) is not bytes or not 64 < len(blob) <= MAX_BYTES:
        raise AttestationMalformed("not an attestation")
    try:
        m = msgpack.unpackb(blob[64:], raw=False, strict_map_key=True)
        magic, version, user, rpps, name, profession, org, devices, nbf, naf = m
        if magic != _MAGIC or version != _VERSION:
            raise ValueError("version")
        for v in (user, rpps, name, profession, org):
            if type(v) is not str:
                raise ValueError("field")
        if type(nbf) is not int or type(naf) is not int or type(devices) is not list:
            raise ValueError("field")
        parsed = []
        for d in devices:
            device, sign_pk, box_pk = d
            if type(device) is not str or type(sign_pk) is not bytes or type(box_pk) is not bytes:
                raise ValueError("device")
            if len(sign_pk) != 32 or len(box_pk) != 32:
                raise ValueError("key")
            parsed.append(AttestedDevice(device, sign_pk, box_pk))
    except (ValueError, TypeError, msgpack.UnpackException, msgpack.ExtraData):
        raise AttestationMalformed("not an attestation of this version") from None
    return Attestation(user, rpps, name, profession, org, tuple(parsed), nbf, naf)


def check_signature(
    blob: bytes, authority_pk: bytes | AuthorityKeys, at_ms: int | None = None
) -> Attestation:
    """The attestation in ``blob`` if it is signed by ``authority_pk``,
    whatever its dates; raises AttestationMalformed or
    AttestationSignatureInvalid. For statements that outlive an
    attestation (a team record, SPEC §13.2): the caller checks the validity
    interval against the instant that matters, never ``now``.

    ``authority_pk`` may be the AuthorityKeys of a rotation (SPEC §15): an
    older key counts when ``at_ms`` <= its ``until`` (``at_ms`` None: the
    current key only)."""
    attestation = peek(blob)
    if _signer(blob, authority_pk, at_ms) is None:
        raise AttestationSignatureInvalid("not signed by the verification authority")
    return attestation


def _signer(blob: bytes, authority_pk: bytes | AuthorityKeys, at_ms: int | None) -> bytes | None:
    """The key of ``authority_pk`` counting at ``at_ms`` (rotation.keys_at)
    whose signature ``blob`` bears, None if none. The caller has peeked
    ``blob`` (so it is longer than a signature)."""
    message = CONTEXT + blob[64:]
    for key in keys_at(authority_pk, at_ms):
        try:
            nacl.signing.VerifyKey(key).verify(message, blob[:64])
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError):
            continue
        return key
    return None


def _until(attestation: Attestation, authority_pk: bytes | AuthorityKeys, key: bytes | None) -> int:
    """:func:`counts_until` once the signing ``key`` is known."""
    end = attestation.not_after - 1
    if not isinstance(authority_pk, AuthorityKeys) or key is None or key == authority_pk.current:
        return end
    older = next((p.until for p in authority_pk.previous if p.key == key), None)
    return end if older is None else min(end, older)


def counts_until(blob: bytes, authority_pk: bytes | AuthorityKeys, now_ms: int) -> int:
    """The last instant (ms) at which an attestation that :func:`verify`
    accepted at ``now_ms`` still counts: its ``not_after`` - 1, or sooner,
    the ``until`` of the older key that signed it (SPEC §15), for whoever
    caches the verdict."""
    attestation = peek(blob)
    if not isinstance(authority_pk, AuthorityKeys):
        return attestation.not_after - 1
    return _until(attestation, authority_pk, _signer(blob, authority_pk, now_ms))


def verify(blob: bytes, authority_pk: bytes | AuthorityKeys, now_ms: int) -> Attestation:
    """The attestation in ``blob`` if it is signed by ``authority_pk`` (an
    older key of a rotation only while ``now_ms`` <= its ``until``) and
    valid at ``now_ms``; raises an AttestationError subclass otherwise."""
    return verify_counted(blob, authority_pk, now_ms)[0]


def verify_counted(blob: bytes, authority_pk: bytes | AuthorityKeys, now_ms: int) -> tuple[Attestation, int]:
    """:func:`verify` and :func:`counts_until` at once, with one signature
    check instead of two (the hub loads an account per authentication):
    the attestation, and the last instant (ms) at which it still counts.
    Raises as :func:`verify` does."""
    attestation = peek(blob)
    key = _signer(blob, authority_pk, now_ms)
    if key is None:
        raise AttestationSignatureInvalid("not signed by the verification authority")
    if now_ms < attestation.not_before:
        raise AttestationNotYetValid("attestation not valid yet")
    if now_ms >= attestation.not_after:
        raise AttestationExpired("attestation expired: the clinician must be verified again")
    return attestation, _until(attestation, authority_pk, key)


# --- the authority key in text ------------------------------------------------


def encode_authority_key(public_key: bytes) -> str:
    """Text form of an authority public key (for config files and clients)."""
    return base64.b64encode(public_key).decode()


def decode_authority_key(text: str) -> bytes:
    """Parse :func:`encode_authority_key`; raises ValueError."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (ValueError, TypeError):
        raise ValueError("the authority key is not base64") from None
    if len(key) != 32:
        raise ValueError("the authority key is not a 32-byte Ed25519 public key")
    return key


def authority_fingerprint(public_key: bytes) -> str:
    """A short form for people to compare: 8 groups of 4 hex digits."""
    digest = hashlib.sha256(b"miss.v1/authority\x00" + public_key).hexdigest()[:32]
    return " ".join(digest[i : i + 4] for i in range(0, 32, 4))
