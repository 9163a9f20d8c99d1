"""``miss-admin`` run in-process, as an administrator types it: the real
``main()``, its answers read from a stdin the test writes, its output read
back as JSON (``--json``) or as the text a person reads.

Tests with a running hub (the ``hub`` fixture) call it from a thread, since
``main()`` runs its own event loop: ``await asyncio.to_thread(run, ...)``.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from miss_server import admin
from miss_server.app import build_store
from miss_server.codes import code_hash, new_code
from miss_server.config import load_settings
from miss_server.store.base import Store
from protocol import crypto
from tests.support.authority import write_key_file
from tests.support.clock import now_ms
from tests.support.store_samples import MAX_DEVICES

T = TypeVar("T")


class Admin:
    """``miss-admin --store URL ...`` against one store; ``key_file`` holds
    the tests' authority key (authority.py)."""

    def __init__(
        self,
        store_url: str,
        key_file: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        self.store_url = store_url
        self.key_file = key_file
        self.capsys = capsys
        self.monkeypatch = monkeypatch
        if not key_file.exists():
            write_key_file(key_file)

    def raw(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        """(exit status, stdout, stderr) of ``miss-admin --store URL ARGS``."""
        self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        self.capsys.readouterr()  # what earlier steps printed is not this command's
        code = admin.main(["--store", self.store_url, *args])
        out = self.capsys.readouterr()
        return code, out.out, out.err

    def __call__(self, *args: str, status: int = 0, stdin: str = "") -> dict[str, Any]:
        """The JSON result (``--json``), or ``{"error": stderr}`` when ``status`` is not 0."""
        code, out, err = self.raw("--json", *args, stdin=stdin)
        assert code == status, err
        if status != 0:
            return {"error": err, "out": out}
        result: dict[str, Any] = json.loads(out)
        result["stderr"] = err
        return result

    def text(self, *args: str, stdin: str = "") -> str:
        """What a person reads on stdout."""
        code, out, err = self.raw(*args, stdin=stdin)
        assert code == 0, err
        return out

    def with_key(self, *args: str, status: int = 0, stdin: str = "") -> dict[str, Any]:
        """A command that needs the authority key file (verify, renew, revoke)."""
        return self(*args, "--key-file", str(self.key_file), status=status, stdin=stdin)

    def on_store(self, use: Callable[[Store], Awaitable[T]]) -> T:
        """Run ``use`` on the store, outside miss-admin (from a thread if a
        loop runs here)."""

        async def go() -> T:
            store = build_store(load_settings(store=self.store_url))
            await store.open()
            try:
                return await use(store)
            finally:
                await store.close()

        return asyncio.run(go())

    def enroll_device(self, code: str, label: str = "phone") -> str:
        """What a device does on enroll, straight on the store (no hub, so no
        enrollment address in the audit log); its device id."""
        keys = crypto.DeviceKeys.generate()
        now = now_ms()
        device = self.on_store(
            lambda s: s.enroll_device(code_hash(code), keys.sign_pk, keys.box_pk, label, now, MAX_DEVICES)
        )
        time.sleep(0.002)  # devices list oldest first: the next one is younger
        return device.device_id

    def new_code(self, user_id: str) -> str:
        """Another enrollment code for ``user_id``, straight on the store."""
        code = new_code()
        expires = now_ms() + 3_600_000
        self.on_store(lambda s: s.add_enrollment_code(user_id, code_hash(code), expires))
        return code

    def invite(
        self, name: str = "Dr A", rpps: str = "10000000001", organisation: str = "CHRU"
    ) -> dict[str, Any]:
        """``miss-admin invite`` (adding the organisation first if needed)."""
        return invite_through(self, name, rpps, organisation)


def invite_through(
    admin_json: Callable[..., dict[str, Any]], name: str, rpps: str, organisation: str
) -> dict[str, Any]:
    """``miss-admin invite`` of a physician through ``admin_json`` (which runs
    ``miss-admin --json ARGS`` and returns its result), adding the
    organisation first if it does not exist yet; the invitation's JSON."""
    if organisation not in {o["organisation"] for o in admin_json("orgs")["organisations"]}:
        admin_json("org", "add", organisation)
    return admin_json(
        "invite",
        "--name",
        name,
        "--rpps",
        rpps,
        "--profession",
        "médecin",
        "--organisation",
        organisation,
    )


def on_new_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Admin:
    """``miss-admin`` on a new SQLite store, created with ``migrate``, with
    no authority configured in the environment (a test sets it if needed)."""
    monkeypatch.delenv("MISS_AUTHORITY_KEY", raising=False)
    monkeypatch.delenv("MISS_AUTHORITY_KEY_FILE", raising=False)
    admin_cli = Admin(f"sqlite:///{tmp_path}/miss.db", tmp_path / "authority.key", capsys, monkeypatch)
    admin_cli("migrate")
    return admin_cli
