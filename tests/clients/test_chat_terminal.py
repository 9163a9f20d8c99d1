"""``miss-chat`` on a terminal: the interactive chat (prompt_toolkit) and the
passphrase asked on the terminal. Each test runs a real
``miss-chat`` process on a pseudo-terminal, types into it and reads what it
draws, escape sequences removed."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from miss_client import Client, Message, Profile, load_profile

from tests.support import verified_hubs
from tests.support.client_fixtures import PASSPHRASE
from tests.support.fakehub import FakeHub

BIN = Path(sys.executable).parent
#: CSI and OSC sequences, charset selection, keypad modes.
ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


def _controlling_terminal() -> None:  # in the child, after setsid
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A ``miss-chat`` process on a 100x24 pseudo-terminal (its controlling
    terminal, so /dev/tty works too)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        self.proc = subprocess.Popen(
            [str(BIN / "miss-chat"), *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**env, "TERM": "xterm"},
            start_new_session=True,
            preexec_fn=_controlling_terminal,
        )
        os.close(slave)
        self.master = master
        self.raw = bytearray()
        os.set_blocking(master, False)
        asyncio.get_running_loop().add_reader(master, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the child is gone
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
        for _ in range(data.count(b"\x1b[6n")):  # where is the cursor? (as a terminal answers)
            os.write(self.master, b"\x1b[1;1R")
        self.raw += data

    @property
    def text(self) -> str:
        """Everything drawn so far, escape sequences removed."""
        return ESCAPES.sub("", self.raw.decode(errors="replace")).replace("\r", "")

    async def expect(self, text: str, within: float = 10.0, after: int = 0) -> int:
        """Wait until ``text`` is drawn (at or after offset ``after`` of
        :attr:`text`); returns the offset just past it."""
        try:
            async with asyncio.timeout(within):
                while (at := self.text.find(text, after)) < 0:
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(f"{text!r} not drawn; the terminal shows:\n{self.text}") from None
        return at + len(text)

    async def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())
        await asyncio.sleep(0.05)

    async def wait(self, within: float = 10.0) -> int:
        async with asyncio.timeout(within):
            while self.proc.poll() is None:
                await asyncio.sleep(0.02)
        return self.proc.returncode

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self.master)


@pytest.fixture
async def terminal() -> AsyncIterator[Callable[..., Terminal]]:
    """``terminal(*args, passphrase=...)``: miss-chat on a pseudo-terminal;
    MISS_PASSPHRASE set unless ``passphrase`` is None."""
    opened: list[Terminal] = []

    def start(*args: str, passphrase: str | None = PASSPHRASE, **env: str) -> Terminal:
        base = {k: v for k, v in os.environ.items() if not k.startswith("MISS_")}
        if passphrase is not None:
            base["MISS_PASSPHRASE"] = passphrase
        term = Terminal(list(args), {**base, **env})
        opened.append(term)
        return term

    yield start
    for term in opened:
        term.close()


@pytest.fixture
def fake_clinician(fakehub: FakeHub, tmp_path: Path) -> Callable[..., Awaitable[Profile]]:
    """``await fake_clinician("bob", "10000000002")``: enrolled on the fake hub."""

    async def make(name: str, rpps: str) -> Profile:
        return await verified_hubs.fake_clinician(fakehub, tmp_path, name, rpps)

    return make


async def test_interactive_chat_has_a_prompt_a_status_bar_and_never_splices_incoming_lines(
    terminal: Callable[..., Terminal], fake_clinician: Callable[..., Awaitable[Profile]]
) -> None:
    alice = await fake_clinician("alice", "10000000001")
    bob = await fake_clinician("bob", "10000000002")
    term = terminal("--profile", str(alice.directory), "chat", "10000000002")
    await term.expect("Dr Bob ▸")
    await term.expect("● connected")

    await term.type("Bonjour, un avis")
    typed = await term.expect("Dr Bob ▸ Bonjour, un avis")
    async with Client.connect(load_profile(bob.directory, PASSPHRASE)) as b:
        await b.send("10000000001", "je vous écoute")
        shown = await term.expect("Dr Bob (10000000002): je vous écoute", after=typed)
        # The incoming line went above the prompt, which was drawn again with
        # what was being typed, intact.
        await term.expect("Dr Bob ▸ Bonjour, un avis", after=shown)
        await term.type(" sur M. X ?\r")
        await term.expect("me → Dr Bob (10000000002): Bonjour, un avis sur M. X ?", after=shown)
        got = [m.body for m in await b.drain(idle=0.3) if isinstance(m, Message)]
    assert got == ["Bonjour, un avis sur M. X ?"]
    await term.expect("✓ delivered to Dr Bob (10000000002), device d_", after=shown)
    await term.type("/quit\r")
    assert await term.wait() == 0


async def test_the_passphrase_is_asked_again_up_to_three_times(
    terminal: Callable[..., Terminal], make_profile: Callable[..., Profile]
) -> None:
    profile = make_profile("alice")
    term = terminal("--profile", str(profile.directory), "whoami", passphrase=None)
    at = await term.expect("Passphrase: ")
    await term.type("not it\r")
    at = await term.expect("wrong passphrase, try again", after=at)
    at = await term.expect("Passphrase: ", after=at)
    await term.type(f"{PASSPHRASE}\r")
    await term.expect(f"user      {profile.user_id}", after=at)
    assert await term.wait() == 0

    term = terminal("--profile", str(profile.directory), "whoami", passphrase=None)
    at = 0
    for _ in range(3):
        at = await term.expect("Passphrase: ", after=at)
        await term.type("not it\r")
    await term.expect("miss-chat: error: wrong passphrase (3 attempts)", after=at)
    assert await term.wait() == 1
    assert term.text.count("Passphrase: ") == 3 and "Traceback" not in term.text


async def test_passphrase_command_on_the_terminal(
    terminal: Callable[..., Terminal], make_profile: Callable[..., Profile]
) -> None:
    profile = make_profile("alice")
    args = ("--profile", str(profile.directory), "passphrase", "--kdf", "interactive")
    term = terminal(*args, passphrase=None)
    for prompt, answer in [
        ("Passphrase: ", PASSPHRASE),
        ("New passphrase: ", "a new long passphrase"),
        ("New passphrase again: ", "a new long passphrase"),
    ]:
        await term.expect(prompt)
        await term.type(f"{answer}\r")
    await term.expect("passphrase changed")
    assert await term.wait() == 0
    assert load_profile(profile.directory, "a new long passphrase").user_id == profile.user_id

    term = terminal(*args, passphrase=None)
    for prompt, answer in [
        ("Passphrase: ", "a new long passphrase"),
        ("New passphrase: ", "one passphrase"),
        ("New passphrase again: ", "another passphrase"),
    ]:
        await term.expect(prompt)
        await term.type(f"{answer}\r")
    await term.expect("miss-chat: error: the two passphrases differ")
    assert await term.wait() == 1
    assert load_profile(profile.directory, "a new long passphrase").user_id == profile.user_id
