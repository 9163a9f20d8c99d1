"""What a process needs to run as one of ``miss-server --workers N``'s workers.

The supervisor (supervisor.py) starts each worker as ``python -m
miss_server ... --worker I --parent PID --restarts K``; the worker is an
ordinary hub node (``HubServer``) that also:

* dies with its supervisor (:func:`die_with_parent`): were the supervisor
  killed outright, a worker left behind would keep the port and go on
  serving unsupervised; it gets SIGTERM instead, and drains;
* tags every log line with ``worker=I`` (:class:`WorkerTag`), since the N
  workers write to the same stderr;
* exposes ``miss_worker_restarts`` (how many times the supervisor restarted
  this worker's slot) beside its own metrics (:func:`add_worker_metrics`);
* with ``metrics_port_base``, serves ``/metrics``, ``/healthz`` and
  ``/readyz``, and nothing else, on port ``metrics_port_base + I``
  (:class:`OpsListener`). On the shared port those requests reach one
  worker the kernel picks; a scrape must reach each.

A single process (``workers = 1``) honours ``metrics_port_base`` too, as
worker 0, so that one scrape configuration fits either way.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import ssl
import sys
from collections.abc import Awaitable
from http import HTTPStatus

from prometheus_client import Gauge
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from .app import HubServer

__all__ = ["OpsListener", "WorkerTag", "add_worker_metrics", "die_with_parent"]

log = logging.getLogger("miss.worker")

#: prctl(2) option: the signal this process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> bool:
    """Ask the kernel to send this process SIGTERM when its parent dies
    (Linux; elsewhere nothing is asked). False if the parent
    ``parent_pid`` is already gone, in which case the caller exits."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            log.warning("cannot ask to die with the supervisor", extra={"errno": ctypes.get_errno()})
    # Checked after asking: a parent that died in between is seen here.
    return os.getppid() == parent_pid


class WorkerTag(logging.Filter):
    """Adds ``worker=I`` to every record."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def tag_logs(index: int) -> None:
    """Tag every line the root logger's handlers write with ``worker=I``."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(WorkerTag(index))


def add_worker_metrics(server: HubServer, restarts: int) -> None:
    """``miss_worker_restarts``: times this worker's slot was restarted after
    its process died (0 for the first process); an increase means a crash."""
    gauge = Gauge(
        "miss_worker_restarts",
        "Times the supervisor restarted this worker after it died unexpectedly",
        registry=server.metrics.registry,
    )
    gauge.set(restarts)


class OpsListener:
    """``/metrics``, ``/healthz`` and ``/readyz`` of one hub on a port of its
    own (answered as on the hub's port, token or loopback rule included);
    every other request 404, WebSocket upgrades included."""

    def __init__(self, server: HubServer, port: int) -> None:
        self.hub = server
        self.port = port
        self._server: Server | None = None

    async def start(self) -> None:
        settings = self.hub.settings
        tls = None
        if settings.tls_cert and settings.tls_key:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(settings.tls_cert, settings.tls_key)
        self._server = await serve(
            self._never,
            settings.host,
            self.port,
            process_request=self._answer,
            ssl=tls,
            server_header="MiSS",
            open_timeout=settings.handshake_timeout_seconds,
        )
        log.info("metrics port listening", extra={"port": self.port})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _answer(self, ws: ServerConnection, request: Request) -> Response | Awaitable[Response] | None:
        path = request.path.split("?", 1)[0]
        answer = self.hub.ops_response(ws, request, path)
        return answer if answer is not None else ws.respond(HTTPStatus.NOT_FOUND, "not found\n")

    async def _never(self, ws: ServerConnection) -> None:  # every request is answered above
        await ws.close()
