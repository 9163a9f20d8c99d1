"""Every Store implementation, for the tests that run on each (the ``store``
fixture of tests/server/conftest.py): SQLite in a temporary file, PostgreSQL
in a schema of its own on this machine's server, dropped afterwards.
A PostgreSQL that cannot be reached fails the test, never skips it."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import asyncpg

from miss_server.store.base import Store
from miss_server.store.postgres import PostgresStore
from miss_server.store.sqlite import SQLiteStore

POSTGRES_DSN = os.environ.get("MISS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.asynccontextmanager
async def _sqlite(tmp_path: Path) -> AsyncIterator[Store]:
    s = SQLiteStore(tmp_path / "conformance.db")
    try:
        yield s
    finally:
        await s.close()


@contextlib.asynccontextmanager
async def _postgres(tmp_path: Path) -> AsyncIterator[Store]:
    """A store in a schema of its own, dropped afterwards whatever happened."""
    schema = "miss_test_" + secrets.token_hex(6)
    s = PostgresStore(POSTGRES_DSN, schema=schema, pool_min=1, pool_max=4)
    try:
        yield s
    finally:
        try:
            await s.close()
        finally:
            conn = await asyncpg.connect(POSTGRES_DSN)
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            finally:
                await conn.close()


#: Each entry makes a store that is not yet migrated nor open, and cleans up after it.
STORES: dict[str, Callable[[Path], AbstractAsyncContextManager[Store]]] = {
    "sqlite": _sqlite,
    "postgresql": _postgres,
}
