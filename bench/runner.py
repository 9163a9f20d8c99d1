"""The orchestrator of one ``miss-bench run``: the simulated population, the
servers, the worker pool, and the measured phases the scenarios are made of.

A scenario (``bench/scenarios/``) builds a :class:`Population`, then calls,
for the relay and then for the hub, the phases below: each phase starts the
meters (CPU of the server processes, and of PostgreSQL and Redis when they
are used) when the load starts and stops them when the last expected
delivery (and, on a hub, receipt) has arrived, so that everything the load
caused is charged to it and nothing else is. Enrollment and connection set-up
stay outside the measured windows unless the scenario measures them.
"""

from __future__ import annotations

import os
import platform
import secrets
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nacl.signing
from websockets.version import version as websockets_version

from miss_server.authority import load_authority
from protocol import attestation, crypto

from .harness import ServerProcess, Services, cpu_split, hub_settings, start_hub, start_relay
from .measure import CpuMeter, pid_listening_on, postgres_pids, redis_pids
from .plan import DeviceSpec, Entry, Flow, relay_ids
from .pool import WorkerPool
from .progress import Progress
from .provision import invite_all, verify_all
from .stats import encoded, latency_summary, merge_samples, percentile_curve, timeseries

__all__ = ["Population", "Run"]

#: After the last scheduled send, how long a phase waits for the stragglers.
GRACE_SECONDS = 15.0


@dataclass
class Population:
    """The simulated clinicians, their devices, and who sends to whom.
    Devices are spread over ``workers``; a flow stays inside one worker."""

    workers: int
    devices: list[DeviceSpec] = field(default_factory=list)
    user_devices: list[list[int]] = field(default_factory=list)
    worker_of: dict[int, int] = field(default_factory=dict)
    flows: list[Flow] = field(default_factory=list)

    def add_user(self, n_devices: int, worker: int, nodes: list[int] | None = None) -> int:
        user = len(self.user_devices)
        indices = []
        for k in range(n_devices):
            keys = crypto.DeviceKeys.generate()
            index = len(self.devices)
            node = nodes[k] if nodes else 0
            self.devices.append(DeviceSpec(index, user, keys.sign_seed, keys.box_secret, node))
            self.worker_of[index] = worker % self.workers
            indices.append(index)
        self.user_devices.append(indices)
        return user

    def add_flow(self, sender: int, to_user: int) -> Flow:
        own = self.user_devices[self.devices[sender].user]
        targets = tuple(self.user_devices[to_user]) + tuple(d for d in own if d != sender)
        flow = Flow(sender, to_user, targets, receipts=len(self.user_devices[to_user]) * len(own))
        assert all(self.worker_of[t] == self.worker_of[sender] for t in targets), "a flow spans workers"
        self.flows.append(flow)
        return flow

    def add_team_flow(self, sender: int, team: int, members: list[int]) -> Flow:
        """Messages from device ``sender`` to team number ``team`` whose
        members are the clinicians ``members`` (the sender's among them):
        one wrap for every device of every member but the sending device
        (SPEC §13.4). Receipts are counted as for 1:1: one per device of the
        other members, for each device of the sender's clinician."""
        own_user = self.devices[sender].user
        assert own_user in members, "the sender is a member"
        targets = tuple(d for u in members for d in self.user_devices[u] if d != sender)
        others = sum(len(self.user_devices[u]) for u in members if u != own_user)
        flow = Flow(sender, team, targets, receipts=others * len(self.user_devices[own_user]), team=True)
        assert all(self.worker_of[t] == self.worker_of[sender] for t in targets), "a flow spans workers"
        self.flows.append(flow)
        return flow

    def on_worker(self, w: int) -> list[int]:
        return [d.index for d in self.devices if self.worker_of[d.index] == w]

    def flows_of(self, w: int) -> list[Flow]:
        return [f for f in self.flows if self.worker_of[f.sender] == w]


class Run:
    """One invocation: owns the pool, the servers and the temporary files."""

    def __init__(self, args: Any, extra_workers: int = 0) -> None:
        self.args = args
        self.authority = self._authority()
        #: The ``MISS_*`` settings of the hubs this run starts (``start_hubs``).
        self.hub_env = hub_settings(self.authority_key)
        self.server_cpus, self.load_cpus = cpu_split()
        self.out_dir = Path(args.out)
        self.tag = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        self.workdir = self.out_dir / f"run-{self.tag}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.progress = Progress(enabled=not args.quiet)
        # ``extra_workers``: processes of a scenario's own beyond ``--workers`` (flood's flooder).
        self.pool = WorkerPool(args.workers + extra_workers, self.load_cpus)
        self.servers: list[ServerProcess] = []
        self.services: Services | None = None
        self.store_url = ""
        self.hub_urls: list[str] = []
        self.hub_pids: list[int] = []
        self.pop: Population | None = None
        self.notes: list[str] = []
        self.directory: dict[int, Entry] = {}
        self._hub_directory: tuple[dict[int, Entry], dict[int, str]] = ({}, {})
        self.last_results: list[Any] = []
        self.last_counters: dict[str, int] = {}

    # --- life -------------------------------------------------------------------

    def _authority(self) -> nacl.signing.SigningKey:
        """The verification authority of the run: a key of its own for the
        hubs it starts; with ``--url``, the hub's (``--authority-key-file``)."""
        if not self.args.url:
            return nacl.signing.SigningKey.generate()
        path = getattr(self.args, "authority_key_file", None)
        if path is None:
            raise SystemExit(
                "miss-bench: with --url, give the hub's verification authority key file "
                "(--authority-key-file, as `miss-admin authority init` writes it)"
            )
        try:
            key = load_authority(Path(path))
        except ValueError as exc:
            raise SystemExit(f"miss-bench: {exc}") from None
        configured = os.environ.get("MISS_AUTHORITY_KEY")
        if configured and configured.strip() != attestation.encode_authority_key(bytes(key.verify_key)):
            raise SystemExit(
                f"miss-bench: {path} is not the authority of MISS_AUTHORITY_KEY "
                "(the hub would refuse every message as not_verified)"
            )
        return key

    @property
    def authority_key(self) -> str:
        """The authority's public key in the hub's ``MISS_AUTHORITY_KEY`` form."""
        return attestation.encode_authority_key(bytes(self.authority.verify_key))

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        self.pool.close()
        if self.services is not None:
            try:
                self.services.cleanup()
            except Exception as exc:  # still report what was measured
                self.notes.append(f"cleanup of the bench schema/prefix failed: {exc}")
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def ensure_workers(self, n: int) -> None:
        """At least ``n`` load generator processes (``--workers`` raised, and
        said in the notes): before :meth:`set_population` only."""
        assert self.pop is None, "the population is spread over the workers already"
        had = len(self.pool)
        if had >= n:
            return
        self.notes.append(f"load generator processes raised from {had} to {n} (open-file limit)")
        self.pool.close()
        self.args.workers += n - had
        self.pool = WorkerPool(n, self.load_cpus)

    def set_population(self, pop: Population) -> None:
        self.pop = pop
        self.pool.call_all(
            "init", [{"devices": [pop.devices[i] for i in pop.on_worker(w)]} for w in range(pop.workers)]
        )

    def _directory(self, mode: str, entries: dict[int, Entry], users: dict[int, str]) -> None:
        assert self.pop is not None
        self.directory = entries
        self.pool.call_all(
            "directory",
            [
                {"mode": mode, "entries": entries, "users": users, "flows": self.pop.flows_of(w)}
                for w in range(self.pop.workers)
            ],
        )

    # --- the relay ----------------------------------------------------------------

    def start_relay(self) -> ServerProcess:
        """Start the relay and give the devices their relay identities."""
        return self.start_relays(1)[0]

    def start_relays(self, count: int) -> list[ServerProcess]:
        """Start ``count`` relay processes and give the devices their relay
        identities. With more than one, each load generator worker's devices
        use one of them (:meth:`relay_urls`): a relay forwards only between
        its own connections, and a flow stays inside one worker."""
        assert self.pop is not None
        relays = [
            start_relay(
                self.workdir / "relay",
                self.server_cpus,
                "relay" if count == 1 else f"relay{k}",
                kind=getattr(self.args, "relay", "websockets"),
            )
            for k in range(count)
        ]
        self.servers.extend(relays)
        entries = {}
        for d in self.pop.devices:
            user_id, device_id = relay_ids(d.index, d.user)
            entries[d.index] = Entry(user_id, device_id, _box_pk(d), _sign_pk(d))
        self._directory("relay", entries, {u: relay_ids(0, u)[0] for u in range(len(self.pop.user_devices))})
        return relays

    def relay_urls(self, relay: ServerProcess | list[ServerProcess]) -> dict[int, str]:
        """Each device's relay path: its own id, then the targets of its
        flows; with several relays, on that of its load generator worker
        (worker number modulo the relays)."""
        pop = self.pop
        assert pop is not None
        relays = relay if isinstance(relay, list) else [relay]
        targets: dict[int, list[str]] = {}
        for f in pop.flows:
            targets.setdefault(f.sender, []).extend(self.directory[t].device_id for t in f.targets)
        return {
            d.index: f"{relays[pop.worker_of[d.index] % len(relays)].url}"
            f"{self.directory[d.index].device_id}/{','.join(targets.get(d.index, []))}"
            for d in pop.devices
        }

    def stop(self, server: ServerProcess) -> None:
        server.stop()
        self.servers.remove(server)

    # --- the hub ----------------------------------------------------------------------

    def start_hubs(self, nodes: int = 1, **rates: str | None) -> list[str]:
        """Start the hub node(s) of the chosen backend (or use ``--url``).
        They trust the run's authority; their budgets are out of reach
        except the ``rate_*`` settings given (None: the hub's default)."""
        args = self.args
        self.hub_env = hub_settings(self.authority_key, **rates)
        if args.url:
            if len(args.url) < nodes:
                raise SystemExit(f"miss-bench: this scenario needs {nodes} --url")
            self.hub_urls = args.url[:nodes]
            self.store_url = args.store or os.environ.get("MISS_STORE", "")
            if not self.store_url:
                raise SystemExit("miss-bench: with --url, give the hub's store (--store or MISS_STORE)")
            self.hub_pids = [
                p for p in (pid_listening_on(urlsplit(u).port or 80) for u in self.hub_urls) if p
            ]
            if len(self.hub_pids) < nodes:
                self.notes.append("hub process not found on this machine: no CPU or memory figures")
            return self.hub_urls
        if args.backend == "embedded":
            if nodes != 1:
                raise SystemExit("miss-bench: several hub nodes need --backend services")
            self.store_url = f"sqlite:///{(self.workdir / 'hub0' / 'miss.db').resolve()}"
            broker = "memory://"
        else:
            self.services = Services.from_env()
            self.services.migrate()
            self.store_url, broker = self.services.store, self.services.broker
        for n in range(nodes):
            hub = start_hub(
                f"hub{n}", self.workdir / f"hub{n}", self.store_url, broker, self.server_cpus, self.hub_env
            )
            self.servers.append(hub)
            self.hub_urls.append(hub.url)
            self.hub_pids.append(hub.pid)
        return self.hub_urls

    def enroll(self, concurrency: int = 32) -> None:
        """Invite every clinician through the store, enroll every device
        over WebSocket with its code, then verify every clinician (an
        attestation of their devices signed by the run's authority), all
        outside any measured window."""
        pop = self.pop
        assert pop is not None
        self.progress.note(f"inviting {len(pop.user_devices)} clinicians ({len(pop.devices)} devices)")
        user_ids, codes = invite_all(self.store_url, [len(d) for d in pop.user_devices])
        code_of: dict[int, str] = {}
        for user, indices in enumerate(pop.user_devices):
            for k, index in enumerate(indices):
                code_of[index] = codes[user][k]
        per_worker = []
        for w in range(pop.workers):
            mine = pop.on_worker(w)
            per_worker.append(
                {
                    "urls": {i: self.hub_urls[pop.devices[i].node] for i in mine},
                    "codes": {i: code_of[i] for i in mine},
                    "concurrency": concurrency,
                }
            )
        total = len(pop.devices)
        self.progress.start("enroll", total, "dev")
        results = self.pool.job(
            "enroll", per_worker, lambda st: self.progress.update(sum(s.get("enrolled", 0) for s in st))
        )
        self.progress.finish(f"{total} devices enrolled")
        attested = verify_all(self.store_url, user_ids, self.authority)
        self.progress.note(f"verified {len(user_ids)} clinicians ({attested} devices attested)")
        entries = {}
        for result in results:
            for index, (user_id, device_id) in result.items():
                entries[index] = Entry(
                    user_id, device_id, _box_pk(pop.devices[index]), _sign_pk(pop.devices[index])
                )
        self._hub_directory = (entries, dict(enumerate(user_ids)))
        self.use_hub()

    def use_hub(self) -> None:
        """Give the devices their hub identities again (after a relay round)."""
        self._directory("hub", *self._hub_directory)

    @property
    def hub_users(self) -> dict[int, str]:
        """The hub's user id of each simulated clinician (after :meth:`enroll`)."""
        return self._hub_directory[1]

    def set_flows(self, flows: list[Flow]) -> None:
        """Make ``flows`` the population's traffic, on the hub, from now on
        (the next phases send these and only these)."""
        assert self.pop is not None
        self.pop.flows = list(flows)
        self.use_hub()

    def set_teams(self, teams: dict[int, tuple[str, bytes]], caps: tuple[str, ...] | None) -> None:
        """Tell every worker the teams of its team flows (id and current head
        of the chain), and the ``auth.caps`` its next connections name."""
        self.pool.call_all("teams", [{"teams": teams, "caps": caps} for _ in range(len(self.pool))])

    def hub_device_urls(self) -> dict[int, str]:
        assert self.pop is not None
        return {d.index: self.hub_urls[d.node] for d in self.pop.devices}

    # --- phases -------------------------------------------------------------------------

    def connect(
        self,
        urls: dict[int, str],
        label: str,
        concurrency: int | None = 64,
        indices: list[int] | None = None,
        sources: int = 0,
    ) -> dict[str, Any]:
        """Connect (and on a hub authenticate) devices; returns the merged
        timings. ``sources``: hub connections come from that many loopback
        addresses (loadgen.Worker.connect)."""
        pop = self.pop
        assert pop is not None
        chosen = set(indices) if indices is not None else {d.index for d in pop.devices}
        per_worker = []
        for w in range(pop.workers):
            mine = [i for i in pop.on_worker(w) if i in chosen]
            job: dict[str, Any] = {
                "urls": {i: urls[i] for i in mine},
                "concurrency": concurrency,
                "indices": mine,
            }
            if sources:
                job["sources"] = sources
            per_worker.append(job)
        self.progress.start(label, len(chosen), "conn")
        results = self.pool.job(
            "connect",
            per_worker,
            lambda st: self.progress.update(
                sum(s.get("authenticated", 0) for s in st), failed=sum(s.get("connect_failed", 0) for s in st)
            ),
        )
        timings = [t for r in results for t in r["timings"]]
        failed = sum(r["failed"] for r in results)
        self.progress.finish(f"{len(timings)} connected, {failed} failed")
        return {"timings": timings, "failed": failed}

    def disconnect(self) -> None:
        self.pool.job("disconnect")

    def meters(self, servers: list[int], with_services: bool) -> dict[str, CpuMeter]:
        meters = {"server": CpuMeter(lambda: list(servers))}
        if with_services:
            port = self.services.postgres_port if self.services else 5432
            meters["postgres"] = CpuMeter(lambda: postgres_pids(servers, port))
            meters["redis"] = CpuMeter(redis_pids)
        return meters

    @staticmethod
    def stop_meters(meters: dict[str, CpuMeter]) -> dict[str, float]:
        """Stop every meter: CPU seconds by meter name, and the server
        processes' main threads (their event loops) as ``server_main_thread``."""
        cpu = {name: m.stop() for name, m in meters.items()}
        cpu["server_main_thread"] = meters["server"].main_thread_seconds
        return cpu

    def using_services(self) -> bool:
        return self.store_url.startswith(("postgresql://", "postgres://"))

    def warm_up(self, rate: float | None, payload: int) -> None:
        """A short unmeasured run: caches, connections and code paths warm."""
        pop = self.pop
        assert pop is not None
        t0 = time.monotonic_ns() + 100_000_000
        if self.args.warmup <= 0:
            return
        t_end = t0 + int(self.args.warmup * 1e9)
        warm_rate = min(rate, 200.0) if rate else None
        self.pool.start_job("run", self._run_kwargs(t0, t_end, warm_rate, payload))
        self.pool.wait_job()
        self.pool.finish_job()
        self._wait_complete(time.monotonic() + GRACE_SECONDS, lambda st: None)
        self.pool.call_all("collect")

    def _run_kwargs(self, t0: int, t_end: int, rate: float | None, payload: int) -> list[dict[str, Any]]:
        pop = self.pop
        assert pop is not None
        total = max(1, len(pop.flows))
        out = []
        for w in range(pop.workers):
            share = len(pop.flows_of(w)) / total
            out.append(
                {
                    "t0_ns": t0 + (int(w * 1e9 / rate / pop.workers) if rate else 0),
                    "t_end_ns": t_end,
                    "rate": rate * share if rate else None,
                    "payload": payload,
                }
            )
        return out

    def _wait_complete(self, deadline: float, on_poll: Any) -> bool:
        """Poll until every expected delivery and receipt has arrived."""
        while True:
            st = self.pool.statuses()
            on_poll(st)
            delivered = sum(s.get("delivered", 0) for s in st)
            expected = sum(s.get("expected", 0) for s in st)
            receipts = sum(s.get("receipts", 0) for s in st)
            expected_receipts = sum(s.get("expected_receipts", 0) for s in st)
            if delivered >= expected and receipts >= expected_receipts:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def message_phase(
        self,
        label: str,
        servers: list[int],
        rate: float | None,
        seconds: float,
        payload: int,
        services: bool,
        extra: dict[int, dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Messages at a fixed offered rate (or closed loop) for ``seconds``;
        returns the figures of the phase. ``extra``: more arguments of the
        measured window's ``run`` job, per worker (the flood). The workers'
        job results and raw counters stay in ``last_results`` and
        ``last_counters``."""
        self.warm_up(rate, payload)
        meters = self.meters(servers, services)
        t0 = time.monotonic_ns() + 300_000_000
        t_end = t0 + int(seconds * 1e9)
        kwargs = self._run_kwargs(t0, t_end, rate, payload)
        for w, more in (extra or {}).items():
            kwargs[w].update(more)
        self.pool.start_job("run", kwargs)
        time.sleep(max(0.0, (t0 - time.monotonic_ns()) / 1e9))
        for m in meters.values():
            m.start()
        load0 = self.pool.cpu_seconds()
        started = time.monotonic()
        self.progress.start(label, seconds, "s")

        def show(st: list[dict[str, Any]]) -> None:
            elapsed = time.monotonic() - started
            delivered = sum(s.get("delivered", 0) for s in st)
            more = {}
            if extra:
                sent, limited = (sum(s.get(f"flood_{k}", 0) for s in st) for k in ("sent", "rate_limited"))
                more["flood"] = f"{sent} sent/{limited} limited"
            self.progress.update(
                elapsed, delivered=delivered, rate=f"{delivered / max(elapsed, 1e-9):.0f}/s", **more
            )

        self.pool.wait_job(show)
        self.last_results = self.pool.finish_job()
        complete = self._wait_complete(time.monotonic() + GRACE_SECONDS, show)
        t_done = time.monotonic_ns()
        cpu = self.stop_meters(meters)
        load_cpu = self.pool.cpu_seconds() - load0
        self.progress.finish()
        samples = merge_samples(self.pool.call_all("collect"))
        self.last_counters = dict(samples.counters)
        window = (t_done - t0) / 1e9
        lat = samples.latencies_us()
        result = self._figures(samples, lat, window, cpu, load_cpu, t0, samples.sched_ns)
        result["complete"] = complete
        result["mode"] = "fixed-rate" if rate else "closed-loop"
        result["offered_rate"] = rate
        return result

    def _figures(
        self,
        samples: Any,
        latencies_us: list[int],
        window: float,
        cpu: dict[str, float],
        load_cpu: float,
        t0: int,
        send_ns: Any,
    ) -> dict[str, Any]:
        delivered = samples.counters.get("delivered", 0)
        summary, hist = latency_summary(latencies_us)
        lag, _ = latency_summary((max(1, v // 1000) for v in samples.lag_ns), "send_lag_")
        accept, _ = latency_summary((max(1, v // 1000) for v in samples.accept_ns), "accept_")
        # frames the load generator wrote or read in the window, by type (loadgen.py's "frames:" counters)
        counters = sorted(samples.counters.items())
        frames = {key.removeprefix("frames:"): n for key, n in counters if key.startswith("frames:")}
        out: dict[str, Any] = {
            "delivered": delivered,
            "window_seconds": round(window, 3),
            "rate": round(delivered / window, 1) if window > 0 else 0.0,
            "cpu_seconds": round(cpu["server"], 3),
            "cpu_us_per_msg": round(cpu["server"] * 1e6 / delivered, 1) if delivered else None,
            # the event loop's share, and the rest (the SQLite writer and reader, executors)
            "cpu_us_per_msg_event_loop": (
                round(cpu["server_main_thread"] * 1e6 / delivered, 1) if delivered else None
            ),
            "cpu_us_per_msg_other_threads": (
                round((cpu["server"] - cpu["server_main_thread"]) * 1e6 / delivered, 1) if delivered else None
            ),
            **summary,
            "sent": samples.counters.get("sent", 0),
            "accepted": samples.counters.get("accepted", 0),
            "receipts": samples.counters.get("receipts", 0),
            "duplicates": samples.counters.get("duplicates", 0),
            # refused by the hub's budgets, then sent again after retry_after (not errors)
            "rate_limited": samples.counters.get("rate_limited", 0),
            "resent": samples.counters.get("resent", 0),
            "errors": samples.errors,
            "send_lag_p99_ms": lag["send_lag_p99_ms"],
            "accept_p50_ms": accept["accept_p50_ms"],
            "accept_p99_ms": accept["accept_p99_ms"],
            # WebSocket frames the clients wrote and read, per unit: what the server had to handle
            "frames_per_msg": round(sum(frames.values()) / delivered, 2) if delivered else None,
            # the same, by frame type (``ack``, ``send``, ``deliver``, ...): which frames a change removed
            "frames_per_msg_by_type": (
                {kind: round(n / delivered, 2) for kind, n in frames.items()} if delivered else {}
            ),
            "loadgen_cpu_util": round(load_cpu / window / max(1, len(self.load_cpus)), 3) if window else None,
        }
        for name in ("postgres", "redis"):
            if name in cpu:
                out[f"{name}_cpu_seconds"] = round(cpu[name], 3)
                out[f"{name}_cpu_us_per_msg"] = round(cpu[name] * 1e6 / delivered, 1) if delivered else None
        out["timeseries"] = timeseries(send_ns, samples.recv_ns, latencies_us, t0)
        out["curve"] = percentile_curve(hist)
        out["histogram"] = encoded(hist)
        return out

    # --- description of the run ---------------------------------------------------------

    def machine(self) -> dict[str, Any]:
        model = ""
        try:
            with open("/proc/cpuinfo") as f:
                model = next(
                    (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), ""
                )
        except OSError:
            pass
        return {
            "host": socket.gethostname(),
            "cpu_model": model,
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "websockets": websockets_version,
        }

    def pinning(self) -> dict[str, Any]:
        return {
            "servers_cpus": sorted(self.server_cpus),
            "loadgen_cpus": sorted(self.load_cpus),
            "postgres_redis": "not pinned (shared services of the machine)",
            "external_hub": bool(self.args.url),
        }


def _box_pk(spec: DeviceSpec) -> bytes:
    return crypto.DeviceKeys(spec.sign_seed, spec.box_secret).box_pk


def _sign_pk(spec: DeviceSpec) -> bytes:
    return crypto.DeviceKeys(spec.sign_seed, spec.box_secret).sign_pk
