"""The hub's edges: connections that have not
authenticated are capped per address and in all, and ``/metrics`` answers
only with its token or to a loopback peer. Real sockets, an in-process hub."""

from __future__ import annotations

import asyncio
import http.client
from pathlib import Path
from typing import Any

import pytest

from miss_server.admission import AcceptErrorFilter, PendingGate
from tests.support.inprocess_hub import HubFactory
from tests.support.wire import RawDevice, enrolled

#: ``make_hub`` (conftest.py): ``await make_hub(**settings)`` starts a hub.


async def _silent(port: int, host: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection that says nothing (no HTTP request, no handshake)."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(host, 0))


async def _closed_at_once(reader: asyncio.StreamReader) -> bool:
    """True if the hub closes the connection before we send anything."""
    try:
        return await asyncio.wait_for(reader.read(1), 1.0) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


async def test_silent_connections_from_one_address_are_capped_and_others_get_in(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(max_pending_per_address=5)
    silent = [await _silent(hub.port, "127.0.0.2") for _ in range(5)]
    assert hub.gate.pending == 5
    reader, writer = await _silent(hub.port, "127.0.0.2")  # the sixth from that address
    assert await _closed_at_once(reader)
    writer.close()
    assert hub.metrics.pending_refused.labels("address")._value.get() == 1
    # Another address, and the clinicians behind it, are not affected.
    alice = await enrolled(hub, "Alice", "10000000001")
    assert alice.device_id
    # Authenticated connections no longer count: the cap is for waiting ones.
    assert hub.gate.pending == 5
    for _, w in silent:
        w.close()
    await asyncio.sleep(0.2)
    assert hub.gate.pending == 0
    reader, writer = await _silent(hub.port, "127.0.0.2")
    assert not await _closed_at_once(reader)
    writer.close()


async def test_the_total_cap_holds_whatever_the_addresses(make_hub: HubFactory) -> None:
    hub = await make_hub(max_pending=4)
    held = [await _silent(hub.port, f"127.0.0.{i}") for i in range(2, 6)]
    reader, writer = await _silent(hub.port, "127.0.0.9")
    assert await _closed_at_once(reader)
    writer.close()
    for _, w in held:
        w.close()
    await asyncio.sleep(0.2)
    device = RawDevice(hub.url)  # room again
    await device.open()
    await device.close()


def _get_metrics(port: int, host: str = "127.0.0.1", token: str | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(host, 0))
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
        return conn.getresponse().status
    finally:
        conn.close()


async def test_metrics_need_the_token_when_one_is_set(make_hub: HubFactory, tmp_path: Path) -> None:
    token_file = tmp_path / "metrics.token"
    token_file.write_text("s3cret-token-of-the-monitoring\n")
    hub = await make_hub(metrics_token_file=str(token_file))
    assert await asyncio.to_thread(_get_metrics, hub.port) == 403  # even from loopback
    assert await asyncio.to_thread(_get_metrics, hub.port, token="wrong-token-wrong-token") == 403
    assert await asyncio.to_thread(_get_metrics, hub.port, token="s3cret-token-of-the-monitoring") == 200


async def test_without_a_token_metrics_answer_loopback_peers_only(make_hub: HubFactory) -> None:
    hub = await make_hub(host="0.0.0.0")
    assert await asyncio.to_thread(_get_metrics, hub.port) == 200
    ip = _non_loopback_address()
    if ip is None:
        pytest.fail("this machine has no non-loopback IPv4 address to test from")
    assert await asyncio.to_thread(_get_metrics, hub.port, ip) == 403


def _non_loopback_address() -> str | None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
            ip = str(s.getsockname()[0])
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_the_gate_counts_what_it_admits_and_releases() -> None:
    refused: list[str] = []
    gate = PendingGate(per_address=2, total=3, on_refused=refused.append)
    assert gate.admit("a") and gate.admit("a") and not gate.admit("a")
    assert gate.admit(None) and not gate.admit("b")
    assert refused == ["address", "total"]
    gate.release("a")
    assert gate.admit("b") and gate.pending == 3


def test_accept_errors_become_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[dict[str, Any]] = []
    handler = AcceptErrorFilter(lambda loop, ctx: seen.append(ctx), interval=60)
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level("WARNING", logger="miss.admission"):
            for _ in range(1000):
                handler(loop, {"message": "socket.accept() out of system resource", "exception": OSError(24)})
            handler(loop, {"message": "something else"})
    finally:
        loop.close()
    assert len([r for r in caplog.records if r.name == "miss.admission"]) == 1
    assert seen == [{"message": "something else"}]
