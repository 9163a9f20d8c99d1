"""Token buckets in Redis, shared by every hub node of a deployment.

The buckets follow :mod:`miss_server.ratelimit` (the :class:`Limiter`
interface, token-bucket arithmetic); this module keeps them in Redis, so
that every node draws from one shared bucket per address and a client
cannot multiply its allowance by spreading over nodes. When Redis fails,
:class:`RedisLimiter` limits in this process instead: an outage must
neither stop clinicians from talking nor remove the limits.

A node does not ask Redis for every token of a busy shared bucket: it takes
a **lease**, up to a tenth of a second's refill (at most a tenth of the
burst) at once, and spends it locally for at most ``LEASE_SECONDS``. Leased
tokens are taken from the shared bucket when leased, so the nodes together
never spend more than the budget; what a lease leaves unspent when it ends
is lost, which makes the limit slightly stricter, never looser. A bucket
that refills by less than one token a tenth of a second (the failure
buckets, the defaults for a single address) leases exactly what each take
asks: one Redis call per take, as without leases.

:meth:`RedisLimiter.from_url` takes the broker's URL (its ``?prefix=``
names the deployment, as for the broker) and opens a client of its own:
the limiter depends on Redis, not on the broker. Takes go to Redis in
pipelines on one connection of that client's settings
(``broker/resp.py``, :class:`~miss_server.broker.resp.RespPipeline`), so
that the takes of many connections authenticating at once share round
trips, and none pays redis-py's per-command machinery.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from .broker.redis import split_prefix
from .broker.resp import RespPipeline, RespScript
from .ratelimit import MemoryLimiter, Rate, check_cost

__all__ = ["RedisLimiter"]

log = logging.getLogger("miss.ratelimit")

WARN_INTERVAL = 10.0  # seconds between two "Redis is down" warnings
#: How long a node may spend the tokens it leased from a shared bucket (s).
LEASE_SECONDS = 0.1
#: Past this many leases, the ended ones are dropped.
MAX_LEASES = 10_000


# KEYS[1]: hash {tokens, stamp (µs of Redis TIME)}; ARGV: per_second, burst, cost, mode
# ('take', or 'peek' to take nothing), want (>= cost: a take takes up to that many).
# Returns {wait in ms (0 when taken), tokens taken (a decimal string)}. Redis 7
# replicates a script's effects, so reading TIME is allowed; every node thus
# shares Redis's clock.
_TAKE = """
local per_second, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens, stamp = tonumber(bucket[1]), tonumber(bucket[2])
if tokens == nil or stamp == nil then
  tokens = burst
elseif now > stamp then
  tokens = math.min(burst, tokens + (now - stamp) * per_second / 1000000)
end
if tokens < cost then
  return {math.max(1, math.ceil((cost - tokens) * 1000 / per_second)), '0'}
end
if ARGV[4] == 'peek' then
  return {0, '0'}
end
local taken = math.min(tokens, tonumber(ARGV[5]))
tokens = tokens - taken
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'stamp', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / per_second) + 1000)
return {0, string.format('%.17g', taken)}
"""


def _client(url: str) -> aioredis.Redis:
    # The broker's timeouts (broker/redis.py): a take waits as long as the
    # client does before it falls back; one immediate retry, for a stale
    # pooled socket.
    return aioredis.Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=10,
        retry=Retry(NoBackoff(), 1),
    )


def _is_outage(exc: Exception) -> bool:
    """True when Redis cannot answer; False for an error in the script or in the data (a bug)."""
    return type(exc) is not ResponseError or str(exc).startswith("BUSY")


class RedisLimiter:
    """Buckets in Redis, shared by every hub node on the same `prefix`.

    Each call to Redis is one atomic script on ``{prefix}:rl:{{key}}`` (a
    hash tag, so Redis Cluster works); an idle bucket expires once it would
    be full again. Takes are served from this node's lease while it lasts
    (module doc). When Redis fails, the take goes to `fallback` (a new
    MemoryLimiter when None) and a warning is logged at most every 10 s.
    Give `redis` short socket timeouts: a take waits as long as the client
    does before falling back. The client and the fallback belong to the
    caller, who closes them (but see :meth:`from_url`).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        fallback: MemoryLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._prefix = prefix
        self._redis = redis
        self._owns_redis = False
        # Takes ride in pipelines of their own connection (broker/resp.py): an
        # authentication storm takes from hundreds of addresses a second.
        self._pipeline = RespPipeline(redis, "redis-limiter")
        self._script = RespScript(self._pipeline, _TAKE)
        self._fallback = fallback if fallback is not None else MemoryLimiter()
        self._clock = clock
        self._warned_at = -math.inf
        self._leases: dict[str, tuple[float, float]] = {}  # key -> (tokens left, when the lease ends)

    @classmethod
    def from_url(cls, url: str) -> RedisLimiter:
        """A limiter on its own connection pool to the Redis of a broker URL
        (``redis://`` or ``rediss://``, optionally ``?prefix=NAME``), with
        the broker's timeouts; :meth:`close` closes the pool. Connects on
        first use. Raises ValueError for an invalid prefix."""
        base, prefix = split_prefix(url)
        limiter = cls(_client(base), prefix)
        limiter._owns_redis = True
        return limiter

    def _leased(self, key: str, cost: float) -> tuple[float, float] | None:
        """This node's live lease of ``key`` if it holds ``cost`` tokens."""
        lease = self._leases.get(key)
        if lease is None:
            return None
        if lease[1] <= self._clock():
            del self._leases[key]
            return None
        return lease if lease[0] >= cost else None

    async def _call(self, key: str, rate: Rate, cost: float, mode: str) -> int:
        """Take (or peek at) ``cost`` tokens: from the lease, else from Redis,
        which leases up to ``want`` tokens; falls back when Redis is down."""
        check_cost(rate, cost)
        lease = self._leased(key, cost)
        if lease is not None:
            if mode == "take":
                self._leases[key] = (lease[0] - cost, lease[1])
            return 0
        want = max(cost, min(rate.burst / 10, rate.per_second * LEASE_SECONDS))
        try:
            wait, taken = await self._script(
                [f"{self._prefix}:rl:{{{key}}}"], [rate.per_second, rate.burst, cost, mode, want]
            )
        except (RedisError, OSError) as exc:
            if not _is_outage(exc):
                raise
            now = time.monotonic()
            if now - self._warned_at >= WARN_INTERVAL:
                self._warned_at = now
                log.warning(
                    "rate limits kept in this process: Redis failed (%s: %s)", type(exc).__name__, exc
                )
            return (self._fallback.take_now if mode == "take" else self._fallback.peek_now)(key, rate, cost)
        if mode == "take" and not wait:
            left = float(taken) - cost
            if left > 0:
                if len(self._leases) >= MAX_LEASES:
                    self._drop_ended_leases()
                self._leases[key] = (left, self._clock() + LEASE_SECONDS)
        return int(wait)

    def _drop_ended_leases(self) -> None:
        now = self._clock()
        self._leases = {k: lease for k, lease in self._leases.items() if lease[1] > now}
        while len(self._leases) >= MAX_LEASES:  # every lease is live: drop the oldest
            del self._leases[next(iter(self._leases))]

    async def take(self, key: str, rate: Rate, cost: float = 1.0) -> int:
        """See :meth:`Limiter.take`. Raises a script or data error (a bug) rather than hide it."""
        return await self._call(key, rate, cost, "take")

    async def peek(self, key: str, rate: Rate, cost: float = 1.0) -> int:
        """See :meth:`Limiter.peek`."""
        return await self._call(key, rate, cost, "peek")

    async def close(self) -> None:
        """Forget the leases, and close the client if :meth:`from_url` opened
        it; a client given to the constructor, and the fallback, belong to
        the caller."""
        self._leases.clear()
        await self._pipeline.close()
        if self._owns_redis:
            await self._redis.aclose()
