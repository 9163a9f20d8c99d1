"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from miss_server.app import HubServer
from tests.support import exclusive
from tests.support.inprocess_hub import hub_settings


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubServer]:
    """A hub in this process (support/inprocess_hub.py: its own database, the
    tests' authority, budgets out of reach), started and, after the test, stopped."""
    async with HubServer(hub_settings(tmp_path)) as server:
        yield server


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{exclusive.MARK}: runs alone on the machine while other xdist workers wait "
        "(stops a shared service, or compares latencies; tests/support/exclusive.py)",
    )


#: Directories of tests/ that run as one xdist work unit each.
PACKAGE_GROUPS = {"fuzz": "fuzz", "web": "browser"}


def work_unit(nodeid: str) -> str:
    """The xdist work unit of a test: a unit runs on one worker, its tests
    in a row. A test file is one (its module fixtures are built once); the
    fuzz package is one (its frame budget adds up its files' frames:
    fuzz/conftest.py), and so are the browser tests (one Chromium)."""
    path = nodeid.split("::", 1)[0]  # tests/<directory>/test_x.py
    parts = path.split("/")
    return PACKAGE_GROUPS.get(parts[1], path) if len(parts) > 2 else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """With ``--dist loadscope`` (pyproject.toml), schedule by :func:`work_unit`.
    Not ``--dist loadgroup`` with marks: pytest-xdist 3.8 renames the items
    through an attribute pytest 9 no longer reads, so the marks group nothing."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnits(LoadScopeScheduling):  # type: ignore[misc]  # xdist ships no type hints
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return WorkUnits(config, log)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    """Under xdist, run each test (setup, call, teardown) in its turn (support/exclusive.py)."""
    workerinput = getattr(item.config, "workerinput", None)
    if workerinput is None:
        return (yield)
    with exclusive.turn(workerinput["testrunuid"], item.get_closest_marker(exclusive.MARK) is not None):
        return (yield)
