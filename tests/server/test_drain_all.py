"""A drain of every device of a node (a broker gap, a lost node:
``Waker.drain_all``) reads the store a few devices at a time: thousands of
links drained at once would otherwise queue as many reads on the store's
pool, and every clinician's send would wait behind them for its group
commit. Every stored row still reaches its device."""

from __future__ import annotations

import asyncio
from typing import Any

from protocol.frames import Accepted, Deliver
from tests.support.inprocess_hub import HubFactory
from tests.support.wire import enrolled

DEVICES = 12


async def test_a_drain_of_every_device_reads_a_few_at_a_time_and_delivers_every_row(
    make_hub: HubFactory,
) -> None:
    node = await make_hub(store_pool_size=4)  # half of it for a drain of every device: 2 reads
    alice = await enrolled(node, "Dr Alice", "10000000001")
    nurses = [await enrolled(node, f"IDE {i}", f"2000000{i:04d}") for i in range(DEVICES)]

    # Wake-ups lost (what a broker gap means): the rows are stored, unannounced.
    publish_soon = node.hub.broker.publish_soon
    node.hub.broker.publish_soon = lambda messages, lost: None  # type: ignore[method-assign]
    sent = []
    for i, nurse in enumerate(nurses):
        reply = await alice.ask(alice.message(await alice.lookup(nurse.user_id), f"Chambre {i} : bilan ?"))
        assert isinstance(reply, Accepted)
        sent.append(reply.id)
    node.hub.broker.publish_soon = publish_soon  # type: ignore[method-assign]

    in_flight = peak = 0
    pending = node.store.pending

    async def slow_pending(*args: Any) -> Any:
        # Each read takes a while, as on a busy pool, so that reads asked
        # together overlap and the count shows how many the store was asked at once.
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.02)
            return await pending(*args)
        finally:
            in_flight -= 1

    node.store.pending = slow_pending  # type: ignore[method-assign]
    node.hub.on_broker_gap()
    for nurse, message_id in zip(nurses, sent, strict=True):
        got = await nurse.recv(timeout=5)
        assert isinstance(got, Deliver) and got.id == message_id
    assert peak == 2, f"{peak} store reads at once for a drain of {DEVICES + 1} devices"
