"""Pieces the scenarios share: the relay-then-hub message run, ratios."""

from __future__ import annotations

import subprocess
import time
from typing import Any

from ..harness import BIN
from ..runner import Population, Run

__all__ = ["message_run", "pairs_population", "ratio", "with_profile"]


def ratio(hub: float | None, relay: float | None) -> float | None:
    if not hub or not relay:
        return None
    return round(hub / relay, 2)


def pairs_population(
    r: Run, pairs: int, nodes: tuple[int, int] = (0, 0), workers: int | None = None
) -> Population:
    """``pairs`` pairs of clinicians with one device each, writing to each
    other; the first of a pair on hub node ``nodes[0]``, the second on
    ``nodes[1]``. The pairs are spread over the first ``workers`` workers
    (default all of them)."""
    pop = Population(len(r.pool))
    spread = workers or len(r.pool)
    for p in range(pairs):
        a = pop.add_user(1, p % spread, [nodes[0]])
        b = pop.add_user(1, p % spread, [nodes[1]])
        pop.add_flow(pop.user_devices[a][0], b)
        pop.add_flow(pop.user_devices[b][0], a)
    return pop


def with_profile(r: Run, pids: list[int], seconds: float) -> subprocess.Popen[bytes] | None:
    """``--profile FILE``: py-spy samples the hub (every thread) during its
    measured window; a flame graph (SVG), or collapsed stacks if FILE ends
    in ``.txt`` (one line per stack, for grep and sort)."""
    if not r.args.profile or not pids:
        return None
    return subprocess.Popen(
        [
            str(BIN / "py-spy"),
            "record",
            "--pid",
            str(pids[0]),
            "--duration",
            str(int(seconds) + 1),
            "--rate",
            "250",
            "--nonblocking",
            "--threads",
            "--format",
            "raw" if str(r.args.profile).endswith(".txt") else "flamegraph",
            "-o",
            r.args.profile,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _phases(r: Run, label: str, pids: list[int], services: bool, profile: bool = False) -> dict[str, Any]:
    """The fixed-rate phase (``--rate``) and/or the closed-loop one."""
    args = r.args
    out: dict[str, Any] = {}
    spy = with_profile(r, pids, args.seconds + 2) if profile else None
    if args.rate:
        out["fixed"] = r.message_phase(
            f"{label} @{args.rate:g}/s", pids, args.rate, args.seconds, args.payload, services
        )
    if not args.rate or args.closed_loop:
        out["closed"] = r.message_phase(
            f"{label} closed loop", pids, None, args.seconds, args.payload, services
        )
    if spy is not None:
        spy.wait(60)
    return out


def message_run(r: Run, pop: Population, nodes: int = 1) -> dict[str, Any]:
    """Relay baseline, then the hub, with the same population and load;
    ``--repeat N``: N such rounds (the hubs are started and their clinicians
    enrolled once), and the round whose ratio is the median is reported, with
    every round's CPU figures under ``rounds``. Alternating the two spreads
    the machine's slow spells over both sides instead of one. Several nodes
    (``nodes``) add two baselines to each round (:func:`assemble`), and
    their median round is that of ``node_cost``, the figure their bar is on."""
    r.set_population(pop)
    count = max(1, r.args.repeat)
    rounds = []
    split = nodes > 1 and len(r.pool) >= nodes
    if nodes > 1 and not split:
        r.notes.append(f"no split relay baseline: it needs {nodes} load generator workers (--workers)")
    for k in range(count):
        tag = f" {k + 1}/{count}" if count > 1 else ""
        relay_res = _relay_phases(r, 1, f"relay{tag}")
        split_res = _relay_phases(r, nodes, f"{nodes} relays{tag}") if split else None

        if k == 0:
            r.start_hubs(nodes)
            r.enroll()
        else:
            r.use_hub()
        r.connect(r.hub_device_urls(), f"hub{tag}: connect")
        hub_res = _phases(r, f"hub{tag}", r.hub_pids, services=r.using_services(), profile=k == 0)
        r.disconnect()
        one_res = None
        if nodes > 1:  # the same pairs and load on the first node alone
            r.connect({i: r.hub_urls[0] for i in r.hub_device_urls()}, f"one node{tag}: connect")
            one_res = _phases(r, f"one node{tag}", r.hub_pids[:1], services=r.using_services())
            r.disconnect()
        rounds.append(assemble(hub_res, relay_res, split_res, one_res))
    if count == 1:
        return rounds[0]
    key = "node_cost" if nodes > 1 else "ratio_cpu"
    ranked = sorted(rounds, key=lambda o: o.get(key) if o.get(key) is not None else float("inf"))
    out = ranked[(count - 1) // 2]
    out["rounds"] = [
        {
            "hub_cpu_us_per_msg": o["hub"]["cpu_us_per_msg"],
            "relay_cpu_us_per_msg": o["relay"]["cpu_us_per_msg"],
            "ratio_cpu": o["ratio_cpu"],
            **{f"{side}_cpu_us_per_msg": o[side]["cpu_us_per_msg"] for side in NODE_SIDES if side in o},
            **{cost: o[cost] for cost in NODE_COSTS if cost in o},
        }
        for o in rounds
    ]
    return out


#: What a round of several nodes adds (:func:`assemble`).
NODE_SIDES = ("relay_split", "one_node")
NODE_COSTS = ("node_cost", "postgres_node_cost", "split_cost", "crossing_cost")


def _relay_phases(r: Run, count: int, label: str) -> dict[str, Any]:
    """The relay baseline on ``count`` relay processes: with more than one,
    each load generator worker's pairs use one of them (Run.relay_urls), so
    the load is split as over several hub nodes, with nothing crossing."""
    relays = r.start_relays(count)
    r.connect(r.relay_urls(relays), f"{label}: connect")
    res = _phases(r, label, [relay.pid for relay in relays], services=False)
    r.disconnect()
    for relay in relays:
        r.stop(relay)
    return res


def assemble(
    hub_res: dict[str, Any],
    relay_res: dict[str, Any],
    split_res: dict[str, Any] | None = None,
    one_res: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The round's report. With several hub nodes: ``split_res``, the relays
    that shared the same load, and ``one_res``, the first node alone with
    every pair. ``node_cost`` is what the nodes together cost per message
    against one (the issue's bar); ``split_cost`` what splitting the load
    over as many processes costs a bare relay (split ÷ one), which is no
    crossing's doing; ``crossing_cost`` the rest (node_cost ÷ split_cost)."""
    main = "fixed" if "fixed" in hub_res else "closed"
    out: dict[str, Any] = {
        "mode": hub_res[main]["mode"],
        "hub": hub_res[main],
        "relay": relay_res[main],
        "ratio_cpu": ratio(hub_res[main]["cpu_us_per_msg"], relay_res[main]["cpu_us_per_msg"]),
    }
    if split_res is not None:
        split = split_res[main]["cpu_us_per_msg"]
        out["relay_split"] = split_res[main]
        out["split_cost"] = ratio(split, relay_res[main]["cpu_us_per_msg"])
        out["ratio_cpu_split"] = ratio(hub_res[main]["cpu_us_per_msg"], split)
    if one_res is not None:
        one, hub = one_res[main], hub_res[main]
        out["one_node"] = one
        out["node_cost"] = ratio(hub["cpu_us_per_msg"], one["cpu_us_per_msg"])
        pg = "postgres_cpu_us_per_msg"
        out["postgres_node_cost"] = ratio(hub.get(pg), one.get(pg))
        if out.get("node_cost") and out.get("split_cost"):
            out["crossing_cost"] = round(out["node_cost"] / out["split_cost"], 2)
    if main == "fixed" and "closed" in hub_res:
        out["closed_loop"] = {
            "hub": hub_res["closed"],
            "relay": relay_res["closed"],
            "ratio_cpu": ratio(hub_res["closed"]["cpu_us_per_msg"], relay_res["closed"]["cpu_us_per_msg"]),
        }
    return out


def settle(seconds: float) -> None:
    time.sleep(seconds)
