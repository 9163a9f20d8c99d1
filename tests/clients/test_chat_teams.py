"""``miss-chat`` commands of revision 3 (SPEC §13) against the real in-process
hub: care teams (create, add, list, show, promote, demote, remove, leave),
sending to a team and its conversation, a tampered team said in French,
recall, lifespans, read notices and the read-receipts setting. ``main()``
runs in a worker thread, since it starts its own event loop."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import pytest
from miss_client.chat import main

from miss_server.app import HubServer
from tests.support.client_fixtures import PASSPHRASE
from tests.support.team_tamper import TeamOperator
from tests.support.verified_hubs import ClinicianFactory

ALICE, BOB, CAROL = "10000000001", "10000000002", "10000000003"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


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


async def test_a_team_from_creation_to_departure(
    cli: Cli, hub: HubServer, clinician: ClinicianFactory
) -> None:
    await clinician("alice", ALICE)
    await clinician("bob", BOB)
    await clinician("carol", CAROL)
    out = await cli.ok("alice", "team", "create", "Cardio garde", "--org", "CHRU Test", "--lifespan", "24h")
    team = re.fullmatch(r"(t_[0-9a-f]{16}) created: Cardio garde\n", out)
    assert team is not None
    team_id = team.group(1)
    assert (
        await cli.ok("alice", "team", "add", "Cardio garde", BOB)
        == "Dr Bob (10000000002) added to Cardio garde\n"
    )
    await cli.ok("alice", "team", "add", team_id, CAROL)
    listed = await cli.ok("alice", "team", "list")
    assert listed == f"{team_id}  Cardio garde  (3 membres, vous: admin, messages 24 h)\n"
    shown = (await cli.ok("alice", "team", "show", "cardio garde")).splitlines()
    assert shown[:3] == [
        f"Cardio garde  ({team_id})",
        "organisation: CHRU Test",
        "durée de vie des messages: 24 h",
    ]
    assert "  Dr Alice (10000000001) ★ admin (vous)" in shown
    assert "  Dr Bob (10000000002)" in shown

    out = await cli.ok("alice", "send", "Cardio garde", "Lit 12 : avis ?")
    assert re.fullmatch(f"{UUID} accepted\n", out)
    inbox = (await cli.ok("bob", "inbox")).splitlines()
    assert any(line.endswith("[Cardio garde] Dr Alice a créé l'équipe Cardio garde") for line in inbox)
    assert any(line.endswith("[Cardio garde] Dr Alice a ajouté Dr Bob") for line in inbox), inbox
    [message] = [line for line in inbox if "Lit 12" in line]
    assert "[Cardio garde] Dr Alice (10000000001): Lit 12 : avis ?" in message and "expire le" in message
    history = (await cli.ok("bob", "history", "Cardio garde")).splitlines()
    assert history[-1].endswith("Lit 12 : avis ? (expire le " + message.split("expire le ")[1])
    assert any("Dr Alice a ajouté Dr Carol" in line for line in history)

    assert "is now an admin of" in await cli.ok("alice", "team", "promote", "Cardio garde", BOB)
    assert "is no longer an admin of" in await cli.ok("alice", "team", "demote", "Cardio garde", BOB)
    rc, _, err = await cli("bob", "team", "remove", "Cardio garde", CAROL)
    assert rc == 1 and "team_forbidden" in err
    assert "removed from" in await cli.ok("alice", "team", "remove", "Cardio garde", CAROL)
    assert await cli.ok("bob", "team", "leave", "Cardio garde") == "you left Cardio garde\n"
    rc, _, err = await cli("bob", "send", "Cardio garde", "encore là ?")
    assert rc == 1 and "pas membre" in err
    carol = await cli.ok("carol", "inbox")
    assert "Dr Alice a retiré Dr Carol de l'équipe" in carol


async def test_a_member_nobody_signed_is_said_in_french_and_blocks_sending(
    cli: Cli, hub: HubServer, clinician: ClinicianFactory
) -> None:
    await clinician("alice", ALICE)
    await clinician("bob", BOB)
    mallory = await clinician("carol", CAROL)
    team_id = (await cli.ok("alice", "team", "create", "Réa nuit")).split()[0]
    await cli.ok("alice", "team", "add", "Réa nuit", BOB)
    await TeamOperator(hub).insert_member(team_id, mallory.user_id)
    rc, _, err = await cli("alice", "send", "Réa nuit", "confidentiel")
    expected = "Le hub présente pour l'équipe Réa nuit une liste de membres que personne n'a signée"
    assert rc == 1 and expected in err
    shown = await cli.ok("alice", "team", "show", "Réa nuit")
    assert f"! {expected}" in shown and "Dr Carol" not in shown
    assert "confidentiel" not in await cli.ok("carol", "inbox")


async def test_recall_lifespan_and_read_receipts(
    cli: Cli, hub: HubServer, clinician: ClinicianFactory
) -> None:
    await clinician("alice", ALICE)
    await clinician("bob", BOB)
    first = (await cli.ok("alice", "send", BOB, "mauvais patient")).split()[0]
    assert (await cli.ok("bob", "inbox")).count("mauvais patient") == 1
    out = await cli.ok("alice", "recall", first)
    assert out.startswith(f"{first} recalled (message retiré")
    assert "Dr Alice (10000000001): message retiré" in await cli.ok("bob", "inbox")
    history = await cli.ok("bob", "history", ALICE)
    assert "message retiré" in history and "mauvais patient" not in history
    rc, _, err = await cli("alice", "recall", "0190c3e1-0000-7000-8000-000000000000")
    assert rc == 1 and "no message of yours" in err

    rc, _, err = await cli("alice", "send", BOB, "trop court", "--lifespan", "10m")
    assert rc == 1 and "between 1h and 30d" in err
    await cli.ok("alice", "send", BOB, "code porte 4512", "--lifespan", "2h")
    assert "code porte 4512 (expire le" in await cli.ok("bob", "inbox")

    assert await cli.ok("bob", "read", ALICE) == "1 message(s) marked read\n"
    read = await cli.ok("alice", "inbox")
    assert "✓✓ lu par Dr Bob (10000000002): «code porte 4512»" in read
    assert "✓✓ lu par Dr Bob" in await cli.ok("alice", "history", BOB)

    assert (await cli.ok("bob", "read-receipts")).startswith("read receipts: on")
    assert (await cli.ok("bob", "read-receipts", "off")).startswith("read receipts: off")
    await cli.ok("alice", "send", BOB, "dernier")
    await cli.ok("bob", "inbox")
    assert await cli.ok("bob", "read", ALICE) == "1 message(s) marked read\n"
    assert "lu par" not in await cli.ok("alice", "inbox")


async def test_a_chat_with_a_team_sends_to_every_member_and_marks_read(
    cli: Cli, hub: HubServer, clinician: ClinicianFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    await clinician("alice", ALICE)
    await clinician("bob", BOB)
    await clinician("carol", CAROL)
    await cli.ok("alice", "team", "create", "Garde")
    await cli.ok("alice", "team", "add", "Garde", BOB)
    await cli.ok("alice", "team", "add", "Garde", CAROL)
    await cli.ok("bob", "send", "Garde", "qui est de garde ?")
    monkeypatch.setattr("sys.stdin", io.StringIO("moi, jusqu'à 20 h\n/quit\n"))
    out = await cli.ok("alice", "chat", "Garde")
    assert "[Garde] Dr Bob (10000000002): qui est de garde ?" in out
    assert "me → Garde: moi, jusqu'à 20 h" in out
    carol = await cli.ok("carol", "inbox")
    assert "[Garde] Dr Bob (10000000002): qui est de garde ?" in carol
    assert "[Garde] Dr Alice (10000000001): moi, jusqu'à 20 h" in carol
    bob = await cli.ok("bob", "inbox")
    assert "✓✓ lu par Dr Alice (10000000001): «qui est de garde ?»" in bob
