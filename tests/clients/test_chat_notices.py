"""``miss-chat`` and notices (SPEC §17) against the real hub in this process:
a service's notice shows as a card (event label and title, aligned fields,
the reply line) from « [Service] Name — Organisation », in ``inbox`` and
again in ``history`` after a restart; a clinician's notice is a card from
that clinician, built from the notice and never from its text; writing to
a service that does not accept replies says so in French, with whom to
call, in ``send`` and in ``chat`` before anything is typed."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from miss_client import Client, Notice
from miss_client.chat import main

from miss_server.app import HubServer
from tests.support.client_fixtures import PASSPHRASE
from tests.support.notice_fixtures import admission, enroll_service
from tests.support.verified_hubs import ClinicianFactory

SERVICE = "[Service] CH Provins — Admissions — CH de Provins"
REPLY = "Pour toute question : Bureau des admissions : 01 64 60 40 00"


async def chat(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], profile: str, *args: str, stdin: str = ""
) -> tuple[int, str, str]:
    """``miss-chat --profile tmp_path/profile ARGS`` (main() in a thread)."""
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MISS_PASSPHRASE", PASSPHRASE)
        mp.setattr("sys.stdin", io.StringIO(stdin))
        rc = await asyncio.to_thread(main, ["--profile", str(tmp_path / profile), *args])
    out, err = capsys.readouterr()
    return rc, out, err


async def test_a_notice_is_a_card_from_a_service_and_replies_are_refused_in_french(
    clinician: ClinicianFactory, hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alice_p = await clinician("alice", "10000000201")
    adt_p = await enroll_service(hub, tmp_path / "adt")
    async with Client.connect(adt_p) as adt:
        await adt.send_notice(admission(), key="MSG-1", rpps="10000000201")
    rc, out, err = await chat(tmp_path, capsys, "alice", "inbox", "--idle", "0.3")
    assert rc == 0, err
    card = out[out.index(SERVICE) :].splitlines()
    assert card[:7] == [
        f"{SERVICE}: ┏ Admission — Admission de M. DUPONT Jean",
        "    ┃ Patient  : DUPONT Jean",
        "    ┃ Né(e) le : 14/03/1951",
        "    ┃ IPP      : 000123456",
        "    ┃ Service  : Cardiologie",
        f"    ┃ {REPLY}",
        card[6],
    ]
    assert card[6].startswith("    ┗ événement du ")
    assert "svc:provins-adt" not in out  # a service shows no identifier, as no RPPS
    # The card again, from the local history (sealed with the text).
    rc, out, err = await chat(tmp_path, capsys, "alice", "history", adt_p.user_id)
    assert rc == 0 and f"{SERVICE}: ┏ Admission — Admission de M. DUPONT Jean" in out and REPLY in out, err
    # Writing to it: refused before anything is encrypted, with whom to call.
    rc, out, err = await chat(tmp_path, capsys, "alice", "send", "svc:provins-adt", "Merci, je passe")
    assert (rc, out) == (1, "")
    assert err == f"miss-chat: error: Ce service n'accepte pas de réponse. {REPLY}\n"
    # The chat says so before the user types.
    rc, out, err = await chat(tmp_path, capsys, "alice", "chat", adt_p.user_id, stdin="Merci\n/quit\n")
    assert rc == 0, err
    assert f"chatting with {SERVICE}" in out + err
    assert f"Ce service n'accepte pas de réponse. {REPLY}" in out + err
    assert "not sent: Ce service n'accepte pas de réponse" in out + err
    with alice_p.open_state() as state:
        assert [e.direction for e in state.history(adt_p.user_id)] == ["in"]


async def test_a_clinicians_notice_is_a_card_from_that_clinician_never_its_text(
    clinician: ClinicianFactory, hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await clinician("alice", "10000000211")
    bob_p = await clinician("bob", "10000000212")
    notice = Notice("Mise à jour\x1b[2J", "planned_readmission", 0, (("Note", "ligne 1\nligne 2"),))
    async with Client.connect(bob_p) as bob:
        await bob.send_notice(notice, key="k", rpps="10000000211", text="TEXTE QUI MENT")
    rc, out, err = await chat(tmp_path, capsys, "alice", "inbox", "--idle", "0.3")
    assert rc == 0, err
    assert "Dr Bob (10000000212): ┏ Autre — Mise à jour␛[2J" in out  # a later event: « Autre »
    assert "    ┃ Note : ligne 1␊ligne 2" in out  # a newline cannot break the frame
    assert "TEXTE QUI MENT" not in out and "[Service]" not in out
