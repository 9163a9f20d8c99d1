"""``flood``: the ``online`` workload (``--pairs`` pairs of clinicians
writing to each other at ``--rate``, default 200/s in all) run twice on the
same hub, first alone, then while one more verified device, the *flooder*,
sends messages to one of those clinicians (the *victim*, the first clinician
of the first pair) as fast as it can.

The flooder runs in a load generator process of its own. Its
``--flood-messages`` messages (default 5,000) are sealed beforehand and
written back to back from the start of the window, pipelined (no waiting for
``accepted``), until all are written or the window ends; it never sends a
refused one again. The hub of this scenario keeps its **default per-device
budget** (``rate_device``, "10/s burst 50"), so that past the first 50 the
flooder gets ``rate_limited`` and the hub stops reading its connection for
the delay it was told; the budget per client address (``rate_address``) and
the authentication budgets are raised out of reach, as in every other
scenario: all the simulated devices connect from 127.0.0.1, where in real
life each clinician would be behind an address of their own. The measured
question is whether the legitimate pairs notice the flood:
``flood.p99_ratio`` = p99 latency of the pairs with the flood ÷ without.

Report: ``hub`` holds the figures of the window with the flood (its CPU per
message includes what the flood cost the hub), plus ``p99_ms_no_flood``,
``lost`` and ``lost_no_flood`` (pair messages not delivered, each window);
``no_flood.hub`` the full figures of the window without; ``flood`` what the
flooder sent and what became of it. The relay baseline is the pairs alone.
"""

from __future__ import annotations

from typing import Any

from miss_server.config import Settings
from miss_server.ratelimit import parse_rate

from ..plan import Flow
from ..runner import Population, Run
from .common import pairs_population, ratio

DEFAULT_RATE = 200.0
#: The budgets of this scenario's hub: ``None`` keeps the hub's default.
RATES: dict[str, str | None] = {"rate_device": None}


def _population(r: Run) -> tuple[Population, Flow]:
    """The pairs on every worker but the last, the flooder alone on the
    last; the flood's flow is kept out of the population's flows (the
    ``run`` job of the pairs must not send it)."""
    flooder_worker = len(r.pool) - 1
    pop = pairs_population(r, r.args.pairs, workers=flooder_worker)
    victim = 0
    flooder_user = pop.add_user(1, flooder_worker)
    flooder = pop.user_devices[flooder_user][0]
    targets = tuple(pop.user_devices[victim])
    return pop, Flow(flooder, victim, targets, receipts=len(targets))


def _lost(counters: dict[str, int]) -> int:
    return max(0, counters.get("expected", 0) - counters.get("delivered", 0))


def _flood_figures(r: Run, prepared: int, flooder_worker: int) -> dict[str, Any]:
    c = r.last_counters
    result = r.last_results[flooder_worker].get("flood", {})
    sent = c.get("flood_sent", 0)
    accepted = c.get("flood_accepted", 0)
    limited = c.get("flood_rate_limited", 0)
    known = {"sent", "accepted", "rate_limited", "delivered", "receipts"}
    other = {k[6:]: v for k, v in c.items() if k.startswith("flood_") and k[6:] not in known}
    seconds = (result.get("ended_ns", 0) - result.get("started_ns", 0)) / 1e9
    return {
        "prepared": prepared,
        "sent": sent,
        "send_seconds": round(seconds, 3),
        "accepted": accepted,
        "rate_limited": limited,
        "other_errors": other,
        # written, but not read by the hub before the window ended (its
        # connection was paused): they die with the flooder's connection
        "unanswered": max(0, sent - accepted - limited - sum(other.values())),
        "delivered": c.get("flood_delivered", 0),
        "receipts": c.get("flood_receipts", 0),
    }


def run(r: Run) -> dict[str, Any]:
    args = r.args
    if not args.rate:
        args.rate = DEFAULT_RATE
    if args.closed_loop:
        r.notes.append("flood: --closed-loop is ignored (both windows are at --rate)")
    pop, flood_flow = _population(r)
    flooder, flooder_worker = flood_flow.sender, len(r.pool) - 1
    pairs = [d.index for d in pop.devices if d.index != flooder]
    r.set_population(pop)

    relay = r.start_relay()
    r.connect(r.relay_urls(relay), "relay: connect", indices=pairs)
    relay_res = r.message_phase(
        f"relay @{args.rate:g}/s", [relay.pid], args.rate, args.seconds, args.payload, False
    )
    r.disconnect()
    r.stop(relay)

    r.start_hubs(1, **RATES)
    if args.url:
        budget = "as configured on the hub (--url)"
    else:
        budget = Settings.model_fields["rate_device"].default
        per_sender = args.rate / max(1, len(pop.flows))
        if per_sender > parse_rate(budget).per_second:
            r.notes.append(
                f"flood: each pair device offers {per_sender:.1f} msg/s, above the per-device budget "
                f"({budget}): the pairs are rate-limited too (see hub.rate_limited)"
            )
    r.enroll()
    urls = r.hub_device_urls()
    services = r.using_services()
    r.connect(urls, "hub: connect", indices=pairs)
    quiet = r.message_phase(
        f"hub: no flood @{args.rate:g}/s", r.hub_pids, args.rate, args.seconds, args.payload, services
    )
    lost_quiet = _lost(r.last_counters)

    r.progress.note(f"flood: sealing {args.flood_messages} messages for the flooder")
    prepared = r.pool.call(
        flooder_worker, "flood_prepare", flow=flood_flow, count=args.flood_messages, payload=args.payload
    )
    r.connect(urls, "hub: flooder connects", indices=[flooder])
    hub_res = r.message_phase(
        f"hub: flood @{args.rate:g}/s",
        r.hub_pids,
        args.rate,
        args.seconds,
        args.payload,
        services,
        extra={flooder_worker: {"flood": True}},
    )
    lost = _lost(r.last_counters)
    flood = _flood_figures(r, prepared, flooder_worker)
    r.disconnect()

    hub_res["p99_ms_no_flood"] = quiet["p99_ms"]
    hub_res["lost"] = lost
    hub_res["lost_no_flood"] = lost_quiet
    hub_res["complete_no_flood"] = quiet["complete"]
    quiet["lost"] = lost_quiet
    flood["p99_ratio"] = ratio(hub_res["p99_ms"], quiet["p99_ms"])
    flood["rate_device"] = budget
    return {
        "mode": hub_res["mode"],
        "hub": hub_res,
        "relay": relay_res,
        "ratio_cpu": ratio(hub_res["cpu_us_per_msg"], relay_res["cpu_us_per_msg"]),
        "no_flood": {
            "hub": quiet,
            "ratio_cpu": ratio(quiet["cpu_us_per_msg"], relay_res["cpu_us_per_msg"]),
        },
        "flood": flood,
        "params": {
            "pairs": args.pairs,
            "payload_bytes": args.payload,
            "flood_messages": args.flood_messages,
            "rate_device": budget,
            "victim": "the first clinician of the first pair",
        },
        "loadgen": {"flooder": "one process of its own"},
    }
