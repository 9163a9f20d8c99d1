"""A scripted, in-memory stand-in for the hub, for testing the client SDK alone.

It speaks protocol v1 over a real WebSocket (``protocol.session`` does the
challenge and signature checks), keeps everything in dicts, and lets a test
inject what the real hub only does under stress: retryable errors, fatal
errors, crafted deliveries, frames slipped in before an answer. It is
deliberately small: the real hub's behaviour is tested in tests/server and
end to end.

Presence (SPEC §6.7) follows the real hub's rules in miniature: statuses in a
dict (``available`` by default), online = a connected device, a ``watch``
replaces the connection's list and keeps the users the watcher may see
(everyone but the users in :attr:`FakeHub.hidden`, who only see themselves),
and every change is pushed to the connections watching that user.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from protocol import crypto
from protocol import frames as f
from protocol.errors import FatalError, InvalidCode, MissingDevices, ProtocolError, UnknownDevice, UnknownUser
from protocol.frame_base import CAP_REFUSALS
from protocol.session import ServerSession, error_frame
from tests.support.clock import now_ms


@dataclass
class FakeUser:
    user: str
    name: str
    rpps: str
    devices: dict[str, f.DeviceInfo] = field(default_factory=dict)


class FakeHub:
    def __init__(self) -> None:
        self.users: dict[str, FakeUser] = {}
        self.codes: dict[str, str] = {}  # code -> user id
        self.owner: dict[str, str] = {}  # device id -> user id
        self.pending: dict[str, dict[int, f.Frame]] = {}  # device -> seq -> deliver/delivered
        self.conns: dict[str, ServerConnection] = {}
        self.accepted: set[tuple[str, bytes]] = set()
        self.received: list[f.Frame] = []  # every frame clients sent after auth
        self.refusals: list[tuple[str, bytes, str]] = []  # (refusing device, message id, reason)
        #: Errors to answer the next ``send`` frames with, in order, instead of accepting.
        self.send_errors: list[ProtocolError] = []
        #: A fatal error to raise on the next lookup (then close the connection).
        self.fatal_on_lookup: FatalError | None = None
        #: Errors to answer the next lookups with, in order.
        self.lookup_errors: list[ProtocolError] = []
        #: Errors to answer the next ``set_status``/``watch`` frames with, in order.
        self.presence_errors: list[ProtocolError] = []
        #: Frames to send, once, just before / just after the next answer to a request with a rid.
        self.before_reply: list[f.Frame] = []
        self.after_reply: list[f.Frame] = []
        self.statuses: dict[str, str] = {}  # user -> status; absent: available
        #: Users whose presence nobody else may see (as if another organisation, no contact).
        self.hidden: set[str] = set()
        self.watchers: dict[ServerConnection, tuple[str, ...]] = {}  # connection -> watched users
        self._seq = itertools.count(1)
        self._server: Server | None = None
        self.url = ""

    async def __aenter__(self) -> FakeHub:
        self._server = await serve(self._handle, "127.0.0.1", 0, subprotocols=[f.SUBPROTOCOL])  # type: ignore[list-item]
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    # --- directory -----------------------------------------------------------

    def add_user(self, name: str, rpps: str) -> str:
        user = "u_" + os.urandom(8).hex()
        self.users[user] = FakeUser(user, name, rpps)
        return user

    def invite(self, user: str) -> str:
        raw = os.urandom(10).hex().upper()[:16]
        code = "-".join(raw[i : i + 4] for i in range(0, 16, 4))
        self.codes[code] = user
        return code

    def add_device(self, user: str, keys: crypto.DeviceKeys) -> str:
        device = "d_" + os.urandom(8).hex()
        self.users[user].devices[device] = f.DeviceInfo(device, keys.sign_pk, keys.box_pk)
        self.owner[device] = user
        return device

    # --- presence --------------------------------------------------------------

    def online(self, user: str) -> bool:
        return any(self.owner.get(device) == user for device in self.conns)

    def presence_of(self, user: str) -> f.Presence:
        return f.Presence(user, self.statuses.get(user, "available"), self.online(user))

    async def push_presence(self, user: str) -> None:
        """Send ``user``'s current presence to every connection watching them."""
        data = f.encode(self.presence_of(user))
        for ws, users in list(self.watchers.items()):
            if user in users:
                try:
                    await ws.send(data)
                except ConnectionClosed:
                    pass

    async def set_status(self, user: str, status: str) -> None:
        """Change a status as if one of the user's devices had (and push it)."""
        self.statuses[user] = status
        await self.push_presence(user)

    # --- queues --------------------------------------------------------------

    async def push(self, device: str, build: Callable[[int], f.Frame]) -> int:
        """Queue ``build(seq)`` for ``device`` and send it if connected."""
        seq = next(self._seq)
        frame = build(seq)
        self.pending.setdefault(device, {})[seq] = frame
        ws = self.conns.get(device)
        if ws is not None:
            try:
                await ws.send(f.encode(frame))
            except ConnectionClosed:
                pass
        return seq

    async def deliver_raw(
        self, device: str, message_id: bytes, from_user: str, from_device: str, env: bytes
    ) -> int:
        return await self.push(
            device, lambda seq: f.Deliver(seq, message_id, from_user, from_device, now_ms(), env)
        )

    # --- connection ------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        # It answers no team request (SPEC §13), so it does not announce them.
        session = ServerSession(hub_caps=(CAP_REFUSALS,))
        await ws.send(session.challenge())
        try:
            async for data in ws:
                try:
                    await self._frame(ws, session, session.receive(data if isinstance(data, bytes) else b""))
                except FatalError as exc:
                    await ws.send(error_frame(exc))
                    await ws.close(exc.close_code or 4400, exc.code)
                    return
        except ConnectionClosed:
            pass
        finally:
            self.watchers.pop(ws, None)
            if session.device_id is not None and self.conns.get(session.device_id) is ws:
                del self.conns[session.device_id]
                assert session.user_id is not None
                if not self.online(session.user_id):
                    await self.push_presence(session.user_id)

    async def _frame(self, ws: ServerConnection, session: ServerSession, frame: f.Frame) -> None:
        if isinstance(frame, f.Auth):
            info = self.users.get(self.owner.get(frame.device, ""))
            known = info.devices.get(frame.device) if info else None
            session.authenticate(frame, info.user if info else None, known.sign_pk if known else None)
            await self._welcome(ws, session)
            return
        if isinstance(frame, f.Enroll):
            session.check_enroll(frame)
            user = self.codes.pop(frame.code, None)
            if user is None:
                raise InvalidCode(frame.code)
            device = "d_" + os.urandom(8).hex()
            self.users[user].devices[device] = f.DeviceInfo(device, frame.sign_pk, frame.box_pk)
            self.owner[device] = user
            session.enrolled(user, device)
            await self._welcome(ws, session)
            return
        self.received.append(frame)
        if self.before_reply and isinstance(frame, f.Lookup | f.LinkCode | f.SetStatus | f.Watch):
            for extra in self.before_reply:
                await ws.send(f.encode(extra))
            self.before_reply = []
        if isinstance(frame, f.SetStatus | f.Watch):
            await self._presence_request(ws, session, frame)
            await self._after_reply(ws)
        elif isinstance(frame, f.Lookup):
            await self._lookup(ws, frame)
        elif isinstance(frame, f.LinkCode):
            assert session.user_id is not None
            await ws.send(f.encode(f.LinkCodeOk(frame.rid, self.invite(session.user_id), now_ms() + 900_000)))
            await self._after_reply(ws)
        elif isinstance(frame, f.Send):
            await self._send(ws, session, frame)
        elif isinstance(frame, f.Ack):
            assert session.device_id is not None
            for seq in frame.seqs:
                await self._ack(session.device_id, seq)
            for refusal in frame.refused or ():
                await self._ack(session.device_id, refusal.seq, refusal.reason)

    async def _lookup(self, ws: ServerConnection, frame: f.Lookup) -> None:
        if self.fatal_on_lookup is not None:
            exc, self.fatal_on_lookup = self.fatal_on_lookup, None
            raise exc
        if self.lookup_errors:
            await ws.send(error_frame(self.lookup_errors.pop(0), rid=frame.rid))
            return
        found = self.users.get(frame.user or "") or next(
            (u for u in self.users.values() if u.rpps == frame.rpps), None
        )
        if found is None:
            await ws.send(error_frame(UnknownUser(), rid=frame.rid))
            return
        reply = f.LookupOk(
            frame.rid,
            found.user,
            found.name,
            found.rpps,
            "médecin",
            "CHRU",
            tuple(found.devices.values()),
            self.lookup_attestation(found.user),
        )
        await ws.send(f.encode(reply))
        await self._after_reply(ws)

    def lookup_attestation(self, user: str) -> bytes | None:
        """The attestation a ``lookup_ok`` of ``user`` carries: none here
        (verified_hubs.AttestedFakeHub serves one)."""
        return None

    async def _after_reply(self, ws: ServerConnection) -> None:
        extra, self.after_reply = self.after_reply, []
        for frame in extra:
            await ws.send(f.encode(frame))

    async def _presence_request(
        self, ws: ServerConnection, session: ServerSession, frame: f.SetStatus | f.Watch
    ) -> None:
        assert session.user_id is not None
        if self.presence_errors:
            await ws.send(error_frame(self.presence_errors.pop(0), rid=frame.rid))
            return
        if isinstance(frame, f.SetStatus):
            self.statuses[session.user_id] = frame.status
            await ws.send(f.encode(f.Ok(frame.rid)))
            await self.push_presence(session.user_id)
            return
        viewer = session.user_id
        kept = tuple(
            u for u in dict.fromkeys(frame.users) if u in self.users and (u == viewer or u not in self.hidden)
        )
        self.watchers[ws] = kept
        await ws.send(f.encode(f.Watching(frame.rid, tuple(self.presence_of(u) for u in kept))))

    async def _welcome(self, ws: ServerConnection, session: ServerSession) -> None:
        assert session.user_id is not None and session.device_id is not None
        await ws.send(f.encode(f.Welcome(session.user_id, session.device_id)))
        was_online = self.online(session.user_id)
        self.conns[session.device_id] = ws
        if not was_online:
            await self.push_presence(session.user_id)
        for _, frame in sorted(self.pending.get(session.device_id, {}).items()):
            await ws.send(f.encode(frame))

    async def _send(self, ws: ServerConnection, session: ServerSession, frame: f.Send) -> None:
        assert session.user_id is not None and session.device_id is not None
        if self.send_errors:
            await ws.send(error_frame(self.send_errors.pop(0), id=frame.id))
            return
        recipient = self.users.get(frame.to)
        if recipient is None:
            await ws.send(error_frame(UnknownUser(), id=frame.id))
            return
        sender = self.users[session.user_id]
        expected = set(recipient.devices) | (set(sender.devices) - {session.device_id})
        if set(frame.envs) - expected:
            await ws.send(error_frame(UnknownDevice(), id=frame.id))
            return
        if expected - set(frame.envs):
            await ws.send(error_frame(MissingDevices(sorted(expected - set(frame.envs))), id=frame.id))
            return
        key = (session.user_id, frame.id)
        dup = key in self.accepted
        self.accepted.add(key)
        await ws.send(f.encode(f.Accepted(frame.id, dup)))
        if not dup:
            for device, env in frame.envs.items():
                await self.deliver_raw(device, frame.id, session.user_id, session.device_id, env)

    async def _ack(self, device: str, seq: int, refused: str | None = None) -> None:
        """An ack (or, with a reason, a refusal) of one row: a ``delivered``
        (or ``refused``) receipt to each device of the sender."""
        frame = self.pending.get(device, {}).pop(seq, None)
        if not isinstance(frame, f.Deliver):
            return
        acker = self.owner[device]
        if acker == frame.from_user:
            return  # own copies produce no receipt
        self.refusals.extend([(device, frame.id, refused)] if refused else [])
        for sender_device in self.users[frame.from_user].devices:

            def receipt(seq: int, d: str = device) -> f.Frame:
                if refused is None:
                    return f.Delivered(seq, frame.id, acker, d, now_ms())
                return f.Refused(seq, frame.id, acker, d, now_ms(), refused)

            await self.push(sender_device, receipt)


async def wait_for(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll until ``predicate()`` is true (for state the hub updates asynchronously)."""
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.01)
