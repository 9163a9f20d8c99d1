"""``connections``: ``--connections`` authenticated connections held on one
hub, mostly idle, while ``--pairs`` pairs among them exchange messages at
``--rate`` (default 100/s).

Memory: a freshly started hub's RSS, then its RSS with every connection
authenticated and settled; the difference ÷ connections is
``hub.rss_kib_per_connection`` (the relay: the same with bare
connections). The hub is restarted after enrollment so that the allocator's
leftovers from enrolling do not hide in the "before" figure. The message
figures (CPU per message, latency) are those of the traffic with all the
idle connections held (their pings and presence refreshes included)."""

from __future__ import annotations

import time
from typing import Any

from ..harness import start_hub
from ..measure import rss_kib
from ..runner import Population, Run
from .auth_storm import connect_figures
from .common import assemble, pairs_population

SETTLE_SECONDS = 3.0
CONNECT_CONCURRENCY = 64


def _population(r: Run) -> Population:
    pairs = min(r.args.pairs, r.args.connections // 2)
    pop = pairs_population(r, pairs)
    for i in range(max(0, r.args.connections - 2 * pairs)):
        pop.add_user(1, i)
    return pop


def _held(r: Run, pid: int, before: int) -> dict[str, Any]:
    time.sleep(SETTLE_SECONDS)
    after = rss_kib(pid)
    held = sum(s["connected"] for s in r.pool.statuses())
    return {
        "connections": held,
        "rss_kib_before": before,
        "rss_kib_after": after,
        "rss_kib_per_connection": round((after - before) / held, 2) if held else None,
    }


def run(r: Run) -> dict[str, Any]:
    if not r.args.rate:
        r.args.rate = 100.0
    pop = _population(r)
    r.set_population(pop)
    args = r.args

    relay = r.start_relay()
    time.sleep(0.5)
    before = rss_kib(relay.pid)
    relay_conn = connect_figures(
        r, "relay: connect", [relay.pid], r.relay_urls(relay), False, CONNECT_CONCURRENCY
    )
    relay_mem = _held(r, relay.pid, before)
    relay_msgs = r.message_phase("relay: traffic", [relay.pid], args.rate, args.seconds, args.payload, False)
    r.disconnect()
    r.stop(relay)

    r.start_hubs(1)
    r.enroll()
    hub_pid = r.hub_pids[0] if r.hub_pids else None
    if not args.url:  # a fresh hub on the same store: "before" is an idle hub
        old = r.servers.pop()
        old.stop()
        hub = start_hub("hub0", r.workdir / "hub0", r.store_url, old_broker(r), r.server_cpus, r.hub_env)
        r.servers.append(hub)
        r.hub_urls, r.hub_pids, hub_pid = [hub.url], [hub.pid], hub.pid
        time.sleep(0.5)
    before = rss_kib(hub_pid) if hub_pid else 0
    hub_conn = connect_figures(
        r, "hub: connect", r.hub_pids, r.hub_device_urls(), r.using_services(), CONNECT_CONCURRENCY
    )
    hub_mem = _held(r, hub_pid, before) if hub_pid else {"connections": hub_conn["delivered"]}
    hub_msgs = r.message_phase(
        "hub: traffic", r.hub_pids, args.rate, args.seconds, args.payload, r.using_services()
    )
    r.disconnect()

    out = assemble({"fixed": hub_msgs}, {"fixed": relay_msgs})
    out["hub"].update(hub_mem)
    out["hub"]["auth_per_s"] = hub_conn["auth_per_s"]
    out["hub"]["connect_failed"] = hub_conn["failed"]
    out["relay"].update(relay_mem)
    out["relay"]["connect_per_s"] = relay_conn["auth_per_s"]
    out["ratio_rss"] = (
        round(hub_mem["rss_kib_per_connection"] / relay_mem["rss_kib_per_connection"], 2)
        if hub_mem.get("rss_kib_per_connection") and relay_mem.get("rss_kib_per_connection")
        else None
    )
    out["params"] = {
        "connections": args.connections,
        "traffic_pairs": len(pop.flows) // 2,
        "payload_bytes": args.payload,
    }
    return out


def old_broker(r: Run) -> str:
    return r.services.broker if r.services is not None else "memory://"
