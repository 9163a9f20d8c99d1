"""One simulated device inside a load generator worker: a raw-protocol
client with real keys, in the style of ``tests/support/wire.py``.

It enrolls with a code, authenticates by signing the challenge (through
:class:`protocol.client_session.ClientSession`, as the SDK does), seals each
message for every target device (``crypto_box``), opens what it receives,
checks the inner plaintext as SPEC §6.3 requires, and acks what it got in
batches, like the SDK does. A team message (SPEC §13.3) is sealed once as a
signed body, its key wrapped for each target device; a device opens its wrap,
then the body, and checks the body's signature and that the plaintext is for
the team it was delivered as. The X25519 shared key of each peer is computed
once per peer (``Box``), as a real client would cache it: the envelopes are
byte-for-byte those of :func:`protocol.crypto.seal` (nonce ‖ crypto_box),
only without a scalar multiplication per message, which would otherwise make
the load generator, not the hub, the bottleneck. The same holds for the
wraps of a team message's key (:func:`protocol.crypto.wrap_key`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable

import nacl.exceptions
import nacl.public
import nacl.signing
from miss_client.client import ACK_DELAY
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from protocol import crypto
from protocol.client_session import ClientSession, Welcomed
from protocol.errors import ProtocolError, UnexpectedFrame
from protocol.frames import (
    CLIENT_FRAMES,
    SUBPROTOCOL,
    Ack,
    Deliver,
    Send,
    Welcome,
    decode,
    encode,
)

from .plan import DeviceSpec, Entry

__all__ = ["Device", "HubRefused", "open_ws"]

#: A hub frame may be slightly larger than the largest client frame (SPEC §2).
MAX_RECEIVE = 2 * 65536


class HubRefused(Exception):
    """The hub answered something else than ``welcome``."""


async def open_ws(url: str, source: str | None = None) -> ClientConnection:
    """A WebSocket to ``url``, from the local address ``source`` if given
    (a device of a storm, as from its own address: see Device.source)."""
    return await connect(
        url,
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        max_size=MAX_RECEIVE,
        compression=None,
        open_timeout=60,
        close_timeout=2,
        local_addr=(source, 0) if source else None,
    )


class Device:
    """Keys, identity and (when connected) the WebSocket of one device."""

    def __init__(self, spec: DeviceSpec) -> None:
        self.spec = spec
        self.index = spec.index
        self.signing_key = nacl.signing.SigningKey(spec.sign_seed)
        self.keys = crypto.DeviceKeys(spec.sign_seed, spec.box_secret)
        self.box_key = nacl.public.PrivateKey(spec.box_secret)
        self.user_id = ""
        self.device_id = ""
        self.ws: ClientConnection | None = None
        self.boxes: dict[str, nacl.public.Box] = {}
        self.acks: list[int] = []
        self.ack_wanted = asyncio.Event()
        self.acks_sent = 0  # ack frames written (the load generator counts frames)
        self.seen: set[bytes] = set()
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def sign_pk(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def box_pk(self) -> bytes:
        return bytes(self.box_key.public_key)

    def box(self, peer: Entry) -> nacl.public.Box:
        box = self.boxes.get(peer.device_id)
        if box is None:
            box = self.boxes[peer.device_id] = nacl.public.Box(
                self.box_key, nacl.public.PublicKey(peer.box_pk)
            )
        return box

    # --- connection life ------------------------------------------------------

    def sign(self, message: bytes) -> bytes:
        """Detached Ed25519 signature (the session's ``Signer``)."""
        return self.signing_key.sign(message).signature

    async def _challenge(self, url: str, source: str | None = None) -> ClientSession:
        self.ws = await open_ws(url, source)
        session = ClientSession()
        try:
            session.receive(await self.ws.recv(decode=False))
        except UnexpectedFrame as exc:
            raise HubRefused(f"expected challenge, got {exc.frame_type}") from None
        except ProtocolError as exc:
            if not exc.remote:
                raise
            raise HubRefused("expected challenge, got error") from None
        return session

    async def _welcome(self, session: ClientSession) -> Welcome:
        assert self.ws is not None
        try:
            event = session.receive(await self.ws.recv(decode=False))
        except UnexpectedFrame as exc:
            raise HubRefused(exc.frame_type) from None
        except ProtocolError as exc:
            if not exc.remote:
                raise
            raise HubRefused(exc.code) from None
        assert isinstance(event, Welcomed)
        return event.welcome

    async def enroll(self, url: str, code: str) -> None:
        """Enroll with a one-time code (SPEC §5.1), learn the ids, and hang up."""
        session = await self._challenge(url)
        assert self.ws is not None
        await self.ws.send(session.enroll(code, self, "miss-bench"))
        welcome = await self._welcome(session)
        self.user_id, self.device_id = welcome.user, welcome.device
        await self.close()

    async def authenticate(
        self, url: str, caps: tuple[str, ...] | None = None, source: str | None = None
    ) -> tuple[int, int, int]:
        """Connect and authenticate (SPEC §5.2), naming ``caps`` (``teams``:
        the hub sends team messages only to connections that name it, SPEC
        §13), from the local address ``source`` if given. Returns the
        monotonic ns at which the connection started, the ``auth`` left, and
        ``welcome`` came."""
        started = time.monotonic_ns()
        session = await self._challenge(url, source)
        assert self.ws is not None
        await self.ws.send(session.auth(self.device_id, self, caps))
        auth_sent = time.monotonic_ns()
        await self._welcome(session)
        return started, auth_sent, time.monotonic_ns()

    async def open_relay(self, url: str) -> tuple[int, int, int]:
        """Connect to the bare relay (no authentication)."""
        started = time.monotonic_ns()
        self.ws = await open_ws(url)
        now = time.monotonic_ns()
        return started, now, now

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks = []
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
            self.ws = None

    # --- messages -------------------------------------------------------------

    def seal_send(self, to_user_id: str, targets: list[Entry], body: str) -> tuple[bytes, bytes]:
        """A ``send`` frame sealing ``body`` for every target; returns (message id, frame)."""
        mid = crypto.new_message_id()
        plain = crypto.pack_plaintext(
            crypto.Plaintext(mid, self.user_id, to_user_id, time.time_ns() // 1_000_000, "text", body)
        )
        envs = {
            t.device_id: bytes(self.box(t).encrypt(plain, os.urandom(crypto.NONCE_BYTES))) for t in targets
        }
        return mid, encode(Send(mid, self.device_id, to_user_id, envs))

    def seal_team_send(
        self, team: str, head: bytes, targets: list[Entry], body: str
    ) -> tuple[bytes, bytes, int]:
        """A team ``send`` (SPEC §13.4): the padded plaintext sealed once
        (``seal_body``), a wrap of its key per target, the sender's ``head``
        of the chain. Returns (message id, frame, length of the sealed body)."""
        mid = crypto.new_message_id()
        plain = crypto.pack_plaintext(
            crypto.Plaintext(mid, self.user_id, team, time.time_ns() // 1_000_000, "text", body, head=head),
            pad_to=256,
        )
        key, sealed = crypto.seal_body(plain, mid, self.keys)
        wraps = {
            t.device_id: bytes(self.box(t).encrypt(key, os.urandom(crypto.NONCE_BYTES))) for t in targets
        }
        return mid, encode(Send(mid, self.device_id, team, wraps, body=sealed, head=head)), len(sealed)

    def open_deliver(self, frame: Deliver, sender: Entry) -> crypto.Plaintext:
        """Open and check a ``deliver`` (SPEC §6.3, and §13.3 for a team
        message: the wrap, then the body and its signature, and ``to`` is
        the team it came as); raises EnvelopeError."""
        body, team = frame.body, frame.team
        if body is None:
            return self._open(frame.env, frame.id, frame.from_user, sender)
        if len(frame.env) != crypto.NONCE_BYTES + crypto.MAC_BYTES + 32:
            raise crypto.EnvelopeError("a wrap is 72 bytes")
        try:
            key = self.box(sender).decrypt(frame.env)
        except nacl.exceptions.CryptoError:
            raise crypto.EnvelopeError("wrap does not open") from None
        plain = crypto.unpack_plaintext(crypto.open_body(body, key, frame.id, sender.sign_pk))
        if plain.id != frame.id or plain.from_user != frame.from_user:
            raise crypto.EnvelopeError("plaintext does not match its deliver frame")
        if team is None or plain.to_user != team:
            raise crypto.EnvelopeError("team message for another team")
        return plain

    def open_relayed(self, data: bytes, sender_of: Callable[[str], Entry | None]) -> crypto.Plaintext | None:
        """Open the ``send`` frame the relay forwarded; None if it is not for us."""
        frame = decode(data, CLIENT_FRAMES)
        if not isinstance(frame, Send) or self.device_id not in frame.envs:
            return None
        sender = sender_of(frame.sender)
        if sender is None:
            raise crypto.EnvelopeError("unknown sending device")
        return self._open(frame.envs[self.device_id], frame.id, sender.user_id, sender)

    def _open(self, env: bytes, mid: bytes, from_user: str, sender: Entry) -> crypto.Plaintext:
        if len(env) < crypto.NONCE_BYTES + crypto.MAC_BYTES:
            raise crypto.EnvelopeError("envelope too short")
        try:
            opened = self.box(sender).decrypt(env)
        except nacl.exceptions.CryptoError:
            raise crypto.EnvelopeError("envelope does not open") from None
        plain = crypto.unpack_plaintext(opened)
        if plain.id != mid or plain.from_user != from_user:
            raise crypto.EnvelopeError("plaintext does not match its deliver frame")
        if from_user != self.user_id and plain.to_user != self.user_id:
            raise crypto.EnvelopeError("message for another clinician")
        return plain

    def want_ack(self, seq: int) -> None:
        self.acks.append(seq)
        self.ack_wanted.set()

    async def ack_forever(self) -> None:
        """Ack what was received like the SDK does (miss_client.client):
        ``ACK_DELAY`` after the first unacked frame, all that piled up meanwhile."""
        while True:
            await self.ack_wanted.wait()
            await asyncio.sleep(ACK_DELAY)
            self.ack_wanted.clear()
            while self.acks and self.ws is not None:
                seqs, self.acks = self.acks[:1024], self.acks[1024:]
                try:
                    await self.ws.send(encode(Ack(tuple(seqs))))
                except ConnectionClosed:
                    return
                self.acks_sent += 1
