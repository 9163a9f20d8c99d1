"""The browser client's sources with their npm dependencies installed.

Both the web client's own checks (tests/web/test_bundle.py) and the
Dockerfile's web stage replayed without an engine (tests/test_packaging.py)
need ``clients/web/node_modules``; a fresh clone has none, and the test that
needs it first, in whatever order, installs it with ``npm ci`` from the lock
file. Node and npm are required: without them these tests fail, never skip
(``.ci/run`` checks for them)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["SCRIPTS", "WEB", "installed_web_client", "npm"]

WEB = Path(__file__).resolve().parents[2] / "clients" / "web"
#: The package.json scripts the tests run.
SCRIPTS = ("check", "typecheck", "test")


def npm(*args: str, timeout: float = 900) -> None:
    """``npm ARGS`` in clients/web; its whole output in the failure message."""
    out = subprocess.run(
        ["npm", *args], cwd=WEB, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    assert out.returncode == 0, (
        f"`npm {' '.join(args)}` in {WEB} exited with {out.returncode}\n"
        f"--- stdout ---\n{out.stdout}\n--- stderr ---\n{out.stderr}"
    )


def _installed_at(modules: Path) -> float:
    """When node_modules was last installed: npm rewrites its hidden
    lockfile on every install; 0 when there is none."""
    for marker in (modules / ".package-lock.json", modules):
        if marker.exists():
            return marker.stat().st_mtime
    return 0.0


def installed_web_client() -> Path:
    """clients/web, after ``npm ci`` if node_modules is missing or older
    than package-lock.json."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found on PATH: the web client's tests need Node.js and npm")
    package = WEB / "package.json"
    assert package.is_file(), f"{package} is missing"
    scripts = json.loads(package.read_text()).get("scripts", {})
    absent = [name for name in SCRIPTS if name not in scripts]
    assert not absent, f"{package} has no script {', '.join(absent)}"
    lock = WEB / "package-lock.json"
    assert lock.is_file(), f"{lock} is missing: `npm ci` needs it"
    # npm writes package-lock.json and node_modules' own lockfile in the same
    # install, in either order: a couple of seconds apart is the same install.
    if _installed_at(WEB / "node_modules") < lock.stat().st_mtime - 2:
        npm("ci", "--no-audit", "--no-fund")
    return WEB
