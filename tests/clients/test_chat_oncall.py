"""``miss-chat`` commands of revision 4 (SPEC §14) against the real in-process
hub with time-scaled escalation settings: ``role search/take/list/leave``
with holders' names and handovers, ``send ROLE --urgent`` by the role's
name that escalates to a backup, ``ack ID``, the sender's status lines,
reminders with the terminal's bell, and ``urgent`` after a restart. French
output asserted. ``main()`` runs in a worker thread (its own event loop)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from miss_client import Client
from miss_client.chat import main
from miss_client.models import Message, format_id

from miss_server.app import HubServer
from protocol.oncall import Policy, Step, pack_policy
from tests.clients.test_chat_session import ChatProcess
from tests.support.client_fixtures import PASSPHRASE
from tests.support.clock import now_ms
from tests.support.inprocess_hub import hub_settings
from tests.support.verified_hubs import ClinicianFactory

ALICE, BOB, CAROL = "10000000001", "10000000002", "10000000003"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
ROLE = "Cardiologie — interne de garde"
FAST = {"escalation_min_interval_ms": 100, "escalation_tick_ms": 50}


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubServer]:
    async with HubServer(hub_settings(tmp_path, **FAST)) as server:
        yield server


class Cli:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp_path = tmp_path
        self.capsys = capsys

    async def __call__(self, profile: str, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        rc = await asyncio.to_thread(main, ["--profile", str(self.tmp_path / profile), *args])
        out, err = self.capsys.readouterr()
        return rc, out, err

    async def ok(self, profile: str, *args: str) -> str:
        rc, out, err = await self(profile, *args)
        assert rc == 0, err
        return out


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("MISS_PASSPHRASE", PASSPHRASE)
    return Cli(tmp_path, capsys)


async def test_role_commands_take_handover_list_search_and_leave(
    cli: Cli, hub: HubServer, clinician: ClinicianFactory
) -> None:
    await clinician("alice", ALICE)
    await clinician("bob", BOB)
    role = (await hub.store.create_role(ROLE, "CHRU Test", False, None, now_ms())).role
    await hub.store.create_role("Réanimation — senior", "CHRU Test", True, None, now_ms())

    found = await cli.ok("alice", "role", "search", "cardio")
    assert found == f"{role}  {ROLE} (CHRU Test) · vacant (personne ne le tient)\n"
    out = await cli.ok("alice", "role", "take", "cardiologie — INTERNE de garde")
    assert out.splitlines() == [
        f"vous tenez désormais le rôle {ROLE}",
        f"{role}  {ROLE} (CHRU Test) · titulaires : Dr Alice (vous)",
    ]
    out = await cli.ok("bob", "role", "take", role)  # a handover
    assert out.splitlines()[-1] == f"{role}  {ROLE} (CHRU Test) · titulaires : Dr Bob (vous)"
    rc, out, err = await cli("alice", "role", "list")
    assert rc == 0 and out == "" and "vous ne tenez aucun rôle" in err
    assert await cli.ok("bob", "role", "list") == f"{role}  {ROLE} (CHRU Test) · titulaires : Dr Bob (vous)\n"
    await cli.ok("alice", "role", "take", ROLE, "--join")
    found = await cli.ok("bob", "role", "search", "cardio")
    holders = found.rstrip("\n").split("titulaires : ")[1].split(", ")
    assert sorted(holders) == ["Dr Alice", "Dr Bob (vous)"]  # in the order of their user ids
    out = await cli.ok("bob", "role", "leave", ROLE)
    assert out.splitlines() == [
        f"vous avez quitté le rôle {ROLE}",
        f"{role}  {ROLE} (CHRU Test) · titulaires : Dr Alice",
    ]
    rc, _, err = await cli("bob", "role", "take", "Réanimation — senior")
    assert rc == 1 and "rôle réservé" in err and "role_reserved" in err
    rc, _, err = await cli("bob", "role", "take", "Pas un rôle")
    assert rc == 1 and "aucun rôle 'Pas un rôle'" in err


async def test_urgent_to_a_role_by_name_escalates_and_is_acknowledged(
    cli: Cli, hub: HubServer, clinician: ClinicianFactory
) -> None:
    await clinician("alice", ALICE)
    bob = await clinician("bob", BOB)
    carol = await clinician("carol", CAROL)
    policy = Policy(5000, (Step(300, user=carol.user_id),), 20_000)
    role = (await hub.store.create_role(ROLE, "CHRU Test", False, pack_policy(policy), now_ms())).role
    assert await hub.store.assign_role(role, bob.user_id, now_ms())

    rc, out, err = await cli("alice", "send", ROLE, "Lit 12 : douleur thoracique", "--urgent")
    assert rc == 0, err
    sent = re.fullmatch(f"({UUID}) accepted — 🔴 URGENT : rappels jusqu'à acquittement\n", out)
    assert sent is not None, out
    message_id = sent.group(1)
    assert f"{ROLE} : titulaires Dr Bob ({BOB})" in err
    assert f"renfort étape 1 : Dr Carol ({CAROL})" in err

    inbox = await cli.ok("bob", "inbox", "--idle", "0.3")
    [line] = [x for x in inbox.splitlines() if "Lit 12" in x]
    assert f"\a🔴 URGENT — à acquitter (miss-chat ack {message_id}) · [→ {ROLE}] Dr Alice ({ALICE})" in line
    await asyncio.sleep(0.5)  # the step's delay passes: Carol gets it as backup
    inbox = await cli.ok("carol", "inbox", "--idle", "0.3")
    [line] = [x for x in inbox.splitlines() if "Lit 12" in x]
    assert f"envoyé à vous en renfort, étape 1 (destinataire : {ROLE})" in line
    assert line.endswith(f"Dr Alice ({ALICE}): Lit 12 : douleur thoracique")

    out = await cli.ok("carol", "ack", message_id)
    assert re.fullmatch(
        rf"acquitté : «Lit 12 : douleur thoraci…» de Dr Alice \({ALICE}\) \(à \d\d:\d\d\)\n", out
    )
    out = await cli.ok("bob", "ack", message_id)
    assert re.search(r"déjà acquitté par Dr Carol à \d\d:\d\d", out), out

    news = await cli.ok("alice", "inbox", "--idle", "0.3")
    assert re.search(
        rf"🔴 URGENT «Lit 12 : douleur thoraci…» : escalade vers Dr Carol \({CAROL}\) \(étape 1\)", news
    )
    assert re.search(r"✓ URGENT «Lit 12 : douleur thoraci…» acquitté par Dr Carol à \d\d:\d\d", news), news
    history = await cli.ok("alice", "history")
    assert re.search(rf"URGENT — acquitté par Dr Carol à \d\d:\d\d · me → {ROLE}: Lit 12", history), history
    rc, _, err = await cli("alice", "ack", message_id)
    assert rc == 1 and "aucun message urgent reçu" in err


async def test_urgent_to_a_person_rings_is_unacknowledged_and_still_waits_after_restart(
    cli: Cli, hub: HubServer, clinician: ClinicianFactory
) -> None:
    await clinician("alice", ALICE)
    await clinician("bob", BOB)
    await hub.store.set_org_policy("CHRU Test", 400, 1200)
    out = await cli.ok("alice", "send", BOB, "Rappelle-moi", "--urgent")
    message_id = out.split()[0]
    inbox = await cli.ok("bob", "inbox", "--idle", "0.6")
    assert (
        f"\a🔴 URGENT — rappel n°1 : message de Dr Alice ({ALICE}) à acquitter (miss-chat ack {message_id})"
        in inbox
    )
    await asyncio.sleep(1.0)
    news = await cli.ok("alice", "inbox", "--idle", "0.3")
    assert "⚠ URGENT «Rappelle-moi» : aucun acquittement" in news
    assert "🔴 URGENT — aucun acquittement · me → Dr Bob" in await cli.ok("alice", "history")
    # Bob never acknowledged: a new run still shows it waiting.
    waiting = await cli.ok("bob", "urgent")
    assert f"🔴 URGENT de Dr Alice ({ALICE}) à acquitter : miss-chat ack {message_id}" in waiting
    history = await cli.ok("bob", "history")
    assert f"🔴 URGENT — à acquitter (miss-chat ack {message_id}) · " in history


async def test_the_chat_sends_to_a_role_urgently_and_acknowledges_with_slash_ack(
    hub: HubServer, clinician: ClinicianFactory
) -> None:
    alice_p = await clinician("alice", ALICE)
    bob_p = await clinician("bob", BOB)
    await hub.store.set_org_policy("CHRU Test", 300, 20_000)
    role = (await hub.store.create_role(ROLE, "CHRU Test", False, None, now_ms())).role
    assert await hub.store.assign_role(role, alice_p.user_id, now_ms())
    chat = await ChatProcess.start(bob_p.directory, ROLE)
    try:
        await chat.expect(chat.err, f"rôle {ROLE}")
        async with Client.connect(alice_p) as alice:
            await chat.type("/urgent Besoin d'un avis, lit 4")
            got = await wait_message(alice, lambda m: m.urgent and m.role == role)
            await chat.expect(chat.out, f"me → {ROLE}: Besoin d'un avis, lit 4 (🔴 URGENT)")
            assert (await alice.acknowledge(got)).first
            line = await chat.expect(chat.out, "acquitté par Dr Alice")
            assert re.search(r"✓ URGENT «Besoin d'un avis, lit 4» acquitté par Dr Alice à \d\d:\d\d", line)

            urgent = await alice.send(bob_p.user_id, "Rappelle-moi", urgent=True)
            await chat.expect(chat.out, f"🔴 URGENT — à acquitter (miss-chat ack {format_id(urgent)})")
            reminder = await chat.expect(chat.out, "rappel n°1")
            assert reminder.startswith("\a🔴 URGENT — rappel n°1 : message de Dr Alice")
            await chat.type("/ack")
            await chat.expect(chat.out, f"acquitté : message {format_id(urgent)} de Dr Alice ({ALICE})")
            info = None
            for _ in range(100):
                await alice.drain(idle=0.05, limit=0.2)
                info = alice.urgent_info(alice.user_id, urgent)
                if info is not None and info.acknowledged:
                    break
            assert info is not None and info.ack_user == bob_p.user_id
        assert await chat.finish() == 0
    finally:
        chat.kill()


async def wait_message(client: Client, match: Callable[[Message], bool], timeout: float = 5.0) -> Message:
    async with asyncio.timeout(timeout):
        while True:
            event = await client.receive()
            if isinstance(event, Message) and match(event):
                return event
