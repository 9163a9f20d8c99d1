"""Fixes from the security reading of the hub's edges (connection.py,
admission.py, guard.py): what a client that has not authenticated can make
the hub hold, which address it counts as, and what it can make the hub
fail on."""

from __future__ import annotations

import asyncio
import http.client
import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers

from miss_server.admission import PendingGate, address_key
from miss_server.connection import PRE_AUTH_FRAME_BYTES, client_address
from protocol import errors
from protocol.frames import SUBPROTOCOL
from tests.support.inprocess_hub import HubFactory
from tests.support.wire import RawDevice, enrolled, invite


async def close_code_after(url: str, junk: bytes) -> int | None:
    """Open a connection, read the challenge, send ``junk`` as one binary
    frame: the code the hub closes with."""
    async with connect(url, subprotocols=[SUBPROTOCOL], max_size=None) as ws:  # type: ignore[list-item]
        await ws.recv()
        await ws.send(junk)
        await asyncio.wait_for(ws.wait_closed(), 5)
        return ws.close_code


# --- frames before authentication are small -----------------------------------------------------


async def test_a_frame_before_authentication_may_not_be_large(make_hub: HubFactory) -> None:
    hub = await make_hub()
    # Over the pre-authentication limit: refused by the WebSocket layer, unread.
    assert await close_code_after(hub.url, b"\x00" * (PRE_AUTH_FRAME_BYTES + 1)) == 1009
    # At it: read, and refused for what it is.
    assert await close_code_after(hub.url, b"\x00" * PRE_AUTH_FRAME_BYTES) == 4400
    assert hub.gate.pending == 0


async def test_after_authentication_frames_have_the_full_size(make_hub: HubFactory) -> None:
    hub = await make_hub()
    alice = await enrolled(hub, "Dr Alice", "10000000001")
    assert alice.ws is not None
    await alice.ws.send(b"\x00" * 60_000)  # junk, but under max_frame_bytes: parsed, then refused
    _, code = await alice.until_closed(5)
    assert code == 4400
    bob = RawDevice(hub.url, keys=alice.keys, user_id=alice.user_id, device_id=alice.device_id)
    await bob.auth()  # and the limit is back for the next connection's handshake
    assert await close_code_after(hub.url, b"\x00" * (PRE_AUTH_FRAME_BYTES + 1)) == 1009


# --- X-Forwarded-For sent twice -----------------------------------------------------------------


@dataclass
class Forwarded(RawDevice):
    """A device whose requests carry these headers (as through a proxy)."""

    headers: tuple[tuple[str, str], ...] = ()

    def connect_options(self) -> dict[str, Any]:
        return {"additional_headers": list(self.headers)}


async def test_two_forwarded_for_headers_do_not_break_the_handshake(make_hub: HubFactory) -> None:
    """Behind a trusted proxy, a client that sent its own X-Forwarded-For
    header may reach the hub with two: the hub takes the last entry of the
    last one (the proxy's) and serves the connection."""
    hub = await make_hub(trust_forwarded_for=True)
    _, code = await invite(hub, "Dr Alice", "10000000001")
    alice = Forwarded(
        hub.url, headers=(("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-For", "10.0.0.1, 198.51.100.7"))
    )
    welcome = await alice.enroll(code)
    assert welcome.device == alice.device_id


def test_the_forwarded_address_is_the_last_entry_of_the_last_header() -> None:
    headers = Headers([("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-For", "10.0.0.1, 198.51.100.7 ")])
    ws = cast(
        ServerConnection, SimpleNamespace(request=SimpleNamespace(headers=headers), remote_address=None)
    )
    assert client_address(ws, True) == "198.51.100.7"


# --- an IPv6 client counts by its /64 -----------------------------------------------------------


def test_address_keys() -> None:
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("2001:db8:1:2:aaaa:bbbb:cccc:dddd") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("?") == "?"


def test_the_pending_cap_counts_an_ipv6_client_by_its_64() -> None:
    refused: list[str] = []
    gate = PendingGate(2, 100, refused.append)
    assert gate.admit("2001:db8:1:2::1") and gate.admit("2001:db8:1:2:ffff::9")
    assert not gate.would_admit("2001:db8:1:2::3") and not gate.admit("2001:db8:1:2::3")
    assert refused == ["address", "address"]
    assert gate.admit("2001:db8:1:3::1")  # the next /64 is someone else
    assert gate.admit("192.0.2.7") and gate.admit("::ffff:192.0.2.7") and not gate.admit("192.0.2.7")
    for address in (
        "2001:db8:1:2::1",
        "2001:db8:1:2:ffff::9",
        "2001:db8:1:3::1",
        "192.0.2.7",
        "::ffff:192.0.2.7",
    ):
        gate.release(address)
    assert gate.pending == 0 and gate.admit("2001:db8:1:2::3")


async def test_the_budgets_count_an_ipv6_client_by_its_64(make_hub: HubFactory) -> None:
    hub = await make_hub(rate_auth="1/min burst 2", rate_address="1/min burst 2")
    await hub.guard.attempt("2001:db8:1:2::1")
    await hub.guard.attempt("2001:db8:1:2::2")
    with pytest.raises(errors.RateLimited):
        await hub.guard.attempt("2001:db8:1:2:ffff::3")
    await hub.guard.attempt("2001:db8:1:3::1")
    await hub.guard.request("u1", "d1", "2001:db8:7:7::1")
    await hub.guard.request("u2", "d2", "2001:db8:7:7::2")
    with pytest.raises(errors.RateLimited):
        await hub.guard.request("u3", "d3", "2001:db8:7:7::3")


# --- what happened to the connections that never authenticated ----------------------------------


async def test_connections_that_close_unauthenticated_are_counted_by_stage(make_hub: HubFactory) -> None:
    hub = await make_hub(handshake_timeout_seconds=0.3, auth_timeout_seconds=0.3)

    def stages() -> dict[str, float]:
        counter = hub.metrics.pending_closed
        return {s: counter.labels(s)._value.get() for s in ("handshake", "http", "auth")}

    def pending() -> float | None:
        return hub.metrics.registry.get_sample_value("miss_pending_connections")

    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the end of the request
    assert pending() == 1
    assert await asyncio.wait_for(reader.read(), 5) == b""  # cut by the handshake timeout
    writer.close()
    await asyncio.to_thread(_healthz, hub.port)
    async with connect(hub.url, subprotocols=[SUBPROTOCOL]) as ws:  # type: ignore[list-item]
        await ws.recv()
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 4408  # auth_timeout
    await enrolled(hub, "Dr Alice", "10000000001")  # authenticated: not counted
    await asyncio.sleep(0.1)
    assert stages() == {"handshake": 1, "http": 1, "auth": 1}
    assert pending() == 0


def _healthz(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


# --- /metrics through a reverse proxy on the same machine ---------------------------------------


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Real-IP"])
async def test_metrics_without_a_token_refuse_a_forwarded_request(make_hub: HubFactory, header: str) -> None:
    """A proxy on the hub's machine connects from loopback: a request it
    forwards for someone else must not read /metrics on that ground."""
    hub = await make_hub()
    assert await asyncio.to_thread(_metrics_status, hub.port, {}) == 200
    assert await asyncio.to_thread(_metrics_status, hub.port, {header: "203.0.113.9"}) == 403


def _metrics_status(port: int, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics", headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


# --- what an unauthenticated peer can write to the log -------------------------------------------


async def test_junk_before_authentication_is_not_logged_at_info(
    make_hub: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    hub = await make_hub()
    alice = await enrolled(hub, "Dr Alice", "10000000001")
    with caplog.at_level(logging.INFO, logger="miss.connection"):
        for _ in range(20):
            assert await close_code_after(hub.url, b"\x00junk") == 4400
        assert [r for r in caplog.records if r.levelno >= logging.INFO] == []
        assert hub.metrics.errors.labels("malformed_frame")._value.get() == 20
        assert alice.ws is not None
        await alice.ws.send(b"\x00junk")  # an authenticated device's protocol error is worth a line
        _, code = await alice.until_closed(5)
        assert code == 4400
        await asyncio.sleep(0.1)
    lines = [r for r in caplog.records if r.levelno >= logging.INFO and r.name == "miss.connection"]
    assert [(r.getMessage(), getattr(r, "device", None)) for r in lines] == [
        ("closing on protocol error", alice.device_id)
    ]
