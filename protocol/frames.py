"""Wire frames of protocol v1 and their codec (SPEC.md §3, §4).

Every WebSocket message is one binary frame: a msgpack map whose key ``"t"``
names the frame type. Each type below is a small frozen dataclass that
checks its own fields when decoded, so that the code past :func:`decode`
only ever sees well-typed frames.

``decode`` raises :class:`~protocol.errors.MalformedFrame` for anything that
is not a msgpack map of the right shape and
:class:`~protocol.errors.UnknownFrameType` for an unknown ``"t"``; it never
raises anything else. ``encode`` is its exact inverse: ``decode(encode(f)) ==
f`` and the bytes are canonical (keys in declaration order), which is what
``vectors/frames.json`` pins down.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

import msgpack

from .errors import MalformedFrame, UnknownFrameType

__all__ = [
    "CAP_REFUSALS",
    "CLIENT_FRAMES",
    "HUB_CAPS",
    "MAX_ACK_BYTES",
    "MAX_ACK_REFUSALS",
    "MAX_FRAME_BYTES",
    "MAX_ID_CHARS",
    "MAX_RECIPIENT_DEVICES",
    "MAX_WATCH",
    "MIN_SEARCH_CHARS",
    "PROTOCOL_VERSION",
    "SERVER_FRAMES",
    "STATUSES",
    "SUBPROTOCOL",
    "Accepted",
    "Ack",
    "Auth",
    "Challenge",
    "Deliver",
    "Delivered",
    "DeviceEntry",
    "DeviceInfo",
    "Devices",
    "DevicesOk",
    "Enroll",
    "Error",
    "Frame",
    "LinkCode",
    "LinkCodeOk",
    "Lookup",
    "LookupOk",
    "Ok",
    "Presence",
    "Refusal",
    "Refused",
    "Revoke",
    "Search",
    "SearchOk",
    "Send",
    "SetStatus",
    "Watch",
    "Watching",
    "Welcome",
    "decode",
    "encode",
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
#: What this hub implementation announces.
HUB_CAPS = (CAP_REFUSALS,)
#: Most capabilities one side may name, and their length.
MAX_CAPS = 16

# --- field checkers -------------------------------------------------------
# A checker returns the value if it is acceptable and raises MalformedFrame
# otherwise. They run on every decoded frame, so they stay tiny.

Checker = Callable[[Any], Any]


def _bad(what: str) -> MalformedFrame:
    return MalformedFrame(what)


def _bytes(n: int | None = None, max_len: int = MAX_FRAME_BYTES) -> Checker:
    def check(v: Any) -> bytes:
        if type(v) is not bytes or (n is not None and len(v) != n) or len(v) > max_len:
            raise _bad(f"expected {n or 'some'} bytes")
        return v

    return check


def _str(max_len: int = MAX_ID_CHARS, allow_empty: bool = False) -> Checker:
    def check(v: Any) -> str:
        if type(v) is not str or len(v) > max_len or (not v and not allow_empty):
            raise _bad("expected a non-empty string")
        return v

    return check


def _int(v: Any) -> int:
    if type(v) is not int or v < 0 or v > 2**63 - 1:
        raise _bad("expected a non-negative integer")
    return v


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise _bad("expected a boolean")
    return v


def _list(item: Checker, max_items: int) -> Checker:
    def check(v: Any) -> tuple[Any, ...]:
        if type(v) is not list or len(v) > max_items:
            raise _bad("expected a list")
        return tuple(item(x) for x in v)

    return check


def _token(max_len: int) -> Checker:
    """A short lowercase name: ``[a-z0-9_]``, 1 to ``max_len`` characters
    (capabilities, refusal reasons)."""

    def check(v: Any) -> str:
        if type(v) is not str or not 0 < len(v) <= max_len or not _TOKEN_CHARS.issuperset(v):
            raise _bad("expected a lowercase name")
        return v

    return check


_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
_caps = _list(_token(32), MAX_CAPS)


def _envs(v: Any) -> dict[str, bytes]:
    if type(v) is not dict or not v or len(v) > MAX_RECIPIENT_DEVICES:
        raise _bad("expected a map of device id to envelope")
    check_id, check_env = _str(), _bytes(max_len=MAX_FRAME_BYTES)
    for k, env in v.items():
        check_id(k)
        check_env(env)
    return v


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
            if value is None:
                continue
            if isinstance(value, tuple):
                value = [
                    v.fields_map() if isinstance(v, Frame) else v.to_map() if isinstance(v, Record) else v
                    for v in value
                ]
            out[key] = value
        return out

    @classmethod
    def from_map(cls: type[F], m: dict[str, Any]) -> F:
        kwargs: dict[str, Any] = {}
        for attr, key, check in cls.WIRE:
            if key in m:
                kwargs[attr] = check(m[key])
            elif attr not in _OPTIONAL[cls]:
                raise _bad(f"{cls.TYPE}: missing {key!r}")
        return cls(**kwargs)


class Record:
    """Marker for nested maps inside a frame (see :class:`DeviceInfo`)."""

    def to_map(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError


# --- client → hub -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Auth(Frame):
    """Authenticate as an enrolled device by signing the challenge (SPEC §5.2)."""

    TYPE = "auth"
    v: int
    device: str
    sig: bytes
    #: Capabilities of the client (SPEC §10); unknown ones are ignored.
    caps: tuple[str, ...] | None = None
    WIRE = (
        ("v", "v", _int),
        ("device", "device", _str()),
        ("sig", "sig", _bytes(64)),
        ("caps", "caps", _caps),
    )


@dataclass(frozen=True, slots=True)
class Enroll(Frame):
    """Register a new device with a one-time code (SPEC §5.1)."""

    TYPE = "enroll"
    v: int
    code: str
    sign_pk: bytes
    box_pk: bytes
    label: str
    sig: bytes
    caps: tuple[str, ...] | None = None
    WIRE = (
        ("v", "v", _int),
        ("code", "code", _str()),
        ("sign_pk", "sign_pk", _bytes(32)),
        ("box_pk", "box_pk", _bytes(32)),
        ("label", "label", _str(64, allow_empty=True)),
        ("sig", "sig", _bytes(64)),
        ("caps", "caps", _caps),
    )


@dataclass(frozen=True, slots=True)
class Send(Frame):
    """One message, as one envelope per target device (SPEC §6.2)."""

    TYPE = "send"
    id: bytes
    sender: str
    to: str
    envs: dict[str, bytes]
    WIRE = (
        ("id", "id", _bytes(16)),
        ("sender", "from", _str()),
        ("to", "to", _str()),
        ("envs", "envs", _envs),
    )


@dataclass(frozen=True, slots=True)
class Refusal(Record):
    """One queued message this device refuses, and why (SPEC §6.5):
    ``reason`` is a short lowercase name, e.g. ``sender_unverified``."""

    seq: int
    reason: str

    def to_map(self) -> dict[str, Any]:
        return {"seq": self.seq, "reason": self.reason}


def _refusal(v: Any) -> Refusal:
    if type(v) is not dict:
        raise _bad("expected a refusal map")
    try:
        return Refusal(_int(v["seq"]), _token(32)(v["reason"]))
    except KeyError as exc:
        raise _bad(f"refusal lacks {exc}") from None


@dataclass(frozen=True, slots=True)
class Ack(Frame):
    """The device has durably kept the deliveries ``seqs``, and refuses the
    messages of ``refused`` (SPEC §6.4, §6.5); the hub may forget them all."""

    TYPE = "ack"
    seqs: tuple[int, ...]
    refused: tuple[Refusal, ...] | None = None
    WIRE = (
        ("seqs", "seqs", _list(_int, MAX_ACK_SEQS)),
        ("refused", "refused", _list(_refusal, MAX_ACK_REFUSALS)),
    )


@dataclass(frozen=True, slots=True)
class Lookup(Frame):
    """Find a clinician by user id or RPPS number, with their devices."""

    TYPE = "lookup"
    rid: int
    user: str | None = None
    rpps: str | None = None
    WIRE = (("rid", "rid", _int), ("user", "user", _str()), ("rpps", "rpps", _str(32)))


@dataclass(frozen=True, slots=True)
class LinkCode(Frame):
    """Ask for a one-time code that enrolls another device of the same clinician."""

    TYPE = "link_code"
    rid: int
    WIRE = (("rid", "rid", _int),)


#: Statuses a clinician can set (SPEC §6.7).
STATUSES = ("available", "busy", "on_call", "off_duty")
#: Most users one ``watch`` may name.
MAX_WATCH = 512


def _status(v: Any) -> str:
    if v not in STATUSES:
        raise _bad("unknown status")
    return str(v)


@dataclass(frozen=True, slots=True)
class SetStatus(Frame):
    """Set the clinician's status, shown to their contacts (SPEC §6.7)."""

    TYPE = "set_status"
    rid: int
    status: str
    WIRE = (("rid", "rid", _int), ("status", "status", _status))


@dataclass(frozen=True, slots=True)
class Watch(Frame):
    """Follow the presence of these users; replaces the previous watch list."""

    TYPE = "watch"
    rid: int
    users: tuple[str, ...]
    WIRE = (("rid", "rid", _int), ("users", "users", _list(_str(), MAX_WATCH)))


@dataclass(frozen=True, slots=True)
class Search(Frame):
    """Search the directory of verified clinicians: ``query`` matches a name,
    an RPPS number, a profession or an organisation (SPEC §11.3)."""

    TYPE = "search"
    rid: int
    query: str
    WIRE = (("rid", "rid", _int), ("query", "query", _str(64)))


@dataclass(frozen=True, slots=True)
class Devices(Frame):
    """List this clinician's active devices (SPEC §11.4)."""

    TYPE = "devices"
    rid: int
    WIRE = (("rid", "rid", _int),)


@dataclass(frozen=True, slots=True)
class Revoke(Frame):
    """Revoke one of this clinician's devices, for ever (SPEC §11.4)."""

    TYPE = "revoke"
    rid: int
    device: str
    WIRE = (("rid", "rid", _int), ("device", "device", _str()))


# --- hub → client -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge(Frame):
    """The first frame of a connection. ``authority``: the verification
    authority key the hub is configured with, for a client to check its own
    before it enrolls (SPEC §5.1); ``caps``: the hub's capabilities (§10)."""

    TYPE = "challenge"
    v: int
    nonce: bytes
    authority: bytes | None = None
    caps: tuple[str, ...] | None = None
    WIRE = (
        ("v", "v", _int),
        ("nonce", "nonce", _bytes(32)),
        ("authority", "authority", _bytes(32)),
        ("caps", "caps", _caps),
    )


@dataclass(frozen=True, slots=True)
class Welcome(Frame):
    TYPE = "welcome"
    user: str
    device: str
    WIRE = (("user", "user", _str()), ("device", "device", _str()))


@dataclass(frozen=True, slots=True)
class Accepted(Frame):
    """The message is durably stored; ``dup`` is true for a resend of a stored id."""

    TYPE = "accepted"
    id: bytes
    dup: bool = False
    WIRE = (("id", "id", _bytes(16)), ("dup", "dup", _bool))


@dataclass(frozen=True, slots=True)
class Deliver(Frame):
    TYPE = "deliver"
    seq: int
    id: bytes
    from_user: str
    from_device: str
    ts: int
    env: bytes
    WIRE = (
        ("seq", "seq", _int),
        ("id", "id", _bytes(16)),
        ("from_user", "from_user", _str()),
        ("from_device", "from_device", _str()),
        ("ts", "ts", _int),
        ("env", "env", _bytes()),
    )


@dataclass(frozen=True, slots=True)
class Delivered(Frame):
    """Receipt: message ``id`` reached device ``device`` of user ``user``."""

    TYPE = "delivered"
    seq: int
    id: bytes
    user: str
    device: str
    ts: int
    WIRE = (
        ("seq", "seq", _int),
        ("id", "id", _bytes(16)),
        ("user", "user", _str()),
        ("device", "device", _str()),
        ("ts", "ts", _int),
    )


@dataclass(frozen=True, slots=True)
class Refused(Frame):
    """Receipt: device ``device`` of user ``user`` refused message ``id``
    (``reason``, SPEC §6.5). Sent only to a connection whose ``auth`` named
    the ``refusals`` capability; acked like a ``delivered``."""

    TYPE = "refused"
    seq: int
    id: bytes
    user: str
    device: str
    ts: int
    reason: str
    WIRE = (
        ("seq", "seq", _int),
        ("id", "id", _bytes(16)),
        ("user", "user", _str()),
        ("device", "device", _str()),
        ("ts", "ts", _int),
        ("reason", "reason", _token(32)),
    )


@dataclass(frozen=True, slots=True)
class DeviceInfo(Record):
    device: str
    sign_pk: bytes
    box_pk: bytes

    def to_map(self) -> dict[str, Any]:
        return {"device": self.device, "sign_pk": self.sign_pk, "box_pk": self.box_pk}


def _device_info(v: Any) -> DeviceInfo:
    if type(v) is not dict:
        raise _bad("expected a device map")
    try:
        return DeviceInfo(_str()(v["device"]), _bytes(32)(v["sign_pk"]), _bytes(32)(v["box_pk"]))
    except KeyError as exc:
        raise _bad(f"device map lacks {exc}") from None


@dataclass(frozen=True, slots=True)
class LookupOk(Frame):
    TYPE = "lookup_ok"
    rid: int
    user: str
    name: str
    rpps: str
    profession: str
    organisation: str
    devices: tuple[DeviceInfo, ...]
    #: The authority's attestation (attestation.py); absent if not verified.
    att: bytes | None = None
    WIRE = (
        ("rid", "rid", _int),
        ("user", "user", _str()),
        ("name", "name", _str()),
        ("rpps", "rpps", _str(32)),
        ("profession", "profession", _str(allow_empty=True)),
        ("organisation", "organisation", _str(allow_empty=True)),
        ("devices", "devices", _list(_device_info, MAX_RECIPIENT_DEVICES)),
        ("att", "att", _bytes(max_len=MAX_ATTESTATION_BYTES)),
    )


@dataclass(frozen=True, slots=True)
class SearchOk(Frame):
    """Answer to ``search``: the attestations of the matching verified
    clinicians. A client shows an entry only if its attestation verifies."""

    TYPE = "search_ok"
    rid: int
    atts: tuple[bytes, ...]
    WIRE = (
        ("rid", "rid", _int),
        ("atts", "atts", _list(_bytes(max_len=MAX_ATTESTATION_BYTES), MAX_SEARCH_RESULTS)),
    )


@dataclass(frozen=True, slots=True)
class DeviceEntry(Record):
    """One of the clinician's own devices, as ``devices_ok`` lists them."""

    device: str
    label: str
    created: int
    attested: bool

    def to_map(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "label": self.label,
            "created": self.created,
            "attested": self.attested,
        }


def _device_entry(v: Any) -> DeviceEntry:
    if type(v) is not dict:
        raise _bad("expected a device entry")
    try:
        return DeviceEntry(
            _str()(v["device"]),
            _str(64, allow_empty=True)(v["label"]),
            _int(v["created"]),
            _bool(v["attested"]),
        )
    except KeyError as exc:
        raise _bad(f"device entry lacks {exc}") from None


@dataclass(frozen=True, slots=True)
class DevicesOk(Frame):
    TYPE = "devices_ok"
    rid: int
    devices: tuple[DeviceEntry, ...]
    WIRE = (("rid", "rid", _int), ("devices", "devices", _list(_device_entry, MAX_RECIPIENT_DEVICES)))


@dataclass(frozen=True, slots=True)
class LinkCodeOk(Frame):
    TYPE = "link_code_ok"
    rid: int
    code: str
    expires: int
    WIRE = (("rid", "rid", _int), ("code", "code", _str()), ("expires", "expires", _int))


@dataclass(frozen=True, slots=True)
class Error(Frame):
    """An error (errors.py). ``id``/``rid`` say which request it answers."""

    TYPE = "error"
    code: str
    message: str
    fatal: bool = False
    id: bytes | None = None
    rid: int | None = None
    retry_after: int | None = None
    missing: tuple[str, ...] | None = None
    WIRE = (
        ("code", "code", _str()),
        ("message", "message", _str(512)),
        ("fatal", "fatal", _bool),
        ("id", "id", _bytes(16)),
        ("rid", "rid", _int),
        ("retry_after", "retry_after", _int),
        ("missing", "missing", _list(_str(), MAX_RECIPIENT_DEVICES)),
    )


@dataclass(frozen=True, slots=True)
class Ok(Frame):
    """A request that returns nothing succeeded (``set_status``)."""

    TYPE = "ok"
    rid: int
    WIRE = (("rid", "rid", _int),)


@dataclass(frozen=True, slots=True)
class Presence(Frame):
    """A watched user's status and whether any of their devices is online.
    Pushed on every change; ``watching`` carries the current ones."""

    TYPE = "presence"
    user: str
    status: str
    online: bool
    WIRE = (("user", "user", _str()), ("status", "status", _status), ("online", "online", _bool))


def _presence(v: Any) -> Presence:
    if type(v) is not dict:
        raise _bad("expected a presence map")
    return Presence.from_map(v)


@dataclass(frozen=True, slots=True)
class Watching(Frame):
    """Answer to ``watch``: the presence of every user the hub lets this
    clinician see (contacts and colleagues of the same organisation); users
    left out are unknown or not visible."""

    TYPE = "watching"
    rid: int
    presence: tuple[Presence, ...]
    WIRE = (("rid", "rid", _int), ("presence", "presence", _list(_presence, MAX_WATCH)))


CLIENT_FRAMES: tuple[type[Frame], ...] = (
    Auth,
    Enroll,
    Send,
    Ack,
    Lookup,
    LinkCode,
    SetStatus,
    Watch,
    Search,
    Devices,
    Revoke,
)
SERVER_FRAMES: tuple[type[Frame], ...] = (
    Challenge,
    Welcome,
    Accepted,
    Deliver,
    Delivered,
    Refused,
    LookupOk,
    LinkCodeOk,
    Ok,
    Presence,
    Watching,
    SearchOk,
    DevicesOk,
    Error,
)
_BY_TYPE: dict[str, type[Frame]] = {cls.TYPE: cls for cls in CLIENT_FRAMES + SERVER_FRAMES}
_OPTIONAL: dict[type[Frame], frozenset[str]] = {
    cls: frozenset(f.name for f in fields(cls) if f.default is None) for cls in _BY_TYPE.values()
}

_packer = msgpack.Packer(use_bin_type=True)

#: The largest ``ack`` an honest client can send: 1024 seqs and 64 refusals,
#: each at its widest (12,762 bytes). The hub refuses a larger one as
#: ``malformed_frame``: the extra room could only carry keys it ignores.
MAX_ACK_BYTES = len(
    _packer.pack(
        {
            "t": "ack",
            "seqs": [2**63 - 1] * MAX_ACK_SEQS,
            "refused": [{"seq": 2**63 - 1, "reason": "x" * 32}] * MAX_ACK_REFUSALS,
        }
    )
)


def encode(frame: Frame) -> bytes:
    """Serialize a frame to its canonical msgpack bytes."""
    packed: bytes = _packer.pack(frame.to_map())
    return packed


def decode(data: bytes, allowed: tuple[type[Frame], ...] | None = None) -> Frame:
    """Parse one frame. ``allowed`` restricts the types a peer may send.

    Raises MalformedFrame or UnknownFrameType, nothing else.
    """
    try:
        m = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise MalformedFrame(f"not msgpack: {type(exc).__name__}") from None
    if type(m) is not dict:
        raise MalformedFrame("frame is not a map")
    kind = m.get("t")
    if type(kind) is not str:
        raise MalformedFrame("frame has no type")
    cls = _BY_TYPE.get(kind)
    if cls is None or (allowed is not None and cls not in allowed):
        raise UnknownFrameType(f"type {kind[:32]!r}")
    try:
        return cls.from_map(m)
    except MalformedFrame:
        raise
    except (TypeError, ValueError) as exc:  # e.g. a checker met an unhashable
        raise MalformedFrame(str(exc)) from None
