"""Load generator worker: one process, one asyncio loop, a slice of the
simulated devices.

Theory of operation
-------------------
The orchestrator (``pool.WorkerPool``) spawns the workers pinned to the
load CPUs and talks to each over a pipe: a request, then one reply. Quick
requests (``init``, ``directory``, ``status``, ``collect``) are answered at
once; long ones are *jobs* (``enroll``, ``connect``, ``run``, ``blast``,
``disconnect``) that start a task and answer ``started``; the orchestrator
then polls ``status`` (which drives its progress bar) until the job is done
and fetches its ``result``.

What is measured here, per delivered message: the monotonic time at which
the message was *scheduled* to leave (written by the sender inside the
encrypted body) and the time the recipient had opened and checked it.
``CLOCK_MONOTONIC`` is one clock for the whole machine, so the two may come
from different processes. Scheduled rather than actual send time: when the
system falls behind a fixed rate, the wait counts (no coordinated
omission). Each sender also records how late it actually sent (its *lag*),
so that a load generator that cannot keep up shows as such.

A request the hub refuses with ``rate_limited`` is counted apart (counter
``rate_limited``, not an error) and sent again with the same id after the
``retry_after`` it was told, as a client must (SPEC §6.2); the latency of
such a message includes the wait. The ``flood`` scenario's *flooder* is the
exception: its frames are sealed beforehand (``flood_prepare``), written as
fast as the socket takes them without waiting for any answer, never sent
again, and counted under ``flood_*`` so that they stay out of the figures of
the legitimate traffic; a delivery of a flood message (body ``flood|...``)
is counted as ``flood_delivered``.

Teams (SPEC §13): a flow may be a team's (``Flow.team``); the worker then
seals each message once and wraps its key for every target, with the team's
head it was given (``teams``). The ``team_change`` job sends signed
membership records from one device and waits for each ``team_ok``; the
``probe`` job sends a few messages of the first flow one at a time and
returns their ids, for the orchestrator to measure what the hub stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake

from protocol import crypto
from protocol.frames import (
    CLIENT_FRAMES,
    SERVER_FRAMES,
    Accepted,
    Deliver,
    Delivered,
    Error,
    Send,
    TeamChange,
    TeamChanged,
    TeamOk,
    decode,
    encode,
)

from .client import Device, HubRefused
from .harness import raise_fd_limit
from .plan import Entry, Flow

__all__ = ["worker_main"]

RETRYABLE = ("rate_limited", "storage_unavailable")
#: Body prefix of the flooder's messages.
FLOOD_MARK = "flood|"
CLOSED_LOOP_TIMEOUT = 30.0
TROUBLE = (ConnectionClosed, InvalidHandshake, OSError, TimeoutError, HubRefused)


def worker_main(conn: Connection, worker_id: int, cpus: set[int]) -> None:
    """Entry point of a spawned worker process."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, cpus)
    raise_fd_limit()
    asyncio.run(Worker(conn, worker_id).serve())


class Worker:
    def __init__(self, conn: Connection, worker_id: int) -> None:
        self.conn = conn
        self.worker_id = worker_id
        self.devices: dict[int, Device] = {}
        self.mode = "hub"
        self.directory: dict[int, Entry] = {}
        self.users: dict[int, str] = {}
        self.by_device_id: dict[str, Entry] = {}
        self.flows: list[Flow] = []
        #: Teams of the team flows, by index: (team id, current head of its chain).
        self.teams: dict[int, tuple[str, bytes]] = {}
        #: ``auth.caps`` of the connections to a hub (``("teams",)`` when teams are used).
        self.caps: tuple[str, ...] | None = None
        #: Requests waiting for their answer: by ``rid`` (team_change) and by message id (probe).
        self.rid_waiters: dict[int, asyncio.Future[Any]] = {}
        self.accept_waiters: dict[bytes, asyncio.Future[Any]] = {}
        self.next_rid = 1
        self.job: asyncio.Task[Any] | None = None
        self.job_name = ""
        self.exit = asyncio.Event()
        # The flooder (flood scenario), if this worker has it: kept across collects.
        self.flooder: Device | None = None
        self.flood_frames: list[bytes] = []
        self.flood_ids: set[bytes] = set()
        self.reset()

    def reset(self) -> None:
        self.counters: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.sched_ns = array("q")  # per delivery: scheduled send time
        self.recv_ns = array("q")  # per delivery: opened and checked by the recipient
        self.lag_ns = array("q")  # per send: actual - scheduled
        self.accept_ns = array("q")  # per send: accepted - actually sent
        self.outstanding: dict[bytes, tuple[int, bytes, Device]] = {}
        self.waiters: dict[bytes, list[Any]] = {}
        self.all_accepted: asyncio.Event | None = None
        self.accept_target = 0
        self.window: asyncio.Semaphore | None = None

    # --- command loop -----------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.conn.fileno(), self._on_readable)
        await self.exit.wait()
        loop.remove_reader(self.conn.fileno())
        await asyncio.gather(*(d.close() for d in self.devices.values()))

    def _on_readable(self) -> None:
        while self.conn.poll():
            try:
                cmd, kwargs = self.conn.recv()
            except EOFError:  # the orchestrator is gone
                self.exit.set()
                return
            try:
                self.conn.send(("ok", self._command(cmd, kwargs)))
            except Exception:
                self.conn.send(("error", traceback.format_exc()))

    def _command(self, cmd: str, kw: dict[str, Any]) -> Any:
        if cmd == "status":
            return self.status()
        if cmd == "result":
            assert self.job is not None and self.job.done(), "no finished job"
            job, self.job = self.job, None
            exc = job.exception()
            if exc is not None:
                raise RuntimeError(
                    f"worker {self.worker_id} {self.job_name} failed: "
                    + "".join(traceback.format_exception(exc))
                )
            return job.result()
        if cmd == "init":
            self.devices = {s.index: Device(s) for s in kw["devices"]}
            return len(self.devices)
        if cmd == "directory":
            return self.set_directory(**kw)
        if cmd == "collect":
            return self.collect()
        if cmd == "flood_prepare":
            return self.flood_prepare(**kw)
        if cmd == "teams":
            self.teams = dict(kw["teams"])
            self.caps = tuple(kw["caps"]) if kw.get("caps") else None
            return len(self.teams)
        if cmd == "exit":
            self.exit.set()
            return None
        jobs: dict[str, Callable[..., Coroutine[Any, Any, Any]]] = {
            "enroll": self.enroll,
            "connect": self.connect,
            "run": self.run,
            "blast": self.blast,
            "disconnect": self.disconnect,
            "team_change": self.team_change,
            "probe": self.probe,
        }
        if cmd in jobs:
            assert self.job is None, f"job {self.job_name} still running"
            self.job_name = cmd
            self.job = asyncio.get_running_loop().create_task(jobs[cmd](**kw))
            return "started"
        raise ValueError(f"unknown command {cmd!r}")

    def status(self) -> dict[str, Any]:
        return {
            **self.counters,
            "errors": sum(self.errors.values()),
            "connected": sum(1 for d in self.devices.values() if d.ws is not None),
            "busy": self.job is not None and not self.job.done(),
        }

    def collect(self) -> dict[str, Any]:
        for dev in self.devices.values():
            if dev.acks_sent:
                self.counters["frames:ack"] += dev.acks_sent
            dev.acks_sent = 0
        out = {
            "counters": dict(self.counters),
            "errors": dict(self.errors),
            "sched_ns": self.sched_ns.tobytes(),
            "recv_ns": self.recv_ns.tobytes(),
            "lag_ns": self.lag_ns.tobytes(),
            "accept_ns": self.accept_ns.tobytes(),
        }
        self.reset()
        return out

    def set_directory(
        self, mode: str, entries: dict[int, Entry], users: dict[int, str], flows: list[Flow]
    ) -> int:
        self.mode = mode
        self.directory = entries
        self.users = users
        self.by_device_id = {e.device_id: e for e in entries.values()}
        self.flows = flows
        for index, dev in self.devices.items():
            dev.user_id, dev.device_id = entries[index].user_id, entries[index].device_id
            dev.boxes.clear()
            dev.seen.clear()
        return len(entries)

    # --- jobs ---------------------------------------------------------------------

    async def _each(self, indices: list[int], fn: Any, concurrency: int | None) -> None:
        if concurrency is None:
            await asyncio.gather(*(fn(self.devices[i]) for i in indices))
            return
        sem = asyncio.Semaphore(concurrency)

        async def one(dev: Device) -> None:
            async with sem:
                await fn(dev)

        await asyncio.gather(*(one(self.devices[i]) for i in indices))

    async def enroll(
        self, urls: dict[int, str], codes: dict[int, str], concurrency: int = 32
    ) -> dict[int, tuple[str, str]]:
        async def one(dev: Device) -> None:
            await dev.enroll(urls[dev.index], codes[dev.index])
            self.counters["enrolled"] += 1

        await self._each(sorted(codes), one, concurrency)
        return {i: (self.devices[i].user_id, self.devices[i].device_id) for i in codes}

    async def connect(
        self,
        urls: dict[int, str],
        concurrency: int | None = None,
        indices: list[int] | None = None,
        sources: int = 0,
    ) -> dict[str, Any]:
        """Open (and on a hub, authenticate) a connection per device, then
        start its receiver. Returns each connection's timings (ns). With
        ``sources`` (at most 250), a hub connection comes from one of that
        many loopback addresses (127.0.1.1 ...), by device index: a storm of
        devices then comes from many addresses, as in a region, rather than
        all from one, which the hub's per-address cap on connections not yet
        authenticated would hold at a quarter of its total (admission.py)."""
        timings: list[tuple[int, int, int]] = []

        async def one(dev: Device) -> None:
            try:
                if self.mode == "hub":
                    source = f"127.0.1.{1 + dev.index % sources}" if sources else None
                    t = await dev.authenticate(urls[dev.index], self.caps, source)
                else:
                    t = await dev.open_relay(urls[dev.index])
            except TROUBLE as exc:
                self.counters["connect_failed"] += 1
                self.errors[f"connect: {type(exc).__name__}: {str(exc)[:60]}"] += 1
                await dev.close()
                return
            timings.append(t)
            self.counters["authenticated"] += 1
            dev.tasks = [asyncio.create_task(self._receive(dev))]
            if self.mode == "hub":
                dev.tasks.append(asyncio.create_task(dev.ack_forever()))

        await self._each(indices if indices is not None else sorted(self.devices), one, concurrency)
        # Thousands of connections are long-lived objects: keep them out of the
        # collector's way, or a full collection stalls this loop mid-run.
        gc.collect()
        gc.freeze()
        return {"timings": timings, "failed": self.counters["connect_failed"]}

    async def disconnect(self, indices: list[int] | None = None) -> int:
        chosen = [self.devices[i] for i in (indices if indices is not None else sorted(self.devices))]
        sem = asyncio.Semaphore(256)

        async def one(dev: Device) -> None:
            async with sem:
                await dev.close()

        await asyncio.gather(*(one(d) for d in chosen))
        return len(chosen)

    def _body(self, sched_ns: int, payload: int) -> str:
        return f"{sched_ns}|".ljust(payload, ".")

    def _send_parts(self, flow: Flow) -> tuple[Device, str, list[Entry], Flow]:
        targets = [self.directory[t] for t in flow.targets]
        to = self.teams[flow.to_user][0] if flow.team else self.users[flow.to_user]
        return self.devices[flow.sender], to, targets, flow

    def _seal(self, dev: Device, to: str, targets: list[Entry], flow: Flow, body: str) -> tuple[bytes, bytes]:
        """(message id, ``send`` frame) of one message of ``flow``: envelopes,
        or for a team a sealed body and wraps with the team's current head."""
        if flow.team:
            team, head = self.teams[flow.to_user]
            mid, frame, _ = dev.seal_team_send(team, head, targets, body)
            return mid, frame
        return dev.seal_send(to, targets, body)

    async def _send(self, dev: Device, mid: bytes, frame: bytes, flow: Flow) -> None:
        assert dev.ws is not None
        if self.mode == "hub":
            self.outstanding[mid] = (time.monotonic_ns(), frame, dev)
            self.counters["expected_receipts"] += flow.receipts
        self.counters["expected"] += len(flow.targets)
        await dev.ws.send(frame)
        self.counters["sent"] += 1
        self.counters["frames:send"] += 1

    async def run(
        self, t0_ns: int, t_end_ns: int, rate: float | None, payload: int, flood: bool = False
    ) -> dict[str, Any]:
        """Send from every flow of this worker until ``t_end_ns``: at ``rate``
        messages per second in all (open loop), or, with ``rate`` None, each
        flow sending its next message once the last one was delivered to all
        its targets (closed loop). With ``flood``, the flooder's prepared
        frames go out too, from ``t0_ns``."""
        await asyncio.sleep(max(0, t0_ns - time.monotonic_ns()) / 1e9)
        out: dict[str, Any] = {}
        flooding = asyncio.create_task(self._flood(t_end_ns)) if flood else None
        if self.flows:
            await self._flows(t0_ns, t_end_ns, rate, payload)
        if flooding is not None:
            out["flood"] = await flooding
        self.counters["done_sending"] = 1
        out["sent"] = self.counters["sent"]
        return out

    async def _flows(self, t0_ns: int, t_end_ns: int, rate: float | None, payload: int) -> None:
        try:
            if rate is None:
                await asyncio.gather(*(self._closed_loop(f, t_end_ns, payload) for f in self.flows))
            else:
                await self._open_loop(t0_ns, t_end_ns, rate, payload)
        except ConnectionClosed as exc:
            self.errors[f"send: connection closed {exc.rcvd}"] += 1

    async def _open_loop(self, t0_ns: int, t_end_ns: int, rate: float, payload: int) -> None:
        interval = 1e9 / rate
        parts = [self._send_parts(f) for f in self.flows]
        k = 0
        while True:
            sched = t0_ns + int(k * interval)
            if sched >= t_end_ns:
                return
            now = time.monotonic_ns()
            if sched > now:
                await asyncio.sleep((sched - now) / 1e9)
            elif k % 8 == 0:
                await asyncio.sleep(0)  # behind schedule: still let the receivers run
            dev, to_user, targets, flow = parts[k % len(parts)]
            mid, frame = self._seal(dev, to_user, targets, flow, self._body(sched, payload))
            await self._send(dev, mid, frame, flow)
            self.lag_ns.append(time.monotonic_ns() - sched)
            k += 1

    async def _closed_loop(self, flow: Flow, t_end_ns: int, payload: int) -> None:
        dev, to_user, targets, _ = self._send_parts(flow)
        loop = asyncio.get_running_loop()
        while time.monotonic_ns() < t_end_ns:
            sched = time.monotonic_ns()
            mid, frame = self._seal(dev, to_user, targets, flow, self._body(sched, payload))
            done = loop.create_future()
            self.waiters[mid] = [len(targets), done]
            await self._send(dev, mid, frame, flow)
            self.lag_ns.append(time.monotonic_ns() - sched)
            try:
                await asyncio.wait_for(done, CLOSED_LOOP_TIMEOUT)
            except TimeoutError:
                self.errors["closed loop: delivery timed out"] += 1
                self.waiters.pop(mid, None)

    async def blast(self, count: int, payload: int, window: int = 256) -> dict[str, Any]:
        """Send ``count`` messages from the first flow as fast as possible,
        sealed beforehand. On a hub, at most ``window`` wait for ``accepted``
        and the job ends once all are accepted."""
        if not self.flows or count <= 0:
            return {}
        dev, to_user, targets, flow = self._send_parts(self.flows[0])
        frames = [self._seal(dev, to_user, targets, flow, self._body(0, payload)) for _ in range(count)]
        if self.mode == "hub":
            self.window = asyncio.Semaphore(window)
            self.all_accepted = asyncio.Event()
            self.accept_target = self.counters["accepted"] + count
        started = time.monotonic_ns()
        for mid, frame in frames:
            if self.window is not None:
                await self.window.acquire()
            await self._send(dev, mid, frame, flow)
        sent = time.monotonic_ns()
        if self.all_accepted is not None:
            await asyncio.wait_for(self.all_accepted.wait(), 300)
        self.window = self.all_accepted = None
        return {"started_ns": started, "sent_ns": sent, "done_ns": time.monotonic_ns()}

    # --- teams (SPEC §13) ------------------------------------------------------------

    async def _request(self, dev: Device, frame: Any, timeout: float = 30.0) -> Any:
        """Send a request with a fresh ``rid`` and wait for its answer (or error)."""
        assert dev.ws is not None
        rid = self.next_rid
        self.next_rid += 1
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.rid_waiters[rid] = done
        try:
            await dev.ws.send(encode(frame(rid)))
            return await asyncio.wait_for(done, timeout)
        finally:
            self.rid_waiters.pop(rid, None)

    async def team_change(self, index: int, team: str, records: list[tuple[bytes, bytes]]) -> dict[str, Any]:
        """Send ``records`` (packed record, signature), in order, from device
        ``index`` as ``team_change`` frames, each once the previous one is
        ``team_ok``. Returns the last answer's ``seq`` and ``head`` and the
        time taken; raises on an error answer (its code in the message)."""
        if not records:  # the creator's device is on another worker
            return {}
        dev = self.devices[index]
        started = time.monotonic_ns()
        answer: Any = None
        for rec, sig in records:
            answer = await self._request(dev, lambda rid, rec=rec, sig=sig: TeamChange(rid, team, rec, sig))
            if isinstance(answer, Error):
                raise RuntimeError(f"team_change refused: {answer.code} ({answer.message})")
        assert isinstance(answer, TeamOk)
        return {"seq": answer.seq, "head": answer.head, "ns": time.monotonic_ns() - started}

    async def probe(self, count: int, payload: int) -> list[tuple[bytes, int, int]]:
        """Send ``count`` messages of this worker's first flow, one at a time,
        each once the previous was ``accepted``, outside any measured window
        (the counters are not touched). Returns, per message: its id, the
        length of its sealed body (0 for a 1:1 message) and the total length
        of its envelopes or wraps."""
        if count <= 0 or not self.flows:
            return []
        dev, to, targets, flow = self._send_parts(self.flows[0])
        assert dev.ws is not None
        loop = asyncio.get_running_loop()
        out = []
        for _ in range(count):
            body = self._body(time.monotonic_ns(), payload)
            if flow.team:
                team, head = self.teams[flow.to_user]
                mid, frame, body_len = dev.seal_team_send(team, head, targets, body)
            else:
                (mid, frame), body_len = dev.seal_send(to, targets, body), 0
            sent = decode(frame, CLIENT_FRAMES)
            assert isinstance(sent, Send)
            envs = sent.envs
            done: asyncio.Future[Any] = loop.create_future()
            self.accept_waiters[mid] = done
            try:
                await dev.ws.send(frame)
                answer = await asyncio.wait_for(done, 30)
            finally:
                self.accept_waiters.pop(mid, None)
            if isinstance(answer, Error):
                raise RuntimeError(f"probe send refused: {answer.code} ({answer.message})")
            out.append((mid, body_len, sum(len(e) for e in envs.values())))
        return out

    # --- the flooder (flood scenario) ------------------------------------------------

    def flood_prepare(self, flow: Flow, count: int, payload: int) -> int:
        """Seal ``count`` messages of ``flow`` (the flooder's, whose sender is
        on this worker) beforehand, so that the flood costs no crypto in its
        window."""
        dev, to_user, targets, _ = self._send_parts(flow)
        self.flooder = dev
        self.flood_frames = []
        self.flood_ids = set()
        body = FLOOD_MARK.ljust(payload, ".")
        for _ in range(count):
            mid, frame = self._seal(dev, to_user, targets, flow, body)
            self.flood_frames.append(frame)
            self.flood_ids.add(mid)
        return count

    async def _flood(self, t_end_ns: int) -> dict[str, int]:
        """Write the prepared frames back to back, pipelined, answers unread
        here (``_on_hub_frame`` counts them), until all are written or
        ``t_end_ns``; the socket's flow control is the only brake."""
        dev = self.flooder
        assert dev is not None and dev.ws is not None, "flood: the flooder is not connected"
        frames, self.flood_frames = self.flood_frames, []
        started = time.monotonic_ns()
        try:
            async with asyncio.timeout((t_end_ns - time.monotonic_ns()) / 1e9):
                for frame in frames:
                    await dev.ws.send(frame)
                    self.counters["flood_sent"] += 1
        except TimeoutError:
            pass  # the window is over: what is not written is not sent
        except ConnectionClosed as exc:
            self.errors[f"flood: connection closed {exc.rcvd}"] += 1
        return {"sent": self.counters["flood_sent"], "started_ns": started, "ended_ns": time.monotonic_ns()}

    # --- receiving ----------------------------------------------------------------

    async def _receive(self, dev: Device) -> None:
        assert dev.ws is not None
        try:
            async for data in dev.ws:
                assert isinstance(data, bytes)
                if self.mode == "hub":
                    self._on_hub_frame(dev, data)
                else:
                    if dev is not self.flooder:  # the flood's frames are counted apart
                        self.counters["frames:relayed"] += 1
                    self._on_relayed(dev, data)
        except ConnectionClosed:
            pass
        finally:
            if dev.ws is not None and dev.ws.close_code not in (None, 1000, 1001):
                closed = f"closed by server: {dev.ws.close_code} {dev.ws.close_reason}"
                if dev is self.flooder:  # the hub's business with the flooder, not an error of the bench
                    self.counters[f"flood_{closed}"] += 1
                else:
                    self.errors[closed] += 1

    def _on_hub_frame(self, dev: Device, data: bytes) -> None:
        frame = decode(data, SERVER_FRAMES)
        kind = type(frame)
        if dev is not self.flooder:  # the flood's frames are counted apart
            self.counters[f"frames:{frame.TYPE}"] += 1
        if kind is Deliver:
            assert isinstance(frame, Deliver)
            sender = self.by_device_id.get(frame.from_device)
            try:
                if sender is None:
                    raise crypto.EnvelopeError("unknown sending device")
                plain = dev.open_deliver(frame, sender)
            except crypto.EnvelopeError as exc:
                self.errors[f"envelope: {exc}"] += 1
            else:
                self._delivered(dev, frame.id, plain)
            dev.want_ack(frame.seq)  # acked even when it fails the checks (SPEC §6.3)
        elif kind is Delivered:
            assert isinstance(frame, Delivered)
            self.counters["flood_receipts" if dev is self.flooder else "receipts"] += 1
            dev.want_ack(frame.seq)
        elif kind is Accepted:
            assert isinstance(frame, Accepted)
            waiter = self.accept_waiters.get(frame.id)
            if waiter is not None:
                if not waiter.done():
                    waiter.set_result(frame)
            else:
                self._accepted(frame.id)
        elif kind is TeamOk:
            assert isinstance(frame, TeamOk)
            rid_waiter = self.rid_waiters.get(frame.rid)
            if rid_waiter is not None and not rid_waiter.done():
                rid_waiter.set_result(frame)
        elif kind is TeamChanged:  # a push of the set-up's records, not an error
            self.counters["team_changed"] += 1
        elif kind is Error:
            assert isinstance(frame, Error)
            rid_waiter = self.rid_waiters.get(frame.rid) if frame.rid is not None else None
            id_waiter = self.accept_waiters.get(frame.id) if frame.id is not None else None
            for w in (rid_waiter, id_waiter):
                if w is not None and not w.done():
                    w.set_result(frame)
            if rid_waiter is None and id_waiter is None:
                self._error(frame)
        else:
            self.counters[f"other:{frame.TYPE}"] += 1

    def _on_relayed(self, dev: Device, data: bytes) -> None:
        try:
            plain = dev.open_relayed(data, self.by_device_id.get)
        except crypto.EnvelopeError as exc:
            self.errors[f"envelope: {exc}"] += 1
            return
        if plain is not None:
            self._delivered(dev, plain.id, plain)

    def _delivered(self, dev: Device, mid: bytes, plain: crypto.Plaintext) -> None:
        now = time.monotonic_ns()
        if mid in dev.seen:  # a redelivery: dropped by id, as clients must (SPEC §6.4)
            self.counters["duplicates"] += 1
            return
        dev.seen.add(mid)
        if plain.body.startswith(FLOOD_MARK):  # the flooder's: not part of the measured traffic
            self.counters["flood_delivered"] += 1
            return
        self.sched_ns.append(int(plain.body[: plain.body.index("|")]))
        self.recv_ns.append(now)
        self.counters["delivered"] += 1
        waiter = self.waiters.get(mid)
        if waiter is not None:
            waiter[0] -= 1
            if waiter[0] <= 0:
                del self.waiters[mid]
                if not waiter[1].done():
                    waiter[1].set_result(None)

    def _accepted(self, mid: bytes) -> None:
        entry = self.outstanding.pop(mid, None)
        if entry is None:
            if mid in self.flood_ids:
                self.counters["flood_accepted"] += 1
            return
        self.accept_ns.append(time.monotonic_ns() - entry[0])
        self.counters["accepted"] += 1
        if self.window is not None:
            self.window.release()
        if self.all_accepted is not None and self.counters["accepted"] >= self.accept_target:
            self.all_accepted.set()

    def _error(self, frame: Error) -> None:
        if frame.id is not None and frame.id in self.flood_ids:
            # The flooder does not wait, and does not try again.
            self.counters[f"flood_{frame.code}"] += 1
            return
        if frame.code == "rate_limited":  # the hub's budget, not a failure: counted apart
            self.counters["rate_limited"] += 1
        else:
            self.errors[frame.code] += 1
        if frame.id is None:
            return
        entry = self.outstanding.get(frame.id)
        if entry is None:
            return
        if frame.code in RETRYABLE:  # resend with the same id, as a client must (SPEC §6.2)
            asyncio.get_running_loop().call_later((frame.retry_after or 100) / 1000, self._resend, frame.id)
        else:
            del self.outstanding[frame.id]
            if self.window is not None:
                self.window.release()

    def _resend(self, mid: bytes) -> None:
        entry = self.outstanding.get(mid)
        if entry is not None and entry[2].ws is not None:
            self.counters["resent"] += 1
            self.counters["frames:send"] += 1
            asyncio.get_running_loop().create_task(entry[2].ws.send(entry[1]))
