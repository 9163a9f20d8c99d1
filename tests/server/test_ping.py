"""``ping`` (SPEC §4.1, revision 8): the request by which a client that
cannot see WebSocket pings (a browser) tells a silent hub from a dead
connection. Answered ``ok`` to any authenticated device, verified or not,
without reading anything; metered like every request."""

from __future__ import annotations

import time

from protocol.frames import CAP_PING, Devices, Error, Ok, Ping
from tests.support.inprocess_hub import HubFactory
from tests.support.wire import enrolled


async def test_the_hub_names_ping_and_answers_it_with_ok(make_hub: HubFactory) -> None:
    hub = await make_hub()
    alice = await enrolled(hub, "Dr Alice", "10000000001")
    assert CAP_PING in alice.session.hub_caps
    for rid in (1, 2):
        reply = await alice.ask(Ping(rid=rid))
        assert reply == Ok(rid=rid)


async def test_a_device_not_verified_yet_may_ping_and_nothing_more(make_hub: HubFactory) -> None:
    """It reads nothing and tells nothing: an unverified device's client
    needs to know its connection is alive as much as any other (SPEC §11.4)."""
    hub = await make_hub()
    nurse = await enrolled(hub, "IDE Claire", "20000000001", verified=False)
    assert await nurse.ask(Ping(rid=3)) == Ok(rid=3)

    other = await nurse.ask(Devices(rid=5))
    assert isinstance(other, Error) and other.code == "not_verified" and other.rid == 5


async def test_pings_are_metered_like_acks_slowed_past_the_budget_never_refused(make_hub: HubFactory) -> None:
    """A ping costs the hub what an ack costs: it spends the device's ack
    budget, nothing shared (no address budget); past it, the hub reads the
    device more slowly, and every ping is still answered."""
    hub = await make_hub(rate_ack="10/s burst 2", rate_device="1/s burst 1")
    alice = await enrolled(hub, "Dr Alice", "10000000001")
    started = time.monotonic()
    replies = [await alice.ask(Ping(rid=rid)) for rid in range(1, 8)]
    took = time.monotonic() - started
    assert replies == [Ok(rid=rid) for rid in range(1, 8)]  # none refused, the request budget untouched
    assert took >= 0.4, f"7 pings on 2 + 10/s took {took:.2f} s: not metered"
