"""Coverage-guided fuzzing of the hub's frame handling with atheris: each
input is one frame sent to a real in-process hub over a real WebSocket,
and the hub's answer is checked as tests/fuzz/test_hub.py checks it.

A hub on SQLite in a temporary directory runs on an event loop in a thread
of its own, with the tests' authority; a verified clinician's device, the
fuzzer, is connected. The first byte of an input picks where the rest goes
(:data:`MODES`): as a frame of the authenticated fuzzer, or as the first
frame of a fresh connection instead of its ``auth``. After each input: the
answer is the one SPEC §7 names (an admitted request answered or refused
by a request error naming it; a refused frame, a fatal ``error`` and the
close), the hub logged no error (no "connection failed"), and a victim who
receives the fuzzer's sends read every frame the hub sent it. Slower than
atheris_frames.py (each input is a round trip, and the hub's code is
instrumented): some hundreds of inputs a second. Usage::

    python fuzz/atheris_frames.py --seed fuzz/corpus/frames   # the same seeds serve
    python fuzz/atheris_hub.py fuzz/corpus/frames -max_total_time=3600
    python fuzz/atheris_hub.py crash-<sha1>                    # replay one input
    python fuzz/atheris_hub.py --explain crash-<sha1>          # the @example to add
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

with atheris.instrument_imports(include=["protocol", "miss_server"]):
    from miss_server.app import HubServer
    from protocol.frames import MAX_FRAME_BYTES
    from tests.fuzz.strategies import Budget
    from tests.fuzz.test_hub import Arena, Bystanders, HubErrors, Victim, fuzz_one
    from tests.support.inprocess_hub import hub_settings
    from tests.support.wire import enrolled

#: What the first byte of an input selects (its value modulo len(MODES)).
MODES = ("bytes", "fresh")


class HubThread:
    """The hub, its clinicians and the loop they run on."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.directory = tempfile.TemporaryDirectory(prefix="miss-atheris-")
        self.arena: Arena = self.run(self._start())

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> Arena:
        errors = HubErrors()
        logging.getLogger("miss").addHandler(errors)
        hub = HubServer(hub_settings(Path(self.directory.name)))
        await hub.start()
        alice = await enrolled(hub, "Alice Témoin", "10000000101")
        bystanders = Bystanders(alice, await enrolled(hub, "Bruno Témoin", "10000000102"))
        fuzzer = await enrolled(hub, "Fanny Fuzz", "10000000103")
        victim = Victim(await enrolled(hub, "Victor Cible", "10000000104"))
        self.victim_task = asyncio.create_task(victim.run())
        return Arena(hub, fuzzer, bystanders, errors, Budget(float("inf")), victim)


HUB: HubThread | None = None


def test_one_input(raw: bytes) -> None:
    global HUB
    if not raw or len(raw) > MAX_FRAME_BYTES:
        return
    if HUB is None:
        HUB = HubThread()
    arena = HUB.arena
    mode, data = MODES[raw[0] % len(MODES)], raw[1:]
    HUB.run(fuzz_one(arena, mode, data), timeout=30)
    if arena.errors.records:
        raise AssertionError(arena.errors.lines())
    if arena.victim.failure is not None:
        raise AssertionError(f"the victim failed: {arena.victim.failure!r}")


def explain(path: Path) -> str:
    """The hypothesis ``@example`` that replays a crash file in tests/fuzz."""
    raw = path.read_bytes()
    mode, data = MODES[raw[0] % len(MODES)], raw[1:]
    return (
        "tests/fuzz/test_hub.py, test_hub_answers_every_bad_frame_as_the_spec_says:\n"
        f'@example([("{mode}", bytes.fromhex("{data.hex()}"))])'
    )


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[1] == "--explain":
        print(explain(Path(argv[2])))
        return
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
