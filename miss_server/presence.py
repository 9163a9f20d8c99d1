"""Presence: who is online, with which status, pushed to those allowed to see it.

Theory of operation
-------------------
* **Online** comes from the Presence backend (``broker/``): each
  authenticated connection is an entry that this node refreshes every
  ``ttl/3``. Entries expire ``2/3·ttl`` after their last refresh, and every
  node sweeps expired entries every ``ttl/3``, so the devices of a node that
  died show offline within ``ttl``. Entries that expire tell the hub a node
  stopped (:attr:`PresenceService.on_expired`): it may have died with
  wake-ups unpublished, so every node drains its devices.
* **Status** (available, busy, on call, off duty) is a choice the clinician
  makes; it is kept durably in the Store.
* **Watching.** A device sends ``watch`` with the users it wants to follow;
  the hub keeps those the Store says it may see (contacts and colleagues of
  the same organisation). This node subscribes to ``pres:{user}`` once for
  all its local watchers of that user.
* **Changes.** Whoever observes a change (the node where a device connects,
  disconnects or sets a status, or the node whose sweep finds a user gone)
  publishes one event on ``pres:{user}``: msgpack ``[user, status, online]``,
  where ``status`` is None when only the online state changed, so that a
  connecting device costs no read of its status. Only nodes with watchers
  of that user receive it; each knows the user's status from the snapshot
  it gave its watchers and the events since, builds the ``presence``
  frame, and hands it to its local watchers: a change costs work in
  proportion to the watchers, not to the users.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable

import msgpack

from protocol import errors
from protocol.frames import Presence as PresenceFrame
from protocol.frames import encode

from .broker.base import Broker, BrokerUnavailable, Presence, presence_channel
from .delivery import DeviceLink
from .store.base import Store, StoreUnavailable

__all__ = ["PresenceService"]

log = logging.getLogger("miss.presence")


def _now() -> int:
    return time.time_ns() // 1_000_000


class PresenceService:
    """Presence for one hub node (see module doc)."""

    def __init__(self, backend: Presence, broker: Broker, store: Store, ttl_seconds: float) -> None:
        self._backend = backend
        self._broker = broker
        self._store = store
        self.ttl_ms = int(ttl_seconds * 1000)
        #: connection key → (user, link), for every authenticated local connection
        self._local: dict[str, tuple[str, DeviceLink]] = {}
        #: user → local links watching them
        self._watchers: dict[str, set[DeviceLink]] = {}
        #: link → users it watches
        self._watching: dict[DeviceLink, set[str]] = {}
        #: last known status of each user watched here
        self._statuses: dict[str, str] = {}
        #: Called with their count when a sweep deleted expired entries:
        #: their node stopped refreshing them, so it may have died with
        #: wake-ups not yet published (``Waker.on_entries_expired``, waking.py).
        self.on_expired: Callable[[int], Awaitable[None]] | None = None

    @property
    def _entry_ttl_ms(self) -> int:
        return self.ttl_ms * 2 // 3

    # --- connections ----------------------------------------------------------

    async def connected(
        self, user_id: str, link: DeviceLink, cap: int | None = None
    ) -> tuple[str, int, list[tuple[str, bytes]]]:
        """Record a new authenticated connection; returns its key, its
        generation (the count of its device's connections so far, on every
        node; 0 if the backend could not be asked) and the publishes that
        announce it (the user's ``online`` if they were offline), which the
        caller makes, with its own in the same round trip. With ``cap``,
        raises TooManyConnections (and records nothing) if the user already
        has ``cap`` live connections of other devices, on any node: the
        device's own older ones are being replaced, so they do not count.
        Without a backend to ask, the connection is let in."""
        conn = f"{link.device_id}/{secrets.token_hex(4)}"
        now = _now()
        try:
            claimed = await self._backend.connect_capped(user_id, conn, now + self._entry_ttl_ms, now, cap)
        except (BrokerUnavailable, StoreUnavailable) as exc:
            self._local[conn] = (user_id, link)
            log.warning("presence not recorded", extra={"error": str(exc)})  # the next refresh will
            return conn, 0, []
        if claimed is None:
            raise errors.TooManyConnections(f"{cap} connections of other devices")
        first, generation = claimed
        self._local[conn] = (user_id, link)
        return conn, generation, [self.announcement(user_id, online=True)] if first else []

    async def newest(self, device_id: str) -> int:
        """The generation of the device's newest connection, on every node;
        0 if the backend cannot say."""
        try:
            return await self._backend.generation(device_id)
        except BrokerUnavailable:
            return 0

    async def disconnected(self, user_id: str, conn: str, link: DeviceLink) -> None:
        self._local.pop(conn, None)
        await self._set_watch_and_subscribe(link, set())
        try:
            if await self._backend.disconnect(user_id, conn, _now()):
                await self.announce(user_id, online=False)
        except (BrokerUnavailable, StoreUnavailable) as exc:
            log.warning("presence not cleared", extra={"error": str(exc)})  # the entry will expire

    # --- requests -------------------------------------------------------------

    async def set_status(self, user_id: str, status: str) -> None:
        """Raises StoreUnavailable if the status could not be kept."""
        await self._store.set_status(user_id, status)
        try:
            await self.announce(user_id, status=status)
        except BrokerUnavailable as exc:
            log.warning("status change not pushed", extra={"error": str(exc)})

    async def watch(self, viewer: str, link: DeviceLink, users: Iterable[str]) -> list[PresenceFrame]:
        """Replace what ``link`` watches; returns the current presence of the
        users it may see (the others are dropped silently). If the store
        fails while the visibility is read, nothing changed; the snapshot is
        read after subscribing, so that no change falls between the two."""
        wanted = list(dict.fromkeys(users))
        visible = await self._store.visible_users(viewer, wanted) if wanted else set()
        kept = [u for u in wanted if u in visible]
        await self._set_watch_and_subscribe(link, set(kept))
        return await self.current(kept)

    async def current(self, users: list[str]) -> list[PresenceFrame]:
        if not users:
            return []
        statuses = await self._store.statuses(users)
        for user, status in statuses.items():
            if user in self._watchers:
                self._statuses[user] = status
        try:
            online = await self._backend.online(users, _now())
        except BrokerUnavailable:
            online = {u for u, _ in self._local.values() if u in statuses}
        return [PresenceFrame(u, statuses[u], u in online) for u in users if u in statuses]

    # --- changes --------------------------------------------------------------

    async def announce(self, user_id: str, *, online: bool | None = None, status: str | None = None) -> None:
        """Publish a user's presence to every node that has watchers of them
        (``status`` None: unchanged, the watchers' nodes know it)."""
        if online is None:
            online = user_id in await self._backend.online([user_id], _now())
        await self._broker.publish(*self.announcement(user_id, online=online, status=status))

    @staticmethod
    def announcement(user_id: str, *, online: bool, status: str | None = None) -> tuple[str, bytes]:
        """The ``(channel, payload)`` of :meth:`announce`."""
        return presence_channel(user_id), msgpack.packb([user_id, status, online])

    def _on_presence(self, payload: bytes) -> None:
        user, status, online = msgpack.unpackb(payload)
        watchers = self._watchers.get(user)
        if not watchers:
            return
        if status is None:
            status = self._statuses.get(user, "available")
        else:
            self._statuses[user] = status
        frame = encode(PresenceFrame(user, status, bool(online)))
        for link in watchers:
            link.push(frame)

    async def _set_watch_and_subscribe(self, link: DeviceLink, users: set[str]) -> None:
        added, removed = self._set_watch(link, users)
        for user in added:
            await self._broker.subscribe(presence_channel(user), self._on_presence)
        for user in removed:
            await self._broker.unsubscribe(presence_channel(user), self._on_presence)

    def _set_watch(self, link: DeviceLink, users: set[str]) -> tuple[list[str], list[str]]:
        """Update the watch maps; returns users that gained their first local
        watcher and users that lost their last one."""
        before = self._watching.pop(link, set())
        if users:
            self._watching[link] = users
        added, removed = [], []
        for user in users - before:
            watchers = self._watchers.setdefault(user, set())
            if not watchers:
                added.append(user)
            watchers.add(link)
        for user in before - users:
            watchers = self._watchers.get(user, set())
            watchers.discard(link)
            if not watchers:
                self._watchers.pop(user, None)
                self._statuses.pop(user, None)
                removed.append(user)
        return added, removed

    # --- upkeep ---------------------------------------------------------------

    async def refresh_and_sweep(self) -> None:
        """Extend this node's entries, then expire everyone's dead ones."""
        now = _now()
        entries = [(user, conn) for conn, (user, _) in self._local.items()]
        back = await self._backend.refresh(entries, now + self._entry_ttl_ms, now) if entries else []
        swept = await self._backend.sweep(now)
        for user in back:
            await self.announce(user, online=True)
        for user in swept.gone:
            await self.announce(user, online=False)
        if swept.expired and self.on_expired is not None:
            await self.on_expired(swept.expired)

    async def run_forever(self) -> None:
        """Refresh and sweep every ``ttl/3`` (runs as a task)."""
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                await self.refresh_and_sweep()
            except (BrokerUnavailable, StoreUnavailable) as exc:
                log.warning("presence upkeep failed", extra={"error": str(exc)})

    async def resync(self) -> None:
        """After a broker gap: entries may be gone and pushes lost. Re-create
        this node's entries, and send every local watcher the current state."""
        try:
            await self.refresh_and_sweep()
            for user, links in list(self._watchers.items()):
                for frame in await self.current([user]):
                    payload = encode(frame)
                    for link in links:
                        link.push(payload)
        except (BrokerUnavailable, StoreUnavailable) as exc:
            log.warning("presence resync failed", extra={"error": str(exc)})
