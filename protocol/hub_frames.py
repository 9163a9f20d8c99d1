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
    MAX_SEARCH_RESULTS,
    MAX_TEAM_CHAIN_BYTES,
    MAX_TEAMS_LIST,
    MAX_WATCH,
    MAX_WRAPS,
    Frame,
    Record,
    check_bool,
    check_bytes,
    check_caps,
    check_int,
    check_list,
    check_status,
    check_str,
    check_team_id,
    check_token,
    malformed,
)

__all__ = [
    "SERVER_FRAMES",
    "Accepted",
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
    "SearchOk",
    "TeamChainOk",
    "TeamChanged",
    "TeamHead",
    "TeamOk",
    "TeamsOk",
    "Watching",
    "Welcome",
]


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
        ("v", "v", check_int),
        ("nonce", "nonce", check_bytes(32)),
        ("authority", "authority", check_bytes(32)),
        ("caps", "caps", check_caps),
    )


@dataclass(frozen=True, slots=True)
class Welcome(Frame):
    TYPE = "welcome"
    user: str
    device: str
    WIRE = (("user", "user", check_str()), ("device", "device", check_str()))


@dataclass(frozen=True, slots=True)
class Accepted(Frame):
    """The message is durably stored; ``dup`` is true for a resend of a stored id."""

    TYPE = "accepted"
    id: bytes
    dup: bool = False
    WIRE = (("id", "id", check_bytes(16)), ("dup", "dup", check_bool))


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
    WIRE = (
        ("seq", "seq", check_int),
        ("id", "id", check_bytes(16)),
        ("from_user", "from_user", check_str()),
        ("from_device", "from_device", check_str()),
        ("ts", "ts", check_int),
        ("env", "env", check_bytes()),
        ("body", "body", check_bytes(max_len=MAX_FRAME_BYTES)),
        ("team", "team", check_team_id),
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
    WIRE = (
        ("rid", "rid", check_int),
        ("user", "user", check_str()),
        ("name", "name", check_str()),
        ("rpps", "rpps", check_str(32)),
        ("profession", "profession", check_str(allow_empty=True)),
        ("organisation", "organisation", check_str(allow_empty=True)),
        ("devices", "devices", check_list(_device_info, MAX_RECIPIENT_DEVICES)),
        ("att", "att", check_bytes(max_len=MAX_ATTESTATION_BYTES)),
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
    WIRE = (
        ("code", "code", check_str()),
        ("message", "message", check_str(512)),
        ("fatal", "fatal", check_bool),
        ("id", "id", check_bytes(16)),
        ("rid", "rid", check_int),
        ("retry_after", "retry_after", check_int),
        ("missing", "missing", check_list(check_str(), MAX_WRAPS)),
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


#: Every hub → client frame type.
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
)
