"""Test helpers that speak the wire protocol directly, with no SDK in between.

Used by the hub tests to send exactly the frames (good or bad) a test needs,
over a real WebSocket connection. The handshake goes through
:class:`protocol.client_session.ClientSession`, which reads the challenge and
signs the answers; everything after ``welcome`` is raw frames.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from miss_server.app import HubServer
from miss_server.codes import code_hash, new_code
from miss_server.store.base import Store
from protocol import crypto
from protocol.client_session import Challenged, ClientSession, answer_auth, answer_enroll
from protocol.frames import (
    SUBPROTOCOL,
    Ack,
    Auth,
    Challenge,
    Deliver,
    Delivered,
    Enroll,
    Error,
    Frame,
    LinkCode,
    LinkCodeOk,
    Lookup,
    LookupOk,
    Presence,
    Refused,
    Send,
    Welcome,
    decode,
    encode,
)
from tests.support.authority import verify

#: Codes of clinicians to verify as soon as a device enrolls with them.
_VERIFY_ON_ENROLL: dict[str, Store] = {}


async def invite(
    hub: HubServer, name: str, rpps: str, organisation: str = "CHRU Test", *, verified: bool = True
) -> tuple[str, str]:
    """Record a clinician in the hub's store; returns (user id, enrollment code).

    With ``verified`` (the default), :meth:`RawDevice.enroll` with that code
    then has the tests' authority attest the user and their devices, as an
    administrator would right after the enrollment (authority.py)."""
    now = time.time_ns() // 1_000_000
    user = await hub.store.create_user(name, rpps, "médecin", organisation, now)
    code = new_code()
    await hub.store.add_enrollment_code(user.user_id, code_hash(code), now + 3_600_000)
    if verified:
        _VERIFY_ON_ENROLL[code] = hub.store
    return user.user_id, code


async def enrolled(
    hub: HubServer, name: str, rpps: str, organisation: str = "CHRU Test", *, verified: bool = True
) -> RawDevice:
    """A clinician invited with :func:`invite` and their first device, connected."""
    _, code = await invite(hub, name, rpps, organisation, verified=verified)
    dev = RawDevice(hub.url)
    await dev.enroll(code)
    return dev


@dataclass
class RawDevice:
    """One device's keys and, once connected, its WebSocket."""

    url: str
    keys: crypto.DeviceKeys = field(default_factory=crypto.DeviceKeys.generate)
    user_id: str = ""
    device_id: str = ""
    ws: ClientConnection | None = None
    nonce: bytes = b""
    held: list[Frame] = field(default_factory=list)  # pushes read while waiting for an answer
    #: The protocol state of the current connection's handshake.
    session: ClientSession = field(default_factory=ClientSession)

    def connect_options(self) -> dict[str, Any]:
        """Extra keyword arguments of ``websockets.connect`` (a subclass may
        bind a local address)."""
        return {}

    async def open(self) -> Challenge:
        """Connect and read the challenge (a new :attr:`session`)."""
        self.ws = await connect(
            self.url,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            max_size=None,
            **self.connect_options(),
        )
        self.session = ClientSession()
        event = self.session.receive(await self._recv_bytes())
        assert isinstance(event, Challenged), event
        self.nonce = event.challenge.nonce
        return event.challenge

    def auth_frame(self) -> Auth:
        """The ``auth`` answering the current challenge (after :meth:`open`)."""
        assert self.session.challenge is not None
        return answer_auth(self.session.challenge, self.device_id, self.keys)

    def enroll_frame(self, code: str, label: str = "test") -> Enroll:
        """The ``enroll`` answering the current challenge (after :meth:`open`)."""
        assert self.session.challenge is not None
        return answer_enroll(self.session.challenge, code, self.keys, label)

    async def enroll(self, code: str) -> Welcome:
        await self.open()
        welcome = await self._answer(self.enroll_frame(code))
        self.user_id, self.device_id = welcome.user, welcome.device
        store = _VERIFY_ON_ENROLL.pop(code, None)
        if store is not None:
            await verify(store, self.user_id)
        return welcome

    async def auth(self) -> Welcome:
        await self.open()
        return await self._answer(self.auth_frame())

    async def _answer(self, frame: Auth | Enroll) -> Welcome:
        """Send the answer to the challenge; the hub's ``welcome``."""
        assert self.ws is not None
        await self.ws.send(self.session.send(frame))
        data = await self._recv_bytes()
        welcome = decode(data)
        assert isinstance(welcome, Welcome), welcome
        self.session.receive(data)
        return welcome

    async def _recv_bytes(self, timeout: float = 5.0) -> bytes:
        assert self.ws is not None
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(data, bytes)
        return data

    async def send_frame(self, frame: Frame) -> None:
        assert self.ws is not None
        await self.ws.send(encode(frame))

    async def recv(self, timeout: float = 5.0) -> Frame:
        if self.held:
            return self.held.pop(0)
        return decode(await self._recv_bytes(timeout))

    async def link(self, url: str | None = None) -> RawDevice:
        """Get a link code and enroll a new device of the same clinician with
        it (on ``url``, by default the same hub); returns that device."""
        await self.send_frame(LinkCode(rid=7))
        reply = await self.recv()
        assert isinstance(reply, LinkCodeOk) and reply.rid == 7, reply
        other = RawDevice(url or self.url)
        await other.enroll(reply.code)
        return other

    async def until_closed(self, timeout: float) -> tuple[Error | None, int | None]:
        """Read until the hub closes the connection, at most ``timeout`` s:
        (the last error frame, the close code)."""
        assert self.ws is not None
        error = None
        deadline = time.monotonic() + timeout
        try:
            while True:
                frame = await self.recv(timeout=max(0.01, deadline - time.monotonic()))
                if isinstance(frame, Error):
                    error = frame
        except (ConnectionClosed, TimeoutError):
            pass
        return error, self.ws.close_code

    async def auth_refused(self, url: str | None = None) -> tuple[Error | None, int | None]:
        """Authenticate again (on ``url``, by default the same hub); what the
        hub answers before it closes: (error frame, close code)."""
        if url is not None:
            self.url = url
        await self.open()
        assert self.ws is not None
        await self.ws.send(self.session.send(self.auth_frame()))
        return await self.until_closed(5)

    async def ask(self, frame: Frame) -> Frame:
        """Send a request; its answer (or error). Deliveries, receipts and
        presence pushes that arrive first are held for :meth:`recv`."""
        await self.send_frame(frame)
        skipped = []
        while True:
            reply = await self.recv()
            if isinstance(reply, (Deliver, Delivered, Refused, Presence)):
                skipped.append(reply)
                continue
            self.held[:0] = skipped
            return reply

    async def lookup(self, user: str) -> LookupOk:
        """Look ``user`` up (the hub must answer ``lookup_ok``)."""
        reply = await self.ask(Lookup(rid=1, user=user))
        assert isinstance(reply, LookupOk), reply
        return reply

    def message(self, to: LookupOk, body: str, own: LookupOk | None = None, mid: bytes | None = None) -> Send:
        """A ``send`` sealing ``body`` for every device of ``to`` and of ``own``
        (except this one)."""
        mid = mid or crypto.new_message_id()
        plain = crypto.pack_plaintext(
            crypto.Plaintext(mid, self.user_id, to.user, time.time_ns() // 1_000_000, "text", body)
        )
        targets = list(to.devices) + [d for d in (own.devices if own else ()) if d.device != self.device_id]
        envs = {d.device: crypto.seal(plain, self.keys, d.box_pk) for d in targets}
        return Send(mid, self.device_id, to.user, envs)

    def open_deliver(self, frame: Deliver, sender_box_pk: bytes) -> crypto.Plaintext:
        return crypto.unpack_plaintext(crypto.open_envelope(frame.env, self.keys, sender_box_pk))

    async def ack(self, *seqs: int) -> None:
        await self.send_frame(Ack(tuple(seqs)))

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
