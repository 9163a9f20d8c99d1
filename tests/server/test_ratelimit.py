"""Token-bucket limits (miss_server/ratelimit.py, ratelimit_redis.py), run
against the in-process limiter and against the real Redis on this machine.

Each Redis test uses its own key prefix and deletes its keys afterwards; it
fails (never skips) when Redis does not answer. Timed tests use slow rates
(one token every 250 ms or more), so a stalled machine does not flip them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from miss_server.app import build_limiter
from miss_server.config import load_settings
from miss_server.ratelimit import Limiter, MemoryLimiter, Rate, parse_rate
from miss_server.ratelimit_redis import RedisLimiter

REDIS_URL = os.environ.get("MISS_TEST_REDIS", "redis://127.0.0.1:6379/0")


def redis_url(**query: str) -> str:
    """REDIS_URL with these query parameters added (``prefix``, ``client_name``)."""
    return REDIS_URL + ("&" if "?" in REDIS_URL else "?") + urlencode(query)


async def _delete_prefix(client: aioredis.Redis, prefix: str) -> None:
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)


@asynccontextmanager
async def redis_client() -> AsyncIterator[tuple[aioredis.Redis, Callable[[], str]]]:
    """A client, and a maker of fresh prefixes whose keys are deleted afterwards."""
    client = aioredis.Redis.from_url(REDIS_URL)
    prefixes: list[str] = []

    def new_prefix() -> str:
        prefixes.append("miss_test_" + secrets.token_hex(4))
        return prefixes[-1]

    try:
        yield client, new_prefix
    finally:
        for prefix in prefixes:
            await _delete_prefix(client, prefix)
        await client.aclose()


@asynccontextmanager
async def memory() -> AsyncIterator[Limiter]:
    limiter = MemoryLimiter()
    yield limiter
    await limiter.close()


@asynccontextmanager
async def redis_backed() -> AsyncIterator[Limiter]:
    async with redis_client() as (client, new_prefix):
        limiter = RedisLimiter(client, new_prefix())
        yield limiter
        await limiter.close()


BACKENDS: dict[str, Callable[[], Any]] = {"memory": memory, "redis": redis_backed}


@pytest.fixture(params=sorted(BACKENDS))
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    async with BACKENDS[request.param]() as lim:
        yield lim


# --- the contract, on every backend -------------------------------------------------------------


async def test_burst_then_refusal_with_retry_delay(limiter: Limiter) -> None:
    rate = Rate(per_second=2, burst=5)  # a token every 500 ms
    assert [await limiter.take("alice", rate) for _ in range(5)] == [0] * 5
    retry = await limiter.take("alice", rate)
    assert 300 <= retry <= 500


async def test_refills_after_waiting_but_never_past_burst(limiter: Limiter) -> None:
    rate = Rate(per_second=4, burst=2)  # a token every 250 ms
    assert await limiter.take("k", rate) == 0
    assert await limiter.take("k", rate) == 0
    retry = await limiter.take("k", rate)
    assert 150 <= retry <= 250
    await asyncio.sleep(retry / 1000 + 0.03)
    assert await limiter.take("k", rate) == 0
    await asyncio.sleep(1.0)  # 4 tokens' worth of time, but the bucket holds 2
    assert await limiter.take("k", rate) == 0
    assert await limiter.take("k", rate) == 0
    assert await limiter.take("k", rate) > 0


async def test_cost_above_one(limiter: Limiter) -> None:
    rate = Rate(per_second=1, burst=10)
    assert await limiter.take("bulk", rate, cost=4) == 0
    assert await limiter.take("bulk", rate, cost=4) == 0
    retry = await limiter.take("bulk", rate, cost=4)  # 2 left, 2 missing at 1/s
    assert 1700 <= retry <= 2000
    assert await limiter.take("bulk", rate, cost=2) == 0


async def test_a_refused_take_takes_nothing(limiter: Limiter) -> None:
    rate = Rate(per_second=1, burst=3)
    assert await limiter.take("k", rate, cost=2) == 0
    for _ in range(3):
        assert await limiter.take("k", rate, cost=3) > 0
    assert await limiter.take("k", rate, cost=1) == 0  # the token left is still there
    assert await limiter.take("k", rate, cost=1) > 0


async def test_peek_answers_like_take_and_takes_nothing(limiter: Limiter) -> None:
    rate = Rate(per_second=1, burst=2)
    assert await limiter.peek("p", rate) == 0  # a new bucket is full
    assert await limiter.take("p", rate) == 0
    for _ in range(5):
        assert await limiter.peek("p", rate) == 0  # peeking never drains it
    assert await limiter.take("p", rate) == 0
    wait = await limiter.peek("p", rate)
    assert 800 <= wait <= 1000
    assert await limiter.take("p", rate) > 0


async def test_keys_are_independent(limiter: Limiter) -> None:
    rate = Rate(per_second=1, burst=2)
    assert await limiter.take("a", rate) == 0
    assert await limiter.take("a", rate) == 0
    assert await limiter.take("a", rate) > 0
    assert await limiter.take("b", rate) == 0
    assert await limiter.take("b", rate) == 0
    assert await limiter.take("a", rate) > 0


@pytest.mark.parametrize("cost", [0, -1, 2.5])
async def test_a_cost_that_can_never_be_paid_is_an_error(limiter: Limiter, cost: float) -> None:
    with pytest.raises(ValueError, match="cost"):
        await limiter.take("k", Rate(per_second=1, burst=2), cost=cost)


# --- Redis: shared buckets, expiry, outage -----------------------------------------------------


async def test_two_nodes_share_a_bucket() -> None:
    async with redis_client() as (client, new_prefix):
        shared, other = new_prefix(), new_prefix()
        node1, node2 = RedisLimiter(client, shared), RedisLimiter(client, shared)
        rate = Rate(per_second=1, burst=3)
        assert await node1.take("203.0.113.7", rate) == 0
        assert await node2.take("203.0.113.7", rate) == 0
        assert await node1.take("203.0.113.7", rate) == 0
        assert await node2.take("203.0.113.7", rate) > 0
        assert await RedisLimiter(client, other).take("203.0.113.7", rate) == 0  # another deployment


async def test_a_busy_shared_bucket_is_leased_and_the_nodes_never_overspend() -> None:
    """A bucket that refills by several tokens a tenth of a second is leased:
    one Redis call takes a tenth of a second's refill for the node to spend
    locally. The lease leaves the shared bucket at once, so two nodes
    together still spend at most the budget; an ended lease is not spent."""
    async with redis_client() as (client, new_prefix):
        prefix = new_prefix()
        clock = FakeClock()
        node1 = RedisLimiter(client, prefix, clock=clock)
        node2 = RedisLimiter(client, prefix, clock=clock)
        rate = Rate(per_second=50, burst=50)  # leases of 5 tokens
        key = f"{prefix}:rl:{{203.0.113.7}}"
        started = time.monotonic()
        assert await node1.take("203.0.113.7", rate) == 0
        assert float(await client.hget(key, "tokens") or b"nan") == 45.0  # the whole lease left Redis
        granted = 0
        while await node2.take("203.0.113.7", rate) == 0:
            granted += 1
        refilled = 50 * (time.monotonic() - started)
        assert 45 <= granted <= 45 + refilled + 1, "node2 spends what node1 did not lease, no more"

        # Redis empty (and not refilling): node1 still spends its own lease, and only while it lasts.
        await client.hset(key, mapping={"tokens": "0", "stamp": str(time.time_ns() // 1000 + 10**9)})
        assert await node2.take("203.0.113.7", rate) > 0
        for _ in range(3):
            assert await node1.take("203.0.113.7", rate) == 0
        clock.now += 1.0
        assert await node1.take("203.0.113.7", rate) > 0, "an ended lease is not spent"


async def test_redis_bucket_is_a_hash_tagged_key_that_expires_once_full() -> None:
    async with redis_client() as (client, new_prefix):
        prefix = new_prefix()
        await RedisLimiter(client, prefix).take("alice", Rate(per_second=1, burst=5), cost=2)
        key = f"{prefix}:rl:{{alice}}"
        assert await client.type(key) == b"hash"
        assert float(await client.hget(key, "tokens") or b"nan") == 3.0
        assert 2000 < await client.pttl(key) <= 3000  # 2 s to refill, plus 1 s


async def test_a_script_or_data_error_is_raised_not_hidden() -> None:
    async with redis_client() as (client, new_prefix):
        prefix = new_prefix()
        await client.set(f"{prefix}:rl:{{alice}}", b"not a hash")
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await RedisLimiter(client, prefix).take("alice", Rate(per_second=1, burst=5))


async def test_redis_down_falls_back_to_local_limits(caplog: pytest.LogCaptureFixture) -> None:
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5, socket_timeout=0.5)
    fallback = MemoryLimiter()
    limiter = RedisLimiter(dead, "miss_test_down", fallback=fallback)
    rate = Rate(per_second=1, burst=3)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="miss.ratelimit"):
        results = [await limiter.take("203.0.113.7", rate) for _ in range(4)]
    elapsed = time.monotonic() - started
    await dead.aclose()
    assert results[:3] == [0, 0, 0]
    assert 700 <= results[3] <= 1000
    assert fallback.take_now("203.0.113.7", rate) > 0  # the fallback holds the spent bucket
    assert elapsed < 5, f"4 takes with Redis down took {elapsed:.1f} s"
    warnings = [r for r in caplog.records if r.name == "miss.ratelimit" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, "one warning, not one per take"
    assert "ConnectionError" in warnings[0].getMessage()


async def test_redis_down_warns_again_after_ten_seconds(caplog: pytest.LogCaptureFixture) -> None:
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5, socket_timeout=0.5)
    limiter = RedisLimiter(dead, "miss_test_down")
    rate = Rate(per_second=1, burst=10)
    with caplog.at_level(logging.WARNING, logger="miss.ratelimit"):
        await limiter.take("k", rate)
        await limiter.take("k", rate)
        limiter._warned_at -= 10.5  # as if the first warning were 10 s old
        await limiter.take("k", rate)
    await dead.aclose()
    assert len([r for r in caplog.records if r.name == "miss.ratelimit"]) == 2


# --- which limiter a hub uses -----------------------------------------------------------------


async def test_an_embedded_hub_keeps_its_buckets_in_process() -> None:
    limiter = build_limiter(load_settings(broker="memory://"))
    assert isinstance(limiter, MemoryLimiter)
    await limiter.close()


async def test_hubs_on_one_redis_broker_share_buckets_under_its_prefix() -> None:
    """The limiter follows the broker URL: two nodes configured with the same
    Redis and prefix draw from one bucket, kept under that prefix; another
    prefix is another deployment."""
    async with redis_client() as (client, new_prefix):
        shared, other = new_prefix(), new_prefix()
        node1, node2, elsewhere = (
            build_limiter(load_settings(broker=redis_url(prefix=prefix)))
            for prefix in (shared, shared, other)
        )
        rate = Rate(per_second=1, burst=2)
        try:
            assert await node1.take("203.0.113.7", rate) == 0
            assert await node2.take("203.0.113.7", rate) == 0
            assert await node1.take("203.0.113.7", rate) > 0
            assert await elsewhere.take("203.0.113.7", rate) == 0
            assert await client.exists(f"{shared}:rl:{{203.0.113.7}}", f"{other}:rl:{{203.0.113.7}}") == 2
        finally:
            for limiter in (node1, node2, elsewhere):
                await limiter.close()


async def test_a_limiter_from_a_url_closes_its_own_connections() -> None:
    async with redis_client() as (client, new_prefix):
        name = "miss_test_" + secrets.token_hex(4)  # Redis lists the limiter's connections by it
        limiter = RedisLimiter.from_url(redis_url(client_name=name, prefix=new_prefix()))
        await limiter.take("k", Rate(per_second=1, burst=2))
        assert name in await _client_names(client)
        await limiter.close()
        await asyncio.sleep(0.1)
        assert name not in await _client_names(client)


async def _client_names(client: aioredis.Redis) -> set[str]:
    return {str(c.get("name", "")) for c in await client.client_list()}


# --- MemoryLimiter: exact arithmetic and bounded memory ------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_exact_arithmetic() -> None:
    clock = FakeClock()
    lim = MemoryLimiter(clock=clock)
    rate = Rate(per_second=4, burst=2)  # a token every 250 ms
    assert lim.take_now("k", rate) == 0
    assert lim.take_now("k", rate) == 0
    assert lim.take_now("k", rate) == 250
    assert lim.take_now("k", rate, cost=2) == 500
    clock.now += 0.125
    assert lim.take_now("k", rate) == 125
    clock.now += 0.125
    assert lim.take_now("k", rate) == 0
    assert lim.take_now("k", rate) == 250
    clock.now += 0.0625
    assert lim.take_now("k", rate, cost=0.25) == 0
    assert lim.take_now("k", rate, cost=0.25) == 63  # 0.25 missing = 62.5 ms, rounded up
    clock.now += 100
    assert [lim.take_now("k", rate) for _ in range(3)] == [0, 0, 250]


def test_memory_stays_bounded_and_a_dropped_bucket_returns_full() -> None:
    clock = FakeClock()
    lim = MemoryLimiter(max_keys=4, clock=clock)
    rate = Rate(per_second=1, burst=2)
    for i in range(4):
        assert lim.take_now(f"k{i}", rate) == 0  # 1 token left each
    assert lim.take_now("k0", rate) == 0  # k0 is now the most recently used, and empty
    assert lim.take_now("k4", rate) == 0
    assert len(lim) == 4
    assert lim.take_now("k0", rate) == 1000  # kept
    # k1, least recently used, was dropped: it comes back with 2 tokens, not 1.
    assert [lim.take_now("k1", rate) for _ in range(3)] == [0, 0, 1000]
    for i in range(1000):
        lim.take_now(f"flood{i}", rate)
        assert len(lim) <= 4


def test_memory_drops_full_buckets_before_recent_ones() -> None:
    clock = FakeClock()
    lim = MemoryLimiter(max_keys=4, clock=clock)
    slow = Rate(per_second=0.125, burst=1)  # full again after 8 s
    for key in ("b1", "b2", "b3"):
        assert lim.take_now(key, slow) == 0
    assert lim.take_now("quick", Rate(per_second=1, burst=2)) == 0  # used last; full again after 1 s
    clock.now += 2
    assert lim.take_now("new", slow) == 0
    assert len(lim) == 4
    # "quick" went (it was full), not b1, the least recently used, whose bucket is still empty.
    assert [lim.take_now(key, slow) for key in ("b1", "b2", "b3")] == [6000, 6000, 6000]


# --- parse_rate ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20/s", Rate(20, 20)),
        ("600/min", Rate(10, 600)),
        ("30/h", Rate(30 / 3600, 30)),
        ("20/s burst 100", Rate(20, 100)),
        ("1/h burst 1", Rate(1 / 3600, 1)),
        ("5/min burst 2", Rate(5 / 60, 2)),
        (" 20 / s  burst 60 ", Rate(20, 60)),
    ],
)
def test_parse_rate_valid(text: str, expected: Rate) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "20",
        "20/",
        "/s",
        "20/d",
        "20/m",
        "20/sec",
        "0/s",
        "-1/s",
        "1.5/s",
        "1e3/s",
        "20/s burst",
        "20/s burst 0",
        "20/s burst -5",
        "20/s burst 1.5",
        "20/s bursts 5",
        "20/s burst 5 extra",
        "twenty/s",
        "20 per s",
        "٣/s",
    ],
)
def test_parse_rate_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="invalid rate"):
        parse_rate(text)


@pytest.mark.parametrize(
    ("per_second", "burst"), [(0, 1), (-1, 5), (1, 0.5), (float("inf"), 1), (1, float("nan"))]
)
def test_rate_checks_itself(per_second: float, burst: float) -> None:
    with pytest.raises(ValueError):
        Rate(per_second, burst)
