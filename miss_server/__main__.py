"""``miss-server``: run one hub node until SIGINT or SIGTERM.

With no configuration it serves the embedded defaults on 127.0.0.1:8765.
SIGTERM or SIGINT drains the node (``HubServer.shutdown``: readiness 503,
clients told to go elsewhere with close 1001, requests in hand answered,
audit trail flushed) within ``shutdown_grace_seconds``; a second signal
meanwhile changes nothing (the grace period bounds the wait anyway).
Exit status: 0 after a shutdown, even one that had to cut connections at
the end of the grace period, 2 for a configuration error, 1 when the store
or port cannot be used.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from importlib.metadata import version

from .admission import raise_open_file_limit
from .app import HubServer
from .broker.base import BrokerUnavailable
from .config import ConfigError, load_settings
from .logs import setup_logging
from .store.base import SchemaMismatch, StoreUnavailable

log = logging.getLogger("miss.server")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="miss-server", description="Run a MiSS hub node.")
    p.add_argument("--version", action="version", version=f"%(prog)s {version('miss')}")
    p.add_argument("--config", metavar="FILE", help="TOML configuration file (default: $MISS_CONFIG)")
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default 8765)")
    p.add_argument("--store", help="store URL (default sqlite:///miss-data/miss.db)")
    p.add_argument("--broker", help="broker URL (default memory://)")
    return p


#: Beyond the grace period, the longest the drain may take before the
#: process gives up on it (closing an unreachable store, say) and exits.
EXIT_SLACK = 5.0


async def _run(server: HubServer) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.info("already draining", extra={"signal": sig.name})
            return
        log.info("draining on signal", extra={"signal": sig.name})
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    await server.start()
    print(f"MiSS hub serving {server.url} (store {server.settings.store_display})", flush=True)
    await stop.wait()
    try:
        await asyncio.wait_for(server.shutdown(), server.settings.shutdown_grace_seconds + EXIT_SLACK)
    except TimeoutError:
        log.error("shutdown overran the grace period; exiting anyway")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(
            args.config, host=args.host, port=args.port, store=args.store, broker=args.broker
        )
    except ConfigError as exc:
        print(f"miss-server: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    # Each connection is a file descriptor; the common default of 1,024 is
    # spent by a morning's reconnections (admission.py keeps a quarter spare).
    log.info("open-file limit", extra={"soft": raise_open_file_limit()})
    try:
        asyncio.run(_run(HubServer(settings)))
    except OSError as exc:  # the port is taken, the store's directory cannot be written...
        what = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"miss-server: cannot start: {what}{where}; store {settings.store_display}", file=sys.stderr)
        return 1
    except (SchemaMismatch, StoreUnavailable, BrokerUnavailable, NotImplementedError, ValueError) as exc:
        print(f"miss-server: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
