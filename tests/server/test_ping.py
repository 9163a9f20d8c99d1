"""``ping`` (SPEC §4.1, revision 8): the request by which a client that
cannot see WebSocket pings (a browser) tells a silent hub from a dead
connection. Answered ``ok`` to any authenticated device, verified or not,
without reading anything; metered like every request."""

from __future__ import annotations

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


async def test_pings_spend_the_request_budget(make_hub: HubFactory) -> None:
    hub = await make_hub(rate_device="2/s burst 3")
    alice = await enrolled(hub, "Dr Alice", "10000000001")
    replies = [await alice.ask(Ping(rid=rid)) for rid in range(1, 6)]
    assert replies[:3] == [Ok(rid=1), Ok(rid=2), Ok(rid=3)]
    refused = [r for r in replies[3:] if isinstance(r, Error)]
    assert refused and all(r.code == "rate_limited" and r.retry_after for r in refused)
