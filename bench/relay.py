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

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from miss_server.config import Settings
from protocol.frames import SUBPROTOCOL

__all__ = ["main", "relay_forever"]

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


async def relay_forever(host: str, port: int) -> None:
    # The hub's default frame limit, so that both take the same frames.
    max_size = Settings.model_fields["max_frame_bytes"].default
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(
        _handle,
        host,
        port,
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        max_size=max_size,
        max_queue=16,
        compression=None,
    ) as server:
        bound = server.sockets[0].getsockname()
        print(f"relay serving ws://{bound[0]}:{bound[1]}/", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    asyncio.run(relay_forever(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
