"""``connections``: ``--connections`` authenticated connections held on the
hub, mostly idle, while ``--pairs`` pairs among them exchange messages at
``--rate`` (default 100/s).

Memory: the RSS of a freshly started hub, then its RSS with every
connection authenticated and settled; the difference ÷ connections is
``hub.rss_kib_per_connection`` (the relay: the same with bare
connections). The hub is restarted after enrollment so that the allocator's
leftovers from enrolling do not hide in the "before" figure. The message
figures (CPU per message, latency) are those of the traffic with all the
idle connections held (their pings and presence refreshes included).

A process holds at most :func:`per_process` connections (the open-file
limit, 20,000 here, less room for the rest), so more take several of each:
``--hub-workers N`` runs the hub as ``miss-server --workers N`` (services
backend), whose workers share the port (SO_REUSEPORT); the load generator
gets as many processes as it needs (``--workers`` raised, said in the
notes); the relay runs one process per load generator process, each
holding that process's devices, its flows included. Memory and CPU are
then summed over the processes of each side (the hub's supervisor
included), so that both sides pay the same way for being spread. The hub's
connections come from :data:`~.auth_storm.SOURCES` loopback addresses:
from one, they would run out of ports to one destination (about 28,000)."""

from __future__ import annotations

import math
import resource
import time
from typing import Any

from ..harness import start_hub
from ..measure import rss_kib
from ..runner import Population, Run
from .auth_storm import SOURCES, connect_figures, hub_pids, hub_workers, start_hub_workers
from .common import assemble, pairs_population

SETTLE_SECONDS = 3.0
CONNECT_CONCURRENCY = 64
#: Open files a process keeps for everything but its connections (store,
#: broker, logs, listening sockets, connections being closed).
FD_ROOM = 4000


def per_process() -> int:
    """The most connections one process (hub worker, relay, load generator)
    is given: its hard open-file limit less :data:`FD_ROOM`."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return 1_000_000
    return max(1000, hard - FD_ROOM)


def _population(r: Run) -> Population:
    pairs = min(r.args.pairs, r.args.connections // 2)
    pop = pairs_population(r, pairs)
    for i in range(max(0, r.args.connections - 2 * pairs)):
        pop.add_user(1, i)
    return pop


def _rss(pids: list[int]) -> int:
    return sum(rss_kib(p) for p in pids)


def _held(r: Run, pids: list[int], before: int) -> dict[str, Any]:
    """The memory figures once the connections have settled: RSS summed
    over ``pids`` (``before``: the same sum, idle)."""
    time.sleep(SETTLE_SECONDS)
    after = _rss(pids)
    held = sum(s["connected"] for s in r.pool.statuses())
    return {
        "connections": held,
        "processes": len(pids),
        "rss_kib_before": before,
        "rss_kib_after": after,
        "rss_kib_per_connection": round((after - before) / held, 2) if held else None,
    }


def _check_capacity(r: Run, hub_workers: int) -> None:
    """Enough load generator processes for the connections; refuse a hub
    that could not hold them."""
    n, cap = r.args.connections, per_process()
    r.ensure_workers(math.ceil(n / cap))
    if not r.args.url and n > hub_workers * cap:
        raise SystemExit(
            f"miss-bench: {n} connections need --hub-workers {math.ceil(n / cap)} or more "
            f"(--backend services): a hub process holds at most {cap} (open-file limit)"
        )


def run(r: Run) -> dict[str, Any]:
    args = r.args
    if not args.rate:
        args.rate = 100.0
    workers = hub_workers(r)
    _check_capacity(r, workers)
    pop = _population(r)
    r.set_population(pop)

    relays = r.start_relays(1 if args.connections <= per_process() else len(r.pool))
    relay_pids = [relay.pid for relay in relays]
    time.sleep(0.5)
    before = _rss(relay_pids)
    relay_conn = connect_figures(
        r, "relay: connect", relay_pids, r.relay_urls(relays), False, CONNECT_CONCURRENCY
    )
    relay_mem = _held(r, relay_pids, before)
    relay_msgs = r.message_phase("relay: traffic", relay_pids, args.rate, args.seconds, args.payload, False)
    r.disconnect()
    for relay in relays:
        r.stop(relay)

    start_hub_workers(r)
    r.enroll()
    if not args.url:  # a fresh hub on the same store: "before" is an idle hub
        old = r.servers.pop()
        old.stop()
        hub = start_hub("hub0", r.workdir / "hub0", r.store_url, old_broker(r), r.server_cpus, r.hub_env)
        r.servers.append(hub)
        r.hub_urls, r.hub_pids = [hub.url], [hub.pid]
        time.sleep(0.5)
    pids = hub_pids(r, workers)
    before = _rss(pids)
    hub_conn = connect_figures(
        r,
        "hub: connect",
        pids,
        r.hub_device_urls(),
        r.using_services(),
        CONNECT_CONCURRENCY,
        sources=SOURCES,
    )
    hub_mem = _held(r, pids, before) if pids else {"connections": hub_conn["delivered"]}
    hub_msgs = r.message_phase(
        "hub: traffic", pids, args.rate, args.seconds, args.payload, r.using_services()
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
        "hub_workers": workers,
        "relay_processes": len(relays),
        "loadgen_processes": len(r.pool),
    }
    return out


def old_broker(r: Run) -> str:
    return r.services.broker if r.services is not None else "memory://"
