"""Hub → client frames of protocol v1 (SPEC.md §3.4).

Each type is a frozen dataclass that checks its fields when decoded
(:mod:`protocol.frame_base`). Import them from :mod:`protocol.frames`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .frame_base import (
    MAX_ATTESTATION_BYTES,
    MAX_FRAME_BYTES,
    MAX_RECIPIENT_DEVICES,
    MAX_RECORD_BYTES,
    MAX_ROLE_HOLDERS,
    MAX_ROLE_RESULTS,
    MAX_ROTATION_BYTES,
    MAX_ROTATIONS,
    MAX_SEARCH_RESULTS,
    MAX_TEAM_CHAIN_BYTES,
    MAX_TEAMS_LIST,
    MAX_WATCH,
    MAX_WRAPS,
    Frame,
    Record,
    check_blob_id,
    check_bool,
    check_bytes,
    check_caps,
    check_int,
    check_list,
    check_role_id,
    check_status,
    check_str,
    check_team_id,
    check_token,
    malformed,
)
from .oncall import Policy

__all__ = [
    "BLOB_URL_PREFIX",
    "SERVER_FRAMES",
    "URGENT_STATES",
    "Accepted",
    "AcknowledgeOk",
    "BlobLinkOk",
    "BlobOk",
    "ChainEntry",
    "Challenge",
    "Deliver",
    "Delivered",
    "DeviceEntry",
    "DeviceInfo",
    "DevicesOk",
    "Error",
    "LinkCodeOk",
    "LookupOk",
    "Ok",
    "Presence",
    "RecallOk",
    "Refused",
    "RoleChanged",
    "RoleInfo",
    "RoleOk",
    "RoleSearchOk",
    "SearchOk",
    "TeamChainOk",
    "TeamChanged",
    "TeamHead",
    "TeamOk",
    "TeamsOk",
    "UrgentReminder",
    "UrgentStatus",
    "Watching",
    "Welcome",
]


@dataclass(frozen=True, slots=True)
class Challenge(Frame):
    """The first frame of a connection. ``authority``: the verification
    authority key the hub is configured with, for a client to check its own
    before it enrolls (SPEC §5.1); ``caps``: the hub's capabilities (§10);
    ``rotations``: the authority's key rotation statements, oldest first,
    ending at ``authority`` (SPEC §15; checked by the client, not here)."""

    TYPE = "challenge"
    v: int
    nonce: bytes
    authority: bytes | None = None
    caps: tuple[str, ...] | None = None
    rotations: tuple[bytes, ...] | None = None
    WIRE = (
        ("v", "v", check_int),
        ("nonce", "nonce", check_bytes(32)),
        ("authority", "authority", check_bytes(32)),
        ("caps", "caps", check_caps),
        ("rotations", "rotations", check_list(check_bytes(max_len=MAX_ROTATION_BYTES), MAX_ROTATIONS)),
    )


@dataclass(frozen=True, slots=True)
class Welcome(Frame):
    """The device is authenticated. To a client that named ``blobs``
    (SPEC §16.6): ``att_max``, the most attachments one message may carry
    here, and ``blob_max``, the largest file (plaintext bytes)."""

    TYPE = "welcome"
    user: str
    device: str
    att_max: int | None = None
    blob_max: int | None = None
    WIRE = (
        ("user", "user", check_str()),
        ("device", "device", check_str()),
        ("att_max", "att_max", check_int),
        ("blob_max", "blob_max", check_int),
    )


@dataclass(frozen=True, slots=True)
class Accepted(Frame):
    """The message is durably stored; ``dup`` is true for a resend of a stored id."""

    TYPE = "accepted"
    id: bytes
    dup: bool = False
    WIRE = (("id", "id", check_bytes(16)), ("dup", "dup", check_bool))


def _check_step(v: Any) -> int:
    if type(v) is not int or not 1 <= v <= 2**63 - 1:
        raise malformed("expected a step >= 1")
    return v


@dataclass(frozen=True, slots=True)
class Deliver(Frame):
    """A queued message for this device: an envelope, or a sealed body and
    the wrap of its key (with ``team`` for a team message)."""

    TYPE = "deliver"
    seq: int
    id: bytes
    from_user: str
    from_device: str
    ts: int
    env: bytes
    #: A sealed body (SPEC §13.3): ``env`` is then the wrap of its key.
    body: bytes | None = None
    #: The team a team message was sent to.
    team: str | None = None
    #: The role a role message was sent to, also on its backups' copies (SPEC §14.5).
    role: str | None = None
    #: True for an urgent message (a hint: the plaintext's ``urgent`` decides);
    #: never False on the wire, so False is kept as None.
    urgent: bool | None = None
    #: This copy was released at escalation step ``step`` (≥ 1); None for primary rows.
    step: int | None = None
    WIRE = (
        ("seq", "seq", check_int),
        ("id", "id", check_bytes(16)),
        ("from_user", "from_user", check_str()),
        ("from_device", "from_device", check_str()),
        ("ts", "ts", check_int),
        ("env", "env", check_bytes()),
        ("body", "body", check_bytes(max_len=MAX_FRAME_BYTES)),
        ("team", "team", check_team_id),
        ("role", "role", check_role_id),
        ("urgent", "urgent", check_bool),
        ("step", "step", _check_step),
    )

    def __post_init__(self) -> None:
        if self.urgent is False:
            object.__setattr__(self, "urgent", None)


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
        ("seq", "seq", check_int),
        ("id", "id", check_bytes(16)),
        ("user", "user", check_str()),
        ("device", "device", check_str()),
        ("ts", "ts", check_int),
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
        ("seq", "seq", check_int),
        ("id", "id", check_bytes(16)),
        ("user", "user", check_str()),
        ("device", "device", check_str()),
        ("ts", "ts", check_int),
        ("reason", "reason", check_token(32)),
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
        raise malformed("expected a device map")
    try:
        return DeviceInfo(
            check_str()(v["device"]), check_bytes(32)(v["sign_pk"]), check_bytes(32)(v["box_pk"])
        )
    except KeyError as exc:
        raise malformed(f"device map lacks {exc}") from None


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
    #: ``False`` only when the user is a service that does not accept
    #: replies (SPEC §17.2); the hub omits it (``None``) otherwise. A hint:
    #: the hub refuses such a ``send`` with ``replies_refused`` anyway.
    replies: bool | None = None
    WIRE = (
        ("rid", "rid", check_int),
        ("user", "user", check_str()),
        ("name", "name", check_str()),
        ("rpps", "rpps", check_str(32)),
        ("profession", "profession", check_str(allow_empty=True)),
        ("organisation", "organisation", check_str(allow_empty=True)),
        ("devices", "devices", check_list(_device_info, MAX_RECIPIENT_DEVICES)),
        ("att", "att", check_bytes(max_len=MAX_ATTESTATION_BYTES)),
        ("replies", "replies", check_bool),
    )


@dataclass(frozen=True, slots=True)
class SearchOk(Frame):
    """Answer to ``search``: the attestations of the matching verified
    clinicians. A client shows an entry only if its attestation verifies."""

    TYPE = "search_ok"
    rid: int
    atts: tuple[bytes, ...]
    WIRE = (
        ("rid", "rid", check_int),
        ("atts", "atts", check_list(check_bytes(max_len=MAX_ATTESTATION_BYTES), MAX_SEARCH_RESULTS)),
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
        raise malformed("expected a device entry")
    try:
        return DeviceEntry(
            check_str()(v["device"]),
            check_str(64, allow_empty=True)(v["label"]),
            check_int(v["created"]),
            check_bool(v["attested"]),
        )
    except KeyError as exc:
        raise malformed(f"device entry lacks {exc}") from None


@dataclass(frozen=True, slots=True)
class DevicesOk(Frame):
    TYPE = "devices_ok"
    rid: int
    devices: tuple[DeviceEntry, ...]
    WIRE = (
        ("rid", "rid", check_int),
        ("devices", "devices", check_list(_device_entry, MAX_RECIPIENT_DEVICES)),
    )


@dataclass(frozen=True, slots=True)
class LinkCodeOk(Frame):
    TYPE = "link_code_ok"
    rid: int
    code: str
    expires: int
    WIRE = (("rid", "rid", check_int), ("code", "code", check_str()), ("expires", "expires", check_int))


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
    #: The role a ``role_vacant`` is about (SPEC §14.9).
    role: str | None = None
    WIRE = (
        ("code", "code", check_str()),
        ("message", "message", check_str(512)),
        ("fatal", "fatal", check_bool),
        ("id", "id", check_bytes(16)),
        ("rid", "rid", check_int),
        ("retry_after", "retry_after", check_int),
        ("missing", "missing", check_list(check_str(), MAX_WRAPS)),
        ("role", "role", check_role_id),
    )


@dataclass(frozen=True, slots=True)
class Ok(Frame):
    """A request that returns nothing succeeded (``set_status``)."""

    TYPE = "ok"
    rid: int
    WIRE = (("rid", "rid", check_int),)


@dataclass(frozen=True, slots=True)
class Presence(Frame):
    """A watched user's status and whether any of their devices is online.
    Pushed on every change; ``watching`` carries the current ones."""

    TYPE = "presence"
    user: str
    status: str
    online: bool
    WIRE = (
        ("user", "user", check_str()),
        ("status", "status", check_status),
        ("online", "online", check_bool),
    )


def _presence(v: Any) -> Presence:
    if type(v) is not dict:
        raise malformed("expected a presence map")
    return Presence.from_map(v)


@dataclass(frozen=True, slots=True)
class Watching(Frame):
    """Answer to ``watch``: the presence of every user the hub lets this
    clinician see (contacts and colleagues of the same organisation); users
    left out are unknown or not visible."""

    TYPE = "watching"
    rid: int
    presence: tuple[Presence, ...]
    WIRE = (("rid", "rid", check_int), ("presence", "presence", check_list(_presence, MAX_WATCH)))


# --- revision 3: care teams (SPEC §13.4) ------------------------------------------


@dataclass(frozen=True, slots=True)
class TeamOk(Frame):
    """Answer to ``team_change``: the record is stored; ``seq`` is the
    chain's length and ``head`` its new head."""

    TYPE = "team_ok"
    rid: int
    team: str
    seq: int
    head: bytes
    WIRE = (
        ("rid", "rid", check_int),
        ("team", "team", check_team_id),
        ("seq", "seq", check_int),
        ("head", "head", check_bytes(32)),
    )


@dataclass(frozen=True, slots=True)
class TeamHead(Record):
    """One team of ``teams_ok``: its id, the hub's chain length and head."""

    team: str
    seq: int
    head: bytes

    def to_map(self) -> dict[str, Any]:
        return {"team": self.team, "seq": self.seq, "head": self.head}


def _team_head(v: Any) -> TeamHead:
    if type(v) is not dict:
        raise malformed("expected a team map")
    try:
        return TeamHead(check_team_id(v["team"]), check_int(v["seq"]), check_bytes(32)(v["head"]))
    except KeyError as exc:
        raise malformed(f"team map lacks {exc}") from None


@dataclass(frozen=True, slots=True)
class TeamsOk(Frame):
    """Answer to ``teams``: the teams the user is a member of."""

    TYPE = "teams_ok"
    rid: int
    teams: tuple[TeamHead, ...]
    WIRE = (("rid", "rid", check_int), ("teams", "teams", check_list(_team_head, MAX_TEAMS_LIST)))


@dataclass(frozen=True, slots=True)
class ChainEntry(Record):
    """One signed record of ``team_chain_ok`` (``teams.SignedRecord`` on the wire)."""

    rec: bytes
    sig: bytes

    def to_map(self) -> dict[str, Any]:
        return {"rec": self.rec, "sig": self.sig}


def _chain_entry(v: Any) -> ChainEntry:
    if type(v) is not dict:
        raise malformed("expected a record map")
    try:
        return ChainEntry(check_bytes(max_len=MAX_RECORD_BYTES)(v["rec"]), check_bytes(64)(v["sig"]))
    except KeyError as exc:
        raise malformed(f"record map lacks {exc}") from None


#: Most records one ``team_chain_ok`` may list: 48 KiB of the smallest
#: records (about 100 bytes each, with their signatures) and then some.
_MAX_CHAIN_ENTRIES = MAX_TEAM_CHAIN_BYTES // 64


@dataclass(frozen=True, slots=True)
class TeamChainOk(Frame):
    """Answer to ``team_chain``: records from ``seq`` = ``from`` on, in
    order; ``more`` when others follow (ask again from the next seq)."""

    TYPE = "team_chain_ok"
    rid: int
    team: str
    recs: tuple[ChainEntry, ...]
    more: bool
    WIRE = (
        ("rid", "rid", check_int),
        ("team", "team", check_team_id),
        ("recs", "recs", check_list(_chain_entry, _MAX_CHAIN_ENTRIES)),
        ("more", "more", check_bool),
    )


@dataclass(frozen=True, slots=True)
class RecallOk(Frame):
    """Answer to ``recall``: the hub deleted ``removed`` undelivered rows."""

    TYPE = "recall_ok"
    rid: int
    id: bytes
    removed: int
    WIRE = (("rid", "rid", check_int), ("id", "id", check_bytes(16)), ("removed", "removed", check_int))


@dataclass(frozen=True, slots=True)
class TeamChanged(Frame):
    """Pushed to the connections of a team's members (and of a user just
    removed) that named ``teams`` when a record is added: not queued, not
    acked. Fetch the new records with ``team_chain``."""

    TYPE = "team_changed"
    team: str
    seq: int
    head: bytes
    WIRE = (
        ("team", "team", check_team_id),
        ("seq", "seq", check_int),
        ("head", "head", check_bytes(32)),
    )


# --- revision 4: on-call roles and urgent messages (SPEC §14.3, §14.6) -------------

#: The states an ``urgent_status`` reports.
URGENT_STATES = ("escalated", "acknowledged", "unacknowledged")


def _policy(v: Any) -> Policy:
    return Policy.from_map(v)


@dataclass(frozen=True, slots=True)
class RoleInfo(Record):
    """A role as ``role_ok`` and ``role_search_ok`` show it: its holders now
    (sorted user ids) and its effective policy, each step with the holders
    of its target now."""

    role: str
    name: str
    org: str
    reserved: bool
    holders: tuple[str, ...]
    policy: Policy

    def to_map(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "name": self.name,
            "org": self.org,
            "reserved": self.reserved,
            "holders": list(self.holders),
            "policy": self.policy.to_map(),
        }


_check_holders = check_list(check_str(), MAX_ROLE_HOLDERS)


def _role_info(v: Any) -> RoleInfo:
    if type(v) is not dict:
        raise malformed("expected a role map")
    try:
        return RoleInfo(
            check_role_id(v["role"]),
            check_str(64)(v["name"]),
            check_str(128, allow_empty=True)(v["org"]),
            check_bool(v["reserved"]),
            _check_holders(v["holders"]),
            _policy(v["policy"]),
        )
    except KeyError as exc:
        raise malformed(f"role map lacks {exc}") from None


@dataclass(frozen=True, slots=True)
class RoleSearchOk(Frame):
    """Answer to ``role_search``: at most 20 roles."""

    TYPE = "role_search_ok"
    rid: int
    roles: tuple[RoleInfo, ...]
    WIRE = (("rid", "rid", check_int), ("roles", "roles", check_list(_role_info, MAX_ROLE_RESULTS)))


@dataclass(frozen=True, slots=True)
class RoleOk(Frame):
    """Answer to ``role_get``, ``role_take`` and ``role_leave``: the role
    as it is now (after the take or the leave)."""

    TYPE = "role_ok"
    rid: int
    info: RoleInfo
    WIRE = (("rid", "rid", check_int), ("info", "info", _role_info))


@dataclass(frozen=True, slots=True)
class AcknowledgeOk(Frame):
    """Answer to ``acknowledge``: who acknowledged message ``id`` of
    ``sender`` first, and when; ``first`` is true if this request did."""

    TYPE = "acknowledge_ok"
    rid: int
    id: bytes
    sender: str
    user: str
    device: str
    at: int
    first: bool
    WIRE = (
        ("rid", "rid", check_int),
        ("id", "id", check_bytes(16)),
        ("sender", "sender", check_str()),
        ("user", "user", check_str()),
        ("device", "device", check_str()),
        ("at", "at", check_int),
        ("first", "first", check_bool),
    )


def _urgent_state(v: Any) -> str:
    if v not in URGENT_STATES:
        raise malformed("unknown urgent state")
    return str(v)


@dataclass(frozen=True, slots=True)
class UrgentStatus(Frame):
    """A queued row (acked like a ``delivered``) about urgent message ``id``
    of user ``sender`` (SPEC §14.6): ``escalated`` (step ``step`` released
    to ``target``), ``acknowledged`` (by ``user``/``device`` at ``ts``) or
    ``unacknowledged`` (nobody, by the end of the policy). Sent only to
    connections that named ``oncall``."""

    TYPE = "urgent_status"
    seq: int
    id: bytes
    sender: str
    state: str
    step: int
    ts: int
    user: str | None = None
    device: str | None = None
    target: str | None = None
    WIRE = (
        ("seq", "seq", check_int),
        ("id", "id", check_bytes(16)),
        ("sender", "sender", check_str()),
        ("state", "state", _urgent_state),
        ("step", "step", check_int),
        ("ts", "ts", check_int),
        ("user", "user", check_str()),
        ("device", "device", check_str()),
        ("target", "target", check_str()),
    )


@dataclass(frozen=True, slots=True)
class UrgentReminder(Frame):
    """Pushed (not queued, not acked) to the connected devices of every
    released recipient of an urgent message not acknowledged yet: the
    ``n``-th reminder (1, 2, ...)."""

    TYPE = "urgent_reminder"
    id: bytes
    sender: str
    n: int
    WIRE = (("id", "id", check_bytes(16)), ("sender", "sender", check_str()), ("n", "n", check_int))


@dataclass(frozen=True, slots=True)
class RoleChanged(Frame):
    """Pushed (not queued, not acked) to the connections of users whose
    holdership of ``role`` changed: its holders now."""

    TYPE = "role_changed"
    role: str
    holders: tuple[str, ...]
    WIRE = (("role", "role", check_role_id), ("holders", "holders", _check_holders))


#: Every hub → client frame type.
# --- revision 6: encrypted attachments (SPEC §16.4) -----------------------------------

#: ``blob_link_ok.url``: ``/blobs/`` and a 43-character base64url token.
BLOB_URL_PREFIX = "/blobs/"
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _check_blob_url(v: Any) -> str:
    if (
        type(v) is not str
        or len(v) != len(BLOB_URL_PREFIX) + 43
        or not v.startswith(BLOB_URL_PREFIX)
        or not _B64URL.issuperset(v[len(BLOB_URL_PREFIX) :])
    ):
        raise malformed("expected /blobs/ and a token")
    return v


@dataclass(frozen=True, slots=True)
class BlobOk(Frame):
    """Answer to ``blob_begin``, ``blob_put`` and ``blob_end``: the blob's
    id and ``have``, the bytes of it the hub holds (= its size once whole)."""

    TYPE = "blob_ok"
    rid: int
    blob: str
    have: int
    WIRE = (("rid", "rid", check_int), ("blob", "blob", check_blob_id), ("have", "have", check_int))


@dataclass(frozen=True, slots=True)
class BlobLinkOk(Frame):
    """Answer to ``blob_link``: ``url``, a path on the hub's HTTP port that
    serves the blob (``size`` bytes) until ``expires`` (ms since the epoch,
    hub's clock), to any holder of it (SPEC §16.5)."""

    TYPE = "blob_link_ok"
    rid: int
    blob: str
    url: str
    size: int
    expires: int
    WIRE = (
        ("rid", "rid", check_int),
        ("blob", "blob", check_blob_id),
        ("url", "url", _check_blob_url),
        ("size", "size", check_int),
        ("expires", "expires", check_int),
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
    TeamOk,
    TeamsOk,
    TeamChainOk,
    RecallOk,
    TeamChanged,
    RoleSearchOk,
    RoleOk,
    AcknowledgeOk,
    UrgentStatus,
    UrgentReminder,
    RoleChanged,
    BlobOk,
    BlobLinkOk,
)
