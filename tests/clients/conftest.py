"""Fixtures for the client SDK tests: profiles with a fast KDF, a fake hub."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from client_fixtures import new_profile
from fakehub import FakeHub
from miss_client.profile import Profile


@pytest.fixture
def make_profile(tmp_path: Path) -> Callable[..., Profile]:
    """``make_profile(name="alice", **kw)`` creates a profile in ``tmp_path/name``."""

    def make(name: str = "alice", **kw: Any) -> Profile:
        return new_profile(tmp_path / name, **kw)

    return make


@pytest.fixture
async def fakehub() -> AsyncIterator[FakeHub]:
    async with FakeHub() as hub:
        yield hub
