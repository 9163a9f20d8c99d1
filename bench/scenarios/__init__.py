"""One module per scenario; each exposes ``run(r: Run) -> dict`` returning
the scenario's part of the report (``hub``, ``relay``, ``ratio_cpu``...).
``EXTRA_WORKERS``: load generator processes a scenario needs beyond
``--workers`` (the flooder of ``flood`` has its own)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import auth_storm, connections, fanout, flood, multi_node, offline_drain, online

__all__ = ["EXTRA_WORKERS", "SCENARIOS"]

SCENARIOS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "online": online.run,
    "offline-drain": offline_drain.run,
    "fanout": fanout.run,
    "connections": connections.run,
    "auth-storm": auth_storm.run,
    "multi-node": multi_node.run,
    "flood": flood.run,
}

EXTRA_WORKERS: dict[str, int] = {"flood": 1}
