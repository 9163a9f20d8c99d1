"""The parts of ``miss-bench run --scenario auth-storm`` that need no hub:
``--hub-workers`` only with the services backend, the processes whose CPU
counts as the hub's, and the many source addresses of a storm. The runs
themselves are in test_bench.py (slow)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from websockets.asyncio.server import ServerConnection, serve

from bench.cli import main
from bench.client import open_ws
from bench.scenarios.auth_storm import hub_processes
from protocol.frames import SUBPROTOCOL


def test_hub_workers_need_the_services_backend(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--scenario", "auth-storm", "--hub-workers", "2"])
    assert exc.value.code == 2
    assert "--hub-workers above 1 needs --backend services" in capsys.readouterr().err


def test_hub_processes_are_the_process_and_its_children() -> None:
    children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) for _ in range(2)]
    try:
        found = hub_processes(os.getpid())
        assert found[0] == os.getpid()
        assert {c.pid for c in children} <= set(found[1:])
    finally:
        for c in children:
            c.kill()
            c.wait()
    assert hub_processes(2**22 + 1) == [2**22 + 1]  # no such process: itself alone


async def test_a_storm_device_connects_from_its_source_address() -> None:
    """What the hub's per-address caps see: the address the load generator
    chose for the device, not 127.0.0.1 for all."""
    seen: list[str] = []

    async def handler(ws: ServerConnection) -> None:
        seen.append(ws.remote_address[0])
        await ws.close()

    async with serve(handler, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL]) as server:  # type: ignore[list-item]
        port = server.sockets[0].getsockname()[1]
        for source in ("127.0.1.7", None):
            ws = await open_ws(f"ws://127.0.0.1:{port}/", source)
            await ws.wait_closed()
        await asyncio.sleep(0)
    assert seen == ["127.0.1.7", "127.0.0.1"]
