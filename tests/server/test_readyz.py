"""GET /readyz and the graceful drain of one node (docs/OPERATIONS.md,
"Graceful shutdown, readiness and rolling restarts").

Readiness is 503 while the node drains and while its store or its broker
cannot be reached, 200 otherwise; /healthz stays 200 while the process
serves. Draining answers the request in hand, tells every client to go
away (1001) a few at a time, and loses nothing the hub accepted.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from miss_client.connection import open_websocket
from miss_client.errors import ConnectionFailed
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from miss_server.store.base import AcceptResult, NewMessage
from protocol.frames import SUBPROTOCOL, Accepted, Deliver
from tests.multinode.test_faults import pg_ctl, postgres_answers
from tests.support.inprocess_hub import HubFactory
from tests.support.pg_hub import postgres_store_url
from tests.support.traffic import wait_until
from tests.support.wire import enrolled

pytestmark = pytest.mark.slow

SLACK = 1.5  # s, on a loaded 2-core machine


async def get(port: int, path: str) -> tuple[int, bytes]:
    """``GET path`` on the hub's port: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = next(
            int(v) for k, _, v in (h.partition(": ") for h in lines[1:]) if k.lower() == "content-length"
        )
        return status, await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()


async def readyz_becomes(port: int, expected: tuple[int, bytes], timeout: float) -> bool:
    """Poll /readyz until it answers ``expected``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await get(port, "/readyz") == expected:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_draining_answers_the_request_in_hand_spreads_the_closes_and_readyz_says_so(
    make_hub: HubFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    spread, grace = 2.0, 15.0
    hub = await make_hub(
        shutdown_spread_seconds=spread, shutdown_grace_seconds=grace, auth_timeout_seconds=60
    )
    await hub.readiness.probe()  # SQLite and the in-process broker answer
    assert await get(hub.port, "/readyz") == (200, b"ready\n")
    assert await get(hub.port, "/healthz") == (200, b"ok\n")

    alice = await enrolled(hub, "Dr Alice Martin", "10000000001")
    bob = await enrolled(hub, "Dr Bob Durand", "10000000002")
    to_bob = await alice.lookup(bob.user_id)
    # Twenty more connections, not authenticated: when does each hear 1001?
    idle = [await connect(hub.url, subprotocols=[SUBPROTOCOL]) for _ in range(20)]  # type: ignore[list-item]
    closed_at: list[float] = []

    async def hear_close(ws: Any) -> None:
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            assert ws.close_code == 1001
            closed_at.append(time.monotonic())

    listeners = [asyncio.create_task(hear_close(ws)) for ws in idle]

    # Alice's send is in hand (the store is slow to commit) when draining begins.
    accept = hub.store.accept
    committing = asyncio.Event()

    async def slow_accept(message: NewMessage) -> AcceptResult:
        committing.set()
        await asyncio.sleep(1.0)
        return await accept(message)

    monkeypatch.setattr(hub.store, "accept", slow_accept)
    send = alice.message(to_bob, "Le patient de la 12 est stable")
    await alice.send_frame(send)
    await asyncio.wait_for(committing.wait(), 5)
    began = time.monotonic()
    shutdown = asyncio.create_task(hub.shutdown())
    await wait_until(lambda: hub.readiness.draining, 5)

    assert await get(hub.port, "/readyz") == (503, b"draining\n")
    assert await get(hub.port, "/healthz") == (200, b"ok\n")
    with pytest.raises(InvalidStatus) as refused:
        await connect(hub.url, subprotocols=[SUBPROTOCOL])  # type: ignore[list-item]
    assert refused.value.response.status_code == 503
    with pytest.raises(ConnectionFailed, match=r"HTTP 503: restarting or busy"):
        await open_websocket(hub.url)  # what an SDK client's reconnection meets: transient

    reply = await alice.recv(timeout=5)
    assert isinstance(reply, Accepted) and reply.id == send.id, reply
    assert (await alice.until_closed(5))[1] == 1001
    assert (await bob.until_closed(5))[1] == 1001
    cut = await asyncio.wait_for(shutdown, grace + SLACK)
    took = time.monotonic() - began
    await asyncio.gather(*listeners)
    span = max(closed_at) - min(closed_at)
    print(f"\ndrained in {took:.2f} s (grace {grace} s), closes spread over {span:.2f} s (window {spread} s)")
    assert cut == 0 and took < grace
    assert len(closed_at) == 20 and spread / 2 <= span <= spread + SLACK

    # The same node back on its port: ready, and Bob gets what was accepted.
    again = await make_hub(port=hub.port)
    assert await get(again.port, "/readyz") == (200, b"ready\n")
    bob.url = again.url
    await bob.auth()
    deliver = await bob.recv(timeout=5)
    assert isinstance(deliver, Deliver) and deliver.id == send.id


async def test_grace_period_cuts_what_does_not_finish(
    make_hub: HubFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    grace = 2.0
    hub = await make_hub(shutdown_spread_seconds=0, shutdown_grace_seconds=grace)
    alice = await enrolled(hub, "Dr Alice Martin", "10000000001")
    bob = await enrolled(hub, "Dr Bob Durand", "10000000002")
    to_bob = await alice.lookup(bob.user_id)
    committing = asyncio.Event()

    async def stuck_accept(message: NewMessage) -> AcceptResult:
        committing.set()
        await asyncio.sleep(60)
        raise AssertionError("never")

    monkeypatch.setattr(hub.store, "accept", stuck_accept)
    await alice.send_frame(alice.message(to_bob, "bloqué"))
    await asyncio.wait_for(committing.wait(), 5)
    began = time.monotonic()
    cut = await asyncio.wait_for(hub.shutdown(), grace + SLACK)
    took = time.monotonic() - began
    print(f"\nstuck request: shut down in {took:.2f} s (grace {grace} s), cut {cut}")
    assert cut == 1 and took <= grace + 0.5
    assert (await bob.until_closed(2))[1] == 1001


@pytest.mark.exclusive  # stops the shared PostgreSQL
async def test_readyz_503_while_postgresql_is_stopped_and_200_after(make_hub: HubFactory) -> None:
    async with postgres_store_url() as url:
        hub = await make_hub(store=url)
        await hub.readiness.probe()
        assert await get(hub.port, "/readyz") == (200, b"ready\n")
        began = time.monotonic()
        await asyncio.to_thread(pg_ctl, "stop")
        try:
            unready = await readyz_becomes(hub.port, (503, b"store unreachable\n"), 10)
            noticed = time.monotonic() - began
            health = await get(hub.port, "/healthz")
        finally:
            await asyncio.to_thread(pg_ctl, "start")
            assert await wait_until(postgres_answers, 30), "PostgreSQL did not come back"
        assert unready, "readyz still 200 with PostgreSQL stopped"
        assert health == (200, b"ok\n"), "liveness does not depend on the store"
        back = time.monotonic()
        assert await readyz_becomes(hub.port, (200, b"ready\n"), 20)
        again = time.monotonic() - back
        print(f"\nPostgreSQL stopped: 503 after {noticed:.2f} s; 200 {again:.2f} s after it answered again")
        metrics = (await get(hub.port, "/metrics"))[1]
        assert b"miss_ready 1.0" in metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def private_redis(port: int, workdir: Path) -> AsyncIterator[Callable[[], None]]:
    """A redis-server of this test's own on ``port`` (the shared one is left
    alone); yields a function that starts it again after a kill."""
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        procs.append(subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, env=os.environ))

    def answers() -> bool:
        out = subprocess.run(
            ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() == "PONG"

    start()
    try:
        assert await wait_until(answers, 10), "private Redis did not start"
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(5)


async def test_readyz_503_while_the_broker_is_down_and_200_after(
    make_hub: HubFactory, tmp_path: Path
) -> None:
    port = free_port()
    async with private_redis(port, tmp_path) as start_redis:
        hub = await make_hub(broker=f"redis://127.0.0.1:{port}/0")
        await hub.readiness.probe()
        assert await get(hub.port, "/readyz") == (200, b"ready\n")
        stop = ["redis-cli", "-p", str(port), "shutdown", "nosave"]
        await asyncio.to_thread(subprocess.run, stop, capture_output=True, timeout=10)
        assert await readyz_becomes(hub.port, (503, b"broker unreachable\n"), 10)
        assert await get(hub.port, "/healthz") == (200, b"ok\n")
        await asyncio.to_thread(start_redis)
        assert await readyz_becomes(hub.port, (200, b"ready\n"), 20)
