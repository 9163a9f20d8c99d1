"""Static checks that CI enforces: the protocol, the hub and the SDK pass
``mypy --strict`` (configured in pyproject.toml), and the whole tree passes
``ruff check``. A type error caught here is one that no user meets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_mypy_strict_passes() -> None:
    out = run("mypy")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_passes() -> None:
    out = run("ruff", "check", ".")
    assert out.returncode == 0, out.stdout + out.stderr
