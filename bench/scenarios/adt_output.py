"""The ``adt`` scenario's figures (:func:`figures`), its lines under the
bench's table (:func:`table`) and its PNG (:func:`plot`). See
:mod:`bench.scenarios.adt` for what is measured."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..adt_feed import FeedMessage, Gp
from ..report import figure as _f
from ..stats import encoded, latency_summary, percentile_curve, timeseries

if TYPE_CHECKING:
    from .adt import Tally

__all__ = ["TARGET_P99_ACK_MS", "figures", "plot", "table"]

#: The issue's target: p99 ADT → ACK at most this (ms).
TARGET_P99_ACK_MS = 200.0
#: Missing notices listed by control id in the report (the count is whole).
LISTED = 20


def _per_msg(seconds: float, n: int, scale: float) -> float | None:
    return round(seconds * scale / n, 3) if n else None


def figures(
    *,
    messages: list[FeedMessage],
    tally: Tally,
    t0: int,
    window: float,
    cpu: dict[str, float],
    main: dict[str, float],
    load_cpu: float,
    complete: bool,
    warm: dict[str, Any],
    adt_rss: dict[str, int | None],
    gps: list[Gp],
) -> dict[str, Any]:
    """The scenario's part of the report: ``hub`` (the generic table's
    rows), an empty ``relay``, and ``adt``."""
    acked = [m for m in messages if m.index in tally.acks]
    ack_us = [max(1, (tally.acked[m.index] - tally.due[m.index]) // 1000) for m in acked]
    opened = [m for m in messages if m.match in tally.opened and m.index in tally.due]
    open_us = [max(1, (tally.opened[m.match][0] - tally.due[m.index]) // 1000) for m in opened]
    lag_us = [
        max(1, (tally.sent[m.index] - tally.due[m.index]) // 1000) for m in messages if m.index in tally.sent
    ]
    ack, ack_h = latency_summary(ack_us, "ack_")
    opn, opn_h = latency_summary(open_us, "opened_")
    lag, _ = latency_summary(lag_us, "send_lag_")
    codes = Counter(tally.acks[m.index].code for m in acked)
    notes = Counter(f"{tally.acks[m.index].code} {tally.acks[m.index].note}" for m in acked)
    refusals = Counter(tally.acks[m.index].reason for m in acked if tally.acks[m.index].code != "AA")
    missing = [m for m in messages if m.match not in tally.opened]
    wrong_gp = sum(1 for m in opened if tally.opened[m.match][1] != m.rpps)
    n = len(acked)
    all_aa = n == len(messages) and codes.get("AA", 0) == n
    p99 = ack["ack_p99_ms"]
    errors: dict[str, int] = dict(tally.errors)
    for reason, count in refusals.items():
        errors[f"ACK {reason or 'refused'}"] = count
    hub = {
        # the unit of work: an ADT message whose notice was opened by its GP's device
        "delivered": len(opened),
        "messages": len(messages),
        "window_seconds": round(window, 3),
        "rate": round(len(opened) / window, 1) if window > 0 else 0.0,
        "cpu_seconds": round(cpu["hub"], 3),
        "cpu_us_per_msg": _per_msg(cpu["hub"], n, 1e6),
        "cpu_us_per_msg_event_loop": _per_msg(main["hub"], n, 1e6),
        "cpu_us_per_msg_other_threads": _per_msg(max(0.0, cpu["hub"] - main["hub"]), n, 1e6),
        "lost": len(missing),
        "complete": complete and not missing,
        "errors": errors,
        "send_lag_p99_ms": lag["send_lag_p99_ms"],
        "loadgen_cpu_util": round(load_cpu / window, 3) if window > 0 else None,
    }
    adt = {
        "messages": len(messages),
        "acked": n,
        "ack_codes": dict(codes),
        "ack_notes": dict(notes),
        "all_aa": all_aa,
        **ack,
        **opn,
        "notices_expected": len(messages),
        "notices_delivered": len(messages) - len(missing),
        "notices_missing": len(missing),
        "missing": [
            {
                "control_id": m.control_id,
                "trigger": m.trigger,
                "ack": f"{tally.acks[m.index].code} {tally.acks[m.index].note}"
                if m.index in tally.acks
                else None,
            }
            for m in missing[:LISTED]
        ],
        "duplicates": tally.duplicates,
        "wrong_gp": wrong_gp,
        "complete": hub["complete"],
        "cpu_seconds": round(cpu["adt"], 3),
        "cpu_ms_per_msg": _per_msg(cpu["adt"], n, 1e3),
        "cpu_ms_per_msg_event_loop": _per_msg(main["adt"], n, 1e3),
        "hub_cpu_ms_per_msg": _per_msg(cpu["hub"], n, 1e3),
        # its peak includes the profile's KDF at start-up (Argon2id), its RSS at the end does not
        "peak_rss_kib": adt_rss["VmHWM"],
        "rss_kib": adt_rss["VmRSS"],
        "target_p99_ack_ms": TARGET_P99_ACK_MS,
        "within_target": p99 is not None and p99 <= TARGET_P99_ACK_MS,
        **lag,
        "mix": dict(Counter(m.trigger for m in messages)),
        "deaths": sum(m.event == "death" for m in messages),
        "gps": len(gps),
        "warmup": warm,
        "curves": {"ack": percentile_curve(ack_h), "opened": percentile_curve(opn_h)},
        "histograms": {"ack": encoded(ack_h), "opened": encoded(opn_h)},
        "timeseries": {
            "ack": timeseries(
                [tally.due[m.index] for m in acked], [tally.acked[m.index] for m in acked], ack_us, t0
            ),
            "opened": timeseries(
                [tally.due[m.index] for m in opened], [tally.opened[m.match][0] for m in opened], open_us, t0
            ),
        },
    }
    return {"mode": "fixed-rate", "unit": "ADT message", "hub": hub, "relay": {}, "adt": adt}


def table(report: dict[str, Any]) -> list[str]:
    """The ADT figures, under the bench's table."""
    a, p = report["adt"], report["params"]
    mix = a["mix"]
    lines = [
        "",
        f"adt: {a['messages']:,} ADT messages (A01 {mix.get('A01', 0):,}, A02 {mix.get('A02', 0):,}, "
        f"A03 {mix.get('A03', 0):,} of which {a['deaths']:,} deaths) at {p['rate']:g}/s over "
        f"{p['mllp_connections']} MLLP connection(s), to {a['gps']} GPs",
        f"  {'':26}{'p50':>10}{'p90':>10}{'p99':>10}{'p99.9':>10}{'max':>10}",
    ]
    for label, prefix in (("ADT → ACK (ms)", "ack_"), ("ADT → notice opened (ms)", "opened_")):
        cells = "".join(f"{_f(a[f'{prefix}{k}_ms']):>10}" for k in ("p50", "p90", "p99", "p999", "max"))
        lines.append(f"  {label:26}{cells}")
    notes = ", ".join(f"{k}: {v:,}" for k, v in sorted(a["ack_notes"].items(), key=lambda kv: -kv[1]))
    lines += [
        f"  ACKs: {a['acked']:,} of {a['messages']:,} ({notes or 'none'})"
        + ("" if a["all_aa"] else "  NOT ALL AA"),
        f"  notices opened at the GP's device: {a['notices_delivered']:,} of {a['notices_expected']:,}"
        f"; missing {a['notices_missing']:,}, duplicates {a['duplicates']:,}, "
        f"at the wrong GP {a['wrong_gp']:,}",
        f"  CPU per message: miss-adt {_f(a['cpu_ms_per_msg'], ' ms')} "
        f"(event loop {_f(a['cpu_ms_per_msg_event_loop'], ' ms')}), "
        f"hub {_f(a['hub_cpu_ms_per_msg'], ' ms')}; "
        f"miss-adt RSS {_f(a['rss_kib'], ' KiB')} (peak {_f(a['peak_rss_kib'], ' KiB')})",
        f"  target: p99 ADT → ACK at most {a['target_p99_ack_ms']:g} ms: "
        f"{'met' if a['within_target'] else 'NOT MET'} ({_f(a['ack_p99_ms'], ' ms')})",
    ]
    if a["missing"]:
        shown = ", ".join(f"{m['control_id']} ({m['ack']})" for m in a["missing"][:5])
        lines.append(f"  missing notices, first ones: {shown}")
    return lines


def plot(report: dict[str, Any], path: Path) -> None:
    """Latency distributions (ADT → ACK, ADT → notice opened), latency over
    time and throughput over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter

    path.parent.mkdir(parents=True, exist_ok=True)
    a, p = report["adt"], report["params"]
    series = (("ADT → ACK", "ack", "tab:red"), ("ADT → notice opened", "opened", "tab:blue"))
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    fig.suptitle(
        f"miss-bench adt ({report['backend']}): {a['messages']:,} ADT messages at {p['rate']:g}/s, "
        f"{p['mllp_connections']} MLLP connection(s), {a['gps']} GPs; p99 ADT → ACK {_f(a['ack_p99_ms'])} ms "
        f"(target {a['target_p99_ack_ms']:g})\nCPU per message: miss-adt {_f(a['cpu_ms_per_msg'])} ms, "
        f"hub {_f(a['hub_cpu_ms_per_msg'])} ms; notices opened {a['notices_delivered']:,} of "
        f"{a['notices_expected']:,}; ACKs {a['ack_codes']}"
    )
    ax = axes[0]
    for label, key, color in series:
        curve = a["curves"][key]
        if curve:
            xs = [1 / (1 - min(q, 99.999) / 100) for q, _ in curve]
            ax.plot(xs, [v for _, v in curve], marker="o", ms=3, color=color, label=label)
    top = max((v for _, key, _ in series for _, v in a["curves"][key]), default=0.0)
    if top >= a["target_p99_ack_ms"] / 4:  # else it would flatten the curves; the title says it
        ax.axhline(a["target_p99_ack_ms"], color="grey", linestyle=":", label="target (p99 ADT → ACK)")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator([1, 10, 100, 1000, 10000]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{100 - 100 / x:g}%" if x > 1 else "0%"))
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency from the due time (ms)")
    ax.set_title("latency distribution")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)

    ax = axes[1]
    for label, key, color in series:
        ts = a["timeseries"][key]
        if ts.get("t_s"):
            ax.plot(ts["t_s"], ts["p50_ms"], color=color, label=f"{label} p50")
            ax.plot(ts["t_s"], ts["p99_ms"], color=color, linestyle="--", label=f"{label} p99")
    ax.set_xlabel("seconds since the first message was due")
    ax.set_ylabel("latency (ms)")
    ax.set_title("latency over time (by due time)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)

    ax = axes[2]
    for label, key, color in (("ACKs", "ack", "tab:red"), ("notices opened", "opened", "tab:blue")):
        ts = a["timeseries"][key]
        if ts.get("t_s"):
            ax.plot(ts["t_s"], ts["per_s"], color=color, label=label, drawstyle="steps-mid")
    ax.axhline(p["rate"], color="grey", linestyle=":", label="offered rate")
    ax.set_xlabel("seconds since the first message was due")
    ax.set_ylabel("per second")
    ax.set_title("throughput over time")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
