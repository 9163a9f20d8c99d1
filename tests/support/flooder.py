"""A misbehaving device in its own process, for the flood test: it enrolls
with the code it is given, prints its ids, waits for a line on stdin, then
sends up to ``count`` messages to ``victim`` as fast as the connection takes
them, without waiting for answers, for at most ``seconds``, and prints what
the hub answered by then (JSON).

    python -m tests.support.flooder URL CODE VICTIM_USER COUNT SECONDS
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from protocol.frames import Accepted, Error
from tests.support.wire import RawDevice


async def main(url: str, code: str, victim: str, count: int, seconds: float) -> None:
    dev = RawDevice(url)
    await dev.enroll(code)
    print(json.dumps({"user": dev.user_id, "device": dev.device_id}), flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # verified by then
    peer = await dev.lookup(victim)
    frames = [dev.message(peer, f"spam {i}") for i in range(count)]
    counts = {"sent": 0, "accepted": 0, "rate_limited": 0, "other": 0}

    async def read() -> None:
        while counts["accepted"] + counts["rate_limited"] + counts["other"] < count:
            reply = await dev.recv(timeout=120)
            if isinstance(reply, Accepted):
                counts["accepted"] += 1
            elif isinstance(reply, Error) and reply.code == "rate_limited":
                counts["rate_limited"] += 1
            else:
                counts["other"] += 1

    async def flood() -> None:
        reader = asyncio.create_task(read())
        try:
            for frame in frames:
                await dev.send_frame(frame)
                counts["sent"] += 1
            await reader
        finally:
            reader.cancel()

    started = time.monotonic()
    try:
        await asyncio.wait_for(flood(), seconds)
    except TimeoutError:
        pass  # the hub kept it waiting: that is the point
    counts["seconds"] = round(time.monotonic() - started, 2)  # type: ignore[assignment]
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))
