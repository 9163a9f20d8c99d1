"""Slowloris: 2,000 connections from one address that never finish their
HTTP handshake do not keep 50 clinicians from connecting and messaging,
and the hub cuts the half-open ones at its handshake timeout (SPEC §11.5,
docs/OPERATIONS.md, "Hardened edges").

A real ``miss-server`` with the default limits (bystanders.LimitedHub) and
a short ``handshake_timeout_seconds``. From 127.0.0.2, 2,000 TCP
connections: most send the start of an HTTP request and then nothing, the
rest open TCP only. The per-address cap of connections not yet
authenticated (``max_pending_per_address``, admission.py) lets the first
256 in and closes the others at accept; the 256 wait for their request
until the timeout closes them. Meanwhile 50 clinicians at 127.0.0.1,
enrolled beforehand, connect, authenticate and exchange messages.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from miss_server.admission import raise_open_file_limit
from miss_server.config import Settings
from protocol.frames import Accepted, Deliver, Delivered, LookupOk
from tests.support.bystanders import Device, LimitedHub, clinician, hub_metric, hub_store, percentile

pytestmark = [pytest.mark.slow, pytest.mark.exclusive]  # bystanders: attacked vs quiet latency

#: The hub's handshake timeout in this test (s).
TIMEOUT = 4.0
HALF_OPEN = 2000
#: Of which these open TCP and send nothing at all.
TCP_ONLY = 400
CLINICIANS = 50
MESSAGES = 4
#: A partial request: the request line and a header, never the blank line that ends it.
PARTIAL = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nX-Slow: "
ATTACKER = "127.0.0.2"


@dataclass
class HalfOpen:
    """One attacking connection: when it opened, when the hub closed it."""

    opened: float
    closed: float | None = None


async def half_open(host: str, port: int, partial: bytes) -> HalfOpen:
    """Open a connection from ATTACKER, send ``partial``, then only wait for
    the hub to close it (end of stream or reset)."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=(ATTACKER, 0))
    conn = HalfOpen(time.monotonic())
    try:
        if partial:
            writer.write(partial)
        while await reader.read(4096):
            pass  # the hub answers nothing before the request ends; an error page would be read here
    except OSError:
        pass  # reset by the hub: closed too
    conn.closed = time.monotonic()
    writer.transport.abort()
    return conn


@dataclass
class Traffic:
    """The clinicians' timings (ms)."""

    connect: list[float] = field(default_factory=list)
    message: list[float] = field(default_factory=list)
    sent_at: dict[bytes, float] = field(default_factory=dict)

    def __str__(self) -> str:
        c, m = self.connect, self.message
        return (
            f"connect (to welcome) p50 {percentile(c, 50):.1f} ms, p99 {percentile(c, 99):.1f} ms; "
            f"{len(m)} messages p50 {percentile(m, 50):.1f} ms, p99 {percentile(m, 99):.1f} ms"
        )


async def converse(devices: list[Device], peers: dict[str, LookupOk], traffic: Traffic) -> None:
    """Each device connects (timed to its ``welcome``), then sends MESSAGES
    messages to its peer, each timed from its write to the peer's read."""

    async def connect(dev: Device) -> None:
        t0 = time.monotonic()
        await dev.auth()
        traffic.connect.append((time.monotonic() - t0) * 1000)

    await asyncio.gather(*(connect(d) for d in devices))

    async def run(dev: Device) -> None:
        accepted = delivered = 0
        to = peers[dev.device_id]

        async def write() -> None:
            for i in range(MESSAGES):
                send = dev.message(to, f"bilan {i}")
                traffic.sent_at[send.id] = time.monotonic()
                await dev.send_frame(send)
                await asyncio.sleep(0.05)

        writing = asyncio.create_task(write())
        while accepted < MESSAGES or delivered < MESSAGES:
            frame = await dev.recv(timeout=20)
            if isinstance(frame, Accepted):
                accepted += 1
            elif isinstance(frame, Deliver):
                traffic.message.append((time.monotonic() - traffic.sent_at[frame.id]) * 1000)
                delivered += 1
                await dev.ack(frame.seq)
            elif not isinstance(frame, Delivered):
                raise AssertionError(f"{dev.device_id} got {frame}")
        await writing

    await asyncio.gather(*(run(d) for d in devices))


async def test_half_open_connections_do_not_keep_clinicians_out(tmp_path: Path) -> None:
    raise_open_file_limit()  # 2,000 sockets here, as many at the hub
    hub = LimitedHub(tmp_path, env={"MISS_HANDSHAKE_TIMEOUT_SECONDS": str(TIMEOUT)})
    await asyncio.to_thread(hub.start)
    per_address = Settings.model_fields["max_pending_per_address"].default
    try:
        async with hub_store(hub) as store:
            devices = [await clinician(store, hub.url, f"Dr Slow {i}") for i in range(CLINICIANS)]
            peers = {d.device_id: await d.lookup(devices[i ^ 1].user_id) for i, d in enumerate(devices)}
            for dev in devices:
                await dev.close()
        quiet = Traffic()
        await asyncio.wait_for(converse(devices, peers, quiet), 60)
        for dev in devices:
            await dev.close()

        # The attack: every connection at once; the clinicians once the hub
        # has taken what its per-address cap lets in and refused the rest.
        attack_started = time.monotonic()
        attack = [
            asyncio.create_task(half_open("127.0.0.1", hub.port, b"" if k < TCP_ONLY else PARTIAL))
            for k in range(HALF_OPEN)
        ]
        metric = "miss_pending_connections_refused_total"
        while await asyncio.to_thread(hub_metric, hub, metric, scope="address") < HALF_OPEN - per_address:
            assert time.monotonic() - attack_started < TIMEOUT / 2, "the attack's connections are not all in"
            await asyncio.sleep(0.05)
        cap_full = time.monotonic() - attack_started
        pending_then = await asyncio.to_thread(hub_metric, hub, "miss_pending_connections")
        traffic = Traffic()
        t0 = time.monotonic()
        await asyncio.wait_for(converse(devices, peers, traffic), 60)
        talked = time.monotonic() - t0
        still_open = sum(1 for t in attack if not t.done())
        for dev in devices:
            await dev.close()

        conns = await asyncio.wait_for(asyncio.gather(*attack), TIMEOUT + 30)
        last_close = max(c.closed or 0 for c in conns) - attack_started
        refused = hub_metric(hub, "miss_pending_connections_refused_total", scope="address")
        refused_total = hub_metric(hub, "miss_pending_connections_refused_total", scope="total")
        timed_out = hub_metric(hub, "miss_pending_connections_closed_total", stage="handshake")
        pending_after = hub_metric(hub, "miss_pending_connections")
    finally:
        await hub.stop_async()

    # From the attack's start: the hub's clock for a connection starts at
    # its accept, after that, and this process, busy opening the others,
    # may note a connection open later than the hub accepted it.
    lived = sorted((c.closed or 0) - attack_started for c in conns)
    fast = [t for t in lived if t < TIMEOUT / 2]
    held = [t for t in lived if t >= TIMEOUT / 2]
    print(
        f"\nslowloris: {HALF_OPEN} half-open connections from {ATTACKER} ({TCP_ONLY} TCP only), "
        f"the cap full {cap_full:.2f} s in, {still_open} still open when the clinicians were done\n"
        f"  closed by the hub at once: {len(fast)} (refused at accept, metric scope=address: {refused:.0f}, "
        f"scope=total: {refused_total:.0f})\n"
        f"  pending connections (metric, its own request included) when the cap was full: "
        f"{pending_then:.0f}, after: {pending_after:.0f}\n"
        f"  closed by the hub's {TIMEOUT:.0f} s handshake timeout: {len(held)} (metric stage=handshake: "
        f"{timed_out:.0f}), after "
        f"{held[0] if held else 0:.2f}-{held[-1] if held else 0:.2f} s; the last {last_close:.2f} s "
        f"into the attack\n"
        f"  {CLINICIANS} clinicians beside them, in {talked:.2f} s: {traffic}\n"
        f"  the same quiet, before: {quiet}"
    )
    # Every clinician got in and every message arrived (converse raises otherwise).
    assert len(traffic.connect) == CLINICIANS
    assert len(traffic.message) == CLINICIANS * MESSAGES
    # The cap was full while they did: they got in beside the attack, not after it.
    assert still_open >= per_address * 0.9, still_open
    # Every half-open connection was closed by the hub: past the cap at
    # once (and counted), the rest at the timeout, not much later.
    assert len(lived) == HALF_OPEN
    assert per_address * 0.9 <= len(held) <= per_address, len(held)
    assert refused == len(fast), (refused, len(fast))
    assert refused_total == 0
    assert timed_out == len(held)
    # Each reading of /metrics counts itself, a connection not authenticated.
    assert pending_then == per_address + 1 and pending_after == 1
    assert held[0] >= TIMEOUT, held[0]
    assert held[-1] <= TIMEOUT + 3, held[-1]
