"""``python -m bench.web_startup`` runs and writes its report (never a speed:
benchmarks are not tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.web.conftest import require_chromium

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_the_web_startup_bench_writes_its_report(tmp_path: Path) -> None:
    require_chromium()
    out = subprocess.run(
        [sys.executable, "-m", "bench.web_startup", "--runs", "1", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "web-startup.json").read_text())
    assert set(report["median_ms"]) == {"first_load", "reload", "unlock"}
    assert all(len(samples) == 1 for samples in report["samples_s"].values())
    assert report["bundle"]["app.js"]["gzip"] < report["bundle"]["app.js"]["bytes"]
    assert report["bundle_hash"] in out.stdout
    assert (tmp_path / "web-startup.png").stat().st_size > 0
