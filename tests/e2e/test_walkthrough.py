"""The README's five-minute walkthrough, command for command, as a user
types it: ``miss-server``, ``miss-admin invite`` while the hub runs,
``miss-chat enroll``, ``send``, ``inbox``, ``safety``, ``link``."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import pytest
from hubproc import BIN, HubProcess

pytestmark = pytest.mark.slow


def chat(profile: Path, *args: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [str(BIN / "miss-chat"), "--profile", str(profile), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, f"miss-chat {args[0]} failed: {out.stderr}"
    return out.stdout


async def test_readme_walkthrough(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path / "hub")
    hub.start()
    env = {**os.environ, "MISS_PASSPHRASE": "une phrase de passe solide"}
    try:
        _, code_a = hub.invite("Dr Alice Martin", "10000000001")
        _, code_b = hub.invite("Dr Bob Durand", "10000000002")
        alice, bob = tmp_path / "alice", tmp_path / "bob"

        def run() -> tuple[str, str, str, str]:
            chat(alice, "enroll", "--server", hub.url, "--kdf", "interactive", code_a, env=env)
            chat(bob, "enroll", "--server", hub.url, "--kdf", "interactive", code_b, env=env)
            sent = chat(alice, "send", "10000000002", "Bonjour Bob, un avis sur un patient ?", env=env)
            inbox = chat(bob, "inbox", env=env)
            safety_a = chat(alice, "safety", "10000000002", env=env)
            safety_b = chat(bob, "safety", "10000000001", env=env)
            return sent, inbox, safety_a, safety_b

        sent, inbox, safety_a, safety_b = await asyncio.to_thread(run)
        assert "accepted" in sent
        assert "Dr Alice Martin" in inbox and "Bonjour Bob, un avis sur un patient ?" in inbox
        number = re.search(r"(\d{5} ){11}\d{5}", safety_a)
        assert number and number.group(0) in safety_b
        # Bob's inbox is empty the second time: the message was acked.
        again = await asyncio.to_thread(chat, bob, "inbox", env=env)
        assert "Bonjour Bob" not in again
    finally:
        await hub.stop_async()
