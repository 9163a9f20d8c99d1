"""The hub's one keepalive wheel (keepalive.py) keeps the liveness guarantee
of DESIGN.md for many connections at once: each is pinged every
ping_interval_seconds, whatever the others do; one that stops answering is
cut with 1011 ``keepalive ping timeout`` within ping_interval_seconds +
ping_timeout_seconds; one that answers stays; a peer whose socket is full
delays nobody else's ping."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from miss_server.app import HubServer
from protocol.frames import SUBPROTOCOL, Accepted
from tests.support.inprocess_hub import HubFactory
from tests.support.traffic import wait_until
from tests.support.wire import enrolled

pytestmark = pytest.mark.slow

SLACK = 1.5  # s, on a loaded 2-core machine
INTERVAL, TIMEOUT = 0.5, 0.5


class Watching(ClientConnection):
    """A client that notes when each ping of the hub arrives, and never pings itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pings: list[float] = []

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.pings.append(time.monotonic())
        super().process_event(event)


async def watching(url: str) -> Watching:
    ws = await connect(
        url,
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        ping_interval=None,
        create_connection=Watching,
    )
    await ws.recv()  # the challenge
    assert isinstance(ws, Watching)
    return ws


def longest_gap(ws: Watching, since: float) -> float:
    """The longest time ``ws`` went without a ping of the hub from ``since`` to now."""
    times = [since, *(t for t in ws.pings if t >= since), time.monotonic()]
    return max(b - a for a, b in itertools.pairwise(times))


async def closed_with(ws: ClientConnection) -> tuple[int | None, str | None]:
    ws.transport.resume_reading()
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 15)
    return ws.close_code, ws.close_reason


async def test_of_many_connections_those_that_stop_answering_are_cut_and_the_others_kept(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(
        ping_interval_seconds=INTERVAL, ping_timeout_seconds=TIMEOUT, auth_timeout_seconds=60
    )
    connected = time.monotonic()
    clients = [await watching(hub.url) for _ in range(30)]
    lively, silent = clients[:20], clients[20:]
    assert await wait_until(lambda: hub.websocket_connections == 30, 5)
    # Stop answering (reading nothing, so no ping is read, hence answered),
    # one at a time, so that they fall in different ticks of the wheel.
    paused: dict[Watching, float] = {}
    for ws in silent:
        ws.transport.pause_reading()
        paused[ws] = time.monotonic()
        await asyncio.sleep(INTERVAL / len(silent))
    cut_after: dict[Watching, float] = {}
    deadline = time.monotonic() + INTERVAL + TIMEOUT + 2 * SLACK
    while len(cut_after) < len(silent) and time.monotonic() < deadline:
        for ws in silent:
            if ws not in cut_after and _closed_by_hub(hub, ws):
                cut_after[ws] = time.monotonic() - paused[ws]
        await asyncio.sleep(0.02)
    print(f"\ncut after {sorted(round(t, 2) for t in cut_after.values())} s ({INTERVAL} s + {TIMEOUT} s)")
    assert len(cut_after) == len(silent)
    assert all(TIMEOUT * 0.9 <= t <= INTERVAL + TIMEOUT + SLACK for t in cut_after.values())
    for ws in silent:
        assert await closed_with(ws) == (1011, "keepalive ping timeout")

    # Those that answer stay, pinged every interval all along.
    await asyncio.sleep(3 * (INTERVAL + TIMEOUT))
    assert hub.websocket_connections == len(lively)
    for ws in lively:
        assert ws.pings and ws.pings[0] - connected <= INTERVAL + SLACK
        assert longest_gap(ws, ws.pings[0]) <= INTERVAL + SLACK
        await ws.ping()  # the connection still works both ways
        await ws.close()


def _closed_by_hub(hub: HubServer, ws: ClientConnection) -> bool:
    """Whether the hub's end of client ``ws``'s connection is no longer open."""
    assert hub._server is not None
    mine = ws.transport.get_extra_info("sockname")
    return all(c.remote_address != mine for c in hub._server.connections)


async def test_a_peer_whose_socket_is_full_delays_no_other_ping(make_hub: HubFactory) -> None:
    # A longer timeout: the sender's own pongs wait behind the frames the
    # hub has not read yet (websockets stops reading past max_queue frames).
    timeout = 5.0
    hub = await make_hub(
        ping_interval_seconds=INTERVAL, ping_timeout_seconds=timeout, auth_timeout_seconds=60
    )
    sender = await enrolled(hub, "Sender", "10000000003")
    reader = await enrolled(hub, "Reader", "10000000004")
    to_reader = await sender.lookup(reader.user_id)
    others = [await watching(hub.url) for _ in range(10)]
    assert reader.ws is not None
    # The reader reads nothing; its sender writes it far more than the
    # sockets hold (12 MB), so the hub's writes to it back up.
    reader.ws.transport.pause_reading()
    began = time.monotonic()
    frames = [sender.message(to_reader, f"{i}:{'x' * 60_000}") for i in range(200)]
    writing = asyncio.gather(*(sender.send_frame(frame) for frame in frames))
    for _ in frames:
        assert isinstance(await sender.recv(timeout=30), Accepted)
    await writing
    await asyncio.sleep(2 * INTERVAL)
    # Every other connection was pinged on time throughout, and answered.
    for ws in others:
        gap = longest_gap(ws, began)
        assert gap <= INTERVAL + SLACK, f"no ping for {gap:.2f} s"
    assert all(ws.close_code is None for ws in others)
    # The reader answered no ping (each waited behind what it did not
    # read): it is cut, 1011. Its messages stay stored for its next connection.
    assert await wait_until(lambda: _closed_by_hub(hub, reader.ws), INTERVAL + timeout + SLACK)
    print(f"\nthe reader was cut {time.monotonic() - began:.2f} s after it stopped reading")
    code, reason = await closed_with(reader.ws)
    assert (code, reason) == (1011, "keepalive ping timeout")
    for ws in others:
        await ws.close()
    await sender.close()


async def test_a_client_heard_from_within_the_interval_is_not_pinged_and_one_gone_quiet_is(
    make_hub: HubFactory,
) -> None:
    """A client that pings the hub itself (as ``websockets``' clients do)
    proves it is alive: the hub pings it no more, two frames per interval
    instead of four. Once it goes quiet it is pinged within the interval,
    and once it stops answering too it is cut within interval + timeout."""
    hub = await make_hub(
        ping_interval_seconds=INTERVAL, ping_timeout_seconds=TIMEOUT, auth_timeout_seconds=60
    )
    talker, quiet = await watching(hub.url), await watching(hub.url)
    began = time.monotonic()
    while time.monotonic() - began < 6 * INTERVAL:
        await talker.ping()  # answered: the connection works both ways
        await asyncio.sleep(INTERVAL / 4)
    assert talker.pings == [], "the hub pinged a client it heard from all along"
    assert len(quiet.pings) >= 4  # the silent one was pinged every interval meanwhile

    stopped = time.monotonic()
    assert await wait_until(lambda: bool(talker.pings), INTERVAL + SLACK)
    assert talker.pings[0] - stopped <= INTERVAL + SLACK
    talker.transport.pause_reading()  # and now it answers nothing
    paused = time.monotonic()
    assert await wait_until(lambda: _closed_by_hub(hub, talker), INTERVAL + TIMEOUT + 2 * SLACK)
    print(f"\ncut {time.monotonic() - paused:.2f} s after it went silent ({INTERVAL} s + {TIMEOUT} s)")
    assert await closed_with(talker) == (1011, "keepalive ping timeout")
    await quiet.close()
