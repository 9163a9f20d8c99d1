"""Authority key rotation statements (SPEC.md §15, revision 5).

The verification authority replaces its key without re-enrolling anyone: the
**old** key signs a statement naming the **new** one, and the new key signs
it too (it proves its holder has it). A client that trusts the old key and
sees the statement (the hub sends it in its ``challenge``) moves to the new
key; the old one keeps counting until the statement's ``until``, so the
attestations it signed stay good while the administrators re-issue them.

Wire form (``challenge.rotations`` entries, the ``authority_rotations``
setting in base64)::

    blob = old_sig (64) || new_sig (64) || body          (<= 512 bytes)
    body = canonical msgpack map, keys in this order:
           {"t": "miss-rot", "v": 1, "old": bin32, "new": bin32,
            "at": int ms, "until": int ms}
    old_sig = Ed25519(old, CONTEXT || body)
    new_sig = Ed25519(new, CONTEXT || body)

with ``old != new`` and ``at < until``. ``at`` is when the new key starts to
count; ``until`` the old key's last instant.

:func:`accept_chain` is what a client (and the hub, on its own settings)
runs: it returns an :class:`AuthorityKeys`, the current key plus the older
keys with their ``until``, or raises a :class:`RotationError` subclass; a
refused chain changes nothing. A hub cannot forge a statement (it has
neither key); it can withhold one, and then its clients keep the old key
and, after ``until``, fail verification loudly.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import nacl.exceptions
import nacl.signing

from .frame_base import unique_map

__all__ = [
    "CONTEXT",
    "MAX_BYTES",
    "MAX_STATEMENTS",
    "AuthorityKeys",
    "PreviousKey",
    "RotationChainBroken",
    "RotationError",
    "RotationMalformed",
    "RotationNotTrusted",
    "RotationSignatureInvalid",
    "Statement",
    "accept_chain",
    "chain_of",
    "decode_text",
    "encode_text",
    "keys_at",
    "peek",
    "sign",
    "verify",
]

CONTEXT = b"miss.v1/authority-rotation\x00"
_MAGIC = "miss-rot"
_VERSION = 1
_SIG = 64
#: Largest statement accepted (bytes).
MAX_BYTES = 512
#: Most statements a chain (``challenge.rotations``) may hold.
MAX_STATEMENTS = 8


class RotationError(Exception):
    """The statement or chain cannot be trusted; ``str()`` says why."""


class RotationMalformed(RotationError):
    """Not a rotation statement of this version (or not canonical)."""


class RotationSignatureInvalid(RotationError):
    """One of the two signatures does not verify."""


class RotationChainBroken(RotationError):
    """The statements do not follow one another (s(i+1).old != s(i).new),
    or there are too many."""


class RotationNotTrusted(RotationError):
    """The chain does not involve the key this side trusts."""


@dataclass(frozen=True, slots=True)
class Statement:
    """The old key hands over to the new one (times in ms since the epoch)."""

    old: bytes
    new: bytes
    at: int
    until: int

    def body(self) -> bytes:
        """The canonical bytes both keys sign. Raises ValueError for a
        statement that cannot exist (keys not 32 bytes, old == new,
        at >= until)."""
        if len(self.old) != 32 or len(self.new) != 32:
            raise ValueError("authority keys are 32 bytes")
        if self.old == self.new:
            raise ValueError("the new key is the old one")
        if type(self.at) is not int or type(self.until) is not int or not 0 <= self.at < self.until:
            raise ValueError("'at' must come before 'until'")
        packed: bytes = msgpack.packb(
            {
                "t": _MAGIC,
                "v": _VERSION,
                "old": self.old,
                "new": self.new,
                "at": self.at,
                "until": self.until,
            },
            use_bin_type=True,
        )
        return packed


@dataclass(frozen=True, slots=True)
class PreviousKey:
    """An older authority key, counted while the instant checked <= ``until``."""

    key: bytes
    until: int


@dataclass(frozen=True, slots=True)
class AuthorityKeys:
    """The keys a side trusts: ``current`` always, each of ``previous``
    only up to its ``until`` (newest first)."""

    current: bytes
    previous: tuple[PreviousKey, ...] = ()

    def valid_at(self, ms: int) -> tuple[bytes, ...]:
        """The keys that count for something checked at instant ``ms``."""
        return (self.current, *(p.key for p in self.previous if ms <= p.until))

    def all_keys(self) -> tuple[bytes, ...]:
        return (self.current, *(p.key for p in self.previous))


def keys_at(authority: bytes | AuthorityKeys, ms: int | None) -> tuple[bytes, ...]:
    """The keys of ``authority`` that count at ``ms``: a bare key is always
    itself; for AuthorityKeys, ``ms`` None means the current key only."""
    if isinstance(authority, AuthorityKeys):
        return (authority.current,) if ms is None else authority.valid_at(ms)
    return (authority,)


def sign(old_key: nacl.signing.SigningKey, new_key: nacl.signing.SigningKey, at: int, until: int) -> bytes:
    """The statement that ``new_key`` follows ``old_key`` from ``at``, the
    old key counting until ``until``, signed by both. Raises ValueError."""
    body = Statement(bytes(old_key.verify_key), bytes(new_key.verify_key), at, until).body()
    blob = old_key.sign(CONTEXT + body).signature + new_key.sign(CONTEXT + body).signature + body
    if len(blob) > MAX_BYTES:  # cannot happen with 32-byte keys and int64 times; a guard all the same
        raise ValueError("statement too large")
    return blob


def peek(blob: bytes) -> Statement:
    """Decode without checking the signatures (for display and for the hub's
    error messages, never for trust). Raises RotationMalformed, also for a
    body that is not the canonical encoding of its content."""
    if type(blob) is not bytes or not 2 * _SIG < len(blob) <= MAX_BYTES:
        raise RotationMalformed("not a rotation statement")
    body = blob[2 * _SIG :]
    try:
        m: Any = msgpack.unpackb(body, raw=False, strict_map_key=True, object_pairs_hook=unique_map)
        if type(m) is not dict or m.get("t") != _MAGIC or m.get("v") != _VERSION:
            raise ValueError("version")
        old, new, at, until = m["old"], m["new"], m["at"], m["until"]
        if type(old) is not bytes or type(new) is not bytes or type(at) is not int or type(until) is not int:
            raise ValueError("field")
        statement = Statement(old, new, at, until)
        if statement.body() != body:  # one statement, one encoding: no malleable copies
            raise ValueError("not canonical")
    except (ValueError, TypeError, KeyError, msgpack.UnpackException, msgpack.ExtraData):
        raise RotationMalformed("not a rotation statement of this version") from None
    return statement


def verify(blob: bytes) -> Statement:
    """The statement in ``blob`` if both its signatures verify (the old key's
    and the new key's); raises RotationMalformed or RotationSignatureInvalid.
    Says nothing about whether the old key is trusted: see accept_chain."""
    statement = peek(blob)
    message = CONTEXT + blob[2 * _SIG :]
    for key, sig, who in ((statement.old, blob[:_SIG], "old"), (statement.new, blob[_SIG : 2 * _SIG], "new")):
        try:
            nacl.signing.VerifyKey(key).verify(message, sig)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError):
            raise RotationSignatureInvalid(f"the {who} key's signature does not verify") from None
    return statement


def accept_chain(trusted: bytes | AuthorityKeys, statements: Sequence[bytes], now: int) -> AuthorityKeys:
    """The keys to trust after ``statements`` (in order), for a side that
    trusts ``trusted`` (a key, or the AuthorityKeys it holds).

    Every statement must verify (:func:`verify`) and follow the previous one
    (its ``old`` is the previous ``new``); the trusted current key must be
    the first ``old`` or one of the ``new`` keys. The result's current key is
    the last ``new`` (``trusted`` unchanged for an empty chain); its
    previous keys are every ``old`` of the chain with its statement's
    ``until`` (a key rotated twice keeps the later ``until``), plus the
    previous keys ``trusted`` already held; keys past their ``until`` at
    ``now`` are dropped. Raises RotationError (nothing is accepted: never a
    prefix of the chain)."""
    held = trusted if isinstance(trusted, AuthorityKeys) else AuthorityKeys(trusted)
    if len(statements) > MAX_STATEMENTS:
        raise RotationChainBroken(f"more than {MAX_STATEMENTS} statements")
    chain = [verify(blob) for blob in statements]
    for i in range(1, len(chain)):
        if chain[i].old != chain[i - 1].new:
            raise RotationChainBroken(f"statement {i + 1} does not follow statement {i}")
    if not chain:
        return held
    if held.current != chain[0].old and held.current not in (s.new for s in chain):
        raise RotationNotTrusted("the chain does not start at the trusted authority key")
    until: dict[bytes, int] = {p.key: p.until for p in held.previous}
    for s in chain:
        until[s.old] = max(s.until, until.get(s.old, s.until))
    current = chain[-1].new
    until.pop(current, None)
    previous = tuple(PreviousKey(k, u) for k, u in sorted(until.items(), key=lambda kv: -kv[1]) if now <= u)
    return AuthorityKeys(current, previous)


# --- text form (settings, miss-admin output) ------------------------------------


def encode_text(blob: bytes) -> str:
    """A statement as one line of base64 (the ``authority_rotations`` entries)."""
    return base64.b64encode(blob).decode()


def decode_text(text: str) -> bytes:
    """Parse :func:`encode_text`; raises RotationMalformed."""
    try:
        blob = base64.b64decode(text.strip(), validate=True)
    except (ValueError, TypeError):
        raise RotationMalformed("a rotation statement is base64") from None
    peek(blob)
    return blob


def chain_of(texts: Iterable[str]) -> list[bytes]:
    """The blobs of ``texts`` (decode_text each); raises RotationMalformed."""
    return [decode_text(t) for t in texts]
