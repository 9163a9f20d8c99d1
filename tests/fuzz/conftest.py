"""The fuzz package's frame budget: every test counts the frames it
generates (strategies.FRAMES); when the whole package ran, they must add
up to MIN_FRAMES. The count and the time are printed either way.

Hypothesis settings (:func:`fuzz_settings`): with ``CI`` set in the
environment, examples are derandomized and no example database is kept,
so two CI runs fuzz the same frames and leave no ``.hypothesis`` directory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.strategies import FRAMES

#: Frames one run of the package must generate (issue 16, item 6).
MIN_FRAMES = 10_000

_HERE = Path(__file__).parent
_deselected: list[str] = []
#: When the package's last test ended (the terminal summary comes long after).
_ended: list[float] = []


def pytest_deselected(items: list[pytest.Item]) -> None:
    _deselected.extend(item.nodeid for item in items if Path(item.path).parent == _HERE)


def _report() -> str:
    seconds = (_ended[0] if _ended else time.monotonic()) - FRAMES.started
    parts = ", ".join(f"{name} {n}" for name, n in sorted(FRAMES.by_test.items()))
    return f"fuzz: {FRAMES.total} frames in {seconds:.1f} s ({parts})"


@pytest.fixture(scope="package", autouse=True)
def frame_budget(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the package: print the figures and, if every fuzz test of every
    module was selected and passed, check the total against MIN_FRAMES."""
    FRAMES.started = time.monotonic()
    failed_before = request.session.testsfailed
    yield
    _ended.append(time.monotonic())
    print(_report())
    modules = {Path(item.path).name for item in request.session.items if Path(item.path).parent == _HERE}
    everything = modules == {p.name for p in _HERE.glob("test_*.py")} and not _deselected
    if everything and request.session.testsfailed == failed_before:
        assert FRAMES.total >= MIN_FRAMES, _report()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FRAMES.total:
        terminalreporter.write_line(_report())
