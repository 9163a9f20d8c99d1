"""Client → hub frames of protocol v1 (SPEC.md §3.3).

Each type is a frozen dataclass that checks its fields when decoded
(:mod:`protocol.frame_base`). Import them from :mod:`protocol.frames`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .attachments import PIECE_MAX
from .frame_base import (
    MAX_ACK_REFUSALS,
    MAX_ACK_SEQS,
    MAX_FRAME_BYTES,
    MAX_RECIPIENT_DEVICES,
    MAX_RECORD_BYTES,
    MAX_WATCH,
    F,
    Frame,
    Record,
    check_blob_id,
    check_blob_ids,
    check_blob_size,
    check_bool,
    check_bytes,
    check_caps,
    check_int,
    check_lifespan,
    check_list,
    check_role_id,
    check_status,
    check_str,
    check_team_id,
    check_token,
    check_wraps,
    malformed,
)

__all__ = [
    "CLIENT_FRAMES",
    "Ack",
    "Acknowledge",
    "Auth",
    "BlobBegin",
    "BlobEnd",
    "BlobLink",
    "BlobPut",
    "Devices",
    "Enroll",
    "LinkCode",
    "Lookup",
    "Ping",
    "Recall",
    "Refusal",
    "Revoke",
    "RoleGet",
    "RoleLeave",
    "RoleSearch",
    "RoleTake",
    "Search",
    "Send",
    "SetStatus",
    "TeamChain",
    "TeamChange",
    "Teams",
    "Urgent",
    "Watch",
]


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
        ("v", "v", check_int),
        ("device", "device", check_str()),
        ("sig", "sig", check_bytes(64)),
        ("caps", "caps", check_caps),
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
        ("v", "v", check_int),
        ("code", "code", check_str()),
        ("sign_pk", "sign_pk", check_bytes(32)),
        ("box_pk", "box_pk", check_bytes(32)),
        ("label", "label", check_str(64, allow_empty=True)),
        ("sig", "sig", check_bytes(64)),
        ("caps", "caps", check_caps),
    )


@dataclass(frozen=True, slots=True)
class Urgent(Record):
    """``send.urgent`` (SPEC §14.4): the message escalates until
    acknowledged, under the policy that applies, whose ``interval`` and
    ``final`` (ms) it may override within the hub's bounds. ``Urgent()``
    (an empty map) takes the policy as it is."""

    interval: int | None = None
    final: int | None = None

    def to_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {}
        if self.interval is not None:
            m["interval"] = self.interval
        if self.final is not None:
            m["final"] = self.final
        return m


def _urgent(v: Any) -> Urgent:
    if type(v) is not dict:
        raise malformed("expected an urgent map")
    return Urgent(
        check_int(v["interval"]) if "interval" in v else None,
        check_int(v["final"]) if "final" in v else None,
    )


@dataclass(frozen=True, slots=True)
class Send(Frame):
    """One message, as one envelope per target device (SPEC §6.2); or, with
    ``body``, a sealed body and one key wrap per target device (SPEC §13.3,
    to a team: ``head`` is then the sender's head of the team's chain).
    ``ttl``: the message's lifespan in ms (SPEC §13.6). ``to`` may be a
    role id, and ``urgent`` makes the message escalate (SPEC §14.4).
    ``blobs``: the uploaded blobs its attachments name (SPEC §16.4); only
    with a sealed ``body`` (without one: malformed_frame)."""

    TYPE = "send"
    id: bytes
    sender: str
    to: str
    envs: dict[str, bytes]
    body: bytes | None = None
    head: bytes | None = None
    ttl: int | None = None
    urgent: Urgent | None = None
    blobs: tuple[str, ...] | None = None
    WIRE = (
        ("id", "id", check_bytes(16)),
        ("sender", "from", check_str()),
        ("to", "to", check_str()),
        # Up to MAX_WRAPS here; from_map holds a send without body to 64.
        ("envs", "envs", check_wraps),
        ("body", "body", check_bytes(max_len=MAX_FRAME_BYTES)),
        ("head", "head", check_bytes(32)),
        ("ttl", "ttl", check_lifespan),
        ("urgent", "urgent", _urgent),
        ("blobs", "blobs", check_blob_ids),
    )

    @classmethod
    def from_map(cls: type[F], m: dict[str, Any]) -> F:
        # super(Send, cls): slots=True rebuilds the class, so the zero-argument
        # form would name the class before the rebuild.
        frame = super(Send, cls).from_map(m)
        # Decoded: so m["envs"] is a map of 1 to MAX_WRAPS entries.
        if "body" not in m and len(m["envs"]) > MAX_RECIPIENT_DEVICES:
            raise malformed("more than 64 envelopes without a sealed body")
        if "blobs" in m and "body" not in m:
            # Attachments always travel in a sealed body (SPEC §16.3): the
            # blobs are linked to the one body every target reads.
            raise malformed("blobs without a sealed body")
        return frame


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
        raise malformed("expected a refusal map")
    try:
        return Refusal(check_int(v["seq"]), check_token(32)(v["reason"]))
    except KeyError as exc:
        raise malformed(f"refusal lacks {exc}") from None


@dataclass(frozen=True, slots=True)
class Ack(Frame):
    """The device has durably kept the deliveries ``seqs``, and refuses the
    messages of ``refused`` (SPEC §6.4, §6.5); the hub may forget them all."""

    TYPE = "ack"
    seqs: tuple[int, ...]
    refused: tuple[Refusal, ...] | None = None
    WIRE = (
        ("seqs", "seqs", check_list(check_int, MAX_ACK_SEQS)),
        ("refused", "refused", check_list(_refusal, MAX_ACK_REFUSALS)),
    )


@dataclass(frozen=True, slots=True)
class Lookup(Frame):
    """Find a clinician by user id or RPPS number, with their devices."""

    TYPE = "lookup"
    rid: int
    user: str | None = None
    rpps: str | None = None
    WIRE = (("rid", "rid", check_int), ("user", "user", check_str()), ("rpps", "rpps", check_str(32)))


@dataclass(frozen=True, slots=True)
class LinkCode(Frame):
    """Ask for a one-time code that enrolls another device of the same clinician."""

    TYPE = "link_code"
    rid: int
    WIRE = (("rid", "rid", check_int),)


@dataclass(frozen=True, slots=True)
class SetStatus(Frame):
    """Set the clinician's status, shown to their contacts (SPEC §6.7)."""

    TYPE = "set_status"
    rid: int
    status: str
    WIRE = (("rid", "rid", check_int), ("status", "status", check_status))


@dataclass(frozen=True, slots=True)
class Watch(Frame):
    """Follow the presence of these users; replaces the previous watch list."""

    TYPE = "watch"
    rid: int
    users: tuple[str, ...]
    WIRE = (("rid", "rid", check_int), ("users", "users", check_list(check_str(), MAX_WATCH)))


@dataclass(frozen=True, slots=True)
class Search(Frame):
    """Search the directory of verified clinicians: ``query`` matches a name,
    an RPPS number, a profession or an organisation (SPEC §11.3)."""

    TYPE = "search"
    rid: int
    query: str
    WIRE = (("rid", "rid", check_int), ("query", "query", check_str(64)))


@dataclass(frozen=True, slots=True)
class Devices(Frame):
    """List this clinician's active devices (SPEC §11.4)."""

    TYPE = "devices"
    rid: int
    WIRE = (("rid", "rid", check_int),)


@dataclass(frozen=True, slots=True)
class Revoke(Frame):
    """Revoke one of this clinician's devices, for ever (SPEC §11.4)."""

    TYPE = "revoke"
    rid: int
    device: str
    WIRE = (("rid", "rid", check_int), ("device", "device", check_str()))


@dataclass(frozen=True, slots=True)
class Ping(Frame):
    """Is the hub still there? Answered ``ok`` (SPEC §4.1, revision 8): a
    client that has heard nothing for a while sends it, and one that gets
    no answer either takes the connection for dead."""

    TYPE = "ping"
    rid: int
    WIRE = (("rid", "rid", check_int),)


@dataclass(frozen=True, slots=True)
class TeamChange(Frame):
    """Add a signed record to a team's chain (SPEC §13.4): its creation, or
    the change following the hub's head. Answered by ``team_ok``."""

    TYPE = "team_change"
    rid: int
    team: str
    rec: bytes
    sig: bytes
    WIRE = (
        ("rid", "rid", check_int),
        ("team", "team", check_team_id),
        ("rec", "rec", check_bytes(max_len=MAX_RECORD_BYTES)),
        ("sig", "sig", check_bytes(64)),
    )


@dataclass(frozen=True, slots=True)
class Teams(Frame):
    """List the teams this user is a member of, with the hub's heads."""

    TYPE = "teams"
    rid: int
    WIRE = (("rid", "rid", check_int),)


@dataclass(frozen=True, slots=True)
class TeamChain(Frame):
    """Fetch a team's records from ``seq`` = ``from_seq`` on (wire key ``from``)."""

    TYPE = "team_chain"
    rid: int
    team: str
    from_seq: int
    WIRE = (("rid", "rid", check_int), ("team", "team", check_team_id), ("from_seq", "from", check_int))


@dataclass(frozen=True, slots=True)
class Recall(Frame):
    """Delete this user's rows of message ``id`` that no device acked yet
    (SPEC §13.6). Answered by ``recall_ok``."""

    TYPE = "recall"
    rid: int
    id: bytes
    WIRE = (("rid", "rid", check_int), ("id", "id", check_bytes(16)))


# --- revision 4: on-call roles and urgent messages (SPEC §14.3) ---------------------


@dataclass(frozen=True, slots=True)
class RoleSearch(Frame):
    """Find roles whose name or organisation contains ``query``; with
    ``mine``, the roles this user holds now. Answered by ``role_search_ok``."""

    TYPE = "role_search"
    rid: int
    query: str
    #: Optional on the wire (absent: false).
    mine: bool | None = None
    WIRE = (
        ("rid", "rid", check_int),
        ("query", "query", check_str(64, allow_empty=True)),
        ("mine", "mine", check_bool),
    )


@dataclass(frozen=True, slots=True)
class RoleGet(Frame):
    """A role, its holders now and its effective policy (``role_ok``)."""

    TYPE = "role_get"
    rid: int
    role: str
    WIRE = (("rid", "rid", check_int), ("role", "role", check_role_id))


@dataclass(frozen=True, slots=True)
class RoleTake(Frame):
    """Take a role: a handover (the taker becomes its only manual holder),
    or with ``join`` true, join its holders. Answered by ``role_ok``."""

    TYPE = "role_take"
    rid: int
    role: str
    #: Optional on the wire (absent: false, a handover).
    join: bool | None = None
    WIRE = (("rid", "rid", check_int), ("role", "role", check_role_id), ("join", "join", check_bool))


@dataclass(frozen=True, slots=True)
class RoleLeave(Frame):
    """Stop holding a role manually (a scheduled shift is not affected).
    Answered by ``role_ok``."""

    TYPE = "role_leave"
    rid: int
    role: str
    WIRE = (("rid", "rid", check_int), ("role", "role", check_role_id))


@dataclass(frozen=True, slots=True)
class Acknowledge(Frame):
    """Acknowledge urgent message ``id`` of user ``sender``, which this
    user received (SPEC §14.7). Answered by ``acknowledge_ok``."""

    TYPE = "acknowledge"
    rid: int
    id: bytes
    sender: str
    WIRE = (("rid", "rid", check_int), ("id", "id", check_bytes(16)), ("sender", "sender", check_str()))


# --- revision 6: encrypted attachments (SPEC §16.4) -----------------------------------


def _check_piece(v: Any) -> bytes:
    if type(v) is not bytes or not 0 < len(v) <= PIECE_MAX:
        raise malformed("expected 1 to PIECE_MAX bytes")
    return v


@dataclass(frozen=True, slots=True)
class BlobBegin(Frame):
    """Start uploading a blob of ``size`` ciphertext bytes; or, with
    ``blob``, ask how much of that upload the hub holds, to resume it.
    Answered by ``blob_ok``."""

    TYPE = "blob_begin"
    rid: int
    size: int
    blob: str | None = None
    WIRE = (("rid", "rid", check_int), ("size", "size", check_blob_size), ("blob", "blob", check_blob_id))


@dataclass(frozen=True, slots=True)
class BlobPut(Frame):
    """Bytes ``off`` to ``off + len(data)`` of an upload; ``off`` is what
    the hub holds (the last ``blob_ok.have``). Answered by ``blob_ok``."""

    TYPE = "blob_put"
    rid: int
    blob: str
    off: int
    data: bytes
    WIRE = (
        ("rid", "rid", check_int),
        ("blob", "blob", check_blob_id),
        ("off", "off", check_int),
        ("data", "data", _check_piece),
    )


@dataclass(frozen=True, slots=True)
class BlobEnd(Frame):
    """The upload is whole: the hub makes it durable, and a ``send`` may
    name it. Answered by ``blob_ok`` (``have`` = size)."""

    TYPE = "blob_end"
    rid: int
    blob: str
    WIRE = (("rid", "rid", check_int), ("blob", "blob", check_blob_id))


@dataclass(frozen=True, slots=True)
class BlobLink(Frame):
    """A short-lived download URL for a blob this device may read.
    Answered by ``blob_link_ok``."""

    TYPE = "blob_link"
    rid: int
    blob: str
    WIRE = (("rid", "rid", check_int), ("blob", "blob", check_blob_id))


#: Every client → hub frame type, in the order of SPEC §3.3 (then §13.4, §14.3, §16.4).
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
    TeamChange,
    Teams,
    TeamChain,
    Recall,
    RoleSearch,
    RoleGet,
    RoleTake,
    RoleLeave,
    Acknowledge,
    BlobBegin,
    BlobPut,
    BlobEnd,
    BlobLink,
    Ping,
)
