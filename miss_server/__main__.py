"""``miss-server``: run one hub node until SIGINT or SIGTERM.

With no configuration it serves the embedded defaults on 127.0.0.1:8765.
SIGTERM or SIGINT drains the node (``HubServer.shutdown``: readiness 503,
clients told to go elsewhere with close 1001, requests in hand answered,
audit trail flushed) within ``shutdown_grace_seconds``; a second signal
meanwhile changes nothing (the grace period bounds the wait anyway).
Exit status: 0 after a shutdown, even one that had to cut connections at
the end of the grace period, 2 for a configuration error, 1 when the store
or port cannot be used.

With ``--workers N`` (``workers``, ``MISS_WORKERS``) above 1 this process
supervises N worker processes on the same port instead (supervisor.py);
each worker runs this same entry point with the hidden ``--worker`` flags
(worker.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from importlib.metadata import version

from . import gcpolicy
from .admission import raise_open_file_limit
from .app import HubServer
from .broker.base import BrokerUnavailable
from .config import ConfigError, load_settings
from .logs import setup_logging
from .store.base import SchemaMismatch, StoreUnavailable
from .supervisor import run_supervisor
from .worker import OpsListener, add_worker_metrics, die_with_parent, tag_logs

log = logging.getLogger("miss.server")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="miss-server", description="Run a MiSS hub node.")
    p.add_argument("--version", action="version", version=f"%(prog)s {version('miss')}")
    p.add_argument("--config", metavar="FILE", help="TOML configuration file (default: $MISS_CONFIG)")
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default 8765)")
    p.add_argument("--store", help="store URL (default sqlite:///miss-data/miss.db)")
    p.add_argument("--broker", help="broker URL (default memory://)")
    p.add_argument(
        "--workers",
        type=int,
        help="hub processes on this port, one per core (default 1; more need PostgreSQL and Redis)",
    )
    # Set by the supervisor on the workers it starts (supervisor.py, worker.py).
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    p.add_argument("--restarts", type=int, default=0, help=argparse.SUPPRESS)
    return p


#: Beyond the grace period, the longest the drain may take before the
#: process gives up on it (closing an unreachable store, say) and exits.
EXIT_SLACK = 5.0


async def _run(server: HubServer, worker: int | None = None) -> None:
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
    ops = None
    if server.settings.metrics_port_base is not None:
        ops = OpsListener(server, server.settings.metrics_port_base + (worker or 0))
        try:
            await ops.start()
        except OSError:
            await server.stop()
            raise
    gcpolicy.tune()  # a long-lived server's collector settings (gcpolicy.py says why)
    if worker is None:
        print(f"MiSS hub serving {server.url} (store {server.settings.store_display})", flush=True)
    else:  # the line the supervisor waits for (supervisor.READY_PREFIX)
        print(f"MiSS worker {worker} serving {server.url} (pid {os.getpid()})", flush=True)
    await stop.wait()
    try:
        await asyncio.wait_for(server.shutdown(), server.settings.shutdown_grace_seconds + EXIT_SLACK)
    except TimeoutError:
        log.error("shutdown overran the grace period; exiting anyway")
    if ops is not None:  # after the drain, so that its /readyz said "draining" meanwhile
        await ops.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(
            args.config,
            host=args.host,
            port=args.port,
            store=args.store,
            broker=args.broker,
            workers=args.workers,
        )
    except ConfigError as exc:
        print(f"miss-server: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    if args.worker is not None:
        if args.parent is not None and not die_with_parent(args.parent):
            return 1  # its supervisor is gone already
        tag_logs(args.worker)
    elif settings.workers > 1:
        return run_supervisor(settings, list(sys.argv[1:] if argv is None else argv))
    # Each connection is a file descriptor; the common default of 1,024 is
    # spent by a morning's reconnections (admission.py keeps a quarter spare).
    log.info("open-file limit", extra={"soft": raise_open_file_limit()})
    try:
        server = HubServer(settings)
        if args.worker is not None:
            add_worker_metrics(server, args.restarts)
        asyncio.run(_run(server, args.worker))
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
