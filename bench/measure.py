"""What the bench reads from ``/proc``: CPU time and resident memory of
processes, and which processes serve a run's PostgreSQL and Redis.

CPU time is ``utime + stime`` of ``/proc/PID/stat`` (every thread of the
process, in clock ticks, usually 10 ms): the figure the kernel charges the
process, whatever it spent it on. A :class:`CpuMeter` takes a snapshot of a
set of processes at the start and at the end of the load window; processes
that appear in between count from zero, processes that exit in between are
lost (the bench's processes live through the whole window).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = [
    "CpuMeter",
    "cpu_seconds",
    "main_thread_cpu_seconds",
    "pid_listening_on",
    "postgres_pids",
    "process_name",
    "redis_pids",
    "rss_kib",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_cpu(path: str) -> float:
    try:
        with open(path, "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far; 0.0 if it is gone."""
    return _stat_cpu(f"/proc/{pid}/stat")


def main_thread_cpu_seconds(pid: int) -> float:
    """The same for the process's main thread alone (an asyncio server's event loop)."""
    return _stat_cpu(f"/proc/{pid}/task/{pid}/stat")


def rss_kib(pid: int) -> int:
    """Resident set size (VmRSS) of a process in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def _local_ports_to(pids: Iterable[int], remote_port: int) -> set[int]:
    """Local TCP ports of the sockets these processes hold towards ``remote_port``."""
    inodes: set[int] = set()
    for pid in pids:
        inodes |= _socket_inodes(pid)
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, remote, inode = parts[1], parts[2], int(parts[9])
                    if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                        ports.add(int(local.rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


def postgres_pids(client_pids: Iterable[int], port: int = 5432) -> list[int]:
    """The PostgreSQL processes working for these clients: the backends of
    their connections (found by client port) and the server's own auxiliary
    processes (WAL writer, checkpointer, ...), which do the WAL flushes.
    Backends of other clients of the same server are left out."""
    ports = _local_ports_to(client_pids, port)
    found = []
    for pid in _all_pids():
        if process_name(pid) != "postgres" and not _cmdline(pid).startswith("postgres"):
            continue
        cmd = _cmdline(pid)
        if "(" in cmd and ")" in cmd:  # a backend: "postgres: user db 127.0.0.1(54321) idle"
            client_port = cmd[cmd.rindex("(") + 1 : cmd.rindex(")")]
            if client_port.isdigit() and int(client_port) in ports:
                found.append(pid)
        else:  # the postmaster and its auxiliary processes
            found.append(pid)
    return sorted(found)


def redis_pids() -> list[int]:
    return sorted(pid for pid in _all_pids() if process_name(pid) == "redis-server")


@dataclass
class CpuMeter:
    """CPU seconds spent by a group of processes between :meth:`start` and
    :meth:`stop`. ``find`` is called at both ends, so that processes that
    appear during the window (a PostgreSQL backend) are counted."""

    find: Callable[[], list[int]]
    _start: dict[int, tuple[float, float]] = field(default_factory=dict)
    seconds: float = 0.0
    #: the part of ``seconds`` spent by the processes' main threads
    main_thread_seconds: float = 0.0
    pids: list[int] = field(default_factory=list)

    def start(self) -> None:
        self._start = {pid: (cpu_seconds(pid), main_thread_cpu_seconds(pid)) for pid in self.find()}

    def stop(self) -> float:
        end_pids = self.find()
        self.pids = sorted(set(end_pids) | set(self._start))
        self.seconds = self.main_thread_seconds = 0.0
        for pid in end_pids:
            total, main = self._start.get(pid, (0.0, 0.0))
            self.seconds += max(0.0, cpu_seconds(pid) - total)
            self.main_thread_seconds += max(0.0, main_thread_cpu_seconds(pid) - main)
        return self.seconds


def pid_listening_on(port: int) -> int | None:
    """The process with a listening TCP socket on ``port`` (for ``--url``)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(int(parts[9]))
        except OSError:
            continue
    for pid in _all_pids():
        if _socket_inodes(pid) & inodes:
            return pid
    return None


@contextmanager
def pinned(cpus: set[int]) -> Iterator[None]:
    """This process on ``cpus`` for a while (the clients, off the servers' CPU)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def peak_rss_kib(pid: int) -> dict[str, int | None]:
    """``VmHWM`` (the peak resident set so far) and ``VmRSS`` of a process, KiB."""
    out: dict[str, int | None] = {"VmHWM": None, "VmRSS": None}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in out:
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out
