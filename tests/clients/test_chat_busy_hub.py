"""A one-shot ``miss-chat`` command meets a node draining for a restart.

During a rolling restart a draining node answers new upgrades with HTTP 503
(docs/OPERATIONS.md). A clinician who runs ``miss-chat send`` at that
moment must not have to run it again: the command tries a few more times
with backoff and jitter, and only a hub that keeps refusing is reported.
A small TCP proxy in front of a real hub plays the draining node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from miss_client.cli_common import BUSY_TRIES

from miss_server.app import HubServer
from tests.clients.test_chat_cli import Cli
from tests.support.authority import AUTHORITY_TEXT
from tests.support.client_fixtures import PASSPHRASE
from tests.support.verified_hubs import verify_on
from tests.support.wire import invite

BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 9\r\nConnection: close\r\n\r\ndraining\n"


class DrainingFront:
    """Forwards TCP to ``port``, but answers the next ``refuse`` connections 503."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.refuse = 0
        self.refused = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            self.refuse -= 1
            self.refused += 1
            await reader.readuntil(b"\r\n\r\n")
            writer.write(BUSY)
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("MISS_PASSPHRASE", PASSPHRASE)
    return Cli(tmp_path, capsys)


@pytest.fixture
async def front(hub: HubServer) -> AsyncIterator[DrainingFront]:
    proxy = DrainingFront(hub.port)
    proxy.server = await asyncio.start_server(proxy._handle, "127.0.0.1", 0)
    yield proxy
    proxy.server.close()


async def enroll_through(cli: Cli, hub: HubServer, front: DrainingFront, name: str, rpps: str) -> None:
    """``miss-chat enroll`` with the front as the profile's server, then verified."""
    user, code = await invite(hub, f"Dr {name.title()}", rpps, verified=False)
    rc, _, err = await cli(
        name, "enroll", "--server", front.url, "--authority", AUTHORITY_TEXT, code, "--kdf", "interactive"
    )
    assert rc == 0, err
    await verify_on(hub, user)


async def test_a_one_shot_send_waits_out_a_draining_node(
    cli: Cli, hub: HubServer, front: DrainingFront
) -> None:
    await enroll_through(cli, hub, front, "alice", "10000000001")
    await enroll_through(cli, hub, front, "bob", "10000000002")

    front.refuse = 2
    rc, _, err = await cli("alice", "send", "10000000002", "bonjour pendant le redémarrage")
    assert rc == 0, err
    assert front.refused == 2
    rc, out, err = await cli("bob", "inbox")
    assert rc == 0 and "bonjour pendant le redémarrage" in out, err

    front.refuse = BUSY_TRIES  # a hub that keeps refusing is reported, once, in a line
    rc, _, err = await cli("alice", "send", "10000000002", "encore")
    assert rc == 1
    assert "HTTP 503: restarting or busy" in err and err.count("\n") == 1
    assert front.refused == 2 + BUSY_TRIES
