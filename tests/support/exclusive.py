"""Tests that must run alone while the suite runs on several xdist workers.

The suite runs on two processes (``-n 2`` in pyproject.toml). A few tests
cannot share the machine with another test: those that stop the shared
PostgreSQL or Redis (every other test using them would fail meanwhile), and
those that compare a latency under attack with the same latency quiet (the
other worker's load would land in one half only). They carry the
``exclusive`` mark; this module makes them run alone.

One lock file per test run, shared by its workers. Every test holds it
shared; an ``exclusive`` test holds it exclusive. A second lock, the gate, is
what keeps the exclusive test from waiting forever: a worker about to run one
takes the gate first, and the other worker takes the gate (briefly) before
each of its tests, so it stops starting new ones until the exclusive test is
over. Without xdist (``-n 0``) the locks are not taken.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

MARK = "exclusive"


def lock_dir(run_id: str) -> Path:
    """Where one test run's two lock files live (removed by nobody: empty, in /tmp)."""
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"miss-pytest-{run_id}"
    path.mkdir(exist_ok=True)
    return path


@contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextmanager
def turn(run_id: str, exclusive: bool) -> Iterator[None]:
    """Hold this test's turn: shared by default, the machine alone if ``exclusive``."""
    where = lock_dir(run_id)
    with ExitStack() as stack:
        if exclusive:
            stack.enter_context(_flock(where / "gate", fcntl.LOCK_EX))
            stack.enter_context(_flock(where / "tests", fcntl.LOCK_EX))
        else:
            with _flock(where / "gate", fcntl.LOCK_SH):
                pass  # wait here while an exclusive test is waiting or running
            stack.enter_context(_flock(where / "tests", fcntl.LOCK_SH))
        yield
