"""The hub's connection state table and authentication (SPEC.md §4, §5)."""

from __future__ import annotations

import re
from pathlib import Path

import msgpack
import pytest

import protocol
from protocol import crypto, errors
from protocol.frames import (
    CLIENT_FRAMES,
    MAX_ACK_BYTES,
    SERVER_FRAMES,
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
    Challenge,
    Deliver,
    Delivered,
    DeviceEntry,
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
    TeamOk,
    Teams,
    TeamsOk,
    UrgentReminder,
    UrgentStatus,
    Watch,
    Watching,
    Welcome,
    decode,
    encode,
)
from protocol.oncall import Policy
from protocol.session import ALLOWED, ServerSession, State, error_frame

USER = "u_00000000000000a1"
DEVICE = "d_00000000000000a1"
OTHER_DEVICE = "d_00000000000000a2"
KEYS = crypto.DeviceKeys(bytes(range(32)), bytes(range(32, 64)))
OTHER_KEYS = crypto.DeviceKeys(bytes(range(64, 96)), bytes(range(96, 128)))
CODE = "7K3M-9QXR-2H4P-VW8N"
TEAM = "t_00000000000000c1"
ROLE = "r_00000000000000d1"


def auth_frame(
    session: ServerSession, keys: crypto.DeviceKeys = KEYS, device: str = DEVICE, v: int = 1
) -> Auth:
    return Auth(v=v, device=device, sig=keys.sign(crypto.auth_message(session.nonce, device)))


def enroll_frame(
    session: ServerSession, keys: crypto.DeviceKeys = KEYS, code: str = CODE, v: int = 1
) -> Enroll:
    sig = keys.sign(crypto.enroll_message(session.nonce, code, keys.sign_pk, keys.box_pk))
    return Enroll(v=v, code=code, sign_pk=keys.sign_pk, box_pk=keys.box_pk, label="phone", sig=sig)


def authenticated() -> ServerSession:
    session = ServerSession()
    frame = session.receive(encode(auth_frame(session)))
    assert isinstance(frame, Auth)
    session.authenticate(frame, USER, KEYS.sign_pk)
    assert session.state is State.AUTHENTICATED
    return session


def closed() -> ServerSession:
    session = ServerSession()
    with pytest.raises(errors.MalformedFrame):
        session.receive(b"\xc1")
    assert session.state is State.CLOSED
    return session


SESSION_IN = {State.CHALLENGED: ServerSession, State.AUTHENTICATED: authenticated, State.CLOSED: closed}


BLOB = "b_" + "0" * 32


def sample(cls: type[Frame], session: ServerSession) -> Frame:
    """A valid frame of each client type, as seen on ``session``."""
    if cls is Auth:
        return auth_frame(session)
    if cls is Enroll:
        return enroll_frame(session)
    if cls is Send:
        return Send(
            id=crypto.new_message_id(), sender=DEVICE, to="u_00000000000000b1", envs={"d_b": b"e" * 40}
        )
    if cls is Ack:
        return Ack(seqs=(1,))
    if cls is Lookup:
        return Lookup(rid=1, user="u_00000000000000b1")
    if cls is SetStatus:
        return SetStatus(rid=1, status="busy")
    if cls is Watch:
        return Watch(rid=1, users=("u_00000000000000b1",))
    if cls is Search:
        return Search(rid=1, query="cardio")
    if cls is Devices:
        return Devices(rid=1)
    if cls is Revoke:
        return Revoke(rid=1, device="d_1")
    if cls is Ping:
        return Ping(rid=1)
    if cls is TeamChange:
        return TeamChange(rid=1, team=TEAM, rec=b"r" * 100, sig=b"s" * 64)
    if cls is Teams:
        return Teams(rid=1)
    if cls is TeamChain:
        return TeamChain(rid=1, team=TEAM, from_seq=0)
    if cls is Recall:
        return Recall(rid=1, id=bytes(16))
    if cls is RoleSearch:
        return RoleSearch(rid=1, query="cardio")
    if cls is RoleGet:
        return RoleGet(rid=1, role=ROLE)
    if cls is RoleTake:
        return RoleTake(rid=1, role=ROLE)
    if cls is RoleLeave:
        return RoleLeave(rid=1, role=ROLE)
    if cls is Acknowledge:
        return Acknowledge(rid=1, id=bytes(16), sender="u_00000000000000b1")
    if cls is BlobBegin:
        return BlobBegin(rid=1, size=41)
    if cls is BlobPut:
        return BlobPut(rid=1, blob=BLOB, off=0, data=b"x" * 41)
    if cls is BlobEnd:
        return BlobEnd(rid=1, blob=BLOB)
    if cls is BlobLink:
        return BlobLink(rid=1, blob=BLOB)
    assert cls is LinkCode
    return LinkCode(rid=1)


# --- the table ----------------------------------------------------------------------------


def test_challenge_frame() -> None:
    a, b = ServerSession(), ServerSession(authority=b"\x05" * 32)
    assert a.state is State.CHALLENGED
    frame = decode(a.challenge(), SERVER_FRAMES)
    assert frame == Challenge(v=1, nonce=a.nonce, caps=("refusals", "teams", "oncall", "blobs", "ping"))
    assert len(a.nonce) == 32 and a.nonce != b.nonce
    # The authority key the hub is configured with, for enrolling clients (SPEC §5.1).
    other = decode(b.challenge(), SERVER_FRAMES)
    assert isinstance(other, Challenge) and other.authority == b"\x05" * 32


def test_the_client_caps_are_kept_for_the_connection() -> None:
    session = ServerSession()
    session.receive(encode(Auth(1, DEVICE, b"\x00" * 64, caps=("refusals", "some_later_one"))))
    assert session.caps == {"refusals", "some_later_one"}
    plain = ServerSession()
    plain.receive(encode(Auth(1, DEVICE, b"\x00" * 64)))
    assert plain.caps == frozenset()


def test_an_ack_over_the_size_an_honest_one_needs_is_malformed() -> None:
    session = SESSION_IN[State.AUTHENTICATED]()
    padded = msgpack.packb({"t": "ack", "seqs": [1], "junk": b"x" * MAX_ACK_BYTES}, use_bin_type=True)
    with pytest.raises(errors.MalformedFrame):
        session.receive(padded)
    assert session.state is State.CLOSED
    fine = SESSION_IN[State.AUTHENTICATED]()
    assert fine.receive(encode(Ack(seqs=tuple(range(1024))))) == Ack(seqs=tuple(range(1024)))


def test_table_covers_every_client_frame_once() -> None:
    assert ALLOWED[State.CHALLENGED] == {Auth, Enroll}
    assert ALLOWED[State.AUTHENTICATED] == {
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
    }
    assert ALLOWED[State.CLOSED] == set()
    assert set(ALLOWED) == set(State)


def test_spec_table_2_matches_allowed() -> None:
    """SPEC §4 Table 2 lists, per state, exactly the frames ALLOWED admits
    and, as not admitted, every other client frame type; the requests of
    revision 3 (SPEC §13.4's table) are admitted once authenticated."""
    spec = (Path(protocol.__file__).resolve().parent / "SPEC.md").read_text(encoding="utf-8")
    table = spec.split("*Table 2.", 1)[1].split("*Table 3.", 1)[0]
    section_13_4 = spec.split("### 13.4", 1)[1].split("### 13.5", 1)[0]
    revision_3 = set(re.findall(r"^\| `([a-z_]+)` \| `rid`", section_13_4, re.M))
    assert revision_3 == {"team_change", "teams", "team_chain", "recall"}
    section_14_3 = spec.split("### 14.3", 1)[1].split("### 14.4", 1)[0]
    revision_3 |= set(re.findall(r"^\| `([a-z_]+)` \| `rid`", section_14_3, re.M))
    assert revision_3 >= {"role_search", "role_get", "role_take", "role_leave", "acknowledge"}
    section_16_4 = spec.split("### 16.4", 1)[1].split("### 16.5", 1)[0]
    revision_6 = set(re.findall(r"^\| `([a-z_]+)` \| `rid`", section_16_4, re.M))
    assert revision_6 == {"blob_begin", "blob_put", "blob_end", "blob_link"}
    revision_3 |= revision_6
    section_3_3 = spec.split("### 3.3", 1)[1].split("### 3.4", 1)[0]
    assert "**`ping`** (revision 8" in section_3_3 and "of revision 8 (`ping`" in spec
    revision_3 |= {"ping"}
    every = {cls.TYPE for cls in CLIENT_FRAMES}
    for state in State:
        row = re.search(rf"^\| {state.name} \| ([^|]*) \| ([^|]*) \|$", table, re.M)
        assert row is not None, state
        admitted = set(re.findall(r"`([a-z_]+)`", row[1]))
        if state is State.AUTHENTICATED:
            admitted |= revision_3
        refused = every if row[2].strip() == "everything" else set(re.findall(r"`([a-z_]+)`", row[2]))
        assert admitted == {cls.TYPE for cls in ALLOWED[state]}, state
        assert refused - revision_3 == every - admitted - revision_3, state


@pytest.mark.parametrize(
    ("state", "cls"),
    [(state, cls) for state in State for cls in CLIENT_FRAMES if cls not in ALLOWED[state]],
    ids=lambda x: x.value if isinstance(x, State) else x.TYPE,
)
def test_disallowed_frame_closes(state: State, cls: type[Frame]) -> None:
    session = SESSION_IN[state]()
    with pytest.raises(errors.FrameNotAllowed) as caught:
        session.receive(encode(sample(cls, session)))
    assert caught.value.close_code == 4405 and caught.value.code == "frame_not_allowed"
    assert session.state is State.CLOSED
    # Nothing is admitted afterwards, not even a frame the old state allowed.
    for again in CLIENT_FRAMES:
        with pytest.raises(errors.FrameNotAllowed):
            session.receive(encode(sample(again, session)))


@pytest.mark.parametrize(
    ("state", "cls"),
    # Sorted: a set of classes iterates in an order that differs between processes (xdist workers).
    [(state, cls) for state in State for cls in sorted(ALLOWED[state], key=lambda c: c.TYPE)],
    ids=lambda x: x.value if isinstance(x, State) else x.TYPE,
)
def test_allowed_frame_is_admitted(state: State, cls: type[Frame]) -> None:
    session = SESSION_IN[state]()
    frame = sample(cls, session)
    assert session.receive(encode(frame)) == frame
    assert session.state is state  # receive alone never authenticates


MID = bytes(range(16))
SERVER_SAMPLES: list[Frame] = [
    Challenge(v=1, nonce=bytes(32)),
    Welcome(user=USER, device=DEVICE),
    Accepted(id=MID),
    Deliver(seq=1, id=MID, from_user="u_b", from_device="d_b", ts=1, env=b"e" * 40),
    Delivered(seq=2, id=MID, user="u_b", device="d_b", ts=2),
    Refused(seq=3, id=MID, user="u_b", device="d_b", ts=3, reason="undecryptable"),
    LookupOk(rid=1, user="u_b", name="B", rpps="1", profession="", organisation="", devices=()),
    LinkCodeOk(rid=1, code=CODE, expires=3),
    Ok(rid=1),
    Presence(user="u_b", status="on_call", online=True),
    Watching(rid=1, presence=(Presence(user="u_b", status="off_duty", online=False),)),
    SearchOk(rid=1, atts=(b"a" * 100,)),
    DevicesOk(rid=1, devices=(DeviceEntry("d_a", "phone", 1, False),)),
    Error(code="auth_failed", message="m", fatal=True),
    TeamOk(rid=1, team=TEAM, seq=1, head=bytes(32)),
    TeamsOk(rid=1, teams=()),
    TeamChainOk(rid=1, team=TEAM, recs=(), more=False),
    RecallOk(rid=1, id=MID, removed=0),
    TeamChanged(team=TEAM, seq=2, head=bytes(32)),
    RoleSearchOk(rid=1, roles=()),
    RoleOk(rid=1, info=RoleInfo(ROLE, "Garde", "", True, (), Policy(120_000, (), 600_000))),
    AcknowledgeOk(rid=1, id=MID, sender="u_b", user="u_a", device="d_a", at=4, first=False),
    UrgentStatus(seq=4, id=MID, sender="u_a", state="unacknowledged", step=0, ts=5),
    UrgentReminder(id=MID, sender="u_b", n=1),
    RoleChanged(role=ROLE, holders=()),
    BlobOk(rid=1, blob="b_" + "0" * 32, have=0),
    BlobLinkOk(rid=1, blob="b_" + "0" * 32, url="/blobs/" + "a" * 43, size=41, expires=9),
]


def test_server_samples_cover_server_frames() -> None:
    assert {type(f) for f in SERVER_SAMPLES} == set(SERVER_FRAMES)


@pytest.mark.parametrize("state", [State.CHALLENGED, State.AUTHENTICATED])
@pytest.mark.parametrize("frame", SERVER_SAMPLES, ids=lambda f: f.TYPE)
def test_server_frame_from_client_is_unknown(state: State, frame: Frame) -> None:
    session = SESSION_IN[state]()
    with pytest.raises(errors.UnknownFrameType) as caught:
        session.receive(encode(frame))
    assert caught.value.close_code == 4404
    assert session.state is State.CLOSED


@pytest.mark.parametrize("state", [State.CHALLENGED, State.AUTHENTICATED])
def test_malformed_and_unknown_close(state: State) -> None:
    for data, exc, close in (
        (b"\x93\x01\x02\x03", errors.MalformedFrame, 4400),
        (b"\x81\xa1t\xa5hello", errors.UnknownFrameType, 4404),
    ):
        session = SESSION_IN[state]()
        with pytest.raises(exc) as caught:
            session.receive(data)
        assert caught.value.close_code == close
        assert session.state is State.CLOSED


# --- auth ---------------------------------------------------------------------------------


def test_auth_with_good_signature() -> None:
    session = ServerSession()
    frame = session.receive(encode(auth_frame(session)))
    assert isinstance(frame, Auth)
    session.authenticate(frame, USER, KEYS.sign_pk)
    assert (session.state, session.user_id, session.device_id) == (State.AUTHENTICATED, USER, DEVICE)


@pytest.mark.parametrize(
    "make_sig",
    [
        pytest.param(lambda n: OTHER_KEYS.sign(crypto.auth_message(n, DEVICE)), id="signed-by-another-key"),
        pytest.param(
            lambda n: KEYS.sign(crypto.auth_message(n, OTHER_DEVICE)), id="signed-for-another-device"
        ),
        pytest.param(lambda n: KEYS.sign(n + DEVICE.encode()), id="no-context"),
        pytest.param(lambda n: KEYS.sign(b"miss.v1/enroll\x00" + n + DEVICE.encode()), id="enroll-context"),
        pytest.param(lambda n: KEYS.sign(crypto.auth_message(bytes(32), DEVICE)), id="other-nonce"),
        pytest.param(lambda n: b"\x00" * 64, id="zero-signature"),
    ],
)
def test_auth_with_bad_signature_fails(make_sig: object) -> None:
    session = ServerSession()
    frame = session.receive(encode(Auth(v=1, device=DEVICE, sig=make_sig(session.nonce))))  # type: ignore[operator]
    assert isinstance(frame, Auth)
    with pytest.raises(errors.AuthFailed) as caught:
        session.authenticate(frame, USER, KEYS.sign_pk)
    assert caught.value.close_code == 4401
    assert session.state is State.CLOSED and session.device_id is None
    # A closed session cannot be talked back into life with a good signature.
    with pytest.raises(errors.FrameNotAllowed):
        session.receive(encode(auth_frame(session)))
    with pytest.raises(errors.FatalError):
        session.authenticate(auth_frame(session), USER, KEYS.sign_pk)
    assert session.state is State.CLOSED


@pytest.mark.parametrize(("user_id", "sign_pk"), [(None, None), (USER, None), (None, KEYS.sign_pk)])
def test_auth_of_unknown_or_revoked_device_fails(user_id: str | None, sign_pk: bytes | None) -> None:
    session = ServerSession()
    frame = session.receive(encode(auth_frame(session)))
    assert isinstance(frame, Auth)
    with pytest.raises(errors.AuthFailed):
        session.authenticate(frame, user_id, sign_pk)
    assert session.state is State.CLOSED


def test_captured_auth_is_useless_on_another_connection() -> None:
    victim = ServerSession()
    captured = encode(auth_frame(victim))
    attacker = ServerSession()
    assert attacker.nonce != victim.nonce
    frame = attacker.receive(captured)
    assert isinstance(frame, Auth)
    with pytest.raises(errors.AuthFailed):
        attacker.authenticate(frame, USER, KEYS.sign_pk)
    assert attacker.state is State.CLOSED


def test_nonce_answers_one_auth_only() -> None:
    session = ServerSession()
    data = encode(auth_frame(session))
    frame = session.receive(data)
    assert isinstance(frame, Auth)
    session.authenticate(frame, USER, KEYS.sign_pk)
    with pytest.raises(errors.FrameNotAllowed):
        session.receive(data)
    assert session.state is State.CLOSED


def test_binding_twice_closes() -> None:
    session = authenticated()
    with pytest.raises(errors.FrameNotAllowed):
        session.enrolled(USER, OTHER_DEVICE)
    assert session.state is State.CLOSED and session.device_id == DEVICE


@pytest.mark.parametrize("state", [State.CHALLENGED, State.AUTHENTICATED, State.CLOSED])
def test_close_admits_nothing_more(state: State) -> None:
    """The hub closes a session whose device it refuses after a good
    signature (revoked, suspended): no frame is admitted afterwards, and
    the session still names the device for the hub's logs."""
    session = SESSION_IN[state]()
    device = session.device_id
    session.close()
    assert session.state is State.CLOSED and session.device_id == device
    for cls in CLIENT_FRAMES:
        with pytest.raises(errors.FrameNotAllowed):
            session.receive(encode(sample(cls, session)))
    with pytest.raises(errors.FatalError):
        session.enrolled(USER, OTHER_DEVICE)
    assert session.state is State.CLOSED and session.device_id == device


# --- enroll -------------------------------------------------------------------------------


def test_enroll_with_good_signature() -> None:
    session = ServerSession()
    frame = session.receive(encode(enroll_frame(session)))
    assert isinstance(frame, Enroll)
    session.check_enroll(frame)
    assert session.state is State.CHALLENGED
    session.enrolled(USER, "d_00000000000000a9")
    assert (session.state, session.user_id, session.device_id) == (
        State.AUTHENTICATED,
        USER,
        "d_00000000000000a9",
    )


def _enroll_variant(session: ServerSession, what: str) -> Enroll:
    good = enroll_frame(session)
    if what == "box-key-swapped":  # an attacker substitutes its own box key
        return Enroll(good.v, good.code, good.sign_pk, OTHER_KEYS.box_pk, good.label, good.sig)
    if what == "sign-key-swapped":
        return Enroll(good.v, good.code, OTHER_KEYS.sign_pk, good.box_pk, good.label, good.sig)
    if what == "code-changed":
        return Enroll(good.v, "7K3M9QXR2H4PVW8N", good.sign_pk, good.box_pk, good.label, good.sig)
    if what == "auth-context":
        sig = KEYS.sign(b"miss.v1/auth\x00" + session.nonce + KEYS.sign_pk + KEYS.box_pk + CODE.encode())
        return Enroll(good.v, good.code, good.sign_pk, good.box_pk, good.label, sig)
    assert what == "other-connection"
    return enroll_frame(ServerSession())


@pytest.mark.parametrize(
    "what", ["box-key-swapped", "sign-key-swapped", "code-changed", "auth-context", "other-connection"]
)
def test_enroll_with_bad_signature_fails(what: str) -> None:
    session = ServerSession()
    frame = session.receive(encode(_enroll_variant(session, what)))
    assert isinstance(frame, Enroll)
    with pytest.raises(errors.AuthFailed) as caught:
        session.check_enroll(frame)
    assert caught.value.close_code == 4401
    assert session.state is State.CLOSED


def test_label_is_not_signed() -> None:
    """SPEC §5.1: the label is not covered by the enrollment signature."""
    session = ServerSession()
    good = enroll_frame(session)
    relabelled = Enroll(good.v, good.code, good.sign_pk, good.box_pk, "renamed", good.sig)
    frame = session.receive(encode(relabelled))
    assert isinstance(frame, Enroll)
    session.check_enroll(frame)
    assert session.state is State.CHALLENGED


# --- after authentication -------------------------------------------------------------------


def test_send_from_own_device_is_admitted() -> None:
    session = authenticated()
    frame = sample(Send, session)
    assert session.receive(encode(frame)) == frame


def test_forged_sender_closes() -> None:
    session = authenticated()
    forged = Send(id=crypto.new_message_id(), sender=OTHER_DEVICE, to="u_b", envs={"d_b": b"e" * 40})
    with pytest.raises(errors.ForgedSender) as caught:
        session.receive(encode(forged))
    assert (caught.value.code, caught.value.close_code) == ("forged_sender", 4403)
    assert session.state is State.CLOSED


@pytest.mark.parametrize("v", [0, 2, 99])
@pytest.mark.parametrize("kind", ["auth", "enroll"])
def test_unsupported_version_closes(kind: str, v: int) -> None:
    session = ServerSession()
    frame = auth_frame(session, v=v) if kind == "auth" else enroll_frame(session, v=v)
    with pytest.raises(errors.UnsupportedVersion) as caught:
        session.receive(encode(frame))
    assert (caught.value.code, caught.value.close_code) == ("unsupported_version", 4426)
    assert session.state is State.CLOSED


# --- error frames ---------------------------------------------------------------------------


def test_fatal_error_frame_hides_details() -> None:
    frame = decode(error_frame(errors.AuthFailed("device d_secret has key 0xdeadbeef")), SERVER_FRAMES)
    assert frame == Error(code="auth_failed", message=errors.AuthFailed.message, fatal=True)
    assert "secret" not in frame.message and "deadbeef" not in frame.message


def test_request_error_frames_carry_their_request() -> None:
    mid = crypto.new_message_id()
    missing = decode(error_frame(errors.MissingDevices(["d_1", "d_2"]), id=mid))
    assert missing == Error(
        code="missing_devices",
        message=errors.MissingDevices.message,
        fatal=False,
        id=mid,
        missing=("d_1", "d_2"),
    )
    retry = decode(error_frame(errors.StorageUnavailable(retry_after_ms=250), id=mid))
    assert isinstance(retry, Error) and (retry.retry_after, retry.fatal, retry.id) == (250, False, mid)
    unknown = decode(error_frame(errors.UnknownUser(), rid=7))
    assert isinstance(unknown, Error) and (unknown.code, unknown.rid, unknown.id) == ("unknown_user", 7, None)


def test_unknown_error_code_maps_to_base_class() -> None:
    assert errors.error_class("a_code_from_the_future") is errors.ProtocolError
