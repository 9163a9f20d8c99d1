"""The embedded Broker: a dict of channel handlers inside one hub process.

At most once, like every broker (see ``base.py``): a publish to a channel
with no handler on this node is dropped. Handlers run synchronously inside
``publish``; they must not block (the hub's handlers only append to an
outbox).
"""

from __future__ import annotations

from .base import Handler

__all__ = ["MemoryBroker"]


class MemoryBroker:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._handlers.clear()

    async def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers[channel] = handler

    async def unsubscribe(self, channel: str, handler: Handler) -> None:
        if self._handlers.get(channel) is handler:
            del self._handlers[channel]

    async def publish(self, channel: str, payload: bytes) -> None:
        handler = self._handlers.get(channel)
        if handler is not None:
            handler(payload)
