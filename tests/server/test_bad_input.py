"""Bad input gets the typed error or close code SPEC.md §7 names, and costs
nobody else anything: after each offence, two bystanders still exchange a
message through the same hub."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from miss_server.app import HubServer
from protocol import crypto, errors
from protocol.frames import (
    Accepted,
    Ack,
    Auth,
    Deliver,
    Delivered,
    Error,
    Lookup,
    LookupOk,
    Send,
)
from tests.support.verified_hubs import verify_on
from tests.support.wire import RawDevice, enrolled, invite


class Pair:
    """Two enrolled clinicians who keep talking while others misbehave."""

    def __init__(self, a: RawDevice, b: RawDevice, la: LookupOk, lb: LookupOk) -> None:
        self.a, self.b, self.la, self.lb = a, b, la, lb

    async def still_served(self) -> None:
        send = self.a.message(self.lb, "still here")
        await self.a.send_frame(send)
        assert await self.a.recv() == Accepted(send.id)
        got = await self.b.recv()
        assert isinstance(got, Deliver) and got.id == send.id
        assert self.b.open_deliver(got, self.a.keys.box_pk).body == "still here"
        await self.b.ack(got.seq)
        await self.a.recv()  # the delivered receipt


@pytest.fixture
async def pair(hub: HubServer) -> Pair:
    a = await enrolled(hub, "Alice", "10000000001")
    b = await enrolled(hub, "Bob", "10000000002")
    return Pair(a, b, await a.lookup(a.user_id), await a.lookup(b.user_id))


async def expect_close(dev: RawDevice, error: type[errors.FatalError], timeout: float = 5.0) -> None:
    """SPEC §7: within ``timeout`` s the hub sends one fatal ``error`` frame
    naming ``error``'s code, then closes with its close code and the code as
    the reason."""
    frame = await dev.recv(timeout=timeout)
    assert isinstance(frame, Error) and frame.fatal and frame.code == error.code, frame
    with pytest.raises(ConnectionClosed) as closed:
        await dev.recv()
    assert closed.value.rcvd is not None, "the hub did not close the connection"
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (error.close_code, error.code)


async def expect_request_error(dev: RawDevice, error: type[errors.ProtocolError], send: Send) -> Error:
    """SPEC §7: the hub answers ``send`` with a request error (not fatal,
    carrying the send's id) naming ``error``'s code, and keeps the connection."""
    reply = await dev.recv()
    assert isinstance(reply, Error) and (reply.code, reply.fatal, reply.id) == (error.code, False, send.id), (
        reply
    )
    assert dev.ws is not None and dev.ws.close_code is None, "the connection was closed"
    return reply


async def test_malformed_msgpack_closes_4400(hub: HubServer, pair: Pair) -> None:
    bad = RawDevice(hub.url)
    await bad.open()
    assert bad.ws is not None
    await bad.ws.send(b"\xc1\xff\x00 not msgpack")
    await expect_close(bad, errors.MalformedFrame)
    await pair.still_served()


async def test_malformed_after_auth_closes_4400(hub: HubServer, pair: Pair) -> None:
    # A well-formed msgpack map with a field of the wrong type.
    assert pair.a.ws is not None
    await pair.a.ws.send(msgpack.packb({"t": "ack", "seqs": "not a list"}))
    await expect_close(pair.a, errors.MalformedFrame)
    await pair.a.auth()
    await pair.still_served()


async def test_text_frame_closes_4400(hub: HubServer, pair: Pair) -> None:
    bad = RawDevice(hub.url)
    await bad.open()
    assert bad.ws is not None
    await bad.ws.send('{"t": "auth"}')
    await expect_close(bad, errors.MalformedFrame)
    await pair.still_served()


async def test_unknown_frame_type_closes_4404(hub: HubServer, pair: Pair) -> None:
    bad = RawDevice(hub.url)
    await bad.open()
    assert bad.ws is not None
    await bad.ws.send(msgpack.packb({"t": "subscribe_all", "x": 1}))
    await expect_close(bad, errors.UnknownFrameType)
    await pair.still_served()


async def test_server_frame_from_client_is_unknown(hub: HubServer, pair: Pair) -> None:
    # A client may not send frames only the hub sends (here: deliver).
    assert pair.a.ws is not None
    await pair.a.send_frame(Deliver(1, crypto.new_message_id(), "u", "d", 0, b"x"))
    await expect_close(pair.a, errors.UnknownFrameType)


async def test_oversize_frame_closes_1009(hub: HubServer, pair: Pair) -> None:
    bad = RawDevice(hub.url)
    await bad.open()
    assert bad.ws is not None
    await bad.ws.send(b"\x00" * (hub.settings.max_frame_bytes + 1))
    with pytest.raises(ConnectionClosed) as closed:
        await bad.recv()  # SPEC §2: no error frame comes first
    assert closed.value.rcvd is not None and closed.value.rcvd.code == errors.CLOSE_TOO_BIG
    await pair.still_served()


@pytest.mark.parametrize(
    "frame",
    [
        Send(b"\x01" * 16, "d_x", "u_x", {"d_y": b"e"}),
        Ack((1,)),
        Lookup(rid=1, user="u_x"),
    ],
    ids=["send", "ack", "lookup"],
)
async def test_frames_before_authentication_close_4405(hub: HubServer, pair: Pair, frame: object) -> None:
    bad = RawDevice(hub.url)
    await bad.open()
    await bad.send_frame(frame)  # type: ignore[arg-type]
    await expect_close(bad, errors.FrameNotAllowed)
    await pair.still_served()


async def test_second_auth_on_authenticated_connection_closes_4405(pair: Pair) -> None:
    sig = pair.a.keys.sign(crypto.auth_message(pair.a.nonce, pair.a.device_id))
    await pair.a.send_frame(Auth(1, pair.a.device_id, sig))
    await expect_close(pair.a, errors.FrameNotAllowed)


async def test_wrong_challenge_signature_closes_4401(hub: HubServer, pair: Pair) -> None:
    impostor = RawDevice(hub.url, device_id=pair.b.device_id)  # right id, other key
    await impostor.open()
    sig = impostor.keys.sign(crypto.auth_message(impostor.nonce, pair.b.device_id))
    await impostor.send_frame(Auth(1, pair.b.device_id, sig))
    await expect_close(impostor, errors.AuthFailed)
    await pair.still_served()


async def test_unknown_device_auth_closes_4401(hub: HubServer, pair: Pair) -> None:
    stranger = RawDevice(hub.url, device_id="d_0000000000000000")
    await stranger.open()
    sig = stranger.keys.sign(crypto.auth_message(stranger.nonce, stranger.device_id))
    await stranger.send_frame(Auth(1, stranger.device_id, sig))
    await expect_close(stranger, errors.AuthFailed)


async def test_replayed_authentication_closes_4401(hub: HubServer, pair: Pair) -> None:
    # An eavesdropper captures Bob's valid auth frame and replays it on its
    # own connection: the hub's fresh challenge makes it worthless.
    honest = RawDevice(hub.url, keys=pair.b.keys, device_id=pair.b.device_id)
    await honest.open()
    captured = Auth(
        1, pair.b.device_id, pair.b.keys.sign(crypto.auth_message(honest.nonce, pair.b.device_id))
    )
    replayer = RawDevice(hub.url)
    await replayer.open()
    await replayer.send_frame(captured)
    await expect_close(replayer, errors.AuthFailed)
    await honest.close()
    await pair.still_served()


async def test_forged_sender_closes_4403(hub: HubServer, pair: Pair) -> None:
    good = pair.a.message(pair.lb, "spoof")
    forged = Send(good.id, pair.b.device_id, good.to, good.envs)  # claims to be Bob's device
    await pair.a.send_frame(forged)
    await expect_close(pair.a, errors.ForgedSender)
    # Nothing forged reached Bob: his next frame is the bystanders' message.
    await pair.a.auth()
    await pair.still_served()


async def test_message_for_unknown_device_is_refused_and_connection_kept(pair: Pair) -> None:
    send = pair.a.message(pair.lb, "to nobody")
    envs = dict(send.envs)
    envs["d_ffffffffffffffff"] = next(iter(envs.values()))
    await pair.a.send_frame(Send(send.id, send.sender, send.to, envs))
    await expect_request_error(pair.a, errors.UnknownDevice, send)
    # Nothing was stored: the same id, well addressed, is accepted as new.
    await pair.a.send_frame(send)
    assert await pair.a.recv() == Accepted(send.id, dup=False)
    got = await pair.b.recv()
    assert isinstance(got, Deliver) and got.id == send.id


async def test_missing_device_is_named(hub: HubServer, pair: Pair) -> None:
    # Bob adds a second device; Alice's stale list misses it.
    _ = await invite(hub, "Carol", "10000000003")
    second = await pair.b.link()
    await verify_on(hub, pair.b.user_id)  # the administrator attests the new device too
    send = pair.a.message(pair.lb, "stale list")  # pair.lb predates the new device
    await pair.a.send_frame(send)
    reply = await expect_request_error(pair.a, errors.MissingDevices, send)
    assert reply.missing == (second.device_id,)


async def test_unknown_recipient(pair: Pair) -> None:
    send = pair.a.message(pair.lb, "x")
    await pair.a.send_frame(Send(send.id, send.sender, "u_ffffffffffffffff", send.envs))
    await expect_request_error(pair.a, errors.UnknownUser, send)
    await pair.still_served()


async def test_invalid_enrollment_code_closes_4402(hub: HubServer, pair: Pair) -> None:
    guesser = RawDevice(hub.url)
    await guesser.open()
    k = guesser.keys
    code = "AAAA-BBBB-CCCC-DDDD"
    from protocol.frames import Enroll

    sig = k.sign(crypto.enroll_message(guesser.nonce, code, k.sign_pk, k.box_pk))
    await guesser.send_frame(Enroll(1, code, k.sign_pk, k.box_pk, "x", sig))
    await expect_close(guesser, errors.InvalidCode)
    await pair.still_served()


async def test_auth_timeout_closes_4408(hub: HubServer, pair: Pair) -> None:
    idle = RawDevice(hub.url)
    await idle.open()
    # The test hub allows 2 s to authenticate.
    await expect_close(idle, errors.AuthTimeout, timeout=hub.settings.auth_timeout_seconds + 3)
    await pair.still_served()


async def test_handshake_without_subprotocol_is_refused(hub: HubServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(hub.url):
            pass
    assert refused.value.response.status_code == 400


async def test_unsupported_version_closes_4426(hub: HubServer, pair: Pair) -> None:
    dev = RawDevice(hub.url, keys=pair.a.keys, device_id=pair.a.device_id)
    await dev.open()
    sig = dev.keys.sign(crypto.auth_message(dev.nonce, dev.device_id))
    await dev.send_frame(Auth(2, dev.device_id, sig))
    await expect_close(dev, errors.UnsupportedVersion)


async def test_many_bad_connections_do_not_disturb_a_conversation(hub: HubServer, pair: Pair) -> None:
    async def offend(i: int) -> None:
        bad = RawDevice(hub.url)
        await bad.open()
        assert bad.ws is not None
        await bad.ws.send(bytes([0xC1, i % 256]))  # 0xc1 starts no msgpack value
        await expect_close(bad, errors.MalformedFrame)

    offenders = asyncio.gather(*(offend(i) for i in range(50)))
    for _ in range(5):
        await pair.still_served()
    await offenders


async def test_second_connection_of_a_device_replaces_the_first(hub: HubServer, pair: Pair) -> None:
    newer = RawDevice(hub.url, keys=pair.b.keys, device_id=pair.b.device_id, user_id=pair.b.user_id)
    await newer.auth()
    # SPEC §2 and §7 say 4409 comes without an error frame; this hub sends one first.
    await expect_close(pair.b, errors.SessionReplaced)
    pair.b = newer  # the newer connection gets Bob's messages
    await pair.still_served()


# A device that stops reading its socket costs nobody else anything and
# loses nothing: once it reads again it gets every message, in order, once.
# Its sender writes it far more than the sockets' buffers hold, so the hub's
# writes to it back up (websockets pauses writing) and its deliveries wait in
# the hub while two bystanders keep talking.
SLOW_MESSAGES = 300
SLOW_BODY = "x" * 60_000  # one envelope ≈ 60 KB, inside the 64 KiB frame limit
#: The largest send buffer the kernel gives a TCP socket (bytes).
SEND_BUFFER_MAX = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])


async def test_a_device_that_stops_reading_harms_nobody_and_loses_nothing(
    hub: HubServer,
    pair: Pair,
) -> None:
    sender = await enrolled(hub, "Sender", "10000000003")
    reader = await enrolled(hub, "Reader", "10000000004")
    to_reader = await sender.lookup(reader.user_id)
    assert reader.ws is not None
    # More than the kernel can hold between the hub and the reader (the hub's
    # send buffer at its largest, the reader's receive buffer as it is): the
    # rest must wait in the hub, which then writes only as the reader reads.
    receive_buffer = reader.ws.transport.get_extra_info("socket").getsockopt(
        socket.SOL_SOCKET, socket.SO_RCVBUF
    )
    assert SLOW_MESSAGES * len(SLOW_BODY) > 2 * (SEND_BUFFER_MAX + receive_buffer)

    # The reader reads nothing from here on; its sender writes without waiting.
    sent = [sender.message(to_reader, f"{i}:{SLOW_BODY}") for i in range(SLOW_MESSAGES)]
    writing = asyncio.gather(*(sender.send_frame(frame) for frame in sent))
    accepted = 0
    latencies = []
    while accepted < SLOW_MESSAGES:
        frame = await sender.recv(timeout=30)
        assert isinstance(frame, Accepted), frame
        accepted += 1
        if accepted % 60 == 0:  # the bystanders, while the reader's socket is full
            started = time.perf_counter()
            await pair.still_served()
            latencies.append(time.perf_counter() - started)
    await writing
    assert max(latencies) < 1.0, latencies

    # Now it reads: every message, in the order sent, once.
    got = []
    while len(got) < SLOW_MESSAGES:
        try:
            frame = await reader.recv(timeout=10)
        except TimeoutError:
            raise AssertionError(f"the reader got {len(got)} messages of {SLOW_MESSAGES}") from None
        assert isinstance(frame, Deliver), frame
        got.append(frame)
    bodies = [reader.open_deliver(frame, sender.keys.box_pk).body for frame in got]
    assert [b.split(":", 1)[0] for b in bodies] == [str(i) for i in range(SLOW_MESSAGES)]
    assert [frame.id for frame in got] == [frame.id for frame in sent]
    seqs = [frame.seq for frame in got]
    assert seqs == sorted(seqs)
    await reader.ack(*seqs)
    receipts = set()
    while len(receipts) < SLOW_MESSAGES:
        frame = await sender.recv(timeout=10)
        assert isinstance(frame, Delivered), frame
        receipts.add(frame.id)
    assert receipts == {frame.id for frame in sent}
