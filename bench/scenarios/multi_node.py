"""``multi-node``: two hub nodes on PostgreSQL and Redis; the two clinicians
of each pair are connected to different nodes, so every message crosses
Redis. The hub figures add up both nodes.

Each round also measures, with the same pairs and load: one relay (a bare
relay has nothing to cross: ``ratio_cpu``), two relays with half the pairs
each (``relay_split``), and the first node alone with every pair
(``one_node``). Two relays cost more per message than one only because each
process carries half the load; so ``node_cost`` (two nodes ÷ one, the
issue's bar) is ``split_cost`` (two relays ÷ one: what splitting the load
costs any server on this machine) times ``crossing_cost`` (the wake-ups'
trip through Redis, and what else the hub pays for a second node). See
docs/PERFORMANCE.md, "Several nodes"."""

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
