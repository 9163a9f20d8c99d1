"""Limits, field checkers and the base class of the wire frames (SPEC.md §2, §3).

What the frame modules share: the protocol's constants and limits, the tiny
checkers that validate each field as it is decoded, and :class:`Frame`,
whose :meth:`Frame.from_map` runs them. The frame types are in
:mod:`protocol.client_frames` (client → hub) and :mod:`protocol.hub_frames`
(hub → client); :mod:`protocol.frames` registers them (:func:`register`)
and holds the codec. Code outside ``protocol/`` imports from
:mod:`protocol.frames` only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from .attachments import MAX_ATTACHMENTS_WIRE, MIN_CIPHER_SIZE, is_blob_id
from .errors import MalformedFrame

__all__ = [
    "CAP_BLOBS",
    "CAP_ONCALL",
    "CAP_PING",
    "CAP_REFUSALS",
    "CAP_ROTATION",
    "CAP_TEAMS",
    "HUB_CAPS",
    "MAX_ACK_REFUSALS",
    "MAX_ACK_SEQS",
    "MAX_ATTESTATION_BYTES",
    "MAX_CAPS",
    "MAX_FRAME_BYTES",
    "MAX_ID_CHARS",
    "MAX_LIFESPAN_MS",
    "MAX_RECIPIENT_DEVICES",
    "MAX_RECORD_BYTES",
    "MAX_ROLE_HOLDERS",
    "MAX_ROLE_RESULTS",
    "MAX_ROTATIONS",
    "MAX_ROTATION_BYTES",
    "MAX_SEARCH_RESULTS",
    "MAX_TEAMS_LIST",
    "MAX_TEAM_CHAIN_BYTES",
    "MAX_WATCH",
    "MAX_WRAPS",
    "MIN_LIFESPAN_MS",
    "MIN_SEARCH_CHARS",
    "PROTOCOL_VERSION",
    "STATUSES",
    "SUBPROTOCOL",
    "Checker",
    "F",
    "Frame",
    "Record",
    "RepeatedKey",
    "check_blob_id",
    "check_blob_ids",
    "check_blob_size",
    "check_bool",
    "check_bytes",
    "check_caps",
    "check_envs",
    "check_int",
    "check_lifespan",
    "check_list",
    "check_role_id",
    "check_status",
    "check_str",
    "check_team_id",
    "check_token",
    "check_wraps",
    "malformed",
    "register",
    "unique_map",
]

PROTOCOL_VERSION = 1
SUBPROTOCOL = "miss.v1"
#: Largest frame the hub accepts (bytes); larger ones are closed with 1009.
MAX_FRAME_BYTES = 64 * 1024
#: Longest user id, device id, enrollment code, name... (characters).
MAX_ID_CHARS = 128
#: Most envelopes one ``send`` may carry (recipient devices + own devices).
MAX_RECIPIENT_DEVICES = 64
#: Largest attestation (SPEC §11).
MAX_ATTESTATION_BYTES = 8192
#: Most entries a ``search`` answers with.
MAX_SEARCH_RESULTS = 50
#: The shortest query a ``search`` answers (shorter ones: no entry, SPEC §11.3).
MIN_SEARCH_CHARS = 3
#: Most seqs one ``ack`` carries, and most refusals (SPEC §6.4).
MAX_ACK_SEQS = 1024
MAX_ACK_REFUSALS = 64
#: Capabilities (SPEC §10): named in ``challenge.caps`` by the hub and in
#: ``auth.caps``/``enroll.caps`` by the client. ``refusals``: the client
#: sends ``ack.refused`` and understands ``refused`` receipts (SPEC §6.5).
CAP_REFUSALS = "refusals"
#: ``teams``: care teams, sealed bodies, ``team_changed`` pushes and the
#: requests of SPEC §13 (revision 3).
CAP_TEAMS = "teams"
#: ``oncall``: on-call roles, urgent sends, ``acknowledge``, the
#: ``urgent_status`` rows and the ``urgent_reminder``/``role_changed``
#: pushes of SPEC §14 (revision 4).
CAP_ONCALL = "oncall"
#: ``rotation``: the hub's authority key was rotated; ``challenge.rotations``
#: carries the statements from older keys to it (SPEC §15, revision 5).
#: Announced only by a hub configured with ``authority_rotations``.
CAP_ROTATION = "rotation"
#: Most statements ``challenge.rotations`` holds, and the size of each (SPEC §15).
MAX_ROTATIONS = 8
MAX_ROTATION_BYTES = 512
#: ``blobs``: encrypted attachments: the ``blob_*`` requests, ``send.blobs``
#: and ``welcome.att_max``/``blob_max`` (SPEC §16, revision 6).
CAP_BLOBS = "blobs"
#: ``ping``: the ``ping`` request, answered ``ok``, by which a client that
#: cannot see WebSocket pings (a browser) finds out that a silent hub is
#: still there (SPEC §4.1, revision 8).
CAP_PING = "ping"
#: What this hub implementation announces.
HUB_CAPS = (CAP_REFUSALS, CAP_TEAMS, CAP_ONCALL, CAP_BLOBS, CAP_PING)
#: Most capabilities one side may name, and their length.
MAX_CAPS = 16
#: Statuses a clinician can set (SPEC §6.7).
STATUSES = ("available", "busy", "on_call", "off_duty")
#: Most users one ``watch`` may name.
MAX_WATCH = 512
#: Most key wraps one ``send`` with a sealed body may carry (SPEC §13.4).
MAX_WRAPS = 512
#: Largest packed team record (SPEC §13.2).
MAX_RECORD_BYTES = 12288
#: Most bytes of records one ``team_chain_ok`` carries (at least one record).
MAX_TEAM_CHAIN_BYTES = 48 * 1024
#: Most teams one ``teams_ok`` lists.
MAX_TEAMS_LIST = 256
#: Bounds of a message's lifespan and of a team's default (ms, SPEC §13.6):
#: one hour to 30 days.
MIN_LIFESPAN_MS = 3_600_000
MAX_LIFESPAN_MS = 2_592_000_000
#: Most holders a role has at one time (SPEC §14.1), and most roles one
#: ``role_search_ok`` lists.
MAX_ROLE_HOLDERS = 16
MAX_ROLE_RESULTS = 20

# --- field checkers -------------------------------------------------------
# A checker returns the value if it is acceptable and raises MalformedFrame
# otherwise. They run on every decoded frame, so they stay tiny.

Checker = Callable[[Any], Any]


def malformed(what: str) -> MalformedFrame:
    return MalformedFrame(what)


def check_bytes(n: int | None = None, max_len: int = MAX_FRAME_BYTES) -> Checker:
    def check(v: Any) -> bytes:
        if type(v) is not bytes or (n is not None and len(v) != n) or len(v) > max_len:
            raise malformed(f"expected {n or 'some'} bytes")
        return v

    return check


class RepeatedKey(ValueError):
    """A msgpack map that holds one key twice (raised by :func:`unique_map`)."""


def unique_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """Build a decoded map, refusing one that holds a key twice (SPEC §3.1);
    the ``object_pairs_hook`` of every ``msgpack.unpackb`` of a frame or of
    signed or sealed content.

    Two readers of such a map may disagree on which occurrence counts (the
    first, the last), and bytes that mean one thing to the hub and another
    to a client, or to a reviewer, are an attack surface: the canonical
    encoding never repeats a key, so no honest sender does. Raises
    :class:`RepeatedKey` (a ValueError), which each caller turns into its
    own typed error.
    """
    m = dict(pairs)
    if len(m) != len(pairs):
        raise RepeatedKey("a key twice in one map")
    return m


def check_str(max_len: int = MAX_ID_CHARS, allow_empty: bool = False) -> Checker:
    """A string of at most ``max_len`` characters, never holding U+0000
    (SPEC §3.1): no field has a use for it, and PostgreSQL cannot store it,
    so a hub on PostgreSQL would fail on the first query naming it."""

    def check(v: Any) -> str:
        if type(v) is not str or len(v) > max_len or (not v and not allow_empty) or "\x00" in v:
            raise malformed("expected a non-empty string without NUL")
        return v

    return check


def check_int(v: Any) -> int:
    if type(v) is not int or v < 0 or v > 2**63 - 1:
        raise malformed("expected a non-negative integer")
    return v


def check_bool(v: Any) -> bool:
    if type(v) is not bool:
        raise malformed("expected a boolean")
    return v


def check_list(item: Checker, max_items: int) -> Checker:
    def check(v: Any) -> tuple[Any, ...]:
        if type(v) is not list or len(v) > max_items:
            raise malformed("expected a list")
        return tuple(item(x) for x in v)

    return check


def check_token(max_len: int) -> Checker:
    """A short lowercase name: ``[a-z0-9_]``, 1 to ``max_len`` characters
    (capabilities, refusal reasons)."""

    def check(v: Any) -> str:
        if type(v) is not str or not 0 < len(v) <= max_len or not _TOKEN_CHARS.issuperset(v):
            raise malformed("expected a lowercase name")
        return v

    return check


_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
check_caps = check_list(check_token(32), MAX_CAPS)


# Made once: every ``send`` checks its map of envelopes or key wraps.
_check_device_key = check_str()
_check_envelope = check_bytes(max_len=MAX_FRAME_BYTES)


def _check_device_map(v: Any, most: int, what: str) -> dict[str, bytes]:
    """1 to ``most`` entries of device id to bytes (an envelope or a key wrap)."""
    if type(v) is not dict or not v or len(v) > most:
        raise malformed(f"expected a map of device id to {what}")
    for k, env in v.items():
        _check_device_key(k)
        _check_envelope(env)
    return v


def check_envs(v: Any) -> dict[str, bytes]:
    return _check_device_map(v, MAX_RECIPIENT_DEVICES, "envelope")


def check_wraps(v: Any) -> dict[str, bytes]:
    """``envs`` of a ``send`` with a sealed body: 1 to MAX_WRAPS key wraps."""
    return _check_device_map(v, MAX_WRAPS, "key wrap")


_HEX_DIGITS = frozenset("0123456789abcdef")


def check_team_id(v: Any) -> str:
    """A team id: ``"t_"`` and 16 lowercase hex digits (SPEC §13.1)."""
    if type(v) is not str or len(v) != 18 or not v.startswith("t_") or not _HEX_DIGITS.issuperset(v[2:]):
        raise malformed("expected a team id")
    return v


def check_role_id(v: Any) -> str:
    """A role id: ``"r_"`` and 16 lowercase hex digits (SPEC §14.1)."""
    if type(v) is not str or len(v) != 18 or not v.startswith("r_") or not _HEX_DIGITS.issuperset(v[2:]):
        raise malformed("expected a role id")
    return v


def check_lifespan(v: Any) -> int:
    """A lifespan in ms, MIN_LIFESPAN_MS to MAX_LIFESPAN_MS (SPEC §13.6)."""
    if type(v) is not int or not MIN_LIFESPAN_MS <= v <= MAX_LIFESPAN_MS:
        raise malformed("expected a lifespan in ms")
    return v


def check_blob_id(v: Any) -> str:
    """A blob id: ``"b_"`` and 32 lowercase hex digits (SPEC §16.2)."""
    if not is_blob_id(v):
        raise malformed("expected a blob id")
    return str(v)


def check_blob_ids(v: Any) -> tuple[str, ...]:
    """``send.blobs``: 1 to MAX_ATTACHMENTS_WIRE distinct blob ids (SPEC §16.4)."""
    if type(v) is not list or not 0 < len(v) <= MAX_ATTACHMENTS_WIRE:
        raise malformed("expected 1 to 16 blob ids")
    ids = tuple(check_blob_id(x) for x in v)
    if len(set(ids)) != len(ids):
        raise malformed("a blob id twice")
    return ids


def check_blob_size(v: Any) -> int:
    """A blob's length in bytes: at least 41, an empty file's (SPEC §16.1)."""
    if type(v) is not int or not MIN_CIPHER_SIZE <= v <= 2**63 - 1:
        raise malformed("expected a blob size >= 41")
    return v


def check_status(v: Any) -> str:
    if v not in STATUSES:
        raise malformed("unknown status")
    return str(v)


# --- frame base class -------------------------------------------------------

F = TypeVar("F", bound="Frame")


@dataclass(frozen=True, slots=True)
class Frame:
    """Base of all frames. ``TYPE`` is the wire ``"t"``; ``WIRE`` maps each
    dataclass field to its wire key and checker; keys whose field default is
    ``None`` are optional and omitted when ``None``."""

    TYPE: ClassVar[str] = ""
    WIRE: ClassVar[tuple[tuple[str, str, Checker], ...]] = ()

    def to_map(self) -> dict[str, Any]:
        return {"t": self.TYPE, **self.fields_map()}

    def fields_map(self) -> dict[str, Any]:
        """The frame's fields without ``"t"`` (how a frame nests in another)."""
        out: dict[str, Any] = {}
        for attr, key, _ in self.WIRE:
            value = getattr(self, attr)
            if value is not None:
                out[key] = _wire(value)
        return out

    @classmethod
    def from_map(cls: type[F], m: dict[str, Any]) -> F:
        """The frame a decoded map holds: each ``WIRE`` key checked, an
        optional one absent read as ``None``, any other key ignored; a
        required key absent is :class:`MalformedFrame`."""
        build = _BUILDERS.get(cls)
        if build is not None:
            return build(m)  # type: ignore[return-value]
        kwargs: dict[str, Any] = {}
        for attr, key, check in cls.WIRE:
            if key in m:
                kwargs[attr] = check(m[key])
            elif attr not in _OPTIONAL[cls]:
                raise malformed(f"{cls.TYPE}: missing {key!r}")
        return cls(**kwargs)


class Record:
    """Marker for nested maps inside a frame (see :class:`DeviceInfo`)."""

    def to_map(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError


#: The optional fields (default ``None``) of each registered frame type,
#: which :meth:`Frame.from_map` lets a map omit.
_OPTIONAL: dict[type[Frame], frozenset[str]] = {}

#: Each registered frame type's :meth:`Frame.from_map`, written out by
#: :func:`register` (:func:`_compiled_from_map`).
_BUILDERS: dict[type[Frame], Callable[[dict[str, Any]], Frame]] = {}


#: Values a frame carries to the wire as they are (anything else goes
#: through :func:`_wire`).
_PLAIN = frozenset({int, str, bytes, bool})


def _wire(value: Any) -> Any:
    """A field's wire value: a record as its map, a tuple as a list of
    nested frames' fields, records' maps or plain values."""
    if isinstance(value, Record):
        return value.to_map()
    if isinstance(value, tuple):
        return [_item(v) for v in value]
    return value


def _item(v: Any) -> Any:
    return v.fields_map() if isinstance(v, Frame) else v.to_map() if isinstance(v, Record) else v


def _compiled_fields_map(cls: type[Frame], with_type: bool) -> Callable[[Frame], dict[str, Any]]:
    """What :meth:`Frame.fields_map` (or :meth:`Frame.to_map`) computes for
    ``cls``, written out field by field: the hub encodes a frame or more
    for every message, and the generic loop cost five times the packing."""
    lines = ["def fields_map(self):", f"    m = {{'t': {cls.TYPE!r}}}" if with_type else "    m = {}"]
    for attr, key, _ in cls.WIRE:
        lines += [
            f"    v = self.{attr}",
            "    if v is not None:",
            f"        m[{key!r}] = v if type(v) in _PLAIN else _wire(v)",
        ]
    lines.append("    return m")
    namespace: dict[str, Any] = {"_PLAIN": _PLAIN, "_wire": _wire}
    exec("\n".join(lines), namespace)  # the source is built above from the class's own WIRE names
    fn: Callable[[Frame], dict[str, Any]] = namespace["fields_map"]
    return fn


def _compiled_from_map(cls: type[Frame]) -> Callable[[dict[str, Any]], Frame]:
    """What the generic :meth:`Frame.from_map` computes for ``cls``, written
    out key by key: the hub decodes a frame or more for every message, and
    the loop over ``WIRE`` with keyword arguments cost twice the checks.
    The fields go to the class's own ``__init__`` (so ``__post_init__``
    still runs), by position when ``WIRE`` names every field in order."""
    optional = _OPTIONAL[cls]
    names = [f.name for f in fields(cls) if f.init]
    positional = [attr for attr, _, _ in cls.WIRE] == names
    namespace: dict[str, Any] = {"cls": cls, "malformed": malformed}
    lines = ["def from_map(m):"]
    for i, (attr, key, check) in enumerate(cls.WIRE):
        namespace[f"c{i}"] = check
        lines += [f"    if {key!r} in m:", f"        v{i} = c{i}(m[{key!r}])"]
        if attr in optional:
            lines += ["    else:", f"        v{i} = None"]
        else:
            lines += ["    else:", f"        raise malformed({f'{cls.TYPE}: missing {key!r}'!r})"]
    if positional:
        args = ", ".join(f"v{i}" for i in range(len(cls.WIRE)))
    else:
        args = ", ".join(f"{attr}=v{i}" for i, (attr, _, _) in enumerate(cls.WIRE))
    lines.append(f"    return cls({args})")
    exec("\n".join(lines), namespace)  # the source is built above from the class's own WIRE names
    fn: Callable[[dict[str, Any]], Frame] = namespace["from_map"]
    return fn


def register(classes: tuple[type[Frame], ...]) -> dict[str, type[Frame]]:
    """Prepare frame types for decoding and encoding: note their optional
    fields, write out their ``to_map`` and ``fields_map`` (unless a class
    has its own), and return them by wire type (``"t"``).
    :mod:`protocol.frames` registers every type once, at import."""
    for cls in classes:
        _OPTIONAL[cls] = frozenset(f.name for f in fields(cls) if f.default is None)
        _BUILDERS[cls] = _compiled_from_map(cls)
        if "fields_map" not in cls.__dict__:
            cls.fields_map = _compiled_fields_map(cls, with_type=False)  # type: ignore[method-assign,assignment]
        if "to_map" not in cls.__dict__:
            cls.to_map = _compiled_fields_map(cls, with_type=True)  # type: ignore[method-assign,assignment]
    return {cls.TYPE: cls for cls in classes}
