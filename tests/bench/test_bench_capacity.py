"""``miss-bench run --scenario capacity`` searches, briefly, for the highest
rate one hub process sustains, and writes a report and a PNG. No test here
checks a speed: only that the search goes where its rule says, that every
step is reported with figures that hold together, and that the capacity
becomes devices per core at the traffic the report states.

The search rule and the stated traffic are checked without a hub, on the
functions the scenario runs them with; one short real run (three steps of
one second on a real embedded hub) checks the instrument end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scenarios.capacity import device_traffic, next_rate, verdict

BIN = Path(sys.executable).parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def search(capacity: float, start: float, max_rate: float | None = None) -> tuple[list[float], str]:
    """The rates the search offers to a hub that passes up to ``capacity``."""
    history: list[tuple[float, bool]] = []
    rate, why = next_rate(history, start, max_rate)
    while rate is not None:
        history.append((rate, rate <= capacity))
        rate, why = next_rate(history, start, max_rate)
    return [r for r, _ in history], why


def test_search_doubles_then_bisects_to_ten_percent() -> None:
    rates, why = search(1_700, 200)
    assert rates[:5] == [200, 400, 800, 1_600, 3_200]  # doubling until the first failure
    passing = max(r for r in rates if r <= 1_700)
    failing = min(r for r in rates if r > 1_700)
    assert failing / passing <= 1.10 and passing <= 1_700 < failing
    assert all(1_600 < r < 3_200 for r in rates[5:])  # then only inside the bracket
    assert why == "bracketed within 10%"


def test_search_halves_when_the_start_fails_and_stops_at_the_cap() -> None:
    rates, _ = search(70, 200)
    assert rates[:3] == [200, 100, 50]
    assert max(r for r in rates if r <= 70) >= 70 / 1.1
    rates, why = search(10_000, 20, max_rate=60)
    assert rates == [20, 40, 60] and why == "--max-rate 60/s passed"
    rates, why = search(0, 8)
    assert rates == [8, 4, 2, 1] and why.startswith("no rate passed")


def test_a_step_fails_on_loss_refusal_error_or_tail() -> None:
    good = {"lost": 0, "complete": True, "rate_limited": 0, "errors": {}, "p99_ms": 40.0}
    assert verdict(good, 100) == []
    assert verdict({**good, "p99_ms": 100.5}, 100) == ["p99 100.5 ms > 100 ms"]
    assert verdict({**good, "lost": 3, "complete": False}, 100)[0].startswith("3 lost")
    assert verdict({**good, "rate_limited": 2}, 100) == ["2 refused rate_limited"]
    assert verdict({**good, "errors": {"internal": 1}}, 100) == ["errors: internal: 1"]


def test_the_seeds_traffic_per_device() -> None:
    t = device_traffic(4_800_000, 57_000, 10)
    # 84.2 messages a month each; 30 days; ten times the average at a busy hour
    assert t["messages_per_device_month"] == pytest.approx(84.21, abs=0.01)
    assert t["peak_msgs_per_s_per_device"] == pytest.approx(4_800_000 / 57_000 / (30 * 86_400) * 10)
    assert "57,000 users" in t["assumption"] and "30 days" in t["assumption"]


@pytest.mark.slow
def test_capacity_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report_path, plot_path = tmp_path / "report.json", tmp_path / "plot.png"
    run = subprocess.run(
        [
            str(BIN / "miss-bench"),
            "run",
            "--scenario",
            "capacity",
            *("--start-rate", "20", "--max-rate", "60", "--max-steps", "4", "--step-seconds", "1"),
            *("--warmup", "0.2", "--pairs", "3", "--peak-factor", "5", "--quiet"),
            *("--out", str(out), "--json", str(report_path), "--plot", str(plot_path)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr[-4000:]}"
    assert plot_path.read_bytes()[:8] == PNG_MAGIC
    assert not list(out.glob("run-*")), "the work directory was left behind"
    report = json.loads(report_path.read_text())
    assert report["scenario"] == "capacity" and report["mode"] == "capacity-search"
    assert report["backend"] == "embedded" and report["params"]["hub_processes"] == 1
    c = report["capacity"]
    steps = c["steps"]
    assert c["p99_bound_ms"] == 100 and c["step_seconds"] == 1 and c["max_rate"] == 60

    # the search's own rule over what was measured: doubling from 20, never past the cap
    final = {s["rate_offered"]: s["passed"] for s in steps}  # a rate's last attempt decides
    history: list[tuple[float, bool]] = []
    for rate in dict.fromkeys(s["rate_offered"] for s in steps):
        assert rate == next_rate(history, 20, 60)[0] and rate <= 60
        history.append((rate, final[rate]))
    # and it ended where the rule ends it (or at --max-steps, on a machine too busy for 20/s)
    assert next_rate(history, 20, 60)[0] is None or len(history) == 4
    for s in steps:
        assert s["passed"] == (verdict(s, 100) == []) and s["why"] == verdict(s, 100)
        assert s["delivered"] + s["lost"] == s["expected"] and s["sent"] > 0
        assert s["p50_ms"] <= s["p99_ms"] <= s["max_ms"]
        assert s["hub_cpu_percent"] == pytest.approx(
            100 * s["hub_cpu_seconds"] / s["window_seconds"], abs=0.06
        )
    passing = [s for s in steps if s["passed"]]
    if c["capacity_msgs_per_s"] is None:  # a machine too busy for even 20/s within 100 ms
        assert not passing and report["notes"]
        return
    at = max(passing, key=lambda s: s["rate_offered"])
    assert c["capacity_msgs_per_s"] == at["rate_offered"]
    assert c["p99_ms_at_capacity"] == at["p99_ms"] <= 100
    assert c["hub_cpu_percent_at_capacity"] == at["hub_cpu_percent"]
    assert report["hub"]["delivered"] == at["delivered"] and report["hub"]["lost"] == 0

    # devices per core at the stated traffic (here a busy hour at 5 times the average)
    t = c["traffic"]
    assert t["peak_factor"] == 5 and t["users"] == 57_000 and t["month_messages"] == 4_800_000
    assert c["devices_per_core"] == int(c["capacity_msgs_per_s"] / t["peak_msgs_per_s_per_device"])
    if c["hub_cpu_percent_at_capacity"]:
        assert c["msgs_per_s_per_full_core"] == pytest.approx(
            c["capacity_msgs_per_s"] / (c["hub_cpu_percent_at_capacity"] / 100), rel=0.01
        )
        assert c["devices_per_full_core"] >= c["devices_per_core"]
    assert "devices per core at that traffic" in run.stdout and t["assumption"] in run.stdout
