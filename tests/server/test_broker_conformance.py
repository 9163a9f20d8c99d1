"""The Broker and Presence contracts (miss_server/broker/base.py), run against
the in-process implementation and against the real Redis on this machine.

Each Redis test uses its own key prefix and deletes its keys afterwards; it
fails (never skips) when Redis does not answer.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from miss_server.broker.base import Broker, BrokerUnavailable, Presence, Swept
from miss_server.broker.memory import MemoryBroker, MemoryPresence
from miss_server.broker.redis import RedisBroker, RedisPresence
from tests.support.redis_writes import count_publishes

REDIS_URL = os.environ.get("MISS_TEST_REDIS", "redis://127.0.0.1:6379/0")


@asynccontextmanager
async def memory() -> AsyncIterator[tuple[Broker, Presence]]:
    broker = MemoryBroker()
    await broker.start()
    yield broker, MemoryPresence()
    await broker.close()


@asynccontextmanager
async def redis_backed() -> AsyncIterator[tuple[Broker, Presence]]:
    prefix = "miss_test_" + secrets.token_hex(4)
    broker = RedisBroker(f"{REDIS_URL}?prefix={prefix}")
    await broker.start()
    try:
        yield broker, RedisPresence(broker)
    finally:
        await broker.close()
        cleanup = aioredis.Redis.from_url(REDIS_URL)
        keys = [k async for k in cleanup.scan_iter(match=f"{prefix}:*")]
        if keys:
            await cleanup.delete(*keys)
        await cleanup.aclose()


BACKENDS: dict[str, Callable[[], Any]] = {"memory": memory, "redis": redis_backed}


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Broker, Presence]]:
    async with BACKENDS[request.param]() as pair:
        yield pair


async def received(inbox: list[bytes], n: int, timeout: float = 3.0) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while len(inbox) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return inbox


async def test_publish_reaches_the_subscriber_with_binary_payloads(backend: tuple[Broker, Presence]) -> None:
    broker, _ = backend
    inbox: list[bytes] = []
    await broker.subscribe("pres:a", inbox.append)
    payloads = [bytes(range(256)), b"\x00", b"Q" + (7).to_bytes(8, "big") + b"\xc1\xff"]
    for p in payloads:
        await broker.publish("pres:a", p)
    assert await received(inbox, 3) == payloads


async def test_publish_many_keeps_order_and_routes_by_channel(backend: tuple[Broker, Presence]) -> None:
    broker, _ = backend
    a: list[bytes] = []
    b: list[bytes] = []
    await broker.subscribe("pres:a", a.append)
    await broker.subscribe("pres:b", b.append)
    await broker.publish_many([("pres:a", b"1"), ("pres:b", b"x"), ("pres:a", b"2"), ("pres:nobody", b"-")])
    assert await received(a, 2) == [b"1", b"2"]
    assert await received(b, 1) == [b"x"]


async def test_unsubscribe_and_replace(backend: tuple[Broker, Presence]) -> None:
    broker, _ = backend
    first: list[bytes] = []
    second: list[bytes] = []
    await broker.subscribe("pres:a", first.append)
    await broker.subscribe("pres:a", second.append)  # replaces
    await broker.unsubscribe("pres:a", first.append)  # not the current handler: no effect
    await broker.publish("pres:a", b"1")
    assert await received(second, 1) == [b"1"] and first == []
    await broker.unsubscribe("pres:a", second.append)
    await broker.publish("pres:a", b"2")
    await asyncio.sleep(0.2)
    assert second == [b"1"]


async def test_presence_transitions_are_reported_once(backend: tuple[Broker, Presence]) -> None:
    _, presence = backend
    now = time.time_ns() // 1_000_000
    assert await presence.connect("u1", "d1/a", now + 10_000, now) is True  # offline → online
    assert await presence.connect("u1", "d2/b", now + 10_000, now) is False  # already online
    assert await presence.online(["u1", "u2"], now) == {"u1"}
    assert await presence.disconnect("u1", "d1/a", now) is False  # d2 still there
    assert await presence.disconnect("u1", "d1/a", now) is False  # already gone
    assert await presence.disconnect("u1", "d2/b", now) is True  # online → offline
    assert await presence.online(["u1"], now) == set()


async def test_capped_connections_count_other_devices_and_number_each_device(
    backend: tuple[Broker, Presence],
) -> None:
    """connect_capped (the per-account cap, hub.py): live entries of the
    user's other devices count, the device's own and expired ones do not;
    each connection of a device gets the next generation, refused ones none."""
    _, presence = backend
    now = time.time_ns() // 1_000_000
    assert await presence.connect_capped("u1", "d1/a", now + 10_000, now, 2) == (True, 1)
    assert await presence.connect_capped("u1", "d2/a", now + 10_000, now, 2) == (False, 1)
    assert await presence.connect_capped("u1", "d3/a", now + 10_000, now, 2) is None
    assert await presence.connect_capped("u1", "d1/b", now + 10_000, now, 2) == (
        False,
        2,
    )  # its own: no count
    assert await presence.connect_capped("u1", "d3/b", now + 10_000, now, None) == (False, 1)  # no cap
    assert await presence.generation("d1") == 2 and await presence.generation("d9") == 0
    await presence.connect("u2", "d4/a", now + 1_000, now)
    assert await presence.connect_capped("u2", "d5/a", now + 10_000, now + 2_000, 1) == (
        True,
        1,
    )  # d4 expired
    assert await presence.online(["u1"], now) == {"u1"}


async def test_expired_entries_are_swept_once(backend: tuple[Broker, Presence]) -> None:
    _, presence = backend
    now = time.time_ns() // 1_000_000
    await presence.connect("u1", "d1/a", now + 1_000, now)
    await presence.connect("u2", "d2/a", now + 1_000, now)
    await presence.connect("u2", "d2/b", now + 60_000, now)  # u2 has a live device left
    assert await presence.sweep(now + 500) == Swept([], 0)
    # Two entries expired (u2's first device too), one user gone offline.
    assert await presence.sweep(now + 2_000) == Swept(["u1"], 2)
    assert await presence.sweep(now + 2_000) == Swept([], 0)  # reported once
    assert await presence.online(["u1", "u2"], now + 2_000) == {"u2"}


async def test_refresh_extends_and_recreates(backend: tuple[Broker, Presence]) -> None:
    _, presence = backend
    now = time.time_ns() // 1_000_000
    await presence.connect("u1", "d1/a", now + 1_000, now)
    assert await presence.refresh([("u1", "d1/a")], now + 60_000, now) == []  # still live: no change
    assert await presence.sweep(now + 2_000) == Swept([], 0)
    assert await presence.online(["u1"], now + 2_000) == {"u1"}
    # An entry lost (expired, or a Redis restart) comes back, and says so.
    assert await presence.refresh([("u3", "d3/a")], now + 60_000, now) == ["u3"]


async def test_redis_gap_after_a_lost_connection() -> None:
    """When the pub/sub connection dies, the broker reconnects, subscribes
    again, and only then reports a gap; publishes work again afterwards."""
    async with redis_backed() as (broker, _):
        assert isinstance(broker, RedisBroker)
        inbox: list[bytes] = []
        gaps: list[float] = []
        broker.on_gap(lambda: gaps.append(time.monotonic()))
        await broker.subscribe("pres:a", inbox.append)
        admin = aioredis.Redis.from_url(REDIS_URL)
        try:
            # Kill every pub/sub connection of this broker (they are the ones subscribed).
            clients = await admin.client_list(_type="pubsub")
            assert clients, "the broker holds a pub/sub connection"
            for c in clients:
                await admin.client_kill_filter(_id=c["id"])
            deadline = time.monotonic() + 10
            while not gaps and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert gaps, "a gap was reported after reconnecting"
            await broker.publish("pres:a", b"after")
            assert await received(inbox, 1) == [b"after"]
        finally:
            await admin.aclose()


async def test_redis_unreachable_fails_fast_and_clearly() -> None:
    broker = RedisBroker("redis://127.0.0.1:1/0")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        await broker.start()
    assert time.monotonic() - started < 5
    await broker.close()


@asynccontextmanager
async def two_redis_nodes() -> AsyncIterator[tuple[RedisBroker, RedisBroker, list[bytes]]]:
    """Two brokers on one prefix (two hub nodes), and the inbox of device
    channel ``dev:d1``, subscribed on the first."""
    async with redis_backed() as (node_a, _):
        assert isinstance(node_a, RedisBroker)
        node_b = RedisBroker(f"{REDIS_URL}?prefix={node_a.prefix}")
        await node_b.start()
        try:
            inbox: list[bytes] = []
            await node_a.subscribe("dev:d1", inbox.append)
            await asyncio.sleep(0.1)
            yield node_a, node_b, inbox
        finally:
            await node_b.close()


async def test_redis_device_wakeups_cross_nodes_and_stay_local_on_one() -> None:
    """Two brokers on one prefix are two hub nodes: a device channel
    subscribed on node A gets node B's publish through Redis, and node A's
    own publish without it."""
    async with two_redis_nodes() as (node_a, node_b, inbox):
        await node_b.publish("dev:d1", b"from b")
        assert await received(inbox, 1) == [b"from b"]
        await node_a.publish("dev:d1", b"from a")
        assert inbox == [b"from b", b"from a"]  # delivered synchronously, no round trip


async def test_redis_publishes_made_at_once_share_one_round_trip_in_call_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wake-ups of senders resolved by one group commit leave in one
    pipeline (one round trip to Redis, not one each), in the order they
    were made, and each publisher returns once Redis has them."""
    async with two_redis_nodes() as (_, node_b, inbox):
        pipelines = count_publishes(monkeypatch)  # the SPUBLISH commands of each write to Redis
        payloads = [str(i).encode() for i in range(100)]
        await asyncio.gather(*(node_b.publish("dev:d1", p) for p in payloads))
        assert pipelines == [100]
        assert await received(inbox, 100) == payloads
        await node_b.publish_many([("dev:d1", b"a"), ("dev:d1", b"b")])
        assert pipelines == [100, 2]
        assert await received(inbox, 102) == [*payloads, b"a", b"b"]


async def test_publish_soon_delivers_in_order_without_waiting(backend: tuple[Broker, Presence]) -> None:
    """``publish_soon`` returns at once; its payloads reach the subscriber
    in order, after those of publishes made before it; nothing is lost."""
    broker, _ = backend
    inbox: list[bytes] = []
    await broker.subscribe("pres:a", inbox.append)
    lost: list[tuple[list[str], Exception]] = []
    first = asyncio.ensure_future(broker.publish("pres:a", b"1"))
    await asyncio.sleep(0)  # the publish is made (Redis: queued in the pipeline), not yet answered
    messages = [("pres:a", b"2"), ("pres:nobody", b"-"), ("pres:a", b"3")]
    broker.publish_soon(messages, lambda c, e: lost.append((c, e)))
    await first
    assert await received(inbox, 3) == [b"1", b"2", b"3"]
    assert lost == []


async def test_redis_publish_soon_to_a_local_device_is_delivered_before_it_returns() -> None:
    async with two_redis_nodes() as (node_a, _, inbox):
        node_a.publish_soon([("dev:d1", b"here")], lambda c, e: pytest.fail("nothing to lose"))
        assert inbox == [b"here"]


async def test_redis_publish_soon_reports_what_a_lost_connection_may_have_lost() -> None:
    """Wake-ups Redis has not answered (written behind a pop that blocks)
    when the publisher's connection is killed are reported lost, with their channels,
    exactly once; the next publishes go through on a new connection."""
    async with two_redis_nodes() as (_, node_b, inbox):
        lost: list[tuple[list[str], Exception]] = []
        [conn_id] = await node_b.pipeline.call([("CLIENT", "ID")])
        admin = aioredis.Redis.from_url(REDIS_URL)
        try:
            # A pop that blocks in Redis, then the two wake-ups behind it.
            popped: list[Exception | None] = []
            node_b.pipeline.call_soon([("BLPOP", f"{node_b.prefix}:none", "5")], popped.append)
            await asyncio.sleep(0.05)
            node_b.publish_soon([("dev:d1", b"w1"), ("dev:d2", b"w2")], lambda c, e: lost.append((c, e)))
            await asyncio.sleep(0.1)
            assert lost == [] and popped == []
            await admin.client_kill_filter(_id=conn_id)
            deadline = time.monotonic() + 2
            while not popped and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        finally:
            await admin.aclose()
        assert [type(e) for e in popped] == [RedisConnectionError]
        assert [c for c, _ in lost] == [["dev:d1", "dev:d2"]]
        assert isinstance(lost[0][1], BrokerUnavailable)
        await node_b.publish("dev:d1", b"after")
        assert await received(inbox, 1) == [b"after"]  # Redis never ran the wake-ups
        assert len(lost) == 1


async def test_redis_publish_soon_while_redis_is_down_reports_at_once() -> None:
    async with redis_backed() as (broker, _):
        assert isinstance(broker, RedisBroker)
        lost: list[tuple[list[str], Exception]] = []
        broker._connected.clear()  # as while the reader reconnects
        try:
            broker.publish_soon([("dev:x", b"w")], lambda c, e: lost.append((c, e)))
        finally:
            broker._connected.set()
        assert [c for c, _ in lost] == [["dev:x"]]
        assert isinstance(lost[0][1], BrokerUnavailable)


async def test_redis_publish_soon_past_its_byte_cap_reports_loss_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While Redis holds the publisher, wake-ups past the cap of bytes not
    yet answered are reported lost at once (their devices get drains)
    rather than queued without bound; those within it are delivered, and
    once Redis answers the cap is free again."""
    monkeypatch.setattr("miss_server.broker.redis.MAX_UNANSWERED_BYTES", 1000)
    async with two_redis_nodes() as (_, node_b, inbox):
        lost: list[list[str]] = []
        node_b.pipeline.call_soon([("BLPOP", f"{node_b.prefix}:none", "0.5")], lambda e: None)
        await asyncio.sleep(0.05)
        node_b.publish_soon([("dev:d1", b"a" * 600)], lambda c, e: lost.append(c))
        node_b.publish_soon([("dev:d1", b"b" * 600)], lambda c, e: lost.append(c))  # past 1,000
        assert lost == [["dev:d1"]]
        assert await received(inbox, 1) == [b"a" * 600]
        await asyncio.sleep(0.1)
        node_b.publish_soon([("dev:d1", b"c" * 600)], lambda c, e: lost.append(c))
        assert await received(inbox, 2) == [b"a" * 600, b"c" * 600]
        assert lost == [["dev:d1"]]
