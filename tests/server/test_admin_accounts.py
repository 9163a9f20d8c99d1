"""``miss-admin reinvite``, ``export`` and ``delete``: a
way back in for a clinician locked out, and the GDPR's access and erasure,
each audited."""

from __future__ import annotations

import asyncio
import json

import pytest

from miss_server.app import HubServer
from protocol import errors
from tests.support.admin_cli import Admin
from tests.support.authority import AUTHORITY_TEXT
from tests.support.wire import enrolled


def test_reinvite_gives_a_locked_out_clinician_a_new_code(
    run: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISS_AUTHORITY_KEY", AUTHORITY_TEXT)
    invited = run.invite()
    phone = run.enroll_device(invited["code"])
    # The phone is lost: inviting again was all there was, and it was refused.
    again = ["invite", "--name", "Dr A", "--rpps", "10000000001", "--profession", "médecin"]
    refused = run(*again, "--organisation", "CHRU", status=1)["error"]
    assert "already registered" in refused and "miss-admin reinvite 10000000001" in refused

    code = run("reinvite", "10000000001")
    assert code["user"] == invited["user"] and code["authority"] == AUTHORITY_TEXT
    assert [i["user"] for i in run("invitations")["invitations"]] == [invited["user"]]
    laptop = run.enroll_device(code["code"], label="laptop")
    devices = [d["device"] for d in run("devices", "10000000001")["devices"]]
    assert devices == [phone, laptop]  # the old device stays until revoked

    text = run.text("reinvite", invited["user"])
    assert text.startswith(
        f"new enrollment code for Dr A (RPPS 10000000001), {invited['user']}; their 2 active device(s) "
        "stay until revoked"
    )
    assert "\nenrollment code: " in text and "(single use, expires " in text
    assert f"\nauthority key:   {AUTHORITY_TEXT}\n" in text
    events = run("audit", "--action", "account.reinvited")["events"]
    assert [(e["user"], e["detail"]) for e in events] == [
        (invited["user"], "RPPS 10000000001, 1 active device(s) kept"),
        (invited["user"], "RPPS 10000000001, 2 active device(s) kept"),
    ]
    assert code["code"] not in json.dumps(run("audit")["events"])

    run("suspend", "10000000001")
    assert "unsuspend" in run("reinvite", "10000000001", status=1)["error"]
    assert "no clinician" in run("reinvite", "10000000099", status=1)["error"]


def test_export_gives_everything_the_store_holds_about_a_clinician(run: Admin) -> None:
    invited = run.invite()
    phone = run.enroll_device(invited["code"])
    laptop = run.enroll_device(run.new_code(invited["user"]), label="laptop")
    run.with_key("verify", "10000000001", "--device", phone, "--device", laptop)
    run("revoke", laptop, "--reason", "lost")
    other = run.invite(name="Dr Other", rpps="10000000002")
    run.enroll_device(other["code"])

    export = run("export", "10000000001")

    account = export["account"]
    assert {k: account[k] for k in ("user", "name", "rpps", "profession", "organisation", "standing")} == {
        "user": invited["user"],
        "name": "Dr A",
        "rpps": "10000000001",
        "profession": "médecin",
        "organisation": "CHRU",
        "standing": "verified",
    }
    assert account["suspended"] is False and account["status"] == "available" and account["created"]
    assert [(d["device"], d["label"], d["revoked"]) for d in export["devices"]] == [
        (phone, "phone", False),
        (laptop, "laptop", True),
    ]
    assert all(d["sign_key"] and d["box_key"] for d in export["devices"])
    assert export["attestation"]["devices"] == sorted([phone, laptop])  # as signed, before the revocation
    assert export["attestation"]["not_after"] == account["verified_until"]
    assert [e["action"] for e in export["audit"]] == [
        "account.invited",
        "account.verified",
        "device.revoked",
    ]
    assert export["invitations"] == []
    assert "Dr Other" not in json.dumps(export) and other["user"] not in json.dumps(export)

    text = run.text("export", "10000000001")
    assert text.startswith(f"Export of Dr A (RPPS 10000000001), {invited['user']}, at ")
    assert "Devices (2, revoked ones included):" in text and f'{laptop}  "laptop"' in text
    assert "Audit events about them (3):" in text and "device.revoked" in text


async def test_delete_asks_then_disconnects_and_erases_the_account(hub: HubServer, hub_admin: Admin) -> None:
    bob = await enrolled(hub, "Dr Bob", "10000000002")
    laptop = await bob.link()
    alice = await enrolled(hub, "Dr Alice", "10000000001")
    await hub.audit.flush()

    declined = await asyncio.to_thread(hub_admin, "delete", "10000000002", status=1, stdin="n\n")
    assert (
        "Delete Dr Bob (RPPS 10000000002)" in declined["error"] and "2 active device(s)" in declined["error"]
    )
    assert "not confirmed: Dr Bob (RPPS 10000000002) is not deleted" in declined["error"]
    unanswered = await asyncio.to_thread(hub_admin, "delete", "10000000002", status=1, stdin="")
    assert "--yes" in unanswered["error"]
    assert await hub.store.get_user(bob.user_id) is not None

    deleted = await asyncio.to_thread(hub_admin, "delete", "10000000002", stdin="y\n")

    assert deleted["deleted"] is True and deleted["revoked"] == [bob.device_id, laptop.device_id]
    # Both devices, connected, are disconnected as revoked.
    for device in (bob, laptop):
        _, close_code = await device.until_closed(5)
        assert close_code == errors.DeviceRevoked.close_code
    error, close_code = await bob.auth_refused()
    assert close_code is not None and error is not None
    users = await asyncio.to_thread(hub_admin, "users")
    assert [u["rpps"] for u in users["users"]] == ["10000000001"]
    gone = await asyncio.to_thread(hub_admin, "devices", bob.user_id, status=1)
    assert "no clinician" in gone["error"]
    assert await hub.store.user_devices(bob.user_id, include_revoked=True) == []

    # The audit log keeps what happened to the account, deletion included.
    events = (await asyncio.to_thread(hub_admin, "audit", "--user", bob.user_id))["events"]
    assert [(e["action"], e["device"], e["detail"]) for e in events][-3:] == [
        ("device.revoked", bob.device_id, "account deleted"),
        ("device.revoked", laptop.device_id, "account deleted"),
        ("account.deleted", None, "2 device(s) revoked"),
    ]
    assert [e["action"] for e in events].count("device.enrolled") == 2

    # --yes asks nothing (stdin is empty).
    assert (await asyncio.to_thread(hub_admin, "delete", alice.user_id, "--yes"))["deleted"] is True
    assert (await asyncio.to_thread(hub_admin, "users"))["users"] == []
