"""A PostgreSQL store for an in-process hub (``make_hub(store=...)``): a
schema of its own on ``MISS_TEST_POSTGRES``, migrated, dropped afterwards.
A PostgreSQL that cannot be reached fails the test, never skips it."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator

import asyncpg

from miss_server.store.postgres import PostgresStore
from tests.support.store_fixtures import POSTGRES_DSN


@contextlib.asynccontextmanager
async def postgres_store_url() -> AsyncIterator[str]:
    """The ``store`` setting of a hub on a fresh, migrated schema."""
    schema = "miss_test_" + secrets.token_hex(6)
    store = PostgresStore(POSTGRES_DSN, schema=schema, pool_min=1, pool_max=2)
    try:
        await store.migrate()
        sep = "&" if "?" in POSTGRES_DSN else "?"
        yield f"{POSTGRES_DSN}{sep}schema={schema}"
    finally:
        await store.close()
        conn = await asyncpg.connect(POSTGRES_DSN)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()
