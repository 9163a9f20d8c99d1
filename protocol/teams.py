"""Care teams: signed, hash-chained membership records (SPEC.md §13.1, §13.2).

Theory of operation
-------------------
Who belongs to a team is decided by a chain of **records**, each signed by a
member's device (with that member's attestation inside, SPEC §11.1) or by
the verification authority, never by the hub. Each record names the hash of
the one before it, so a chain is one history: the hub can withhold its end,
but cannot reorder, drop from the middle, or forge a record, and two
different histories from the same prefix have different **heads**.

:func:`verify_chain` (run by the hub on every new record and by every
client before it encrypts to a team) applies the records in order to a
:class:`TeamState` with :func:`apply_record`, which checks SPEC §13.2's
rules and raises :class:`TeamChainError` at the first record that breaks
one. ``TeamChainError.reason`` says which rule, and so which error a hub
answers a ``team_change`` with (SPEC §13.7):

* ``"malformed"`` (rule 1: not a record of this format, or of another
  team) and ``"bad_signature"`` (rule 2) → ``bad_team_record``;
* ``"broken_chain"`` (rule 1: ``seq`` or ``prev`` do not follow the head)
  → ``team_conflict``;
* ``"forbidden"`` (rule 3: the operation is not allowed) → ``team_forbidden``.

Everything here is pure and deterministic; :func:`new_team_id` is the only
source of randomness.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import msgpack
import nacl.signing

from . import attestation
from .crypto import DeviceKeys, verify_signature
from .errors import BadTeamRecord, RequestError, TeamConflict, TeamForbidden
from .frame_base import MAX_LIFESPAN_MS, MAX_RECORD_BYTES, MIN_LIFESPAN_MS, RepeatedKey, unique_map
from .rotation import AuthorityKeys, keys_at

__all__ = [
    "AUTHORITY",
    "MAX_LIFESPAN_MS",
    "MAX_RECORD_BYTES",
    "MAX_TEAM_MEMBERS",
    "MIN_LIFESPAN_MS",
    "OPS",
    "REASONS",
    "TEAM_CONTEXT",
    "ZERO_HEAD",
    "SignedRecord",
    "TeamChainError",
    "TeamRecord",
    "TeamState",
    "apply_record",
    "is_team_id",
    "new_team_id",
    "next_record",
    "pack_record",
    "record_hash",
    "sign_record",
    "sign_record_authority",
    "unpack_record",
    "verify_chain",
]

#: Prefix of what a record's signature covers: ``TEAM_CONTEXT || rec``.
TEAM_CONTEXT = b"miss.v1/team\x00"
#: The ``by`` of a record signed by the verification authority's key.
AUTHORITY = "authority"
#: The operations a record may carry.
OPS = ("create", "add", "remove", "leave", "promote", "demote")
#: ``prev`` of the creation record.
ZERO_HEAD = bytes(32)
#: Most members a team may ever hold (hubs set a lower cap, 100 by default).
MAX_TEAM_MEMBERS = 200
#: The reasons a chain is refused, see the module's docstring.
REASONS = ("malformed", "bad_signature", "broken_chain", "forbidden")

_VERSION = 1
_SIG_BYTES = 64
_HEAD_BYTES = 32
_MAX_ID_CHARS = 128
_MAX_NAME_CHARS = 64
_MAX_ORG_CHARS = 128
_HEX = frozenset("0123456789abcdef")
#: Every key a record may hold, in canonical order (SPEC §13.2's table).
_KEYS = ("v", "team", "seq", "prev", "op", "user", "by", "device", "at", "name", "org", "lifespan", "att")
_CREATE_ONLY = ("name", "org", "lifespan")


_ERROR_BY_REASON: dict[str, type[RequestError]] = {
    "malformed": BadTeamRecord,
    "bad_signature": BadTeamRecord,
    "broken_chain": TeamConflict,
    "forbidden": TeamForbidden,
}


class TeamChainError(Exception):
    """A record (and so its chain) that breaks a rule of SPEC §13.2.
    ``reason`` is one of :data:`REASONS`; ``str()`` says what, for logs."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def request_error(self) -> RequestError:
        """The error a hub answers a ``team_change`` with (SPEC §13.7):
        ``bad_team_record`` (malformed, bad signature), ``team_conflict``
        (does not follow the head) or ``team_forbidden``."""
        cls = _ERROR_BY_REASON[self.reason]
        return cls(str(self))


def new_team_id() -> str:
    """A fresh random team id: ``"t_"`` and 16 lowercase hex digits."""
    return "t_" + os.urandom(8).hex()


def is_team_id(s: object) -> bool:
    """True if ``s`` is a team id (and so not a user id)."""
    return type(s) is str and len(s) == 18 and s.startswith("t_") and _HEX.issuperset(s[2:])


@dataclass(frozen=True, slots=True)
class TeamRecord:
    """One change of a team's membership (SPEC §13.2). ``seq`` is its
    position from 0 (the creation), ``prev`` the hash of the record before
    it; ``by`` signs it with ``device`` and carries its attestation ``att``,
    or is :data:`AUTHORITY` (then ``device`` and ``att`` are None);
    ``name``/``org``/``lifespan`` belong to ``create`` only."""

    team: str
    seq: int
    prev: bytes
    op: str
    user: str
    by: str
    at: int
    device: str | None = None
    name: str | None = None
    org: str | None = None
    lifespan: int | None = None
    att: bytes | None = None


def pack_record(r: TeamRecord) -> bytes:
    """The canonical bytes of a record (keys in table order, optional ones
    omitted). Does not check the record: :func:`apply_record` does."""
    m: dict[str, Any] = {"v": _VERSION, "team": r.team, "seq": r.seq, "prev": r.prev, "op": r.op}
    m["user"] = r.user
    m["by"] = r.by
    if r.device is not None:
        m["device"] = r.device
    m["at"] = r.at
    for key in ("name", "org", "lifespan", "att"):
        value = getattr(r, key)
        if value is not None:
            m[key] = value
    packed: bytes = msgpack.packb(m, use_bin_type=True)
    return packed


def _is_id(v: Any) -> bool:
    return type(v) is str and 0 < len(v) <= _MAX_ID_CHARS and "\x00" not in v


def _is_text(v: Any, max_len: int, min_len: int) -> bool:
    """A str of ``min_len`` to ``max_len`` characters without U+0000: as in
    a frame (SPEC §3.1), since the hub stores these in its database, and
    PostgreSQL cannot hold U+0000."""
    return type(v) is str and min_len <= len(v) <= max_len and "\x00" not in v


def _is_int(v: Any) -> bool:
    return type(v) is int and 0 <= v <= 2**63 - 1


def unpack_record(b: bytes) -> TeamRecord:
    """Parse and type-check a packed record (SPEC §13.2 rule 1, the part
    that needs no chain). Raises TeamChainError("malformed") for anything
    but a map of the record's keys with their types and bounds: an unknown
    key, a missing one, ``device``/``att`` absent for a member's record or
    present for the authority's, ``name``/``org``/``lifespan`` outside a
    ``create``."""
    if type(b) is not bytes or len(b) > MAX_RECORD_BYTES:
        raise TeamChainError("malformed", "record too large")
    try:
        m = msgpack.unpackb(b, raw=False, strict_map_key=True, object_pairs_hook=unique_map)
    except RepeatedKey:
        raise TeamChainError("malformed", "a key twice in one map") from None
    except Exception:  # msgpack raises several unrelated types
        raise TeamChainError("malformed", "not msgpack") from None
    if type(m) is not dict:
        raise TeamChainError("malformed", "not a map")
    unknown = set(m) - set(_KEYS)
    if unknown:
        raise TeamChainError("malformed", f"unknown keys {sorted(unknown)[:4]}")
    missing = [k for k in ("v", "team", "seq", "prev", "op", "user", "by", "at") if k not in m]
    if missing:
        raise TeamChainError("malformed", f"missing {missing}")
    ok = (
        type(m["v"]) is int
        and m["v"] == _VERSION
        and is_team_id(m["team"])
        and _is_int(m["seq"])
        and type(m["prev"]) is bytes
        and len(m["prev"]) == _HEAD_BYTES
        and m["op"] in OPS
        and type(m["op"]) is str
        and _is_id(m["user"])
        and m["user"] != AUTHORITY
        and _is_id(m["by"])
        and _is_int(m["at"])
    )
    if not ok:
        raise TeamChainError("malformed", "a key has the wrong type or value")
    if m["by"] == AUTHORITY:
        if "device" in m or "att" in m:
            raise TeamChainError("malformed", "the authority's record names no device or attestation")
    elif not ("device" in m and "att" in m and _is_id(m["device"])):
        raise TeamChainError("malformed", "a member's record names its device and attestation")
    elif not (type(m["att"]) is bytes and 0 < len(m["att"]) <= attestation.MAX_BYTES):
        raise TeamChainError("malformed", "att is not an attestation")
    if m["op"] != "create" and any(k in m for k in _CREATE_ONLY):
        raise TeamChainError("malformed", "name, org and lifespan belong to a creation")
    if "name" in m and not _is_text(m["name"], _MAX_NAME_CHARS, 1):
        raise TeamChainError("malformed", "name is 1-64 characters, without U+0000")
    if "org" in m and not _is_text(m["org"], _MAX_ORG_CHARS, 0):
        raise TeamChainError("malformed", "org is 0-128 characters, without U+0000")
    if "lifespan" in m and not (
        type(m["lifespan"]) is int and MIN_LIFESPAN_MS <= m["lifespan"] <= MAX_LIFESPAN_MS
    ):
        raise TeamChainError("malformed", "lifespan out of bounds")
    return TeamRecord(
        team=m["team"],
        seq=m["seq"],
        prev=m["prev"],
        op=m["op"],
        user=m["user"],
        by=m["by"],
        at=m["at"],
        device=m.get("device"),
        name=m.get("name"),
        org=m.get("org"),
        lifespan=m.get("lifespan"),
        att=m.get("att"),
    )


def record_hash(rec: bytes, sig: bytes) -> bytes:
    """BLAKE2b-256 of ``rec || sig`` (libsodium's crypto_generichash, no key)."""
    return hashlib.blake2b(rec + sig, digest_size=32).digest()


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """A record as stored and sent: its packed bytes and their signature."""

    rec: bytes
    sig: bytes

    def hash(self) -> bytes:
        """The record's hash, which the next record names as ``prev``."""
        return record_hash(self.rec, self.sig)

    def record(self) -> TeamRecord:
        """The record, type-checked (TeamChainError("malformed"))."""
        return unpack_record(self.rec)


def sign_record(r: TeamRecord, keys: DeviceKeys) -> SignedRecord:
    """``r`` signed by a member's device (``r.device``, with ``r.att``)."""
    rec = pack_record(r)
    return SignedRecord(rec, keys.sign(TEAM_CONTEXT + rec))


def sign_record_authority(r: TeamRecord, authority: nacl.signing.SigningKey) -> SignedRecord:
    """``r`` (``by`` = :data:`AUTHORITY`) signed by the verification authority."""
    rec = pack_record(r)
    return SignedRecord(rec, authority.sign(TEAM_CONTEXT + rec).signature)


@dataclass(frozen=True, slots=True)
class TeamState:
    """A team as a verified chain leaves it. ``seq`` is the number of
    records applied (the ``seq`` the next record must carry), ``head`` the
    hash of the last one; ``closed`` once the last member has left (or
    been removed): nothing may follow."""

    team: str
    name: str
    org: str | None
    lifespan: int | None
    members: frozenset[str]
    admins: frozenset[str]
    seq: int
    head: bytes
    closed: bool = False


def _check_signature(r: TeamRecord, s: SignedRecord, authority_pk: bytes | AuthorityKeys) -> None:
    """Rule 2 of SPEC §13.2. Raises TeamChainError("bad_signature"). An
    older authority key of a rotation counts for a record whose ``at`` is
    at most its ``until`` (SPEC §15: a record outlives the key)."""
    message = TEAM_CONTEXT + s.rec
    if r.by == AUTHORITY:
        if not any(verify_signature(k, message, s.sig) for k in keys_at(authority_pk, r.at)):
            raise TeamChainError("bad_signature", "not signed by the verification authority")
        return
    assert r.att is not None and r.device is not None  # unpack_record saw to it
    try:
        att = attestation.check_signature(r.att, authority_pk, r.at)
    except attestation.AttestationError as exc:
        raise TeamChainError("bad_signature", f"attestation: {exc}") from None
    if att.user != r.by:
        raise TeamChainError("bad_signature", "the attestation is another user's")
    # The attestation must have been valid when the record was signed (a
    # record outlives it); same bounds as attestation.verify.
    if not att.not_before <= r.at < att.not_after:
        raise TeamChainError("bad_signature", "the attestation was not valid at 'at'")
    device = att.device(r.device)
    if device is None:
        raise TeamChainError("bad_signature", "the attestation does not list the signing device")
    if not verify_signature(device.sign_pk, message, s.sig):
        raise TeamChainError("bad_signature", "signature does not verify with the device's key")


def apply_record(
    state: TeamState | None, s: SignedRecord, authority_pk: bytes | AuthorityKeys, *, team: str
) -> TeamState:
    """The state after record ``s``, applied to ``state`` (None before the
    creation) of team ``team``, once it passes SPEC §13.2 rules 1-3 in that
    order. Raises TeamChainError (its ``reason`` names the rule broken);
    ``state`` is never changed (it is frozen)."""
    # Rule 1: a record of this format and team, following the head.
    if type(s.sig) is not bytes or len(s.sig) != _SIG_BYTES:
        raise TeamChainError("malformed", "sig is 64 bytes")
    r = unpack_record(s.rec)
    if r.team != team:
        raise TeamChainError("malformed", "record of another team")
    seq = 0 if state is None else state.seq
    head = ZERO_HEAD if state is None else state.head
    if r.seq != seq:
        raise TeamChainError("broken_chain", f"seq {r.seq}, expected {seq}")
    if r.prev != head:
        raise TeamChainError("broken_chain", "prev is not the head")
    # Rule 2: the signature.
    _check_signature(r, s, authority_pk)
    # Rule 3: the operation is allowed.
    new_head = s.hash()
    if state is None or r.op == "create":
        if state is not None or r.op != "create":
            raise TeamChainError("forbidden", "a creation is the first record, and only it")
        if r.name is None:
            raise TeamChainError("forbidden", "a creation names the team")
        if r.by != AUTHORITY and r.by != r.user:
            raise TeamChainError("forbidden", "a clinician creates a team only as its first admin")
        first = frozenset({r.user})
        return TeamState(team, r.name, r.org, r.lifespan, first, first, 1, new_head)
    if state.closed:
        raise TeamChainError("forbidden", "the team is closed")
    members, admins = state.members, state.admins
    by_admin = r.by == AUTHORITY or r.by in admins
    if r.op == "add":
        if not by_admin:
            raise TeamChainError("forbidden", "only an admin adds a member")
        if r.user in members:
            raise TeamChainError("forbidden", "already a member")
        members = members | {r.user}
    elif r.op == "remove":
        if not by_admin:
            raise TeamChainError("forbidden", "only an admin removes a member")
        if r.user not in members or r.user == r.by:
            raise TeamChainError("forbidden", "removes a member other than oneself (leave instead)")
        members, admins = members - {r.user}, admins - {r.user}
    elif r.op == "leave":
        if r.by != r.user or r.user not in members:
            raise TeamChainError("forbidden", "only a member leaves, by themself")
        if admins == {r.user} and len(members) > 1:
            raise TeamChainError("forbidden", "the last admin promotes someone before leaving")
        members, admins = members - {r.user}, admins - {r.user}
    elif r.op == "promote":
        if not by_admin:
            raise TeamChainError("forbidden", "only an admin promotes")
        if r.user not in members or r.user in admins:
            raise TeamChainError("forbidden", "promotes a member who is not an admin")
        admins = admins | {r.user}
    else:  # demote; unpack_record admits only OPS
        if not by_admin:
            raise TeamChainError("forbidden", "only an admin demotes")
        if r.user not in admins or len(admins) < 2:
            raise TeamChainError("forbidden", "demotes an admin while another admin remains")
        admins = admins - {r.user}
    return replace(
        state, members=members, admins=admins, seq=state.seq + 1, head=new_head, closed=not members
    )


def verify_chain(
    records: Iterable[SignedRecord], authority_pk: bytes | AuthorityKeys, team: str
) -> TeamState:
    """The state of team ``team`` after its whole chain, from the creation,
    in ``seq`` order. Raises TeamChainError at the first record that breaks
    a rule (``"broken_chain"`` for an empty chain): the whole chain is
    refused."""
    state: TeamState | None = None
    for s in records:
        state = apply_record(state, s, authority_pk, team=team)
    if state is None:
        raise TeamChainError("broken_chain", "no creation record")
    return state


def next_record(
    state: TeamState | None,
    op: str,
    user: str,
    *,
    by: str,
    at: int,
    device: str | None = None,
    att: bytes | None = None,
    team: str | None = None,
    name: str | None = None,
    org: str | None = None,
    lifespan: int | None = None,
) -> TeamRecord:
    """The record that would follow ``state`` (team, ``seq`` and ``prev``
    filled in from it). Before the creation (``state`` None) ``team`` is
    the new team's id, a fresh :func:`new_team_id` if not given. Checks
    nothing: sign it, then :func:`apply_record` tells whether it is allowed."""
    if state is None:
        team_id, seq, prev = team or new_team_id(), 0, ZERO_HEAD
    else:
        if team is not None and team != state.team:
            raise ValueError("team differs from the state's")
        team_id, seq, prev = state.team, state.seq, state.head
    return TeamRecord(
        team=team_id,
        seq=seq,
        prev=prev,
        op=op,
        user=user,
        by=by,
        at=at,
        device=device,
        name=name,
        org=org,
        lifespan=lifespan,
        att=att,
    )
