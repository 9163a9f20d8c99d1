"""``miss-adt``: the command line.

``miss-adt serve --config FILE``
    Run the listener (see :mod:`miss_adt.server` for the file). Prints
    ``miss-adt listening on HOST:PORT`` once it accepts connections; stops
    on SIGTERM or SIGINT (spooled operations stay in the database).
``miss-adt check [--mapping FILE] MESSAGE...``
    Read HL7 files and print, for each, the notice the mapping makes and
    for whom, or why there is none; sends nothing (for setting up a mapping).

Exit status: 0, 1 on a configuration or profile error, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from miss_client.errors import ProfileError
from miss_client.profile import load_profile
from miss_client.reconnect import CHAT_LOCK, ProfileLock

from protocol.notices import render_text

from .audit import AuditLog
from .hl7_events import CANCELS, HANDLED, Hl7Error, decode, parse
from .mapping import MappingError, load_mapping
from .sender import HubLink
from .server import ConfigError, load_config, start_mllp
from .service import AdtService, notice_key
from .store import AdtStore

__all__ = ["main"]

log = logging.getLogger("miss_adt")


async def serve(config_path: Path) -> int:
    config = load_config(config_path)
    mapping = load_mapping(config.mapping)
    passphrase = config.passphrase_file.read_text(encoding="utf-8").rstrip("\r\n")
    profile = load_profile(config.profile, passphrase)
    lock = ProfileLock(config.profile / CHAT_LOCK)
    if not lock.try_acquire():
        print(
            f"miss-adt: le profil {config.profile} est déjà utilisé par un autre processus", file=sys.stderr
        )
        return 1
    store = AdtStore(config.database)
    if pruned := store.prune():
        log.info("forgot %d answers and notices older than 400 days", pruned)
    audit = AuditLog(config.audit)
    link = HubLink(profile, request_timeout=config.request_timeout, reconnect_max=config.reconnect_max)
    service = AdtService(store, mapping, link, audit, spool_max=config.spool_max, retry_max=config.retry_max)
    server = await start_mllp(service, config.host, config.port)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"miss-adt listening on {host}:{port}", flush=True)
    if store.spooled:
        log.info("%d operations waiting in the spool", store.spooled)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [
        asyncio.create_task(link.run(), name="miss-adt-link"),
        asyncio.create_task(service.run_spool(), name="miss-adt-spool"),
    ]
    try:
        await stop.wait()
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.wait_closed()
        store.close()
        audit.close()
        lock.release()
    return 0


def check(mapping_path: Path | None, files: list[Path]) -> int:
    mapping = load_mapping(mapping_path)
    for path in files:
        print(f"== {path}")
        try:
            msg = parse(decode(path.read_bytes())[0], mapping.tz)
        except Hl7Error as exc:
            print(f"{exc.ack} {exc.reason} ({exc.location}) : {exc.text}")
            continue
        if msg.trigger not in HANDLED:
            print(f"ignoré : {msg.trigger} n'est pas traité")
            continue
        key, _ = notice_key(msg)
        if msg.trigger in CANCELS:
            print(f"annulation : retire l'avis du mouvement annulé ({', '.join(CANCELS[msg.trigger])})")
            continue
        decision = mapping.decide(msg)
        if decision.notice is None:
            print(f"pas d'avis : {decision.reason}")
            continue
        gp = msg.gp
        to = (
            f"RPPS {gp.rpps} ({gp.source}, {gp.family} {gp.given})"
            if gp
            else "AUCUN médecin traitant : AE no_gp"
        )
        print(f"à : {to}\nclé : {key}\névénement : {decision.event}\n{render_text(decision.notice)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="miss-adt", description="HL7 v2 ADT (MLLP) → avis MiSS")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="écouter le flux ADT (MLLP)")
    p_serve.add_argument("--config", type=Path, required=True)
    p_serve.add_argument("-v", "--verbose", action="store_true")
    p_check = sub.add_parser("check", help="montrer l'avis que donneraient des messages HL7")
    p_check.add_argument("--mapping", type=Path)
    p_check.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "check":
            return check(args.mapping, args.files)
        return asyncio.run(serve(args.config))
    except (ConfigError, MappingError, ProfileError, OSError) as exc:
        print(f"miss-adt: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
