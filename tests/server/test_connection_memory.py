"""What an idle connection keeps (issue 19, item 4: connections cheaper
than 16 KiB): once authenticated, not its HTTP upgrade's headers
(connection._forget_handshake), and it still works."""

from __future__ import annotations

from protocol.frames import Lookup, LookupOk
from tests.support.inprocess_hub import HubFactory
from tests.support.wire import RawDevice, enrolled


async def test_an_authenticated_connection_keeps_no_upgrade_headers(make_hub: HubFactory) -> None:
    hub = await make_hub()
    alice = await enrolled(hub, "Dr Alice", "10000000001")  # authenticated by its enrollment
    pending = RawDevice(hub.url)
    await pending.open()  # challenged, not yet authenticated
    assert hub._server is not None
    connections = list(hub._server.connections)
    assert len(connections) == 2
    kept = [ws for ws in connections if ws.request is not None and ws.request.headers]
    # The pending connection keeps its request (admission.py reads it until it settles).
    assert len(kept) == 1 and kept[0].response is not None
    authenticated = next(ws for ws in connections if ws is not kept[0])
    assert authenticated.request is not None and not authenticated.request.headers
    assert authenticated.response is None
    reply = await alice.ask(Lookup(rid=1, user=alice.user_id))  # and it still answers
    assert isinstance(reply, LookupOk)
    await alice.close()
    await pending.close()
