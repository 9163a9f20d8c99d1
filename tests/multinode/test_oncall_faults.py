"""The timers of an urgent message survive the failure of a piece
(SPEC §14.6, docs/ARCHITECTURE.md "The path of one urgent message"): two
hub processes on PostgreSQL and a Redis of this test's own (so that
restarting it troubles no other test), with time-scaled policies.

* The node that accepted an urgent message is killed (SIGKILL) while a
  step is pending: the other node fires it within 2 s of its deadline,
  exactly once (one ``urgent.escalated`` audit event, one copy at the backup).
* Redis is restarted during an escalation: no step is lost or doubled
  (audit counts), and each backup gets its copy once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from miss_server.codes import code_hash, new_code
from miss_server.store.postgres import PostgresStore
from protocol.frames import Accepted, Deliver, Urgent, UrgentStatus
from protocol.oncall import Policy, Step, pack_policy
from tests.support.authority import verify
from tests.support.cluster import POSTGRES
from tests.support.hubproc import BIN, HubProcess
from tests.support.oncall_wire import OncallDevice, keys, opened, sealed
from tests.support.traffic import wait_until

pytestmark = pytest.mark.slow

ORG = "CHRU"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A ``redis-server`` child on a port of its own, which a test may stop and start again."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True, timeout=5
            )
            if out.stdout.strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@dataclass
class OncallCluster:
    nodes: list[HubProcess]
    store: PostgresStore
    schema: str
    redis: PrivateRedis
    rpps: int = 40_000_000_001

    async def clinician(self, node: int, name: str) -> OncallDevice:
        """A verified clinician with one device naming ``oncall``, on node ``node``."""
        now = time.time_ns() // 1_000_000
        user = await self.store.create_user(f"Dr {name}", str(self.rpps), "médecin", ORG, now)
        self.rpps += 1
        code = new_code()
        await self.store.add_enrollment_code(user.user_id, code_hash(code), now + 3_600_000)
        dev = OncallDevice(self.nodes[node].url)
        await dev.enroll(code)
        await verify(self.store, dev.user_id)
        return dev

    async def role(self, name: str, policy: Policy, *holders: OncallDevice) -> str:
        role = await self.store.create_role(name, ORG, False, pack_policy(policy), 0)
        for dev in holders:
            assert await self.store.assign_role(role.role, dev.user_id, 0)
        return role.role

    async def audit_count(self, action: str) -> int:
        conn = await asyncpg.connect(POSTGRES)
        try:
            n = await conn.fetchval(
                f'SELECT count(*) FROM "{self.schema}".audit_log WHERE action = $1', action
            )
        finally:
            await conn.close()
        return int(n)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[OncallCluster]:
    tag = "miss_test_" + secrets.token_hex(4)
    redis = PrivateRedis(tmp_path / "redis")
    await asyncio.to_thread(redis.start)
    env = {
        "MISS_STORE": f"{POSTGRES}?schema={tag}",
        "MISS_BROKER": f"{redis.url}?prefix={tag}",
        "MISS_PRESENCE_TTL_SECONDS": "3",
        "MISS_ESCALATION_MIN_INTERVAL_MS": "100",
        "MISS_ESCALATION_TICK_MS": "50",
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
    nodes = [HubProcess(tmp_path / f"node{i}", env) for i in range(2)]
    store = PostgresStore(env["MISS_STORE"])
    try:
        for node in nodes:
            await asyncio.to_thread(node.start)
        await store.open()
        yield OncallCluster(nodes, store, tag, redis)
    finally:
        for node in nodes:
            await node.stop_async()
        with contextlib.suppress(Exception):
            await store.close()
        await asyncio.to_thread(redis.stop)
        conn = await asyncpg.connect(POSTGRES)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{tag}" CASCADE')
        await conn.close()


def delivers(dev: OncallDevice, message_id: bytes) -> list[tuple[float, Deliver]]:
    return [(t, f) for t, f in dev.of(Deliver) if f.id == message_id]


async def test_a_pending_step_fires_once_on_the_other_node_when_the_accepting_node_is_killed(
    cluster: OncallCluster,
) -> None:
    sender = await cluster.clinician(0, "Sophie")
    holder = await cluster.clinician(1, "Hugo")
    backup = await cluster.clinician(1, "Bea")
    delay = 1500
    role = await cluster.role(
        "Cardiologie — garde", Policy(400, (Step(delay, user=backup.user_id),), 1000), holder
    )
    for dev in (holder, backup):
        dev.record()
    text = "Patient lit 3 : troponine en hausse"
    send = sealed(sender, role, keys([holder], [backup]), text, urgent=Urgent())
    sent = time.monotonic()
    assert await sender.ask(send) == Accepted(send.id)
    await asyncio.to_thread(cluster.nodes[0].kill)  # the accepting node, the step still pending
    assert time.monotonic() - sent < delay / 1000, "killed after the step: the test would prove nothing"

    assert await wait_until(lambda: bool(delivers(backup, send.id)), delay / 1000 + 2.5)
    await asyncio.sleep(1.5)  # a second firing would show by now
    for dev in (holder, backup):
        await dev.stop_recording()
    copies = delivers(backup, send.id)
    escalated = await cluster.audit_count("urgent.escalated")
    late = copies[0][0] - sent - delay / 1000
    print(
        f"\nstep fired {late:.2f} s after its deadline; "
        f"urgent.escalated events {escalated}, copies at the backup {len(copies)}"
    )
    assert escalated == 1 and len(copies) == 1
    assert late < 2.0
    got = copies[0][1]
    assert got.step == 1 and opened(backup, got, sender).body == text
    assert len(delivers(holder, send.id)) == 1


async def test_redis_restarted_during_an_escalation_loses_and_doubles_no_step(cluster: OncallCluster) -> None:
    sender = await cluster.clinician(0, "Sophie")
    holder = await cluster.clinician(1, "Hugo")
    backup1 = await cluster.clinician(0, "Bea")
    backup2 = await cluster.clinician(1, "Basile")
    policy = Policy(300, (Step(1000, user=backup1.user_id), Step(1000, user=backup2.user_id)), 800)
    role = await cluster.role("Réanimation — senior", policy, holder)
    for dev in (sender, holder, backup1, backup2):
        dev.record()
    text = "Choc septique box 2"
    send = sealed(sender, role, keys([holder], [backup1], [backup2]), text, urgent=Urgent())
    await sender.send_frame(send)
    assert await wait_until(lambda: bool(sender.of(Accepted)), 5)

    await asyncio.sleep(0.5)
    await asyncio.to_thread(cluster.redis.stop)  # step 1 falls due during the outage
    await asyncio.sleep(1.0)
    await asyncio.to_thread(cluster.redis.start)

    def finished() -> bool:
        return any(f.state == "unacknowledged" for _, f in sender.of(UrgentStatus))

    assert await wait_until(finished, 10), [f for _, f in sender.seen]
    await asyncio.sleep(1.0)
    for dev in (sender, holder, backup1, backup2):
        await dev.stop_recording()
    escalated = await cluster.audit_count("urgent.escalated")
    unacknowledged = await cluster.audit_count("urgent.unacknowledged")
    b1, b2 = delivers(backup1, send.id), delivers(backup2, send.id)
    states = [(f.state, f.step) for _, f in sender.of(UrgentStatus)]
    print(
        f"\nurgent.escalated {escalated}, urgent.unacknowledged {unacknowledged}; "
        f"copies at backup 1: {len(b1)}, backup 2: {len(b2)}; sender's statuses {states}"
    )
    assert escalated == 2 and unacknowledged == 1
    assert len({f.seq for _, f in b1}) == 1 and len({f.seq for _, f in b2}) == 1
    assert [f.step for _, f in b1] == [1] and [f.step for _, f in b2] == [2]
    assert opened(backup1, b1[0][1], sender).body == text and opened(backup2, b2[0][1], sender).body == text
    assert sorted(s for s in states if s[0] == "escalated") == [("escalated", 1), ("escalated", 2)]
