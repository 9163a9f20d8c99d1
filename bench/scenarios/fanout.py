"""``fanout``: one sender whose clinician has ``--own-devices`` devices,
writing to a clinician with ``--devices`` devices. Each message is sealed
for every recipient device and for the sender's other devices; each
recipient device's ack yields a receipt on every device of the sender.
``delivered`` counts envelopes opened by their device (a message to 4
devices plus 2 own devices counts 6); the relay forwards the same frame to
the same 6 devices."""

from __future__ import annotations

from typing import Any

from ..runner import Population, Run
from .common import message_run


def run(r: Run) -> dict[str, Any]:
    pop = Population(len(r.pool))
    sender_user = pop.add_user(r.args.own_devices, 0)
    recipient = pop.add_user(r.args.devices, 0)
    pop.add_flow(pop.user_devices[sender_user][0], recipient)
    out = message_run(r, pop)
    out["params"] = {
        "recipient_devices": r.args.devices,
        "sender_devices": r.args.own_devices,
        "envelopes_per_message": r.args.devices + r.args.own_devices - 1,
        "payload_bytes": r.args.payload,
    }
    return out
