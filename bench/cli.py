"""``miss-bench``: load-test a MiSS hub against a bare relay, in one run.

    miss-bench run --scenario online --rate 1000 --seconds 10
    miss-bench run --scenario online --backend services --rate 1000
    miss-bench run --scenario connections --connections 10000
    miss-bench run --scenario offline-drain --messages 10000
    miss-bench run --scenario auth-storm --storm 2000
    miss-bench run --scenario auth-storm --storm 10000 --backend services --hub-workers 2
    miss-bench run --scenario fanout --devices 4 --own-devices 3 --rate 200
    miss-bench run --scenario fanout --team 20 --rate 20 --seconds 5
    miss-bench run --scenario multi-node --rate 1000
    miss-bench run --scenario flood --rate 200 --flood-messages 5000
    miss-bench run --scenario search --users 57000
    miss-bench run --scenario attachments --pairs 4 --messages 5 --files 6 --file-mb 5
    miss-bench run --scenario adt --rate 50 --seconds 60 --gps 20
    miss-bench run --scenario capacity --p99-ms 100 --peak-factor 10

See README, "Benchmarks", for what each figure means.
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from .harness import RELAYS
from .report import table, write_json, write_plot
from .runner import Run
from .scenarios import EXTRA_WORKERS, PLOTS, SCENARIOS, TABLES
from .scenarios.capacity import DEFAULTS as DEFAULT_CAPACITY

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="miss-bench", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {version('miss')}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one scenario", description="Run one scenario, relay then hub.")
    r.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    r.add_argument(
        "--backend",
        choices=("embedded", "services"),
        default="embedded",
        help="embedded: SQLite + in-process broker; services: PostgreSQL and Redis "
        "from MISS_STORE/MISS_BROKER (default this machine's)",
    )
    r.add_argument("--seconds", type=float, help="length of each measured load window (default 10; adt: 60)")
    r.add_argument(
        "--rate",
        type=float,
        help="messages per second offered in all (open loop); "
        "without it: closed loop, the maximum rate reached (connections: 100, flood: 200; "
        "search: authentications per second, 50; adt: ADT messages per second, 50)",
    )
    r.add_argument(
        "--closed-loop",
        action="store_true",
        help="with --rate: also run a closed loop, reported under closed_loop",
    )
    r.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="online, fanout, multi-node, attachments: measure the relay (attachments: the HTTP "
        "baseline) and the hub N times, alternately, and report the round with the median ratio "
        "(every round's figures under rounds)",
    )
    r.add_argument("--json", type=Path, help="JSON report (default OUT/SCENARIO-BACKEND.json)")
    r.add_argument("--plot", type=Path, help="PNG plots (default OUT/SCENARIO-BACKEND.png)")
    r.add_argument("--out", default="bench/out", help="output directory (default bench/out)")
    r.add_argument(
        "--url",
        action="append",
        help="use this running hub instead of starting one (twice for multi-node); "
        "needs --store and --authority-key-file; raise its rate limits first",
    )
    r.add_argument("--store", help="with --url: the hub's store URL (default $MISS_STORE)")
    r.add_argument(
        "--authority-key-file",
        type=Path,
        help="with --url (required): the key file of the hub's verification authority "
        "(`miss-admin authority init`), to verify the simulated clinicians",
    )
    r.add_argument(
        "--relay",
        choices=sorted(RELAYS),
        default="websockets",
        help="the baseline: the bare relay on websockets' asyncio server (default), or on its "
        "sans-I/O layer (bench/relay_sansio.py: what the connection path costs without the asyncio layer)",
    )
    r.add_argument("--workers", type=int, default=2, help="load generator processes (default 2)")
    r.add_argument(
        "--pairs",
        type=int,
        help="pairs of clinicians (online, multi-node, flood, connections traffic; default 50; "
        "attachments: default 4)",
    )
    r.add_argument("--payload", type=int, default=256, help="message body size in bytes (default 256)")
    r.add_argument("--connections", type=int, default=10_000, help="connections: how many (default 10,000)")
    r.add_argument(
        "--messages",
        type=int,
        help="offline-drain: messages queued (default 10,000); attachments: messages each pair's "
        "sender sends (default 5)",
    )
    r.add_argument(
        "--files", type=int, default=6, help="attachments: files in each message (default 6, at most 16)"
    )
    r.add_argument(
        "--file-mb",
        type=float,
        default=5.0,
        help="attachments: size of each file in MB of 10^6 bytes (default 5)",
    )
    r.add_argument(
        "--gps",
        type=int,
        default=20,
        help="adt: GPs the feed's patients have, each an SDK device (default 20)",
    )
    r.add_argument(
        "--mllp-connections",
        type=int,
        default=4,
        help="adt: MLLP connections the feed spreads its messages over, one message in flight on each "
        "(default 4)",
    )
    r.add_argument(
        "--storm", type=int, default=2000, help="auth-storm: devices connecting at once (default 2,000)"
    )
    r.add_argument(
        "--hub-workers",
        type=int,
        default=1,
        metavar="N",
        help="auth-storm, connections: run the hub as `miss-server --workers N` (N > 1 needs "
        "--backend services); its CPU (and for connections its RSS) is that of the supervisor and "
        "every worker",
    )
    r.add_argument(
        "--devices",
        type=int,
        help="fanout: devices of the recipient (default 4); with --team, of each member (default 2)",
    )
    r.add_argument(
        "--team",
        type=int,
        metavar="N",
        help="fanout: messages to a care team of N clinicians (SPEC §13), beside 1:1 messages of the "
        "nearest fan-out in the same run: hub CPU per delivered envelope of each, and bytes stored "
        "per team message",
    )
    r.add_argument(
        "--own-devices", type=int, default=3, help="fanout: devices of the sender's clinician (default 3)"
    )
    r.add_argument(
        "--flood-messages",
        type=int,
        default=5000,
        help="flood: most messages the flooder sends in its window (default 5,000)",
    )
    r.add_argument(
        "--users",
        type=int,
        default=57_000,
        help="search: verified clinicians in the directory (default 57,000)",
    )
    r.add_argument(
        "--searches", type=int, default=200, help="search: searches timed of each kind of query (default 200)"
    )
    r.add_argument(
        "--probes", type=int, default=8, help="search: devices that authenticate in turn (default 8)"
    )
    cap = r.add_argument_group("capacity", "the search of the highest rate one hub process sustains")
    cap.add_argument(
        "--start-rate",
        type=float,
        default=DEFAULT_CAPACITY["start_rate"],
        help="first offered rate, messages/s; doubled while steps pass, then bisected (default 200)",
    )
    cap.add_argument("--step-seconds", type=float, help="length of each step (default --seconds, 10)")
    cap.add_argument(
        "--p99-ms",
        type=float,
        default=DEFAULT_CAPACITY["p99_ms"],
        help="a step passes with p99 at most this (ms) and nothing lost or refused (default 100)",
    )
    cap.add_argument("--max-rate", type=float, help="never offer more than this (messages/s)")
    cap.add_argument(
        "--max-steps",
        type=int,
        default=DEFAULT_CAPACITY["max_steps"],
        help="at most this many steps, i.e. rates tried (default 12)",
    )
    cap.add_argument(
        "--confirm",
        type=int,
        default=DEFAULT_CAPACITY["confirm"],
        help="run a failing step again this many times; the rate fails if every attempt failed (default 1)",
    )
    cap.add_argument(
        "--peak-factor",
        type=float,
        default=DEFAULT_CAPACITY["peak_factor"],
        help="a device's traffic at a busy hour ÷ its monthly average (default 10)",
    )
    cap.add_argument(
        "--month-messages",
        type=float,
        default=DEFAULT_CAPACITY["month_messages"],
        help="messages a month of the stated traffic (default the seed's 4,800,000)",
    )
    cap.add_argument(
        "--month-users",
        type=int,
        default=DEFAULT_CAPACITY["month_users"],
        help="users (one device each) who send them (default the seed's 57,000)",
    )
    r.add_argument(
        "--warmup", type=float, default=1.0, help="unmeasured warm-up before each message window (s)"
    )
    r.add_argument(
        "--profile",
        help="write a py-spy profile of the hub during its window: "
        "flame graph (.svg) or collapsed stacks (.txt)",
    )
    r.add_argument("--keep", action="store_true", help="keep the run's work directory (hub logs, database)")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.url and args.authority_key_file is None:
        parser.error("--url needs --authority-key-file (the hub's verification authority)")
    if args.hub_workers > 1 and (args.backend != "services" or args.url):
        parser.error("--hub-workers above 1 needs --backend services (and no --url)")
    attachments = args.scenario == "attachments"
    if args.seconds is None:
        args.seconds = 60.0 if args.scenario == "adt" else 10.0
    if args.rate is None and args.scenario == "adt":
        args.rate = 50.0
    if args.pairs is None:
        args.pairs = 4 if attachments else 50
    if args.messages is None:
        args.messages = 5 if attachments else 10_000
    out = Path(args.out)
    kind = f"{args.scenario}-team" if args.scenario == "fanout" and args.team else args.scenario
    stem = f"{kind}-{'services' if args.scenario == 'multi-node' else args.backend}"
    json_path = args.json or out / f"{stem}.json"
    plot_path = args.plot or out / f"{stem}.png"
    started = time.time()
    run = Run(args, extra_workers=EXTRA_WORKERS.get(args.scenario, 0))
    try:
        result = SCENARIOS[args.scenario](run)
    finally:
        run.close()
    refused = {"not_verified", "recipient_not_verified"} & set(result["hub"].get("errors", {}))
    if refused:
        run.notes.append(
            f"the hub refused the clinicians ({', '.join(sorted(refused))}): "
            + (
                "is --authority-key-file the authority the hub is configured with?"
                if args.url
                else "the bench's attestations were not accepted"
            )
        )
    report: dict[str, Any] = {
        "scenario": args.scenario,
        "backend": args.backend,
        "baseline": args.relay,  # which relay (harness.RELAYS)
        "seconds": args.seconds,
        "mode": result.pop("mode"),
        "rate_offered": args.rate,
        "unit": result.pop("unit", "message"),
        **result,
        "pinning": run.pinning(),
        "machine": run.machine(),
        "loadgen": {"workers": args.workers, **result.pop("loadgen", {})},
        "command": "miss-bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "notes": run.notes,
    }
    write_json(report, json_path)
    PLOTS.get(args.scenario, write_plot)(report, plot_path)
    print("\n".join([table(report), *TABLES.get(args.scenario, lambda _: [])(report)]))
    print(f"\nreport: {json_path}\nplots:  {plot_path}")
    return 0 if report["hub"].get("delivered") else 1


if __name__ == "__main__":
    sys.exit(main())
