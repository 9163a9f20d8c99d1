"""The authentication path made cheaper (docs/PERFORMANCE.md, "Authentication
cost"): one store read for the device and its user, the account's
attestation checked at first use, and the Redis commands of an attach (and
the shared rate limits) pipelined on connections of their own, against real
stores, a real Redis and real WebSocket connections."""

from __future__ import annotations

import asyncio
import os
import time

import redis.asyncio as aioredis

from miss_server.broker.redis import RedisBroker, RedisPresence
from miss_server.ratelimit import Rate
from miss_server.ratelimit_redis import RedisLimiter
from miss_server.store.base import Store
from protocol.frames import Lookup, LookupOk
from tests.support.inprocess_hub import HubFactory
from tests.support.wire import RawDevice, enrolled, invite

REDIS = os.environ.get("MISS_TEST_REDIS", "redis://127.0.0.1:6379/0")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- the store: device and user in one read ------------------------------------------------


async def test_the_device_and_its_user_come_in_one_read(store: Store) -> None:
    now = now_ms()
    user = await store.create_user("Dr Alice", "10000000001", "médecin", "CHRU", now)
    await store.add_enrollment_code(user.user_id, b"c" * 32, now + 60_000)
    device = await store.enroll_device(b"c" * 32, b"s" * 32, b"b" * 32, "phone", now, 5)

    assert await store.get_device_user(device.device_id) == (device, user)
    assert await store.get_device_user("d_nobody") == (None, None)

    # Fresh, whatever the store held before: a suspension and a revocation show at once.
    await store.set_suspended(user.user_id, True)
    await store.revoke_device(device.device_id, now + 1)
    read_device, read_user = await store.get_device_user(device.device_id)
    assert read_device == await store.get_device(device.device_id)
    assert read_device is not None and read_device.revoked
    assert read_user == await store.get_user(user.user_id)
    assert read_user is not None and read_user.suspended


# --- the hub: what an authentication refuses -------------------------------------------------


async def test_a_suspension_this_node_has_not_heard_of_refuses_the_next_authentication(
    make_hub: HubFactory,
) -> None:
    """The node's account cache says Alice is in good standing (it served
    her a request), but an administrator suspended her elsewhere and no
    announcement reached this node yet: her next authentication reads her
    account afresh and is refused."""
    hub = await make_hub()
    alice = await enrolled(hub, "Dr Alice", "10000000001")
    assert isinstance(await alice.ask(Lookup(rid=1, user=alice.user_id)), LookupOk)  # account cached
    await alice.close()
    await hub.store.set_suspended(alice.user_id, True)  # no broker, no audit event: the node cannot know

    error, close_code = await alice.auth_refused()
    assert error is not None and error.code == "account_suspended"
    assert close_code is not None


async def test_an_unverified_account_authenticates_and_may_not_request_until_verified(
    make_hub: HubFactory,
) -> None:
    """Authentication does not check the attestation (it is checked at the
    first request): an unverified clinician's device gets in, and its first
    request is refused not_verified, as before."""
    hub = await make_hub()
    _, code = await invite(hub, "Dr Bob", "10000000002", verified=False)
    bob = RawDevice(hub.url)
    await bob.enroll(code)
    await bob.close()
    await bob.auth()
    reply = await bob.ask(Lookup(rid=2, user=bob.user_id))
    assert getattr(reply, "code", None) == "not_verified"


# --- Redis: pipelined commands ---------------------------------------------------------------


async def test_a_storm_of_attaches_shares_round_trips_and_each_gets_its_own_answer(
    redis_prefix: str,
) -> None:
    """Hundreds of connections attach at once (the attach script, the
    generation read): each caller gets the answer to its own command, and
    the counts are those of one connection after another."""
    broker = RedisBroker(f"{REDIS}?prefix={redis_prefix}")
    await broker.start()
    presence = RedisPresence(broker)
    try:
        now = now_ms()
        n = 300
        claims = await asyncio.gather(
            *(presence.connect_capped(f"u{i % 100}", f"d{i}/a", now + 60_000, now, 5) for i in range(n))
        )
        assert sum(1 for c in claims if c is not None and c[0]) == 100  # each user went online once
        assert all(c is not None and c[1] == 1 for c in claims)
        again = await asyncio.gather(
            *(presence.connect_capped("u0", "d0/b", now + 60_000, now, 5) for _ in range(5))
        )
        assert sorted(c[1] for c in again if c is not None) == [2, 3, 4, 5, 6]
        assert await asyncio.gather(*(presence.generation(f"d{i}") for i in (0, 1, 299))) == [6, 1, 1]
        assert await presence.online([f"u{i}" for i in range(100)], now) == {f"u{i}" for i in range(100)}
        gone = await asyncio.gather(*(presence.disconnect(f"u{i % 100}", f"d{i}/a", now) for i in range(n)))
        assert sum(gone) == 99  # u0 keeps the d0/b entry
    finally:
        await broker.close()


async def test_scripts_flushed_from_redis_run_again_from_their_text(redis_prefix: str) -> None:
    """Redis forgets its scripts (SCRIPT FLUSH, a failover to a replica
    that never ran them): the pipelined attach and rate-limit scripts are
    sent again whole, and nothing fails."""
    broker = RedisBroker(f"{REDIS}?prefix={redis_prefix}")
    await broker.start()
    presence = RedisPresence(broker)
    client = aioredis.Redis.from_url(REDIS)
    limiter = RedisLimiter(client, redis_prefix)
    try:
        now = now_ms()
        assert await presence.connect_capped("u1", "d1/a", now + 60_000, now, 3) == (True, 1)
        assert await limiter.take("203.0.113.9", Rate(per_second=1, burst=2)) == 0
        await client.script_flush()
        assert await presence.connect_capped("u1", "d1/b", now + 60_000, now, 3) == (False, 2)
        assert await limiter.take("203.0.113.9", Rate(per_second=1, burst=2)) == 0
        assert await limiter.take("203.0.113.9", Rate(per_second=1, burst=2)) > 0
        assert await presence.disconnect("u1", "d1/a", now) is False
    finally:
        await limiter.close()
        await client.aclose()
        await broker.close()


async def test_subscriptions_made_together_all_receive(redis_prefix: str) -> None:
    """Subscriptions made in one turn of the event loop leave in one write:
    every channel receives from another node, and one unsubscribed in the
    same turn receives nothing."""
    url = f"{REDIS}?prefix={redis_prefix}"
    here, there = RedisBroker(url), RedisBroker(url)
    await here.start()
    await there.start()
    try:
        inbox: dict[str, list[bytes]] = {}
        channels = [f"dev:d{i}" for i in range(200)]
        handlers = {c: inbox.setdefault(c, []).append for c in channels}
        await asyncio.gather(*(here.subscribe(c, handlers[c]) for c in channels))
        await here.unsubscribe("dev:d7", handlers["dev:d7"])
        await asyncio.sleep(0.2)  # the subscriptions' write, and Redis's confirmations
        await there.publish_many([(c, c.encode()) for c in channels])
        deadline = time.monotonic() + 5
        while sum(map(len, inbox.values())) < 199 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        assert {c: v for c, v in inbox.items() if v} == {c: [c.encode()] for c in channels if c != "dev:d7"}
    finally:
        await there.close()
        await here.close()
