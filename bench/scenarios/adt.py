"""``adt``: a hospital's ADT feed through ``miss-adt`` to the GPs' devices
(issue 18, SPEC §17).

Set-up, outside any measured window: the hub (embedded or services, as
``--backend`` says; every budget out of reach, ``rate_service`` too); in
its store, a service account « CH Provins — Admissions » of the
organisation « CH de Provins » (``svc:bench-adt``, replies refused, as
``miss-admin service create`` records it) and ``--gps`` GPs with RPPS
numbers; the service's profile and each GP's enrolled with the SDK
(``enroll``), then all attested by the run's authority (``miss-admin
verify``, with its audit event). ``miss-adt serve`` then runs as a child
process on the servers' CPU, from a configuration file written for it
(its profile, passphrase file, SQLite database, audit log, the default
mapping), so that its CPU is read from ``/proc/PID/stat``. The GPs connect
as SDK :class:`~miss_client.Client` s in this process, on the load CPU,
and read every event, opening (decrypting, checking, storing) each notice.

The feed (:mod:`bench.adt_feed`): PAM-FR A01/A02/A03 (a death now and
then), each with its own MSH-10 and ZBE-1, PD1-4 naming the patient's GP,
sent over ``--mllp-connections`` MLLP connections (default 4) at
``--rate`` messages a second (default 50) for ``--seconds`` (default 60).
The schedule is fixed (open loop): message *k* is due at t0 + k/rate and
goes to the first connection free (MLLP's original mode is one message,
then its ACK, per connection); latencies count from the **due** time, so
that a late feed is charged to the system (no coordinated omission).
Before the window, messages of other patients are sent until one is
answered « notice sent » (miss-adt's hub connection is up), then a
``--warmup`` second(s) of the same rate, until their notices are opened.

Measured: ADT → ACK and ADT → notice opened at the GP's device (matched
by the notice's IPP and event), HDR histograms; ACK codes and notes
(every one should be ``AA`` « notice sent »); notices opened vs messages
sent (missing ones listed), duplicates, notices at the wrong GP; CPU per
message of miss-adt and of the hub over the window (first due time to the
last notice opened, at most 15 s after the last due time). The target:
p99 ADT → ACK ≤ 200 ms (``adt.within_target``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miss_adt.service import SENT

from ..adt_feed import Ack, FeedMessage, Gp, MllpFeed, gps_of, plan
from ..harness import BIN, UNLIMITED_RATE, ServerProcess, raise_fd_limit
from ..measure import CpuMeter, cpu_seconds, peak_rss_kib, pinned
from ..runner import Run
from .adt_output import figures, plot, table

__all__ = ["plot", "run", "table"]

SERVICE_NAME = "CH Provins — Admissions"
SERVICE_ORG = "CH de Provins"
SERVICE_IDENT = "svc:bench-adt"
GP_ORG = "Cabinet médical de Provins"
PASSPHRASE = "miss-bench adt: a passphrase long enough"
#: After the last due time, how long the window waits for ACKs and notices.
GRACE_SECONDS = 15.0
#: How long miss-adt may take to reach the hub before the run gives up.
CONNECT_SECONDS = 30.0
#: Validity of the bench's attestations: far more than any run.
ATTESTATION_TTL_MS = 2 * 86_400_000


@dataclass
class Tally:
    """What the feed and the GPs' devices saw (``time.monotonic_ns``)."""

    due: dict[int, int] = field(default_factory=dict)
    sent: dict[int, int] = field(default_factory=dict)
    acked: dict[int, int] = field(default_factory=dict)
    acks: dict[int, Ack] = field(default_factory=dict)
    #: (IPP, event) → (opened at, RPPS of the GP whose device opened it)
    opened: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    duplicates: int = 0
    errors: Counter[str] = field(default_factory=Counter)


# --- set-up ---------------------------------------------------------------------------------


async def _provision(r: Run, gps: list[Gp], home: Path) -> tuple[Any, list[Any]]:
    """The service and the GPs in the hub's store, their profiles enrolled
    with the SDK and attested; returns (service profile, GP profiles)."""
    from miss_client import KDF_INTERACTIVE, enroll

    from miss_server.admin_common import record
    from miss_server.app import build_store, embedded_store
    from miss_server.authority import attest
    from miss_server.codes import code_hash, new_code
    from miss_server.config import load_settings

    settings = load_settings(store=r.store_url)
    store = build_store(settings)
    if embedded_store(settings):
        await store.migrate()
    await store.open()
    try:
        now = time.time_ns() // 1_000_000
        service = await store.create_service(SERVICE_NAME, SERVICE_IDENT, SERVICE_ORG, False, now, 20)
        users = [service] + [
            await store.create_user(f"Dr {gp.given} {gp.family}", gp.rpps, "médecin", GP_ORG, now)
            for gp in gps
        ]
        codes = [new_code() for _ in users]
        for user, code in zip(users, codes, strict=True):
            await store.add_enrollment_code(user.user_id, code_hash(code), now + 3_600_000)
        authority = bytes(r.authority.verify_key)
        gate = asyncio.Semaphore(4)  # the KDF takes 64 MiB each

        async def one(k: int) -> Any:
            async with gate:
                name = "service" if k == 0 else f"gp{k - 1}"
                return await enroll(
                    r.hub_urls[0], codes[k], home / name, PASSPHRASE, name, authority=authority,
                    kdf=KDF_INTERACTIVE,
                )  # fmt: skip

        r.progress.note(f"adt: enrolling the service and {len(gps)} GPs")
        profiles = await asyncio.gather(*(one(k) for k in range(len(users))))
        now = time.time_ns() // 1_000_000
        for user in users:  # as `miss-admin verify` does, with its audit event
            await attest(store, user.user_id, r.authority, valid_ms=ATTESTATION_TTL_MS, now=now)
            await record(store, "account.verified", user_id=user.user_id, detail="miss-bench adt")
        return profiles[0], list(profiles[1:])
    finally:
        await store.close()


def _start_adt(r: Run, profile_dir: Path) -> ServerProcess:
    """``miss-adt serve`` from a configuration file of its own, on the servers' CPU."""
    home = r.workdir / "adt"
    home.mkdir(parents=True, exist_ok=True)
    secret = home / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    secret.chmod(0o600)
    config = home / "miss-adt.toml"
    config.write_text(
        '[listen]\nhost = "127.0.0.1"\nport = 0\n'
        f'[hub]\nprofile = "{profile_dir.resolve()}"\npassphrase_file = "passphrase"\n'
        "request_timeout = 10\nreconnect_max_seconds = 1\n"
        '[spool]\ndatabase = "miss-adt.db"\nretry_max_seconds = 1\n'
        '[audit]\nfile = "audit.jsonl"\n'
    )
    cpus = r.server_cpus

    def pinned() -> None:  # in the child, between fork and exec
        os.sched_setaffinity(0, cpus)
        raise_fd_limit()

    log_path = home / "miss-adt.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISS_")}
    env["PYTHONUNBUFFERED"] = "1"
    with log_path.open("a") as log:
        proc = subprocess.Popen(
            [str(BIN / "miss-adt"), "serve", "--config", str(config.resolve())],
            cwd=home,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            preexec_fn=pinned,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "miss-adt listening on HOST:PORT", or EOF if it stopped
    if not line.startswith("miss-adt listening on "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"miss-adt did not start; its log ({log_path}):\n{log_path.read_text()[-3000:]}")
    port = int(line.strip().rsplit(":", 1)[1])
    return ServerProcess("miss-adt", proc, f"mllp://127.0.0.1:{port}", log_path)


# --- the feed and the devices ------------------------------------------------------------


async def _read_notices(client: Any, rpps: str, tally: Tally) -> None:
    """Every notice this GP's device opens, by (IPP, event)."""
    from miss_client import Message

    async for event in client.events():
        if isinstance(event, Message) and event.notice is not None:
            at = time.monotonic_ns()
            match = (dict(event.notice.fields).get("IPP", ""), event.notice.event)
            if match in tally.opened:
                tally.duplicates += 1
            else:
                tally.opened[match] = (at, rpps)


async def _feed(
    feeds: list[MllpFeed], messages: list[FeedMessage], rate: float, t0: int, tally: Tally
) -> None:
    """Each message at its due time to the first connection free; its ACK recorded."""
    queue: asyncio.Queue[FeedMessage | None] = asyncio.Queue()

    async def schedule() -> None:
        for k, m in enumerate(messages):
            due = t0 + int(k * 1e9 / rate)
            wait = (due - time.monotonic_ns()) / 1e9
            if wait > 0:
                await asyncio.sleep(wait)
            tally.due[m.index] = due
            queue.put_nowait(m)
        for _ in feeds:
            queue.put_nowait(None)

    async def connection(feed: MllpFeed) -> None:
        while (m := await queue.get()) is not None:
            tally.sent[m.index] = time.monotonic_ns()
            try:
                ack = await feed.send(m.data)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                # No ACK (miss-adt closes a connection it cannot answer): reconnect, go on.
                tally.errors[f"no ACK ({type(exc).__name__})"] += 1
                await feed.reopen()
                continue
            tally.acked[m.index] = time.monotonic_ns()
            tally.acks[m.index] = ack

    await asyncio.gather(schedule(), *(connection(f) for f in feeds))


async def _until(done: Any, deadline: float, tick: Any = None) -> bool:
    """Wait until ``done()`` (or the monotonic ``deadline``), calling ``tick`` on the way."""
    while not done():
        if time.monotonic() > deadline:
            return False
        if tick is not None:
            tick()
        await asyncio.sleep(0.05)
    return True


async def _warm(r: Run, feeds: list[MllpFeed], gps: list[Gp], rate: float, tally: Tally) -> dict[str, Any]:
    """Unmeasured: messages until one is « notice sent » (the hub link is
    up), then ``--warmup`` seconds at the rate; their notices awaited."""
    warm = plan(max(1, int(rate * r.args.warmup)) + 200, gps, prefix="W", ipp_base=9_000_000_000)
    deadline = time.monotonic() + CONNECT_SECONDS
    k = 0
    while True:
        ack = await feeds[0].send(warm[k].data)
        k += 1
        if ack.code == "AA" and ack.note == SENT:
            break
        if time.monotonic() > deadline or k >= 200:
            raise RuntimeError(f"miss-adt did not reach the hub: last ACK {ack.code} « {ack.note} »")
        await asyncio.sleep(0.2)
    rest = warm[k : k + int(rate * r.args.warmup)]
    if rest:
        await _feed(feeds, rest, rate, time.monotonic_ns() + 50_000_000, tally)
    sent = warm[: k + len(rest)]
    await _until(lambda: all(m.match in tally.opened for m in sent), time.monotonic() + GRACE_SECONDS)
    return {"messages": len(sent), "opened": sum(m.match in tally.opened for m in sent)}


async def _measure(
    r: Run, service: Any, gp_profiles: list[Any], gps: list[Gp], adt: ServerProcess
) -> dict[str, Any]:
    from miss_client import Client

    args = r.args
    rate, seconds = float(args.rate), float(args.seconds)
    messages = plan(max(1, round(rate * seconds)), gps, prefix="B", ipp_base=4_100_000_000)
    port = int(adt.url.rsplit(":", 1)[1])
    tally = Tally()
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Client.connect(p)) for p in gp_profiles]
        readers = [
            asyncio.create_task(_read_notices(c, gp.rpps, tally)) for c, gp in zip(clients, gps, strict=True)
        ]
        feeds = [await MllpFeed.open(port) for _ in range(args.mllp_connections)]
        try:
            r.progress.note(f"adt: warming up ({args.warmup:g} s at {rate:g}/s)")
            warm = await _warm(r, feeds, gps, rate, Tally(opened=tally.opened))
            before = len(tally.opened)
            meters = {"hub": CpuMeter(lambda: list(r.hub_pids)), "adt": CpuMeter(lambda: [adt.pid])}
            t0 = time.monotonic_ns() + 300_000_000
            for m in meters.values():
                m.start()
            load0 = cpu_seconds(os.getpid())
            r.progress.start(f"adt: {len(messages)} ADT messages at {rate:g}/s", len(messages), "msg")

            def show() -> None:
                r.progress.update(
                    len(tally.acks),
                    acks=len(tally.acks),
                    opened=len(tally.opened) - before,
                    errors=sum(tally.errors.values()),
                )

            feeding = asyncio.create_task(_feed(feeds, messages, rate, t0, tally))
            while not feeding.done():
                await asyncio.wait([feeding], timeout=0.25)
                show()
            feeding.result()
            last_due = t0 + int((len(messages) - 1) * 1e9 / rate)
            complete = await _until(
                lambda: all(m.match in tally.opened for m in messages),
                time.monotonic() + max(0.0, (last_due - time.monotonic_ns()) / 1e9) + GRACE_SECONDS,
                show,
            )
            t_done = time.monotonic_ns()
            cpu = {name: m.stop() for name, m in meters.items()}
            main = {name: m.main_thread_seconds for name, m in meters.items()}
            load_cpu = cpu_seconds(os.getpid()) - load0
            r.progress.finish(f"{len(tally.acks)} ACKs, {len(tally.opened) - before} notices opened")
        finally:
            for task in readers:
                task.cancel()
            for task in readers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for feed in feeds:
                await feed.close()
    return figures(
        messages=messages,
        tally=tally,
        t0=t0,
        window=(t_done - t0) / 1e9,
        cpu=cpu,
        main=main,
        load_cpu=load_cpu / max(1, len(r.load_cpus)),
        complete=complete,
        warm=warm,
        adt_rss=peak_rss_kib(adt.pid),
        gps=gps,
    )


# --- the scenario ---------------------------------------------------------------------------


def run(r: Run) -> dict[str, Any]:
    args = r.args
    if args.url:
        raise SystemExit("miss-bench: the adt scenario starts its own hub (and miss-adt)")
    if args.rate is None or args.rate <= 0 or args.seconds <= 0:
        raise SystemExit("miss-bench: adt needs --rate and --seconds above 0")
    if args.gps < 1 or args.mllp_connections < 1:
        raise SystemExit("miss-bench: --gps and --mllp-connections must be at least 1")
    if not (BIN / "miss-adt").exists():
        raise SystemExit(f"miss-bench: {BIN / 'miss-adt'} is missing (pip install -e .)")
    gps = gps_of(args.gps, seed=int.from_bytes(os.urandom(4), "big"))
    r.start_hubs(1, rate_service=UNLIMITED_RATE)
    with pinned(r.load_cpus):
        service, gp_profiles = asyncio.run(_provision(r, gps, r.workdir / "profiles"))
    adt = _start_adt(r, service.directory)
    r.servers.append(adt)
    r.progress.note(f"adt: miss-adt (pid {adt.pid}) listening on {adt.url}")
    with pinned(r.load_cpus):
        out = asyncio.run(_measure(r, service, gp_profiles, gps, adt))
    if not adt.alive():
        r.notes.append(f"miss-adt exited during the run (status {adt.proc.returncode}): see its log")
    r.stop(adt)  # before the hub, which r.close() stops
    if adt.proc.returncode not in (0, None):
        r.notes.append(f"miss-adt exited with status {adt.proc.returncode} on SIGTERM: see its log")
    out["adt"]["hub_settings"] = {"rate_service": UNLIMITED_RATE}
    out["params"] = {
        "rate": args.rate,
        "gps": args.gps,
        "mllp_connections": args.mllp_connections,
        "messages": out["adt"]["messages"],
    }
    if out["hub"]["loadgen_cpu_util"] and out["hub"]["loadgen_cpu_util"] > 0.9:
        r.notes.append(
            "the feed and the GPs' devices used more than 90 % of their CPU: latencies may be theirs"
        )
    return out
