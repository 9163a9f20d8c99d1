"""Run ``miss-server`` and ``miss-admin`` as real subprocesses, for tests that
kill, restart or read the output of a hub."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from miss_server.admin_common import record
from miss_server.app import build_store
from miss_server.codes import code_hash, new_code
from miss_server.config import load_settings
from miss_server.store.base import Store
from tests.support.admin_cli import invite_through
from tests.support.authority import AUTHORITY_TEXT, UNLIMITED, verify, write_key_file
from tests.support.clock import now_ms
from tests.support.wire import RawDevice

BIN = Path(sys.executable).parent
URL_LINE = re.compile(r"MiSS hub serving (ws://\S+)")


class HubProcess:
    """A ``miss-server`` child with its own data directory and log file.

    ``env`` is passed on top of the current environment, so a test can point
    the hub at PostgreSQL or Redis with ``MISS_STORE``/``MISS_BROKER``.
    """

    def __init__(self, workdir: Path, env: dict[str, str] | None = None, port: int = 0) -> None:
        self.workdir = workdir
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("MISS_STORE", f"sqlite:///{workdir / 'data' / 'miss.db'}")
        #: Run in the child before miss-server (e.g. to lower its open-file limit).
        self.preexec: Callable[[], None] | None = None
        # As in production: at debug a hub logs a line per request and per
        # row sent, which slows the floods the attack tests measure against.
        # A test that reads those lines (test_request_ids.py) asks for debug.
        self.env.setdefault("MISS_LOG_LEVEL", "info")
        # SIGTERM drains; tests stop their hubs with clients still connected,
        # and need not wait the production spread of closes (5 s) each time.
        self.env.setdefault("MISS_SHUTDOWN_SPREAD_SECONDS", "0.2")
        # The tests' authority (authority.py): the hub gets its public key,
        # miss-admin its key file; budgets out of reach unless a test sets them.
        self.env.setdefault("MISS_AUTHORITY_KEY", AUTHORITY_TEXT)
        self.env.setdefault("MISS_AUTHORITY_KEY_FILE", str(workdir / "authority.key"))
        for key, value in UNLIMITED.items():
            self.env.setdefault(f"MISS_{key.upper()}", value)
        self.port = port
        self.log_path = workdir / "hub.log"
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 20.0) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        key_file = Path(self.env["MISS_AUTHORITY_KEY_FILE"])
        if not key_file.exists():
            write_key_file(key_file)
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [str(BIN / "miss-server"), "--port", str(self.port)],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            preexec_fn=self.preexec,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = URL_LINE.search(line)
            if m:
                self.url = m.group(1)
                self.port = int(self.url.rsplit(":", 1)[1].strip("/"))  # restart on the same port
                return self.url
        raise RuntimeError(f"hub did not start; log:\n{self.log_path.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    async def stop_async(self) -> None:
        """Stop from a test's event loop, letting its clients answer the close."""
        await asyncio.to_thread(self.stop)

    def admin(self, *args: str, stdin: str = "") -> dict[str, Any]:
        """Run ``miss-admin --json ARGS`` against this hub's store, with
        ``stdin`` as the answers to its questions."""
        out = subprocess.run(
            [str(BIN / "miss-admin"), "--json", *args],
            cwd=self.workdir,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"miss-admin {' '.join(args)} failed: {out.stderr}")
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def invite(self, name: str, rpps: str, organisation: str = "CHRU") -> tuple[str, str]:
        """``miss-admin invite`` (adding the organisation first if needed): (user id, code)."""
        invited = invite_through(self.admin, name, rpps, organisation)
        return str(invited["user"]), str(invited["code"])

    def verify(self, user: str) -> dict[str, Any]:
        """``miss-admin verify USER`` with the tests' authority key file,
        answering yes for every device it asks about: every active device
        of the user ends up attested, as before verify asked."""
        return self.admin("verify", user, stdin="y\n" * 64)


@asynccontextmanager
async def opened_store(hub: HubProcess) -> AsyncIterator[Store]:
    """The hub's store, opened beside the running hub (as ``miss-admin`` does)."""
    store = build_store(load_settings(store=hub.env["MISS_STORE"]))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def invite_on_store(
    hub: HubProcess, name: str, rpps: str, organisation: str = "CHRU"
) -> tuple[str, str]:
    """What ``miss-admin invite`` records (adding the organisation first if
    needed), straight on the hub's store: (user id, code). The admin tests
    run the real ``miss-admin``; a test that only needs clinicians saves the
    two processes (~0.7 s each) that :meth:`HubProcess.invite` costs."""
    async with opened_store(hub) as store:
        if organisation not in {o.name for o in await store.list_organisations()}:
            await store.add_organisation(organisation, now_ms())
        user = await store.create_user(name, rpps, "médecin", organisation, now_ms())
        code = new_code()
        await store.add_enrollment_code(user.user_id, code_hash(code), now_ms() + 3_600_000)
        return user.user_id, code


async def verify_on_store(hub: HubProcess, user: str) -> None:
    """What ``miss-admin verify USER`` does (every active device attested),
    straight on the hub's store with the tests' authority (authority.py),
    with its audit event: the running hub polls the audit log to forget its
    cached account (security_feed), or it could go on sealing to the
    devices attested before."""
    async with opened_store(hub) as store:
        await verify(store, user)
        await record(store, "account.verified", user_id=user, detail="tests.support.hubproc.verify_on_store")


async def enrolled_clinician(hub: HubProcess, name: str, rpps: str) -> RawDevice:
    """A clinician invited, their first device enrolled and connected, then
    verified, as an administrator does after any enrollment (what
    ``miss-admin invite`` and ``verify`` record, written on the hub's store:
    :func:`invite_on_store`, :func:`verify_on_store`)."""
    _, code = await invite_on_store(hub, name, rpps)
    dev = RawDevice(hub.url)
    await dev.enroll(code)
    await verify_on_store(hub, dev.user_id)
    return dev


async def enrolled_pair(hub: HubProcess) -> tuple[RawDevice, RawDevice]:
    """Two clinicians enrolled on ``hub`` and verified, one device each, connected."""
    return (
        await enrolled_clinician(hub, "Dr Alice Martin", "10000000011"),
        await enrolled_clinician(hub, "Dr Bob Durand", "10000000012"),
    )
