"""``multi-node``: two hub nodes on PostgreSQL and Redis; the two clinicians
of each pair are connected to different nodes, so every message crosses
Redis. The hub figures add up both nodes; the relay baseline is one relay
with the same pairs (a bare relay has nothing to cross)."""

from __future__ import annotations

from typing import Any

from ..runner import Run
from .common import message_run, pairs_population


def run(r: Run) -> dict[str, Any]:
    r.args.backend = "services"
    pop = pairs_population(r, r.args.pairs, nodes=(0, 1))
    out = message_run(r, pop, nodes=2)
    out["params"] = {"pairs": r.args.pairs, "payload_bytes": r.args.payload, "nodes": 2}
    return out
