"""``search``: the directory at hospital scale.

``--users`` verified clinicians (default 57,000, the CHRU of the seed) are
written straight into the hub's store, each with an attestation signed by
the run's authority, as ``miss-admin verify`` would; names, professions and
organisations vary as in a real directory (:func:`directory_entry`). Then,
from one attested device, over the wire:

1. **search latency** (hub with the search budget out of reach): the
   searches of each class of :data:`QUERY_CLASSES`, one at a time,
   ``--searches`` of each; a search's time is its ``search`` written →
   its ``search_ok`` read. The hub's CPU per search is metered too. The bar
   of the issue: a search in 10 ms or less (``search.within_bar``).
2. **authentication beside a searcher** (the hub restarted on the same store
   with its *default* per-device and search budgets): ``--probes`` devices
   authenticate in turn at ``--rate`` a second (default 50) for
   ``--seconds``, first alone (``no_search``), then while one device
   searches at its budget with the hardest queries, honouring
   ``retry_after`` (``hub``). ``search.auth_p99_ratio`` is the p99 of the
   authentications with the searcher over that without.

The clients run in this process, pinned to the load CPUs, the hub on the
server CPU. There is no relay baseline: what a search costs is compared
with the bar, and the authentications with themselves.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import nacl.signing
from websockets.exceptions import ConnectionClosed

from miss_server.app import build_store
from miss_server.codes import code_hash, new_code
from miss_server.config import Settings, load_settings
from miss_server.store.base import Store
from protocol import attestation, crypto
from protocol.frames import SERVER_FRAMES, Error, Search, SearchOk, decode, encode

from ..client import Device
from ..harness import UNLIMITED_RATE
from ..measure import pinned
from ..plan import DeviceSpec
from ..runner import Run
from ..stats import latency_summary, percentile_curve, timeseries

__all__ = ["QUERIES", "QUERY_CLASSES", "directory_entry", "plot", "provision_directory", "run", "table"]

#: The issue's bar for one search (ms).
BAR_MS = 10.0
CHUNK = 512
#: Validity of the directory's attestations: far more than any run.
ATTESTATION_TTL_MS = 2 * 86_400_000

_FIRST = (
    "Camille Léa Manon Chloé Emma Inès Sarah Jade Louise Lina Alice Juliette Lucie Clara Zoé Anna Rose "
    "Agathe Margaux Mathilde Élise Hélène Claire Sophie Isabelle Nathalie Sylvie Catherine Françoise "
    "Hugo Lucas Louis Gabriel Arthur Jules Adam Raphaël Paul Nathan Tom Théo Léo Maxime Antoine Thomas "
    "Nicolas Julien Pierre Philippe Laurent Olivier Éric Stéphane Christophe Frédéric Bruno Yann Karim "
    "Mehdi Youssef Amine Samir Farid Nadia Leïla Samira Fatima Aïcha Mamadou Moussa Awa Ngozi Thi Minh"
).split()
_LAST = (
    "Martin Bernard Thomas Petit Robert Richard Durand Dubois Moreau Laurent Simon Michel Lefebvre Leroy "
    "Roux David Bertrand Morel Fournier Girard Bonnet Dupont Lambert Fontaine Rousseau Vincent Muller "
    "Lefèvre Faure André Mercier Blanc Guérin Boyer Garnier Chevalier François Legrand Gauthier Garcia "
    "Perrin Robin Clément Morin Nicolas Henry Roussel Mathieu Gautier Masson Marchand Duval Denis Dumont "
    "Marie Lemaire Noël Meyer Dufour Meunier Brun Blanchard Giraud Joly Rivière Lucas Brunet Gaillard "
    "Barbier Arnaud Martinez Gérard Roche Renard Schmitt Roy Leroux Colin Vidal Caron Picard Roger "
    "Fabre Aubert Lemoine Renaud Dumas Lacroix Olivier Philippe Bourgeois Pierre Benoît Rey Leclerc "
    "Payet Rolland Leclercq Guillaume Lecomte Lopez Jean Dupuy Guillot Hubert Berger Carpentier Sánchez "
    "Dupuis Moulin Louis Deschamps Huet Vasseur Perez Boucher Fleury Royer Klein Jacquet Adam Paris "
    "Poirier Marty Aubry Guyot Carré Charles Renault Charpentier Ménard Maillard Baron Bertin Bailly "
    "Hervé Schneider Fernandez Le Gall Collet Léger Bouvier Julien Prévost Millet Perrot Daniel Le Roux "
    "Cousin Germain Breton Besson Langlois Rémy Le Goff Pelletier Lévêque Perrier Leblanc Barré Lebrun "
    "Marchal Weber Mallet Hamon Boulanger Jacob Monnier Michaud Rodriguez Guichard Gillet Étienne "
    "Grondin Poulain Tessier Chevallier Collin Chauvin Da Silva Bouchet Gay Lemaître Bénard Maréchal "
    "Humbert Reynaud Antoine Hoarau Perret Barthélemy Cordier Pichon Lejeune Gilbert Lamy Delaunay "
    "Pasquier Carlier Laporte Nguyen Tran Diallo Traoré Benali Haddad Mansouri Kowalski Nowak Ferreira"
).split()
_PROFESSIONS = (
    ("médecin", 50),
    ("infirmier", 20),
    ("pharmacien", 10),
    ("sage-femme", 5),
    ("masseur-kinésithérapeute", 8),
    ("chirurgien-dentiste", 7),
)
_TOWNS = (
    "Lille Roubaix Tourcoing Villeneuve-d'Ascq Armentières Douai Valenciennes Cambrai Arras Lens "
    "Béthune Dunkerque Calais Boulogne-sur-Mer Saint-Omer Maubeuge Seclin Wattrelos Hazebrouck Bailleul"
).split()
_ORG_KINDS = ("CHRU de", "Centre hospitalier de", "Clinique de", "Cabinet médical de", "Pharmacie de")

#: The searches the bench times, by class: what an attacker would pick (short
#: queries scan, common ones match thousands) and what a clinician types.
QUERY_CLASSES: dict[str, list[str]] = {
    "a surname": ["Lefebvre", "Nguyen", "Barthélemy", "Da Silva", "Kowalski"],
    "a full name": ["Camille Martin", "Karim Haddad", "Élise Perrin"],
    "an RPPS number": ["10000012345", "1000004", "000055"],
    "matches thousands": ["médecin", "Lille", "CHRU", "ier", "Martin"],
    "one or two characters": ["e", "ma", "zq", "é", "x"],
    "no match": ["xqzwv", "Dr Personne", "9999999999"],
}
#: The hardest of them, for a device searching at its budget.
QUERIES: list[str] = [*QUERY_CLASSES["one or two characters"], *QUERY_CLASSES["matches thousands"]]


def directory_entry(rng: random.Random, i: int) -> tuple[str, str, str, str]:
    """(name, RPPS, profession, organisation) of the ``i``-th clinician."""
    name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    profession = rng.choices([p for p, _ in _PROFESSIONS], [w for _, w in _PROFESSIONS])[0]
    organisation = f"{rng.choice(_ORG_KINDS)} {rng.choice(_TOWNS)}"
    return name, f"{10_000_000_000 + i:011d}", profession, organisation


async def provision_directory(
    store: Store, users: int, authority: nacl.signing.SigningKey, seed: int = 11
) -> int:
    """Record ``users`` verified clinicians (no devices) in ``store``, each
    with an attestation signed by ``authority``; returns how many. RPPS
    numbers are 10,000,000,000 + i: the store must hold none of them yet."""
    rng = random.Random(seed)
    now = time.time_ns() // 1_000_000
    for start in range(0, users, CHUNK):
        entries = [directory_entry(rng, i) for i in range(start, min(users, start + CHUNK))]
        created = await asyncio.gather(*(store.create_user(*entry, now) for entry in entries))
        atts = [
            attestation.sign(
                attestation.Attestation(
                    u.user_id,
                    u.rpps,
                    u.name,
                    u.profession,
                    u.organisation,
                    (),
                    now - 60_000,
                    now + ATTESTATION_TTL_MS,
                ),
                authority,
            )
            for u in created
        ]
        await asyncio.gather(
            *(store.set_attestation(u.user_id, a) for u, a in zip(created, atts, strict=True))
        )
    return users


async def _provision(
    store_url: str, users: int, devices: int, authority: nacl.signing.SigningKey
) -> list[str]:
    """The directory, plus ``devices`` clinicians of the bench's own with an
    enrollment code each (attested once enrolled, by :func:`_attest`)."""
    store = build_store(load_settings(store=store_url))
    await store.open()
    try:
        await provision_directory(store, users, authority)
        now = time.time_ns() // 1_000_000
        codes = []
        for k in range(devices):
            user = await store.create_user(
                f"Bench Searcher {k}", f"{90_000_000_000 + k:011d}", "médecin", "Bench", now
            )
            code = new_code()
            await store.add_enrollment_code(user.user_id, code_hash(code), now + 3_600_000)
            codes.append(code)
        return codes
    finally:
        await store.close()


async def _attest(store_url: str, user_ids: list[str], authority: nacl.signing.SigningKey) -> None:
    from miss_server.authority import attest

    store = build_store(load_settings(store=store_url))
    await store.open()
    try:
        for user_id in user_ids:
            await attest(store, user_id, authority, valid_ms=ATTESTATION_TTL_MS)
    finally:
        await store.close()


def _device() -> Device:
    keys = crypto.DeviceKeys.generate()
    return Device(DeviceSpec(0, 0, keys.sign_seed, keys.box_secret))


async def _enroll(url: str, codes: list[str]) -> list[Device]:
    devices = []
    for code in codes:
        dev = _device()
        await dev.enroll(url, code)
        devices.append(dev)
    return devices


async def _search(dev: Device, rid: int, query: str) -> tuple[float, Any]:
    """One search on ``dev``'s connection: (ms, the answer)."""
    assert dev.ws is not None
    t0 = time.perf_counter()
    await dev.ws.send(encode(Search(rid=rid, query=query)))
    while True:
        reply = decode(await dev.ws.recv(decode=False), SERVER_FRAMES)
        if getattr(reply, "rid", None) == rid:
            return (time.perf_counter() - t0) * 1000, reply


async def _search_latency(r: Run, url: str, dev: Device, per_class: int) -> dict[str, Any]:
    """Phase 1: every class, one search at a time; figures per class and overall."""
    await dev.authenticate(url)
    rid = 0
    for queries in QUERY_CLASSES.values():  # warm: caches, the index's pages
        for q in queries:
            rid += 1
            await _search(dev, rid, q)
    meter = r.meters(r.hub_pids, False)
    for m in meter.values():
        m.start()
    classes: dict[str, Any] = {}
    every: list[float] = []
    errors: dict[str, int] = {}
    started = time.monotonic()
    for name, queries in QUERY_CLASSES.items():
        took: list[float] = []
        results: list[int] = []
        for i in range(per_class):
            rid += 1
            ms, reply = await _search(dev, rid, queries[i % len(queries)])
            if isinstance(reply, SearchOk):
                took.append(ms)
                results.append(len(reply.atts))
            else:
                errors[getattr(reply, "code", reply.TYPE)] = (
                    errors.get(getattr(reply, "code", reply.TYPE), 0) + 1
                )
        summary, hist = latency_summary(max(1, int(v * 1000)) for v in took)
        classes[name] = {
            "queries": queries,
            "count": len(took),
            "results_mean": round(sum(results) / len(results), 1) if results else 0,
            **summary,
            "curve": percentile_curve(hist),
        }
        every += took
    wall = time.monotonic() - started
    cpu = r.stop_meters(meter)
    await dev.close()
    overall, _ = latency_summary(max(1, int(v * 1000)) for v in every)
    return {
        "count": len(every),
        **overall,
        "classes": classes,
        "errors": errors,
        "seconds": round(wall, 2),
        "cpu_us_per_search": round(cpu["server"] * 1e6 / len(every), 1) if every else None,
        "bar_ms": BAR_MS,
        "within_bar": bool(every) and overall["p99_ms"] <= BAR_MS,
    }


async def _auth_probe(url: str, probes: list[Device], rate: float, seconds: float) -> dict[str, Any]:
    """Devices authenticate in turn, ``rate`` a second (open loop, each
    hanging up once welcomed): the figures of the times to ``welcome``."""
    timings: list[tuple[int, int, int]] = []
    failed: dict[str, int] = {}
    t0 = time.monotonic_ns() + 50_000_000
    n = int(rate * seconds)

    async def one(i: int) -> None:
        dev = probes[i % len(probes)]
        await asyncio.sleep(max(0.0, (t0 + i * 1e9 / rate - time.monotonic_ns()) / 1e9))
        try:
            timings.append(await dev.authenticate(url))
        except Exception as exc:  # counted, reported
            failed[type(exc).__name__] = failed.get(type(exc).__name__, 0) + 1
        await dev.close()

    await asyncio.gather(*(one(i) for i in range(n)))
    lat = [max(1, (t[2] - t[0]) // 1000) for t in timings]
    summary, hist = latency_summary(lat)
    return {
        "delivered": len(timings),
        "unit": "authentication",
        "failed": sum(failed.values()),
        "window_seconds": seconds,
        "rate": round(len(timings) / seconds, 1),
        **summary,
        "errors": failed,
        "timeseries": timeseries([t[0] for t in timings], [t[2] for t in timings], lat, t0),
        "curve": percentile_curve(hist),
    }


async def _searcher(url: str, dev: Device, stop: asyncio.Event) -> dict[str, Any]:
    """One device searching at its budget: the hardest queries, again as
    soon as answered, after ``retry_after`` when told."""
    await dev.authenticate(url)
    answers: dict[str, int] = {}
    took: list[float] = []
    rid = 0
    started = time.monotonic()
    try:
        while not stop.is_set():
            rid += 1
            ms, reply = await _search(dev, rid, QUERIES[rid % len(QUERIES)])
            code = reply.code if isinstance(reply, Error) else reply.TYPE
            answers[code] = answers.get(code, 0) + 1
            if isinstance(reply, Error) and reply.retry_after:
                try:
                    await asyncio.wait_for(stop.wait(), reply.retry_after / 1000)
                except TimeoutError:
                    pass
            elif isinstance(reply, SearchOk):
                took.append(ms)
    except ConnectionClosed:
        answers["closed"] = 1
    seconds = time.monotonic() - started
    await dev.close()
    summary, _ = latency_summary(max(1, int(v * 1000)) for v in took)
    return {
        "answers": answers,
        "seconds": round(seconds, 2),
        "searches_per_s": round(len(took) / seconds, 2),
        **summary,
    }


async def _metered_probe(r: Run, probes: list[Device], rate: float, seconds: float) -> dict[str, Any]:
    """An authentication window, with the hub's CPU per authentication."""
    meters = r.meters(r.hub_pids, False)
    for m in meters.values():
        m.start()
    out = await _auth_probe(r.hub_urls[0], probes, rate, seconds)
    cpu = r.stop_meters(meters)
    n = out["delivered"]
    out["cpu_seconds"] = round(cpu["server"], 3)
    out["cpu_us_per_msg"] = round(cpu["server"] * 1e6 / n, 1) if n else None
    return out


async def _beside_searcher(
    r: Run, probes: list[Device], searcher: Device, rate: float, seconds: float
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Phase 2: authentications alone, then beside the searcher (the hub's
    CPU then includes the searches)."""
    await _auth_probe(r.hub_urls[0], probes, rate, min(2.0, seconds))  # warm-up
    quiet = await _metered_probe(r, probes, rate, seconds)
    stop = asyncio.Event()
    searching = asyncio.create_task(_searcher(r.hub_urls[0], searcher, stop))
    await asyncio.sleep(0.5)
    loud = await _metered_probe(r, probes, rate, seconds)
    stop.set()
    return quiet, loud, await searching


def run(r: Run) -> dict[str, Any]:
    args = r.args
    if args.url:
        raise SystemExit("miss-bench: the search scenario starts its own hub (it restarts it between phases)")
    rate = args.rate = args.rate or 50.0
    probes_n = max(1, args.probes)
    budget = {"rate_device": None, "rate_search": None}
    out: dict[str, Any] = {"mode": "fixed-rate", "unit": "authentication", "relay": {}}

    # Phase 1: search latency, budgets out of reach.
    r.start_hubs(1, rate_search=UNLIMITED_RATE)
    hub_server = r.servers[-1]
    r.progress.note(f"search: writing {args.users:,} verified clinicians into the store")
    t0 = time.monotonic()
    codes = asyncio.run(_provision(r.store_url, args.users, 1 + probes_n, r.authority))
    provision_s = time.monotonic() - t0
    with pinned(r.load_cpus):
        devices = asyncio.run(_enroll(r.hub_urls[0], codes))
    asyncio.run(_attest(r.store_url, [d.user_id for d in devices], r.authority))
    searcher, probes = devices[0], devices[1:]
    r.progress.note(f"search: {args.searches} searches of each class, one at a time")
    with pinned(r.load_cpus):
        latency = asyncio.run(_search_latency(r, r.hub_urls[0], searcher, args.searches))

    # Phase 2: the hub's default per-device and search budgets.
    r.stop(hub_server)
    r.hub_urls, r.hub_pids = [], []
    r.start_hubs(1, **budget)
    defaults = {k: Settings.model_fields[k].default for k in budget if k in Settings.model_fields}
    r.progress.note(
        f"search: {rate:g} authentications/s for {args.seconds:g} s, alone then beside a searcher"
    )
    with pinned(r.load_cpus):
        quiet, loud, searching = asyncio.run(_beside_searcher(r, probes, searcher, rate, args.seconds))
    ratio = round(loud["p99_ms"] / quiet["p99_ms"], 2) if loud["p99_ms"] and quiet["p99_ms"] else None
    out.update(
        {
            "hub": loud,
            "no_search": {"hub": quiet},
            "search": {
                "users": args.users,
                "provision_seconds": round(provision_s, 1),
                **latency,
                "searcher": searching,
                "auth_p99_ratio": ratio,
                "budgets": defaults,
            },
            "params": {
                "users": args.users,
                "searches_per_class": args.searches,
                "auth_rate": rate,
                "probes": probes_n,
                **defaults,
            },
        }
    )
    return out


def table(report: dict[str, Any]) -> list[str]:
    """The lines of the search figures, for the report's table."""
    s = report["search"]
    lines = [
        "",
        f"search over {s['users']:,} clinicians (written in {s['provision_seconds']:g} s), "
        f"{s['count']} searches one at a time, request to answer:",
        f"  {'class':26}{'p50':>10}{'p99':>10}{'max':>10}{'results':>10}",
    ]
    for name, c in s["classes"].items():
        figures = "".join(f"{_ms(c[k]):>10}" for k in ("p50_ms", "p99_ms", "max_ms"))
        lines.append(f"  {name:26}{figures}{c['results_mean']:>10}")
    lines.append(f"  {'all':26}{_ms(s['p50_ms']):>10}{_ms(s['p99_ms']):>10}{_ms(s['max_ms']):>10}")
    lines.append(
        f"  bar: {s['bar_ms']:g} ms, {'met' if s['within_bar'] else 'NOT MET'} (p99); "
        f"hub CPU per search {s['cpu_us_per_search']} µs"
    )
    q, h, w = report["no_search"]["hub"], report["hub"], s["searcher"]
    lines += [
        f"authentication ({report['params']['auth_rate']:g}/s): p50 {_ms(q['p50_ms'])} → {_ms(h['p50_ms'])}, "
        f"p99 {_ms(q['p99_ms'])} → {_ms(h['p99_ms'])} beside one device searching at its budget "
        f"(x{s['auth_p99_ratio']}; budgets {s['budgets']})",
        f"  the searcher: {w['answers']} in {w['seconds']} s ({w['searches_per_s']} searches/s)",
    ]
    return lines


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def plot(report: dict[str, Any], path: Any) -> None:
    """Search latency by class; authentication latency with and without
    the searcher, as a distribution and over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter

    path.parent.mkdir(parents=True, exist_ok=True)
    s = report["search"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    fig.suptitle(f"miss-bench search ({report['backend']}): {s['users']:,} clinicians in the directory")

    def percentile_axis(ax: Any) -> None:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator([1, 10, 100, 1000]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{100 - 100 / x:g}%" if x > 1 else "0%"))
        ax.set_xlabel("percentile")
        ax.grid(True, which="both", alpha=0.3)

    ax = axes[0]
    for name, c in s["classes"].items():
        if c["curve"]:
            xs = [1 / (1 - min(p, 99.9) / 100) for p, _ in c["curve"]]
            ax.plot(xs, [v for _, v in c["curve"]], marker="o", ms=3, label=name)
    ax.axhline(s["bar_ms"], color="black", linestyle=":", label=f"bar {s['bar_ms']:g} ms")
    percentile_axis(ax)
    ax.set_ylabel("search, request to answer (ms)")
    ax.set_title("search latency by kind of query")
    ax.legend(fontsize=8)

    sides = [
        ("beside a searcher", report["hub"], "tab:red"),
        ("alone", report["no_search"]["hub"], "tab:blue"),
    ]
    ax = axes[1]
    for name, side, color in sides:
        if side.get("curve"):
            xs = [1 / (1 - min(p, 99.9) / 100) for p, _ in side["curve"]]
            ax.plot(xs, [v for _, v in side["curve"]], marker="o", ms=3, color=color, label=name)
    percentile_axis(ax)
    ax.set_ylabel("connection to welcome (ms)")
    ax.set_title("authentication latency")
    ax.legend()

    ax = axes[2]
    for name, side, color in sides:
        ts = side.get("timeseries") or {}
        if ts.get("t_s"):
            ax.plot(ts["t_s"], ts["p50_ms"], color=color, label=f"{name} p50")
            ax.plot(ts["t_s"], ts["p99_ms"], color=color, linestyle="--", label=f"{name} p99")
    ax.set_xlabel("seconds since the start of the window")
    ax.set_ylabel("connection to welcome (ms)")
    ax.set_title("authentication latency over time")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
