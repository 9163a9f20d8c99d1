"""One module per scenario; each exposes ``run(r: Run) -> dict`` returning
the scenario's part of the report (``hub``, ``relay``, ``ratio_cpu``...).
``EXTRA_WORKERS``: load generator processes a scenario needs beyond
``--workers`` (the flooder of ``flood`` has its own). ``PLOTS`` and
``TABLES``: a scenario's own plot, and lines of its own under the table,
for figures that are not the hub-versus-relay kind (``search``,
``attachments``, ``adt``, ``capacity``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import (
    adt,
    attachments,
    attachments_report,
    auth_storm,
    capacity,
    connections,
    fanout,
    flood,
    multi_node,
    offline_drain,
    online,
    search,
)

__all__ = ["EXTRA_WORKERS", "PLOTS", "SCENARIOS", "TABLES"]

SCENARIOS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "online": online.run,
    "offline-drain": offline_drain.run,
    "fanout": fanout.run,
    "connections": connections.run,
    "auth-storm": auth_storm.run,
    "multi-node": multi_node.run,
    "flood": flood.run,
    "search": search.run,
    "attachments": attachments.run,
    "adt": adt.run,
    "capacity": capacity.run,
}

EXTRA_WORKERS: dict[str, int] = {"flood": 1}

PLOTS: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "search": search.plot,
    "attachments": attachments_report.plot,
    "adt": adt.plot,
    "capacity": capacity.plot,
}

TABLES: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "search": search.table,
    "fanout": fanout.table,
    "attachments": attachments_report.table,
    "adt": adt.table,
    "capacity": capacity.table,
}
