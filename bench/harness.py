"""Start and stop what the bench measures: hub nodes, the bare relay, and
the PostgreSQL schema and Redis prefix of a ``services`` run.

Every server runs as a child process pinned to the *server CPUs* (CPU 0 on
this 2-core machine) with a raised open-file limit, while the load
generators run on the others, so that neither steals the other's core.
PostgreSQL and Redis are shared services of the machine: the bench does not
pin, stop or restart them; it only creates (and afterwards drops) its own
schema and key prefix.

The hubs the bench starts trust the run's own verification authority
(``MISS_AUTHORITY_KEY``, a key made for the run) and get budgets out of
reach (:data:`UNLIMITED`) unless a scenario is about the limits.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "BIN",
    "DEFAULT_POSTGRES",
    "DEFAULT_REDIS",
    "RELAYS",
    "UNLIMITED",
    "ServerProcess",
    "Services",
    "cpu_split",
    "hub_settings",
    "raise_fd_limit",
    "start_hub",
    "start_relay",
]

BIN = Path(sys.executable).parent
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
FD_LIMIT = 65536
_URL_LINE = re.compile(r"serving (ws://\S+)")
#: The hub's budgets (``rate_*`` settings) while the bench measures
#: throughput, not the limits: out of reach, since every simulated device
#: comes from 127.0.0.1.
UNLIMITED_RATE = "1000000/s burst 1000000"
UNLIMITED = {
    "rate_device": UNLIMITED_RATE,
    "rate_address": UNLIMITED_RATE,
    "rate_auth": UNLIMITED_RATE,
    "rate_failed_auth": UNLIMITED_RATE,
    "rate_ack": UNLIMITED_RATE,
    "rate_search": UNLIMITED_RATE,
    # A reconnection storm from one address is the point of some scenarios.
    "max_pending_per_address": "1000000",
    "max_pending": "1000000",
}


def cpu_split() -> tuple[set[int], set[int]]:
    """(server CPUs, load generator CPUs): the first allowed CPU for the
    servers, the rest for the load; one CPU only: both share it."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    return {cpus[0]}, set(cpus[1:])


def raise_fd_limit(target: int = FD_LIMIT) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (root may raise the hard limit too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in ((target, max(target, hard)), (min(target, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, want)
            return want[0]
        except (ValueError, OSError):
            continue
    return soft


def _pinned(cpus: set[int]) -> Callable[[], None]:
    def setup() -> None:  # runs in the child between fork and exec
        os.sched_setaffinity(0, cpus)
        raise_fd_limit()

    return setup


@dataclass
class ServerProcess:
    """A hub node or the relay, as a pinned child process."""

    name: str
    proc: subprocess.Popen[str]
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _start(name: str, argv: list[str], env: dict[str, str], cwd: Path, cpus: set[int]) -> ServerProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    log_path = cwd / f"{name}.log"
    with log_path.open("a") as log:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            preexec_fn=_pinned(cpus),
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = _URL_LINE.search(line)
        if m:
            return ServerProcess(name, proc, m.group(1), log_path)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"{name} did not start; its log ({log_path}):\n{log_path.read_text()[-3000:]}")


def hub_settings(authority_key: str, **rates: str | None) -> dict[str, str]:
    """The environment the bench gives its hubs: the run's verification
    authority and every budget out of reach (``UNLIMITED``), except the
    ``rate_*`` settings given here (a scenario about the limits); a value of
    ``None`` leaves that budget at the hub's default."""
    env = {"MISS_AUTHORITY_KEY": authority_key}
    budgets: dict[str, str | None] = {**UNLIMITED, **rates}
    for key, value in budgets.items():
        if value is not None:
            env[f"MISS_{key.upper()}"] = value
    return env


def start_hub(
    name: str, workdir: Path, store: str, broker: str, cpus: set[int], settings: dict[str, str]
) -> ServerProcess:
    """``miss-server`` on a free port with this store and broker, and the
    ``MISS_*`` ``settings`` of :func:`hub_settings` (the caller's own
    ``MISS_*`` variables are not passed on)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISS_")}
    env.update(settings)
    env.update({"MISS_STORE": store, "MISS_BROKER": broker, "MISS_PORT": "0"})
    env["MISS_LOG_LEVEL"] = os.environ.get("MISS_BENCH_HUB_LOG_LEVEL", "info")
    return _start(name, [str(BIN / "miss-server")], env, workdir, cpus)


#: The relays ``miss-bench run --relay`` can measure the hub against: the
#: module each runs.
RELAYS = {"websockets": "bench.relay", "sans-io": "bench.relay_sansio"}


def start_relay(
    workdir: Path, cpus: set[int], name: str = "relay", kind: str = "websockets"
) -> ServerProcess:
    """The relay of ``kind`` (:data:`RELAYS`) on a free port (log: ``workdir/NAME.log``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISS_")}
    return _start(name, [sys.executable, "-m", RELAYS[kind], "--port", "0"], env, workdir, cpus)


def _with_query(url: str, key: str, value: str) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), (key, value)]
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass
class Services:
    """The PostgreSQL schema and Redis key prefix of one run.

    The base URLs come from ``MISS_STORE``/``MISS_BROKER`` (defaults: this
    machine's ``test`` database and Redis db 0). Unless a URL already names a
    schema or prefix, the run gets its own, created here and dropped by
    :meth:`cleanup`; one that was given is used as is and left in place."""

    store: str
    broker: str
    own_schema: str | None = None
    own_prefix: str | None = None
    base_store: str = ""
    base_broker: str = ""
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_env(cls) -> Services:
        base_store = os.environ.get("MISS_STORE", DEFAULT_POSTGRES)
        base_broker = os.environ.get("MISS_BROKER", DEFAULT_REDIS)
        if not base_store.startswith(("postgresql://", "postgres://")):
            raise SystemExit(
                f"miss-bench: --backend services needs a postgresql:// MISS_STORE, not {base_store}"
            )
        if not base_broker.startswith(("redis://", "rediss://")):
            raise SystemExit(
                f"miss-bench: --backend services needs a redis:// MISS_BROKER, not {base_broker}"
            )
        tag = "miss_bench_" + secrets.token_hex(4)
        store, broker, own_schema, own_prefix = base_store, base_broker, None, None
        if "schema" not in dict(parse_qsl(urlsplit(base_store).query)):
            store, own_schema = _with_query(base_store, "schema", tag), tag
        if "prefix" not in dict(parse_qsl(urlsplit(base_broker).query)):
            broker, own_prefix = _with_query(base_broker, "prefix", tag), tag
        return cls(store, broker, own_schema, own_prefix, base_store, base_broker)

    @property
    def postgres_port(self) -> int:
        return urlsplit(self.base_store).port or 5432

    def migrate(self) -> None:
        """``miss-admin migrate``: the operator's step before a hub starts."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MISS_")}
        env["MISS_STORE"] = self.store
        out = subprocess.run(
            [str(BIN / "miss-admin"), "--store", self.store, "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"miss-admin migrate failed: {out.stderr.strip()}")

    def cleanup(self) -> None:
        asyncio.run(self._cleanup())

    async def _cleanup(self) -> None:
        import asyncpg
        import redis.asyncio as aioredis

        if self.own_schema:
            conn = await asyncpg.connect(self.base_store.split("?", 1)[0])
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{self.own_schema}" CASCADE')
            finally:
                await conn.close()
        if self.own_prefix:
            r = aioredis.Redis.from_url(self.base_broker.split("?", 1)[0])
            try:
                keys = [k async for k in r.scan_iter(match=f"{self.own_prefix}*", count=1000)]
                for i in range(0, len(keys), 1000):
                    await r.delete(*keys[i : i + 1000])
            finally:
                await r.aclose()
