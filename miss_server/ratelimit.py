"""Token-bucket rate limits: the hub's defence against floods and guessing.

Theory of operation
-------------------
A bucket holds at most ``burst`` tokens and refills at ``per_second``; a
request takes ``cost`` tokens or is refused with the delay after which it
would succeed. A refused request takes nothing, so a client that waits the
delay it was told gets through. A bucket is created full on first use, which
is why forgetting a bucket that has refilled changes nothing.

This module holds the interface (:class:`Limiter`), the rates and the
in-process buckets (:class:`MemoryLimiter`). *Device* buckets (messages per
connected device) always live in this process: a device is connected to
one node at a time, so its node sees all of its traffic. *Address* and
*authentication* buckets are shared by every node when Redis is the broker
(``ratelimit_redis.py``; the composition root, ``app.py``, chooses), so
that a client cannot multiply its allowance by spreading over nodes.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Limiter", "MemoryLimiter", "Rate", "check_cost", "parse_rate"]


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


def check_cost(rate: Rate, cost: float) -> None:
    """Raise ValueError unless 0 < cost <= burst, as every :meth:`Limiter.take` must."""
    # A cost above the burst could never be paid: that is the caller's bug, not a refusal.
    if not 0 < cost <= rate.burst:
        raise ValueError(f"a cost must be above 0 and at most the burst ({rate.burst}), not {cost}")


class Limiter(Protocol):
    """Where buckets live (this process, or Redis: ``ratelimit_redis.py``);
    rates are given per call."""

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
        check_cost(rate, cost)
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
        check_cost(rate, cost)
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
