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
    the machine's slow spells over both sides instead of one."""
    r.set_population(pop)
    count = max(1, r.args.repeat)
    rounds = []
    for k in range(count):
        tag = f" {k + 1}/{count}" if count > 1 else ""
        relay = r.start_relay()
        r.connect(r.relay_urls(relay), f"relay{tag}: connect")
        relay_res = _phases(r, f"relay{tag}", [relay.pid], services=False)
        r.disconnect()
        r.stop(relay)

        if k == 0:
            r.start_hubs(nodes)
            r.enroll()
        else:
            r.use_hub()
        r.connect(r.hub_device_urls(), f"hub{tag}: connect")
        hub_res = _phases(r, f"hub{tag}", r.hub_pids, services=r.using_services(), profile=k == 0)
        r.disconnect()
        rounds.append(assemble(hub_res, relay_res))
    if count == 1:
        return rounds[0]
    ranked = sorted(rounds, key=lambda o: o["ratio_cpu"] if o["ratio_cpu"] is not None else float("inf"))
    out = ranked[(count - 1) // 2]
    out["rounds"] = [
        {
            "hub_cpu_us_per_msg": o["hub"]["cpu_us_per_msg"],
            "relay_cpu_us_per_msg": o["relay"]["cpu_us_per_msg"],
            "ratio_cpu": o["ratio_cpu"],
        }
        for o in rounds
    ]
    return out


def assemble(hub_res: dict[str, Any], relay_res: dict[str, Any]) -> dict[str, Any]:
    main = "fixed" if "fixed" in hub_res else "closed"
    out: dict[str, Any] = {
        "mode": hub_res[main]["mode"],
        "hub": hub_res[main],
        "relay": relay_res[main],
        "ratio_cpu": ratio(hub_res[main]["cpu_us_per_msg"], relay_res[main]["cpu_us_per_msg"]),
    }
    if main == "fixed" and "closed" in hub_res:
        out["closed_loop"] = {
            "hub": hub_res["closed"],
            "relay": relay_res["closed"],
            "ratio_cpu": ratio(hub_res["closed"]["cpu_us_per_msg"], relay_res["closed"]["cpu_us_per_msg"]),
        }
    return out


def settle(seconds: float) -> None:
    time.sleep(seconds)
