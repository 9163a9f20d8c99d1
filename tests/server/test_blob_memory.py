"""The hub streams attachments (issue 17): twenty devices upload a 20 MB
blob each at once to a real ``miss-server`` process, and its resident
memory, read from /proc while they do, rises by less than 64 MiB: what it
holds is a few pieces per connection, never a file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import pytest

from miss_server.codes import code_hash, new_code
from miss_server.store.sqlite import SQLiteStore
from tests.support.authority import verify
from tests.support.blob_wire import BlobDevice, begin, end, put_all, upload
from tests.support.hubproc import HubProcess

UPLOADS = 20
SIZE = 20_000_000
LIMIT_MIB = 64


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def clinicians(hub: HubProcess, n: int) -> list[BlobDevice]:
    """``n`` verified clinicians with a device each, connected: invited and
    attested straight in the hub's SQLite file (as ``miss-admin`` would,
    without a process each)."""
    store = SQLiteStore(hub.workdir / "data" / "miss.db")
    await store.open()
    try:
        now = time.time_ns() // 1_000_000
        devices = []
        for i in range(n):
            user = await store.create_user(f"Dr Upload {i}", str(25_000_000_001 + i), "médecin", "CHRU", now)
            code = new_code()
            await store.add_enrollment_code(user.user_id, code_hash(code), now + 3_600_000)
            dev = BlobDevice(hub.url)
            await dev.enroll(code)
            await verify(store, user.user_id)
            devices.append(dev)
        return devices
    finally:
        await store.close()


@pytest.mark.slow
async def test_twenty_concurrent_20_mb_uploads_raise_the_hubs_rss_by_less_than_64_mib(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path)
    await asyncio.to_thread(hub.start)
    try:
        assert hub.proc is not None
        pid = hub.proc.pid
        devices = await clinicians(hub, UPLOADS)
        data = os.urandom(SIZE)  # ciphertext as far as the hub can tell
        await upload(devices[0], data[: 2 * 1024 * 1024])  # warm every path up once
        before = rss_kib(pid)
        peak = before
        stop = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, rss_kib(pid))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.01)

        async def one(dev: BlobDevice) -> int:
            ok = await begin(dev, SIZE)
            assert await put_all(dev, ok.blob, data) == SIZE
            return (await end(dev, ok.blob)).have

        sampler = asyncio.create_task(sample())
        started = time.monotonic()
        haves = await asyncio.gather(*(one(dev) for dev in devices))
        took = time.monotonic() - started
        stop.set()
        await sampler
        peak = max(peak, rss_kib(pid))
        assert haves == [SIZE] * UPLOADS
        rise = (peak - before) / 1024
        total = UPLOADS * SIZE / 1e6
        print(
            f"\nhub RSS {before / 1024:.1f} MiB before, {peak / 1024:.1f} MiB at peak: "
            f"+{rise:.1f} MiB for {UPLOADS} concurrent uploads of {SIZE / 1e6:.0f} MB "
            f"({total:.0f} MB in {took:.1f} s, {total / took:.0f} MB/s)"
        )
        assert rise < LIMIT_MIB
        for dev in devices:
            await dev.close()
    finally:
        await hub.stop_async()
