"""The cap on one account's connections (SPEC §11.5, ``max_connections_per_account``):
a connection over it is refused after authentication with
``too_many_connections`` and close 1008, counted over every node; a device
replacing its own older connection is never refused for it."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from miss_server.app import HubServer
from protocol.frames import Lookup, LookupOk
from tests.support.inprocess_hub import HubFactory
from tests.support.pg_hub import postgres_store_url
from tests.support.wire import RawDevice, enrolled

REDIS = os.environ.get("MISS_TEST_REDIS", "redis://127.0.0.1:6379/0")


def refused_count(hub: HubServer) -> float:
    return hub.metrics.registry.get_sample_value("miss_errors_total", {"code": "too_many_connections"}) or 0


async def until(check: object, timeout: float = 5.0) -> None:
    """Wait until ``check()`` is true (presence entries go when a
    connection's task has ended, a moment after its close)."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def still_open(device: RawDevice) -> bool:
    reply = await device.ask(Lookup(rid=5, user=device.user_id))
    return isinstance(reply, LookupOk)


async def test_the_connection_over_the_cap_is_refused_and_a_reconnecting_device_is_not(
    make_hub: HubFactory,
) -> None:
    hub = await make_hub(max_connections_per_account=2)
    alice = await enrolled(hub, "Dr Alice", "10000000001")
    phone = await alice.link()
    tablet = await alice.link()  # an enrollment is never refused: its code is spent
    await tablet.close()
    await until(lambda: hub.metrics.authenticated._value.get() == 2)

    # Two connections of Alice's other devices: the tablet's is one too many.
    error, close_code = await tablet.auth_refused()
    assert error is not None and error.code == "too_many_connections" and not error.fatal
    assert close_code == 1008
    assert refused_count(hub) == 1
    assert await still_open(alice)  # nothing else was touched

    # The phone connects again while its older connection is still open:
    # that one does not count against it (it is being replaced).
    old_phone = phone.ws
    await phone.auth()
    assert old_phone is not None
    await asyncio.wait_for(old_phone.wait_closed(), 5)
    assert old_phone.close_code == 4409
    assert refused_count(hub) == 1

    # Once Alice's computer leaves, the tablet gets in.
    await alice.close()
    await until(lambda: hub.metrics.authenticated._value.get() == 1)
    await tablet.auth()
    assert refused_count(hub) == 1


async def test_the_default_cap_is_three_times_the_device_cap(make_hub: HubFactory) -> None:
    hub = await make_hub(max_devices=2)
    assert hub.settings.connection_cap == 6
    hub = await make_hub(max_devices=2, max_connections_per_account=1)
    assert hub.settings.connection_cap == 1


@pytest.mark.slow
async def test_the_cap_counts_connections_on_every_node(make_hub: HubFactory, redis_prefix: str) -> None:
    async with postgres_store_url() as store:
        broker = f"{REDIS}?prefix={redis_prefix}"
        node0, node1 = [
            await make_hub(store=store, broker=broker, max_connections_per_account=1) for _ in "01"
        ]
        alice = await enrolled(node0, "Dr Alice", "10000000001")
        phone = await alice.link(node1.url)
        await phone.close()
        await until(lambda: node1.metrics.authenticated._value.get() == 0)

        # Alice's computer on node 0 fills the cap: the phone is refused on node 1.
        error, close_code = await phone.auth_refused()
        assert error is not None and error.code == "too_many_connections"
        assert close_code == 1008
        assert refused_count(node1) == 1
        assert await still_open(alice)

        # Her computer moves to node 1: its own connection on node 0 does not count.
        old = alice.ws
        alice.url = node1.url
        await alice.auth()
        assert old is not None
        await asyncio.wait_for(old.wait_closed(), 5)
        assert old.close_code == 4409
        assert await still_open(alice)
        assert refused_count(node0) + refused_count(node1) == 1


# --- one connection per device, even when two authenticate at once -------------------------------


async def test_of_two_connections_of_a_device_at_once_one_is_left(
    make_hub: HubFactory, redis_prefix: str
) -> None:
    """Each authenticates the same device at the same moment (on Redis,
    where publishing and subscribing take round trips, the older one used
    to miss the newer one's wake-up in about half the rounds, and both
    stayed): exactly one is left, the other closed with session_replaced."""
    hub = await make_hub(broker=f"{REDIS}?prefix={redis_prefix}")
    alice = await enrolled(hub, "Dr Alice", "10000000001")
    await alice.close()
    for _ in range(12):
        pair = [
            RawDevice(hub.url, keys=alice.keys, user_id=alice.user_id, device_id=alice.device_id)
            for _ in "ab"
        ]
        await asyncio.gather(*(d.open() for d in pair))
        await asyncio.gather(*(d.ws.send(d.session.send(d.auth_frame())) for d in pair if d.ws))
        ended = await asyncio.gather(*(d.until_closed(0.5) for d in pair))
        assert sorted(code or 0 for _, code in ended) == [0, 4409], ended
        assert [error.code for error, _ in ended if error is not None] == ["session_replaced"]
        for d in pair:
            await d.close()
