"""The Broker and Presence interfaces: wake a device wherever it is connected,
and know which clinicians are online.

Broker contract (as centrifuge states it for its brokers): delivery through
a broker is **at most once**. A published payload reaches the subscriber of
a channel if one exists at that moment on any node, or nobody. The Store
always holds the durable copy (docs/ARCHITECTURE.md, guarantee 1), so a lost wake-up
costs latency, never a message: a device drains the store on every
(re)connect, and on every *gap* (the broker tells the hub, through
:meth:`Broker.on_gap`, when it may have dropped payloads, e.g. after a lost
connection to Redis).

Channels are named per device (``dev:{device_id}``), per watched user
(``pres:{user_id}``) and one node-wide control channel (``ctl``), so that
with Redis Cluster each lives on one shard and sharded pub/sub
(``SSUBSCRIBE``/``SPUBLISH``) works unchanged. Payloads are opaque bytes.

A device channel has at most one subscriber in the whole deployment: the
hub ends a device's older connection, on any node, when a newer one
attaches, and when a connection ends it publishes a drain request on its
channel for whichever connection may remain. A broker may therefore hand a
``dev:`` payload straight to a local subscriber without the network.

Presence contract: a *connection entry* (user, connection key) lives until
``expires_at``; the hub refreshes its own entries well before that. A user
is online while any of their entries is live. Operations that change
whether a user is online report it, atomically, to exactly one caller, so
that one node publishes each change: ``connect`` (offline → online),
``disconnect`` and ``sweep`` (online → offline), ``refresh`` (an expired or
lost entry came back).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

__all__ = [
    "CONTROL_CHANNEL",
    "DEVICE_PREFIX",
    "Broker",
    "BrokerUnavailable",
    "Handler",
    "LostHandler",
    "Presence",
    "Swept",
    "device_channel",
    "presence_channel",
]

#: Called on the event loop with each payload published to a subscribed channel.
Handler = Callable[[bytes], None]

#: Told of payloads :meth:`Broker.publish_soon` may not have published: their channels, and why.
LostHandler = Callable[[list[str], Exception], None]

#: Node-wide announcements (e.g. "this user's devices changed").
CONTROL_CHANNEL = "ctl"


class BrokerUnavailable(Exception):
    """The broker cannot be reached; the publish was not made."""


DEVICE_PREFIX = "dev:"


def device_channel(device_id: str) -> str:
    return f"{DEVICE_PREFIX}{device_id}"


def presence_channel(user_id: str) -> str:
    return f"pres:{user_id}"


class Broker(Protocol):
    async def start(self) -> None:
        """Connect; raises BrokerUnavailable if the broker cannot be reached."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise BrokerUnavailable unless the broker answers and this node's
        subscriptions are in place (the readiness probe, ``lifecycle.py``)."""

    async def subscribe(self, channel: str, handler: Handler) -> None:
        """Route the channel's payloads to ``handler`` on this node. One
        handler per channel per node; subscribing again replaces it. Never
        fails: while the broker is down the subscription is made on
        reconnection (followed by a gap)."""

    async def unsubscribe(self, channel: str, handler: Handler) -> None:
        """Stop routing, if ``handler`` is still the channel's handler
        (compared with ``==``, so a bound method matches itself)."""

    async def publish(self, channel: str, payload: bytes) -> None:
        """Send ``payload`` to the channel's subscriber on any node (at most
        once). Raises BrokerUnavailable, quickly, while the broker is down."""

    async def publish_many(self, messages: list[tuple[str, bytes]]) -> None:
        """Several :meth:`publish` calls, in order, in as few round trips as possible."""

    def local(self, channel: str) -> bool:
        """Whether a publish on ``channel`` now reaches its subscriber (if
        any) without leaving this process: handed over before the publish
        returns, at no cost of the broker's."""

    def publish_soon(self, messages: list[tuple[str, bytes]], lost: LostHandler) -> None:
        """:meth:`publish_many` without waiting for the broker: a subscriber
        on this node gets its payload before this returns, the others' are
        sent in order after every publish already made; while the broker is
        reachable they have left this process when it returns (a node
        killed next does not lose them: the hub answers ``accepted`` right
        after). Should some not be
        published (the broker down, not answering, or too far behind to
        queue more), ``lost`` is called on the loop, once, with those
        channels and the error. Raises nothing of its own (a local
        subscriber's handler is called as :meth:`publish` calls it)."""

    def on_gap(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the loop) after payloads may have been lost,
        once every subscription is in place again."""


class Swept(NamedTuple):
    """What :meth:`Presence.sweep` deleted. Entries expire only when the
    node that holds them stopped refreshing them (a node killed, or
    stalled for most of a TTL): a connection that ends removes its own."""

    gone: list[str]  # users left with no entry: now offline
    expired: int  # entries deleted


class Presence(Protocol):
    async def connect(self, user_id: str, conn: str, expires_at: int, now: int) -> bool:
        """Add a live entry; True if the user was offline until now."""

    async def connect_capped(
        self, user_id: str, conn: str, expires_at: int, now: int, cap: int | None
    ) -> tuple[bool, int] | None:
        """:meth:`connect`, unless ``cap`` is given and the user already has
        that many live entries of other devices than ``conn``'s (a conn is
        ``DEVICE/...``): then nothing is added and the answer is None. Else
        (whether the user was offline, the connection's generation): the
        count of connections its device has been given, this one included,
        on every node. Check, add and count are atomic."""

    async def generation(self, device_id: str) -> int:
        """The generation of the device's newest connection (0 if none)."""

    async def disconnect(self, user_id: str, conn: str, now: int) -> bool:
        """Remove an entry; True if the user has no live entry left."""

    async def refresh(self, entries: list[tuple[str, str]], expires_at: int, now: int) -> list[str]:
        """Extend (or re-create) these ``(user, conn)`` entries; returns the
        users that were offline before (their entries had expired or were lost)."""

    async def sweep(self, now: int) -> Swept:
        """Delete expired entries; returns how many, and the users left with none."""

    async def online(self, user_ids: list[str], now: int) -> set[str]:
        """Which of these users have a live entry."""
