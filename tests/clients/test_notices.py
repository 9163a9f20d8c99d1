"""Notices and services through the SDK against the real hub in this process
(SPEC §17): a service's notice to a clinician by RPPS arrives as a card
(``Message.notice``) and survives a restart; a key sends once, whether the
repeat comes after acceptance, after a lost connection or after a crash
between the hub's acceptance and its record; a notice to a role; a service
that does not accept replies is refused before anything is encrypted, and
by the hub when the lookup was stale; ``miss-notify`` end to end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from miss_client import Client, Message, Notice, Profile, RepliesNotAccepted
from miss_client.errors import ConnectionLost

from miss_server.app import HubServer
from protocol.errors import RepliesRefused, UnknownUser
from protocol.notices import render_text
from tests.support.client_fixtures import PASSPHRASE
from tests.support.clock import now_ms
from tests.support.notice_fixtures import SERVICE_NAME, SERVICE_ORG, admission, enroll_service, invite_service
from tests.support.verified_hubs import ClinicianFactory, verify_on


@contextlib.asynccontextmanager
async def connected(*profiles: Profile) -> AsyncIterator[list[Client]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Client.connect(p)) for p in profiles]


def messages(events: list[object]) -> list[Message]:
    return [e for e in events if isinstance(e, Message)]


async def test_a_notice_by_rpps_arrives_as_a_card_from_a_service_and_survives_a_restart(
    clinician: ClinicianFactory, hub: HubServer, tmp_path: Path
) -> None:
    alice_p = await clinician("alice", "10000000101")
    adt_p = await enroll_service(hub, tmp_path / "adt")
    notice = admission()
    async with connected(adt_p, alice_p) as (adt, alice):
        message_id = await adt.send_notice(notice, key="MSG-0001", rpps="10000000101")
        assert adt.notice_id("MSG-0001") == message_id and adt.notice_id("MSG-0002") is None
        [got] = messages(await alice.drain(idle=0.3))
        assert got.id == message_id and got.notice == notice
        assert got.body == render_text(notice)  # the fallback an older client shows
        assert dict(got.notice.fields)["IPP"] == "000123456"
        # The sender is a service of its organisation, never a clinician.
        peer = await alice.lookup(user=adt.user_id)
        assert peer.service and not peer.replies
        assert peer.display == f"[Service] {SERVICE_NAME} — {SERVICE_ORG}"
        # A service can be looked up by its identifier (SPEC §17.1).
        assert (await alice.resolve("svc:provins-adt")).user == adt.user_id
    with alice_p.open_state() as state:
        [entry] = state.history(adt.user_id)
    assert entry.notice == notice and entry.direction == "in"
    with adt_p.open_state() as state:
        [sent] = state.history(alice.user_id)
    assert (sent.notice, sent.status) == (notice, "accepted")


async def test_the_same_key_sends_once(clinician: ClinicianFactory, hub: HubServer, tmp_path: Path) -> None:
    alice_p = await clinician("alice", "10000000111")
    adt_p = await enroll_service(hub, tmp_path / "adt")
    async with connected(adt_p, alice_p) as (adt, alice):
        first = await adt.send_notice(admission(), key="MSG-1", rpps="10000000111")
        # The feed replays it (even with other content: the first call wins).
        again = await adt.send_notice(admission("AUTRE Nom"), key="MSG-1", rpps="10000000111")
        other = await adt.send_notice(admission("MARTIN Paul"), key="MSG-2", user=alice.user_id)
        assert again == first != other
        got = messages(await alice.drain(idle=0.3))
        assert [m.id for m in got] == [first, other]
        assert got[0].notice is not None and got[0].notice.title == "Admission de M. DUPONT Jean"


async def test_a_repeat_after_a_lost_connection_or_a_crash_gives_one_message(
    clinician: ClinicianFactory, hub: HubServer, tmp_path: Path
) -> None:
    alice_p = await clinician("alice", "10000000121")
    adt_p = await enroll_service(hub, tmp_path / "adt")
    async with connected(adt_p) as (adt,):
        # Both lookups cached: the next call records the notice, then fails to send it.
        await adt.lookup(rpps="10000000121")
        await adt.lookup(user=adt.user_id)
        await adt.aclose()
        with pytest.raises(ConnectionLost):
            await adt.send_notice(admission(), key="MSG-A", rpps="10000000121")
        recorded = adt.notice_id("MSG-A")
        assert recorded is not None
        assert [e.id for e in adt.state.pending_outgoing()] == [recorded]
    async with connected(adt_p, alice_p) as (adt, alice):
        assert await adt.send_notice(admission(), key="MSG-A", rpps="10000000121") == recorded
        accepted = await adt.send_notice(admission(), key="MSG-B", rpps="10000000121")
        # A crash after the hub accepted MSG-B but before it was marked so:
        adt.state.set_status(accepted, "pending")
        assert await adt.send_notice(admission(), key="MSG-B", rpps="10000000121") == accepted
        assert adt.state.pending_outgoing() == []
        got = messages(await alice.drain(idle=0.3))
        assert sorted(m.id for m in got) == sorted([recorded, accepted])


async def test_a_notice_to_a_role_reaches_its_holder(
    clinician: ClinicianFactory, hub: HubServer, tmp_path: Path
) -> None:
    alice_p = await clinician("alice", "10000000131")
    adt_p = await enroll_service(hub, tmp_path / "adt")
    role = (
        await hub.store.create_role("Cardiologie — interne de garde", "CHRU Test", False, None, now_ms())
    ).role
    async with connected(adt_p, alice_p) as (adt, alice):
        await alice.roles.take(role)
        notice = admission()
        message_id = await adt.send_notice(notice, key="MSG-R", role=role)
        [got] = messages(await alice.drain(idle=0.3))
        assert (got.id, got.role, got.notice) == (message_id, role, notice)


async def test_bad_calls_are_refused_before_anything_is_recorded(
    clinician: ClinicianFactory, hub: HubServer, tmp_path: Path
) -> None:
    await clinician("alice", "10000000141")
    adt_p = await enroll_service(hub, tmp_path / "adt")
    async with connected(adt_p) as (adt,):
        with pytest.raises(ValueError, match="exactly one"):
            await adt.send_notice(admission(), key="K", rpps="10000000141", user="u_0000000000000001")
        with pytest.raises(ValueError, match="1 to 200"):
            await adt.send_notice(admission(), key="k" * 201, rpps="10000000141")
        with pytest.raises(UnknownUser):
            await adt.send_notice(admission(), key="K", rpps="10000000149")
        assert adt.notice_id("K") is None and adt.state.history() == []


async def test_a_service_refusing_replies_is_refused_with_whom_to_call(
    clinician: ClinicianFactory, hub: HubServer, tmp_path: Path
) -> None:
    alice_p = await clinician("alice", "10000000151")
    adt_p = await enroll_service(hub, tmp_path / "adt")
    async with connected(adt_p, alice_p) as (adt, alice):
        await adt.send_notice(admission(), key="MSG-1", rpps="10000000151")
        await alice.drain(idle=0.3)
        assert await alice.mark_read(adt.user_id) == 1  # no read notice to a service refusing replies
        with pytest.raises(RepliesNotAccepted) as refused:
            await alice.send(adt.user_id, "Merci, je passe le voir")
        assert refused.value.reply == "Bureau des admissions : 01 64 60 40 00"
        assert str(refused.value) == (
            "Ce service n'accepte pas de réponse. "
            "Pour toute question : Bureau des admissions : 01 64 60 40 00"
        )
        assert [e.direction for e in alice.state.history(adt.user_id)] == ["in"]  # nothing recorded
        # A stale lookup that said it accepts replies: the hub refuses, the message is failed.
        peer = await alice.lookup(user=adt.user_id)
        alice._peers._peers[adt.user_id] = replace(peer, replies=True)
        with pytest.raises(RepliesRefused):
            await alice.send(adt.user_id, "Merci")
        assert [e.status for e in alice.state.history(adt.user_id) if e.direction == "out"] == ["failed"]
        assert messages(await adt.drain(idle=0.2)) == []


async def test_a_service_accepting_replies_is_written_to(
    clinician: ClinicianFactory, hub: HubServer, tmp_path: Path
) -> None:
    alice_p = await clinician("alice", "10000000161")
    adt_p = await enroll_service(hub, tmp_path / "adt", "svc:provins-accueil", replies=True)
    async with connected(adt_p, alice_p) as (adt, alice):
        peer = await alice.resolve("svc:provins-accueil")
        assert peer.service and peer.replies
        message_id = await alice.send(peer.user, "Reçu, merci")
        [got] = messages(await adt.drain(idle=0.3))
        assert got.id == message_id and got.notice is None


# --- miss-notify -----------------------------------------------------------------


async def notify(*args: str) -> tuple[int, dict[str, object], str]:
    """``miss-notify ARGS`` in a subprocess, without ``$MISS_PASSPHRASE``:
    (exit status, its JSON, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "miss_client.notify",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "MISS_PASSPHRASE"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, json.loads(out.decode()), err.decode()


@pytest.mark.slow
async def test_miss_notify_enrolls_sends_once_and_says_why_it_fails(
    clinician: ClinicianFactory, hub: HubServer, tmp_path: Path
) -> None:
    from tests.support.authority import AUTHORITY_TEXT

    alice_p = await clinician("alice", "10000000171")
    code = await invite_service(hub)
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    profile = ["--profile", str(tmp_path / "adt"), "--passphrase-file", str(secret)]
    rc, out, err = await notify(
        "enroll",
        *profile,
        "--hub",
        hub.url,
        "--code",
        code,
        "--authority",
        AUTHORITY_TEXT,
        "--kdf",
        "interactive",
    )
    assert rc == 0, err
    await verify_on(hub, str(out["user"]))
    send = [
        "send",
        *profile,
        "--rpps",
        "10000000171",
        "--key",
        "ADT-0001",
        "--title",
        "Sortie de Mme MARTIN Paule",
        "--event",
        "discharge",
        "--at",
        "2026-01-02T14:30:00+01:00",
        "--field",
        "Patiente=MARTIN Paule",
        "--field",
        "IPP=000987654",
        "--reply",
        "Secrétariat : 01 64 60 40 10",
    ]
    rc, first, err = await notify(*send)
    assert rc == 0 and first["dup"] is False, err
    rc, again, err = await notify(*send)
    assert rc == 0 and again == {"id": first["id"], "dup": True}, err
    async with connected(alice_p) as (alice,):
        [got] = messages(await alice.drain(idle=0.3))
    assert got.notice == Notice(
        "Sortie de Mme MARTIN Paule",
        "discharge",
        1_767_360_600_000,
        (("Patiente", "MARTIN Paule"), ("IPP", "000987654")),
        "Secrétariat : 01 64 60 40 10",
    )
    # Refused: an unknown RPPS number (3); no passphrase and no prompt (2).
    unknown = [*send[: send.index("--rpps") + 1], "10000000179", *send[send.index("--key") :]]
    unknown[unknown.index("ADT-0001")] = "ADT-0002"
    rc, out, err = await notify(*unknown)
    assert (rc, out["error"]) == (3, "unknown_user"), err
    rc, out, err = await notify("send", "--profile", str(tmp_path / "adt"), *send[5:])
    assert (rc, out["error"]) == (2, "usage") and "passphrase" in str(out["message"]), err
