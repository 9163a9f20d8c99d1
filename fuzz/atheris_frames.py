"""Coverage-guided fuzzing of the frame codec and both session state
machines with atheris (libFuzzer for Python), for runs longer than CI's.

The same properties as tests/fuzz/test_codec.py and test_sessions.py, on
bytes that libFuzzer evolves by coverage:

* ``frames.decode`` returns a frame or raises MalformedFrame or
  UnknownFrameType, never anything else; a decoded frame re-encodes to
  canonical bytes that decode to the same frame;
* ``ServerSession.receive`` (the hub's side) raises only the fatal errors
  its docstring names, and then is CLOSED; what it admits its state allows;
* ``ClientSession.receive`` (a client's side) raises only
  :mod:`protocol.errors` exceptions, and a bad frame after ``welcome``
  neither closes the session nor settles a request it did not answer.

The first byte of an input picks the target and state (:data:`MODES`), the
rest is the frame. Usage (docs/OPERATIONS.md, "Fuzzing")::

    python fuzz/atheris_frames.py --seed fuzz/corpus/frames   # once: the vectors as seeds
    python fuzz/atheris_frames.py fuzz/corpus/frames -max_total_time=3600
    python fuzz/atheris_frames.py --explain crash-<sha1>      # the @example to add
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

with atheris.instrument_imports():
    from protocol import crypto
    from protocol.client_session import Answered, ClientSession, ClientState, Failed, Pushed
    from protocol.errors import (
        ForgedSender,
        FrameNotAllowed,
        MalformedFrame,
        ProtocolError,
        UnknownFrameType,
        UnsupportedVersion,
    )
    from protocol.frames import (
        Challenge,
        Devices,
        Lookup,
        Send,
        Welcome,
        decode,
        encode,
    )
    from protocol.session import ALLOWED, ServerSession, State

DEVICE = "d_00000000000000a1"
USER = "u_00000000000000a1"
KEYS = crypto.DeviceKeys.generate()

#: What the first byte of an input selects (its value modulo len(MODES)).
MODES = ("decode", "server_challenged", "server_authenticated", "client_new", "client_authenticated")


def check_decode(data: bytes) -> None:
    try:
        frame = decode(data)
    except (MalformedFrame, UnknownFrameType):
        return
    canonical = encode(frame)
    again = decode(canonical)
    if again != frame or encode(again) != canonical:
        raise AssertionError(f"round trip changed {frame!r} into {again!r}")


def check_server(data: bytes, state: State) -> None:
    session = ServerSession(nonce=bytes(32))
    if state is State.AUTHENTICATED:
        session.enrolled(USER, DEVICE)
    try:
        frame = session.receive(data)
    except (MalformedFrame, UnknownFrameType, FrameNotAllowed, UnsupportedVersion, ForgedSender):
        if session.state is not State.CLOSED:
            raise AssertionError("a fatal error left the session open") from None
        return
    if type(frame) not in ALLOWED[state] or session.state is not state:
        raise AssertionError(f"{state}: admitted {frame!r}")
    if isinstance(frame, Send) and frame.sender != DEVICE:
        raise AssertionError("admitted a forged send")


def client_session(authenticated: bool) -> ClientSession:
    session = ClientSession()
    if authenticated:
        session.receive(encode(Challenge(1, bytes(32), None, ())))
        session.auth(DEVICE, KEYS)
        session.receive(encode(Welcome(USER, DEVICE)))
        session.request(lambda rid: Lookup(rid, user="u_2"))  # rid 1
        session.request(lambda rid: Devices(rid))  # rid 2
        session.send(Send(b"\x07" * 16, DEVICE, USER, {"d_2": b"env"}))
    return session


def check_client(data: bytes, authenticated: bool) -> None:
    session = client_session(authenticated)
    before, outstanding = session.state, session.outstanding
    try:
        event = session.receive(data)
    except ProtocolError as exc:
        if before is ClientState.AUTHENTICATED and not exc.remote:
            if session.state is not before or session.outstanding != outstanding:
                raise AssertionError("a dropped frame moved the session") from None
        elif session.state is not ClientState.CLOSED:
            raise AssertionError("an error before welcome, or a fatal one, left the session open") from None
        return
    if isinstance(event, Answered | Failed) and event.request is not None:
        if event.request not in outstanding or event.request in session.outstanding:
            raise AssertionError(f"{event!r} settled no outstanding request")
    elif isinstance(event, Pushed) and session.outstanding != outstanding:
        raise AssertionError("a push settled a request")


def test_one_input(raw: bytes) -> None:
    if not raw:
        return
    mode, data = MODES[raw[0] % len(MODES)], raw[1:]
    if mode == "decode":
        check_decode(data)
    elif mode.startswith("server"):
        check_server(data, State.AUTHENTICATED if mode == "server_authenticated" else State.CHALLENGED)
    else:
        check_client(data, mode == "client_authenticated")


def seed(directory: Path) -> int:
    """Write protocol/vectors/frames.json's frames (valid and invalid) into
    ``directory``, each once per mode that decodes its direction."""
    vectors = json.loads((ROOT / "protocol/vectors/frames.json").read_text())
    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    for v in vectors["valid"] + vectors["invalid"]:
        data = bytes.fromhex(v["msgpack"])
        for i, mode in enumerate(MODES):
            (directory / f"{v['name']}.{mode}").write_bytes(bytes([i]) + data)
            n += 1
    return n


def explain(path: Path) -> str:
    """The hypothesis ``@example`` that replays a crash file in tests/fuzz."""
    raw = path.read_bytes()
    mode, data = MODES[raw[0] % len(MODES)], raw[1:]
    hexed = f'bytes.fromhex("{data.hex()}")'
    if mode == "decode":
        return (
            f"tests/fuzz/test_codec.py, test_random_bytes_decode_or_raise_a_typed_error:\n@example([{hexed}])"
        )
    if mode.startswith("server"):
        prefix = '("auth_good", None), ' if mode == "server_authenticated" else ""
        return (
            "tests/fuzz/test_sessions.py, test_server_session_admits_only_what_its_table_allows:\n"
            f'@example([{prefix}("bytes", {hexed})])'
        )
    prefix = (
        '*WELCOMED, ("request", 0), ("request", 1), ("send", b"\\x07" * 16), '
        if mode == "client_authenticated"
        else ""
    )
    return (
        "tests/fuzz/test_sessions.py, test_client_session_moves_only_as_its_table_says:\n"
        f'@example([{prefix}("bytes", {hexed})])'
    )


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[1] == "--seed":
        print(f"{seed(Path(argv[2]))} seed inputs written to {argv[2]}")
        return
    if len(argv) == 3 and argv[1] == "--explain":
        print(explain(Path(argv[2])))
        return
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
