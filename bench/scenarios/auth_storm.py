"""``auth-storm``: ``--storm`` enrolled devices connect and authenticate all
at once (as after a hub restart or at a shift change).

The unit of work is one authentication: TCP and WebSocket handshake,
``challenge``, Ed25519 signature checked against the store, presence and
delivery set up, ``welcome``. ``hub.auth_per_s`` is welcomes ÷ (last welcome
- first connection attempt); latency is connection attempt → ``welcome``.
The relay's unit is one WebSocket connection opened (the handshake alone),
so ``ratio_cpu`` is the CPU of an authentication over that of a bare
connection.

Each load generator process keeps at most :data:`IN_FLIGHT` connections
opening at once (relay and hub alike): a hub admits at most a quarter of
its open-file limit of connections not yet authenticated (5,000 with this
machine's 20,000) and closes the others at accept, by design; real clients
would retry them with backoff, which the bench does not simulate. The
devices connect from 250 loopback addresses (as a region's devices
come from many), so that the hub's cap on connections not yet
authenticated per address (a quarter of its total, admission.py) does not
refuse most of a storm from one address. The hub's handshake and
authentication timeouts are raised to a minute: a load generator of one
core takes seconds to open ten thousand connections, which a real storm's
devices would each open at once. ``--hub-workers N`` runs the hub as
``miss-server --workers N`` (services backend): the hub's CPU is then that
of the supervisor and of every worker (:func:`hub_processes`)."""

from __future__ import annotations

import signal
import time
from typing import Any

from ..runner import Population, Run
from ..stats import latency_summary, percentile_curve, timeseries
from .common import ratio, with_profile

#: Loopback addresses the storm's devices connect from (loadgen.Worker.connect).
SOURCES = 250
#: Connections each load generator process opens at once (module doc).
IN_FLIGHT = 1000
#: The hub's handshake and authentication timeouts during the storm (s).
STORM_TIMEOUT = "60"
#: py-spy's longest sample of a storm (s); it is stopped when the storm ends.
STORM_PROFILE_SECONDS = 300


def hub_processes(pid: int) -> list[int]:
    """``pid`` and its child processes (a supervisor's workers), from /proc."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [pid, *(int(c) for c in f.read().split())]
    except OSError:
        return [pid]


def hub_workers(r: Run) -> int:
    """The hub's worker processes asked for (``--hub-workers``, at least 1)."""
    return max(1, getattr(r.args, "hub_workers", 1))


def start_hub_workers(r: Run, **settings: str) -> int:
    """Start the hub with these ``MISS_*`` settings, as ``miss-server
    --workers N`` for ``--hub-workers N`` above 1; returns N."""
    workers = hub_workers(r)
    if workers > 1:
        settings["workers"] = str(workers)
    r.start_hubs(1, **settings)
    return workers


def hub_pids(r: Run, workers: int) -> list[int]:
    """The hub's processes (the supervisor and its workers), with a note if
    fewer than ``workers`` workers are found."""
    pids = [p for pid in r.hub_pids for p in hub_processes(pid)]
    if workers > 1 and len(pids) != workers + 1:
        r.notes.append(f"expected {workers} workers under the supervisor, found {len(pids) - 1}")
    return pids


def connect_figures(
    r: Run,
    label: str,
    pids: list[int],
    urls: dict[int, str],
    services: bool,
    concurrency: int | None,
    sources: int = 0,
    profile: bool = False,
) -> dict[str, Any]:
    """Connect every device (a hub's from ``sources`` addresses) while the
    meters run; the figures of that. ``profile``: py-spy samples the hub
    meanwhile (``--profile``)."""
    meters = r.meters(pids, services)
    # --profile: the last of the hub's processes (a worker, under a supervisor),
    # for as long as the storm lasts (py-spy writes its file when interrupted).
    spy = with_profile(r, pids[-1:], STORM_PROFILE_SECONDS) if profile else None
    for m in meters.values():
        m.start()
    load0, wall0 = r.pool.cpu_seconds(), time.monotonic()
    result = r.connect(urls, label, concurrency=concurrency, sources=sources)
    wall = time.monotonic() - wall0
    cpu = r.stop_meters(meters)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    load_cpu = r.pool.cpu_seconds() - load0
    timings = result["timings"]
    n = len(timings)
    first = min((t[0] for t in timings), default=0)
    last = max((t[2] for t in timings), default=0)
    elapsed = (last - first) / 1e9 if n else 0.0
    lat = [max(1, (t[2] - t[0]) // 1000) for t in timings]
    summary, hist = latency_summary(lat)
    out: dict[str, Any] = {
        "delivered": n,
        "unit": "authentication",
        "failed": result["failed"],
        "window_seconds": round(elapsed, 3),
        "rate": round(n / elapsed, 1) if elapsed else 0.0,
        "auth_per_s": round(n / elapsed, 1) if elapsed else 0.0,
        "cpu_seconds": round(cpu["server"], 3),
        "cpu_us_per_msg": round(cpu["server"] * 1e6 / n, 1) if n else None,
        "cpu_us_per_auth": round(cpu["server"] * 1e6 / n, 1) if n else None,
        # What one fully busy server core would sustain at this cost, for when
        # the load generator (one core of Python clients) is the limit.
        "auth_capacity_per_s": round(n / cpu["server"], 1) if cpu["server"] else None,
        **summary,
        "loadgen_cpu_util": round(load_cpu / wall / max(1, len(r.load_cpus)), 3),
        "errors": {},
    }
    for name in ("postgres", "redis"):
        if name in cpu:
            out[f"{name}_cpu_seconds"] = round(cpu[name], 3)
            out[f"{name}_cpu_us_per_msg"] = round(cpu[name] * 1e6 / n, 1) if n else None
    statuses = r.pool.call_all("collect")
    for st in statuses:
        for k, v in st["errors"].items():
            out["errors"][k] = out["errors"].get(k, 0) + v
    out["timeseries"] = timeseries([t[0] for t in timings], [t[2] for t in timings], lat, first)
    out["curve"] = percentile_curve(hist)
    return out


def run(r: Run) -> dict[str, Any]:
    n = r.args.storm
    pop = Population(len(r.pool))
    for i in range(n):
        pop.add_user(1, i)
    r.set_population(pop)

    relay = r.start_relay()
    relay_res = connect_figures(r, "relay: storm", [relay.pid], r.relay_urls(relay), False, IN_FLIGHT)
    r.disconnect()
    r.stop(relay)

    workers = start_hub_workers(
        r, handshake_timeout_seconds=STORM_TIMEOUT, auth_timeout_seconds=STORM_TIMEOUT
    )
    r.enroll()
    pids = hub_pids(r, workers)
    hub_res = connect_figures(
        r,
        "hub: auth storm",
        pids,
        r.hub_device_urls(),
        r.using_services(),
        IN_FLIGHT,
        sources=SOURCES,
        profile=True,
    )
    r.disconnect()
    return {
        "mode": "storm",
        "unit": "authentication",
        "hub": hub_res,
        "relay": relay_res,
        "ratio_cpu": ratio(hub_res["cpu_us_per_msg"], relay_res["cpu_us_per_msg"]),
        "params": {
            "devices": n,
            "concurrency": f"{IN_FLIGHT} per load generator process",
            "hub_workers": workers,
            "hub_processes": len(pids),
            "source_addresses": SOURCES,
        },
    }
