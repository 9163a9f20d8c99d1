"""Two real hub processes sharing this machine's PostgreSQL and Redis.

Used by tests/multinode (its conftest makes the ``cluster`` fixture).

Each test gets its own PostgreSQL schema and Redis key prefix, removed at
the end. A missing service makes the test fail, never skip.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from miss_server.codes import code_hash, new_code
from miss_server.store.postgres import PostgresStore
from tests.support.authority import verify
from tests.support.clock import now_ms
from tests.support.hubproc import BIN, HubProcess
from tests.support.wire import RawDevice

POSTGRES = os.environ.get("MISS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("MISS_TEST_REDIS", "redis://127.0.0.1:6379/0")
PRESENCE_TTL = 3


@dataclass
class Cluster:
    nodes: list[HubProcess]
    env: dict[str, str]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    async def enroll(self, node: int, name: str, rpps: str) -> RawDevice:
        """Invite a clinician, enroll a device on node ``node``, verify them."""
        (code,) = await self.invite_many([(name, rpps)])
        dev = RawDevice(self.urls[node])
        await dev.enroll(code)
        await self.verify(dev.user_id)
        return dev

    async def invite_many(self, people: list[tuple[str, str]], organisation: str = "CHRU") -> list[str]:
        """Record clinicians (name, RPPS) and an enrollment code for each,
        straight into PostgreSQL (what ``miss-admin invite`` records, without
        its two processes, ~0.7 s each, per clinician; the admin tests run the
        real command); their codes, in order."""
        store = PostgresStore(self.env["MISS_STORE"])
        await store.open()
        try:
            if organisation not in {o.name for o in await store.list_organisations()}:
                await store.add_organisation(organisation, now_ms())
            codes = []
            for name, rpps in people:
                user = await store.create_user(name, rpps, "médecin", organisation, now_ms())
                code = new_code()
                await store.add_enrollment_code(user.user_id, code_hash(code), now_ms() + 3_600_000)
                codes.append(code)
            return codes
        finally:
            await store.close()

    async def verify(self, *user_ids: str) -> None:
        """Attest users with the tests' authority, straight into PostgreSQL
        (what ``miss-admin verify`` does, without a process per user)."""
        store = PostgresStore(self.env["MISS_STORE"])
        await store.open()
        try:
            for user_id in user_ids:
                await verify(store, user_id)
        finally:
            await store.close()


@asynccontextmanager
async def running_cluster(
    workdir: Path, nodes: int = 2, extra_env: dict[str, str] | None = None
) -> AsyncIterator[Cluster]:
    """``nodes`` hubs on a fresh schema and prefix; ``extra_env``: more
    ``MISS_*`` settings of every node."""
    tag = "miss_test_" + secrets.token_hex(4)
    env = {
        "MISS_STORE": f"{POSTGRES}?schema={tag}",
        "MISS_BROKER": f"{REDIS}?prefix={tag}",
        "MISS_PRESENCE_TTL_SECONDS": str(PRESENCE_TTL),
        **(extra_env or {}),
    }
    migrate = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "miss-admin"), "migrate"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrate.returncode == 0, migrate.stderr
    nodes = [HubProcess(workdir / f"node{i}", env) for i in range(nodes)]
    try:
        started = await asyncio.gather(
            *(asyncio.to_thread(node.start) for node in nodes), return_exceptions=True
        )
        for outcome in started:  # every start has ended, so the teardown below stops them all
            if isinstance(outcome, BaseException):
                raise outcome
        yield Cluster(nodes, env)
    finally:
        await asyncio.gather(*(node.stop_async() for node in nodes))
        conn = await asyncpg.connect(POSTGRES)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{tag}" CASCADE')
        await conn.close()
        r = aioredis.Redis.from_url(REDIS)
        keys = [k async for k in r.scan_iter(match=f"{tag}:*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()
