"""``miss-server --workers N``: N hub processes on one port, kept running.

Python runs one core per process, so a machine's cores need processes.
With ``workers`` > 1 the process started is a supervisor that serves
nothing itself: it starts N workers, each an ordinary hub node (its own
connections, broker subscriptions and presence entries, exactly as a node
on another machine) sharing the PostgreSQL store and the Redis broker that
several nodes share, and each listening on the same host:port with
SO_REUSEPORT, so that the kernel spreads new connections among them.

How workers are started: each is ``python -m miss_server`` with the
supervisor's own arguments plus hidden ``--worker I --parent PID
--restarts K`` (worker.py). A re-exec rather than ``multiprocessing``:
a worker then starts exactly as a single ``miss-server`` does (same
configuration sources, read again and validated, same exit statuses, same
signal handling and drain), carries no state inherited from the supervisor
(no event loop, sockets or threads across a fork; spawn would re-import
everything anyway), and the supervisor needs only its exit status and its
one "serving" line on stdout, which asyncio's subprocess support gives.

What the supervisor does:

* **Port.** It binds host:port itself with SO_REUSEPORT, without listening
  (so no connection is queued to it): port 0 is resolved once for every
  worker, a port already taken is reported before any worker starts, and
  a restarted worker always gets its port back.
* **Signals.** SIGTERM or SIGINT is forwarded to every worker as SIGTERM;
  each drains as a single node does (``shutdown_grace_seconds``); the
  supervisor waits for them all, SIGKILLs any still there past the grace
  period and its slack, and exits 0. A second signal changes nothing.
* **Restarts.** A worker that exits while no stop was asked for is
  restarted after a backoff (0.5 s doubling to 10 s, back to 0.5 s once a
  worker has served for 30 s), logged with the counts, and the new worker
  reports its slot's count as ``miss_worker_restarts``. Nothing accepted is
  lost: ``accepted`` means stored in PostgreSQL, and clients resend the rest
  after reconnecting.
* **Giving up.** A worker that exits before serving during the first start
  (a store it cannot open, a schema not migrated...) stops everything: the
  supervisor exits with that worker's status (2 for a configuration error,
  1 otherwise). Later, a slot whose worker dies before serving 8 times in a
  row (about 40 s with the backoff) stops everything likewise (exit 1),
  rather than looping forever.
  A worker that serves, then crashes, is restarted however often.
* If the supervisor itself is killed outright, each worker gets SIGTERM
  from the kernel (worker.die_with_parent) and drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

from .config import Settings

__all__ = ["Supervisor", "run_supervisor"]

log = logging.getLogger("miss.supervisor")

#: First wait before restarting a worker that died; doubled each time up to RESTART_MAX.
RESTART_MIN = 0.5
RESTART_MAX = 10.0
#: A worker that served this long resets its slot's backoff.
STABLE_AFTER = 30.0
#: Consecutive deaths before serving of one slot after which the supervisor gives
#: up: with the backoff, about 40 s of failing starts (a PostgreSQL restart fits).
START_FAILURES = 8
#: Past the grace period, how long the supervisor waits for workers before SIGKILL
#: (a worker itself gives up its drain EXIT_SLACK = 5 s after the grace period).
STOP_SLACK = 7.0
#: The line a worker prints on stdout once it serves (__main__.py).
READY_PREFIX = b"MiSS worker "


class GiveUp(Exception):
    """The workers cannot be kept running; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Slot:
    """Worker ``index``: its current process and how often it was restarted."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    #: Set once a worker of this slot first serves.
    ever_served: asyncio.Event = field(default_factory=asyncio.Event)


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT, not listening: it
    holds the port for the workers (which bind it too) and resolves port 0.
    Raises OSError when the port is taken by a process without SO_REUSEPORT."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class Supervisor:
    """Run ``settings.workers`` workers until a signal or :class:`GiveUp`
    (see the module doc). ``argv`` are the arguments ``miss-server`` was
    given, passed on to each worker."""

    def __init__(self, settings: Settings, argv: list[str]) -> None:
        self.settings = settings
        self.argv = argv
        self.slots = [Slot(i) for i in range(settings.workers)]
        self.port = settings.port
        self.restarts = 0
        self._stopping = asyncio.Event()
        self._serving = False
        self._failure: asyncio.Future[GiveUp] | None = None

    def _command(self, slot: Slot) -> list[str]:
        return [
            sys.executable, "-m", "miss_server", *self.argv, "--port", str(self.port),
            "--worker", str(slot.index), "--parent", str(os.getpid()), "--restarts", str(slot.restarts),
        ]  # fmt: skip

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._failure = loop.create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        if self.settings.metrics_port_base is None:
            log.warning(
                "metrics_port_base is not set: /metrics on the shared port answers for one worker "
                "at random; set it to scrape each worker (docs/OPERATIONS.md)"
            )
        keepers = [asyncio.create_task(self._keep(slot), name=f"worker-{slot.index}") for slot in self.slots]
        status = 0
        first = asyncio.gather(*(slot.ever_served.wait() for slot in self.slots))
        stop = asyncio.create_task(self._stopping.wait())
        try:
            waiting: set[asyncio.Future[Any]] = {first, self._failure, stop}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if first.done() and not self._failure.done() and not self._stopping.is_set():
                self._serving = True
                scheme = "wss" if self.settings.tls_cert else "ws"
                print(
                    f"MiSS hub serving {scheme}://{self.settings.host}:{self.port}/ "
                    f"(store {self.settings.store_display}, {len(self.slots)} workers)",
                    flush=True,
                )
                log.info("workers serving", extra={"workers": len(self.slots), "port": self.port})
                waiting = {self._failure, stop}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if self._failure.done():
                failure = self._failure.result()
                print(f"miss-server: {failure}", file=sys.stderr, flush=True)
                status = failure.status
        finally:
            first.cancel()
            stop.cancel()
            await asyncio.gather(first, stop, return_exceptions=True)
            await self._stop_all(keepers)
        return status

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping.is_set():
            log.info("already stopping", extra={"signal": sig.name})
            return
        log.info("stopping the workers on signal", extra={"signal": sig.name})
        self._stopping.set()

    def _give_up(self, failure: GiveUp) -> None:
        assert self._failure is not None
        if not self._failure.done():
            self._failure.set_result(failure)

    async def _keep(self, slot: Slot) -> None:
        """Run slot's worker, restarting it until a stop or a give-up."""
        try:
            await self._keep_running(slot)
        except Exception as exc:  # cannot even start a process (no memory, no python...): give up
            log.exception("cannot run a worker", extra={"worker": slot.index})
            self._give_up(GiveUp(f"cannot run worker {slot.index}: {exc}"))

    async def _keep_running(self, slot: Slot) -> None:
        loop = asyncio.get_running_loop()
        delay, failures = RESTART_MIN, 0
        while not self._stopping.is_set() and not (self._failure and self._failure.done()):
            began = loop.time()
            served, status = await self._run_once(slot)
            if self._stopping.is_set():
                return
            if not self._serving and not served:
                self._give_up(
                    GiveUp(
                        f"worker {slot.index} exited with status {status} before serving",
                        2 if status == 2 else 1,
                    )
                )
                return
            failures = 0 if served else failures + 1
            if loop.time() - began >= STABLE_AFTER:
                delay = RESTART_MIN
            if failures >= START_FAILURES:
                self._give_up(GiveUp(f"worker {slot.index} died {failures} times in a row before serving"))
                return
            slot.restarts += 1
            self.restarts += 1
            log.error(
                "worker died; restarting it",
                extra={"worker": slot.index, "status": status, "in_seconds": delay,
                       "worker_restarts": slot.restarts, "restarts": self.restarts},
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, RESTART_MAX)

    async def _run_once(self, slot: Slot) -> tuple[bool, int]:
        """Start slot's worker and wait for it to exit: (whether it served, its status)."""
        proc = await asyncio.create_subprocess_exec(
            *self._command(slot), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE
        )
        slot.proc = proc
        if self._stopping.is_set():  # the signal came while it was being started
            proc.send_signal(signal.SIGTERM)
        served = asyncio.Event()
        assert proc.stdout is not None
        pump = asyncio.create_task(self._pump(proc.stdout, served, slot))
        status = await proc.wait()
        await pump
        slot.proc = None
        return served.is_set(), status

    async def _pump(self, out: asyncio.StreamReader, served: asyncio.Event, slot: Slot) -> None:
        """Copy a worker's stdout to ours, noting its "serving" line."""
        while line := await out.readline():
            with contextlib.suppress(OSError):  # nobody reads our stdout any more: keep supervising
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
            if line.startswith(READY_PREFIX):
                served.set()
                slot.ever_served.set()

    async def _stop_all(self, keepers: list[asyncio.Task[None]]) -> None:
        """SIGTERM every worker, wait for their drain, SIGKILL what is left."""
        self._stopping.set()
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                slot.proc.send_signal(signal.SIGTERM)
        done, late = await asyncio.wait(keepers, timeout=self.settings.shutdown_grace_seconds + STOP_SLACK)
        if late:
            for slot in self.slots:
                if slot.proc is not None and slot.proc.returncode is None:
                    log.warning(
                        "worker still there after the grace period: killed", extra={"worker": slot.index}
                    )
                    slot.proc.kill()
            await asyncio.wait(late, timeout=5)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("worker supervision failed", exc_info=task.exception())
        log.info("workers stopped", extra={"restarts": self.restarts})


def run_supervisor(settings: Settings, argv: list[str]) -> int:
    """Hold the port, run the workers until a signal; the exit status
    (0 after a stop, 1 or 2 when the workers cannot be kept running)."""
    try:
        reserved = reserve_port(settings.host, settings.port)
    except OSError as exc:
        print(
            f"miss-server: cannot start: {exc.strerror or exc} ({settings.host}:{settings.port})",
            file=sys.stderr,
        )
        return 1
    with reserved:
        supervisor = Supervisor(settings, argv)
        supervisor.port = int(reserved.getsockname()[1])
        return asyncio.run(supervisor.run())
