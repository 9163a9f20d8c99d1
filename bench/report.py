"""The bench's outputs: a table on standard output, the JSON report, and
one PNG with the latency distribution, latency over time and throughput
over time, hub and relay side by side (``flood``: the hub with and without
the flood, and the relay)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["figure", "table", "write_json", "write_plot"]


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        text = f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    elif isinstance(v, int):
        text = f"{v:,}"
    else:
        text = str(v)
    return text + unit


def figure(v: Any, unit: str = "") -> str:
    """A scenario table's cell: ``-`` for none, a float to 2 decimals below
    1,000 and to units above, an int with thousands separators."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return (f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}") + unit
    return f"{v:,}{unit}"


#: Rows shown only when one side is not zero.
IF_NONZERO = {"rate_limited"}

ROWS: list[tuple[str, str, str]] = [
    ("delivered", "delivered", ""),
    ("rate", "rate (per s)", ""),
    ("cpu_seconds", "CPU seconds", " s"),
    ("cpu_us_per_msg", "CPU per unit", " µs"),
    ("cpu_us_per_msg_event_loop", "  in the event loop", " µs"),
    ("cpu_us_per_msg_other_threads", "  in other threads", " µs"),
    ("frames_per_msg", "WebSocket frames per unit", ""),
    ("postgres_cpu_us_per_msg", "PostgreSQL CPU per unit", " µs"),
    ("redis_cpu_us_per_msg", "Redis CPU per unit", " µs"),
    ("p50_ms", "latency p50", " ms"),
    ("p90_ms", "latency p90", " ms"),
    ("p99_ms", "latency p99", " ms"),
    ("p99_ms_no_flood", "  p99 without the flood", " ms"),
    ("p999_ms", "latency p99.9", " ms"),
    ("max_ms", "latency max", " ms"),
    ("accept_p50_ms", "send→accepted p50", " ms"),
    ("accept_p99_ms", "send→accepted p99", " ms"),
    ("drain_seconds", "drain time", " s"),
    ("auth_per_s", "authentications per s", ""),
    ("auth_capacity_per_s", "  per s on one full core", ""),
    ("connect_per_s", "connections per s", ""),
    ("connections", "connections held", ""),
    ("rss_kib_per_connection", "RSS per connection", " KiB"),
    ("rate_limited", "rate_limited (then resent)", ""),
    ("lost", "messages lost", ""),
    ("send_lag_p99_ms", "sender lag p99", " ms"),
    ("loadgen_cpu_util", "load generator CPU", ""),
]


def _section(
    hub: dict[str, Any], relay: dict[str, Any], ratio: Any, names: tuple[str, str] = ("hub", "relay")
) -> list[str]:
    """Rows of figures, two sides side by side (by default the hub and the
    relay; the team ``fanout``: the hub's team messages and its 1:1 ones)."""
    lines = [f"  {'':28}{names[0]:>14}{names[1]:>14}{names[0] + '/' + names[1]:>12}"]
    for key, label, unit in ROWS:
        if key not in hub and key not in relay:
            continue
        if key in IF_NONZERO and not (hub.get(key) or relay.get(key)):
            continue
        extra = ""
        if key == "cpu_us_per_msg" and ratio is not None:
            extra = f"{ratio:>12.2f}"
        lines.append(f"  {label:28}{_fmt(hub.get(key), unit):>14}{_fmt(relay.get(key), unit):>14}{extra}")
    for name, side in zip(names, (hub, relay), strict=True):
        if side.get("frames_per_msg_by_type"):
            shown = ", ".join(f"{k} {v:.2f}" for k, v in side["frames_per_msg_by_type"].items())
            lines.append(f"  {name} frames per unit: {shown}")
        if side.get("errors"):
            shown = ", ".join(f"{k}: {v}" for k, v in list(side["errors"].items())[:6])
            lines.append(f"  {name} errors: {shown}")
        if side.get("complete") is False:
            lines.append(f"  {name}: NOT COMPLETE (deliveries or receipts missing 15 s after the last send)")
    return lines


def table(report: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in report.get("params", {}).items())
    rate = f"{report['rate_offered']:g}/s offered" if report.get("rate_offered") else "closed loop"
    if report["mode"] in ("storm", "drain", "capacity-search"):
        rate = report["mode"]
    head = f"miss-bench {report['scenario']} ({report['backend']}): {rate}, {report['seconds']:g} s" + (
        f"; {params}" if params else ""
    )
    unit = report.get("unit", "message")
    lines = [
        head,
        f"  unit of work: one {unit}; servers on CPU {report['pinning']['servers_cpus']}, "
        f"load on CPU {report['pinning']['loadgen_cpus']}",
        "",
    ]
    # The team fanout: the hub's team messages beside its 1:1 ones, no relay.
    team = "one_to_one" in report
    names = ("team", "1:1") if team else ("hub", "relay")
    if team:
        lines += _section(report["hub"], report["one_to_one"]["hub"], report["team"]["cpu_ratio"], names)
    else:
        lines += _section(report["hub"], report["relay"], report.get("ratio_cpu"))
    if report.get("rounds") and "one_node" in report:
        shown = "; ".join(
            f"{_fmt(o.get('node_cost'))} ÷ {_fmt(o.get('split_cost'))} = {_fmt(o.get('crossing_cost'))}"
            for o in report["rounds"]
        )
        lines.append(
            f"  two nodes ÷ one, ÷ two relays ÷ one, in each round (the median round shown): {shown}"
        )
    elif report.get("rounds"):
        shown = "; ".join(
            f"{_fmt(o['hub_cpu_us_per_msg'])} ÷ {_fmt(o['relay_cpu_us_per_msg'])} = {_fmt(o['ratio_cpu'])}"
            for o in report["rounds"]
        )
        lines.append(
            f"  CPU per unit (µs) in each round, {names[0]} ÷ {names[1]} (the median round shown): {shown}"
        )
    if "one_node" in report:
        lines += [
            "",
            "the same pairs and load, on one node (hub) and on two relays:",
            *_section(report["one_node"], report["relay_split"], None, ("one node", "2 relays")),
            f"  two nodes ÷ one: CPU {_fmt(report.get('node_cost'))} (PostgreSQL "
            f"{_fmt(report.get('postgres_node_cost'))}); two relays ÷ one: {_fmt(report.get('split_cost'))}"
            f" (splitting the load); so the crossing: {_fmt(report.get('crossing_cost'))}",
        ]
    if "closed_loop" in report:
        c = report["closed_loop"]
        lines += [
            "",
            "closed loop (maximum rate):",
            *_section(c["hub"], c["relay"], c.get("ratio_cpu"), names),
        ]
    if "no_flood" in report:
        q = report["no_flood"]
        lines += [
            "",
            "without the flood (same hub, same pairs):",
            *_section(q["hub"], report["relay"], q["ratio_cpu"]),
        ]
    if "flood" in report:
        f = report["flood"]
        lines += [
            "",
            f"flood: {_fmt(f['sent'])} messages written by the flooder in {_fmt(f['send_seconds'])} s "
            f"(per-device budget {f['rate_device']})",
            f"  accepted {_fmt(f['accepted'])}, rate_limited {_fmt(f['rate_limited'])}, "
            f"unanswered {_fmt(f['unanswered'])}; delivered to the victim {_fmt(f['delivered'])}",
            f"  pairs' p99 with ÷ without the flood: {_fmt(f['p99_ratio'])}",
        ]
        if f.get("other_errors"):
            lines.append(
                "  flooder, other answers: " + ", ".join(f"{k}: {v}" for k, v in f["other_errors"].items())
            )
    if report.get("ratio_rss") is not None:
        lines.append(f"  RSS per connection, hub/relay: {report['ratio_rss']:.2f}")
    for note in report.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def write_plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter

    path.parent.mkdir(parents=True, exist_ok=True)
    sides = [("hub", report["hub"], "tab:red"), ("relay", report["relay"], "tab:blue")]
    versus = "hub vs bare relay"
    if "one_to_one" in report:
        sides = [
            ("hub, team messages", report["hub"], "tab:red"),
            ("hub, 1:1 messages", report["one_to_one"]["hub"], "tab:blue"),
        ]
        versus = "team vs 1:1 messages on one hub"
    if "one_node" in report:
        sides = [
            ("two nodes", report["hub"], "tab:red"),
            ("one node", report["one_node"], "tab:orange"),
            ("one relay", report["relay"], "tab:blue"),
            ("two relays", report["relay_split"], "tab:cyan"),
        ]
        versus = "two nodes vs one, and two relays vs one"
    if "no_flood" in report:
        sides = [
            ("hub, flood", report["hub"], "tab:red"),
            ("hub, no flood", report["no_flood"]["hub"], "tab:orange"),
            ("relay", report["relay"], "tab:blue"),
        ]
        versus = "hub with and without the flood vs bare relay"
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    unit = report.get("unit", "message")
    title = f"miss-bench {report['scenario']} ({report['backend']}, {report['mode']})"
    note = ""
    if "team" in report:
        from .scenarios.fanout import plot_note

        note = "\n" + plot_note(report)
    fig.suptitle(title + f": latency and throughput per {unit}, {versus}" + note)

    ax = axes[0]
    for name, side, color in sides:
        curve = side.get("curve") or []
        if curve:
            xs = [1 / (1 - min(p, 99.999) / 100) for p, _ in curve]
            ax.plot(xs, [v for _, v in curve], marker="o", ms=3, color=color, label=name)
    ax.set_xscale("log")
    ticks = [1, 10, 100, 1000, 10000, 100000]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{100 - 100 / x:g}%" if x > 1 else "0%"))
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.set_title("latency distribution")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()

    ax = axes[1]
    for name, side, color in sides:
        ts = side.get("timeseries") or {}
        if ts.get("t_s"):
            ax.plot(ts["t_s"], ts["p50_ms"], color=color, label=f"{name} p50")
            ax.plot(ts["t_s"], ts["p99_ms"], color=color, linestyle="--", label=f"{name} p99")
    ax.set_xlabel("seconds since the start of the load")
    ax.set_ylabel("latency (ms)")
    ax.set_title("latency over time (by send time)")
    ax.grid(True, alpha=0.3)
    ax.legend()

    ax = axes[2]
    for name, side, color in sides:
        ts = side.get("timeseries") or {}
        if ts.get("t_s"):
            ax.plot(ts["t_s"], ts["per_s"], color=color, label=name, drawstyle="steps-mid")
    ax.set_xlabel("seconds since the start of the load")
    ax.set_ylabel(f"{unit}s completed per second")
    ax.set_title("throughput over time")
    ax.grid(True, alpha=0.3)
    ax.legend()

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
