"""One device floods while two clinicians talk (docs/ARCHITECTURE.md guarantee 5): the
flooder is throttled, every message of the others arrives, and their latency
is reported beside a run without the flood (``miss-bench run --scenario
flood`` measures the same thing properly; this test never judges a speed)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protocol.frames import Accepted, Deliver, Delivered
from tests.support.hubproc import HubProcess, enrolled_clinician, invite_on_store, verify_on_store
from tests.support.wire import RawDevice

pytestmark = pytest.mark.slow

FLOODER = "tests.support.flooder"  # run as a module from the repository root
REPOSITORY = Path(__file__).parents[2]
RATE = 8  # messages a second, each way: within the default budget of 10/s
SECONDS = 5.0


async def converse(a: RawDevice, b: RawDevice) -> list[float]:
    """A and B write to each other at RATE each for SECONDS; returns every
    message's latency (s), send to delivery. Raises if one is missing."""
    la, lb = await a.lookup(a.user_id), await b.lookup(b.user_id)
    to_b, to_a = await a.lookup(b.user_id), await b.lookup(a.user_id)
    sent: dict[bytes, float] = {}
    latencies: list[float] = []
    count = int(RATE * SECONDS)

    async def write(src: RawDevice, peer: object, own: object) -> None:
        start = time.monotonic()
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i / RATE - time.monotonic()))
            frame = src.message(peer, f"note {i}", own)  # type: ignore[arg-type]
            sent[frame.id] = time.monotonic()
            await src.send_frame(frame)

    async def read(dst: RawDevice) -> None:
        """Until every message to ``dst`` arrived and every one it sent was
        accepted, so that nothing of this conversation is left unread."""
        got = accepted = 0
        while got < count or accepted < count:
            frame = await dst.recv(timeout=30)
            if isinstance(frame, Deliver):
                latencies.append(time.monotonic() - sent[frame.id])
                await dst.ack(frame.seq)
                got += 1
            elif isinstance(frame, Delivered):
                await dst.ack(frame.seq)
            else:
                assert isinstance(frame, Accepted), frame  # never rate_limited
                accepted += 1

    await asyncio.gather(write(a, to_b, la), write(b, to_a, lb), read(a), read(b))
    assert len(latencies) == 2 * count
    return latencies


def p99(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.99) - 1] * 1000


async def test_a_flooder_is_throttled_and_the_others_do_not_notice(tmp_path: Path) -> None:
    # The default per-device budget; the address budget is out of reach
    # because every device of this test shares 127.0.0.1.
    hub = HubProcess(tmp_path, env={"MISS_RATE_DEVICE": "10/s burst 50"})
    hub.start()
    try:
        a = await enrolled_clinician(hub, "Dr A", "10000000001")
        b = await enrolled_clinician(hub, "Dr B", "10000000002")
        victim = await enrolled_clinician(hub, "Dr Victim", "10000000003")
        await victim.close()

        quiet = await converse(a, b)

        _, code = await invite_on_store(hub, "Dr Flood", "10000000004")
        flooder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            FLOODER,
            *(hub.url, code, victim.user_id, "5000", str(SECONDS + 1)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPOSITORY,
        )
        assert flooder.stdin is not None and flooder.stdout is not None
        ids = json.loads(await flooder.stdout.readline())
        await verify_on_store(hub, ids["user"])
        flooder.stdin.write(b"go\n")
        await flooder.stdin.drain()
        await asyncio.sleep(0.3)  # the flood is on
        flooded = await converse(a, b)
        counts = json.loads(await flooder.stdout.readline())
        await asyncio.wait_for(flooder.wait(), 10)

        print(
            f"\nflood: {counts}\n"
            f"A<->B p99 without flood {p99(quiet):.1f} ms, with flood {p99(flooded):.1f} ms "
            f"(x{p99(flooded) / p99(quiet):.2f}); {len(flooded)} of {len(flooded)} messages arrived"
        )
        assert counts["rate_limited"] > 0, "the flooder was never throttled"
        # No more than its budget went through: the burst, then 10/s.
        assert counts["accepted"] <= 50 + 10 * counts["seconds"] + 10
        # The rest waited in the flooder's own socket: the hub read it only
        # as fast as it told it to retry.
        assert counts["accepted"] + counts["rate_limited"] < counts["sent"]
    finally:
        await hub.stop_async()
