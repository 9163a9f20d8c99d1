"""The Broker interface: wake a device wherever it is connected.

Contract (as centrifuge states it for its brokers): delivery through a
broker is **at most once**. A published payload reaches the subscriber of a
device if one exists at that moment on any node, or nobody. The Store always
holds the durable copy (DESIGN.md, guarantee 1), so a lost wake-up costs
latency, never a message: a device drains the store on every (re)connect.

Channels are named per device (``dev:{device_id}``) so that with Redis
Cluster each one lives on one shard and sharded pub/sub works unchanged.
Payloads are opaque bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["Broker", "Handler", "device_channel"]

#: Called on the event loop with each payload published to a subscribed channel.
Handler = Callable[[bytes], None]


def device_channel(device_id: str) -> str:
    return f"dev:{device_id}"


class Broker(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def subscribe(self, channel: str, handler: Handler) -> None:
        """Route the channel's payloads to ``handler`` on this node. One
        handler per channel per node; subscribing again replaces it."""

    async def unsubscribe(self, channel: str, handler: Handler) -> None:
        """Stop routing, if ``handler`` is still the channel's handler."""

    async def publish(self, channel: str, payload: bytes) -> None:
        """Send ``payload`` to the channel's subscriber on any node (at most once)."""
