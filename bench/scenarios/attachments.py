"""``attachments``: encrypted files through the hub (SPEC §16), against a
plain HTTP file transfer moving the same bytes in the same run.

``--pairs`` pairs of clinicians (one device each; default 4); in each pair
the first sends the second ``--messages`` messages (default 5), each
carrying ``--files`` images (default 6) of ``--file-mb`` MB (default 5;
MB = 10⁶ bytes): random bytes behind a JPEG signature, so that
:func:`protocol.attachments.sniff_type` takes them for ``image/jpeg``.
Every file is encrypted under its own key (:func:`encrypt_bytes`) before
any window starts, so that the load generator's encryption is not in the
measured time; every blob is distinct.

On the hub (two measured windows, the hub's CPU metered over each):

1. **up**: each sender, its messages one after the other, uploads the
   files of a message one after the other as the SDK does (``blob_begin``,
   ``blob_put`` pieces of 60 KiB with 8 in flight, ``blob_end``; see
   :mod:`bench.blob_wire`), then sends the message naming them (a sealed
   body, ``accepted`` awaited); the window ends once every recipient has
   had every message delivered and opened (its descriptors checked).
2. **down**: each recipient, for each file it was sent, asks ``blob_link``
   and GETs the link on the hub's port in Range parts of at most 1 MiB,
   each fed to the :class:`~protocol.attachments.Decryptor` (length,
   every chunk's tag, the SHA-256 of the descriptor); a file counts as
   verified once the decryptor's ``finish`` passed and the plaintext is the
   one sent (its SHA-256).

The **baseline** (:mod:`bench.http_baseline`, started on the same CPU as
the hub, before it) moves the same blobs the same way: each sender PUTs
them one after the other (each written and fsync'd), then each recipient
GETs every one in the same Range parts, through the same client and the
same decryptor. No authentication, no store, no crypto on the server:
what moving these bytes over HTTP costs a process at the least.

Figures (``hub`` and ``http_baseline``): MB/s up and down (ciphertext
bytes ÷ window), CPU ms per MB moved (each window's, and both together),
peak RSS (``VmHWM``), and ``ratio_cpu``: hub CPU per MB ÷ baseline CPU per
MB over both windows (the issue's bar: at most 3). The clients run in this
process, pinned to the load CPUs, as in ``search``; the worker processes
only enroll the devices.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from protocol.attachments import (
    HTTP_PART_MAX,
    MAX_ATTACHMENTS_WIRE,
    Attachment,
    cipher_size,
    encrypt_bytes,
    sniff_type,
)

from ..blob_wire import BlobPeer, Refused, Tally, fetch_verified
from ..client import Device
from ..harness import UNLIMITED_RATE
from ..http_baseline import HttpError, put, start_baseline
from ..measure import CpuMeter, cpu_seconds, peak_rss_kib, pinned
from ..plan import Entry
from ..runner import Population, Run
from .common import ratio

__all__ = ["BAR", "MB", "run"]

#: The issue's bar: hub CPU per MB at most this many times the baseline's.
BAR = 3.0
MB = 1_000_000
#: The signature the files start with (a JPEG's SOI and APP0 markers).
JPEG_MAGIC = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
#: Size of each pair's unmeasured warm-up file.
WARM_BYTES = 200_000
#: How often the throughput is sampled for the plot and the progress line (s).
SAMPLE_S = 0.25


@dataclass
class File:
    """One file as its sender holds it: encrypted, with its descriptor's parts."""

    name: str
    size: int
    key: bytes
    blob: bytes
    hash: bytes
    plain_sha: bytes
    type: str

    def attachment(self, blob_id: str) -> Attachment:
        return Attachment(blob_id, self.key, self.hash, self.size, self.type, self.name)


def make_file(name: str, size: int) -> File:
    plain = (JPEG_MAGIC + os.urandom(max(0, size - len(JPEG_MAGIC))))[:size]
    kind = sniff_type(plain, name)
    assert kind == "image/jpeg", kind
    key, blob, digest = encrypt_bytes(plain)
    return File(name, size, key, blob, digest, hashlib.sha256(plain).digest(), kind)


@dataclass
class Window:
    """One measured window: wall time, bytes, CPU of the server, the load."""

    seconds: float = 0.0
    bytes: int = 0
    cpu: float = 0.0
    cpu_main: float = 0.0
    services: dict[str, float] = field(default_factory=dict)
    loadgen_cpu: float = 0.0
    #: (seconds since the window began, bytes so far), every SAMPLE_S
    samples: list[tuple[float, int]] = field(default_factory=list)


async def _up_then_down(
    r: Run,
    labels: tuple[str, str],
    pid: int,
    services: bool,
    plan: Plan,
    tally: Tally,
    work: tuple[Callable[[], Awaitable[list[Any]]], Callable[[], Awaitable[list[Any]]]],
) -> tuple[Window, Window, list[Any]]:
    """The two metered windows of one server, the uploads then the
    downloads (``work``: each starts every pair's part and gathers their
    outcomes); their windows and every pair's outcome of both, exceptions
    included."""
    up, up_outcomes = await _window(
        r, labels[0], r.meters([pid], services), plan.cipher_bytes, lambda: tally.up_bytes, work[0]()
    )
    down, down_outcomes = await _window(
        r, labels[1], r.meters([pid], services), plan.cipher_bytes, lambda: tally.down_bytes, work[1]()
    )
    return up, down, [*up_outcomes, *down_outcomes]


async def _window(
    r: Run,
    label: str,
    meters: dict[str, CpuMeter],
    total: int,
    moved: Callable[[], int],
    work: Awaitable[Any],
) -> tuple[Window, Any]:
    """Run ``work`` with the meters on; sample ``moved()`` bytes for the
    progress display and the plot."""
    win = Window()
    for m in meters.values():
        m.start()
    load0 = cpu_seconds(os.getpid())
    t0 = time.monotonic()
    start_bytes = moved()
    r.progress.start(label, total / MB, "MB")
    task = asyncio.ensure_future(work)
    while not task.done():
        await asyncio.wait([task], timeout=SAMPLE_S)
        now, done = time.monotonic() - t0, moved() - start_bytes
        win.samples.append((round(now, 3), done))
        r.progress.update(done / MB, rate=f"{done / MB / max(now, 1e-9):.1f} MB/s")
    win.seconds = time.monotonic() - t0
    cpu = r.stop_meters(meters)
    win.loadgen_cpu = cpu_seconds(os.getpid()) - load0
    win.cpu, win.cpu_main = cpu["server"], cpu["server_main_thread"]
    win.services = {k: v for k, v in cpu.items() if k not in ("server", "server_main_thread")}
    win.bytes = moved() - start_bytes
    r.progress.finish(f"{win.bytes / MB:.1f} MB in {win.seconds:.2f} s")
    return win, task.result()


# --- the plan -----------------------------------------------------------------------------


@dataclass
class Plan:
    pairs: int
    messages: int
    files: int
    file_bytes: int
    #: files[pair][message][k]
    data: list[list[list[File]]]

    @property
    def count(self) -> int:
        return self.pairs * self.messages * self.files

    @property
    def cipher_bytes(self) -> int:
        return self.count * cipher_size(self.file_bytes)


def _plan(r: Run) -> Plan:
    args = r.args
    if not 1 <= args.files <= MAX_ATTACHMENTS_WIRE:
        raise SystemExit(f"miss-bench: --files must be 1 to {MAX_ATTACHMENTS_WIRE}")
    file_bytes = int(args.file_mb * MB)
    if file_bytes < 1:
        raise SystemExit("miss-bench: --file-mb must be above 0")
    plan = Plan(args.pairs, args.messages, args.files, file_bytes, [])
    r.progress.note(
        f"attachments: encrypting {plan.count} files of {file_bytes / MB:g} MB "
        f"({plan.cipher_bytes / MB:,.1f} MB of ciphertext, held in memory)"
    )
    plan.data = [
        [
            [make_file(f"img-{p}-{m}-{k}.jpg", file_bytes) for k in range(plan.files)]
            for m in range(plan.messages)
        ]
        for p in range(plan.pairs)
    ]
    return plan


def _verify(plain: bytes, f: File) -> bool:
    return len(plain) == f.size and hashlib.sha256(plain).digest() == f.plain_sha


# --- the baseline -------------------------------------------------------------------------


async def _baseline(r: Run, plan: Plan, host: str, port: int, pid: int, tag: str) -> dict[str, Any]:
    tally = Tally()

    def path(p: int, m: int, k: int) -> str:
        return f"/files/p{p}-m{m}-f{k}"

    async def put_pair(p: int) -> None:
        for m, files in enumerate(plan.data[p]):
            for k, f in enumerate(files):
                await put(host, port, path(p, m, k), f.blob)
                tally.up_bytes += len(f.blob)
                tally.uploads += 1

    async def get_pair(p: int) -> None:
        for m, files in enumerate(plan.data[p]):
            for k, f in enumerate(files):
                att = f.attachment("b_" + "0" * 32)
                try:
                    plain = await fetch_verified(host, port, path(p, m, k), len(f.blob), att, tally)
                except HttpError as exc:
                    tally.error(f"HTTP {exc.status}")
                    continue
                except Exception as exc:
                    tally.error(type(exc).__name__)
                    continue
                if not _verify(plain, f):
                    tally.verified -= 1
                    tally.error("plaintext differs")

    async def every(fn: Callable[[int], Awaitable[None]]) -> list[Any]:
        return await asyncio.gather(*(fn(p) for p in range(plan.pairs)), return_exceptions=True)

    if r.args.warmup > 0:  # unmeasured: a small file each way per pair
        warm = make_file("warm.jpg", WARM_BYTES)
        for p in range(plan.pairs):
            await put(host, port, f"/files/warm{p}", warm.blob)
            await fetch_verified(
                host, port, f"/files/warm{p}", len(warm.blob), warm.attachment("b_" + "0" * 32), Tally()
            )
    rss0 = peak_rss_kib(pid)["VmRSS"]
    up, down, failures = await _up_then_down(
        r,
        (f"baseline{tag}: PUT", f"baseline{tag}: GET"),
        pid,
        False,
        plan,
        tally,
        (lambda: every(put_pair), lambda: every(get_pair)),
    )
    for exc in failures:
        if isinstance(exc, BaseException):
            tally.error(type(exc).__name__)
    return _figures(plan, up, down, tally, rss0, peak_rss_kib(pid))


# --- the hub ------------------------------------------------------------------------------


async def _hub(
    r: Run,
    plan: Plan,
    peers: list[tuple[BlobPeer, BlobPeer]],
    entries: list[tuple[Entry, Entry]],
    pid: int,
    tag: str,
) -> dict[str, Any]:
    tally = peers[0][0].tally
    received: list[list[tuple[Attachment, ...]]] = [[] for _ in range(plan.pairs)]

    async def send_pair(p: int) -> None:
        sender = peers[p][0]
        for files in plan.data[p]:
            atts = []
            for f in files:
                blob_id = await sender.upload(f.blob)
                atts.append(f.attachment(blob_id))
            await sender.send(entries[p][1].user_id, [entries[p][1]], atts)

    async def receive_pair(p: int, n: int, into: list[tuple[Attachment, ...]]) -> None:
        recipient = peers[p][1]
        for _ in range(n):
            frame = await recipient.delivers.get()
            into.append(recipient.open(frame, entries[p][0]))

    async def up_pair(p: int) -> None:
        receiving = asyncio.create_task(receive_pair(p, plan.messages, received[p]))
        try:
            await send_pair(p)
        except BaseException:
            receiving.cancel()
            raise
        await asyncio.wait_for(receiving, 60)

    async def down_pair(p: int) -> None:
        recipient = peers[p][1]
        sent = {f.hash: f for files in plan.data[p] for f in files}
        for atts in received[p]:
            for att in atts:
                try:
                    plain = await recipient.fetch(att)
                except Refused as exc:
                    tally.error(exc.code)
                    continue
                except HttpError as exc:
                    tally.error(f"HTTP {exc.status}")
                    continue
                except Exception as exc:
                    tally.error(type(exc).__name__)
                    continue
                f = sent.get(att.hash)
                if f is None or not _verify(plain, f):
                    tally.verified -= 1
                    tally.error("plaintext differs")

    async def every(fn: Callable[[int], Awaitable[None]]) -> list[Any]:
        return await asyncio.gather(*(fn(p) for p in range(plan.pairs)), return_exceptions=True)

    if r.args.warmup > 0:  # unmeasured: one small file per pair, sent and fetched
        warm = make_file("warm.jpg", WARM_BYTES)
        scratch = Tally()
        for p, (sender, recipient) in enumerate(peers):
            sender.tally = recipient.tally = scratch
            blob_id = await sender.upload(warm.blob)
            await sender.send(entries[p][1].user_id, [entries[p][1]], [warm.attachment(blob_id)])
            (att,) = recipient.open(await asyncio.wait_for(recipient.delivers.get(), 30), entries[p][0])
            await recipient.fetch(att)
            sender.tally = recipient.tally = tally
    services = r.using_services()
    rss0 = peak_rss_kib(pid)["VmRSS"]
    up, down, failures = await _up_then_down(
        r,
        (f"hub{tag}: upload and send", f"hub{tag}: link and GET"),
        pid,
        services,
        plan,
        tally,
        (lambda: every(up_pair), lambda: every(down_pair)),
    )
    for exc in failures:
        if isinstance(exc, Refused):
            tally.error(exc.code)
        elif isinstance(exc, BaseException):
            tally.error(type(exc).__name__)
    out = _figures(plan, up, down, tally, rss0, peak_rss_kib(pid))
    out["messages_delivered"] = sum(len(x) for x in received)
    return out


async def _connect(
    r: Run, pop: Population, host: str, port: int
) -> tuple[list[tuple[BlobPeer, BlobPeer]], list[tuple[Entry, Entry]]]:
    tally = Tally()
    peers: list[tuple[BlobPeer, BlobPeer]] = []
    entries: list[tuple[Entry, Entry]] = []
    for a_user, b_user in zip(pop.user_devices[0::2], pop.user_devices[1::2], strict=True):
        pair = []
        for index in (a_user[0], b_user[0]):
            dev = Device(pop.devices[index])
            entry = r.directory[index]
            dev.user_id, dev.device_id = entry.user_id, entry.device_id
            peer = BlobPeer(dev, tally)
            await peer.connect(r.hub_urls[0], host, port)
            pair.append(peer)
        peers.append((pair[0], pair[1]))
        entries.append((r.directory[a_user[0]], r.directory[b_user[0]]))
    return peers, entries


async def _hub_side(r: Run, plan: Plan, pop: Population, tag: str) -> dict[str, Any]:
    url = urlsplit(r.hub_urls[0])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    peers, entries = await _connect(r, pop, host, port)
    try:
        return await _hub(r, plan, peers, entries, r.hub_pids[0], tag)
    finally:
        for pair in peers:
            for peer in pair:
                await peer.dev.close()


# --- figures ------------------------------------------------------------------------------


def _per_mb(cpu: float, n: int) -> float | None:
    """CPU milliseconds per MB of ``n`` bytes."""
    return round(cpu * 1000 / (n / MB), 3) if n else None


def _figures(
    plan: Plan, up: Window, down: Window, tally: Tally, rss0: int | None, rss: dict[str, int | None]
) -> dict[str, Any]:
    moved = up.bytes + down.bytes
    cpu = up.cpu + down.cpu
    window = up.seconds + down.seconds
    out: dict[str, Any] = {
        # the unit of work: a file downloaded and verified
        "delivered": tally.verified,
        "files": plan.count,
        "complete": tally.verified == plan.count and not tally.errors,
        "uploads": tally.uploads,
        "up_bytes": up.bytes,
        "down_bytes": down.bytes,
        "up_seconds": round(up.seconds, 3),
        "down_seconds": round(down.seconds, 3),
        "up_mb_per_s": round(up.bytes / MB / up.seconds, 2) if up.seconds else None,
        "down_mb_per_s": round(down.bytes / MB / down.seconds, 2) if down.seconds else None,
        "cpu_seconds_up": round(up.cpu, 3),
        "cpu_seconds_down": round(down.cpu, 3),
        "cpu_seconds": round(cpu, 3),
        "cpu_ms_per_mb_up": _per_mb(up.cpu, up.bytes),
        "cpu_ms_per_mb_down": _per_mb(down.cpu, down.bytes),
        "cpu_ms_per_mb": _per_mb(cpu, moved),
        "cpu_ms_per_mb_event_loop": _per_mb(up.cpu_main + down.cpu_main, moved),
        "cpu_ms_per_mb_other_threads": _per_mb(max(0.0, cpu - up.cpu_main - down.cpu_main), moved),
        "rss_kib_before": rss0,
        "rss_kib_after": rss["VmRSS"],
        "peak_rss_kib": rss["VmHWM"],
        "http_busy": tally.http_busy,
        "http_limited": tally.http_limited,
        "errors": dict(tally.errors),
        "loadgen_cpu_util": round((up.loadgen_cpu + down.loadgen_cpu) / window, 3) if window else None,
        "timeseries": {
            "up": [[t, b] for t, b in up.samples],
            "down": [[t, b] for t, b in down.samples],
        },
    }
    for name in up.services:
        s = up.services[name] + down.services.get(name, 0.0)
        out[f"{name}_cpu_seconds"] = round(s, 3)
        out[f"{name}_cpu_ms_per_mb"] = _per_mb(s, moved)
    return out


# --- the scenario -------------------------------------------------------------------------


def hub_blob_settings(plan: Plan) -> dict[str, str]:
    """The attachment settings of the hub for this load: files of this size
    allowed, every quota and the ``blob_put`` and download budgets out of
    reach (the bench measures throughput, not the limits, and every client
    comes from 127.0.0.1); ``max_blob_downloads`` keeps its default (each
    recipient downloads one part at a time). Only settings the hub has."""
    from miss_server.config import Settings

    huge = str(10**15)
    wanted = {
        "max_attachments": str(max(6, plan.files)),
        "max_attachment_bytes": str(max(20 * 1024 * 1024, plan.file_bytes)),
        "blob_quota_bytes_per_day": huge,
        "blob_quota_per_day": str(10**9),
        "blob_stored_bytes_per_user": huge,
        "max_open_uploads": "1000",
        "rate_blob": UNLIMITED_RATE,
        "rate_download": UNLIMITED_RATE,
    }
    return {k: v for k, v in wanted.items() if k in Settings.model_fields}


def _ratios(hub: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    return {
        "ratio_cpu": ratio(hub["cpu_ms_per_mb"], base["cpu_ms_per_mb"]),
        "ratio_cpu_up": ratio(hub["cpu_ms_per_mb_up"], base["cpu_ms_per_mb_up"]),
        "ratio_cpu_down": ratio(hub["cpu_ms_per_mb_down"], base["cpu_ms_per_mb_down"]),
    }


def _baseline_round(r: Run, plan: Plan, tag: str) -> dict[str, Any]:
    """Start the baseline on the servers' CPU, move the bytes, stop it."""
    baseline = start_baseline(r.workdir / "baseline", r.server_cpus)
    r.servers.append(baseline)
    url = urlsplit(baseline.url)
    try:
        with pinned(r.load_cpus):
            return asyncio.run(
                _baseline(r, plan, url.hostname or "127.0.0.1", url.port or 80, baseline.pid, tag)
            )
    finally:
        r.stop(baseline)


def run(r: Run) -> dict[str, Any]:
    """The baseline, then the hub, alone on the servers' CPU each;
    ``--repeat N``: N such rounds (the hub started and its clinicians
    enrolled once; every round uploads new blobs), and the round whose ratio
    is the median is reported, every round's figures under ``attachments.rounds``."""
    args = r.args
    if args.url:
        raise SystemExit("miss-bench: the attachments scenario starts its own hub (and its baseline)")
    plan = _plan(r)
    pop = Population(len(r.pool))
    for p in range(plan.pairs):
        pop.add_user(1, p)
        pop.add_user(1, p)
    r.set_population(pop)
    settings = hub_blob_settings(plan)
    count = max(1, args.repeat)
    rounds: list[dict[str, Any]] = []
    for k in range(count):
        tag = f" {k + 1}/{count}" if count > 1 else ""
        base = _baseline_round(r, plan, tag)
        if k == 0:
            r.start_hubs(1, **settings)
            r.enroll()
        with pinned(r.load_cpus):
            hub = asyncio.run(_hub_side(r, plan, pop, tag))
        rounds.append({"hub": hub, "http_baseline": base, **_ratios(hub, base)})

    ranked = sorted(rounds, key=lambda o: o["ratio_cpu"] if o["ratio_cpu"] is not None else float("inf"))
    chosen = ranked[(count - 1) // 2]
    hub, base = chosen["hub"], chosen["http_baseline"]
    ratios = _ratios(hub, base)
    if hub["loadgen_cpu_util"] and hub["loadgen_cpu_util"] > 0.9:
        r.notes.append(
            "the clients used more than 90 % of their CPU: MB/s may be the load generator's limit "
            "(CPU per MB is not affected)"
        )
    r.args.seconds = round(hub["up_seconds"] + hub["down_seconds"], 1)
    out: dict[str, Any] = {
        "mode": "closed-loop",
        "unit": "file",
        "hub": hub,
        "relay": {},
        "http_baseline": base,
        **ratios,
        "attachments": {
            **ratios,
            "bar": BAR,
            "within_bar": ratios["ratio_cpu"] is not None and ratios["ratio_cpu"] <= BAR,
            "cipher_bytes_per_file": cipher_size(plan.file_bytes),
            "http_part_max": HTTP_PART_MAX,
            "hub_settings": settings,
        },
        "params": {
            "pairs": plan.pairs,
            "messages": plan.messages,
            "files": plan.files,
            "file_mb": plan.file_bytes / MB,
        },
    }
    if count > 1:  # under ``attachments``: the generic table reads a top-level ``rounds`` as µs per message
        out["attachments"]["rounds"] = [
            {
                "hub_cpu_ms_per_mb": o["hub"]["cpu_ms_per_mb"],
                "baseline_cpu_ms_per_mb": o["http_baseline"]["cpu_ms_per_mb"],
                "ratio_cpu": o["ratio_cpu"],
                "hub_up_mb_per_s": o["hub"]["up_mb_per_s"],
                "hub_down_mb_per_s": o["hub"]["down_mb_per_s"],
                "baseline_up_mb_per_s": o["http_baseline"]["up_mb_per_s"],
                "baseline_down_mb_per_s": o["http_baseline"]["down_mb_per_s"],
            }
            for o in rounds
        ]
    return out


# --- output ---------------------------------------------------------------------------------
