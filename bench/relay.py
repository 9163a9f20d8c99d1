"""The bare relay: the baseline every bench run measures the hub against.

A ``websockets`` server with the hub's transport settings (same library and
version, ``max_size``, ``max_queue``, no compression, the ``miss.v1``
subprotocol) and nothing else: no authentication, no store, no acks. A
client connects to ``/ME`` or ``/ME/PEER[,PEER...]``; every binary message
it sends is forwarded as is to the connections of its peers that are open
at that moment (and dropped for the others).

Run as ``python -m bench.relay [--port 0]``; it prints
``relay serving ws://HOST:PORT/`` once it listens, like ``miss-server``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from miss_server.config import Settings
from protocol.frames import SUBPROTOCOL

__all__ = ["MAX_SIZE", "main", "relay_cli", "relay_forever", "serving", "stop_signalled"]

#: The hub's default frame limit, so that the hub and the relays take the same frames.
MAX_SIZE: int = Settings.model_fields["max_frame_bytes"].default

_clients: dict[str, ServerConnection] = {}


async def _handle(ws: ServerConnection) -> None:
    me, _, peers = ws.request.path.strip("/").partition("/") if ws.request else ("", "", "")
    targets = [p for p in peers.split(",") if p]
    _clients[me] = ws
    try:
        async for message in ws:
            for target in targets:
                peer = _clients.get(target)
                if peer is None:
                    continue
                try:
                    await peer.send(message)
                except ConnectionClosed:
                    pass
    except ConnectionClosed:
        pass
    finally:
        if _clients.get(me) is ws:
            del _clients[me]


def stop_signalled() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (the bench stops its relays so)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def serving(address: tuple[str, int]) -> None:
    """The line the harness waits for, as ``miss-server`` prints it."""
    print(f"relay serving ws://{address[0]}:{address[1]}/", flush=True)


def relay_cli(
    argv: list[str] | None, prog: str, description: str, forever: Callable[[str, int], Awaitable[None]]
) -> int:
    """``--host``/``--port``, then ``forever(host, port)`` until signalled."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    asyncio.run(forever(args.host, args.port))
    return 0


async def relay_forever(host: str, port: int) -> None:
    stop = stop_signalled()
    async with serve(
        _handle,
        host,
        port,
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        max_size=MAX_SIZE,
        max_queue=16,
        compression=None,
    ) as server:
        serving(server.sockets[0].getsockname())
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    return relay_cli(argv, "python -m bench.relay", __doc__.splitlines()[0], relay_forever)


if __name__ == "__main__":
    sys.exit(main())
