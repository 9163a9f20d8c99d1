"""Fixtures of the hub's server-side tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from store_fixtures import STORES

from miss_server.store.base import Store


@pytest.fixture(params=sorted(STORES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each Store implementation in turn, migrated and open."""
    async with STORES[request.param](tmp_path) as s:
        await s.migrate()
        await s.open()
        yield s
