"""The production Broker and Presence on Redis (``redis.asyncio``).

Theory of operation
-------------------
*Wake-ups* use sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``, Redis 7), so a
Redis Cluster spreads channels over shards with no change here. One
dedicated pub/sub connection per node carries every subscription; one
reader task dispatches each message to its channel's handler. When that
connection breaks, the reader reconnects with backoff, subscribes to every
channel again, waits until Redis has confirmed every subscription, and
only then calls the *gap* callbacks: the hub drains every local device from
the store, which holds whatever was published meanwhile. While the
connection is down, :meth:`RedisBroker.publish` fails fast with
BrokerUnavailable instead of waiting on a dead server. A reader that hears
nothing for ``PING_INTERVAL`` sends a PING, and one that then hears nothing
for as long again counts the connection as lost.

*Publishes* to Redis are pipelined: every publish made in the same turn of
the event loop, or while the previous pipeline is in flight, leaves in the
next pipeline, in call order, and each caller returns once its pipeline has
been answered. One pipeline is in flight at a time, so Redis receives the
publishes in call order. A group commit resolves several senders at once,
and their wake-ups then cost one round trip instead of one each (the
``multi-node`` bench: README, Benchmarks). The presence commands of a
connection's life (:attr:`RedisBroker.pipeline`: the attach script, the
generation read, the detach script) ride in the same pipelines, so that an
authentication storm's hundreds of attaches share their round trips
(docs/PERFORMANCE.md, "Authentication cost"). The reader and the publisher
read and write their own connections through ``resp.py``, which parses
every reply of a chunk at once: redis-py's per-reply machinery was most of
a node's cost per wake-up.

*Presence* lives in two sorted sets per deployment, under the hash tag
``{presence}`` so that a cluster keeps them on one shard: ``exp`` (member
``user|conn``, score = expiry in ms) and one ``u:{user}`` per user (member
``conn``, same score). Small Lua scripts make each transition atomic, so
exactly one node learns that a user went online or offline.

Every key and channel starts with a prefix (``miss`` by default, or
``?prefix=NAME`` in the URL), so deployments and test runs can share a
Redis without meeting. Redis is never the only copy of a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import CONTROL_CHANNEL, DEVICE_PREFIX, BrokerUnavailable, Handler, LostHandler, Swept
from .resp import RespConnection, RespPipeline, RespScript, Value

__all__ = ["RedisBroker", "RedisPresence", "split_prefix"]

log = logging.getLogger("miss.broker.redis")

SUBSCRIBE_CHUNK = 1000
BACKOFF_MAX = 2.0
SOCKET_TIMEOUT = 5.0  # a reply that takes longer: Redis is down
PING_INTERVAL = 10.0  # a silent pub/sub connection is checked this often
#: Payload bytes of wake-ups published without waiting (publish_soon) that
#: Redis has not answered yet, past which more are reported lost at once.
MAX_UNANSWERED_BYTES = 32 * 1024 * 1024
_DOWN = (RedisConnectionError, RedisTimeoutError, OSError, ConnectionError)


def split_prefix(url: str) -> tuple[str, str]:
    """``redis://host/0?prefix=x`` → (``redis://host/0``, ``x``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    prefix = next((v for k, v in query if k == "prefix"), "miss")
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    if not prefix.replace("_", "").replace("-", "").isalnum():
        raise ValueError("the Redis key prefix may hold letters, digits, '-' and '_' only")
    return urlunsplit(parts._replace(query=rest)), prefix


def _client(url: str, retries: int) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=2.0,
        socket_timeout=SOCKET_TIMEOUT,
        health_check_interval=10,
        retry=Retry(NoBackoff(), retries),
    )


class RedisBroker:
    """Wake-ups over Redis sharded pub/sub (see module doc)."""

    def __init__(self, url: str) -> None:
        base, self.prefix = split_prefix(url)
        # Commands get one immediate retry (a stale pooled socket), no more:
        # while Redis is down, publishing must fail fast, not stall senders.
        self._redis = _client(base, retries=1)
        # The pub/sub and publishing connections are ours (resp.py): the
        # reader reconnects itself, with a gap (module doc).
        self._subscriber = _client(base, retries=0)
        self._handlers: dict[str, Handler] = {}
        self._pubsub: RespConnection | None = None  # while subscribed
        self._subscriptions: list[tuple[str, bytes]] = []  # (un)subscriptions for the next write
        self._subscriptions_on: RespConnection | None = None  # ... on this connection
        #: Publishes and presence commands (module doc), opened by the first.
        self._pipeline = RespPipeline(self._redis, "redis-broker-publisher", SOCKET_TIMEOUT)
        self._unanswered = 0  # payload bytes publish_soon queued that Redis has not answered
        self._reader: asyncio.Task[None] | None = None
        self._gap_callbacks: list[Callable[[], None]] = []
        self._connected = asyncio.Event()

    @property
    def redis(self) -> aioredis.Redis:
        """The command connection pool (shared with :class:`RedisPresence`)."""
        return self._redis

    def _key(self, channel: str) -> bytes:
        return f"{self.prefix}:{channel}".encode()

    async def start(self) -> None:
        try:
            # Opens the publisher's connection: the first wake-ups need not wait for it.
            await self._pipeline.call([("PING",)])
        except _DOWN as exc:
            raise BrokerUnavailable(f"Redis does not answer: {exc}") from None
        self._reader = asyncio.create_task(self._read_forever(), name="redis-broker-reader")
        await self._connected.wait()

    async def close(self) -> None:
        await self._pipeline.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._drop_pubsub()
        await self._redis.aclose()
        await self._subscriber.aclose()

    async def ping(self) -> None:
        # Publishes fail while the pub/sub connection is down (wake-ups are
        # lost until the gap), so that counts as unreachable too.
        if not self._connected.is_set():
            raise BrokerUnavailable("Redis pub/sub connection is down")
        try:
            await self._redis.ping()
        except (*_DOWN, RedisError) as exc:
            raise BrokerUnavailable(f"Redis does not answer: {exc}") from None

    async def subscribe(self, channel: str, handler: Handler) -> None:
        new = channel not in self._handlers
        self._handlers[channel] = handler
        if new:
            self._subscription("SSUBSCRIBE", channel)

    async def unsubscribe(self, channel: str, handler: Handler) -> None:
        if self._handlers.get(channel) != handler:
            return
        del self._handlers[channel]
        self._subscription("SUNSUBSCRIBE", channel)

    def _subscription(self, verb: str, channel: str) -> None:
        """Queue a (un)subscription for the pub/sub connection: those of one
        turn of the event loop leave in one write, in call order (an
        authentication storm subscribes hundreds of devices a second)."""
        pubsub = self._pubsub
        if pubsub is None:
            return  # the reader subscribes to every channel when it connects
        if self._subscriptions_on is not pubsub:
            self._subscriptions, self._subscriptions_on = [], pubsub
            asyncio.get_running_loop().call_soon(self._write_subscriptions, pubsub)
        self._subscriptions.append((verb, self._key(channel)))

    def _write_subscriptions(self, pubsub: RespConnection) -> None:
        if self._subscriptions_on is not pubsub:
            return  # a newer connection has the queue
        commands, self._subscriptions, self._subscriptions_on = self._subscriptions, [], None
        if pubsub is not self._pubsub:
            return  # lost meanwhile: the reader subscribes to every channel again
        try:
            pubsub.write(*commands)
        except _DOWN:
            pass  # the reader resubscribes everything when it reconnects

    def local(self, channel: str) -> bool:
        """A device connected to this node (see :meth:`_deliver_locally`)."""
        return channel.startswith(DEVICE_PREFIX) and channel in self._handlers

    def _deliver_locally(self, channel: str, payload: bytes) -> bool:
        """A device channel subscribed on this node has no subscriber on any
        other (see base.py): hand the payload over without the network."""
        if channel.startswith(DEVICE_PREFIX):
            handler = self._handlers.get(channel)
            if handler is not None:
                handler(payload)
                return True
        return False

    async def publish(self, channel: str, payload: bytes) -> None:
        if not self._deliver_locally(channel, payload):
            await self._publish_remote([(channel, payload)])

    async def publish_many(self, messages: list[tuple[str, bytes]]) -> None:
        """Several publishes, in order (local devices need no round trip)."""
        remote = [(c, p) for c, p in messages if not self._deliver_locally(c, p)]
        if remote:
            await self._publish_remote(remote)

    def publish_soon(self, messages: list[tuple[str, bytes]], lost: LostHandler) -> None:
        """Publish in the next pipeline, and return at once (base.py). Past
        :data:`MAX_UNANSWERED_BYTES` of payloads not yet answered, the new
        ones are reported lost instead: senders no longer wait for Redis, so
        while it stalls nothing else bounds what they queue; their devices
        are owed drains, which cost a channel name each."""
        remote = [(c, p) for c, p in messages if not self._deliver_locally(c, p)]
        if not remote:
            return
        channels = [c for c, _ in remote]
        if not self._connected.is_set():
            lost(channels, BrokerUnavailable("Redis connection is down"))
            return
        size = sum(len(p) for _, p in remote)
        if self._unanswered + size > MAX_UNANSWERED_BYTES:
            lost(channels, BrokerUnavailable("too many wake-ups waiting for Redis"))
            return
        self._unanswered += size

        def done(error: RedisError | None) -> None:
            self._unanswered -= size
            if error is not None:
                lost(channels, BrokerUnavailable(str(error)))

        self._pipeline.call_soon([("SPUBLISH", self._key(c), p) for c, p in remote], done)

    async def _publish_remote(self, messages: list[tuple[str, bytes]]) -> None:
        """Publish in the next pipeline and wait until it is answered (see
        module doc); raises BrokerUnavailable, or the first error reply."""
        if not self._connected.is_set():
            raise BrokerUnavailable("Redis connection is down")
        for reply in await self._pipelined([("SPUBLISH", self._key(c), p) for c, p in messages]):
            if isinstance(reply, ResponseError):
                raise reply

    @property
    def pipeline(self) -> RespPipeline:
        """The pipelined connection of the publishes (module doc), which
        :class:`RedisPresence` shares for a connection's attach and detach."""
        return self._pipeline

    async def _pipelined(self, commands: list[tuple[Any, ...]]) -> list[Value]:
        try:
            return await self._pipeline.call(commands)
        except RedisConnectionError as exc:
            raise BrokerUnavailable(str(exc)) from None

    def on_gap(self, callback: Callable[[], None]) -> None:
        self._gap_callbacks.append(callback)

    # --- the reader -----------------------------------------------------------

    async def _connect_pubsub(self) -> RespConnection:
        """Open the pub/sub connection and subscribe to every channel; returns
        once Redis has confirmed each subscription (messages that arrive
        meanwhile are dispatched)."""
        pubsub = RespConnection(self._subscriber)
        self._pubsub = pubsub  # from here, subscribe() writes on it too (_read_forever drops it on failure)
        async with asyncio.timeout(SOCKET_TIMEOUT):
            await pubsub.open()
        # The control channel keeps the connection subscribed even on an idle node.
        channels = [self._key(CONTROL_CHANNEL), *(self._key(c) for c in self._handlers)]
        for i in range(0, len(channels), SUBSCRIBE_CHUNK):
            pubsub.write(("SSUBSCRIBE", *channels[i : i + SUBSCRIBE_CHUNK]))
        # Only these channels' confirmations count: a device subscribing
        # meanwhile (subscribe() writes on this connection too) gets one of
        # its own, which must not stand in for one still unconfirmed.
        unconfirmed = set(channels)
        async with asyncio.timeout(SOCKET_TIMEOUT + len(channels) / 10_000):
            while unconfirmed:
                self._handle(await pubsub.read(), unconfirmed)
        return pubsub

    async def _listen(self, pubsub: RespConnection) -> None:
        """Dispatch what the connection brings until it fails (module doc)."""
        pinged = False
        while True:
            try:
                async with asyncio.timeout(PING_INTERVAL):
                    values = await pubsub.read()
            except TimeoutError:
                if pinged:
                    raise RedisConnectionError("Redis did not answer a PING") from None
                pubsub.write(("PING",))
                pinged = True
                continue
            pinged = False
            self._handle(values)

    def _handle(self, values: list[Any], unconfirmed: set[bytes] | None = None) -> None:
        """Dispatch the messages among ``values``, and remove the channels
        whose subscription they confirm from ``unconfirmed``. An error reply
        ends the connection."""
        for value in values:
            if isinstance(value, ResponseError):
                raise value
            if not isinstance(value, list) or len(value) != 3:
                continue  # a PING's answer
            kind = value[0]
            if kind == b"smessage":
                self._dispatch(value[1], value[2])
            elif kind == b"ssubscribe" and unconfirmed is not None:
                unconfirmed.discard(value[1])

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.close()

    async def _read_forever(self) -> None:
        backoff = 0.05
        lost = False
        while True:
            try:
                pubsub = await self._connect_pubsub()
                self._connected.set()
                backoff = 0.05
                if lost:
                    log.warning("Redis pub/sub reconnected; draining devices from the store")
                    for callback in self._gap_callbacks:
                        callback()
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except (*_DOWN, RedisError) as exc:
                if not lost or self._connected.is_set():
                    log.warning("Redis pub/sub connection lost", extra={"error": type(exc).__name__})
                lost = True
                self._connected.clear()
                await self._drop_pubsub()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        name = channel.decode()[len(self.prefix) + 1 :]
        handler = self._handlers.get(name)
        if handler is not None:
            try:
                handler(data)
            except Exception:
                log.exception("broker handler failed", extra={"channel": name.split(":", 1)[0]})


# --- presence -----------------------------------------------------------------

# KEYS[1] exp, KEYS[2] u:{user}; ARGV: member(user|conn), conn, expires_at, now
_CONNECT = """
local live = redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[4], '+inf')
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('PEXPIREAT', KEYS[2], ARGV[3], 'NX')
redis.call('PEXPIREAT', KEYS[2], ARGV[3], 'GT')
return live == 0 and 1 or 0
"""

# KEYS[1] exp, KEYS[2] u:{user}, KEYS[3] gen (a hash: device -> generation);
# ARGV: as _CONNECT, then cap (-1: none) and the conn's device. Returns
# {-1, 0} when the user has cap live entries of other devices (nothing
# added), else {1 if the user was offline else 0, the new generation}.
_CONNECT_CAPPED = """
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[4], '+inf')
local cap, prefix = tonumber(ARGV[5]), ARGV[6] .. '/'
if cap >= 0 then
  local others = 0
  for _, m in ipairs(live) do
    if string.sub(m, 1, #prefix) ~= prefix then others = others + 1 end
  end
  if others >= cap then return {-1, 0} end
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('PEXPIREAT', KEYS[2], ARGV[3], 'NX')
redis.call('PEXPIREAT', KEYS[2], ARGV[3], 'GT')
return {#live == 0 and 1 or 0, redis.call('HINCRBY', KEYS[3], ARGV[6], 1)}
"""

# KEYS[1] exp, KEYS[2] u:{user}; ARGV: member, conn, now
_DISCONNECT = """
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('ZREM', KEYS[2], ARGV[2]) == 0 then return 0 end
return redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[3], '+inf') == 0 and 1 or 0
"""

# KEYS[1] exp; ARGV: now, limit, user key prefix. Returns the number of
# entries removed, then the users left with none. Keys are derived inside the
# script but share KEYS[1]'s {presence} hash tag, hence its cluster slot.
_SWEEP = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local gone, seen = {#expired}, {}
for _, m in ipairs(expired) do
  redis.call('ZREM', KEYS[1], m)
  local sep = string.find(m, '|', 1, true)
  local user = string.sub(m, 1, sep - 1)
  local ukey = ARGV[3] .. user
  redis.call('ZREM', ukey, string.sub(m, sep + 1))
  if not seen[user] and redis.call('ZCOUNT', ukey, '(' .. ARGV[1], '+inf') == 0 then
    seen[user] = true
    gone[#gone + 1] = user
  end
end
return gone
"""

# KEYS[1] exp; ARGV: expires_at, now, user key prefix, then user, conn pairs
_REFRESH = """
local back = {}
for i = 4, #ARGV, 2 do
  local user, conn = ARGV[i], ARGV[i + 1]
  local ukey = ARGV[3] .. user
  if redis.call('ZCOUNT', ukey, '(' .. ARGV[2], '+inf') == 0 then back[#back + 1] = user end
  redis.call('ZADD', ukey, ARGV[1], conn)
  redis.call('PEXPIREAT', ukey, ARGV[1], 'NX')
  redis.call('PEXPIREAT', ukey, ARGV[1], 'GT')
  redis.call('ZADD', KEYS[1], ARGV[1], user .. '|' .. conn)
end
return back
"""

SWEEP_LIMIT = 1000
REFRESH_CHUNK = 500


class RedisPresence:
    """Connection entries in Redis sorted sets (see module doc). What a
    connection's attach and detach ask (:meth:`connect_capped`,
    :meth:`generation`, :meth:`disconnect`) rides in the broker's pipelines;
    the node's periodic work goes through redis-py."""

    def __init__(self, broker: RedisBroker) -> None:
        self._redis = broker.redis
        tag = f"{broker.prefix}:{{presence}}"
        self._exp = f"{tag}:exp"
        self._user_prefix = f"{tag}:u:"
        self._generations = f"{tag}:gen"
        self._connect = self._redis.register_script(_CONNECT)
        self._pipeline = broker.pipeline
        self._connect_capped = RespScript(self._pipeline, _CONNECT_CAPPED)
        self._disconnect = RespScript(self._pipeline, _DISCONNECT)
        self._sweep = self._redis.register_script(_SWEEP)
        self._refresh = self._redis.register_script(_REFRESH)

    async def _run(self, coro: Any) -> Any:
        try:
            return await coro
        except _DOWN as exc:
            raise BrokerUnavailable(str(exc)) from None

    async def connect(self, user_id: str, conn: str, expires_at: int, now: int) -> bool:
        keys = [self._exp, self._user_prefix + user_id]
        return bool(await self._run(self._connect(keys, [f"{user_id}|{conn}", conn, expires_at, now])))

    async def connect_capped(
        self, user_id: str, conn: str, expires_at: int, now: int, cap: int | None
    ) -> tuple[bool, int] | None:
        keys = [self._exp, self._user_prefix + user_id, self._generations]
        device = conn.split("/", 1)[0]
        limit = -1 if cap is None else cap
        args: list[str | int] = [f"{user_id}|{conn}", conn, expires_at, now, limit, device]
        first, generation = await self._run(self._connect_capped(keys, args))
        return None if int(first) < 0 else (bool(first), int(generation))

    async def generation(self, device_id: str) -> int:
        [reply] = await self._run(self._pipeline.call([("HGET", self._generations, device_id)]))
        if isinstance(reply, ResponseError):
            raise reply
        return int(reply or 0)

    async def disconnect(self, user_id: str, conn: str, now: int) -> bool:
        keys = [self._exp, self._user_prefix + user_id]
        return bool(await self._run(self._disconnect(keys, [f"{user_id}|{conn}", conn, now])))

    async def refresh(self, entries: list[tuple[str, str]], expires_at: int, now: int) -> list[str]:
        back: set[str] = set()
        for i in range(0, len(entries), REFRESH_CHUNK):
            args: list[Any] = [expires_at, now, self._user_prefix]
            for user_id, conn in entries[i : i + REFRESH_CHUNK]:
                args += [user_id, conn]
            back.update(u.decode() for u in await self._run(self._refresh([self._exp], args)))
        return sorted(back)

    async def sweep(self, now: int) -> Swept:
        gone: list[str] = []
        count = 0
        while True:
            removed, *users = await self._run(self._sweep([self._exp], [now, SWEEP_LIMIT, self._user_prefix]))
            gone += [u.decode() for u in users]
            count += removed
            if removed < SWEEP_LIMIT:  # a full batch may hide more expired entries
                return Swept(sorted(set(gone)), count)

    async def online(self, user_ids: list[str], now: int) -> set[str]:
        if not user_ids:
            return set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.zcount(self._user_prefix + user_id, f"({now}", "+inf")
            counts = await self._run(pipe.execute())
        return {u for u, n in zip(user_ids, counts, strict=True) if n}
