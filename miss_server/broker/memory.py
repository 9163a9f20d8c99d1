"""The embedded Broker and Presence: dicts inside one hub process.

At most once, like every broker (see ``base.py``): a publish to a channel
with no handler on this node is dropped. Handlers run synchronously inside
``publish``; they must not block (the hub's handlers only append to an
outbox). There is no connection to lose, so there is never a gap.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Handler, LostHandler, Swept

__all__ = ["MemoryBroker", "MemoryPresence"]


def _nothing_lost(channels: list[str], error: Exception) -> None:
    """``lost`` of the in-process publishes, which never lose anything."""


class MemoryBroker:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._handlers.clear()

    async def ping(self) -> None:
        return None  # in process: always there

    async def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers[channel] = handler

    async def unsubscribe(self, channel: str, handler: Handler) -> None:
        if self._handlers.get(channel) == handler:
            del self._handlers[channel]

    async def publish(self, channel: str, payload: bytes) -> None:
        self.publish_soon([(channel, payload)], _nothing_lost)

    async def publish_many(self, messages: list[tuple[str, bytes]]) -> None:
        self.publish_soon(messages, _nothing_lost)

    def local(self, channel: str) -> bool:
        return True

    def publish_soon(self, messages: list[tuple[str, bytes]], lost: LostHandler) -> None:
        """Every publish here is made at once, in process: nothing is lost."""
        for channel, payload in messages:
            handler = self._handlers.get(channel)
            if handler is not None:
                handler(payload)

    def on_gap(self, callback: Callable[[], None]) -> None:
        return None  # nothing is ever lost in process


class MemoryPresence:
    """Connection entries in a dict: user → {conn: expires_at}."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, int]] = {}
        self._generations: dict[str, int] = {}

    def _live(self, user_id: str, now: int) -> int:
        return sum(1 for exp in self._entries.get(user_id, {}).values() if exp > now)

    async def connect(self, user_id: str, conn: str, expires_at: int, now: int) -> bool:
        was_offline = self._live(user_id, now) == 0
        self._entries.setdefault(user_id, {})[conn] = expires_at
        return was_offline

    async def connect_capped(
        self, user_id: str, conn: str, expires_at: int, now: int, cap: int | None
    ) -> tuple[bool, int] | None:
        device = conn.split("/", 1)[0]
        live = self._entries.get(user_id, {}).items()
        others = sum(1 for c, exp in live if exp > now and not c.startswith(device + "/"))
        if cap is not None and others >= cap:
            return None
        generation = self._generations[device] = self._generations.get(device, 0) + 1
        return await self.connect(user_id, conn, expires_at, now), generation

    async def generation(self, device_id: str) -> int:
        return self._generations.get(device_id, 0)

    async def disconnect(self, user_id: str, conn: str, now: int) -> bool:
        entries = self._entries.get(user_id, {})
        if entries.pop(conn, None) is None:
            return False
        if not entries:
            self._entries.pop(user_id, None)
        return self._live(user_id, now) == 0

    async def refresh(self, entries: list[tuple[str, str]], expires_at: int, now: int) -> list[str]:
        back = []
        for user_id, conn in entries:
            if self._live(user_id, now) == 0:
                back.append(user_id)
            self._entries.setdefault(user_id, {})[conn] = expires_at
        return sorted(set(back))

    async def sweep(self, now: int) -> Swept:
        gone, count = [], 0
        for user_id in list(self._entries):
            entries = self._entries[user_id]
            expired = [c for c, exp in entries.items() if exp <= now]
            count += len(expired)
            for conn in expired:
                del entries[conn]
            if expired and not entries:
                del self._entries[user_id]
                gone.append(user_id)
        return Swept(gone, count)

    async def online(self, user_ids: list[str], now: int) -> set[str]:
        return {u for u in user_ids if self._live(u, now)}
