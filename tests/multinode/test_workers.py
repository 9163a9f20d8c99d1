"""``miss-server --workers N`` (supervisor.py): N processes on one port.

A supervisor with two workers on PostgreSQL and Redis (a fresh schema and
key prefix, tests/support/cluster.py); ten clinicians write 50 messages
each to ten others, all through the one port, so that the kernel spreads
their connections over both workers (each worker's metrics port shows its
own). One worker is SIGKILLed mid-flow: the supervisor restarts it on the
same port, the clients reconnect, and every message a sender heard
``accepted`` for reaches its recipient exactly once (counts printed).
Also: the embedded defaults refuse ``--workers 2`` (exit 2, saying why),
workers that cannot start end the supervisor (exit 1) instead of a
restart loop, and SIGTERM drains every worker and exits 0 within the
grace period.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.cluster import POSTGRES, REDIS, Cluster, running_cluster
from tests.support.hubproc import BIN
from tests.support.traffic import Recipient, Sender, outcome, wait_until
from tests.support.wire import RawDevice

pytestmark = pytest.mark.slow

PAIRS = 10
PER_SENDER = 50
GRACE = 5.0  # shutdown_grace_seconds of the workers in the SIGTERM test


def free_port_range(count: int) -> int:
    """A port from which ``count`` consecutive ports are free now."""
    for _ in range(100):
        base = random.randrange(20_000, 60_000)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def scrape(port: int) -> dict[str, float]:
    """One worker's /metrics (its own port), as {series: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^(miss_[^\s{]+(?:\{[^}]*\})?) (\S+)$", text, re.MULTILINE)
    }


def scrape_or_none(port: int) -> dict[str, float] | None:
    try:
        return scrape(port)
    except OSError:
        return None


def worker_pids(supervisor: int) -> dict[int, int]:
    """{worker index: pid} of a supervisor's children (from /proc)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    pids = {}
    for pid in children:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"--worker" in args:
            pids[int(args[args.index(b"--worker") + 1])] = int(pid)
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def embedded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MISS_")}


async def pairs(cluster: Cluster) -> tuple[list[Sender], list[Recipient]]:
    codes = await cluster.invite_many(
        [(f"Dr Sender {i}", f"4000000{i:04d}") for i in range(PAIRS)]
        + [(f"Dr Recipient {i}", f"5000000{i:04d}") for i in range(PAIRS)]
    )
    devs = [RawDevice(cluster.urls[0]) for _ in codes]
    for dev, code in zip(devs, codes, strict=True):  # one by one: enrollments are metered per address
        await dev.enroll(code)
    await cluster.verify(*(d.user_id for d in devs))
    senders, recipients = [], []
    for s, r in zip(devs[:PAIRS], devs[PAIRS:], strict=True):
        peer, own = await s.lookup(r.user_id), await s.lookup(s.user_id)
        senders.append(Sender(s, peer, own, cluster.urls))
        recipients.append(Recipient(r, s.keys.box_pk, cluster.urls))
    return senders, recipients


def test_embedded_defaults_refuse_workers(tmp_path: Path) -> None:
    out = subprocess.run(
        [str(BIN / "miss-server"), "--workers", "2"],
        cwd=tmp_path,
        env=embedded_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2, out.stderr
    assert "workers = 2 needs the store and broker that several nodes share" in out.stderr
    assert "sqlite" in out.stderr and "use postgresql://" in out.stderr and "use redis://" in out.stderr
    assert not (tmp_path / "miss-data").exists()  # nothing was started


def test_workers_that_cannot_start_end_the_supervisor(tmp_path: Path) -> None:
    tag = "miss_test_" + secrets.token_hex(4)  # never migrated: each worker exits 1
    env = {**embedded_env(), "MISS_STORE": f"{POSTGRES}?schema={tag}", "MISS_BROKER": f"{REDIS}?prefix={tag}"}
    began = time.monotonic()
    out = subprocess.run(
        [str(BIN / "miss-server"), "--workers", "2", "--port", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stderr
    # Its own reason (the schema; or PostgreSQL itself, should another test have stopped it).
    assert re.search(r"miss-server: (no MiSS schema .*run `miss-admin migrate`|cannot connect)", out.stderr)
    assert re.search(r"worker \d exited with status 1 before serving", out.stderr), out.stderr
    assert "MiSS hub serving" not in out.stdout
    assert time.monotonic() - began < 20


async def test_worker_killed_under_load(tmp_path: Path) -> None:
    base = free_port_range(2)
    env = {"MISS_WORKERS": "2", "MISS_METRICS_PORT_BASE": str(base)}
    async with running_cluster(tmp_path, nodes=1, extra_env=env) as cluster:
        supervisor = cluster.nodes[0].proc
        assert supervisor is not None
        senders, recipients = await pairs(cluster)
        # The kernel spread the twenty connections over both workers: each
        # worker's own metrics port shows its share.
        before = [scrape(base), scrape(base + 1)]
        held = [m["miss_authenticated_devices"] for m in before]
        print(f"\nconnections per worker: {held}")
        assert sum(held) == 2 * PAIRS and min(held) > 0, held
        assert [m["miss_worker_restarts"] for m in before] == [0, 0]

        stop = asyncio.Event()
        readers = [asyncio.create_task(r.run(stop)) for r in recipients]
        progress = asyncio.Event()
        writers = [asyncio.create_task(s.run(PER_SENDER, progress)) for s in senders]
        first_pids = worker_pids(supervisor.pid)
        killed = first_pids[0]

        async def kill_worker_0() -> None:
            while sum(len(s.accepted) for s in senders) < PAIRS * PER_SENDER * 3 // 10:
                await progress.wait()
                progress.clear()
            accepted = [
                scrape(base)["miss_messages_accepted_total"],
                scrape(base + 1)["miss_messages_accepted_total"],
            ]
            print(f"accepted per worker before the kill: {accepted}")
            os.kill(killed, signal.SIGKILL)

        await asyncio.wait_for(asyncio.gather(kill_worker_0(), *writers), timeout=120)
        delivered = await wait_until(
            lambda: all(not r.missing(s.accepted) for s, r in zip(senders, recipients, strict=True)), 30
        )
        stop.set()
        await asyncio.gather(*readers)

        got = outcome(senders, recipients)
        reconnects = got.sender_reconnects + got.recipient_reconnects
        print(
            f"accepted {got.accepted}, delivered {got.seen} distinct ({got.redelivered} redeliveries "
            f"dropped by id), missing {got.missing}, unexpected {got.unexpected}; reconnects {reconnects}"
        )
        assert got.accepted == PAIRS * PER_SENDER
        assert delivered and got.missing == 0 and got.unexpected == 0 and got.seen == got.accepted
        # Those on the killed worker reconnected (through the same port).
        assert reconnects >= held[0]

        # The supervisor restarted worker 0 (a new process on the same
        # ports), and its metrics say so; worker 1 was never touched.
        after = await asyncio.to_thread(worker_pids, supervisor.pid)
        assert after[0] != killed and alive(after[0]) and after[1] == first_pids[1]
        # The new worker serves its metrics a moment after it shows in /proc.
        await wait_until(lambda: scrape_or_none(base) is not None, 15)
        restarted = scrape_or_none(base)
        assert restarted is not None and restarted["miss_worker_restarts"] == 1
        assert scrape(base + 1)["miss_worker_restarts"] == 0
        assert supervisor.poll() is None
        log = cluster.nodes[0].log_path.read_text()
        assert re.search(r"worker died; restarting it worker=0 status=-9", log), log[-2000:]


async def test_sigterm_drains_every_worker(tmp_path: Path) -> None:
    env = {"MISS_WORKERS": "2", "MISS_SHUTDOWN_GRACE_SECONDS": str(GRACE)}
    async with running_cluster(tmp_path, nodes=1, extra_env=env) as cluster:
        supervisor = cluster.nodes[0].proc
        assert supervisor is not None
        codes = await cluster.invite_many([(f"Dr Reader {i}", f"6000000{i:04d}") for i in range(8)])
        devs = [RawDevice(cluster.urls[0]) for _ in codes]
        for dev, code in zip(devs, codes, strict=True):
            await dev.enroll(code)
        workers = worker_pids(supervisor.pid)
        assert len(workers) == 2

        began = time.monotonic()
        supervisor.send_signal(signal.SIGTERM)
        closes = await asyncio.gather(*(d.until_closed(GRACE) for d in devs))
        status = await asyncio.to_thread(supervisor.wait, GRACE + 2)
        took = time.monotonic() - began
        codes = sorted(code or 0 for _, code in closes)
        print(f"\nsupervisor exited {status} after {took:.2f} s; close codes {codes}")
        assert status == 0
        assert took < GRACE
        assert all(code == 1001 for _, code in closes), closes  # told to go elsewhere, on both workers
        assert not any(alive(pid) for pid in workers.values())
        log = cluster.nodes[0].log_path.read_text()
        assert log.count("shut down seconds=") == 2, log[-2000:]  # each worker drained
