"""Fixtures of the hub's server-side tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from miss_server.app import HubServer
from miss_server.config import load_settings
from miss_server.store.base import Store
from tests.support.authority import AUTHORITY_TEXT, UNLIMITED
from tests.support.store_fixtures import STORES

HubFactory = Callable[..., Any]


@pytest.fixture(params=sorted(STORES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each Store implementation in turn, migrated and open."""
    async with STORES[request.param](tmp_path) as s:
        await s.migrate()
        await s.open()
        yield s


@pytest.fixture
async def make_hub(tmp_path: Path) -> AsyncIterator[HubFactory]:
    """``await make_hub(**settings)``: a hub like the ``hub`` fixture's (its own
    SQLite file, the tests' authority, budgets out of reach), with overrides."""
    started: list[HubServer] = []

    async def make(**overrides: Any) -> HubServer:
        settings = load_settings(
            store=f"sqlite:///{tmp_path}/miss.db",
            port=0,
            auth_timeout_seconds=2,
            authority_key=AUTHORITY_TEXT,
            **{**UNLIMITED, **overrides},
        )
        server = HubServer(settings)
        await server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()
