"""``miss-bench run --scenario fanout --team N`` runs a care team (SPEC §13)
against the embedded hub, briefly, and writes a report with the team's two
figures beside the 1:1 ones of the same run. No test here checks a speed:
only that the instrument works and that its figures hold together.

A run with every envelope delivered once and no errors is also the check
that the bench creates the team with records the hub accepts (signed by the
creator's device, with its attestation), seals team messages the hub routes
(body, wraps, head) and opens what it gets.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.slow


def _team_run(tmp_path: Path) -> tuple[dict[str, Any], str]:
    report_path, plot_path = tmp_path / "report.json", tmp_path / "plot.png"
    run = subprocess.run(
        [
            str(BIN / "miss-bench"),
            "run",
            "--scenario",
            "fanout",
            "--team",
            "3",
            "--devices",
            "2",
            "--rate",
            "20",
            "--seconds",
            "1",
            "--warmup",
            "0.2",
            "--workers",
            "2",
            "--quiet",
            "--out",
            str(tmp_path / "out"),
            "--json",
            str(report_path),
            "--plot",
            str(plot_path),
        ],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr[-4000:]}"
    assert plot_path.read_bytes()[:8] == PNG_MAGIC
    assert not list((tmp_path / "out").glob("run-*")), "the work directory was left behind"
    return json.loads(report_path.read_text()), run.stdout


def _delivered_once(side: dict[str, Any], envelopes: int) -> None:
    """Every message of the window reached each of its target devices, once, and nothing failed."""
    assert side["complete"] is True and not side["errors"], side["errors"]
    assert side["sent"] > 0 and side["accepted"] == side["sent"]
    assert side["delivered"] == side["sent"] * envelopes
    assert side["cpu_us_per_msg"] is not None and side["cpu_us_per_msg"] >= 0


def test_team_fanout_reports_cpu_per_envelope_and_storage_beside_1to1(tmp_path: Path) -> None:
    report, stdout = _team_run(tmp_path)
    assert report["scenario"] == "fanout" and report["backend"] == "embedded"
    assert report["unit"] == "delivered envelope" and report["mode"] == "fixed-rate"
    team = report["team"]
    # 3 members with 2 devices: a team message wraps its key for the 5 devices but the sender;
    # the 1:1 baseline writes to a clinician with (3 - 1) x 2 = 4 devices, plus the sender's other one.
    assert team["members"] == 3 and team["devices_per_member"] == 2
    assert team["envelopes_per_message"] == team["one_to_one_envelopes_per_message"] == 5
    assert team["team"].startswith("t_") and team["setup"]["records"] == 3

    hub_team, hub_one = report["hub"], report["one_to_one"]["hub"]
    _delivered_once(hub_team, 5)
    _delivered_once(hub_one, 5)
    # receipts as for 1:1: each of the 4 other members' devices acks, a receipt on both sender devices
    assert hub_team["receipts"] >= hub_team["sent"] * 4 * 2
    assert hub_one["receipts"] == hub_one["sent"] * 4 * 2

    # figure 1: hub CPU per delivered envelope, team and 1:1, and their ratio
    assert team["cpu_us_per_envelope"] == hub_team["cpu_us_per_msg"]
    assert team["one_to_one_cpu_us_per_envelope"] == hub_one["cpu_us_per_msg"]
    if hub_team["cpu_us_per_msg"] and hub_one["cpu_us_per_msg"]:  # 10 ms ticks: a brief run may read 0
        assert team["cpu_ratio"] == pytest.approx(
            hub_team["cpu_us_per_msg"] / hub_one["cpu_us_per_msg"], rel=0.01
        )
        assert team["cpu_within_bar"] == (team["cpu_ratio"] <= team["cpu_bar"] == 1.5)

    # figure 2: bytes the store holds per team message, against len(body) + 150 per device
    storage = team["storage"]
    assert storage["messages"] == 5 and storage["target_devices"] == 5
    assert storage["wrap_bytes_per_device"] == 72
    # the body holds nonce, signature, tag and a plaintext padded to 256 bytes
    assert storage["body_bytes_mean"] >= 24 + 64 + 16 + 256
    assert storage["bound_bytes_mean"] == pytest.approx(storage["body_bytes_mean"] + 150 * 5, abs=0.1)
    # what is stored holds at least the body once and each wrap
    assert storage["stored_bytes_mean"] >= storage["body_bytes_mean"] + 72 * 5
    assert storage["within_bar"] == (storage["stored_over_bound_max"] <= 1)
    one = storage["one_to_one"]
    assert one["messages"] == 5 and one["stored_bytes_mean"] >= one["envelope_bytes_mean"] > 0

    # the printed table: both columns, both figures, and why the baseline is what it is
    assert "team" in stdout and "1:1" in stdout
    assert "hub CPU per delivered envelope" in stdout and "stored per team message" in stdout
    assert "1:1 baseline" in stdout
