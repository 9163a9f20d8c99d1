"""``miss-admin`` as an administrator uses it (SPEC.md §11): the authority
key file, organisations, invitations, verification, suspension, revocation
and the audit log, each with the output a person reads or a script parses."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from authority import write_key_file

from miss_server import admin
from miss_server.app import build_store
from miss_server.codes import code_hash
from miss_server.config import load_settings
from miss_server.store.base import Store
from protocol import attestation, crypto

T = TypeVar("T")


class Admin:
    """Runs ``miss-admin`` in-process against one SQLite store."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.store_url = f"sqlite:///{tmp_path}/miss.db"
        self.key_file = tmp_path / "authority.key"
        self.capsys = capsys

    def __call__(self, *args: str, status: int = 0) -> dict[str, Any]:
        code = admin.main(["--store", self.store_url, "--json", *args])
        out = self.capsys.readouterr()
        assert code == status, out.err
        return json.loads(out.out) if status == 0 else {"error": out.err}

    def text(self, *args: str) -> str:
        assert admin.main(["--store", self.store_url, *args]) == 0
        return self.capsys.readouterr().out


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Admin:
    return Admin(tmp_path, capsys)


def on_store(run: Admin, use: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``use`` on the store, outside miss-admin (which runs its own loop)."""

    async def go() -> T:
        store = build_store(load_settings(store=run.store_url))
        await store.open()
        try:
            return await use(store)
        finally:
            await store.close()

    return asyncio.run(go())


def enroll_device(run: Admin, code: str) -> str:
    """What a device does on enroll, straight on the store; its device id."""
    keys = crypto.DeviceKeys.generate()
    device = on_store(run, lambda s: s.enroll_device(code_hash(code), keys.sign_pk, keys.box_pk, "phone", 1))
    return device.device_id


def invite_dr_a(run: Admin) -> dict[str, Any]:
    """``miss-admin invite`` of Dr A (RPPS 10000000001) to organisation CHRU."""
    return run(
        "invite",
        "--name",
        "Dr A",
        "--rpps",
        "10000000001",
        "--profession",
        "médecin",
        "--organisation",
        "CHRU",
    )


def test_authority_init_writes_a_private_key_file_once(run: Admin, tmp_path: Path) -> None:
    key_file = tmp_path / "miss-authority.key"
    made = run("authority", "init", "--key-file", str(key_file))
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    public = attestation.decode_authority_key(made["public_key"])
    assert made["fingerprint"] == attestation.authority_fingerprint(public)
    assert run("authority", "show", "--key-file", str(key_file))["public_key"] == made["public_key"]
    refused = run("authority", "init", "--key-file", str(key_file), status=1)
    assert "refusing to replace" in refused["error"]
    assert run("authority", "show", "--key-file", str(key_file))["public_key"] == made["public_key"]


def test_invite_needs_a_known_organisation(run: Admin) -> None:
    args = ["invite", "--name", "Dr A", "--rpps", "10000000001", "--profession", "médecin"]
    missing = run(*args, "--organisation", "CHRU de Lille", status=1)
    assert "miss-admin org add" in missing["error"]
    run("org", "add", "CHRU de Lille")
    duplicate = run("org", "add", "CHRU de Lille", status=1)["error"]
    assert "CHRU de Lille" in duplicate, duplicate
    assert [o["organisation"] for o in run("orgs")["organisations"]] == ["CHRU de Lille"]
    invited = run(*args, "--organisation", "CHRU de Lille")
    pending = run("invitations")["invitations"]
    assert [(p["user"], p["name"]) for p in pending] == [(invited["user"], "Dr A")]


def test_verify_attests_the_enrolled_devices_with_the_key_file(run: Admin, tmp_path: Path) -> None:
    write_key_file(run.key_file)
    run("org", "add", "CHRU")
    invited = invite_dr_a(run)
    early = run("verify", "10000000001", "--key-file", str(run.key_file), status=1)
    assert "no device yet" in early["error"]
    device = enroll_device(run, invited["code"])
    assert run("invitations")["invitations"] == []  # the code is spent
    done = run("verify", "10000000001", "--key-file", str(run.key_file), "--days", "30")
    assert done["devices"] == [device]
    listed = run("devices", "10000000001")["devices"]
    assert [(d["device"], d["attested"]) for d in listed] == [(device, True)]
    user = on_store(run, lambda s: s.get_user(invited["user"]))
    assert user is not None and user.attestation is not None
    att = attestation.peek(user.attestation)
    assert att.user == invited["user"] and [d.device for d in att.devices] == [device]
    assert 29.9 < (att.not_after - att.not_before) / 86_400_000 < 30.1


def test_verify_refuses_a_key_file_that_is_not_the_hubs_authority(
    run: Admin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_key_file(run.key_file)
    other = tmp_path / "other.key"
    other_public = run("authority", "init", "--key-file", str(other))["public_key"]
    monkeypatch.setenv("MISS_AUTHORITY_KEY", other_public)
    run("org", "add", "CHRU")
    invite_dr_a(run)
    refused = run("verify", "10000000001", "--key-file", str(run.key_file), status=1)
    assert "not the authority the hub is configured with" in refused["error"]


def test_suspend_revoke_and_the_audit_log(run: Admin) -> None:
    write_key_file(run.key_file)
    run("org", "add", "CHRU")
    invited = invite_dr_a(run)
    device = enroll_device(run, invited["code"])
    run("verify", "10000000001", "--key-file", str(run.key_file))
    assert [u["standing"] for u in run("users")["users"]] == ["verified"]
    run("suspend", "10000000001", "--reason", "on leave")
    assert "[suspended]" in run.text("users")
    run("unsuspend", "10000000001")
    run("revoke", device, "--reason", "phone lost")
    assert "no active device" in run("revoke", device, status=1)["error"]

    everything = run("audit")["events"]
    actor = everything[0]["actor"]
    assert actor.startswith("admin")
    assert [(e["action"], e["detail"]) for e in everything] == [
        ("org.added", "CHRU"),
        ("account.invited", "RPPS 10000000001"),
        ("account.verified", everything[2]["detail"]),
        ("account.suspended", "on leave"),
        ("account.unsuspended", ""),
        ("device.revoked", "phone lost"),
    ]
    assert invited["code"] not in json.dumps(everything)
    about = run("audit", "--user", "10000000001", "--action", "device.revoked")["events"]
    assert [(e["user"], e["device"]) for e in about] == [(invited["user"], device)]
    assert len(run("audit", "--limit", "2")["events"]) == 2
    assert run("audit", "--since", "2099-01-01")["events"] == []
    assert len(run("audit", "--since", "1h")["events"]) == len(everything)
    text = run.text("audit", "--action", "account.suspended")
    assert "account.suspended" in text and "on leave" in text
    assert "--since" in run("audit", "--since", "yesterday", status=1)["error"]
