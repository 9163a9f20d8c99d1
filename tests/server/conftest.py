"""Fixtures of the hub's server-side tests."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from miss_server.app import HubServer
from miss_server.store.base import Store
from tests.support.admin_cli import Admin, on_new_store
from tests.support.inprocess_hub import HubFactory, hub_settings
from tests.support.store_fixtures import STORES


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
    SQLite file, the tests' authority, budgets out of reach), with overrides;
    every hub made is stopped after the test."""
    started: list[HubServer] = []

    async def make(**overrides: Any) -> HubServer:
        server = HubServer(hub_settings(tmp_path, **overrides))
        await server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Admin:
    """``miss-admin`` in-process on a new, migrated SQLite store, run from
    ``tmp_path`` (no miss-authority.key of the developer's in sight) with no
    authority in the environment; the tests' authority key is in
    ``run.key_file``."""
    monkeypatch.chdir(tmp_path)
    return on_new_store(tmp_path, capsys, monkeypatch)


@pytest.fixture
def hub_admin(
    hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Admin:
    """``miss-admin`` in-process on the running ``hub``'s store, run from
    ``tmp_path``; call it from a thread (``await asyncio.to_thread(hub_admin,
    ...)``), since it runs an event loop of its own."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MISS_AUTHORITY_KEY_FILE", raising=False)
    return Admin(hub.settings.store, tmp_path / "authority.key", capsys, monkeypatch)


REDIS = os.environ.get("MISS_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted afterwards."""
    prefix = "miss_test_" + secrets.token_hex(4)
    yield prefix
    client = aioredis.Redis.from_url(REDIS)
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
