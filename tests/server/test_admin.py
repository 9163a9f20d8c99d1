"""``miss-admin`` as an administrator uses it (SPEC.md §11): the authority
key file, organisations, invitations, verification, suspension, revocation
and the audit log, each with the output a person reads or a script parses;
and how the program itself behaves: which store it names, the stores it
refuses to create, its options, what it prints of what others typed.

Verification and renewal are in test_admin_verify.py, re-invitation and the
GDPR commands in test_admin_accounts.py."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from miss_server import admin
from protocol import attestation
from tests.support.admin_cli import Admin

BIN = Path(sys.executable).parent


def admin_process(cwd: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The installed ``miss-admin``, in ``cwd``, with no MISS_* setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISS_")}
    return subprocess.run(
        [str(BIN / "miss-admin"), *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
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


def test_authority_init_creates_a_missing_directory_private(tmp_path: Path) -> None:
    """The README's `--key-file /secure/miss-authority.key`
    with no /secure gave a traceback."""
    key_file = tmp_path / "secure" / "miss-authority.key"
    out = admin_process(tmp_path, "authority", "init", "--key-file", str(key_file))
    assert out.returncode == 0, out.stderr
    assert f"wrote {key_file} (mode 600)" in out.stdout
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    # A directory that cannot be made: one line that says what to do, no traceback.
    (tmp_path / "a-file").write_text("")
    out = admin_process(tmp_path, "authority", "init", "--key-file", str(tmp_path / "a-file" / "k" / "key"))
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith(f"miss-admin: cannot create the directory {tmp_path / 'a-file' / 'k'}")
    assert "--key-file" in out.stderr


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


def test_verify_attests_the_enrolled_devices_with_the_key_file(run: Admin) -> None:
    invited = run.invite()
    early = run.with_key("verify", "10000000001", status=1)
    assert "no device yet" in early["error"]
    device = run.enroll_device(invited["code"])
    assert run("invitations")["invitations"] == []  # the code is spent
    done = run.with_key("verify", "10000000001", "--days", "30", stdin="y\n")
    assert done["devices"] == [device]
    listed = run("devices", "10000000001")["devices"]
    assert [(d["device"], d["attested"]) for d in listed] == [(device, True)]
    user = run.on_store(lambda s: s.get_user(invited["user"]))
    assert user is not None and user.attestation is not None
    att = attestation.peek(user.attestation)
    assert att.user == invited["user"] and [d.device for d in att.devices] == [device]
    assert 29.9 < (att.not_after - att.not_before) / 86_400_000 < 30.1


def test_verify_refuses_a_key_file_that_is_not_the_hubs_authority(
    run: Admin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other.key"
    other_public = run("authority", "init", "--key-file", str(other))["public_key"]
    monkeypatch.setenv("MISS_AUTHORITY_KEY", other_public)
    invited = run.invite()
    run.enroll_device(invited["code"])
    refused = run.with_key("verify", "10000000001", status=1, stdin="y\n")
    assert "not the authority the hub is configured with" in refused["error"]
    assert run.on_store(lambda s: s.get_user(invited["user"])).attestation is None  # type: ignore[union-attr]


def test_suspend_revoke_and_the_audit_log(run: Admin) -> None:
    invited = run.invite()
    device = run.enroll_device(invited["code"])
    run.with_key("verify", "10000000001", "--device", device)
    assert [u["standing"] for u in run("users")["users"]] == ["verified"]
    run("suspend", "10000000001", "--reason", "on leave")
    assert "[suspended]" in run.text("users")
    run("unsuspend", "10000000001")
    revoked = run("revoke", device, "--reason", "phone lost")  # no key file here: renew must run
    assert revoked["renew_needed"] is True and not revoked["reissued"]
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


# --- the program --------------------------------------


def test_miss_admin_names_its_store_and_never_creates_one_but_with_migrate(tmp_path: Path) -> None:
    """Run outside the hub's directory, miss-admin silently made an
    empty store, and the administrator saw "no clinicians yet"."""
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    db = elsewhere / "miss-data" / "miss.db"
    for command in (["users"], ["org", "add", "CHRU"]):
        out = admin_process(elsewhere, *command)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert "miss-admin: store sqlite:///miss-data/miss.db" in out.stderr
        assert (
            f"no store at {db}: run miss-admin from the hub's directory, pass --store/--config, "
            "or create one with miss-admin migrate"
        ) in out.stderr
        assert not db.parent.exists()

    made = admin_process(elsewhere, "migrate")
    assert made.returncode == 0 and db.exists(), made.stderr
    assert f"miss-admin: store sqlite:///miss-data/miss.db ({db})" in made.stderr
    listed = admin_process(elsewhere, "users")
    assert listed.returncode == 0 and listed.stdout == "no clinicians yet\n"
    assert listed.stderr == f"miss-admin: store sqlite:///miss-data/miss.db ({db})\n"

    # A production store's line never shows its password.
    secret = admin_process(elsewhere, "--store", "postgresql://miss:s3cret@127.0.0.1:9/miss", "users")
    assert secret.returncode == 1 and "Traceback" not in secret.stderr, secret.stderr
    assert "miss-admin: store postgresql://miss:***@127.0.0.1:9/miss" in secret.stderr
    assert "s3cret" not in secret.stderr


def test_options_after_the_command_and_version(run: Admin, capsys: pytest.CaptureFixture[str]) -> None:
    """`miss-admin audit --json` was refused; there was no --version."""
    run("org", "add", "CHRU")
    code, out, err = run.raw("audit", "--json")
    assert code == 0, err
    assert [e["action"] for e in json.loads(out)["events"]] == ["org.added"]
    code, out, err = run.raw("orgs", "--json")
    assert code == 0 and json.loads(out)["organisations"][0]["organisation"] == "CHRU", err
    code, out, err = run.raw("orgs")
    assert code == 0 and out == "CHRU\n"

    with pytest.raises(SystemExit) as exited:
        admin.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"miss-admin {version('miss')}\n"


HOSTILE = "phone\r\x1b[2K\x1b[32mattested\x1b[0m \u202eenilno\u202c\x9b2J"


def test_labels_and_names_cannot_act_on_the_terminal(run: Admin) -> None:
    """A device label with CR and ANSI codes could print "attested"
    over "NOT attested" in `miss-admin devices`."""
    run("org", "add", "CHRU\x1b[8m")
    invited = run(
        "invite",
        "--name",
        "Dr \x1b[31mA\rDr B",
        "--rpps",
        "10000000001",
        "--profession",
        "médecin\x07",
        "--organisation",
        "CHRU\x1b[8m",
    )
    device = run.enroll_device(invited["code"], label=HOSTILE)
    texts = {
        "devices": run.text("devices", "10000000001"),
        "users": run.text("users"),
        "invitations": run.text("invitations"),
        "orgs": run.text("orgs"),
    }
    for command, text in texts.items():
        controls = [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0]
        assert not controls and "\u202e" not in text, (command, text)
    listing = texts["devices"]
    assert listing.startswith(f'{device}  "phone␍␛[2K␛[32mattested␛[0m �enilno��2J"  enrolled ')
    assert listing.rstrip().endswith("…") and "NOT attested" in listing
    assert "Dr ␛[31mA␍Dr B — médecin␇, CHRU␛[8m  [unverified]" in texts["users"]
    # Machines get the data as it is.
    assert run("devices", "10000000001")["devices"][0]["label"] == HOSTILE
