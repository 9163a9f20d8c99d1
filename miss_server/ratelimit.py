"""Token-bucket rate limits: the hub's defence against floods and guessing.

Theory of operation
-------------------
A bucket holds at most ``burst`` tokens and refills at ``per_second``; a
request takes ``cost`` tokens or is refused with the delay after which it
would succeed. A refused request takes nothing, so a client that waits the
delay it was told gets through. A bucket is created full on first use, which
is why forgetting a bucket that has refilled changes nothing.

*Device* buckets (messages per connected device) live in this process
(:class:`MemoryLimiter`): a device is connected to one node at a time, so
its node sees all of its traffic. *Address* and *authentication* buckets go
to Redis (:class:`RedisLimiter`) when Redis is the broker, so that every
node draws from one shared bucket and a client cannot multiply its allowance
by spreading over nodes. When Redis fails, :class:`RedisLimiter` limits in
this process instead: an outage must neither stop clinicians from talking
nor remove the limits.

A node does not ask Redis for every token of a busy shared bucket: it takes
a **lease**, up to a tenth of a second's refill (at most a tenth of the
burst) at once, and spends it locally for at most ``LEASE_SECONDS``. Leased
tokens are taken from the shared bucket when leased, so the nodes together
never spend more than the budget; what a lease leaves unspent when it ends
is lost, which makes the limit slightly stricter, never looser. A bucket
that refills by less than one token a tenth of a second (the failure
buckets, the defaults for a single address) leases exactly what each take
asks: one Redis call per take, as without leases.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

__all__ = ["Limiter", "MemoryLimiter", "Rate", "RedisLimiter", "parse_rate"]

log = logging.getLogger("miss.ratelimit")

WARN_INTERVAL = 10.0  # seconds between two "Redis is down" warnings
#: How long a node may spend the tokens it leased from a shared bucket (s).
LEASE_SECONDS = 0.1
#: Past this many leases, the ended ones are dropped.
MAX_LEASES = 10_000


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket: refills `per_second` tokens a second, holds at most `burst`."""

    per_second: float  # > 0
    burst: float  # >= 1

    def __post_init__(self) -> None:
        if not (0 < self.per_second < math.inf and 1 <= self.burst < math.inf):
            raise ValueError(f"a rate needs 0 < per_second and 1 <= burst, both finite, not {self}")


_PERIODS = {"s": 1.0, "min": 60.0, "h": 3600.0}
_RATE_RE = re.compile(r"\s*(\d+)\s*/\s*(s|min|h)(?:\s+burst\s+(\d+))?\s*", re.ASCII)


def parse_rate(text: str) -> Rate:
    """``"20/s"``, ``"600/min"``, ``"30/h"``, optionally followed by ``" burst N"``.

    Without a burst, the bucket holds one period's count. Raises ValueError
    with a message fit for a configuration error.
    """
    match = _RATE_RE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"invalid rate {text!r}: expected COUNT/s, COUNT/min or COUNT/h with whole numbers, "
            "optionally followed by ' burst N' (e.g. '20/s burst 60')"
        )
    count, period = int(match[1]), match[2]
    burst = int(match[3]) if match[3] is not None else max(1, count)
    if count < 1 or burst < 1:
        raise ValueError(f"invalid rate {text!r}: the count and the burst must be at least 1")
    return Rate(count / _PERIODS[period], float(burst))


def _check_cost(rate: Rate, cost: float) -> None:
    # A cost above the burst could never be paid: that is the caller's bug, not a refusal.
    if not 0 < cost <= rate.burst:
        raise ValueError(f"a cost must be above 0 and at most the burst ({rate.burst}), not {cost}")


class Limiter(Protocol):
    """Where buckets live (this process or Redis); rates are given per call."""

    async def take(self, key: str, rate: Rate, cost: float = 1.0) -> int:
        """Take `cost` tokens from bucket `key` (created full on first use).

        Returns 0 if they were taken, else the milliseconds (>= 1) after which
        they would be available; nothing is taken in that case (a refused
        request costs no tokens). Raises ValueError unless 0 < cost <= burst.
        """
        ...

    async def peek(self, key: str, rate: Rate, cost: float = 1.0) -> int:
        """What :meth:`take` would answer, taking nothing (to ask whether a
        bucket that only failures drain is empty)."""
        ...

    async def close(self) -> None: ...


class MemoryLimiter:
    """Buckets in this process, at most `max_keys` of them.

    Past `max_keys`, buckets that would be full again are dropped first, then
    the least recently used ones, until a tenth of the room is free (so the
    sweep's cost is spread over many takes). A dropped bucket comes back full.
    """

    def __init__(self, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._max_keys = max_keys
        self._clock = clock
        # key -> (tokens, when they were counted, when the bucket will be full), oldest use first
        self._buckets: OrderedDict[str, tuple[float, float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take_now(self, key: str, rate: Rate, cost: float = 1.0) -> int:
        """:meth:`take` without awaiting, for hot paths."""
        _check_cost(rate, cost)
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            tokens = rate.burst
        else:
            self._buckets.move_to_end(key)
            tokens = min(rate.burst, bucket[0] + max(0.0, now - bucket[1]) * rate.per_second)
        if tokens < cost:
            return max(1, math.ceil((cost - tokens) * 1000 / rate.per_second))
        tokens -= cost
        self._buckets[key] = (tokens, now, now + (rate.burst - tokens) / rate.per_second)
        if len(self._buckets) > self._max_keys:
            self._trim(now)
        return 0

    async def take(self, key: str, rate: Rate, cost: float = 1.0) -> int:
        """See :meth:`Limiter.take`."""
        return self.take_now(key, rate, cost)

    def peek_now(self, key: str, rate: Rate, cost: float = 1.0) -> int:
        """:meth:`peek` without awaiting."""
        _check_cost(rate, cost)
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0
        tokens = min(rate.burst, bucket[0] + max(0.0, self._clock() - bucket[1]) * rate.per_second)
        return 0 if tokens >= cost else max(1, math.ceil((cost - tokens) * 1000 / rate.per_second))

    async def peek(self, key: str, rate: Rate, cost: float = 1.0) -> int:
        """See :meth:`Limiter.peek`."""
        return self.peek_now(key, rate, cost)

    async def close(self) -> None:
        """Forget every bucket."""
        self._buckets.clear()

    def _trim(self, now: float) -> None:
        for key in [key for key, (_, _, full_at) in self._buckets.items() if full_at <= now]:
            del self._buckets[key]
        keep = self._max_keys - self._max_keys // 10
        while len(self._buckets) > keep:
            self._buckets.popitem(last=False)


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
    caller, who closes them.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        fallback: MemoryLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._prefix = prefix
        self._script = redis.register_script(_TAKE)
        self._fallback = fallback if fallback is not None else MemoryLimiter()
        self._clock = clock
        self._warned_at = -math.inf
        self._leases: dict[str, tuple[float, float]] = {}  # key -> (tokens left, when the lease ends)

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
        _check_cost(rate, cost)
        lease = self._leased(key, cost)
        if lease is not None:
            if mode == "take":
                self._leases[key] = (lease[0] - cost, lease[1])
            return 0
        want = max(cost, min(rate.burst / 10, rate.per_second * LEASE_SECONDS))
        try:
            wait, taken = await self._script(
                keys=[f"{self._prefix}:rl:{{{key}}}"], args=[rate.per_second, rate.burst, cost, mode, want]
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
        """Forget the leases; the client and the fallback belong to the caller."""
        self._leases.clear()
