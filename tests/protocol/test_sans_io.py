"""The protocol package is sans-I/O (docs/ARCHITECTURE.md, SPEC.md §1): importing any of
its modules pulls in no event loop, network or database library."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import protocol

PACKAGE_DIR = Path(protocol.__file__).resolve().parent

#: Top-level modules that must never be loaded by the protocol package.
FORBIDDEN_RUNTIME = frozenset(
    {
        "asyncio",
        "_asyncio",
        "websockets",
        "redis",
        "asyncpg",
        "sqlite3",
        "_sqlite3",
        "socket",
        "_socket",
        "ssl",
        "_ssl",
        "selectors",
    }
)
#: What the source may not import, even lazily inside a function.
FORBIDDEN_IMPORTS = FORBIDDEN_RUNTIME | {
    "aiohttp",
    "anyio",
    "trio",
    "http",
    "psycopg",
    "psycopg2",
    "requests",
    "httpx",
    "miss_server",
    "miss_client",
}

PROBE = r"""
import importlib, json, pkgutil, sys
forbidden = set(json.loads(sys.argv[1]))
def loaded():
    return sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
before = loaded()
import protocol
names = ["protocol"] + [m.name for m in pkgutil.walk_packages(protocol.__path__, "protocol.")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"before": before, "names": names, "after": loaded(), "file": protocol.__file__}))
"""


def source_modules() -> set[str]:
    return {f"protocol.{p.stem}" for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__"}


def test_importing_every_module_loads_no_io_library() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(sorted(FORBIDDEN_RUNTIME))],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(result.stdout)
    assert Path(report["file"]).resolve().parent == PACKAGE_DIR  # the package under test
    assert report["before"] == []  # the probe starts clean, so the check below means something
    assert source_modules() <= set(report["names"])
    assert {"protocol.frames", "protocol.crypto", "protocol.session", "protocol.errors"} <= set(
        report["names"]
    )
    assert report["after"] == []


def imported_modules(source: str) -> set[str]:
    """Top-level names of every module a source imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in {"import_module", "__import__"}:
                found.add("<dynamic import>")
    return found


def test_scanner_sees_imports() -> None:
    source = (
        "import os, socket as s\n"
        "from websockets.asyncio.server import serve\n"
        "from . import frames\n"
        "def f():\n    import asyncio\n"
        "importlib.import_module('redis')\n"
    )
    assert imported_modules(source) == {"os", "socket", "websockets", "asyncio", "<dynamic import>"}


def test_no_source_file_imports_io_libraries() -> None:
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert {f"protocol.{p.stem}" for p in files if p.parent == PACKAGE_DIR} >= source_modules()
    seen: set[str] = set()
    for path in files:
        imports = imported_modules(path.read_text(encoding="utf-8"))
        seen |= imports
        bad = imports & (FORBIDDEN_IMPORTS | {"<dynamic import>"})
        assert not bad, f"{path.relative_to(PACKAGE_DIR)} imports {sorted(bad)}"
    assert {"msgpack", "nacl"} <= seen  # the scan did read the real imports
