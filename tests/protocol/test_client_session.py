"""The client's side of a connection (protocol/client_session.py), driven
against the hub's (protocol/session.py): real keys, real bytes, no sockets.
SPEC §4 (states), §5 (the answers to the challenge), §7 (errors)."""

from __future__ import annotations

import msgpack
import pytest

from protocol import crypto, errors
from protocol.client_session import (
    RECEIVABLE,
    SENDABLE,
    Answered,
    Challenged,
    ClientSession,
    ClientState,
    Failed,
    Pushed,
    Welcomed,
    WrongAuthority,
    answer_auth,
    answer_enroll,
    error_from_close,
    error_from_frame,
)
from protocol.errors import (
    AccountSuspended,
    AuthFailed,
    DeviceRevoked,
    FatalError,
    ForgedSender,
    FrameNotAllowed,
    MalformedFrame,
    MissingDevices,
    ProtocolError,
    RequestError,
    RoleVacant,
    SessionReplaced,
    StorageUnavailable,
    UnexpectedFrame,
    UnknownFrameType,
    UnknownUser,
    UnsupportedVersion,
)
from protocol.frames import (
    SERVER_FRAMES,
    Accepted,
    Ack,
    Acknowledge,
    AcknowledgeOk,
    Auth,
    BlobBegin,
    BlobLink,
    BlobLinkOk,
    BlobOk,
    Challenge,
    Deliver,
    Delivered,
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
    Presence,
    Recall,
    RecallOk,
    Refused,
    RoleChanged,
    RoleInfo,
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
    UrgentReminder,
    UrgentStatus,
    Watch,
    Watching,
    Welcome,
    encode,
)
from protocol.oncall import Policy
from protocol.session import ServerSession, State, error_frame

AUTHORITY = bytes(range(32))
OTHER_AUTHORITY = bytes(range(1, 33))
MID = bytes(range(16))
CODE = "ABCD-EFGH-JKMN-PQRS"
TEAM = "t_0123456789abcdef"
HEAD = bytes(range(32, 64))
ROLE = "r_0123456789abcdef"
BLOB = "b_" + "0" * 32
INFO = RoleInfo(ROLE, "Garde", "CHRU", False, ("u_1",), Policy(120_000, (), 600_000))

#: One frame of every hub → client type.
SAMPLES: dict[type[Frame], Frame] = {
    Challenge: Challenge(1, bytes(32)),
    Welcome: Welcome("u_1", "d_1"),
    Accepted: Accepted(MID, False),
    Deliver: Deliver(1, MID, "u_2", "d_2", 5, b"envelope"),
    Delivered: Delivered(2, MID, "u_2", "d_2", 6),
    Refused: Refused(3, MID, "u_2", "d_2", 7, "undecryptable"),
    LookupOk: LookupOk(1, "u_2", "Dr Two", "10000000002", "", "", ()),
    LinkCodeOk: LinkCodeOk(1, CODE, 10),
    Ok: Ok(1),
    Presence: Presence("u_2", "busy", True),
    Watching: Watching(1, ()),
    SearchOk: SearchOk(1, ()),
    DevicesOk: DevicesOk(1, ()),
    Error: Error("auth_failed", "authentication failed", True),
    TeamOk: TeamOk(1, TEAM, 1, HEAD),
    TeamsOk: TeamsOk(1, (TeamHead(TEAM, 1, HEAD),)),
    TeamChainOk: TeamChainOk(1, TEAM, (), False),
    RecallOk: RecallOk(1, MID, 2),
    TeamChanged: TeamChanged(TEAM, 2, HEAD),
    RoleSearchOk: RoleSearchOk(1, (INFO,)),
    RoleOk: RoleOk(1, INFO),
    AcknowledgeOk: AcknowledgeOk(1, MID, "u_2", "u_1", "d_1", 8, True),
    UrgentStatus: UrgentStatus(4, MID, "u_1", "escalated", 1, 9, target=ROLE),
    UrgentReminder: UrgentReminder(MID, "u_2", 1),
    RoleChanged: RoleChanged(ROLE, ("u_1",)),
    BlobOk: BlobOk(1, BLOB, 0),
    BlobLinkOk: BlobLinkOk(1, BLOB, "/blobs/" + "a" * 43, 41, 9),
}
#: The request each answer of SAMPLES answers.
REQUEST_OF: dict[type[Frame], Frame] = {
    Accepted: Send(MID, "d_1", "u_2", {"d_2": b"x"}),
    LookupOk: Lookup(1, user="u_2"),
    LinkCodeOk: LinkCode(1),
    Ok: SetStatus(1, "busy"),
    Watching: Watch(1, ()),
    SearchOk: Search(1, "dupont"),
    DevicesOk: Devices(1),
    TeamOk: TeamChange(1, TEAM, b"rec", bytes(64)),
    TeamsOk: Teams(1),
    TeamChainOk: TeamChain(1, TEAM, 0),
    RecallOk: Recall(1, MID),
    RoleSearchOk: RoleSearch(1, "garde"),
    RoleOk: RoleTake(1, ROLE),
    AcknowledgeOk: Acknowledge(1, MID, "u_2"),
    BlobOk: BlobBegin(1, 41),
    BlobLinkOk: BlobLink(1, BLOB),
}


def challenged(authority: bytes | None = None) -> tuple[ClientSession, ServerSession]:
    hub = ServerSession(authority=authority)
    client = ClientSession()
    event = client.receive(hub.challenge())
    assert isinstance(event, Challenged) and event.challenge.nonce == hub.nonce
    return client, hub


def authenticated(keys: crypto.DeviceKeys | None = None) -> tuple[ClientSession, ServerSession]:
    keys = keys or crypto.DeviceKeys.generate()
    client, hub = challenged()
    frame = hub.receive(client.auth("d_1", keys))
    assert isinstance(frame, Auth)
    hub.authenticate(frame, "u_1", keys.sign_pk)
    event = client.receive(encode(Welcome("u_1", "d_1")))
    assert isinstance(event, Welcomed)
    return client, hub


def session_in(state: ClientState) -> ClientSession:
    if state is ClientState.AWAITING_CHALLENGE:
        return ClientSession()
    if state is ClientState.CHALLENGED:
        return challenged()[0]
    if state is ClientState.ANSWERED:
        client = challenged()[0]
        client.auth("d_1", crypto.DeviceKeys.generate())
        return client
    client = authenticated()[0]
    if state is ClientState.CLOSED:
        client.close()
    return client


# --- the answers to the challenge (SPEC §5) ---------------------------------------


def test_an_auth_answer_is_accepted_by_the_hub_and_welcome_authenticates() -> None:
    keys = crypto.DeviceKeys.generate()
    client, hub = challenged()
    data = client.auth("d_1", keys, ("refusals",))
    assert client.state is ClientState.ANSWERED
    frame = hub.receive(data)
    assert isinstance(frame, Auth)
    hub.authenticate(frame, "u_1", keys.sign_pk)  # raises AuthFailed on a bad signature
    assert hub.state is State.AUTHENTICATED and hub.caps == {"refusals"}
    event = client.receive(encode(Welcome("u_1", "d_1")))
    assert event == Welcomed(Welcome("u_1", "d_1"))
    assert client.state is ClientState.AUTHENTICATED and client.welcome == Welcome("u_1", "d_1")


def test_the_auth_bytes_are_those_of_spec_5_2() -> None:
    keys = crypto.DeviceKeys.generate()
    client, hub = challenged()
    sig = keys.sign(crypto.auth_message(hub.nonce, "d_1"))
    assert client.auth("d_1", keys) == encode(Auth(1, "d_1", sig))


def test_an_auth_signature_is_worthless_on_another_connection() -> None:
    keys = crypto.DeviceKeys.generate()
    client, _ = challenged()
    replayed = ServerSession()
    frame = replayed.receive(client.auth("d_1", keys))
    assert isinstance(frame, Auth)
    with pytest.raises(AuthFailed):
        replayed.authenticate(frame, "u_1", keys.sign_pk)


def test_an_enroll_answer_is_accepted_by_the_hub_and_binds_the_keys() -> None:
    keys = crypto.DeviceKeys.generate()
    client, hub = challenged(AUTHORITY)
    assert client.hub_authority == AUTHORITY and client.hub_caps == {
        "refusals",
        "teams",
        "oncall",
        "blobs",
        "ping",
    }
    frame = hub.receive(client.enroll(CODE, keys, "Pixel 8", ("refusals",), authority=AUTHORITY))
    assert isinstance(frame, Enroll)
    assert (frame.code, frame.sign_pk, frame.box_pk, frame.label) == (
        CODE,
        keys.sign_pk,
        keys.box_pk,
        "Pixel 8",
    )
    hub.check_enroll(frame)  # raises AuthFailed on a bad signature
    hub.enrolled("u_1", "d_new")
    assert isinstance(client.receive(encode(Welcome("u_1", "d_new"))), Welcomed)
    assert client.state is ClientState.AUTHENTICATED


def test_an_enroll_signature_covers_the_code_as_sent() -> None:
    keys = crypto.DeviceKeys.generate()
    client, hub = challenged()
    frame = hub.receive(client.enroll(CODE, keys))
    assert isinstance(frame, Enroll)
    forged = Enroll(1, CODE.lower(), frame.sign_pk, frame.box_pk, frame.label, frame.sig)
    with pytest.raises(AuthFailed):
        ServerSession(nonce=hub.nonce).check_enroll(forged)


def test_a_hub_announcing_another_authority_gets_no_enroll() -> None:
    client, _ = challenged(OTHER_AUTHORITY)
    with pytest.raises(WrongAuthority) as caught:
        client.enroll(CODE, crypto.DeviceKeys.generate(), authority=AUTHORITY)
    assert (caught.value.expected, caught.value.announced) == (AUTHORITY, OTHER_AUTHORITY)
    assert client.state is ClientState.CHALLENGED  # nothing was sent
    assert client.outstanding == frozenset()


def test_a_hub_announcing_no_authority_is_answered() -> None:
    client, hub = challenged(None)
    frame = hub.receive(client.enroll(CODE, crypto.DeviceKeys.generate(), authority=AUTHORITY))
    assert isinstance(frame, Enroll)
    hub.check_enroll(frame)


def test_a_link_code_enrolls_a_second_device_of_the_same_user() -> None:
    first, hub = authenticated()
    rid, data = first.request(lambda rid: LinkCode(rid))
    assert hub.receive(data) == LinkCode(rid)
    event = first.receive(encode(LinkCodeOk(rid, CODE, 900_000)))
    assert isinstance(event, Answered) and event.request == rid
    assert isinstance(event.frame, LinkCodeOk)
    second, second_hub = challenged()
    keys = crypto.DeviceKeys.generate()
    frame = second_hub.receive(second.enroll(event.frame.code, keys, "workstation"))
    assert isinstance(frame, Enroll) and frame.code == CODE
    second_hub.check_enroll(frame)
    second_hub.enrolled("u_1", "d_2")
    assert isinstance(second.receive(encode(Welcome("u_1", "d_2"))), Welcomed)


def test_the_answer_functions_need_only_a_signer() -> None:
    keys = crypto.DeviceKeys.generate()
    challenge = Challenge(1, bytes(32), AUTHORITY)
    auth = answer_auth(challenge, "d_1", keys)
    assert crypto.verify_signature(keys.sign_pk, crypto.auth_message(bytes(32), "d_1"), auth.sig)
    enroll = answer_enroll(challenge, CODE, keys, authority=AUTHORITY)
    message = crypto.enroll_message(bytes(32), CODE, keys.sign_pk, keys.box_pk)
    assert crypto.verify_signature(keys.sign_pk, message, enroll.sig)


def test_a_challenge_of_another_version_is_refused_locally() -> None:
    client = ClientSession()
    with pytest.raises(UnsupportedVersion) as caught:
        client.receive(encode(Challenge(2, bytes(32))))
    assert not caught.value.remote and caught.value.close_code == 4426
    assert client.state is ClientState.CLOSED
    with pytest.raises(FrameNotAllowed):
        client.auth("d_1", crypto.DeviceKeys.generate())


# --- the state table (SPEC §4) ---------------------------------------------------


def test_the_samples_cover_every_hub_frame_type() -> None:
    assert set(SAMPLES) == set(SERVER_FRAMES)


@pytest.mark.parametrize("state", list(ClientState))
@pytest.mark.parametrize("kind", list(SAMPLES), ids=lambda k: k.TYPE)
def test_each_state_admits_exactly_the_hub_frames_of_its_table(state: ClientState, kind: type[Frame]) -> None:
    client = session_in(state)
    if state is ClientState.AUTHENTICATED and kind in REQUEST_OF:
        client.send(REQUEST_OF[kind])
    try:
        client.receive(encode(SAMPLES[kind]))
    except ProtocolError as exc:
        admitted = exc.remote  # the sample error frame is fatal: raised, as reported
        if not admitted:
            assert isinstance(exc, UnexpectedFrame) and exc.frame_type == kind.TYPE
            assert exc.code == "frame_not_allowed" and exc.close_code == 4405
    else:
        admitted = True
    assert admitted == (kind in RECEIVABLE[state])


def test_a_frame_out_of_place_before_welcome_closes_the_session() -> None:
    client = ClientSession()
    with pytest.raises(UnexpectedFrame, match="'welcome' instead of a challenge"):
        client.receive(encode(Welcome("u_1", "d_1")))
    assert client.state is ClientState.CLOSED
    answered = session_in(ClientState.ANSWERED)
    with pytest.raises(UnexpectedFrame, match="'deliver' instead of welcome"):
        answered.receive(encode(SAMPLES[Deliver]))
    assert answered.state is ClientState.CLOSED


def test_a_frame_out_of_place_after_welcome_is_dropped_and_the_session_goes_on() -> None:
    client, _ = authenticated()
    with pytest.raises(UnexpectedFrame) as caught:
        client.receive(encode(Challenge(1, bytes(32))))
    assert not caught.value.remote
    assert client.state is ClientState.AUTHENTICATED
    assert isinstance(client.receive(encode(SAMPLES[Deliver])), Pushed)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\xc1", MalformedFrame),  # not msgpack
        (msgpack.packb({"t": "welcome", "user": "u_1"}), MalformedFrame),  # a field missing
        (encode(Auth(1, "d_1", bytes(64))), UnknownFrameType),  # a client frame from the hub
    ],
)
def test_what_does_not_decode_before_welcome_closes_the_session(data: bytes, error: type[Exception]) -> None:
    client = ClientSession()
    with pytest.raises(error) as caught:
        client.receive(data)
    assert isinstance(caught.value, ProtocolError) and not caught.value.remote
    assert client.state is ClientState.CLOSED


@pytest.mark.parametrize("state", list(ClientState))
def test_each_state_lets_us_send_exactly_the_frames_of_its_table(state: ClientState) -> None:
    keys = crypto.DeviceKeys.generate()
    frames: list[Frame] = [
        Auth(1, "d_1", bytes(64)),
        Enroll(1, CODE, keys.sign_pk, keys.box_pk, "", bytes(64)),
        Ack((1, 2)),
        *REQUEST_OF.values(),
    ]
    for frame in frames:
        client = session_in(state)
        if type(frame) in SENDABLE[state]:
            assert client.send(frame) == encode(frame)
        else:
            with pytest.raises(FrameNotAllowed) as caught:
                client.send(frame)
            assert not caught.value.remote
            assert client.state is state and client.outstanding == frozenset()


def test_the_sendable_table_is_the_hubs() -> None:
    assert SENDABLE[ClientState.CHALLENGED] == {Auth, Enroll}
    assert Send in SENDABLE[ClientState.AUTHENTICATED] and Auth not in SENDABLE[ClientState.AUTHENTICATED]


def test_a_challenge_is_answered_once() -> None:
    keys = crypto.DeviceKeys.generate()
    client, _ = challenged()
    client.auth("d_1", keys)
    with pytest.raises(FrameNotAllowed):
        client.auth("d_1", keys)
    with pytest.raises(FrameNotAllowed):
        client.enroll(CODE, keys)


def test_no_request_before_welcome() -> None:
    client, _ = challenged()
    with pytest.raises(FrameNotAllowed):
        client.request(lambda rid: Lookup(rid, user="u_2"))
    assert client.outstanding == frozenset()


# --- requests and their answers -------------------------------------------------


def test_answers_are_matched_by_rid_whatever_arrives_in_between() -> None:
    client, hub = authenticated()
    rid_a, data_a = client.request(lambda rid: Lookup(rid, user="u_2"))
    rid_b, data_b = client.request(lambda rid: SetStatus(rid, "busy"))
    assert rid_a != rid_b
    assert hub.receive(data_a) == Lookup(rid_a, user="u_2") and hub.receive(data_b) == SetStatus(
        rid_b, "busy"
    )
    assert client.outstanding == {rid_a, rid_b}
    pushed = client.receive(encode(SAMPLES[Presence]))
    assert pushed == Pushed(SAMPLES[Presence])  # type: ignore[arg-type]
    assert client.receive(encode(Ok(rid_b))) == Answered(rid_b, Ok(rid_b))
    assert isinstance(client.receive(encode(SAMPLES[Deliver])), Pushed)
    lookup_ok = LookupOk(rid_a, "u_2", "Dr Two", "10000000002", "", "", ())
    assert client.receive(encode(lookup_ok)) == Answered(rid_a, lookup_ok)
    assert client.outstanding == frozenset()


@pytest.mark.parametrize("kind", [Deliver, Delivered, Refused, Presence, TeamChanged], ids=lambda k: k.TYPE)
def test_pushes_are_classified_as_pushed(kind: type[Frame]) -> None:
    client, _ = authenticated()
    assert client.receive(encode(SAMPLES[kind])) == Pushed(SAMPLES[kind])  # type: ignore[arg-type]


def test_team_requests_are_answered_by_rid_and_team_errors_fail_them() -> None:
    """Revision 3 (SPEC §13.4): team_change, teams, team_chain and recall are
    matched by rid like the other requests; team_changed is a push."""
    client, _ = authenticated()
    rid_change, _ = client.request(lambda rid: TeamChange(rid, TEAM, b"rec", bytes(64)))
    rid_teams, _ = client.request(lambda rid: Teams(rid))
    rid_chain, _ = client.request(lambda rid: TeamChain(rid, TEAM, 0))
    rid_recall, _ = client.request(lambda rid: Recall(rid, MID))
    pushed = TeamChanged(TEAM, 3, HEAD)
    assert client.receive(encode(pushed)) == Pushed(pushed)
    recall_ok = RecallOk(rid_recall, MID, 1)
    assert client.receive(encode(recall_ok)) == Answered(rid_recall, recall_ok)
    chain_ok = TeamChainOk(rid_chain, TEAM, (), False)
    assert client.receive(encode(chain_ok)) == Answered(rid_chain, chain_ok)
    teams_ok = TeamsOk(rid_teams, (TeamHead(TEAM, 3, HEAD),))
    assert client.receive(encode(teams_ok)) == Answered(rid_teams, teams_ok)
    conflict = Error(errors.TeamConflict.code, errors.TeamConflict.message, rid=rid_change)
    event = client.receive(encode(conflict))
    assert isinstance(event, Failed) and event.request == rid_change
    assert isinstance(event.error, errors.TeamConflict) and event.error.remote
    assert client.outstanding == frozenset()


def test_a_stale_team_head_fails_the_send_by_its_id() -> None:
    client, _ = authenticated()
    client.send(Send(MID, "d_1", TEAM, {"d_2": b"w" * 72}, body=b"b" * 104, head=HEAD))
    event = client.receive(encode(Error("team_changed", errors.StaleTeamHead.message, id=MID)))
    assert isinstance(event, Failed) and isinstance(event.error, errors.StaleTeamHead)


def test_an_error_answering_a_request_fails_that_request_only() -> None:
    client, _ = authenticated()
    rid, _ = client.request(lambda rid: Lookup(rid, user="u_9"))
    other, _ = client.request(lambda rid: Devices(rid))
    event = client.receive(error_frame(UnknownUser(), rid=rid))
    assert isinstance(event, Failed) and event.request == rid
    assert isinstance(event.error, UnknownUser) and event.error.remote
    assert client.state is ClientState.AUTHENTICATED and client.outstanding == {other}


def test_sends_are_matched_by_message_id() -> None:
    client, hub = authenticated()
    data = client.send(Send(MID, "d_1", "u_2", {"d_2": b"x"}))
    assert isinstance(hub.receive(data), Send)
    assert client.outstanding == {MID}
    event = client.receive(error_frame(MissingDevices(["d_3"]), id=MID))
    assert isinstance(event, Failed) and event.request == MID
    assert isinstance(event.error, MissingDevices) and event.error.missing == ["d_3"] and event.error.remote
    client.send(Send(MID, "d_1", "u_2", {"d_2": b"x", "d_3": b"y"}))
    assert client.receive(encode(Accepted(MID, False))) == Answered(MID, Accepted(MID, False))
    assert client.outstanding == frozenset()


def test_a_resend_of_an_outstanding_id_is_answered_once_more() -> None:
    client, _ = authenticated()
    send = Send(MID, "d_1", "u_2", {"d_2": b"x"})
    client.send(send)
    client.send(send)
    assert isinstance(client.receive(encode(Accepted(MID, False))), Answered)
    assert isinstance(client.receive(encode(Accepted(MID, True))), Answered)
    with pytest.raises(UnexpectedFrame):
        client.receive(encode(Accepted(MID, True)))


def test_a_non_fatal_error_naming_no_request_fails_none() -> None:
    client, _ = authenticated()
    client.send(Ack((1,)))
    event = client.receive(error_frame(StorageUnavailable(retry_after_ms=250)))
    assert isinstance(event, Failed) and event.request is None
    assert isinstance(event.error, StorageUnavailable) and event.error.retry_after_ms == 250
    assert client.state is ClientState.AUTHENTICATED


@pytest.mark.parametrize(
    "frame",
    [Ok(41), Error("unknown_user", "no such user", False, rid=41), Accepted(MID, False)],
    ids=["answer", "error", "accepted"],
)
def test_an_answer_to_no_outstanding_request_is_a_local_error(frame: Frame) -> None:
    client, _ = authenticated()
    client.request(lambda rid: Devices(rid))
    with pytest.raises(UnexpectedFrame) as caught:
        client.receive(encode(frame))
    assert not caught.value.remote
    assert client.state is ClientState.AUTHENTICATED and len(client.outstanding) == 1


def test_a_request_is_answered_once() -> None:
    client, _ = authenticated()
    rid, _ = client.request(lambda rid: SetStatus(rid, "busy"))
    assert isinstance(client.receive(encode(Ok(rid))), Answered)
    with pytest.raises(UnexpectedFrame):
        client.receive(encode(Ok(rid)))


def test_an_answer_of_the_wrong_type_fails_its_request_locally() -> None:
    client, _ = authenticated()
    rid, _ = client.request(lambda rid: Lookup(rid, user="u_2"))
    event = client.receive(encode(Ok(rid)))
    assert isinstance(event, Failed) and event.request == rid
    assert isinstance(event.error, UnexpectedFrame) and not event.error.remote
    assert "'lookup' with 'ok'" in event.error.detail
    assert client.outstanding == frozenset()


def test_an_answer_that_does_not_decode_fails_its_request_and_the_session_goes_on() -> None:
    client, _ = authenticated()
    rid, _ = client.request(lambda rid: Lookup(rid, user="u_2"))
    # A lookup_ok listing more devices than SPEC §2 allows.
    device = {"device": "d_2", "sign_pk": bytes(32), "box_pk": bytes(32)}
    bad = msgpack.packb(
        {"t": "lookup_ok", "rid": rid, "user": "u_2", "name": "N", "rpps": "1", "profession": "",
         "organisation": "", "devices": [device] * 65},
        use_bin_type=True,
    )  # fmt: skip
    event = client.receive(bad)
    assert isinstance(event, Failed) and event.request == rid
    assert isinstance(event.error, MalformedFrame) and not event.error.remote
    with pytest.raises(MalformedFrame):
        client.receive(b"\xc1")  # names no request: raised, and dropped
    assert client.state is ClientState.AUTHENTICATED
    assert isinstance(client.receive(encode(SAMPLES[Delivered])), Pushed)


def test_rids_are_fresh_even_next_to_rids_chosen_by_the_caller() -> None:
    client, _ = authenticated()
    client.send(LinkCode(1))
    client.send(LinkCode(2))
    rid, data = client.request(lambda rid: Devices(rid))
    assert rid == 3 and data == encode(Devices(3))
    with pytest.raises(ValueError):
        client.send(LinkCode(2))  # still outstanding
    with pytest.raises(ValueError):
        client.request(lambda rid: Devices(rid + 1))


# --- the hub's reports (SPEC §7) -------------------------------------------------


def wire_error_classes() -> list[type[ProtocolError]]:
    """Every error class a wire code names."""
    found: list[type[ProtocolError]] = []
    pending = [ProtocolError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls is not ProtocolError and errors.error_class(cls.code) is cls:
            found.append(cls)
    return sorted(found, key=lambda cls: cls.code)


def test_every_wire_code_has_a_class() -> None:
    assert len(wire_error_classes()) >= 22


@pytest.mark.parametrize("cls", wire_error_classes(), ids=lambda c: c.code)
def test_an_error_frame_maps_back_to_the_class_the_hub_raised(cls: type[ProtocolError]) -> None:
    raised = (
        MissingDevices(["d_3"])
        if cls is MissingDevices
        else RoleVacant(ROLE, retry_after_ms=500)
        if cls is RoleVacant
        else cls(retry_after_ms=500)
    )
    data = error_frame(raised, rid=None if issubclass(cls, FatalError) else 1)
    client, _ = authenticated()
    client.send(Devices(1))
    if issubclass(cls, FatalError):
        with pytest.raises(cls) as caught:
            client.receive(data)
        reported: ProtocolError = caught.value
        assert client.state is ClientState.CLOSED
    else:
        event = client.receive(data)
        assert isinstance(event, Failed) and event.request == 1
        reported = event.error
        assert client.state is ClientState.AUTHENTICATED
    assert type(reported) is cls and reported.remote
    assert str(reported) == cls.message
    if cls is not MissingDevices:
        assert reported.retry_after_ms == 500
    if cls is RoleVacant:
        assert isinstance(reported, RoleVacant) and reported.role == ROLE


@pytest.mark.parametrize(
    "frame",
    [
        Error("auth_failed", "authentication failed", True),
        Error("storage_unavailable", "storage unavailable", False, retry_after=1000),
        Error("rate_limited", "too many requests", False, retry_after=200),
    ],
    ids=lambda e: e.code,
)
@pytest.mark.parametrize(
    "state", [ClientState.AWAITING_CHALLENGE, ClientState.CHALLENGED, ClientState.ANSWERED]
)
def test_any_error_before_welcome_is_raised_and_closes(frame: Error, state: ClientState) -> None:
    client = session_in(state)
    with pytest.raises(ProtocolError) as caught:
        client.receive(encode(frame))
    assert caught.value.code == frame.code and caught.value.remote
    assert caught.value.retry_after_ms == frame.retry_after
    assert client.state is ClientState.CLOSED


def test_a_fatal_error_after_welcome_closes_the_session() -> None:
    client, _ = authenticated()
    client.request(lambda rid: Devices(rid))
    with pytest.raises(ForgedSender) as caught:
        client.receive(error_frame(ForgedSender()))
    assert caught.value.remote and client.state is ClientState.CLOSED
    with pytest.raises(UnexpectedFrame):
        client.receive(encode(DevicesOk(1, ())))


def test_an_unknown_code_keeps_what_the_hub_said() -> None:
    exc = error_from_frame(Error("new_code", "something new", False, retry_after=7))
    assert type(exc) is ProtocolError and exc.remote
    assert str(exc) == "new_code: something new" and exc.retry_after_ms == 7
    assert not isinstance(exc, RequestError | FatalError)


@pytest.mark.parametrize(
    "cls", [c for c in wire_error_classes() if issubclass(c, FatalError)], ids=lambda c: c.code
)
def test_a_close_names_its_fatal_error_by_reason_or_by_code(cls: type[FatalError]) -> None:
    assert cls.close_code is not None
    by_reason = error_from_close(cls.close_code, cls.code)
    by_code = error_from_close(cls.close_code, "")
    by_reason_alone = error_from_close(1008, cls.code)
    for exc in (by_reason, by_code, by_reason_alone):
        assert type(exc) is cls and exc.remote


def test_the_close_code_map_is_not_fooled_by_local_refinements() -> None:
    exc = error_from_close(4405, None)
    assert type(exc) is FrameNotAllowed


@pytest.mark.parametrize(
    ("code", "reason"),
    [(1000, ""), (1001, ""), (1009, "message too big"), (1011, "internal error"),
     (1013, "storage_unavailable"), (1008, "rate_limited"), (1008, "too_many_devices"), (None, None),
     (4999, "no_such_code")],
)  # fmt: skip
def test_other_closes_name_no_protocol_error(code: int | None, reason: str | None) -> None:
    assert error_from_close(code, reason) is None


def test_connection_closed_closes_the_session_and_names_the_error() -> None:
    client, _ = authenticated()
    exc = client.connection_closed(4409, "session_replaced")
    assert isinstance(exc, SessionReplaced) and exc.remote
    assert client.state is ClientState.CLOSED
    assert isinstance(ClientSession().connection_closed(4410, None), DeviceRevoked)
    assert isinstance(ClientSession().connection_closed(1000, "account_suspended"), AccountSuspended)


def test_errors_are_local_unless_reported() -> None:
    assert not AuthFailed().remote and not UnexpectedFrame("welcome").remote
    hub = ServerSession()
    with pytest.raises(MalformedFrame) as caught:
        hub.receive(b"\xc1")
    assert not caught.value.remote  # the hub found it: its own, local, error
    assert error_from_frame(Error("malformed_frame", "m", True)).remote
