"""Liveness of connections: ping/pong (ping_interval_seconds,
ping_timeout_seconds) and the time a TCP connection has to complete its
HTTP upgrade (handshake_timeout_seconds). README, "Configuration reference";
SPEC §2/§7 (close 1011 ``keepalive ping timeout``)."""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from protocol.frames import SUBPROTOCOL
from tests.support.inprocess_hub import HubFactory
from tests.support.traffic import wait_until

pytestmark = pytest.mark.slow

SLACK = 1.5  # s, on a loaded 2-core machine


async def raw(url: str) -> ClientConnection:
    """A WebSocket that has read its challenge and pings nobody itself; it
    answers the hub's pings while its transport reads."""
    ws = await connect(url, subprotocols=[SUBPROTOCOL], ping_interval=None)  # type: ignore[list-item]
    await ws.recv()
    return ws


async def test_a_client_that_stops_answering_pings_is_cut_after_interval_plus_timeout(
    make_hub: HubFactory,
) -> None:
    interval, timeout = 0.5, 0.5
    hub = await make_hub(
        ping_interval_seconds=interval, ping_timeout_seconds=timeout, auth_timeout_seconds=60
    )
    lively, silent = await raw(hub.url), await raw(hub.url)
    assert hub.websocket_connections == 2
    # The silent client stops reading: its kernel still takes the bytes, but
    # the ping is never read, so never answered (websockets answers pings as
    # it reads, whether or not the application calls recv).
    silent.transport.pause_reading()
    paused = time.monotonic()
    assert await wait_until(lambda: hub.websocket_connections < 2, interval + timeout + 2 * SLACK)
    cut_after = time.monotonic() - paused
    print(f"\nsilent client cut {cut_after:.2f} s after it stopped reading ({interval} s + {timeout} s)")
    assert timeout * 0.9 <= cut_after <= interval + timeout + SLACK
    # The client that answers stays, several ping periods on.
    await asyncio.sleep(3 * (interval + timeout))
    assert hub.websocket_connections == 1
    await lively.ping()  # its connection still works both ways
    silent.transport.resume_reading()
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(silent.recv(), 5)
    assert silent.close_code == 1011 and silent.close_reason == "keepalive ping timeout"
    await lively.close()


async def test_a_connection_that_does_not_finish_its_upgrade_is_closed_at_the_handshake_timeout(
    make_hub: HubFactory,
) -> None:
    limit = 1.0
    hub = await make_hub(handshake_timeout_seconds=limit)
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
    began = time.monotonic()
    leftover = await asyncio.wait_for(reader.read(), limit + 2 * SLACK)
    closed_after = time.monotonic() - began
    writer.close()
    print(f"\nincomplete upgrade closed after {closed_after:.2f} s (handshake_timeout_seconds {limit})")
    assert leftover == b"" and limit * 0.9 <= closed_after <= limit + SLACK
    # A complete upgrade still succeeds.
    ws = await raw(hub.url)
    await ws.close()
