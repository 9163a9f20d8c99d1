"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from miss_server.app import HubServer
from tests.support.inprocess_hub import hub_settings


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubServer]:
    """A hub in this process (support/inprocess_hub.py: its own database, the
    tests' authority, budgets out of reach), started and, after the test, stopped."""
    async with HubServer(hub_settings(tmp_path)) as server:
        yield server
