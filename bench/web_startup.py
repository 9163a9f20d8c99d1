"""Time to the first usable screen of the browser client, on localhost.

    python -m bench.web_startup [--runs 10] [--out bench/out]

Starts ``miss-server`` on the embedded defaults (SQLite in a temporary
directory, the run's own verification authority) and Debian's Chromium
(``/usr/bin/chromium``, driven by Playwright, which ``.[test]`` installs),
then measures, ``--runs`` times each, from the test driver's side:

* ``first_load``: a browser with no device opens the hub's page, until the
  enrollment form is on screen (page, bundle, libsodium's WebAssembly);
* ``reload``: a browser holding an enrolled device reloads, until the
  unlock form is on screen;
* ``unlock``: a click on "Déverrouiller" with the passphrase, until the
  connection state says "Connecté" (Argon2id, the sealed records, the
  WebSocket handshake and the first requests).

Writes ``OUT/web-startup.json`` (every sample, medians, the bundle's sizes
raw and gzipped) and ``OUT/web-startup.png``, and prints the table. Not a
test: a shared machine's times drift; compare runs made together.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nacl.signing

from miss_server.web import BUNDLE_DIR, bundle_hash
from protocol import attestation

from .harness import hub_settings, start_hub
from .progress import Progress
from .provision import invite_all

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSPHRASE = "une phrase de passe solide"
PHASES = ("first_load", "reload", "unlock")


def bundle_sizes() -> dict[str, dict[str, int]]:
    """Each file of the served bundle: bytes, raw and gzipped (level 9)."""
    return {
        f.name: {"bytes": f.stat().st_size, "gzip": len(gzip.compress(f.read_bytes(), 9, mtime=0))}
        for f in sorted(BUNDLE_DIR.iterdir())
        if f.is_file() and not f.name.startswith(".")
    }


async def measure(url: str, code: str, authority_text: str, runs: int) -> dict[str, list[float]]:
    from playwright.async_api import async_playwright  # the [test] extra

    samples: dict[str, list[float]] = {phase: [] for phase in PHASES}
    bar = Progress()
    bar.start("web start-up", 3 * runs, "load")
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        bar.update(done)

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for _ in range(runs):
                context = await browser.new_context()
                page = await context.new_page()
                started = time.perf_counter()
                await page.goto(url)
                await page.wait_for_selector("[data-testid=enroll-submit]")
                samples["first_load"].append(time.perf_counter() - started)
                await context.close()
                step()
            context = await browser.new_context()
            page = await context.new_page()
            await page.goto(url)
            await page.fill("[data-testid=enroll-code]", code)
            await page.fill("[data-testid=enroll-authority]", authority_text)
            await page.fill("[data-testid=enroll-passphrase]", PASSPHRASE)
            await page.fill("[data-testid=enroll-passphrase2]", PASSPHRASE)
            await page.click("[data-testid=enroll-submit]")
            await page.wait_for_selector("[data-testid=conn-state][data-state=online]", timeout=30_000)
            for _ in range(runs):
                started = time.perf_counter()
                await page.reload()
                await page.wait_for_selector("[data-testid=unlock-submit]")
                samples["reload"].append(time.perf_counter() - started)
                step()
                await page.fill("[data-testid=unlock-passphrase]", PASSPHRASE)
                started = time.perf_counter()
                await page.click("[data-testid=unlock-submit]")
                await page.wait_for_selector("[data-testid=conn-state][data-state=online]", timeout=30_000)
                samples["unlock"].append(time.perf_counter() - started)
                step()
        finally:
            await browser.close()
            bar.finish()
    return samples


def write_plot(samples: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.boxplot([[s * 1000 for s in samples[p]] for p in PHASES], orientation="horizontal")
    ax.set_yticks(
        range(1, len(PHASES) + 1), ["first load → enroll form", "reload → unlock form", "unlock → connected"]
    )
    ax.set_xlabel("ms (localhost, headless Chromium)")
    ax.set_title("MiSS web client: time to a usable screen")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.web_startup", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="loads measured per phase (default 10)")
    parser.add_argument(
        "--out", type=Path, default=Path("bench/out"), help="output directory (default bench/out)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    authority = nacl.signing.SigningKey.generate()
    authority_text = attestation.encode_authority_key(bytes(authority.verify_key))
    with tempfile.TemporaryDirectory(prefix="miss-web-startup-") as tmp:
        work = Path(tmp)
        store = f"sqlite:///{work / 'miss.db'}"
        hub = start_hub(
            "hub", work, store, "memory://", os.sched_getaffinity(0), hub_settings(authority_text)
        )
        try:
            _, codes = invite_all(store, [1])
            url = hub.url.replace("ws://", "http://", 1)
            samples = asyncio.run(measure(url, codes[0][0], authority_text, args.runs))
        finally:
            hub.stop()
    sizes = bundle_sizes()
    report: dict[str, Any] = {
        "bundle_hash": bundle_hash((BUNDLE_DIR / "index.html").read_bytes()),
        "bundle": sizes,
        "bundle_gzip_total": sum(s["gzip"] for s in sizes.values()),
        "runs": args.runs,
        "samples_s": samples,
        "median_ms": {p: round(statistics.median(v) * 1000, 1) for p, v in samples.items()},
        "max_ms": {p: round(max(v) * 1000, 1) for p, v in samples.items()},
    }
    json_path, plot_path = args.out / "web-startup.json", args.out / "web-startup.png"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    write_plot(samples, plot_path)
    print(f"bundle {report['bundle_hash']}: {report['bundle_gzip_total']:,} bytes gzipped")
    for phase in PHASES:
        median, worst = report["median_ms"][phase], report["max_ms"][phase]
        print(f"  {phase:<11} median {median:7.1f} ms   max {worst:7.1f} ms")
    print(f"wrote {json_path} and {plot_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
