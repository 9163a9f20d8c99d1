"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from miss_server.app import HubServer
from miss_server.config import load_settings
from tests.support.authority import AUTHORITY_TEXT, UNLIMITED


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubServer]:
    """A hub on the embedded defaults, on a free port, with its own database,
    trusting the tests' authority (authority.py), with budgets that only the
    rate-limit tests (which make their own hub) reach."""
    settings = load_settings(
        store=f"sqlite:///{tmp_path}/miss.db",
        port=0,
        auth_timeout_seconds=2,
        authority_key=AUTHORITY_TEXT,
        **UNLIMITED,
    )
    async with HubServer(settings) as server:
        yield server
