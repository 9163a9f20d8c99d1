"""No accepted message is lost when a piece fails (docs/ARCHITECTURE.md, guarantee 1).

Ten clinicians on one node write 100 messages each to ten others on the
other node while something breaks. Each test ends by checking, and
printing, that every message a sender heard ``accepted`` for reached its
recipient exactly once as the recipient sees it (duplicates dropped by id),
and that no message arrived that was not accepted.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Awaitable, Callable

import pytest

from tests.support.cluster import Cluster
from tests.support.traffic import Recipient, Sender, outcome, wait_until
from tests.support.wire import RawDevice

pytestmark = [pytest.mark.slow, pytest.mark.exclusive]  # stops the shared Redis and PostgreSQL

PAIRS = 10
PER_SENDER = 100


async def pairs_across(cluster: Cluster) -> tuple[list[Sender], list[Recipient]]:
    codes = await cluster.invite_many(
        [(f"Dr Sender {i}", f"2000000{i:04d}") for i in range(PAIRS)]
        + [(f"Dr Recipient {i}", f"3000000{i:04d}") for i in range(PAIRS)]
    )
    devs = [RawDevice(cluster.urls[0]) for _ in range(PAIRS)] + [
        RawDevice(cluster.urls[1]) for _ in range(PAIRS)
    ]
    for dev, code in zip(devs, codes, strict=True):  # one by one: enrollments are metered per address
        await dev.enroll(code)
    await cluster.verify(*(d.user_id for d in devs))
    senders, recipients = [], []
    for s, r in zip(devs[:PAIRS], devs[PAIRS:], strict=True):
        peer, own = await s.lookup(r.user_id), await s.lookup(s.user_id)
        senders.append(Sender(s, peer, own, cluster.urls))
        recipients.append(Recipient(r, s.keys.box_pk, cluster.urls[::-1]))
    return senders, recipients


async def run_with_fault(
    cluster: Cluster, fault: Callable[[list[Sender]], Awaitable[None]], at: int = PAIRS * PER_SENDER * 3 // 10
) -> tuple[list[Sender], list[Recipient]]:
    """Start the traffic, call ``fault`` (with the senders) once ``at`` messages are accepted,
    let everything finish, then check and print the outcome."""
    senders, recipients = await pairs_across(cluster)
    stop = asyncio.Event()
    readers = [asyncio.create_task(r.run(stop)) for r in recipients]
    progress = asyncio.Event()
    writers = [asyncio.create_task(s.run(PER_SENDER, progress)) for s in senders]

    async def inject() -> None:
        while sum(len(s.accepted) for s in senders) < at:
            await progress.wait()
            progress.clear()
        await fault(senders)

    await asyncio.wait_for(asyncio.gather(inject(), *writers), timeout=240)
    delivered = await wait_until(
        lambda: all(not r.missing(s.accepted) for s, r in zip(senders, recipients, strict=True)), 60
    )
    stop.set()
    await asyncio.gather(*readers)

    got = outcome(senders, recipients)
    print(
        f"\naccepted {got.accepted}, delivered {got.seen} distinct ({got.redelivered} redeliveries dropped "
        f"by id), missing {got.missing}, unexpected {got.unexpected}; reconnects: senders "
        f"{got.sender_reconnects}, recipients {got.recipient_reconnects}; retryable errors {got.retried}"
    )
    assert got.accepted == PAIRS * PER_SENDER
    assert delivered and got.missing == 0 and got.unexpected == 0 and got.seen == got.accepted
    return senders, recipients


async def test_node_killed_with_1000_messages_in_flight(cluster: Cluster) -> None:
    async def kill_senders_node(_: list[Sender]) -> None:
        await asyncio.to_thread(cluster.nodes[0].kill)

    senders, _ = await run_with_fault(cluster, kill_senders_node)
    assert all(s.reconnects >= 1 for s in senders)  # every sender lost its node


REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "",
    "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


def redis_answers() -> bool:
    out = subprocess.run(["redis-cli", "ping"], capture_output=True, text=True, timeout=5)
    return out.stdout.strip() == "PONG"


async def test_redis_restarted_mid_flow(cluster: Cluster) -> None:
    async def restart_redis(_: list[Sender]) -> None:
        await asyncio.to_thread(
            subprocess.run, ["redis-cli", "shutdown", "nosave"], capture_output=True, timeout=10
        )
        try:
            await asyncio.sleep(1.0)  # a real outage: publishes fail, subscriptions die
        finally:
            await asyncio.to_thread(subprocess.run, REDIS_START, check=True, timeout=10)
            assert await wait_until(redis_answers, 10), "Redis did not come back"

    await run_with_fault(cluster, restart_redis)


def postgres_answers() -> bool:
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"], timeout=5).returncode == 0


def pg_ctl(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[0]
    cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action]
    subprocess.run([*cmd, "-m", "fast"] if action == "stop" else cmd, check=True, timeout=60)


async def test_postgres_stopped_mid_flow(cluster: Cluster) -> None:
    async def stop_postgres(senders: list[Sender]) -> None:
        await asyncio.to_thread(pg_ctl, "stop")
        try:
            # The outage lasts until every sender has met storage_unavailable
            # (and so backed off and retried the same message) at least once.
            met = await wait_until(
                lambda: all(s.retryable_errors["storage_unavailable"] for s in senders), 30
            )
            assert met, "not every sender was refused while PostgreSQL was down"
        finally:
            await asyncio.to_thread(pg_ctl, "start")
            assert await wait_until(postgres_answers, 30), "PostgreSQL did not come back"

    senders, _ = await run_with_fault(cluster, stop_postgres)
    # Senders were told to retry, not lied to: the run's checks show that
    # every message they heard "accepted" for was delivered.
    assert sum(s.retryable_errors["storage_unavailable"] for s in senders) > 0
