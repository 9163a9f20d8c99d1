"""``online``: pairs of clinicians, all connected, writing to each other.

``--pairs`` pairs (one device each) spread over the workers; every message
is sealed for the peer, delivered, opened, acked, and its receipt acked by
the sender, like real clients. ``--rate`` is the total offered rate."""

from __future__ import annotations

from typing import Any

from ..runner import Run
from .common import message_run, pairs_population


def run(r: Run) -> dict[str, Any]:
    pop = pairs_population(r, r.args.pairs)
    out = message_run(r, pop)
    out["params"] = {"pairs": r.args.pairs, "payload_bytes": r.args.payload}
    return out
