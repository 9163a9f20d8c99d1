"""The frame codec (SPEC.md §3): round trips, canonical bytes, field checks,
and the promise that ``decode`` raises only MalformedFrame or UnknownFrameType."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import MalformedFrame, UnknownFrameType
from protocol.frames import (
    CLIENT_FRAMES,
    MAX_ACK_BYTES,
    MAX_FRAME_BYTES,
    MAX_LIFESPAN_MS,
    MAX_RECIPIENT_DEVICES,
    MAX_RECORD_BYTES,
    MAX_TEAMS_LIST,
    MAX_WATCH,
    MAX_WRAPS,
    MIN_LIFESPAN_MS,
    PIECE_MAX,
    SERVER_FRAMES,
    STATUSES,
    Accepted,
    Ack,
    Acknowledge,
    AcknowledgeOk,
    Auth,
    BlobBegin,
    BlobEnd,
    BlobLink,
    BlobLinkOk,
    BlobOk,
    BlobPut,
    ChainEntry,
    Challenge,
    Deliver,
    Delivered,
    DeviceEntry,
    DeviceInfo,
    Devices,
    DevicesOk,
    Enroll,
    Error,
    Frame,
    LinkCode,
    LinkCodeOk,
    Lookup,
    LookupOk,
    Ok,
    Ping,
    Presence,
    Recall,
    RecallOk,
    Refusal,
    Refused,
    Revoke,
    RoleChanged,
    RoleGet,
    RoleInfo,
    RoleLeave,
    RoleOk,
    RoleSearch,
    RoleSearchOk,
    RoleTake,
    Search,
    SearchOk,
    Send,
    SetStatus,
    TeamChain,
    TeamChainOk,
    TeamChange,
    TeamChanged,
    TeamHead,
    TeamOk,
    Teams,
    TeamsOk,
    Urgent,
    UrgentReminder,
    UrgentStatus,
    Watch,
    Watching,
    Welcome,
    decode,
    encode,
)
from protocol.oncall import Policy, Step

MID = bytes(range(16))
PK1, PK2 = b"\x11" * 32, b"\x22" * 32
TEAM = "t_0123456789abcdef"
HEAD = b"\x33" * 32
ROLE = "r_0123456789abcdef"
ROLE2 = "r_fedcba9876543210"
POLICY = Policy(
    interval=120_000,
    steps=(Step(300_000, role=ROLE2, holders=("u_3", "u_4")), Step(600_000, user="u_5", holders=("u_5",))),
    final=600_000,
)
INFO = RoleInfo(ROLE, "Cardiologie — senior de garde", "CHRU", False, ("u_1", "u_2"), POLICY)

BLOB = "b_" + "0123456789abcdef" * 2
BLOB2 = "b_" + "fedcba9876543210" * 2
#: One full instance of every frame type (every optional field set).
SAMPLES: dict[type[Frame], Frame] = {
    Auth: Auth(v=1, device="d_0000000000000001", sig=b"\x01" * 64, caps=("refusals",)),
    Enroll: Enroll(
        v=1, code="ABCD-EFGH-JKMN-PQRS", sign_pk=PK1, box_pk=PK2, label="phone", sig=b"\x02" * 64, caps=()
    ),
    Send: Send(
        id=MID,
        sender="d_0000000000000001",
        to=TEAM,
        envs={"d_0000000000000002": b"w" * 72},
        body=b"b" * 120,
        head=HEAD,
        ttl=86_400_000,
        urgent=Urgent(interval=60_000, final=300_000),
        blobs=(BLOB, BLOB2),
    ),
    Ack: Ack(seqs=(1, 2, 3), refused=(Refusal(4, "sender_unverified"), Refusal(5, "undecryptable"))),
    Lookup: Lookup(rid=1, user="u_0000000000000002", rpps="10101234567"),
    LinkCode: LinkCode(rid=2),
    SetStatus: SetStatus(rid=4, status="on_call"),
    Watch: Watch(rid=5, users=("u_0000000000000002", "u_0000000000000003")),
    Challenge: Challenge(
        v=1, nonce=b"\x03" * 32, authority=PK1, caps=("refusals", "later_one"), rotations=(b"\x05" * 300,)
    ),
    Welcome: Welcome(user="u_0000000000000001", device="d_0000000000000001", att_max=6, blob_max=20 << 20),
    Accepted: Accepted(id=MID, dup=True),
    Deliver: Deliver(
        seq=5,
        id=MID,
        from_user="u_1",
        from_device="d_1",
        ts=1_767_225_600_000,
        env=b"w" * 72,
        body=b"b" * 120,
        team=TEAM,
        role=ROLE,
        urgent=True,
        step=1,
    ),
    Delivered: Delivered(seq=6, id=MID, user="u_2", device="d_2", ts=1_767_225_600_001),
    Refused: Refused(seq=7, id=MID, user="u_2", device="d_2", ts=1_767_225_600_002, reason="undecryptable"),
    LookupOk: LookupOk(
        rid=1,
        user="u_2",
        name="Dr B",
        rpps="10101234567",
        profession="Cardiologue",
        organisation="CHRU",
        devices=(DeviceInfo("d_2", PK1, PK2), DeviceInfo("d_3", PK2, PK1)),
        att=b"\x07" * 200,
        replies=False,
    ),
    Search: Search(rid=6, query="cardio"),
    SearchOk: SearchOk(rid=6, atts=(b"\x07" * 200, b"\x08" * 300)),
    Devices: Devices(rid=7),
    DevicesOk: DevicesOk(rid=7, devices=(DeviceEntry("d_1", "phone", 1_767_225_600_000, True),)),
    Revoke: Revoke(rid=8, device="d_0000000000000002"),
    Ping: Ping(rid=40),
    LinkCodeOk: LinkCodeOk(rid=2, code="ABCD-EFGH-JKMN-PQRS", expires=1_767_226_500_000),
    Error: Error(
        code="missing_devices",
        message="m",
        fatal=False,
        id=MID,
        rid=3,
        retry_after=10,
        missing=("d_9",),
        role=ROLE,
    ),
    Ok: Ok(rid=4),
    Presence: Presence(user="u_0000000000000002", status="busy", online=True),
    Watching: Watching(
        rid=5,
        presence=(
            Presence(user="u_0000000000000002", status="busy", online=True),
            Presence(user="u_0000000000000003", status="off_duty", online=False),
        ),
    ),
    TeamChange: TeamChange(rid=9, team=TEAM, rec=b"r" * 300, sig=b"\x04" * 64),
    Teams: Teams(rid=10),
    TeamChain: TeamChain(rid=11, team=TEAM, from_seq=3),
    Recall: Recall(rid=12, id=MID),
    TeamOk: TeamOk(rid=9, team=TEAM, seq=4, head=HEAD),
    TeamsOk: TeamsOk(rid=10, teams=(TeamHead(TEAM, 4, HEAD), TeamHead("t_fedcba9876543210", 1, PK1))),
    TeamChainOk: TeamChainOk(
        rid=11,
        team=TEAM,
        recs=(ChainEntry(b"r" * 300, b"\x04" * 64), ChainEntry(b"s" * 200, PK1 + PK2)),
        more=True,
    ),
    RecallOk: RecallOk(rid=12, id=MID, removed=3),
    TeamChanged: TeamChanged(team=TEAM, seq=5, head=HEAD),
    RoleSearch: RoleSearch(rid=13, query="cardio", mine=True),
    RoleGet: RoleGet(rid=14, role=ROLE),
    RoleTake: RoleTake(rid=15, role=ROLE, join=True),
    RoleLeave: RoleLeave(rid=16, role=ROLE),
    Acknowledge: Acknowledge(rid=17, id=MID, sender="u_1"),
    RoleSearchOk: RoleSearchOk(rid=13, roles=(INFO,)),
    RoleOk: RoleOk(rid=14, info=INFO),
    AcknowledgeOk: AcknowledgeOk(rid=17, id=MID, sender="u_1", user="u_2", device="d_2", at=5, first=True),
    UrgentStatus: UrgentStatus(
        seq=8,
        id=MID,
        sender="u_1",
        state="acknowledged",
        step=1,
        ts=6,
        user="u_2",
        device="d_2",
        target=ROLE2,
    ),
    UrgentReminder: UrgentReminder(id=MID, sender="u_1", n=2),
    RoleChanged: RoleChanged(role=ROLE, holders=("u_1", "u_2")),
    BlobBegin: BlobBegin(rid=18, size=70_000, blob=BLOB),
    BlobPut: BlobPut(rid=19, blob=BLOB, off=61_440, data=b"c" * 300),
    BlobEnd: BlobEnd(rid=20, blob=BLOB),
    BlobLink: BlobLink(rid=21, blob=BLOB),
    BlobOk: BlobOk(rid=19, blob=BLOB, have=61_740),
    BlobLinkOk: BlobLinkOk(rid=21, blob=BLOB, url="/blobs/" + "A-_z" * 10 + "abc", size=70_000, expires=7),
}


def wire(frame: Frame) -> dict[str, Any]:
    out: dict[str, Any] = msgpack.unpackb(encode(frame), raw=False)
    return out


def pack(m: Any) -> bytes:
    out: bytes = msgpack.packb(m, use_bin_type=True)
    return out


def test_samples_cover_every_frame_type() -> None:
    assert set(SAMPLES) == set(CLIENT_FRAMES) | set(SERVER_FRAMES)
    assert not set(CLIENT_FRAMES) & set(SERVER_FRAMES)


@pytest.mark.parametrize("frame", SAMPLES.values(), ids=lambda f: f.TYPE)
def test_round_trip(frame: Frame) -> None:
    data = encode(frame)
    assert decode(data) == frame
    own_direction = CLIENT_FRAMES if type(frame) in CLIENT_FRAMES else SERVER_FRAMES
    other_direction = SERVER_FRAMES if own_direction is CLIENT_FRAMES else CLIENT_FRAMES
    assert decode(data, own_direction) == frame
    with pytest.raises(UnknownFrameType):
        decode(data, other_direction)


@pytest.mark.parametrize("frame", SAMPLES.values(), ids=lambda f: f.TYPE)
def test_canonical_key_order(frame: Frame) -> None:
    assert list(wire(frame)) == ["t", *(key for _, key, _ in frame.WIRE)]
    assert wire(frame)["t"] == frame.TYPE
    assert encode(decode(encode(frame))) == encode(frame)


def test_send_uses_wire_key_from() -> None:
    m = wire(SAMPLES[Send])
    assert m["from"] == "d_0000000000000001" and "sender" not in m


def test_optional_fields_are_omitted_not_nil() -> None:
    assert wire(Lookup(rid=1, user="u_1")) == {"t": "lookup", "rid": 1, "user": "u_1"}
    assert wire(Lookup(rid=1, rpps="123")) == {"t": "lookup", "rid": 1, "rpps": "123"}
    minimal = Error(code="auth_failed", message="authentication failed", fatal=True)
    assert wire(minimal) == {
        "t": "error",
        "code": "auth_failed",
        "message": "authentication failed",
        "fatal": True,
    }
    back = decode(encode(minimal))
    assert isinstance(back, Error)
    assert (back.id, back.rid, back.retry_after, back.missing) == (None, None, None, None)


def test_defaulted_booleans_are_always_on_the_wire() -> None:
    assert wire(Accepted(id=MID)) == {"t": "accepted", "id": MID, "dup": False}
    assert wire(Error(code="x", message="y"))["fatal"] is False
    with pytest.raises(MalformedFrame):
        decode(pack({"t": "accepted", "id": MID}))


def test_unknown_keys_are_ignored() -> None:
    m = wire(SAMPLES[Welcome])
    m["later_v1_extension"] = [1, 2]
    m["odd_values_too"] = {"nil": None, "float": 1.5, "ext": msgpack.ExtType(1, b"x"), "neg": -5}
    assert decode(pack(m)) == SAMPLES[Welcome]


def test_new_optional_keys_may_be_missing() -> None:
    """SPEC §12, revision 2: older peers send none of them."""
    assert decode(pack({"t": "ack", "seqs": [1]})) == Ack(seqs=(1,))
    assert decode(pack({"t": "challenge", "v": 1, "nonce": b"\x03" * 32})) == Challenge(1, b"\x03" * 32)
    assert decode(pack({"t": "auth", "v": 1, "device": "d_1", "sig": b"\x01" * 64})) == Auth(
        1, "d_1", b"\x01" * 64
    )


def test_the_largest_honest_ack_fits_the_ack_size_limit() -> None:
    widest = Ack(seqs=(2**63 - 1,) * 1024, refused=tuple(Refusal(2**63 - 1, "r" * 32) for _ in range(64)))
    assert len(encode(widest)) == MAX_ACK_BYTES < MAX_FRAME_BYTES


def test_lists_decode_to_tuples() -> None:
    frame = decode(pack({"t": "ack", "seqs": [3, 1, 2]}))
    assert frame == Ack(seqs=(3, 1, 2))


def test_watching_nests_presence_maps_without_type() -> None:
    m = wire(SAMPLES[Watching])
    assert m["presence"][1] == {"user": "u_0000000000000003", "status": "off_duty", "online": False}
    # a "t" inside a nested map is an unknown key like any other
    m["presence"][1]["t"] = "presence"
    assert decode(pack(m)) == SAMPLES[Watching]


@pytest.mark.parametrize("status", STATUSES)
def test_every_status_is_accepted(status: str) -> None:
    assert decode(pack({"t": "set_status", "rid": 1, "status": status})) == SetStatus(1, status)
    assert decode(encode(Presence("u_1", status, False))) == Presence("u_1", status, False)


# --- every required key, every checker ------------------------------------------------


REQUIRED = [
    (cls, key)
    for cls, sample in SAMPLES.items()
    for attr, key, _ in cls.WIRE
    if key not in {"user", "rpps"} or cls is not Lookup
    if not (cls is Error and key in {"id", "rid", "retry_after", "missing", "role"})
    if not (cls is LookupOk and key in {"att", "replies"})
    if not (cls in (Auth, Enroll, Challenge) and key in {"caps", "authority", "rotations"})
    if not (cls is Ack and key == "refused")
    if not (cls is Send and key in {"body", "head", "ttl", "urgent", "blobs"})
    if not (cls is Welcome and key in {"att_max", "blob_max"})
    if not (cls is BlobBegin and key == "blob")
    if not (cls is Deliver and key in {"body", "team", "role", "urgent", "step"})
    if not (cls in (RoleSearch, RoleTake) and key in {"mine", "join"})
    if not (cls is UrgentStatus and key in {"user", "device", "target"})
]


@pytest.mark.parametrize(("cls", "key"), REQUIRED, ids=lambda x: x if isinstance(x, str) else x.TYPE)
def test_missing_required_key_is_malformed(cls: type[Frame], key: str) -> None:
    m = wire(SAMPLES[cls])
    del m[key]
    with pytest.raises(MalformedFrame):
        decode(pack(m))


def test_optional_keys_may_be_missing() -> None:
    assert decode(pack({"t": "lookup", "rid": 1})) == Lookup(rid=1)
    assert decode(pack({"t": "error", "code": "c", "message": "m", "fatal": False})) == Error("c", "m")


#: Not a blob id: wrong prefix, uppercase, short, long, not a str.
BAD_BLOB = [
    None,
    1,
    b"b_" + b"0" * 32,
    "b_" + "0" * 31,
    "b_" + "0" * 33,
    "B_" + "0" * 32,
    "b_" + "A" * 32,
    "t_" + "0" * 32,
]
BAD_BLOBS = [
    None,
    [],
    ["b_" + "0" * 32] * 2,
    [f"b_{i:032x}" for i in range(17)],
    *([b] for b in BAD_BLOB),
]
BAD_BYTES_16 = ["x" * 16, 16, None, b"\x00" * 15, b"\x00" * 17, [0] * 16]
BAD_ID = [b"d_1", 1, None, "", "d" * 129, ["d_1"]]
BAD_INT = [-1, 1.0, True, "1", None, 2**63, b"\x01"]
BAD_BOOL = [0, 1, "true", None, b"\x01"]
BAD_SIG = [b"\x00" * 63, b"\x00" * 65, "s" * 64, None]
BAD_KEY = [b"\x00" * 31, b"\x00" * 33, "k" * 32, None]
BAD_TOKEN = ["", "Refusals", "x" * 33, "with space", "é", b"refusals", 1, None]
BAD_TEAM = [
    "u_0123456789abcdef",
    "t_0123456789ABCDEF",
    "t_0123456789abcde",
    "t_0123456789abcdef0",
    "",
    None,
    1,
]
BAD_HEAD = [b"\x00" * 31, b"\x00" * 33, "h" * 32, None]
BAD_ROLE = [TEAM, "r_0123456789ABCDEF", "r_0123456789abcde", "r_0123456789abcdef0", "", None, 1]
BAD_HOLDERS = [None, "u_1", [1], [""], ["u"] * 17]
BAD_INFO = [
    None,
    [],
    {k: v for k, v in INFO.to_map().items() if k != "policy"},
    {**INFO.to_map(), "role": TEAM},
    {**INFO.to_map(), "name": ""},
    {**INFO.to_map(), "name": "n" * 65},
    {**INFO.to_map(), "org": "o" * 129},
    {**INFO.to_map(), "reserved": 0},
    {**INFO.to_map(), "holders": ["u"] * 17},
    {**INFO.to_map(), "policy": {"interval": 1, "steps": [], "final": -1}},
    {**INFO.to_map(), "policy": {"interval": 1, "steps": [{"delay": 1}], "final": 1}},
    {
        **INFO.to_map(),
        "policy": {"interval": 1, "steps": [{"delay": 1, "role": ROLE, "user": "u"}], "final": 1},
    },
    {**INFO.to_map(), "policy": {"interval": 1, "steps": [{"delay": 1, "user": "u"}] * 6, "final": 1}},
    {**INFO.to_map(), "policy": {"interval": 1, "final": 1}},
]
BAD_STATUS = ["away", "on call", "On_Call", "", b"busy", 1, None, ["busy"], {"busy": 1}]

BAD_FIELDS: list[tuple[type[Frame], str, list[Any]]] = [
    (Auth, "v", BAD_INT),
    (Auth, "device", BAD_ID),
    (Auth, "sig", BAD_SIG),
    (Auth, "caps", [None, "refusals", [""], ["Refusals"], ["x" * 33], [b"refusals"], ["c"] * 17]),
    (Enroll, "v", BAD_INT),
    (Enroll, "code", BAD_ID),
    (Enroll, "sign_pk", BAD_KEY),
    (Enroll, "box_pk", BAD_KEY),
    (Enroll, "label", ["x" * 65, b"phone", None, 3]),
    (Enroll, "sig", BAD_SIG),
    (Enroll, "caps", [None, "refusals", ["a b"], ["c"] * 17]),
    (Send, "id", BAD_BYTES_16),
    (Send, "from", BAD_ID),
    (Send, "to", BAD_ID),
    (
        Send,
        "envs",
        [
            {},
            [b"e"],
            None,
            {"d_1": "not bytes"},
            {b"d_1": b"e"},
            {"": b"e"},
            {"d" * 129: b"e"},
            {f"d_{i}": b"e" for i in range(MAX_WRAPS + 1)},
            {"d_1": b"e" * (MAX_FRAME_BYTES + 1)},
        ],
    ),
    (Send, "body", ["b", None, 7, [b"b"], b"b" * (MAX_FRAME_BYTES + 1)]),
    (Send, "head", [b"\x00" * 31, b"\x00" * 33, "h" * 32, None]),
    (
        Send,
        "ttl",
        [MIN_LIFESPAN_MS - 1, MAX_LIFESPAN_MS + 1, -1, 1.0 * MIN_LIFESPAN_MS, True, "86400000", None],
    ),
    (Ack, "seqs", [None, 1, [1, -1], [1, "2"], [1.5], [True], list(range(1025)), {"1": 1}]),
    (
        Ack,
        "refused",
        [
            None,
            {"seq": 1, "reason": "undecryptable"},
            [1],
            [{"seq": 1}],
            [{"reason": "undecryptable"}],
            [{"seq": -1, "reason": "undecryptable"}],
            *(
                [{"seq": 1, "reason": bad}]
                for bad in ["", "Refusals", "x" * 33, "with space", "é", b"refusals", 1, None]
            ),
            [{"seq": 1, "reason": "undecryptable"}] * 65,
        ],
    ),
    (Lookup, "rid", BAD_INT),
    (Lookup, "user", BAD_ID),
    (Lookup, "rpps", ["1" * 33, "", 101, None]),
    (LinkCode, "rid", BAD_INT),
    (SetStatus, "rid", BAD_INT),
    (SetStatus, "status", BAD_STATUS),
    (Watch, "rid", BAD_INT),
    (
        Watch,
        "users",
        [None, "u_1", {"u_1": True}, [""], ["u" * 129], [b"u_1"], [1], ["u_1"] * (MAX_WATCH + 1)],
    ),
    (Challenge, "v", BAD_INT),
    (Challenge, "nonce", [b"\x00" * 31, b"\x00" * 33, "n" * 32, None]),
    (Challenge, "authority", [b"\x00" * 31, b"\x00" * 33, "k" * 32, None]),
    (Challenge, "caps", [None, "refusals", [1], ["c"] * 17]),
    (Challenge, "rotations", [None, b"\x05" * 300, [b"\x05" * 513], [b"\x05"] * 9, ["s"]]),
    (Welcome, "user", BAD_ID),
    (Welcome, "device", BAD_ID),
    (Accepted, "id", BAD_BYTES_16),
    (Accepted, "dup", BAD_BOOL),
    (Deliver, "seq", BAD_INT),
    (Deliver, "id", BAD_BYTES_16),
    (Deliver, "from_user", BAD_ID),
    (Deliver, "from_device", BAD_ID),
    (Deliver, "ts", BAD_INT),
    (Deliver, "env", ["env", None, 7, b"e" * (MAX_FRAME_BYTES + 1)]),
    (Deliver, "body", ["b", None, 7, b"b" * (MAX_FRAME_BYTES + 1)]),
    (Deliver, "team", BAD_TEAM),
    (Delivered, "seq", BAD_INT),
    (Delivered, "id", BAD_BYTES_16),
    (Delivered, "user", BAD_ID),
    (Delivered, "device", BAD_ID),
    (Delivered, "ts", BAD_INT),
    (Refused, "seq", BAD_INT),
    (Refused, "id", BAD_BYTES_16),
    (Refused, "user", BAD_ID),
    (Refused, "device", BAD_ID),
    (Refused, "ts", BAD_INT),
    (Refused, "reason", BAD_TOKEN),
    (LookupOk, "rid", BAD_INT),
    (LookupOk, "user", BAD_ID),
    (LookupOk, "name", BAD_ID),
    (LookupOk, "rpps", ["1" * 33, "", None]),
    (LookupOk, "profession", ["p" * 129, None, b"p"]),
    (LookupOk, "organisation", ["o" * 129, None, b"o"]),
    (
        LookupOk,
        "devices",
        [
            None,
            {"device": "d_1"},
            ["d_1"],
            [{"device": "d_1", "sign_pk": PK1}],
            [{"device": "d_1", "sign_pk": PK1, "box_pk": b"\x00" * 31}],
            [{"device": "", "sign_pk": PK1, "box_pk": PK2}],
            [{"device": "d_1", "sign_pk": "k" * 32, "box_pk": PK2}],
            [{"device": "d_1", "sign_pk": PK1, "box_pk": PK2}] * 65,
        ],
    ),
    (LookupOk, "att", ["a" * 100, None, 7, b"a" * 8193]),
    (LookupOk, "replies", BAD_BOOL),
    (Search, "rid", BAD_INT),
    (Search, "query", [b"q", None, "", "q" * 65]),
    (SearchOk, "rid", BAD_INT),
    (SearchOk, "atts", [None, b"a", ["a"], [b"a" * 8193], [b"a"] * 51]),
    (Devices, "rid", BAD_INT),
    (DevicesOk, "rid", BAD_INT),
    (
        DevicesOk,
        "devices",
        [
            None,
            ["d_1"],
            [{"device": "d_1", "label": "x", "created": 1}],
            [{"device": "", "label": "x", "created": 1, "attested": True}],
            [{"device": "d_1", "label": "x" * 65, "created": 1, "attested": True}],
            [{"device": "d_1", "label": "x", "created": -1, "attested": True}],
            [{"device": "d_1", "label": "x", "created": 1, "attested": 1}],
        ],
    ),
    (Revoke, "rid", BAD_INT),
    (Revoke, "device", BAD_ID),
    (Ping, "rid", BAD_INT),
    (LinkCodeOk, "rid", BAD_INT),
    (LinkCodeOk, "code", BAD_ID),
    (LinkCodeOk, "expires", BAD_INT),
    (Error, "code", BAD_ID),
    (Error, "message", ["m" * 513, "", None, b"m"]),
    (Error, "fatal", BAD_BOOL),
    (Error, "id", BAD_BYTES_16),
    (Error, "rid", BAD_INT),
    (Error, "retry_after", BAD_INT),
    (Error, "missing", [None, "d_1", [""], [b"d_1"], ["d_1"] * (MAX_WRAPS + 1), [1]]),
    (Ok, "rid", BAD_INT),
    (Presence, "user", BAD_ID),
    (Presence, "status", BAD_STATUS),
    (Presence, "online", BAD_BOOL),
    (Watching, "rid", BAD_INT),
    (
        Watching,
        "presence",
        [
            None,
            {"user": "u_1", "status": "busy", "online": True},
            ["u_1"],
            [{"user": "u_1", "status": "busy"}],
            [{"user": "u_1", "status": "away", "online": True}],
            [{"user": "", "status": "busy", "online": True}],
            [{"user": "u_1", "status": "busy", "online": 1}],
            [{"user": "u_1", "status": "busy", "online": True}] * (MAX_WATCH + 1),
        ],
    ),
    (TeamChange, "rid", BAD_INT),
    (TeamChange, "team", BAD_TEAM),
    (TeamChange, "rec", ["r", None, 1, b"r" * (MAX_RECORD_BYTES + 1)]),
    (TeamChange, "sig", BAD_SIG),
    (Teams, "rid", BAD_INT),
    (TeamChain, "rid", BAD_INT),
    (TeamChain, "team", BAD_TEAM),
    (TeamChain, "from", BAD_INT),
    (Recall, "rid", BAD_INT),
    (Recall, "id", BAD_BYTES_16),
    (TeamOk, "rid", BAD_INT),
    (TeamOk, "team", BAD_TEAM),
    (TeamOk, "seq", BAD_INT),
    (TeamOk, "head", BAD_HEAD),
    (TeamsOk, "rid", BAD_INT),
    (
        TeamsOk,
        "teams",
        [
            None,
            {"team": TEAM, "seq": 1, "head": HEAD},
            [TEAM],
            [{"team": TEAM, "seq": 1}],
            [{"team": "u_1", "seq": 1, "head": HEAD}],
            [{"team": TEAM, "seq": -1, "head": HEAD}],
            [{"team": TEAM, "seq": 1, "head": b"h"}],
            [{"team": TEAM, "seq": 1, "head": HEAD}] * (MAX_TEAMS_LIST + 1),
        ],
    ),
    (TeamChainOk, "rid", BAD_INT),
    (TeamChainOk, "team", BAD_TEAM),
    (
        TeamChainOk,
        "recs",
        [
            None,
            {"rec": b"r", "sig": b"s" * 64},
            [b"r"],
            [{"rec": b"r"}],
            [{"rec": "r", "sig": b"s" * 64}],
            [{"rec": b"r", "sig": b"s" * 63}],
            [{"rec": b"r" * (MAX_RECORD_BYTES + 1), "sig": b"s" * 64}],
        ],
    ),
    (TeamChainOk, "more", BAD_BOOL),
    (RecallOk, "rid", BAD_INT),
    (RecallOk, "id", BAD_BYTES_16),
    (RecallOk, "removed", BAD_INT),
    (TeamChanged, "team", BAD_TEAM),
    (TeamChanged, "seq", BAD_INT),
    (TeamChanged, "head", BAD_HEAD),
    (Send, "urgent", [None, [], {"interval": -1}, {"final": "1"}, {"interval": True}]),
    (Deliver, "role", BAD_ROLE),
    (Deliver, "urgent", BAD_BOOL),
    (Deliver, "step", [0, -1, True, "1", None]),
    (Error, "role", BAD_ROLE),
    (RoleSearch, "rid", BAD_INT),
    (RoleSearch, "query", ["q" * 65, None, 1, b"q"]),
    (RoleSearch, "mine", BAD_BOOL),
    (RoleGet, "rid", BAD_INT),
    (RoleGet, "role", BAD_ROLE),
    (RoleTake, "rid", BAD_INT),
    (RoleTake, "role", BAD_ROLE),
    (RoleTake, "join", BAD_BOOL),
    (RoleLeave, "rid", BAD_INT),
    (RoleLeave, "role", BAD_ROLE),
    (Acknowledge, "rid", BAD_INT),
    (Acknowledge, "id", BAD_BYTES_16),
    (Acknowledge, "sender", BAD_ID),
    (RoleSearchOk, "rid", BAD_INT),
    (RoleSearchOk, "roles", [None, [None], [INFO.to_map()] * 21, *([b] for b in BAD_INFO)]),
    (RoleOk, "rid", BAD_INT),
    (RoleOk, "info", BAD_INFO),
    (AcknowledgeOk, "rid", BAD_INT),
    (AcknowledgeOk, "id", BAD_BYTES_16),
    (AcknowledgeOk, "sender", BAD_ID),
    (AcknowledgeOk, "user", BAD_ID),
    (AcknowledgeOk, "device", BAD_ID),
    (AcknowledgeOk, "at", BAD_INT),
    (AcknowledgeOk, "first", BAD_BOOL),
    (UrgentStatus, "seq", BAD_INT),
    (UrgentStatus, "id", BAD_BYTES_16),
    (UrgentStatus, "sender", BAD_ID),
    (UrgentStatus, "state", ["Acknowledged", "", None, 1, "pending"]),
    (UrgentStatus, "step", BAD_INT),
    (UrgentStatus, "ts", BAD_INT),
    (UrgentStatus, "user", BAD_ID),
    (UrgentStatus, "device", BAD_ID),
    (UrgentStatus, "target", BAD_ID),
    (UrgentReminder, "id", BAD_BYTES_16),
    (UrgentReminder, "sender", BAD_ID),
    (UrgentReminder, "n", BAD_INT),
    (RoleChanged, "role", BAD_ROLE),
    (RoleChanged, "holders", BAD_HOLDERS),
    (Send, "blobs", BAD_BLOBS),
    (Welcome, "att_max", BAD_INT),
    (Welcome, "blob_max", BAD_INT),
    (BlobBegin, "rid", BAD_INT),
    (BlobBegin, "size", [*BAD_INT, 0, 40]),
    (BlobBegin, "blob", BAD_BLOB),
    (BlobPut, "rid", BAD_INT),
    (BlobPut, "blob", BAD_BLOB),
    (BlobPut, "off", BAD_INT),
    (BlobPut, "data", [None, "x", b"", b"x" * (PIECE_MAX + 1)]),
    (BlobEnd, "rid", BAD_INT),
    (BlobEnd, "blob", BAD_BLOB),
    (BlobLink, "rid", BAD_INT),
    (BlobLink, "blob", BAD_BLOB),
    (BlobOk, "rid", BAD_INT),
    (BlobOk, "blob", BAD_BLOB),
    (BlobOk, "have", BAD_INT),
    (BlobLinkOk, "rid", BAD_INT),
    (BlobLinkOk, "blob", BAD_BLOB),
    (
        BlobLinkOk,
        "url",
        [
            None,
            "",
            "/blobs/" + "a" * 42,
            "/blobs/" + "a" * 44,
            "https://x/" + "a" * 40,
            "/blobs/" + "a" * 42 + "=",
            "/blobz/" + "a" * 43,
        ],
    ),
    (BlobLinkOk, "size", BAD_INT),
    (BlobLinkOk, "expires", BAD_INT),
]


@pytest.mark.parametrize(
    ("cls", "key", "bad"),
    [(cls, key, bad) for cls, key, bads in BAD_FIELDS for bad in bads],
    ids=lambda x: x.TYPE if isinstance(x, type) and issubclass(x, Frame) else repr(x)[:24],
)
def test_checker_rejects_bad_value(cls: type[Frame], key: str, bad: Any) -> None:
    m = wire(SAMPLES[cls])
    assert decode(pack(m)) == SAMPLES[cls]  # the base map is valid
    m[key] = bad
    with pytest.raises(MalformedFrame):
        decode(pack(m))


def test_every_wire_key_has_bad_values() -> None:
    covered = {(cls, key) for cls, key, _ in BAD_FIELDS}
    assert covered == {(cls, key) for cls in SAMPLES for _, key, _ in cls.WIRE}


def _classic_send() -> dict[str, Any]:
    return {"t": "send", "id": MID, "from": "d_1", "to": "u_2", "envs": {"d_2": b"e" * 60}}


def test_a_send_without_body_holds_at_most_64_envelopes() -> None:
    """The classic 1:1 send keeps its limit (SPEC §13.3): only a sealed body
    lets ``envs`` hold key wraps for up to MAX_WRAPS devices."""
    m = _classic_send()
    m["envs"] = {f"d_{i}": b"e" for i in range(MAX_RECIPIENT_DEVICES)}
    assert len(decode(pack(m)).envs) == MAX_RECIPIENT_DEVICES  # type: ignore[attr-defined]
    m["envs"] = {f"d_{i}": b"e" for i in range(MAX_RECIPIENT_DEVICES + 1)}
    with pytest.raises(MalformedFrame):
        decode(pack(m))
    m["body"] = b"b" * 104
    assert len(decode(pack(m)).envs) == MAX_RECIPIENT_DEVICES + 1  # type: ignore[attr-defined]


def test_urgent_and_role_keys_stay_off_the_wire_unless_set() -> None:
    """Revision 4 keys (SPEC §14.5): an empty urgent map is a map; a
    deliver's urgent is true or absent, never false."""
    assert wire(Send(MID, "d_1", ROLE, {"d_2": b"w"}, body=b"b", urgent=Urgent()))["urgent"] == {}
    deliver = Deliver(seq=1, id=MID, from_user="u_1", from_device="d_1", ts=5, env=b"e", urgent=False)
    assert deliver.urgent is None and "urgent" not in wire(deliver)
    assert decode(pack({**wire(deliver), "urgent": False})) == deliver
    assert wire(RoleSearch(1, "")) == {"t": "role_search", "rid": 1, "query": ""}
    nested = wire(SAMPLES[RoleOk])["info"]
    assert list(nested) == ["role", "name", "org", "reserved", "holders", "policy"]
    assert nested["policy"]["steps"][0] == {"delay": 300_000, "role": ROLE2, "holders": ["u_3", "u_4"]}


def test_classic_send_and_deliver_bytes_are_unchanged() -> None:
    """Without the revision 3 keys, send and deliver encode as before: no
    new key appears, not even as nil."""
    m = _classic_send()
    frame = decode(pack(m))
    assert frame == Send(MID, "d_1", "u_2", {"d_2": b"e" * 60})
    assert encode(frame) == pack(m)
    deliver = Deliver(seq=1, id=MID, from_user="u_1", from_device="d_1", ts=5, env=b"e")
    assert list(wire(deliver)) == ["t", "seq", "id", "from_user", "from_device", "ts", "env"]


@pytest.mark.parametrize(
    ("cls", "key", "good"),
    [
        (Auth, "device", "d" * 128),
        (Enroll, "label", "x" * 64),
        (Enroll, "label", ""),
        (Lookup, "rpps", "1" * 32),
        (Ack, "seqs", list(range(1024))),
        (Ack, "seqs", []),
        (Deliver, "ts", 2**63 - 1),
        (Send, "envs", {f"d_{i}": b"e" for i in range(MAX_WRAPS)}),
        (Send, "ttl", MIN_LIFESPAN_MS),
        (Send, "ttl", MAX_LIFESPAN_MS),
        (TeamChange, "rec", b"r" * MAX_RECORD_BYTES),
        (TeamsOk, "teams", []),
        (TeamsOk, "teams", [{"team": TEAM, "seq": 1, "head": HEAD}] * MAX_TEAMS_LIST),
        (RoleSearch, "query", ""),
        (RoleSearch, "query", "q" * 64),
        (RoleSearchOk, "roles", [INFO.to_map()] * 20),
        (RoleChanged, "holders", []),
        (RoleChanged, "holders", [f"u_{i}" for i in range(16)]),
        (Send, "urgent", {}),
        (Deliver, "step", 2**63 - 1),
        (Error, "message", "m" * 512),
        (LookupOk, "devices", []),
        (LookupOk, "profession", ""),
        (Watch, "users", []),
        (Watch, "users", [f"u_{i}" for i in range(MAX_WATCH)]),
        (Watching, "presence", []),
        (
            Watching,
            "presence",
            [{"user": f"u_{i}", "status": "busy", "online": True} for i in range(MAX_WATCH)],
        ),
    ],
    ids=lambda x: x.TYPE if isinstance(x, type) and issubclass(x, Frame) else repr(x)[:16],
)
def test_limits_are_inclusive(cls: type[Frame], key: str, good: Any) -> None:
    m = wire(SAMPLES[cls])
    m[key] = good
    decode(pack(m))


# --- decode raises only MalformedFrame / UnknownFrameType -----------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\x91" * 100_000 + b"\xc0",  # deeper than the unpacker's stack
        b"\xdd\xff\xff\xff\xff",  # announces 4 G array items
        b"\xc6\xff\xff\xff\xff",  # announces 4 GB of bin
        pack({"t": "auth", "v": {"nested": [1, 2]}, "device": "d", "sig": b"s" * 64}),
        pack({"t": "send", "id": MID, "from": "d", "to": "u", "envs": {"d": [b"e"]}}),
        pack(
            {
                "t": "lookup_ok",
                "rid": 1,
                "user": "u",
                "name": "n",
                "rpps": "r",
                "profession": "",
                "organisation": "",
                "devices": [[1, 2, 3]],
            }
        ),
    ],
)
def test_hostile_inputs_are_malformed(data: bytes) -> None:
    with pytest.raises(MalformedFrame):
        decode(data)


@pytest.mark.parametrize(
    "data",
    [encode(SAMPLES[Welcome]).decode("latin-1"), "a text frame", None, 12, 1.5],
    ids=["valid-frame-as-str", "text", "None", "int", "float"],
)
def test_non_bytes_input_is_malformed(data: Any) -> None:
    """A WebSocket text frame reaches decode as ``str``: malformed (SPEC §2)."""
    with pytest.raises(MalformedFrame):
        decode(data)


def check_decode(data: bytes) -> None:
    """decode either returns a frame that re-encodes to an equal frame, or
    raises exactly MalformedFrame or UnknownFrameType."""
    try:
        frame = decode(data)
    except (MalformedFrame, UnknownFrameType):
        return
    assert decode(encode(frame)) == frame


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=140)
    | st.binary(max_size=70)
)
msgpack_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
ALL_KEYS = sorted({key for cls in SAMPLES for _, key, _ in cls.WIRE} | {"device", "sign_pk", "box_pk"})
FRAME_TYPES = sorted(cls.TYPE for cls in SAMPLES)


@st.composite
def frame_like_maps(draw: st.DrawFn) -> dict[str, Any]:
    """Maps that look like frames: a real "t" and real keys with random values,
    or a real sample with one value replaced, so the checkers are exercised."""
    if draw(st.booleans()):
        sample = draw(st.sampled_from(list(SAMPLES.values())))
        m = wire(sample)
        m[draw(st.sampled_from(list(m)))] = draw(msgpack_values)
        return m
    m = {"t": draw(st.sampled_from(FRAME_TYPES) | st.text(max_size=10))}
    m.update(draw(st.dictionaries(st.sampled_from(ALL_KEYS), msgpack_values, max_size=8)))
    return m


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    check_decode(data)


@FUZZ
@given(msgpack_values)
def test_fuzz_random_msgpack_objects(obj: Any) -> None:
    check_decode(pack(obj))


@FUZZ
@given(frame_like_maps())
def test_fuzz_frame_like_maps(m: dict[str, Any]) -> None:
    check_decode(pack(m))


@FUZZ
@given(st.sampled_from(list(SAMPLES.values())), st.data())
def test_fuzz_corrupted_valid_frames(frame: Frame, data: st.DataObject) -> None:
    raw = bytearray(encode(frame))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    check_decode(bytes(raw[:cut]))
    check_decode(bytes(raw))


def test_missing_devices_of_a_team_send_decode_up_to_max_wraps() -> None:
    """A team ``send`` has up to 512 targets (SPEC §13.4): the hub's
    ``missing_devices`` answer naming all of them must reach the client."""
    ids = tuple(f"d_{i:016x}" for i in range(MAX_WRAPS))
    err = Error(code="missing_devices", message="missing devices", fatal=False, id=bytes(16), missing=ids)
    assert decode(encode(err)) == err
    too_many = Error(
        code="missing_devices", message="missing devices", fatal=False, id=bytes(16), missing=(*ids, "d_x")
    )
    with pytest.raises(MalformedFrame):
        decode(encode(too_many))
