"""``miss-bench run --scenario attachments`` moves encrypted files through
the embedded hub and through the plain HTTP baseline, briefly, and writes
a report and a PNG. No test here checks a speed: only that the instrument
works, that every file came back and was verified, and that its figures
are there and hold together.

A complete run with no errors is also the check that the bench uploads
blobs the hub accepts (``blob_begin``/``blob_put``/``blob_end`` within the
settings it starts the hub with), sends messages naming them that reach
the recipient (a 1:1 sealed body, opened and checked), and downloads them
by ``blob_link`` and HTTP Range parts into the Decryptor (length, chunk
tags, SHA-256), the plaintext being the one sent.
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
FILE_BYTES = 262_144  # 256 KiB

pytestmark = pytest.mark.slow

#: Figures each side reports (numbers; CPU ones may be 0 in so short a run,
#: the kernel counting CPU in 10 ms ticks).
FIGURES = (
    "up_mb_per_s",
    "down_mb_per_s",
    "cpu_seconds",
    "cpu_ms_per_mb",
    "cpu_ms_per_mb_up",
    "cpu_ms_per_mb_down",
    "peak_rss_kib",
    "up_seconds",
    "down_seconds",
)


def _run(tmp_path: Path) -> tuple[dict[str, Any], str, Path]:
    out = tmp_path / "out"
    report_path, plot_path = tmp_path / "report.json", tmp_path / "plot.png"
    run = subprocess.run(
        [
            str(BIN / "miss-bench"),
            "run",
            "--scenario",
            "attachments",
            "--pairs",
            "1",
            "--messages",
            "1",
            "--files",
            "2",
            "--file-mb",
            str(FILE_BYTES / 1e6),
            "--repeat",
            "2",
            "--warmup",
            "0.2",
            "--workers",
            "1",
            "--quiet",
            "--out",
            str(out),
            "--json",
            str(report_path),
            "--plot",
            str(plot_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr[-4000:]}"
    assert plot_path.read_bytes()[:8] == PNG_MAGIC
    assert not list(out.glob("run-*")), "the work directory was left behind"
    return json.loads(report_path.read_text()), run.stdout, plot_path


def test_attachments(tmp_path: Path) -> None:
    from protocol.attachments import cipher_size

    report, stdout, _ = _run(tmp_path)
    assert report["scenario"] == "attachments" and report["unit"] == "file"
    assert report["params"] == {"pairs": 1, "messages": 1, "files": 2, "file_mb": FILE_BYTES / 1e6}
    blob = cipher_size(FILE_BYTES)
    assert report["attachments"]["cipher_bytes_per_file"] == blob
    for name in ("hub", "http_baseline"):
        side = report[name]
        # every file uploaded, and downloaded and verified, once, with no error
        assert side["files"] == side["delivered"] == 2, (name, side)
        assert side["complete"] is True and not side["errors"], (name, side["errors"])
        assert side["uploads"] == 2
        assert side["up_bytes"] == side["down_bytes"] == 2 * blob
        for key in FIGURES:
            assert isinstance(side[key], int | float) and side[key] >= 0, (name, key, side[key])
        assert side["peak_rss_kib"] > 0 and side["up_mb_per_s"] > 0 and side["down_mb_per_s"] > 0
        assert side["timeseries"]["up"] and side["timeseries"]["down"]
    hub = report["hub"]
    assert hub["messages_delivered"] == 1
    assert hub["peak_rss_kib"] >= hub["rss_kib_before"] > 0
    # the ratio is the two CPU figures' (None when a side's reads 0 in so short a run)
    h, b = hub["cpu_ms_per_mb"], report["http_baseline"]["cpu_ms_per_mb"]
    if h and b:
        assert report["ratio_cpu"] == pytest.approx(h / b, rel=0.02)
    else:
        assert report["ratio_cpu"] is None
    a = report["attachments"]
    assert a["bar"] == 3 and a["within_bar"] == (report["ratio_cpu"] is not None and report["ratio_cpu"] <= 3)
    # --repeat 2: two rounds of baseline then hub, the first of the two ranked by ratio shown
    rounds = a["rounds"]
    assert len(rounds) == 2
    ranked = sorted(rounds, key=lambda o: o["ratio_cpu"] if o["ratio_cpu"] is not None else float("inf"))
    assert report["ratio_cpu"] == ranked[0]["ratio_cpu"]
    # the hub was started with what this load needs
    settings = a["hub_settings"]
    assert int(settings["max_attachment_bytes"]) >= FILE_BYTES and int(settings["max_attachments"]) >= 2
    # the table
    assert "HTTP baseline" in stdout and "files verified" in stdout and "bar:" in stdout
