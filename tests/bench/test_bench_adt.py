"""``miss-bench run --scenario adt`` feeds a real ``miss-adt serve`` over
MLLP, briefly, and writes a report and a PNG. No test here checks a speed:
only that the instrument works, that every message was answered ``AA`` and
gave exactly one notice, opened at its own GP's device, and that the
figures are there and hold together.

A complete run is also the check that the bench sets up what a hospital
would (a service account enrolled with the SDK and attested, GPs verified,
miss-adt from its configuration file) and writes PAM-FR messages that
miss-adt reads and the default mapping notifies (A01, A02, A03).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RATE, SECONDS, GPS = 20, 3, 3
MESSAGES = RATE * SECONDS

pytestmark = pytest.mark.slow


def test_adt(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report_path, plot_path = tmp_path / "report.json", tmp_path / "plot.png"
    run = subprocess.run(
        [
            str(BIN / "miss-bench"),
            "run",
            "--scenario",
            "adt",
            "--rate",
            str(RATE),
            "--seconds",
            str(SECONDS),
            "--gps",
            str(GPS),
            "--warmup",
            "0.3",
            "--workers",
            "1",
            "--quiet",
            "--out",
            "out",  # relative, as by default: miss-adt runs in a directory of its own
            "--json",
            str(report_path),
            "--plot",
            str(plot_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr[-4000:]}"
    assert plot_path.read_bytes()[:8] == PNG_MAGIC
    assert not list(out.glob("run-*")), "the work directory was left behind"
    report = json.loads(report_path.read_text())
    assert report["scenario"] == "adt" and report["unit"] == "ADT message"
    assert report["params"] == {"rate": RATE, "gps": GPS, "mllp_connections": 4, "messages": MESSAGES}
    assert report["notes"] == []
    a = report["adt"]

    # every message answered AA « notice sent », and its notice opened once, at its GP's device
    assert a["messages"] == a["acked"] == MESSAGES
    assert a["ack_codes"] == {"AA": MESSAGES} and a["ack_notes"] == {"AA notice sent": MESSAGES}
    assert a["all_aa"] is True
    assert a["notices_expected"] == a["notices_delivered"] == MESSAGES
    assert a["notices_missing"] == 0 and a["missing"] == []
    assert a["duplicates"] == 0 and a["wrong_gp"] == 0 and a["complete"] is True
    assert a["warmup"]["opened"] == a["warmup"]["messages"] > 0
    # a mix of the three triggers
    assert set(a["mix"]) == {"A01", "A02", "A03"} and sum(a["mix"].values()) == MESSAGES
    assert min(a["mix"].values()) > 0 and a["gps"] == GPS

    # the latencies, from the due time, as HDR percentiles
    for prefix in ("ack_", "opened_", "send_lag_"):
        values = [a[f"{prefix}{k}_ms"] for k in ("p50", "p90", "p99", "p999", "max")]
        assert all(isinstance(v, int | float) and v > 0 for v in values), (prefix, values)
        assert values == sorted(values), (prefix, values)
    assert a["within_target"] == (a["ack_p99_ms"] <= a["target_p99_ack_ms"] == 200)
    assert sum(a["timeseries"]["ack"]["per_s"]) == sum(a["timeseries"]["opened"]["per_s"]) == MESSAGES
    assert a["curves"]["ack"] and a["curves"]["opened"] and a["histograms"]["ack"]

    # CPU per message of miss-adt and of the hub (10 ms ticks: may read 0 in so short a run)
    assert a["cpu_ms_per_msg"] == pytest.approx(a["cpu_seconds"] * 1000 / MESSAGES, abs=0.01)
    hub = report["hub"]
    assert a["hub_cpu_ms_per_msg"] == pytest.approx(hub["cpu_seconds"] * 1000 / MESSAGES, abs=0.01)
    assert a["peak_rss_kib"] >= a["rss_kib"] > 0
    assert hub["delivered"] == MESSAGES and hub["lost"] == 0 and hub["errors"] == {}

    assert "ADT → ACK" in run.stdout and "ADT → notice opened" in run.stdout
    assert f"{MESSAGES} of {MESSAGES} (AA notice sent: {MESSAGES})" in run.stdout
