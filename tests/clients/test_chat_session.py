"""``miss-chat chat`` keeps going: through a hub restart, a lost node, and
one-shot ``miss-chat`` commands on the same profile.

The chat runs as a real ``miss-chat`` process with its stdin a pipe (the
non-terminal mode), so the test reads what a user would: its stdout and
stderr lines. The other end is driven through the SDK.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from miss_client import KDF_INTERACTIVE, Client, Message, Profile, enroll, load_profile

from tests.support.authority import AUTHORITY_PK
from tests.support.client_fixtures import PASSPHRASE
from tests.support.fakehub import wait_for
from tests.support.hubproc import HubProcess, invite_on_store, verify_on_store

BIN = Path(sys.executable).parent


class ChatProcess:
    """``miss-chat --profile DIR chat RECIPIENT`` with its stdin a pipe."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._collect(proc.stdout, self.out)),
            asyncio.create_task(self._collect(proc.stderr, self.err)),
        ]

    @classmethod
    async def start(cls, profile: Path, recipient: str, *args: str) -> ChatProcess:
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "miss-chat"),
            "--profile",
            str(profile),
            "chat",
            recipient,
            "--linger",
            "0.5",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "MISS_PASSPHRASE": PASSPHRASE},
        )
        return cls(proc)

    @staticmethod
    async def _collect(stream: asyncio.StreamReader, into: list[str]) -> None:
        async for line in stream:
            into.append(line.decode().rstrip("\n"))

    async def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{line}\n".encode())
        await self.proc.stdin.drain()

    async def expect(self, where: list[str], text: str, within: float = 10.0) -> str:
        """The first line of ``where`` (self.out or self.err) containing ``text``."""
        try:
            async with asyncio.timeout(within):
                while True:
                    for line in where:
                        if text in line:
                            return line
                    if self.proc.returncode is not None and all(r.done() for r in self._readers):
                        break
                    await asyncio.sleep(0.02)
        except TimeoutError:
            pass
        raise AssertionError(f"no line with {text!r}; stdout: {self.out}; stderr: {self.err}")

    async def finish(self, within: float = 10.0) -> int:
        """Close stdin (end of input) and wait for the exit status."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        async with asyncio.timeout(within):
            rc = await self.proc.wait()
            await asyncio.gather(*self._readers)
        return rc

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@pytest.fixture
async def chats() -> AsyncIterator[Callable[..., Awaitable[ChatProcess]]]:
    """``await chats(profile_dir, recipient)``: chat processes, killed at the end."""
    started: list[ChatProcess] = []

    async def start(profile: Path, recipient: str, *args: str) -> ChatProcess:
        chat = await ChatProcess.start(profile, recipient, *args)
        started.append(chat)
        return chat

    yield start
    for chat in started:
        chat.kill()
        await chat.proc.wait()


async def miss_chat(profile: Path, *args: str) -> tuple[int, str, str]:
    """A one-shot ``miss-chat`` process; returns (status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "miss-chat"),
        "--profile",
        str(profile),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "MISS_PASSPHRASE": PASSPHRASE},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def bob_reads(bob: Profile) -> list[str]:
    async with Client.connect(load_profile(bob.directory, PASSPHRASE)) as client:
        return [m.body for m in await client.drain(idle=0.3) if isinstance(m, Message)]


async def enroll_on(hub: HubProcess, directory: Path, name: str, rpps: str) -> Profile:
    """A clinician on the hub process, enrolled with the SDK and verified."""
    user, code = await invite_on_store(hub, name, rpps)
    profile = await enroll(
        hub.url, code, directory, PASSPHRASE, "desk", authority=AUTHORITY_PK, kdf=KDF_INTERACTIVE
    )
    await verify_on_store(hub, user)
    return profile


@pytest.mark.slow
async def test_chat_survives_a_hub_restart_and_a_lost_node(
    tmp_path: Path, chats: Callable[..., Awaitable[ChatProcess]]
) -> None:
    hub = HubProcess(tmp_path / "hub")
    await asyncio.to_thread(hub.start)
    try:
        alice = await enroll_on(hub, tmp_path / "alice", "Dr Alice Martin", "10000000011")
        bob = await enroll_on(hub, tmp_path / "bob", "Dr Bob Durand", "10000000012")
        chat = await chats(alice.directory, "10000000012")
        await chat.expect(chat.err, "chatting with Dr Bob Durand (10000000012)")
        await chat.type("avant")
        await chat.expect(chat.out, "me → Dr Bob Durand (10000000012): avant")

        # A restart: the hub closes with 1001; a line typed meanwhile waits.
        await hub.stop_async()
        await chat.expect(chat.err, "connection lost (the hub is restarting); reconnecting")
        await chat.type("pendant")
        await chat.expect(chat.out, "pendant (not connected: sent once connected again)")
        await asyncio.to_thread(hub.start)
        await chat.expect(chat.err, "connected again")
        await chat.expect(chat.out, "me → Dr Bob Durand (10000000012): pendant (sent after reconnecting)")
        assert await bob_reads(bob) == ["avant", "pendant"], "each line once, none lost"

        # A lost node: the process dies without closing anything.
        await asyncio.to_thread(hub.kill)
        await chat.expect(chat.err, "connection lost (the connection dropped); reconnecting")
        await asyncio.to_thread(hub.start)
        await wait_for(lambda: sum("connected again" in line for line in chat.err) == 2, within=10.0)

        async with Client.connect(load_profile(bob.directory, PASSPHRASE)) as b:
            await b.send("10000000011", "après")
            await chat.expect(chat.out, "Dr Bob Durand (10000000012): après")
        await chat.type("encore")
        await chat.expect(chat.out, "me → Dr Bob Durand (10000000012): encore")
        assert await bob_reads(bob) == ["encore"]
        assert await chat.finish() == 0
        assert not [line for line in chat.err if "error" in line], chat.err
    finally:
        hub.stop()


@pytest.mark.slow
async def test_one_shot_commands_and_an_open_chat_share_a_profile(
    clinician: Callable[..., Awaitable[Profile]], chats: Callable[..., Awaitable[ChatProcess]]
) -> None:
    alice = await clinician("alice", "10000000001")
    bob = await clinician("bob", "10000000002")
    chat = await chats(alice.directory, "10000000002")
    await chat.expect(chat.err, "chatting with Dr Bob (10000000002)")
    await chat.type("dans le chat")
    await chat.expect(chat.out, "me → Dr Bob (10000000002): dans le chat")

    rc, out, err = await miss_chat(alice.directory, "send", "10000000002", "hors du chat")
    assert (rc, err) == (0, ""), err
    assert out.endswith(" accepted\n")
    await chat.expect(
        chat.err, "another miss-chat command is using this profile; the chat resumes when it is done"
    )
    await chat.expect(chat.err, "connected again")

    # A one-shot that stays connected for a while is not cut off by the chat
    # coming back: it waits for the one-shot to be done.
    rc, _, err = await miss_chat(alice.directory, "inbox", "--idle", "1.5")
    assert rc == 0 and "error" not in err, err
    await wait_for(lambda: sum("connected again" in line for line in chat.err) == 2, within=10.0)

    # The chat goes on both ways.
    async with Client.connect(load_profile(bob.directory, PASSPHRASE)) as b:
        assert [m.body for m in await b.drain(idle=0.3) if isinstance(m, Message)] == [
            "dans le chat",
            "hors du chat",
        ]
        await b.send("10000000001", "reçu")
        await chat.expect(chat.out, "Dr Bob (10000000002): reçu")
    await chat.type("parfait")
    await chat.expect(chat.out, "me → Dr Bob (10000000002): parfait")
    assert await bob_reads(bob) == ["parfait"]

    # One chat per profile.
    rc, out, err = await miss_chat(alice.directory, "chat", "10000000002")
    assert (rc, out) == (1, "")
    assert err == f"miss-chat: error: another chat is running with this profile ({alice.directory})\n"
    assert await chat.finish() == 0
    assert not [line for line in chat.err if "error" in line], chat.err
