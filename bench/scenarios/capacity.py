"""``capacity``: the highest offered rate one hub process sustains, and what
it means in devices per core.

The ``online`` load (``--pairs`` pairs of clinicians, one device each,
writing to each other on a fixed schedule) is offered in **steps** of
``--step-seconds`` (default ``--seconds``, 10) to **one** hub process (one
worker, pinned to the server CPU; embedded by default, ``--backend
services`` too), enrolled and connected once. Each step follows the
``--warmup`` of every message window and is metered like one (hub CPU from
``/proc/PID/stat``, latency from the scheduled send to the recipient
having opened the message, HDR percentiles).

A step **passes** when every message sent was delivered to its device and
every receipt came back (nothing lost, nothing missing 15 s after the last
send), no request was refused (``rate_limited`` or any other error; the
hub's budgets are out of reach as in every scenario), and its p99 ≤
``--p99-ms`` (default 100). A failing step is run again at the same rate
``--confirm`` times (default once) and the rate fails only if every
attempt failed: on a shared machine, one stall of another tenant's making
can lift one window's p99 past the bound; every attempt is reported.

The search (:func:`next_rate`): from ``--start-rate`` (200/s), the rate
doubles while steps pass; after the first failure it bisects between the
highest passing rate and the lowest failing one until they are within
:data:`TOLERANCE` (10 %) of each other, or ``--max-steps`` steps were run,
or ``--max-rate`` passed. If the start rate fails, it halves instead. A
rate that passes above one that failed (noise) is not believed: the
capacity is the highest passing rate below the lowest failing one.

**Devices per core** = capacity ÷ the traffic of one device at a busy hour,
stated by :func:`device_traffic`: by default the seed's 4.8 M messages a
month for 57,000 users (one device each), over a month of 30 days, times
``--peak-factor`` (10) for the busy hour. ``devices_per_full_core`` divides
again by the hub's CPU share at that rate (its messages per second on a
fully used core). These count messages only: the memory and descriptors of
held connections, and reconnection storms, are in ``connections`` and
``auth-storm``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..runner import Run
from .common import pairs_population

__all__ = ["DEFAULTS", "device_traffic", "next_rate", "plot", "run", "table", "verdict"]

#: Search parameters' defaults (the CLI's).
DEFAULTS = {
    "start_rate": 200.0,
    "p99_ms": 100.0,
    "max_steps": 12,
    "confirm": 1,
    "peak_factor": 10.0,
    "month_messages": 4_800_000,
    "month_users": 57_000,
}
#: The search stops once the lowest failing rate ÷ the highest passing one ≤ 1 + this.
TOLERANCE = 0.10
#: Below this offered rate (messages/s), halving stops: nothing passes.
MIN_RATE = 1.0
MONTH_DAYS = 30
#: A failing step whose load generator used this share of its CPUs may have
#: failed for the load generator, not the hub.
LOADGEN_BUSY = 0.9
#: A failing step where other processes took this share (%) of the hub's
#: CPU beside it: the hub shared its core (a shared machine).
SHARED_BY_OTHERS = 20.0
#: After a failing step, how long to wait for late deliveries to stop
#: before the next step (they would count in it).
DRAIN_MAX_S = 30.0


def device_traffic(month_messages: float, users: int, peak_factor: float) -> dict[str, Any]:
    """Messages per second one device sends at a busy hour: ``month_messages``
    ÷ ``users`` (one device each) ÷ a month of 30 days in seconds, times
    ``peak_factor``; with the sentence that states it."""
    per_month = month_messages / users
    average = per_month / (MONTH_DAYS * 86_400)
    peak = average * peak_factor
    return {
        "month_messages": month_messages,
        "users": users,
        "month_days": MONTH_DAYS,
        "peak_factor": peak_factor,
        "messages_per_device_month": round(per_month, 2),
        "average_msgs_per_s_per_device": average,
        "peak_msgs_per_s_per_device": peak,
        "assumption": (
            f"{month_messages:,.0f} messages a month for {users:,} users, one device each: "
            f"{per_month:.1f} messages per device a month; over {MONTH_DAYS} days that is "
            f"{average:.3g} messages/s per device on average; a busy hour at {peak_factor:g} times the "
            f"average: {peak:.3g} messages/s per device (one message every {1 / peak:,.0f} s)"
        ),
    }


def verdict(step: dict[str, Any], p99_bound_ms: float) -> list[str]:
    """Why a step fails (empty: it passes)."""
    why = []
    if step["lost"] or not step["complete"]:
        why.append(f"{step['lost']} lost or late (not delivered 15 s after the last send)")
    if step["rate_limited"]:
        why.append(f"{step['rate_limited']} refused rate_limited")
    if step["errors"]:
        why.append("errors: " + ", ".join(f"{k}: {v}" for k, v in step["errors"].items()))
    if step["p99_ms"] is None or step["p99_ms"] > p99_bound_ms:
        why.append(f"p99 {step['p99_ms']} ms > {p99_bound_ms:g} ms")
    return why


def bracket(history: list[tuple[float, bool]]) -> tuple[float | None, float | None]:
    """(highest passing rate below the lowest failing one, lowest failing rate)."""
    bad = min((rate for rate, ok in history if not ok), default=None)
    good = max((rate for rate, ok in history if ok and (bad is None or rate < bad)), default=None)
    return good, bad


def next_rate(
    history: list[tuple[float, bool]], start: float, max_rate: float | None, tolerance: float = TOLERANCE
) -> tuple[float | None, str]:
    """The next offered rate after ``history`` ((rate, passed) per step, in
    order), or None and why the search ends. Rates are whole messages/s."""
    if not history:
        return (min(start, max_rate) if max_rate else start), ""
    good, bad = bracket(history)
    if bad is None:
        assert good is not None
        if max_rate and good >= max_rate:
            return None, f"--max-rate {max_rate:g}/s passed"
        nxt = good * 2
        return (min(nxt, max_rate) if max_rate else nxt), ""
    if good is None:
        nxt = float(int(bad / 2))
        if nxt < MIN_RATE:
            return None, f"no rate passed, down to {bad:g}/s"
        return nxt, ""
    if bad / good <= 1 + tolerance:
        return None, f"bracketed within {tolerance:.0%}"
    mid = float(round((good + bad) / 2))
    if mid <= good or mid >= bad:
        return None, "bracketed to 1 message/s"
    return mid, ""


def cpus_ticks(cpus: set[int]) -> tuple[int, int, int]:
    """(busy, steal, total) clock ticks of these CPUs so far, from
    ``/proc/stat``: what every process on them (and the hypervisor) took,
    not the hub alone."""
    busy = steal = total = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
                continue
            ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
            busy += ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]
            steal += ticks[7]
            total += sum(ticks)
    return busy, steal, total


def _drain(r: Run) -> None:
    """Wait until late deliveries stop (no change for 1 s, at most
    :data:`DRAIN_MAX_S`), then drop them, so that none counts in the next step."""
    last, still_since = -1, time.monotonic()
    deadline = time.monotonic() + DRAIN_MAX_S
    while time.monotonic() < deadline:
        st = r.pool.statuses()
        now = sum(s.get("delivered", 0) + s.get("receipts", 0) for s in st)
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= 1.0:
            break
        time.sleep(0.1)
    r.pool.call_all("collect")


def _step_figures(res: dict[str, Any], counters: dict[str, int], rate: float) -> dict[str, Any]:
    window = res["window_seconds"] or 0.0
    cpu_fraction = res["cpu_seconds"] / window if window else None
    step = {
        "rate_offered": rate,
        "rate": res["rate"],
        "sent": res["sent"],
        "expected": counters.get("expected", 0),
        "delivered": res["delivered"],
        "lost": max(0, counters.get("expected", 0) - counters.get("delivered", 0)),
        "complete": res["complete"],
        "rate_limited": res["rate_limited"],
        "errors": res["errors"],
        **{k: res[k] for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")},
        "window_seconds": window,
        "hub_cpu_seconds": res["cpu_seconds"],
        "hub_cpu_percent": round(cpu_fraction * 100, 1) if cpu_fraction is not None else None,
        "cpu_us_per_msg": res["cpu_us_per_msg"],
        "send_lag_p99_ms": res["send_lag_p99_ms"],
        "loadgen_cpu_util": res["loadgen_cpu_util"],
    }
    for name in ("postgres", "redis"):
        if f"{name}_cpu_us_per_msg" in res:
            step[f"{name}_cpu_us_per_msg"] = res[f"{name}_cpu_us_per_msg"]
    return step


def run(r: Run) -> dict[str, Any]:
    args = r.args
    bound = args.p99_ms
    seconds = args.seconds = args.step_seconds or args.seconds
    if args.rate:
        r.notes.append("capacity: --rate is ignored (the search sets the rate; see --start-rate)")
    if args.closed_loop:
        r.notes.append("capacity: --closed-loop is ignored")
    args.rate = None
    pop = pairs_population(r, args.pairs)
    r.set_population(pop)
    r.start_hubs(1)
    r.enroll()
    services = r.using_services()
    r.connect(r.hub_device_urls(), "hub: connect")

    steps: list[dict[str, Any]] = []
    full: dict[float, dict[str, Any]] = {}
    history: list[tuple[float, bool]] = []
    stopped = f"--max-steps {args.max_steps} run"
    while len(history) < args.max_steps:
        rate, why_end = next_rate(history, args.start_rate, args.max_rate)
        if rate is None:
            stopped = why_end
            break
        passed = False
        for attempt in range(1 + max(0, args.confirm)):
            label = f"step {len(history) + 1}: {rate:g}/s" + (" again" if attempt else "")
            ticks0 = cpus_ticks(r.server_cpus)
            res = r.message_phase(label, r.hub_pids, rate, seconds, args.payload, services)
            ticks1 = cpus_ticks(r.server_cpus)
            step = _step_figures(res, r.last_counters, rate)
            total = max(1, ticks1[2] - ticks0[2])
            step["server_cpus_busy_percent"] = round(100 * (ticks1[0] - ticks0[0]) / total, 1)
            step["server_cpus_steal_percent"] = round(100 * (ticks1[1] - ticks0[1]) / total, 1)
            why = verdict(step, bound)
            passed = not why
            step.update(step=len(history) + 1, attempt=attempt + 1, passed=passed, why=why)
            steps.append(step)
            full[rate] = res
            r.progress.note(
                f"[{label}] p99 {step['p99_ms']} ms, lost {step['lost']}, hub CPU "
                f"{step['hub_cpu_percent']} % → {'pass' if passed else 'FAIL: ' + '; '.join(why)}"
            )
            if passed:
                break
            _drain(r)
        history.append((rate, passed))
    r.disconnect()

    good, bad = bracket(history)
    at = next((s for s in steps if s["rate_offered"] == good and s["passed"]), None)
    capacity = {**_capacity(at, bad, stopped, args, bound, seconds), "steps": steps}
    if bad is not None:
        first_bad = [s for s in steps if s["rate_offered"] == bad][-1]
        util = first_bad["loadgen_cpu_util"] or 0.0
        if util >= LOADGEN_BUSY:
            r.notes.append(
                f"capacity: at {bad:g}/s the load generator used {util:.0%} of its CPUs: that step may "
                "have failed for the load generator, and the capacity be a lower bound of the hub's"
            )
        others = first_bad["server_cpus_busy_percent"] - (first_bad["hub_cpu_percent"] or 0.0)
        if others >= SHARED_BY_OTHERS:
            r.notes.append(
                f"capacity: at {bad:g}/s the hub used {first_bad['hub_cpu_percent']} % of its CPU and "
                f"other processes {others:.0f} % more: the hub shared its core, and its capacity on a "
                "core of its own is higher (msgs_per_s_per_full_core is the hub's CPU alone)"
            )
    if at is None:
        r.notes.append(f"capacity: no step passed (p99 ≤ {bound:g} ms, nothing lost)")
    hub = dict(full[good] if good is not None else full[steps[0]["rate_offered"]])
    hub["lost"] = (at or steps[0])["lost"]
    return {
        "mode": "capacity-search",
        "hub": hub,
        "relay": {},
        "ratio_cpu": None,
        "capacity": capacity,
        "params": {"pairs": args.pairs, "payload_bytes": args.payload, "hub_processes": 1},
    }


def _capacity(
    at: dict[str, Any] | None, bad: float | None, stopped: str, args: Any, bound: float, seconds: float
) -> dict[str, Any]:
    traffic = device_traffic(args.month_messages, args.month_users, args.peak_factor)
    per_device = traffic["peak_msgs_per_s_per_device"]
    out: dict[str, Any] = {
        "p99_bound_ms": bound,
        "start_rate": args.start_rate,
        "step_seconds": seconds,
        "max_rate": args.max_rate,
        "max_steps": args.max_steps,
        "confirm": args.confirm,
        "tolerance": TOLERANCE,
        "stopped": stopped,
        "capacity_msgs_per_s": None,
        "first_failing_rate": bad,
        "hub_cpu_percent_at_capacity": None,
        "cpu_us_per_msg_at_capacity": None,
        "p99_ms_at_capacity": None,
        "msgs_per_s_per_full_core": None,
        "traffic": traffic,
        "devices_per_core": None,
        "devices_per_full_core": None,
    }
    if at is not None:
        cap = at["rate_offered"]
        cpu = at["hub_cpu_percent"]
        full_core = round(cap / (cpu / 100), 1) if cpu else None
        out.update(
            capacity_msgs_per_s=cap,
            hub_cpu_percent_at_capacity=cpu,
            cpu_us_per_msg_at_capacity=at["cpu_us_per_msg"],
            p99_ms_at_capacity=at["p99_ms"],
            msgs_per_s_per_full_core=full_core,
            devices_per_core=int(cap / per_device),
            devices_per_full_core=int(full_core / per_device) if full_core else None,
        )
        for name in ("postgres", "redis"):  # services: their CPU is not the hub's core
            if f"{name}_cpu_us_per_msg" in at:
                out[f"{name}_cpu_us_per_msg_at_capacity"] = at[f"{name}_cpu_us_per_msg"]
    return out


def table(report: dict[str, Any]) -> list[str]:
    """Each step, then the capacity and the devices per core."""
    c = report["capacity"]
    lines = [
        "",
        f"capacity search: steps of {c['step_seconds']:g} s, pass = nothing lost or refused and "
        f"p99 ≤ {c['p99_bound_ms']:g} ms",
        f"  {'offered/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'delivered':>11}{'lost':>6}"
        f"{'hub CPU':>9}{'CPU busy':>9}{'µs/msg':>9}{'loadgen':>9}  verdict",
    ]
    for s in c["steps"]:
        lines.append(
            f"  {s['rate_offered']:>10,.0f}{_n(s['p50_ms']):>9}{_n(s['p99_ms']):>9}{_n(s['max_ms']):>9}"
            f"{s['delivered']:>11,}{s['lost']:>6,}{_n(s['hub_cpu_percent'], '%'):>9}"
            f"{_n(s.get('server_cpus_busy_percent'), '%'):>9}"
            f"{_n(s['cpu_us_per_msg']):>9}{_n(s['loadgen_cpu_util']):>9}  "
            + ("again: " if s["attempt"] > 1 else "")
            + ("pass" if s["passed"] else "FAIL: " + "; ".join(s["why"]))
        )
    lines.append(
        "  hub CPU: the hub process's share of one core; CPU busy: its CPU's, by every process "
        "(over the step and its warm-up); loadgen: the load generator's share of its CPUs"
    )
    lines.append(f"  search ended: {c['stopped']}")
    if c["capacity_msgs_per_s"] is None:
        lines.append("  capacity: no step passed")
        return lines
    t = c["traffic"]
    lines += [
        f"  capacity: {c['capacity_msgs_per_s']:,.0f} messages/s on one hub process "
        f"(p99 {c['p99_ms_at_capacity']} ms; hub CPU {c['hub_cpu_percent_at_capacity']} %, "
        f"{c['cpu_us_per_msg_at_capacity']} µs per message; "
        + (
            f"first failing rate {c['first_failing_rate']:,.0f}/s)"
            if c["first_failing_rate"]
            else "no step failed)"
        ),
        f"  on a fully used core: {_n(c['msgs_per_s_per_full_core'])} messages/s",
    ]
    if "postgres_cpu_us_per_msg_at_capacity" in c:
        lines.append(
            f"  beside the hub's core: PostgreSQL {_n(c['postgres_cpu_us_per_msg_at_capacity'])} µs, "
            f"Redis {_n(c.get('redis_cpu_us_per_msg_at_capacity'))} µs of CPU per message"
        )
    lines += [
        f"  traffic per device: {t['assumption']}",
        f"  devices per core at that traffic: {c['devices_per_core']:,} "
        f"({_n(c['devices_per_full_core'])} on a fully used core); messages only: connections' "
        "memory and reconnection storms bind first (connections, auth-storm)",
    ]
    return lines


def _n(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return (f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}") + unit
    return f"{v:,}{unit}"


def plot(report: dict[str, Any], path: Path) -> None:
    """Latency (p50, p99, max) against the offered rate, with the bound and
    the capacity; the hub's CPU share and CPU per message against it."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    c = report["capacity"]
    # the lines through each rate's last attempt; every attempt's p99 as a point
    final = {s["rate_offered"]: s for s in c["steps"]}
    steps = [final[rate] for rate in sorted(final)]
    rates = sorted(final)
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    cap = c["capacity_msgs_per_s"]
    fig.suptitle(
        f"miss-bench capacity ({report['backend']}, one hub process): "
        + (f"{cap:,.0f} messages/s, {c['devices_per_core']:,} devices per core" if cap else "no step passed")
        + "\n"
        + "\n".join(textwrap.wrap(c["traffic"]["assumption"], 150)),
        fontsize=10,
    )

    ax = axes[0]
    for key, style, label in (("p50_ms", ":", "p50"), ("p99_ms", "-", "p99"), ("max_ms", "--", "max")):
        ax.plot(rates, [s[key] for s in steps], linestyle=style, color="tab:gray", label=label)
    ok = [s for s in c["steps"] if s["passed"]]
    ko = [s for s in c["steps"] if not s["passed"]]
    ax.scatter([s["rate_offered"] for s in ok], [s["p99_ms"] for s in ok], color="tab:green", zorder=3)
    if ko:
        ax.scatter(
            [s["rate_offered"] for s in ko],
            [s["p99_ms"] or 0 for s in ko],
            color="tab:red",
            marker="x",
            zorder=3,
            label="failed step",
        )
    ax.axhline(c["p99_bound_ms"], color="black", linestyle=":", label=f"bound p99 {c['p99_bound_ms']:g} ms")
    if cap:
        ax.axvline(cap, color="tab:green", alpha=0.5, label=f"capacity {cap:,.0f}/s")
    _rate_axis(ax, rates)
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (messages/s)")
    ax.set_ylabel("scheduled send → opened (ms)")
    ax.set_title("latency against the offered rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)

    ax = axes[1]
    ax.plot(rates, [s["hub_cpu_percent"] for s in steps], marker="o", color="tab:red", label="hub CPU %")
    ax.plot(
        rates,
        [s.get("server_cpus_busy_percent") for s in steps],
        marker="^",
        color="tab:orange",
        label="its CPU busy, every process %",
    )
    ax.legend(fontsize=8, loc="upper left")
    _rate_axis(ax, rates)
    ax.set_xlabel("offered rate (messages/s)")
    ax.set_ylabel("hub CPU (% of one core)", color="tab:red")
    ax.grid(True, which="both", alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(
        rates, [s["cpu_us_per_msg"] for s in steps], marker="s", color="tab:blue", label="µs per message"
    )
    ax2.set_ylabel("hub CPU per message (µs)", color="tab:blue")
    ax.set_title("hub CPU against the offered rate")

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _rate_axis(ax: Any, rates: list[float]) -> None:
    """A log axis of offered rates, labelled at the steps' rates."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log")
    ax.set_xticks(rates)
    ax.set_xticklabels([f"{r:,.0f}" for r in rates], rotation=45, fontsize=8)
    ax.xaxis.set_minor_locator(NullLocator())
