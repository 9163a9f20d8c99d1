"""The bare relay on ``websockets``' sans-I/O layer: what the connection
path would cost the hub without the library's asyncio connection.

It relays as :mod:`bench.relay` does (same paths, same transport settings:
``max_size``, no compression, the ``miss.v1`` subprotocol), but each
connection is an :class:`asyncio.Protocol` that feeds
:class:`websockets.server.ServerProtocol` and writes what it returns: no
task per connection, no handshake coroutine, no message assembler, no
future per frame. A frame from one client is forwarded to its peers in the
turn of the event loop that read it.

It answers the question the hub's profile raises (docs/PERFORMANCE.md,
"Authentication cost"): how much of the relay's own cost per connection and
per frame is the asyncio connection layer, that is how much a hub built on
the sans-I/O layer could save. It is a baseline for measuring, not a
server: no keepalive, no flow control (a peer that does not read lets its
buffer grow), no timeouts. The bench runs it with ``--relay sans-io``.

Run as ``python -m bench.relay_sansio [--port 0]``; it prints
``relay serving ws://HOST:PORT/`` once it listens, like :mod:`bench.relay`.
"""

from __future__ import annotations

import asyncio
import sys

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from protocol.frames import SUBPROTOCOL

from .relay import MAX_SIZE, relay_cli, serving, stop_signalled

__all__ = ["LeanRelayConnection", "main", "relay_forever"]

_clients: dict[str, LeanRelayConnection] = {}


class LeanRelayConnection(asyncio.Protocol):
    """One client of the relay: bytes in, events out, bytes written at once."""

    __slots__ = ("me", "protocol", "targets", "transport")

    def __init__(self, max_size: int) -> None:
        self.protocol = ServerProtocol(subprotocols=[Subprotocol(SUBPROTOCOL)], max_size=max_size)
        self.transport: asyncio.Transport | None = None
        self.me = ""
        self.targets: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        events = self.protocol.events_received()
        for event in events:
            if isinstance(event, Request):
                self._open(event)
            elif isinstance(event, Frame) and event.opcode is Opcode.BINARY:
                self._forward(event.data)
        self._flush()

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if _clients.get(self.me) is self:
            del _clients[self.me]

    def _open(self, request: Request) -> None:
        response = self.protocol.accept(request)
        self.protocol.send_response(response)
        if self.protocol.state is State.OPEN:
            self.me, _, peers = request.path.strip("/").partition("/")
            self.targets = [p for p in peers.split(",") if p]
            _clients[self.me] = self

    def _forward(self, data: bytes) -> None:
        for target in self.targets:
            peer = _clients.get(target)
            if peer is not None and peer.protocol.state is State.OPEN:
                peer.protocol.send_binary(data)
                peer._flush()

    def _flush(self) -> None:
        assert self.transport is not None
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                self.transport.write_eof()
        if self.protocol.close_expected() or self.protocol.state is State.CLOSED:
            self.transport.close()


async def relay_forever(host: str, port: int) -> None:
    stop = stop_signalled()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: LeanRelayConnection(MAX_SIZE), host, port)
    serving(server.sockets[0].getsockname())
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    return relay_cli(argv, "python -m bench.relay_sansio", __doc__.splitlines()[0], relay_forever)


if __name__ == "__main__":
    sys.exit(main())
