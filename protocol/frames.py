"""Wire frames of protocol v1 and their codec (SPEC.md §3, §4).

Every WebSocket message is one binary frame: a msgpack map whose key ``"t"``
names the frame type. Each type is a small frozen dataclass that checks its
own fields when decoded, so that the code past :func:`decode` only ever sees
well-typed frames.

``decode`` raises :class:`~protocol.errors.MalformedFrame` for anything that
is not a msgpack map of the right shape and
:class:`~protocol.errors.UnknownFrameType` for an unknown ``"t"``; it never
raises anything else. ``encode`` is its exact inverse: ``decode(encode(f)) ==
f`` and the bytes are canonical (keys in declaration order), which is what
``vectors/frames.json`` pins down.

This module is the one to import from. The definitions live in three
modules it gathers: :mod:`protocol.frame_base` (limits, field checkers, the
:class:`Frame` base class), :mod:`protocol.client_frames` (client → hub,
SPEC §3.3) and :mod:`protocol.hub_frames` (hub → client, SPEC §3.4); the
escalation policy nested in ``role_ok`` is :class:`protocol.oncall.Policy`.
"""

from __future__ import annotations

import msgpack

from .attachments import HTTP_PART_MAX, MAX_ATTACHMENTS_WIRE, PIECE_MAX
from .client_frames import (
    CLIENT_FRAMES,
    Ack,
    Acknowledge,
    Auth,
    BlobBegin,
    BlobEnd,
    BlobLink,
    BlobPut,
    Devices,
    Enroll,
    LinkCode,
    Lookup,
    Ping,
    Recall,
    Refusal,
    Revoke,
    RoleGet,
    RoleLeave,
    RoleSearch,
    RoleTake,
    Search,
    Send,
    SetStatus,
    TeamChain,
    TeamChange,
    Teams,
    Urgent,
    Watch,
)
from .errors import MalformedFrame, UnknownFrameType
from .frame_base import (
    CAP_BLOBS,
    CAP_ONCALL,
    CAP_PING,
    CAP_REFUSALS,
    CAP_TEAMS,
    HUB_CAPS,
    MAX_ACK_REFUSALS,
    MAX_ACK_SEQS,
    MAX_ATTESTATION_BYTES,
    MAX_CAPS,
    MAX_FRAME_BYTES,
    MAX_ID_CHARS,
    MAX_LIFESPAN_MS,
    MAX_RECIPIENT_DEVICES,
    MAX_RECORD_BYTES,
    MAX_ROLE_HOLDERS,
    MAX_ROLE_RESULTS,
    MAX_SEARCH_RESULTS,
    MAX_TEAM_CHAIN_BYTES,
    MAX_TEAMS_LIST,
    MAX_WATCH,
    MAX_WRAPS,
    MIN_LIFESPAN_MS,
    MIN_SEARCH_CHARS,
    PROTOCOL_VERSION,
    STATUSES,
    SUBPROTOCOL,
    Frame,
    Record,
    register,
    unique_map,
)
from .hub_frames import (
    BLOB_URL_PREFIX,
    SERVER_FRAMES,
    URGENT_STATES,
    Accepted,
    AcknowledgeOk,
    BlobLinkOk,
    BlobOk,
    ChainEntry,
    Challenge,
    Deliver,
    Delivered,
    DeviceEntry,
    DeviceInfo,
    DevicesOk,
    Error,
    LinkCodeOk,
    LookupOk,
    Ok,
    Presence,
    RecallOk,
    Refused,
    RoleChanged,
    RoleInfo,
    RoleOk,
    RoleSearchOk,
    SearchOk,
    TeamChainOk,
    TeamChanged,
    TeamHead,
    TeamOk,
    TeamsOk,
    UrgentReminder,
    UrgentStatus,
    Watching,
    Welcome,
)
from .oncall import Policy, Step

__all__ = [
    "BLOB_URL_PREFIX",
    "CAP_BLOBS",
    "CAP_ONCALL",
    "CAP_PING",
    "CAP_REFUSALS",
    "CAP_TEAMS",
    "CLIENT_FRAMES",
    "HTTP_PART_MAX",
    "HUB_CAPS",
    "MAX_ACK_BYTES",
    "MAX_ACK_REFUSALS",
    "MAX_ACK_SEQS",
    "MAX_ATTACHMENTS_WIRE",
    "MAX_ATTESTATION_BYTES",
    "MAX_CAPS",
    "MAX_FRAME_BYTES",
    "MAX_ID_CHARS",
    "MAX_LIFESPAN_MS",
    "MAX_RECIPIENT_DEVICES",
    "MAX_RECORD_BYTES",
    "MAX_ROLE_HOLDERS",
    "MAX_ROLE_RESULTS",
    "MAX_SEARCH_RESULTS",
    "MAX_TEAMS_LIST",
    "MAX_TEAM_CHAIN_BYTES",
    "MAX_WATCH",
    "MAX_WRAPS",
    "MIN_LIFESPAN_MS",
    "MIN_SEARCH_CHARS",
    "PIECE_MAX",
    "PROTOCOL_VERSION",
    "SERVER_FRAMES",
    "STATUSES",
    "SUBPROTOCOL",
    "URGENT_STATES",
    "Accepted",
    "Ack",
    "Acknowledge",
    "AcknowledgeOk",
    "Auth",
    "BlobBegin",
    "BlobEnd",
    "BlobLink",
    "BlobLinkOk",
    "BlobOk",
    "BlobPut",
    "ChainEntry",
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
    "Ping",
    "Policy",
    "Presence",
    "Recall",
    "RecallOk",
    "Record",
    "Refusal",
    "Refused",
    "Revoke",
    "RoleChanged",
    "RoleGet",
    "RoleInfo",
    "RoleLeave",
    "RoleOk",
    "RoleSearch",
    "RoleSearchOk",
    "RoleTake",
    "Search",
    "SearchOk",
    "Send",
    "SetStatus",
    "Step",
    "TeamChain",
    "TeamChainOk",
    "TeamChange",
    "TeamChanged",
    "TeamHead",
    "TeamOk",
    "Teams",
    "TeamsOk",
    "Urgent",
    "UrgentReminder",
    "UrgentStatus",
    "Watch",
    "Watching",
    "Welcome",
    "decode",
    "encode",
]

_BY_TYPE: dict[str, type[Frame]] = register(CLIENT_FRAMES + SERVER_FRAMES)

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
        m = msgpack.unpackb(data, raw=False, strict_map_key=True, object_pairs_hook=unique_map)
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
