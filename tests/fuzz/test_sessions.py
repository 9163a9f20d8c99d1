"""Fuzzing the two session state machines (SPEC §4): the hub's
:class:`~protocol.session.ServerSession` and the client's
:class:`~protocol.client_session.ClientSession`, each fed random sequences
of valid, mutated and random frames, with the handshake steps (a good or bad
signature, our own requests) interleaved.

After every frame: the session returned what its state admits or raised a
:mod:`protocol.errors` exception, never anything else; its state moved only
as its table says (a fatal error closes it, CLOSED is for ever, an
authenticated client survives a bad frame); the client's outstanding
requests shrink exactly by the one an answer settles.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import example, given
from hypothesis import strategies as st

from protocol import crypto
from protocol.client_session import (
    Answered,
    Challenged,
    ClientSession,
    ClientState,
    Failed,
    Pushed,
    Welcomed,
)
from protocol.errors import (
    AuthFailed,
    ForgedSender,
    FrameNotAllowed,
    MalformedFrame,
    ProtocolError,
    UnknownFrameType,
    UnsupportedVersion,
)
from protocol.frames import (
    CLIENT_FRAMES,
    HUB_CAPS,
    SERVER_FRAMES,
    Auth,
    Challenge,
    Devices,
    Enroll,
    Error,
    Frame,
    Lookup,
    Send,
    Teams,
    Welcome,
    encode,
)
from protocol.session import ALLOWED, ServerSession, State
from tests.fuzz.strategies import Budget, counted, fuzz_settings, msgpack_values, mutated, wire_maps

KEYS = crypto.DeviceKeys.generate()
OTHER_KEYS = crypto.DeviceKeys.generate()
DEVICE = "d_00000000000000a1"
USER = "u_00000000000000a1"
NONCE = bytes(range(32))


def pack(m: Any) -> bytes:
    out: bytes = msgpack.packb(m, use_bin_type=True)
    return out


def frames_from(classes: tuple[type[Frame], ...]) -> st.SearchStrategy[tuple[str, Any]]:
    """One incoming frame's bytes: valid, mutated or random."""
    valid = wire_maps(classes).map(pack)
    broken = wire_maps(classes).flatmap(mutated).map(lambda how_data: how_data[1])
    junk = msgpack_values.map(pack) | st.binary(max_size=64)
    return st.tuples(st.just("bytes"), st.one_of(valid, valid, broken, broken, junk))


# --- the hub's session -------------------------------------------------------------------------

#: What the hub's session is fed besides bytes: an ``auth`` or ``enroll``
#: signed (well or not) for the session's nonce, or a ``send`` from the
#: bound device, each followed by the handler's call when it is admitted.
server_steps = st.one_of(
    frames_from(CLIENT_FRAMES),
    st.tuples(
        st.sampled_from(["auth_good", "auth_bad_sig", "auth_unknown", "enroll_good", "enroll_bad_sig"]),
        st.none(),
    ),
    st.tuples(st.just("send_own"), st.none()),
)

server_budget = Budget(25)


def server_bytes(session: ServerSession, step: str, arg: Any) -> bytes:
    if step == "bytes":
        data: bytes = arg
        return data
    if step.startswith("auth"):
        keys = OTHER_KEYS if step == "auth_bad_sig" else KEYS
        return encode(Auth(1, DEVICE, keys.sign(crypto.auth_message(session.nonce, DEVICE)), HUB_CAPS))
    if step.startswith("enroll"):
        signed = crypto.enroll_message(session.nonce, "CODE-1234", KEYS.sign_pk, KEYS.box_pk)
        keys = OTHER_KEYS if step == "enroll_bad_sig" else KEYS
        return encode(Enroll(1, "CODE-1234", KEYS.sign_pk, KEYS.box_pk, "", keys.sign(signed)))
    assert step == "send_own"
    return encode(Send(b"\x05" * 16, session.device_id or DEVICE, USER, {"d_x": b"env"}))


#: Most sequences start authenticated, where most of the table is.
server_sequences = st.builds(
    lambda prefix, rest: prefix + rest,
    st.sampled_from([[], [("auth_good", None)], [("auth_good", None)], [("enroll_good", None)]]),
    st.lists(server_steps, min_size=1, max_size=20),
)


@fuzz_settings(max_examples=500)
@given(server_sequences)
@example([("auth_good", None), ("send_own", None), ("bytes", encode(Devices(1)))])
@example([("auth_good", None), ("bytes", b"\x83\xa1t\xa4auth\xa1t\xa7devices\xa3rid\x03")])
def test_server_session_admits_only_what_its_table_allows(steps: list[tuple[str, Any]]) -> None:
    if server_budget.over():
        return
    session = ServerSession(nonce=NONCE)
    for step, arg in steps:
        data = counted("server session", server_bytes(session, step, arg))
        before = session.state
        try:
            frame = session.receive(data)
        except (MalformedFrame, UnknownFrameType, FrameNotAllowed, UnsupportedVersion, ForgedSender):
            assert session.state is State.CLOSED
            continue
        # Admitted: the state allows the type, and nothing moved.
        assert before is not State.CLOSED and type(frame) in ALLOWED[before], (before, frame)
        assert session.state is before
        if isinstance(frame, Send):
            assert frame.sender == session.device_id
        if isinstance(frame, Auth | Enroll):
            assert before is State.CHALLENGED and frame.v == 1
            handshake(session, step, frame)
        if session.state is State.AUTHENTICATED:
            assert session.user_id is not None and session.device_id is not None


def handshake(session: ServerSession, step: str, frame: Auth | Enroll) -> None:
    """What the hub's handler does with an admitted ``auth``/``enroll``:
    a device it knows (``auth_*`` steps) or a stored enrollment (``enroll_*``)."""
    try:
        if isinstance(frame, Auth):
            known = step in ("auth_good", "auth_bad_sig")
            session.authenticate(frame, USER if known else None, KEYS.sign_pk if known else None)
        else:
            session.check_enroll(frame)
            session.enrolled(USER, DEVICE)
    except AuthFailed:
        assert step not in ("auth_good", "enroll_good"), "a good signature was refused"
        assert session.state is State.CLOSED
        return
    assert step in ("auth_good", "enroll_good"), f"{step}: a bad signature was accepted"
    assert session.state is State.AUTHENTICATED and session.device_id == DEVICE


# --- the client's session ---------------------------------------------------------------------

REQUESTS = (
    lambda rid: Lookup(rid, user="u_2"),
    lambda rid: Devices(rid),
    lambda rid: Teams(rid),
)

client_steps = st.one_of(
    frames_from(SERVER_FRAMES),
    # An answer to the n-th outstanding request (any answer type: the session
    # must tell a right one from a wrong one).
    st.tuples(st.just("answer"), st.tuples(wire_maps(SERVER_FRAMES), st.integers(0, 7))),
    st.tuples(st.just("challenge"), st.sampled_from([1, 1, 1, 2])),
    st.tuples(st.just("welcome"), st.none()),
    st.tuples(st.just("auth"), st.none()),
    st.tuples(st.just("request"), st.integers(0, len(REQUESTS) - 1)),
    st.tuples(st.just("send"), st.binary(min_size=16, max_size=16)),
)

client_budget = Budget(25)


def client_bytes(session: ClientSession, step: str, arg: Any) -> bytes | None:
    """The hub's bytes for ``step``, or None for a step of ours (sent here)."""
    if step == "bytes":
        data: bytes = arg
        return data
    if step == "challenge":
        return encode(Challenge(arg, NONCE, None, HUB_CAPS))
    if step == "welcome":
        return encode(Welcome(USER, DEVICE))
    if step == "answer":
        m, n = arg
        pending = sorted(session.outstanding, key=repr)
        if pending:
            request = pending[n % len(pending)]
            m = dict(m)
            if isinstance(request, bytes) and m["t"] in ("accepted", "error"):
                m["id"] = request
            elif "rid" in m or m["t"] == "error":
                m["rid"] = request if isinstance(request, int) else n
        return pack(m)
    before, outstanding = session.state, session.outstanding
    try:
        if step == "auth":
            session.auth(DEVICE, KEYS)
            assert before is ClientState.CHALLENGED and session.state is ClientState.ANSWERED
        elif step == "request":
            rid, _ = session.request(REQUESTS[arg])
            assert rid not in outstanding and session.outstanding == outstanding | {rid}
        else:
            session.send(Send(arg, DEVICE, USER, {"d_2": b"env"}))
            assert arg in session.outstanding
    except FrameNotAllowed:
        assert session.state is before, "a refused send moved the session"
    return None


WELCOMED = [("challenge", 1), ("auth", None), ("welcome", None)]
#: Most sequences start past welcome, with requests outstanding to answer.
client_sequences = st.builds(
    lambda prefix, rest: prefix + rest,
    st.sampled_from([[], WELCOMED, [*WELCOMED, ("request", 0), ("request", 1), ("send", b"\x07" * 16)]]),
    st.lists(client_steps, min_size=1, max_size=24),
)


@fuzz_settings(max_examples=500)
@given(client_sequences)
@example(
    [
        ("challenge", 1),
        ("auth", None),
        ("welcome", None),
        ("request", 0),
        ("answer", ({"t": "ok", "rid": 0}, 0)),
    ]
)
@example([*WELCOMED, ("bytes", encode(Error("x", "m", True)))])
def test_client_session_moves_only_as_its_table_says(steps: list[tuple[str, Any]]) -> None:
    if client_budget.over():
        return
    session = ClientSession()
    for step, arg in steps:
        data = client_bytes(session, step, arg)
        if data is None:
            continue
        counted("client session", data)
        before, outstanding = session.state, session.outstanding
        try:
            event = session.receive(data)
        except ProtocolError as exc:
            if before is ClientState.AUTHENTICATED and not exc.remote:
                # After welcome, a frame of ours to refuse is dropped: the session goes on.
                assert session.state is ClientState.AUTHENTICATED, exc
                assert session.outstanding == outstanding, "a dropped frame settled a request"
            else:
                # Before welcome any error ends it; after, only the hub's (fatal) ones.
                assert session.state is ClientState.CLOSED, (before, exc)
            continue
        after = session.state
        if before is ClientState.AWAITING_CHALLENGE:
            assert isinstance(event, Challenged) and after is ClientState.CHALLENGED
        elif before is ClientState.ANSWERED:
            assert isinstance(event, Welcomed) and after is ClientState.AUTHENTICATED
        else:
            assert before is ClientState.AUTHENTICATED and after is ClientState.AUTHENTICATED, (before, event)
            assert isinstance(event, Pushed | Answered | Failed)
            if isinstance(event, Answered | Failed) and event.request is not None:
                assert event.request in outstanding
                settled = outstanding - session.outstanding
                assert settled <= {event.request}
            else:
                assert session.outstanding == outstanding
