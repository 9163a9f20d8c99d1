"""The ``attachments`` scenario's report: its table and its plots
(attachments.py measures; this module only presents the JSON report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..report import figure as _f
from .attachments import MB

__all__ = ["plot", "table"]


def table(report: dict[str, Any]) -> list[str]:
    """The lines of the attachment figures, for the report's table."""
    h, b, a, p = report["hub"], report["http_baseline"], report["attachments"], report["params"]
    rows = [
        ("upload", "up_mb_per_s", " MB/s", None),
        ("download", "down_mb_per_s", " MB/s", None),
        ("CPU per MB, upload", "cpu_ms_per_mb_up", " ms", "ratio_cpu_up"),
        ("CPU per MB, download", "cpu_ms_per_mb_down", " ms", "ratio_cpu_down"),
        ("CPU per MB, both", "cpu_ms_per_mb", " ms", "ratio_cpu"),
        ("  in the event loop", "cpu_ms_per_mb_event_loop", " ms", None),
        ("  in other threads", "cpu_ms_per_mb_other_threads", " ms", None),
        ("CPU seconds", "cpu_seconds", " s", None),
        ("peak RSS (VmHWM)", "peak_rss_kib", " KiB", None),
        ("RSS before the load", "rss_kib_before", " KiB", None),
        ("postgres CPU per MB", "postgres_cpu_ms_per_mb", " ms", None),
        ("files verified", "delivered", "", None),
        ("503 (busy) answers", "http_busy", "", None),
        ("429 (rate_download) answers", "http_limited", "", None),
        ("load generator CPU", "loadgen_cpu_util", "", None),
    ]
    lines = [
        "",
        f"attachments: {p['pairs']} pairs x {p['messages']} messages x {p['files']} files of "
        f"{p['file_mb']:g} MB ({a['cipher_bytes_per_file']:,} bytes of ciphertext each); MB = 10^6 bytes",
        f"  {'':28}{'hub':>14}{'HTTP baseline':>16}{'hub/baseline':>14}",
    ]
    for label, key, unit, rkey in rows:
        if key not in h and key not in b:
            continue
        extra = f"{_f(report.get(rkey)):>14}" if rkey else ""
        lines.append(f"  {label:28}{_f(h.get(key), unit):>14}{_f(b.get(key), unit):>16}{extra}")
    lines.append(
        f"  bar: hub CPU per MB at most {a['bar']:g}x the baseline's: "
        f"{'met' if a['within_bar'] else 'NOT MET'} ({_f(report['ratio_cpu'])})"
    )
    if a.get("rounds"):
        shown = "; ".join(
            f"{_f(o['hub_cpu_ms_per_mb'])} / {_f(o['baseline_cpu_ms_per_mb'])} = {_f(o['ratio_cpu'])}"
            for o in a["rounds"]
        )
        lines.append(f"  CPU ms per MB in each round, hub / baseline (the median round shown): {shown}")
    for name, side in (("hub", h), ("baseline", b)):
        if side.get("errors"):
            lines.append(f"  {name} errors: {side['errors']}")
        if not side.get("complete"):
            lines.append(f"  {name}: NOT COMPLETE ({side['delivered']} of {side['files']} files verified)")
    return lines


def plot(report: dict[str, Any], path: Path) -> None:
    """MB/s and CPU per MB, hub beside the baseline, and throughput over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    h, b, p = report["hub"], report["http_baseline"], report["params"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    fig.suptitle(
        f"miss-bench attachments ({report['backend']}): {p['pairs']} pairs x {p['messages']} messages x "
        f"{p['files']} files of {p['file_mb']:g} MB, hub vs plain HTTP\n"
        f"hub CPU per MB ÷ baseline's: {report['ratio_cpu']} (bar {report['attachments']['bar']:g})"
    )
    width = 0.38

    def bars(ax: Any, keys: list[tuple[str, str]], ylabel: str, title: str) -> None:
        xs = range(len(keys))
        for off, (name, side, color) in (
            (-width / 2, ("hub", h, "tab:red")),
            (width / 2, ("HTTP baseline", b, "tab:blue")),
        ):
            vals = [side.get(k) or 0 for _, k in keys]
            rects = ax.bar([x + off for x in xs], vals, width, label=name, color=color)
            ax.bar_label(rects, labels=[f"{v:.3g}" for v in vals], fontsize=8)
        ax.set_xticks(list(xs), [label for label, _ in keys])
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend()

    bars(
        axes[0], [("upload", "up_mb_per_s"), ("download", "down_mb_per_s")], "MB/s (ciphertext)", "throughput"
    )
    bars(
        axes[1],
        [("upload", "cpu_ms_per_mb_up"), ("download", "cpu_ms_per_mb_down"), ("both", "cpu_ms_per_mb")],
        "server CPU ms per MB moved",
        "CPU per MB",
    )

    ax = axes[2]
    for name, side, color in (("hub", h, "tab:red"), ("HTTP baseline", b, "tab:blue")):
        offset = 0.0
        for phase, style in (("up", "-"), ("down", "--")):
            pts = (side.get("timeseries") or {}).get(phase) or []
            ts, rates, last_t, last_b = [], [], 0.0, 0
            for t, n in pts:
                if t > last_t:
                    ts.append(offset + t)
                    rates.append((n - last_b) / MB / (t - last_t))
                    last_t, last_b = t, n
            ax.plot(ts, rates, color=color, linestyle=style, label=f"{name} {phase}", drawstyle="steps-post")
            offset += side.get(f"{phase}_seconds") or 0.0
    ax.set_xlabel("seconds since the side's upload began (download follows)")
    ax.set_ylabel("MB/s")
    ax.set_title("throughput over time")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
