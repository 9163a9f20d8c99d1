"""The orchestrator's side of the load generator workers (``loadgen``).

:class:`WorkerPool` spawns the workers pinned to the load CPUs, sends them
requests over pipes, and runs *jobs* on all of them at once while polling
their counters, which feeds the progress display.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from typing import Any

from .loadgen import worker_main
from .measure import cpu_seconds

__all__ = ["WorkerPool"]

POLL_SECONDS = 0.1


class WorkerFailed(RuntimeError):
    pass


class WorkerPool:
    def __init__(self, n: int, cpus: set[int]) -> None:
        ctx = mp.get_context("spawn")
        self.conns = []
        self.procs = []
        for i in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main, args=(child, i, cpus), name=f"miss-bench-worker-{i}", daemon=True
            )
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def __len__(self) -> int:
        return len(self.conns)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def _reply(self, i: int, timeout: float = 600) -> Any:
        conn = self.conns[i]
        if not conn.poll(timeout):
            raise WorkerFailed(f"worker {i} did not answer within {timeout:.0f} s")
        try:
            status, value = conn.recv()
        except EOFError:
            raise WorkerFailed(f"worker {i} died (exit code {self.procs[i].exitcode})") from None
        if status != "ok":
            raise WorkerFailed(value)
        return value

    def call(self, i: int, cmd: str, **kwargs: Any) -> Any:
        self.conns[i].send((cmd, kwargs))
        return self._reply(i)

    def call_all(self, cmd: str, per_worker: list[dict[str, Any]] | None = None) -> list[Any]:
        kwargs = per_worker or [{} for _ in self.conns]
        for conn, kw in zip(self.conns, kwargs, strict=True):
            conn.send((cmd, kw))
        return [self._reply(i) for i in range(len(self.conns))]

    def statuses(self) -> list[dict[str, Any]]:
        return self.call_all("status")

    def start_job(self, name: str, per_worker: list[dict[str, Any]] | None = None) -> None:
        """Start job ``name`` on every worker; it runs until :meth:`finish_job`."""
        kwargs = per_worker or [{} for _ in self.conns]
        for conn, kw in zip(self.conns, kwargs, strict=True):
            conn.send((name, kw))
        for i in range(len(self.conns)):
            self._reply(i)

    def wait_job(
        self, on_poll: Callable[[list[dict[str, Any]]], bool | None] | None = None, timeout: float = 1800
    ) -> None:
        """Poll until no worker is busy (or ``on_poll`` returns True)."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = self.statuses()
            if on_poll is not None and on_poll(statuses):
                return
            if not any(s["busy"] for s in statuses):
                return
            if time.monotonic() > deadline:
                raise WorkerFailed(f"a job did not finish within {timeout:.0f} s")
            time.sleep(POLL_SECONDS)

    def finish_job(self) -> list[Any]:
        self.wait_job()
        return self.call_all("result")

    def job(
        self,
        name: str,
        per_worker: list[dict[str, Any]] | None = None,
        on_poll: Callable[[list[dict[str, Any]]], bool | None] | None = None,
    ) -> list[Any]:
        """Run job ``name`` on every worker and return their results in worker order."""
        self.start_job(name, per_worker)
        self.wait_job(on_poll)
        return self.finish_job()

    def close(self) -> None:
        for i, conn in enumerate(self.conns):
            try:
                conn.send(("exit", {}))
                self._reply(i, timeout=20)
            except (WorkerFailed, OSError, EOFError):
                pass
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
