"""The frames a connection receives reach the hub whole and in order, however
they come: many at once (more than ``max_queue``, so that reading pauses and
resumes), or one message in fragments. The hub keeps them in a lighter
queue than websockets' own (admission.py, ``_Frames``)."""

from __future__ import annotations

from protocol.frames import Lookup, LookupOk, encode
from tests.support.inprocess_hub import HubFactory
from tests.support.wire import enrolled


async def test_a_burst_of_requests_is_answered_in_order(make_hub: HubFactory) -> None:
    hub = await make_hub()
    alice = await enrolled(hub, "Dr Alice", "10000000001")
    assert alice.ws is not None
    for rid in range(200):  # written without waiting: far past the 16 frames queued before reading pauses
        await alice.ws.send(encode(Lookup(rid=rid, user=alice.user_id)))
    replies = [await alice.recv(timeout=15) for _ in range(200)]
    assert all(isinstance(r, LookupOk) for r in replies)
    assert [r.rid for r in replies] == list(range(200))  # type: ignore[union-attr]
    await alice.close()


async def test_a_request_sent_in_fragments_is_answered(make_hub: HubFactory) -> None:
    hub = await make_hub()
    alice = await enrolled(hub, "Dr Alice", "10000000001")
    assert alice.ws is not None
    data = encode(Lookup(rid=5, user=alice.user_id))
    third = len(data) // 3
    await alice.ws.send([data[:third], data[third : 2 * third], data[2 * third :]])
    reply = await alice.recv()
    assert isinstance(reply, LookupOk) and reply.rid == 5
    await alice.close()
