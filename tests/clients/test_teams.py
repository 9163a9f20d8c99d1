"""Care teams, notices, recall and lifespan in the SDK (SPEC §13), against the
real in-process hub with real NaCl keys: who gets a team message, what a
removed or departed member gets, a hub that lies about a team (a member
nobody signed, different chains for different members), recall before and
after delivery, expiry, and read notices."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from miss_client import Client, Message, Profile
from miss_client.errors import TeamDiverged, TeamTampered, UnknownMessage
from miss_client.models import Event, ReadBy, Recalled, TeamEvent, TeamProblemFound

from miss_server.app import HubServer
from protocol import crypto
from protocol import frames as f
from protocol.crypto import new_message_id
from protocol.errors import NotMember
from tests.support.clock import now_ms
from tests.support.team_tamper import TeamOperator
from tests.support.verified_hubs import ClinicianFactory, enroll_linked

HOUR_MS = 3_600_000
RPPS = {"alice": "10000000001", "bob": "10000000002", "carol": "10000000003", "dave": "10000000004"}


@contextlib.asynccontextmanager
async def connected(*profiles: Profile) -> AsyncIterator[list[Client]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Client.connect(p)) for p in profiles]


async def clinicians(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path, names: Sequence[str], devices: int = 1
) -> dict[str, list[Profile]]:
    """Each clinician of ``names`` with ``devices`` verified devices."""
    out: dict[str, list[Profile]] = {}
    for name in names:
        first = await clinician(name, RPPS[name])
        out[name] = [first]
        for i in range(1, devices):
            out[name].append(await enroll_linked(hub, first, tmp_path / f"{name}{i + 1}", f"device {i + 1}"))
    return out


def messages(events: Sequence[Event], team: str | None = None) -> list[Message]:
    return [e for e in events if isinstance(e, Message) and (team is None or e.team == team)]


def raw_bytes(profile: Profile) -> bytes:
    """Everything the state database holds on disk (file and WAL)."""
    data = b""
    for name in ("state.db", "state.db-wal"):
        path = profile.directory / name
        if path.exists():
            data += path.read_bytes()
    return data


def sealed_row(profile: Profile, from_user: str, message_id: bytes) -> bytes:
    db = sqlite3.connect(profile.directory / "state.db")
    try:
        row = db.execute(
            "SELECT sealed FROM messages WHERE from_user = ? AND id = ?", (from_user, message_id)
        ).fetchone()
    finally:
        db.close()
    assert row is not None
    return bytes(row[0])


async def test_a_team_of_four_with_two_devices_each_gets_a_message_once_per_device(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    people = await clinicians(hub, clinician, tmp_path, ["alice", "bob", "carol", "dave"], devices=2)
    users = {name: ps[0].user_id for name, ps in people.items()}
    every = [p for ps in people.values() for p in ps]
    async with connected(*every) as clients:
        alice = clients[0]
        team = await alice.create_team("Cardio garde", "CHRU Test", 24 * HOUR_MS)
        for name in ("bob", "carol", "dave"):
            view = await alice.add_member(team, RPPS[name])
        assert set(view.members) == set(users.values()) and view.admins == (users["alice"],)
        message_id = await alice.send(team, "Patient du lit 12 : avis cardio ?")
        for profile, client in zip(every[1:], clients[1:], strict=True):
            got = messages(await client.drain(idle=0.5), team)
            assert [m.id for m in got] == [message_id], f"{profile.directory.name} got {len(got)} copies"
            assert got[0].body == "Patient du lit 12 : avis cardio ?"
            assert got[0].expires_at is not None  # the team's default lifespan applies
            seen = await client.team(team)
            assert seen.members == view.members and seen.problem is None
        # the sender's other device got its copy too, as ours
        second = clients[1]
        [copy] = [e for e in second.state.history(team) if e.id == message_id]
        assert copy.direction == "out"


async def test_removed_member_gets_nothing_and_a_member_who_left_is_refused(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    people = await clinicians(hub, clinician, tmp_path, ["alice", "bob", "carol"])
    async with connected(*(ps[0] for ps in people.values())) as (alice, bob, carol):
        team = await alice.create_team("Soins continus")
        await alice.add_member(team, RPPS["bob"])
        await alice.add_member(team, RPPS["carol"])
        await alice.send(team, "avant")
        assert [m.body for m in messages(await carol.drain(idle=0.5), team)] == ["avant"]
        view = await alice.remove_member(team, RPPS["carol"])
        assert carol.user_id not in view.members
        await alice.send(team, "après le retrait")
        carol_events = await carol.drain(idle=0.7)
        assert messages(carol_events, team) == []
        assert any(isinstance(e, TeamEvent) and e.op == "remove" for e in carol_events)
        assert carol.user_id not in (await carol.team(team)).members
        with pytest.raises(NotMember):
            await carol.send(team, "je suis encore là ?")
        assert [m.body for m in messages(await bob.drain(idle=0.5), team)] == ["avant", "après le retrait"]
        await bob.leave_team(team)
        with pytest.raises(NotMember):
            await bob.send(team, "parti")
        history = [e for e in bob.state.history(team) if e.body == "parti"]
        assert history == []  # refused before anything was recorded or sent


async def test_a_member_nobody_signed_is_detected_and_gets_nothing(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    people = await clinicians(hub, clinician, tmp_path, ["alice", "bob", "dave"])
    async with connected(*(ps[0] for ps in people.values())) as (alice, bob, dave):
        team = await alice.create_team("Réa nuit")
        await alice.add_member(team, RPPS["bob"])
        await TeamOperator(hub).insert_member(team, dave.user_id)
        with pytest.raises(TeamTampered) as raised:
            await alice.send(team, "secret médical")
        assert "Réa nuit" in str(raised.value) and "personne n'a signée" in str(raised.value)
        view = await alice.team(team)
        assert view.problem == "tampered" and dave.user_id not in view.members
        assert any(isinstance(e, TeamProblemFound) for e in await alice.drain(idle=0.3))
        # nothing was encrypted to the inserted user, nor to anyone
        assert messages(await dave.drain(idle=0.5)) == []
        assert messages(await bob.drain(idle=0.3), team) == []
        with pytest.raises(TeamTampered):
            await alice.send(team, "encore")


async def test_members_shown_different_chains_see_it_on_the_next_message(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    people = await clinicians(hub, clinician, tmp_path, ["alice", "bob", "carol"])
    async with connected(*(ps[0] for ps in people.values())) as (alice, bob, carol):
        team = await alice.create_team("Urgences")
        await alice.add_member(team, RPPS["bob"])
        await bob.drain(idle=0.5)
        assert (await bob.team(team)).problem is None
        TeamOperator(hub).freeze_chain_for(bob.user_id, records=2)  # bob never sees what follows
        await alice.add_member(team, RPPS["carol"])
        await alice.send(team, "bienvenue Carol")
        events = await bob.drain(idle=0.7)
        problems = [e for e in events if isinstance(e, TeamProblemFound)]
        assert [p.problem for p in problems] == ["diverged"]
        assert problems[0].text == "Les membres de l'équipe ne voient pas la même liste : envoi bloqué"
        with pytest.raises(TeamDiverged):
            await bob.send(team, "réponse")
        assert messages(await alice.drain(idle=0.3), team) == []
        # carol, shown the same chain as alice, is fine
        assert [m.body for m in messages(await carol.drain(idle=0.5), team)] == ["bienvenue Carol"]


async def test_recall_before_and_after_delivery(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    people = await clinicians(hub, clinician, tmp_path, ["alice", "bob"])
    alice_p, bob_p = people["alice"][0], people["bob"][0]
    async with connected(alice_p) as (alice,):
        early = await alice.send(bob_p.user_id, "erreur de patient, ne pas lire")
        assert await alice.recall(early) == 1  # bob's device had not acked it: the hub deleted it
        assert alice.state.get_message(alice.user_id, early).shown_body == "message retiré"  # type: ignore[union-attr]
    async with connected(bob_p) as (bob,):
        events = await bob.drain(idle=0.5)
        assert messages(events) == []
        assert bob.state.history(alice_p.user_id) == []
    async with connected(alice_p, bob_p) as (alice, bob):
        late = await alice.send(bob_p.user_id, "posologie : 5 mg")
        assert len(messages(await bob.drain(idle=0.5))) == 1
        sealed = sealed_row(bob_p, alice.user_id, late)
        assert sealed in raw_bytes(bob_p)
        assert await alice.recall(late) == 0
        events = await bob.drain(idle=0.5)
        assert [type(e) for e in events if isinstance(e, Recalled)] == [Recalled]
        [entry] = [e for e in bob.state.history(alice_p.user_id) if e.id == late]
        assert entry.gone == "recalled" and entry.shown_body == "message retiré" and entry.body == ""
        assert sealed not in raw_bytes(bob_p)


async def test_a_recalled_id_that_arrives_later_is_dropped(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    people = await clinicians(hub, clinician, tmp_path, ["alice", "bob"])
    async with connected(people["alice"][0], people["bob"][0]) as (alice, bob):
        # the notice comes first (as if the message were held up), then the message
        early_id = new_message_id()
        bob.state.recall_message(alice.user_id, early_id)
        assert bob.state.is_recalled(alice.user_id, early_id)
        await alice.send(bob.user_id, "ok", early_id)
        assert messages(await bob.drain(idle=0.5)) == []


async def test_lifespan_deletes_the_text_everywhere_when_over(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    people = await clinicians(hub, clinician, tmp_path, ["alice", "bob"])
    alice_p, bob_p = people["alice"][0], people["bob"][0]
    async with connected(alice_p, bob_p) as (alice, bob):
        message_id = await alice.send(bob.user_id, "code de la porte : 4512", lifespan_ms=HOUR_MS)
        [got] = messages(await bob.drain(idle=0.5))
        assert got.expires_at is not None and got.expires_at - got.sent_at == HOUR_MS
        sealed = sealed_row(bob_p, alice.user_id, message_id)
        assert [e.body for e in bob.state.history(alice.user_id)] == ["code de la porte : 4512"]
        start = now_ms()
        bob.state.clock = lambda: start + HOUR_MS - 1000
        assert bob.state.history(alice.user_id)[0].gone is None
        bob.state.clock = lambda: start + HOUR_MS + 1000
        alice.state.clock = bob.state.clock
        [entry] = bob.state.history(alice.user_id)
        assert entry.gone == "expired" and entry.shown_body == "message expiré"
        assert sealed not in raw_bytes(bob_p)
        assert alice.state.history(bob.user_id)[0].shown_body == "message expiré"


async def test_read_notices_reach_the_sender_unless_turned_off(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    people = await clinicians(hub, clinician, tmp_path, ["alice", "bob", "carol"])
    carol2 = await enroll_linked(hub, people["carol"][0], tmp_path / "carol2")
    async with connected(people["alice"][0], people["bob"][0], people["carol"][0], carol2) as clients:
        alice, bob, carol, carol_2 = clients
        to_bob = await alice.send(bob.user_id, "tu as vu le bilan ?")
        await bob.drain(idle=0.5)
        assert await bob.mark_read(alice.user_id) == 1
        assert await bob.mark_read(alice.user_id) == 0  # never twice
        events = await alice.drain(idle=0.5)
        assert [(e.user, e.ids) for e in events if isinstance(e, ReadBy)] == [(bob.user_id, (to_bob,))]
        assert alice.state.get_message(alice.user_id, to_bob).read_by == (bob.user_id,)  # type: ignore[union-attr]
        # carol turns read receipts off: alice learns nothing, carol's other device does
        carol.set_read_receipts(False)
        to_carol = await alice.send(carol.user_id, "et toi ?")
        await carol.drain(idle=0.5)
        await carol_2.drain(idle=0.3)
        assert await carol.mark_read(alice.user_id) == 1
        assert [e for e in await alice.drain(idle=0.5) if isinstance(e, ReadBy)] == []
        own = [e for e in await carol_2.drain(idle=0.5) if isinstance(e, ReadBy)]
        assert [(e.user, e.ids) for e in own] == [(carol.user_id, (to_carol,))]
        assert carol_2.state.unread(alice.user_id) == []
        # a team message: the notice names the team
        team = await alice.create_team("Staff")
        await alice.add_member(team, RPPS["bob"])
        in_team = await alice.send(team, "réunion à 14 h")
        await bob.drain(idle=0.5)
        assert await bob.mark_read(team) == 1
        [read] = [e for e in await alice.drain(idle=0.5) if isinstance(e, ReadBy)]
        assert read.ids == (in_team,) and read.team == team


async def test_a_chain_nobody_signed_is_refused_and_blocks_sending(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    people = await clinicians(hub, clinician, tmp_path, ["alice", "bob", "carol"])
    async with connected(*(ps[0] for ps in people.values())) as (alice, bob, carol):
        TeamOperator(hub).forge_chain_for(bob.user_id)
        team = await alice.create_team("Pédiatrie")
        await alice.add_member(team, RPPS["bob"])
        await alice.add_member(team, RPPS["carol"])
        view = await bob.team(team)
        assert view.problem == "tampered" and view.members == ()
        assert view.problem_text == (
            "Le hub présente pour l'équipe Pédiatrie une liste de membres que personne n'a signée"
        )
        with pytest.raises(TeamTampered):
            await bob.send(team, "bonjour")
        assert bob.state.team_records(team) == []  # nothing unverified is kept
        assert (await carol.team(team)).problem is None


async def test_a_sender_behind_the_chain_retargets_with_the_same_id(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    people = await clinicians(hub, clinician, tmp_path, ["alice", "bob", "carol"])
    async with connected(*(ps[0] for ps in people.values())) as (alice, bob, carol):
        team = await alice.create_team("Bloc")
        await alice.add_member(team, RPPS["bob"])
        await bob.team(team)
        await alice.add_member(team, RPPS["carol"])
        # bob has not read the team_changed push: his head is the old one
        assert carol.user_id not in bob.state.get_team(team).members  # type: ignore[union-attr]
        message_id = await bob.send(team, "on commence à 8 h")
        assert carol.user_id in bob.state.get_team(team).members  # type: ignore[union-attr]
        assert [m.id for m in messages(await carol.drain(idle=0.5), team)] == [message_id]
        assert [m.id for m in messages(await alice.drain(idle=0.3), team)] == [message_id]
        [entry] = [e for e in bob.state.history(team) if e.id == message_id]
        assert entry.status == "accepted"


async def test_a_team_message_recalled_after_delivery_leaves_every_member(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    people = await clinicians(hub, clinician, tmp_path, ["alice", "bob", "carol"])
    bob_p, carol_p = people["bob"][0], people["carol"][0]
    async with connected(*(ps[0] for ps in people.values())) as (alice, bob, carol):
        team = await alice.create_team("Oncologie", lifespan_ms=48 * HOUR_MS)
        await alice.add_member(team, RPPS["bob"])
        await alice.add_member(team, RPPS["carol"])
        message_id = await alice.send(team, "résultat du patient X : positif")
        for client in (bob, carol):
            assert [m.id for m in messages(await client.drain(idle=0.5), team)] == [message_id]
        sealed = {p.user_id: sealed_row(p, alice.user_id, message_id) for p in (bob_p, carol_p)}
        assert await alice.recall(message_id) == 0
        for client, profile in ((bob, bob_p), (carol, carol_p)):
            recalls = [e for e in await client.drain(idle=0.5) if isinstance(e, Recalled)]
            assert [(r.id, r.conversation, r.known) for r in recalls] == [(message_id, team, True)]
            [entry] = [e for e in client.state.history(team) if e.id == message_id]
            assert entry.shown_body == "message retiré"
            assert sealed[profile.user_id] not in raw_bytes(profile)
        # only the original sender's notice counts: bob cannot recall alice's message
        again = await alice.send(team, "second message")
        await bob.drain(idle=0.3)
        await carol.drain(idle=0.3)
        with pytest.raises(UnknownMessage):
            await bob.recall(again)
        # a recall notice of bob's about it (a modified client) changes nothing
        await bob._outbox.send_notice(team, "recall", [again], to_team=True)
        await carol.drain(idle=0.5)
        assert [e.shown_body for e in carol.state.history(team) if e.id == again] == ["second message"]


async def test_a_read_notice_is_as_long_as_a_short_message_on_the_wire(
    hub: HubServer, clinician: ClinicianFactory, tmp_path: Path
) -> None:
    people = await clinicians(hub, clinician, tmp_path, ["alice", "bob"])
    async with connected(people["alice"][0], people["bob"][0]) as (alice, bob):
        await alice.send(bob.user_id, "bonjour")
        await bob.drain(idle=0.5)
        sent: list[f.Send] = []
        original = bob._router.send

        async def spy(data: bytes) -> None:
            frame = f.decode(data, f.CLIENT_FRAMES)
            if isinstance(frame, f.Send):
                sent.append(frame)
            await original(data)

        bob._router.send = spy  # type: ignore[method-assign]
        await bob.mark_read(alice.user_id)
        await bob.send(alice.user_id, "ok")
        await bob.send(alice.user_id, "d'accord, je passe à 15 h")
        notice, short, longer = (len(next(iter(s.envs.values()))) for s in sent)
        assert notice == short == longer
        assert (notice - crypto.NONCE_BYTES - crypto.MAC_BYTES) % 256 == 0
