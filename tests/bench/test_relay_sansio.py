"""The sans-I/O relay (bench/relay_sansio.py), a baseline of ``miss-bench
run --relay sans-io``: it must relay as the asyncio relay does, or the
ratio against it would compare the hub with a relay that does less."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from bench.relay_sansio import LeanRelayConnection
from protocol.frames import SUBPROTOCOL


@pytest.fixture
async def relay() -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: LeanRelayConnection(max_size=1 << 16), "127.0.0.1", 0)
    yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()


async def test_a_frame_reaches_each_peer_once_and_not_the_sender(relay: str) -> None:
    proto = [SUBPROTOCOL]
    async with (
        connect(f"{relay}/bob", subprotocols=proto) as bob,  # type: ignore[list-item]
        connect(f"{relay}/carol", subprotocols=proto) as carol,  # type: ignore[list-item]
        connect(f"{relay}/alice/bob,carol,nobody", subprotocols=proto) as alice,  # type: ignore[list-item]
    ):
        assert alice.subprotocol == SUBPROTOCOL
        for i in range(3):
            await alice.send(b"envelope %d" % i)
        for peer in (bob, carol):
            assert [await asyncio.wait_for(peer.recv(), 5) for _ in range(3)] == [
                b"envelope 0",
                b"envelope 1",
                b"envelope 2",
            ]
        await bob.send(b"not relayed: bob names no peer")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(alice.recv(), 0.2)
        await alice.ping()  # answered by the relay's protocol
    # Each client's closing handshake completed: a clean 1000 from the relay.
    assert alice.close_code == 1000 and bob.close_code == 1000


async def test_a_frame_over_the_size_limit_closes_that_client_only(relay: str) -> None:
    proto = [SUBPROTOCOL]
    async with (
        connect(f"{relay}/bob", subprotocols=proto) as bob,  # type: ignore[list-item]
        connect(f"{relay}/alice/bob", subprotocols=proto, max_size=None) as alice,  # type: ignore[list-item]
    ):
        await alice.send(b"x" * ((1 << 16) + 1))
        with pytest.raises(ConnectionClosedError):
            await asyncio.wait_for(alice.recv(), 5)
        assert alice.close_code == 1009  # message too big
        await asyncio.sleep(0.05)
        assert bob.state.name == "OPEN"


async def test_a_plain_http_request_is_refused(relay: str) -> None:
    with pytest.raises(InvalidStatus):
        # an upgrade that offers no subprotocol the relay speaks: HTTP 400, no connection
        async with connect(f"{relay}/alice", subprotocols=["other"]):  # type: ignore[list-item]
            pass
