"""Guarantee 5 against a real ``miss-server`` process: a device that stops
reading its socket costs the hub little memory, and loses nothing.

(The in-process companion, in test_bad_input.py, checks that bystanders are
served meanwhile and that the device then gets everything in order.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.measure import rss_kib
from protocol.frames import Accepted, Deliver
from tests.support.hubproc import HubProcess, enrolled_pair

pytestmark = pytest.mark.slow

MESSAGES = 400
BODY = "x" * 60_000  # one envelope ≈ 60 KB: 24 MB in all
#: What the hub may grow by while the device does not read (KiB).
MAX_GROWTH_KIB = 10 * 1024


async def test_a_device_that_stops_reading_costs_the_hub_little_memory(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path)
    hub.start()
    try:
        sender, reader = await enrolled_pair(hub)
        to_reader = await sender.lookup(reader.user_id)
        assert hub.proc is not None
        before = peak = rss_kib(hub.proc.pid)
        sent = [sender.message(to_reader, f"{i}:{BODY}") for i in range(MESSAGES)]
        writing = asyncio.gather(*(sender.send_frame(frame) for frame in sent))
        for i in range(MESSAGES):  # the reader reads nothing meanwhile
            assert isinstance(await sender.recv(timeout=30), Accepted)
            if i % 20 == 0:
                peak = max(peak, rss_kib(hub.proc.pid))
        await writing
        await asyncio.sleep(0.5)
        peak = max(peak, rss_kib(hub.proc.pid))
        assert peak - before < MAX_GROWTH_KIB, f"the hub grew by {(peak - before) // 1024} MiB"

        got = [await reader.recv(timeout=30) for _ in range(MESSAGES)]
        delivered = [frame for frame in got if isinstance(frame, Deliver)]
        assert [frame.id for frame in delivered] == [frame.id for frame in sent]  # all, in order, once
    finally:
        await hub.stop_async()
