"""The browser client's sources (clients/web/) against the bundle the hub
serves: ``npm run check`` (the committed miss_server/static/ is what the
sources build to), ``npm run typecheck`` and ``npm test``. ``npm ci`` runs
first when node_modules is missing or older than package-lock.json.

Node and npm are required: without them this test fails, it never skips
(``.ci/run`` checks for them)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "clients" / "web"
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


@pytest.fixture(scope="module")
def web_client() -> Path:
    """clients/web with its dependencies installed (``npm ci`` when needed)."""
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


def test_the_committed_bundle_is_built_from_the_sources(web_client: Path) -> None:
    npm("run", "check")


def test_the_sources_typecheck(web_client: Path) -> None:
    npm("run", "typecheck")


def test_the_web_clients_own_tests_pass(web_client: Path) -> None:
    npm("test")
