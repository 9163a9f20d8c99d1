"""The ``miss-chat`` command against the fake hub, and against the real hub
for verification, search, devices and revocation (main() run in a worker
thread, since it starts its own event loop)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import io
import os
import re
from collections.abc import Callable
from pathlib import Path

import nacl.signing
import pytest
from miss_client import Client, Message, Profile, load_profile
from miss_client.chat import main

from miss_server.app import HubServer
from miss_server.store.base import AuditEvent
from protocol.attestation import authority_fingerprint, encode_authority_key
from protocol.crypto import new_message_id
from protocol.frames import Send
from tests.support.authority import AUTHORITY_PK, AUTHORITY_TEXT
from tests.support.client_fixtures import PASSPHRASE
from tests.support.fakehub import FakeHub, wait_for
from tests.support.verified_hubs import verify_on
from tests.support.wire import invite

SAFETY = re.compile(r"^(\d{5} ){11}\d{5}$", re.M)
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


class Cli:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp_path = tmp_path
        self.capsys = capsys

    async def __call__(self, profile: str, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
        self.capsys.readouterr()
        if stdin is None:
            rc = await asyncio.to_thread(main, ["--profile", str(self.tmp_path / profile), *args])
        else:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr("sys.stdin", io.StringIO(stdin))
                rc = await asyncio.to_thread(main, ["--profile", str(self.tmp_path / profile), *args])
        out, err = self.capsys.readouterr()
        return rc, out, err


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("MISS_PASSPHRASE", PASSPHRASE)
    return Cli(tmp_path, capsys)


async def enroll(cli: Cli, hub: FakeHub, name: str, rpps: str) -> str:
    user = hub.add_user(f"Dr {name.title()}", rpps)
    rc, out, err = await cli(
        name,
        "enroll",
        "--server",
        hub.url,
        "--authority",
        AUTHORITY_TEXT,
        hub.invite(user),
        "--kdf",
        "interactive",
    )
    assert rc == 0, err
    assert f"user {user}" in out
    return user


async def test_enroll_send_inbox_history_safety_link(cli: Cli, fakehub: FakeHub) -> None:
    alice = await enroll(cli, fakehub, "alice", "10000000001")
    await enroll(cli, fakehub, "bob", "10000000002")

    rc, out, _ = await cli("alice", "whoami")
    assert rc == 0 and alice in out and fakehub.url in out
    assert f"authority {authority_fingerprint(AUTHORITY_PK)}" in out

    rc, out, _ = await cli("alice", "send", "10000000002", "Bonjour Bob, INR à 4 ?")
    assert rc == 0 and re.fullmatch(rf"{UUID} accepted\n", out), out

    rc, out, _ = await cli("bob", "inbox", "--idle", "0.2")
    assert rc == 0
    assert re.fullmatch(
        r"\[\d{4}-\d\d-\d\d \d\d:\d\d\] Dr Alice \(10000000001\): Bonjour Bob, INR à 4 \?\n", out
    ), out
    rc, out, err = await cli("bob", "inbox", "--idle", "0.2")
    assert rc == 0 and out == "" and "nothing new" in err, "the inbox was acked"

    rc, out, _ = await cli("alice", "inbox", "--idle", "0.2")
    assert "✓ delivered" in out and "Dr Bob (10000000002)" in out

    rc, out, _ = await cli("alice", "history", "10000000002")
    assert rc == 0 and "me → Dr Bob (10000000002): Bonjour Bob, INR à 4 ? ✓" in out

    _, from_alice, _ = await cli("alice", "safety", "10000000002")
    _, from_bob, _ = await cli("bob", "safety", alice)
    assert SAFETY.search(from_alice) and SAFETY.findall(from_alice) == SAFETY.findall(from_bob)

    rc, out, _ = await cli("alice", "link")
    assert rc == 0 and out.strip() in fakehub.codes


async def test_chat_reads_piped_stdin(cli: Cli, fakehub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    await enroll(cli, fakehub, "alice", "10000000001")
    await enroll(cli, fakehub, "bob", "10000000002")
    await cli("alice", "send", "10000000002", "waiting for bob")
    monkeypatch.setattr("sys.stdin", io.StringIO("salut Alice\n\nune autre\n/quit\nnot sent\n"))
    rc, out, err = await cli("bob", "chat", "10000000001")
    assert rc == 0, err
    assert "Dr Alice (10000000001): waiting for bob" in out
    assert "me → Dr Alice (10000000001): salut Alice" in out and "une autre" in out
    assert "not sent" not in out
    rc, out, _ = await cli("alice", "inbox", "--idle", "0.2")
    lines = out.splitlines()
    assert [line.split(": ", 1)[1] for line in lines if "Dr Bob" in line and "✓" not in line] == [
        "salut Alice",
        "une autre",
    ]


async def test_chat_at_end_of_input_lingers_for_receipts(
    cli: Cli, fakehub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    await enroll(cli, fakehub, "alice", "10000000001")
    await enroll(cli, fakehub, "bob", "10000000002")
    monkeypatch.setattr("sys.stdin", io.StringIO("are you there?\n"))
    chat = asyncio.create_task(cli("alice", "chat", "10000000002", "--linger", "2"))
    await wait_for(lambda: any(isinstance(fr, Send) for fr in fakehub.received), within=10)
    # bob reads (through the SDK, not to disturb the captured output): alice gets a receipt
    async with Client.connect(load_profile(cli.tmp_path / "bob", PASSPHRASE)) as bob:
        assert [m.body for m in await bob.drain(idle=0.1) if isinstance(m, Message)] == ["are you there?"]
    rc, out, _ = await chat
    assert rc == 0 and "✓ delivered" in out


async def test_send_first_finishes_what_an_earlier_run_left_pending(cli: Cli, fakehub: FakeHub) -> None:
    await enroll(cli, fakehub, "alice", "10000000001")
    bob = await enroll(cli, fakehub, "bob", "10000000002")
    # an earlier run recorded a message, then lost the connection before "accepted"
    with load_profile(cli.tmp_path / "alice", PASSPHRASE).open_state() as state:
        state.record_outgoing(new_message_id(), bob, 1, "text", "left pending")
    rc, _, err = await cli("alice", "send", "10000000002", "new one")
    assert rc == 0 and "resent 1 message" in err
    rc, out, _ = await cli("bob", "inbox", "--idle", "0.2")
    assert [line.split(": ", 1)[1] for line in out.splitlines()] == ["left pending", "new one"]


async def test_peer_text_cannot_drive_the_terminal(cli: Cli, fakehub: FakeHub) -> None:
    await enroll(cli, fakehub, "alice", "10000000001")
    await enroll(cli, fakehub, "bob", "10000000002")
    await cli("alice", "send", "10000000002", "\x1b[2J\u202eevil")
    _, out, _ = await cli("bob", "inbox", "--idle", "0.2")
    assert "\x1b" not in out and "\u202e" not in out and "␛[2J\ufffdevil" in out


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("alice", ["--passphrase-env-wrong"], "wrong passphrase"),
        ("alice", ["send", "19999999999", "x"], "unknown recipient"),
        ("alice", ["send", "bob", "x"], "neither an RPPS number nor a user id"),
        ("alice", ["history", "10000000099"], "no conversation with"),
        (None, ["whoami"], "no profile in"),
        (
            None,
            ["enroll", "--server", "ws://127.0.0.1:1/", "--authority", AUTHORITY_TEXT, "AAAA-BBBB-CCCC-DDDD"],
            "connection refused",
        ),
        (
            None,
            ["enroll", "--server", "HUB", "--authority", AUTHORITY_TEXT, "AAAA-BBBB-CCCC-DDDD"],
            "invalid enrollment code",
        ),
    ],
)
async def test_expected_errors_are_one_line_on_stderr(
    cli: Cli,
    fakehub: FakeHub,
    monkeypatch: pytest.MonkeyPatch,
    setup: str | None,
    args: list[str],
    message: str,
) -> None:
    if setup:
        await enroll(cli, fakehub, setup, "10000000001")
    if args == ["--passphrase-env-wrong"]:
        monkeypatch.setenv("MISS_PASSPHRASE", "not the passphrase")
        args = ["whoami"]
    args = [fakehub.url if a == "HUB" else a for a in args]
    rc, out, err = await cli("alice" if setup else "nobody", *args)
    assert rc == 1
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("miss-chat: error: ") and message in err, err
    assert "Traceback" not in err


# --- presence (SPEC §6.7) ----------------------------------------------------------------


async def test_status_sets_and_prints(cli: Cli, fakehub: FakeHub) -> None:
    alice = await enroll(cli, fakehub, "alice", "10000000001")
    rc, out, _ = await cli("alice", "status")
    assert (rc, out) == (0, "status: available\n")
    rc, out, _ = await cli("alice", "status", "on-call")
    assert (rc, out) == (0, "status: on call\n")
    assert fakehub.statuses[alice] == "on_call"
    rc, out, _ = await cli("alice", "status")
    assert (rc, out) == (0, "status: on call\n")
    with pytest.raises(SystemExit) as usage:
        await cli("alice", "status", "away")
    assert usage.value.code == 2 and fakehub.statuses[alice] == "on_call"


async def test_presence_prints_each_recipient(cli: Cli, fakehub: FakeHub) -> None:
    alice = await enroll(cli, fakehub, "alice", "10000000001")
    bob = await enroll(cli, fakehub, "bob", "10000000002")
    carol = await enroll(cli, fakehub, "carol", "10000000003")
    fakehub.hidden.add(carol)
    fakehub.statuses[alice] = "on_call"
    rc, out, _ = await cli("bob", "presence", "10000000001", bob, "10000000003", "10000000001")
    assert rc == 0
    assert out.splitlines() == [
        "○ Dr Alice (10000000001) is offline (on call)",
        "● Dr Bob (10000000002) is available",
        "? Dr Carol (10000000003): presence not shared with you",
    ]
    async with Client.connect(load_profile(cli.tmp_path / "alice", PASSPHRASE)) as a:
        await a.set_status("busy")
        _, out, _ = await cli("bob", "presence", alice)
    assert out == "● Dr Alice (10000000001) is busy\n"
    rc, out, err = await cli("bob", "presence", "10000000001", "19999999999")
    assert rc == 1 and out == "" and "unknown recipient '19999999999'" in err and err.count("\n") == 1


async def test_chat_shows_the_peer_presence_and_its_changes(
    cli: Cli, fakehub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await enroll(cli, fakehub, "alice", "10000000001")
    await enroll(cli, fakehub, "bob", "10000000002")
    fakehub.statuses[alice] = "busy"
    a = Client.connect(load_profile(cli.tmp_path / "alice", PASSPHRASE))
    alice_client = await a.__aenter__()
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    chat = asyncio.create_task(cli("bob", "chat", "10000000001", "--linger", "1"))
    try:
        await wait_for(lambda: any(alice in users for users in fakehub.watchers.values()), within=10)
        await alice_client.set_status("on_call")
    finally:
        await a.__aexit__(None, None, None)
    rc, out, err = await chat
    assert rc == 0, err
    assert [line for line in out.splitlines() if "Dr Alice" in line] == [
        "● Dr Alice (10000000001) is busy",
        "● Dr Alice (10000000001) is on call",
        "○ Dr Alice (10000000001) is offline (on call)",
    ]


async def test_chat_says_when_presence_is_not_shared(
    cli: Cli, fakehub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await enroll(cli, fakehub, "alice", "10000000001")
    await enroll(cli, fakehub, "bob", "10000000002")
    fakehub.hidden.add(alice)
    monkeypatch.setattr("sys.stdin", io.StringIO("bonjour\n"))
    rc, out, err = await cli("bob", "chat", "10000000001", "--linger", "0.1")
    assert rc == 0, err
    assert "presence of Dr Alice (10000000001) is not shared with you" in err
    assert "●" not in out and "○" not in out and "me → Dr Alice (10000000001): bonjour" in out


# --- verified clinicians (SPEC §11), against the real hub ----------------------------------


async def enroll_real(cli: Cli, hub: HubServer, name: str, rpps: str, *, verified: bool = True) -> str:
    """An invitation on the real hub, ``miss-chat enroll``, then (as an
    administrator would) ``miss-admin verify``."""
    user, code = await invite(hub, f"Dr {name.title()}", rpps, verified=False)
    rc, _, err = await cli(
        name,
        "enroll",
        "--server",
        hub.url,
        "--authority",
        AUTHORITY_TEXT,
        code,
        "--kdf",
        "interactive",
        "--label",
        name,
    )
    assert rc == 0, err
    if verified:
        await verify_on(hub, user)
    return user


async def link_real(cli: Cli, hub: HubServer, existing: str, name: str) -> str:
    """``miss-chat link`` on ``existing``, ``enroll`` of ``name`` with the code,
    then the administrator verifies the user again; returns the new device id."""
    rc, code, err = await cli(existing, "link")
    assert rc == 0, err
    rc, out, err = await cli(
        name,
        "enroll",
        "--server",
        hub.url,
        "--authority",
        AUTHORITY_TEXT,
        code.strip(),
        "--kdf",
        "interactive",
        "--label",
        name,
    )
    assert rc == 0, err
    await verify_on(hub, load_profile(cli.tmp_path / name, PASSPHRASE).user_id)
    return out.split("device ")[1].split()[0]


async def test_enroll_needs_a_well_formed_authority_and_whoami_shows_its_fingerprint(
    cli: Cli, hub: HubServer
) -> None:
    _, code = await invite(hub, "Dr Alice", "10000000001", verified=False)
    with pytest.raises(SystemExit) as usage:
        await cli("alice", "enroll", "--server", hub.url, code, "--kdf", "interactive")
    assert usage.value.code == 2
    rc, out, err = await cli("alice", "enroll", "--server", hub.url, "--authority", "bm9wZQ==", code)
    assert rc == 1 and "not a 32-byte Ed25519 public key" in err and out == ""
    # the code was not spent
    rc, out, err = await cli(
        "alice", "enroll", "--server", hub.url, "--authority", AUTHORITY_TEXT, code, "--kdf", "interactive"
    )
    assert rc == 0, err
    assert f"authority fingerprint: {authority_fingerprint(AUTHORITY_PK)}" in out
    rc, out, _ = await cli("alice", "whoami")
    assert f"authority {authority_fingerprint(AUTHORITY_PK)}" in out


async def test_a_profile_from_before_authorities_is_told_to_set_one(
    cli: Cli, hub: HubServer, make_profile: Callable[..., Profile]
) -> None:
    make_profile("old", authority=False, server=hub.url)
    rc, out, _ = await cli("old", "whoami")
    assert rc == 0 and "authority none: run `miss-chat set-authority KEY`" in out
    rc, out, err = await cli("old", "send", "10000000002", "bonjour")
    assert rc == 1 and out == "" and "set-authority KEY" in err and err.count("\n") == 1
    rc, out, _ = await cli("old", "set-authority", AUTHORITY_TEXT)
    assert (rc, out) == (0, f"authority set: {authority_fingerprint(AUTHORITY_PK)}\n")
    other = encode_authority_key(bytes(nacl.signing.SigningKey.generate().verify_key))
    rc, _, err = await cli("old", "set-authority", other)
    assert rc == 1 and "--replace" in err
    rc, out, _ = await cli("old", "whoami")
    assert f"authority {authority_fingerprint(AUTHORITY_PK)}" in out, "not replaced without --replace"
    rc, _, _ = await cli("old", "set-authority", other, "--replace")
    assert rc == 0 and load_profile(cli.tmp_path / "old", PASSPHRASE).authority_pk != AUTHORITY_PK


async def test_unverified_accounts_get_a_clear_refusal(cli: Cli, hub: HubServer) -> None:
    await enroll_real(cli, hub, "alice", "10000000001", verified=False)
    await enroll_real(cli, hub, "bob", "10000000002")
    await enroll_real(cli, hub, "carol", "10000000003", verified=False)
    rc, _, err = await cli("alice", "send", "10000000002", "x")
    # The hub answers nothing to an account it does not know verified (SPEC §11.4).
    assert rc == 1 and "your account or this device is not verified by the authority" in err
    assert "miss-admin verify" in err
    rc, _, err = await cli("bob", "send", "10000000003", "x")
    # An unverified clinician is nobody in the directory (SPEC §11.3).
    assert (rc, err) == (1, "miss-chat: error: unknown recipient (no such clinician in the directory)\n")
    assert await hub.store.count_pending(load_profile(cli.tmp_path / "carol", PASSPHRASE).device_id) == 0


async def test_search(cli: Cli, hub: HubServer) -> None:
    alice = await enroll_real(cli, hub, "alice", "10000000001")
    bob = await enroll_real(cli, hub, "bob", "10000000002")
    await enroll_real(cli, hub, "carol", "10000000003", verified=False)
    rc, out, _ = await cli("alice", "search", "chru")
    assert rc == 0
    assert out.splitlines() == [
        f"Dr Alice | RPPS 10000000001 | médecin | CHRU Test | {alice}",
        f"Dr Bob | RPPS 10000000002 | médecin | CHRU Test | {bob}",
    ]
    rc, out, err = await cli("alice", "search", "carol")
    assert rc == 0 and out == "" and "no verified clinician matches 'carol'" in err


async def test_key_change_then_trust_and_verification_in_person(cli: Cli, hub: HubServer) -> None:
    await enroll_real(cli, hub, "alice", "10000000001")
    await enroll_real(cli, hub, "bob", "10000000002")
    rc, _, err = await cli("alice", "send", "10000000002", "avant")
    assert rc == 0, err

    rc, out, err = await cli("alice", "verify", "10000000002", stdin="n\n")
    assert rc == 1 and SAFETY.search(out) and "not marked verified" in err
    rc, out, err = await cli("alice", "verify", "10000000002", stdin="y\n")
    assert rc == 0 and "Does Dr Bob (10000000002) read the same number? [y/N]" in err
    assert out.endswith("Dr Bob (10000000002) is verified in person ✓\n")
    _, from_bob, _ = await cli("bob", "safety", "10000000001")
    assert SAFETY.findall(out) == SAFETY.findall(from_bob)
    rc, out, _ = await cli("alice", "safety", "10000000002")
    assert "verified in person: yes ✓" in out
    rc, out, _ = await cli("alice", "search", "Bob")
    assert out.startswith("Dr Bob ✓ | RPPS 10000000002")

    laptop = await link_real(cli, hub, "bob", "bob-laptop")
    rc, out, err = await cli("alice", "send", "10000000002", "après")
    assert rc == 1 and out == ""
    assert "WARNING: the devices of Dr Bob (10000000002) changed (1 added)" in err
    assert "miss-chat trust 10000000002" in err
    rc, out, _ = await cli("alice", "safety", "10000000002")
    assert "verified in person: no" in out and "key change pending: 1 added" in out

    rc, out, err = await cli("alice", "trust", "10000000002", stdin="n\n")
    assert rc == 1 and f"{laptop}: new device" in out and SAFETY.search(out)
    rc, _, _ = await cli("alice", "send", "10000000002", "après")
    assert rc == 1, "still not accepted"
    rc, out, err = await cli("alice", "trust", "10000000002", "--yes")
    assert rc == 0 and "accepted: the current devices of Dr Bob (10000000002) are now pinned" in out
    rc, out, err = await cli("alice", "send", "10000000002", "après")
    assert rc == 0, err
    rc, out, _ = await cli("alice", "trust", "10000000002", "--yes")
    assert out == "nothing to accept: the devices of Dr Bob (10000000002) are the pinned ones\n"
    rc, out, _ = await cli("bob-laptop", "inbox", "--idle", "0.3")
    assert "Dr Alice (10000000001): après" in out

    # bob's phone sees its own new device as a change to accept too
    rc, _, err = await cli("bob", "send", "10000000001", "merci")
    assert rc == 1 and "your own account changed (1 added)" in err and "trust me" in err
    rc, out, _ = await cli("bob", "trust", "me", "--yes")
    assert rc == 0 and "accepted: the current devices of your own account are now pinned" in out
    rc, _, err = await cli("bob", "send", "10000000001", "merci")
    assert rc == 0, err


async def test_devices_and_revoke(cli: Cli, hub: HubServer) -> None:
    await enroll_real(cli, hub, "bob", "10000000002")
    phone = load_profile(cli.tmp_path / "bob", PASSPHRASE).device_id
    laptop = await link_real(cli, hub, "bob", "bob-laptop")
    rc, out, _ = await cli("bob", "devices")
    lines = out.splitlines()
    assert rc == 0 and len(lines) == 2
    assert lines[0].startswith(f"{phone}  bob  enrolled ") and lines[0].endswith("attested  (this device)")
    assert lines[1].startswith(f"{laptop}  bob-laptop  enrolled ") and lines[1].endswith("attested")

    rc, _, err = await cli("bob", "revoke", laptop, stdin="no\n")
    assert rc == 1 and "not revoked" in err
    rc, _, err = await cli("bob", "revoke", "d_0000000000000000", "--yes")
    assert rc == 1 and "is not one of your active devices" in err
    rc, out, _ = await cli("bob", "revoke", laptop, "--yes")
    assert (rc, out) == (0, f"revoked {laptop}\n")
    rc, out, err = await cli("bob-laptop", "inbox")
    assert rc == 1 and out == ""
    assert err == (
        "miss-chat: error: this device has been revoked: it can no longer connect; "
        "enroll again with a new code\n"
    )
    rc, out, _ = await cli("bob", "devices")
    assert len(out.splitlines()) == 1

    rc, out, err = await cli("bob", "revoke", phone, stdin="y\n")
    assert rc == 0 and "is THIS device" in err
    rc, _, err = await cli("bob", "whoami")
    assert rc == 0, "the profile still opens"
    rc, _, err = await cli("bob", "devices")
    assert rc == 1 and "this device has been revoked" in err


async def test_a_suspended_account_is_told_so(cli: Cli, hub: HubServer) -> None:
    user = await enroll_real(cli, hub, "bob", "10000000002")
    await hub.store.set_suspended(user, True)
    await hub.store.audit([AuditEvent(0, "admin:test", "account.suspended", user)])
    hub.hub.accounts.forget(user)
    rc, _, err = await cli("bob", "inbox")
    assert (rc, err) == (1, "miss-chat: error: your account is suspended; contact your administrator\n")


# --- rough edges ------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"miss-chat {importlib.metadata.version('miss')}\n"


async def test_an_empty_message_is_refused_by_send_and_ignored_in_chat(
    cli: Cli, fakehub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    await enroll(cli, fakehub, "alice", "10000000001")
    await enroll(cli, fakehub, "bob", "10000000002")
    for text in ("", "  \t "):
        rc, out, err = await cli("alice", "send", "10000000002", text)
        assert (rc, out, err) == (1, "", "miss-chat: error: empty message: nothing sent\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("   \nbonjour\n\n"))
    rc, out, err = await cli("alice", "chat", "10000000002", "--linger", "0.1")
    assert rc == 0, err
    assert err.count("miss-chat: empty message: nothing sent\n") == 2
    assert [
        fr for fr in fakehub.received if isinstance(fr, Send)
    ] and "me → Dr Bob (10000000002): bonjour" in out
    rc, out, _ = await cli("bob", "inbox", "--idle", "0.2")
    assert [line.split(": ", 1)[1] for line in out.splitlines()] == ["bonjour"]


async def test_sending_to_oneself_is_refused_as_such(cli: Cli, fakehub: FakeHub) -> None:
    alice = await enroll(cli, fakehub, "alice", "10000000001")
    await enroll(cli, fakehub, "bob", "10000000002")
    refusal = "miss-chat: error: you cannot send a message to yourself\n"
    for recipient in ("10000000001", alice):
        rc, out, err = await cli("alice", "send", recipient, "note à moi-même")
        assert (rc, out, err) == (1, "", refusal)
        rc, out, err = await cli("alice", "chat", recipient, stdin="x\n")
        assert (rc, err) == (1, refusal)
    assert not [fr for fr in fakehub.received if isinstance(fr, Send)]
    # Once the profile knows its own RPPS number, it says so before connecting.
    rc, _, _ = await cli("alice", "send", "10000000002", "bonjour")
    assert rc == 0
    before = len(fakehub.received)
    rc, _, err = await cli("alice", "send", "10000000001", "note")
    assert (rc, err) == (1, refusal) and len(fakehub.received) == before


@pytest.mark.parametrize("command", [["send", "{rpps}", "x"], ["chat", "{rpps}"], ["presence", "{rpps}"]])
@pytest.mark.parametrize("rpps", ["1000000000", "100000000011", "42"])
async def test_a_malformed_rpps_number_is_not_an_unknown_recipient(
    cli: Cli, fakehub: FakeHub, command: list[str], rpps: str
) -> None:
    await enroll(cli, fakehub, "alice", "10000000001")
    rc, out, err = await cli("alice", *[a.format(rpps=rpps) for a in command], stdin="x\n")
    assert (rc, out) == (1, "")
    assert err == f"miss-chat: error: an RPPS number has 11 digits ({rpps!r} has {len(rpps)})\n"


async def test_receipts_show_the_message_and_the_device_not_an_id(cli: Cli, fakehub: FakeHub) -> None:
    await enroll(cli, fakehub, "alice", "10000000001")
    await enroll(cli, fakehub, "bob", "10000000002")
    bob_device = load_profile(cli.tmp_path / "bob", PASSPHRASE).device_id
    await cli("alice", "send", "10000000002", "Bonjour Bob, un avis sur le patient de la 12 ?")
    await cli("alice", "send", "10000000002", "Merci")
    await cli("bob", "inbox", "--idle", "0.2")
    rc, out, _ = await cli("alice", "inbox", "--idle", "0.3")
    assert rc == 0
    device = re.escape(f"{bob_device[:6]}…")
    assert re.fullmatch(
        rf"\[[-\d :]+\] ✓ delivered to Dr Bob \(10000000002\), device {device}: «Bonjour Bob, un avis sur…»\n"
        rf"\[[-\d :]+\] ✓ delivered to Dr Bob \(10000000002\), device {device}: «Merci»\n",
        out,
    ), out


async def test_passphrase_command_for_scripts(
    cli: Cli, fakehub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    await enroll(cli, fakehub, "alice", "10000000001")
    monkeypatch.setenv("MISS_NEW_PASSPHRASE", "short")
    rc, out, err = await cli("alice", "passphrase", "--kdf", "interactive")
    assert (rc, out) == (1, "") and err == "miss-chat: error: passphrase must have at least 8 characters\n"

    monkeypatch.setenv("MISS_NEW_PASSPHRASE", "a brand new passphrase")
    rc, out, err = await cli("alice", "passphrase", "--kdf", "interactive")
    assert (rc, out, err) == (0, "passphrase changed\n", "")
    rc, _, err = await cli("alice", "whoami")
    assert (rc, err) == (1, "miss-chat: error: wrong passphrase\n"), "the old one no longer opens it"
    monkeypatch.setenv("MISS_PASSPHRASE", "a brand new passphrase")
    rc, out, _ = await cli("alice", "whoami")
    assert rc == 0 and "user      u_" in out


async def test_a_fatal_error_while_reconnecting_ends_the_chat_with_its_message(
    cli: Cli, fakehub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    await enroll(cli, fakehub, "alice", "10000000001")
    await enroll(cli, fakehub, "bob", "10000000002")
    alice = load_profile(cli.tmp_path / "alice", PASSPHRASE)
    read, write = os.pipe()
    monkeypatch.setattr("sys.stdin", os.fdopen(read, "r"))
    chat = asyncio.create_task(cli("alice", "chat", "10000000002"))
    try:
        await wait_for(lambda: alice.device_id in fakehub.conns, within=10)
        first = fakehub.conns[alice.device_id]
        await first.close(1001)  # the hub restarts: the chat comes back
        await wait_for(lambda: fakehub.conns.get(alice.device_id) not in (None, first), within=10)
        # The device is revoked meanwhile: the next authentication fails.
        del fakehub.users[alice.user_id].devices[alice.device_id]
        await fakehub.conns[alice.device_id].close(1001)
        rc, _, err = await asyncio.wait_for(chat, 10)
    finally:
        os.close(write)
    assert rc == 1
    assert "miss-chat: connection lost (the hub is restarting); reconnecting\n" in err
    assert "miss-chat: connected again\n" in err
    assert err.endswith(
        "miss-chat: error: authentication failed: this device is unknown to the hub or was revoked\n"
    )
    assert "Traceback" not in err


# --- refusals and the hub's authority, against the real hub --------


async def test_a_refusal_is_shown_as_not_delivered_in_inbox_and_history(cli: Cli, hub: HubServer) -> None:
    await enroll_real(cli, hub, "alice", "10000000001")
    await enroll_real(cli, hub, "bob", "10000000002")
    bob_device = load_profile(cli.tmp_path / "bob", PASSPHRASE).device_id
    # Bob's profile trusts another authority: his device cannot verify Alice.
    other = encode_authority_key(bytes(nacl.signing.SigningKey.generate().verify_key))
    rc, _, _ = await cli("bob", "set-authority", other, "--replace")
    assert rc == 0
    rc, _, err = await cli("alice", "send", "10000000002", "Bonjour Bob, un avis sur le patient de la 12 ?")
    assert rc == 0, err
    rc, out, _ = await cli("bob", "inbox", "--idle", "0.3")
    assert "Bonjour" not in out
    rc, out, _ = await cli("alice", "inbox", "--idle", "0.5")
    assert rc == 0 and "✓" not in out and "delivered to" not in out
    assert re.fullmatch(
        rf"\[[-\d :]+\] ✗ NOT delivered: Dr Bob \(10000000002\)'s device {re.escape(bob_device[:6])}… "
        r"refused "
        r"«Bonjour Bob, un avis sur…» \(reason: the sender could not be verified by that device\)\n",
        out,
    ), out
    rc, out, _ = await cli("alice", "history", "10000000002")
    assert out.endswith(
        "me → Dr Bob (10000000002): Bonjour Bob, un avis sur le patient de la 12 ? ✗ NOT delivered: "
        f"refused by {bob_device[:6]}… (the sender could not be verified by that device)\n"
    ), out


async def test_commands_warn_when_the_hub_announces_another_authority(cli: Cli, hub: HubServer) -> None:
    await enroll_real(cli, hub, "alice", "10000000001")
    other_key = nacl.signing.SigningKey.generate().verify_key
    other = encode_authority_key(bytes(other_key))
    rc, _, _ = await cli("alice", "set-authority", other, "--replace")
    assert rc == 0
    rc, out, err = await cli("alice", "devices")
    assert rc == 0 and out
    assert err == (
        "miss-chat: WARNING: the hub announces the verification authority "
        f"{authority_fingerprint(AUTHORITY_PK)} but this profile trusts "
        f"{authority_fingerprint(bytes(other_key))}: "
        "every clinician will look unverified until the profile has the right key: "
        "`miss-chat set-authority KEY --replace` with the key your administrator gives you\n"
    )
    rc, _, _ = await cli("alice", "set-authority", AUTHORITY_TEXT, "--replace")
    rc, _, err = await cli("alice", "devices")
    assert (rc, err) == (0, "")


async def test_ping_says_that_the_hub_answers_and_how_fast(cli: Cli, hub: HubServer) -> None:
    """``miss-chat ping`` (SPEC §4.1): with a hub that names ``ping``, the
    request; a device not verified yet may ping too."""
    await enroll_real(cli, hub, "claire", "20000000001", verified=False)
    pings = hub.hub.metrics.frames.labels("ping")
    before = pings._value.get()
    rc, out, err = await cli("claire", "ping")
    assert rc == 0, err
    assert re.fullmatch(r"hub joignable : aller-retour \d+ ms\n", out), out
    assert pings._value.get() == before + 1


async def test_ping_uses_a_websocket_ping_with_a_hub_that_does_not_name_it(
    cli: Cli, fakehub: FakeHub
) -> None:
    await enroll(cli, fakehub, "alice", "10000000001")
    rc, out, err = await cli("alice", "ping")
    assert rc == 0, err
    assert re.fullmatch(r"hub joignable : aller-retour \d+ ms\n", out), out
