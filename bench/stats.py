"""Turn the workers' raw samples into the figures of the report.

Latencies go into an HDR histogram (``hdrhistogram``: 3 significant digits,
1 µs to 1 h), which gives the percentiles and the percentile curve of the
plot; per-second buckets give the time series (throughput by the time the
recipient opened the message, latency by the time it was scheduled).
"""

from __future__ import annotations

import base64
from array import array
from collections.abc import Iterable
from typing import Any

from hdrh.histogram import HdrHistogram

__all__ = ["Samples", "latency_summary", "merge_samples", "new_histogram"]

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
CURVE = (0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 99.999, 100)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, 3_600_000_000, 3)  # µs


def _ints(blob: bytes) -> array[int]:
    a = array("q")
    a.frombytes(blob)
    return a


class Samples:
    """Everything the workers measured during one phase."""

    def __init__(self) -> None:
        self.sched_ns = array("q")
        self.recv_ns = array("q")
        self.lag_ns = array("q")
        self.accept_ns = array("q")
        self.counters: dict[str, int] = {}
        self.errors: dict[str, int] = {}

    def latencies_us(self, origin_ns: int | None = None) -> list[int]:
        """Scheduled send → opened, or ``origin_ns`` → opened if given."""
        if origin_ns is None:
            return [max(1, (r - s) // 1000) for s, r in zip(self.sched_ns, self.recv_ns, strict=True)]
        return [max(1, (r - origin_ns) // 1000) for r in self.recv_ns]


def merge_samples(collected: Iterable[dict[str, Any]]) -> Samples:
    out = Samples()
    for c in collected:
        out.sched_ns.extend(_ints(c["sched_ns"]))
        out.recv_ns.extend(_ints(c["recv_ns"]))
        out.lag_ns.extend(_ints(c["lag_ns"]))
        out.accept_ns.extend(_ints(c["accept_ns"]))
        for k, v in c["counters"].items():
            out.counters[k] = out.counters.get(k, 0) + v
        for k, v in c["errors"].items():
            out.errors[k] = out.errors.get(k, 0) + v
    return out


def latency_summary(values_us: Iterable[int], prefix: str = "") -> tuple[dict[str, Any], HdrHistogram]:
    """p50/p90/p99/p99.9/max in ms, and the histogram they came from."""
    h = new_histogram()
    for v in values_us:
        h.record_value(v)
    if h.get_total_count() == 0:
        return {
            f"{prefix}{k}": None for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms")
        }, h
    out = {
        f"{prefix}p50_ms": h.get_value_at_percentile(50.0) / 1000,
        f"{prefix}p90_ms": h.get_value_at_percentile(90.0) / 1000,
        f"{prefix}p99_ms": h.get_value_at_percentile(99.0) / 1000,
        f"{prefix}p999_ms": h.get_value_at_percentile(99.9) / 1000,
        f"{prefix}max_ms": h.get_max_value() / 1000,
        f"{prefix}mean_ms": round(h.get_mean_value() / 1000, 3),
    }
    return out, h


def percentile_curve(h: HdrHistogram) -> list[list[float]]:
    """[[percentile, latency ms], ...] for the distribution plot."""
    if h.get_total_count() == 0:
        return []
    return [[p, h.get_value_at_percentile(p) / 1000] for p in CURVE]


def encoded(h: HdrHistogram) -> str:
    """The histogram in the standard HdrHistogram compressed encoding (base64 text)."""
    data = h.encode()
    return data.decode() if isinstance(data, bytes) else base64.b64encode(data).decode()


def timeseries(
    send_ns: Iterable[int],
    done_ns: Iterable[int],
    latency_us: Iterable[int],
    t0_ns: int,
    bucket_s: float = 1.0,
) -> dict[str, list[float | None]]:
    """Per bucket since ``t0_ns``: completions per second (by completion time)
    and latency p50/p99 (by send time)."""
    width = int(bucket_s * 1e9)
    counts: dict[int, int] = {}
    hists: dict[int, HdrHistogram] = {}
    for s, d, lat in zip(send_ns, done_ns, latency_us, strict=True):
        b = max(0, (d - t0_ns) // width)
        counts[b] = counts.get(b, 0) + 1
        sb = max(0, (s - t0_ns) // width)
        h = hists.get(sb)
        if h is None:
            h = hists[sb] = new_histogram()
        h.record_value(lat)
    n = max([*counts, *hists, -1]) + 1
    t = [round((i + 0.5) * bucket_s, 3) for i in range(n)]
    rate = [counts.get(i, 0) / bucket_s for i in range(n)]
    p50 = [hists[i].get_value_at_percentile(50) / 1000 if i in hists else None for i in range(n)]
    p99 = [hists[i].get_value_at_percentile(99) / 1000 if i in hists else None for i in range(n)]
    return {"t_s": t, "per_s": rate, "p50_ms": p50, "p99_ms": p99}
