"""Fuzzing the hub's frame handling over real WebSockets (SPEC §2, §4, §7).

A real in-process hub (tests/support/inprocess_hub.py: the tests'
authority, budgets out of reach), on SQLite and on PostgreSQL + Redis in turn; one
verified clinician's device, the fuzzer, sends generated frames (valid requests with random fields, mutated
frames, random msgpack and bytes, text messages, an oversize message), and
fresh connections send one generated frame instead of their ``auth``. Each
frame is answered as the SPEC says, which a local
:class:`~protocol.session.ServerSession` in the same state predicts:

* a frame the session refuses: one ``error`` frame, ``fatal: true``, without
  ``id`` or ``rid``, naming the session's error, then the close with its
  close code and the code as reason (§7); the fuzzer then authenticates again;
* a text message: the same, ``malformed_frame`` (4400); a message over
  64 KiB: close 1009 and no ``error`` frame (§2);
* an admitted request: its answer, or a request error (``fatal: false``)
  naming its ``rid`` (its ``id`` for a ``send``); an ``ack`` needs none;
* on a fresh connection, an admitted ``auth``/``enroll``: ``auth_failed``
  (4401), the signature cannot be good.

Meanwhile two bystanders exchange messages through the same hub, and keep
doing so to the end; the hub logs no "connection failed" (an unexpected
exception on a connection, closed with 1011) and no error at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis
from hypothesis import example, given
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from miss_server.app import HubServer
from miss_server.connection import PRE_AUTH_FRAME_BYTES
from protocol.client_session import ANSWERS
from protocol.errors import AuthFailed, FatalError, MalformedFrame
from protocol.frames import (
    CLIENT_FRAMES,
    MAX_FRAME_BYTES,
    SERVER_FRAMES,
    SUBPROTOCOL,
    Ack,
    Auth,
    Enroll,
    Error,
    Frame,
    LookupOk,
    Send,
    decode,
)
from protocol.oncall import is_role_id
from protocol.session import ServerSession, State
from protocol.teams import is_team_id
from tests.fuzz.strategies import (
    ALWAYS_MALFORMED,
    Budget,
    counted,
    fuzz_settings,
    msgpack_values,
    mutated,
    wire_maps,
)
from tests.support.inprocess_hub import hub_settings
from tests.support.pg_hub import postgres_store_url
from tests.support.wire import RawDevice, enrolled

#: Hub frames a device may get at any time, which no request waits for.
PUSHES = tuple(
    cls
    for cls in SERVER_FRAMES
    if cls.TYPE
    in {
        "deliver",
        "delivered",
        "refused",
        "presence",
        "team_changed",
        "urgent_status",
        "urgent_reminder",
        "role_changed",
    }
)


def pack(m: Any) -> bytes:
    out: bytes = msgpack.packb(m, use_bin_type=True)
    return out


class HubErrors(logging.Handler):
    """Every error the hub logs (``miss.*``), "connection failed" included."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()} {r.exc_text or ''}" for r in self.records]


@dataclass
class Bystanders:
    """Two clinicians who exchange a message every 20 ms while the fuzzer works."""

    a: RawDevice
    b: RawDevice
    exchanged: int = 0
    failure: BaseException | None = None
    task: asyncio.Task[None] | None = None
    latencies: list[float] = field(default_factory=list)
    lookups: tuple[LookupOk, LookupOk] | None = None
    stopping: bool = False

    async def exchange(self) -> None:
        if self.lookups is None:
            self.lookups = (await self.a.lookup(self.a.user_id), await self.a.lookup(self.b.user_id))
        la, lb = self.lookups
        send = self.a.message(lb, "toujours là", own=la)
        started = time.monotonic()
        await self.a.send_frame(send)
        accepted = await self.a.recv(timeout=10)
        assert accepted.TYPE == "accepted" and accepted.id == send.id, accepted  # type: ignore[attr-defined]
        got = await self.b.recv(timeout=10)
        assert got.TYPE == "deliver" and got.id == send.id, got  # type: ignore[attr-defined]
        assert self.b.open_deliver(got, self.a.keys.box_pk).body == "toujours là"  # type: ignore[arg-type]
        await self.b.ack(got.seq)  # type: ignore[attr-defined]
        receipt = await self.a.recv(timeout=10)
        assert receipt.TYPE == "delivered", receipt
        await self.a.ack(receipt.seq)  # type: ignore[attr-defined]
        self.latencies.append(time.monotonic() - started)
        self.exchanged += 1

    async def run(self) -> None:
        try:
            while not self.stopping:
                await self.exchange()
                await asyncio.sleep(0.02)
        except Exception as exc:
            self.failure = exc


@dataclass
class Victim:
    """The clinician the fuzzer's sends go to: reads every frame the hub
    sends it, which must decode, and acks every queued row."""

    dev: RawDevice
    rows: dict[str, int] = field(default_factory=dict)
    failure: BaseException | None = None
    stopping: bool = False

    async def run(self) -> None:
        assert self.dev.ws is not None
        try:
            while not self.stopping:
                try:
                    data = await asyncio.wait_for(self.dev.ws.recv(), 0.1)
                except TimeoutError:
                    continue
                assert isinstance(data, bytes), "the hub sent a text message"
                frame = decode(data, SERVER_FRAMES)
                self.rows[frame.TYPE] = self.rows.get(frame.TYPE, 0) + 1
                seq = getattr(frame, "seq", None)
                if seq is not None:
                    await self.dev.ack(seq)
        except Exception as exc:
            self.failure = exc


@dataclass
class Arena:
    hub: HubServer
    fuzzer: RawDevice
    bystanders: Bystanders
    errors: HubErrors
    budget: Budget
    victim: Victim
    reconnects: int = 0
    #: Seqs of the queued rows the fuzzer read and has not acked yet.
    unacked: list[int] = field(default_factory=list)
    #: How the hub answered: fatal error codes (and 1009), request error codes, answer types.
    fatal: dict[str, int] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)

    def note(self, table: dict[str, int], what: str) -> None:
        table[what] = table.get(what, 0) + 1


REDIS = os.environ.get("MISS_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(params=["sqlite", "postgresql+redis"])
async def hub(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HubServer]:
    """The in-process hub as one node (SQLite, in-process broker), or as a
    node of a cluster: a schema of its own on MISS_TEST_POSTGRES and a key
    prefix of its own on MISS_TEST_REDIS (both must answer), removed after."""
    async with contextlib.AsyncExitStack() as stack:
        overrides: dict[str, str] = {}
        if request.param == "postgresql+redis":
            prefix = "miss_fuzz_" + secrets.token_hex(4)
            overrides["store"] = await stack.enter_async_context(postgres_store_url())
            overrides["broker"] = f"{REDIS}?prefix={prefix}"
            stack.push_async_callback(drop_redis_keys, prefix)
        yield await stack.enter_async_context(HubServer(hub_settings(tmp_path, **overrides)))


async def drop_redis_keys(prefix: str) -> None:
    r = aioredis.Redis.from_url(REDIS)
    keys = [k async for k in r.scan_iter(match=f"{prefix}:*")]
    if keys:
        await r.delete(*keys)
    await r.aclose()


@pytest.fixture
async def arena(hub: HubServer) -> AsyncIterator[Arena]:
    errors = HubErrors()
    logging.getLogger("miss").addHandler(errors)
    try:
        bystanders = Bystanders(
            await enrolled(hub, "Alice Témoin", "10000000101"),
            await enrolled(hub, "Bruno Témoin", "10000000102"),
        )
        fuzzer = await enrolled(hub, "Fanny Fuzz", "10000000103")
        victim = Victim(await enrolled(hub, "Victor Cible", "10000000104"))
        bystanders.task = asyncio.create_task(bystanders.run())
        victim_task = asyncio.create_task(victim.run())
        arena = Arena(hub, fuzzer, bystanders, errors, Budget(30), victim)
        yield arena
        # After the fuzzing: the bystanders were served all along, and still are.
        bystanders.stopping = victim.stopping = True
        await asyncio.wait_for(bystanders.task, 30)
        await asyncio.wait_for(victim_task, 30)
        assert bystanders.failure is None, repr(bystanders.failure)
        assert victim.failure is None, repr(victim.failure)
        await bystanders.exchange()
        print(
            f"hub fuzz: {arena.reconnects} reconnections; fatal answers {dict(sorted(arena.fatal.items()))}; "
            f"other answers {dict(sorted(arena.answers.items()))}; "
            f"the victim read {dict(sorted(victim.rows.items()))}; "
            f"bystanders exchanged {bystanders.exchanged} messages meanwhile "
            f"(slowest {max(bystanders.latencies) * 1000:.0f} ms)"
        )
        assert bystanders.exchanged >= 2
        assert not errors.records, errors.lines()
    finally:
        logging.getLogger("miss").removeHandler(errors)


# --- what the fuzzer sends ------------------------------------------------------------------


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, Any]:
    """A valid client frame's map, mostly with ``from`` set to the fuzzer's
    device for a ``send`` (``None`` there: filled in when sent), so that
    sends get past the forged-sender check into the hub's handling."""
    # One in three a send: the hub's busiest path, and the one with most checks.
    m = draw(st.one_of(wire_maps(CLIENT_FRAMES), wire_maps(CLIENT_FRAMES), wire_maps((Send,))))
    if m["t"] == "send" and draw(st.integers(0, 4)):
        m["from"] = None
        if draw(st.booleans()):
            # To the victim, who exists, is verified and reads everything: the
            # send goes as far as the hub takes it, delivery included.
            m["to"], m["envs"] = VICTIM, {VICTIM_DEVICE: draw(st.binary(max_size=200))}
            shape = draw(st.sampled_from(["as drawn", "plain", "urgent"]))
            if shape != "as drawn":  # one the hub accepts, mostly
                for key in ("body", "head", "urgent", "ttl"):
                    m.pop(key, None)
            if shape == "urgent":  # SPEC §14.4: a sealed body, within the hub's bounds
                m["body"] = draw(st.binary(min_size=1, max_size=200))
                bounded = st.integers(60_000, 86_400_000)
                m["urgent"] = draw(
                    st.fixed_dictionaries({}, optional={"interval": bounded, "final": bounded})
                )
    return "map", m


@st.composite
def broken(draw: st.DrawFn) -> tuple[str, Any]:
    _, m = draw(requests())
    if m.get("from", "") is None:
        m["from"] = "d_forged"
    return "broken", draw(mutated(m))


steps = st.one_of(
    requests(),
    requests(),
    requests(),
    broken(),
    broken(),
    st.tuples(st.just("bytes"), msgpack_values.map(pack) | st.binary(max_size=40)),
    st.tuples(st.just("fresh"), requests().map(lambda r: pack(r[1])) | broken().map(lambda r: r[1][1])),
    st.one_of(
        st.tuples(st.just("text"), st.text(max_size=20)),
        st.tuples(st.just("oversize"), st.integers(MAX_FRAME_BYTES + 1, MAX_FRAME_BYTES + 3000)),
        st.tuples(
            st.just("fresh"),
            st.integers(PRE_AUTH_FRAME_BYTES - 2, PRE_AUTH_FRAME_BYTES + 2).map(lambda n: b"\x00" * n),
        ),
    ),
)


#: Stand-ins, in generated maps, for the victim's user and device ids.
VICTIM, VICTIM_DEVICE = "<victim>", "<victim-device>"


def outgoing(arena: Arena, kind: str, arg: Any) -> bytes:
    if kind == "map":
        m = dict(arg)
        if m.get("from", "") is None:
            m["from"] = arena.fuzzer.device_id
        if m.get("to") == VICTIM:
            m["to"] = arena.victim.dev.user_id
            m["envs"] = {arena.victim.dev.device_id: m["envs"][VICTIM_DEVICE]}
        return pack(m)
    data: bytes = arg[1] if kind == "broken" else arg
    return data


# --- what the hub must answer ---------------------------------------------------------------


async def next_frame(dev: RawDevice, timeout: float = 10, unacked: list[int] | None = None) -> Frame:
    """The next hub frame that is not a push (pushes may come at any time);
    the seqs of queued rows read on the way go to ``unacked``."""
    assert dev.ws is not None
    while True:
        data = await asyncio.wait_for(dev.ws.recv(), timeout)
        assert isinstance(data, bytes), "the hub sent a text message"
        frame = decode(data, SERVER_FRAMES)
        if not isinstance(frame, PUSHES):
            return frame
        seq = getattr(frame, "seq", None)
        if unacked is not None and seq is not None:
            unacked.append(seq)


async def expect_fatal(arena: Arena, dev: RawDevice, error: type[FatalError]) -> None:
    """One fatal ``error`` naming ``error``, then the close (SPEC §7)."""
    frame = await next_frame(dev, unacked=arena.unacked)
    assert isinstance(frame, Error), frame
    assert (frame.code, frame.fatal, frame.id, frame.rid) == (error.code, True, None, None), frame
    await expect_close(arena, dev, error.close_code, error.code)
    arena.note(arena.fatal, error.code)


async def expect_close(arena: Arena, dev: RawDevice, code: int | None, reason: str | None) -> None:
    assert dev.ws is not None
    with pytest.raises(ConnectionClosed) as closed:
        await next_frame(dev, unacked=arena.unacked)
    assert closed.value.rcvd is not None, "the hub did not close the connection"
    assert closed.value.rcvd.code == code, closed.value.rcvd
    if reason is not None:
        assert closed.value.rcvd.reason == reason, closed.value.rcvd


def misshapen(send: Send) -> bool:
    """A ``send`` whose ``body`` and ``head`` do not fit its target, which the
    hub refuses as a fatal ``malformed_frame`` once the checks before it pass
    (SPEC §13.4, §14.4): to a role or urgent without a sealed body, or with a
    head not to a team; to a team without both; to a user with either."""
    to_team, to_role = is_team_id(send.to), is_role_id(send.to)
    if send.urgent is not None or to_role:
        return send.body is None or (send.head is not None and not to_team)
    if to_team:
        return send.body is None or send.head is None
    return send.body is not None or send.head is not None


async def expect_answer(arena: Arena, dev: RawDevice, frame: Frame) -> bool:
    """The answer to an admitted request, or a request error naming it; or
    for a misshapen ``send``, a fatal ``malformed_frame`` and the close.
    True if the connection goes on."""
    if isinstance(frame, Ack):
        arena.note(arena.answers, "ack")
        return True  # acks have no answer; an error about one (none expected) would show next
    reply = await next_frame(dev, unacked=arena.unacked)
    if isinstance(reply, Error) and reply.fatal:
        assert isinstance(frame, Send) and misshapen(frame), f"{frame} got the fatal {reply.code}"
        assert (reply.code, reply.id, reply.rid) == (MalformedFrame.code, None, None), reply
        await expect_close(arena, dev, MalformedFrame.close_code, MalformedFrame.code)
        arena.note(arena.fatal, "malformed_frame (misshapen send)")
        return False
    arena.note(arena.answers, reply.code if isinstance(reply, Error) else reply.TYPE)
    if isinstance(reply, Error):
        if isinstance(frame, Send):
            assert reply.id == frame.id, (frame, reply)
        else:
            assert reply.rid == frame.rid, (frame, reply)  # type: ignore[attr-defined]
        return True
    assert type(reply) is ANSWERS[type(frame)], (frame, reply)
    if isinstance(frame, Send):
        assert reply.id == frame.id, (frame, reply)  # type: ignore[attr-defined]
    else:
        assert reply.rid == frame.rid, (frame, reply)  # type: ignore[attr-defined]
    return True


def predicted(data: bytes, state: State, device_id: str | None) -> Frame | FatalError:
    """What the hub's session makes of ``data`` in ``state``: the frame it
    admits or the fatal error it raises."""
    session = ServerSession()
    session.state, session.device_id = state, device_id
    try:
        return session.receive(data)
    except FatalError as exc:
        return exc


async def fuzz_one(arena: Arena, kind: str, arg: Any) -> None:
    dev = arena.fuzzer
    assert dev.ws is not None
    if arena.unacked:  # the receipts of the fuzzer's sends that reached the victim
        await dev.send_frame(Ack(tuple(arena.unacked[:1024])))
        del arena.unacked[:1024]
    if kind == "text":
        counted("hub", arg.encode())
        await dev.ws.send(arg)
        await expect_fatal(arena, dev, MalformedFrame)
    elif kind == "oversize":
        counted("hub", b"")
        await dev.ws.send(b"\x00" * arg)
        await expect_close(arena, dev, 1009, None)
        arena.note(arena.fatal, "1009")
    elif kind == "fresh":
        await fresh_connection(arena, counted("hub", arg))
        return
    else:
        data = counted("hub", outgoing(arena, kind, arg))
        outcome = predicted(data, State.AUTHENTICATED, dev.device_id)
        if kind == "broken" and arg[0] in ALWAYS_MALFORMED:
            assert isinstance(outcome, MalformedFrame), f"{arg[0]} admitted: {outcome}"
        if isinstance(outcome, FatalError):
            await dev.ws.send(data)
            await expect_fatal(arena, dev, type(outcome))
        else:
            await dev.ws.send(data)
            if await expect_answer(arena, dev, outcome):
                return
    await dev.auth()  # a fatal error ended the connection: the device comes back
    arena.reconnects += 1


async def fresh_connection(arena: Arena, data: bytes) -> None:
    """A new connection whose first frame is ``data`` instead of an ``auth``:
    over PRE_AUTH_FRAME_BYTES, closed with 1009 unread (SPEC §2)."""
    dev = RawDevice(arena.hub.url)
    dev.ws = await connect(arena.hub.url, subprotocols=[SUBPROTOCOL], max_size=None)  # type: ignore[list-item]
    try:
        await next_frame(dev)  # the challenge
        await dev.ws.send(data)
        if len(data) > PRE_AUTH_FRAME_BYTES:
            await expect_close(arena, dev, 1009, None)
            arena.note(arena.fatal, "1009 before auth")
            return
        outcome = predicted(data, State.CHALLENGED, None)
        if isinstance(outcome, Auth | Enroll):
            outcome = AuthFailed()  # a signature made without this connection's nonce
        assert isinstance(outcome, FatalError), outcome
        await expect_fatal(arena, dev, type(outcome))
    finally:
        await dev.ws.close()


@fuzz_settings(max_examples=120)
@given(st.lists(steps, min_size=10, max_size=30))
# A key twice (SPEC §3.1): malformed_frame and 4400, not devices_ok to rid 2.
@example([("broken", ("duplicate_key", b"\x83\xa1t\xa7devices\xa3rid\x01\xa3rid\x02"))])
# Found by fuzz/atheris_hub.py: a first frame over 8,192 bytes is closed with 1009 (SPEC §2).
@example([("fresh", b"\x80" * (PRE_AUTH_FRAME_BYTES + 1))])
# U+0000 in a str (SPEC §3.1): malformed_frame, not a query PostgreSQL fails on (1011).
@example([("map", {"t": "lookup", "rid": 1, "user": "a\x00b"})])
@example([("fresh", b"\x84\xa1t\xa4auth\xa1v\x01\xa6device\xa1d\xa3sig\xc4\x40" + b"\x00" * 64)])
async def test_hub_answers_every_bad_frame_as_the_spec_says(
    arena: Arena, sequence: list[tuple[str, Any]]
) -> None:
    if arena.budget.over():
        return
    for kind, arg in sequence:
        await fuzz_one(arena, kind, arg)
        assert not arena.errors.records, arena.errors.lines()
        assert arena.bystanders.failure is None, repr(arena.bystanders.failure)
        assert arena.victim.failure is None, repr(arena.victim.failure)
