"""The backup and restore scenario that tests/server/test_backup.py (embedded
store, ``miss-admin backup``) and tests/multinode/test_backup_postgres.py
(PostgreSQL, the commands of docs/OPERATIONS.md) both run.

1. :func:`before_backup`: three clinicians enrolled with the SDK and
   verified (attestations); alice makes a team with bob; bob's device, offline
   all along, has three 1:1 messages and one team message queued; carol has
   one queued.
2. :func:`during_backup`: the backup runs while alice keeps sending to
   carol (the store changes under it).
3. :func:`after_backup`: carol keeps and acks all hers, and alice sends bob
   one message more: the backup holds neither fact.
4. (the hub stopped, its store wiped and restored)
5. :func:`check_restored`: bob receives exactly the messages queued at the
   backup, decrypted (the SDK opens a message only from a sender whose
   attestation verifies), not the one sent after; carol, whose acks came after
   the backup, gets her messages again and her client shows none of them
   twice (SPEC §6.4: ids already kept are dropped); the team is there with
   its members; new messages flow both ways, to the user and to the team.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from miss_client import Client, Message, Profile

from miss_server.app import HubServer
from tests.support.verified_hubs import enroll_clinician

T = TypeVar("T")


def messages(events: list[object]) -> list[Message]:
    return [e for e in events if isinstance(e, Message)]


async def inbox(profile: Profile, url: str) -> list[Message]:
    """Connect ``profile`` to the hub at ``url``: the new messages it shows."""
    async with Client.connect(profile, url=url) as client:
        return messages(await client.drain(idle=1.5))


@dataclass
class Scenario:
    alice: Profile
    bob: Profile
    carol: Profile
    team: str
    #: What waits for bob's offline device when the backup is taken.
    queued: set[bytes]
    #: alice's message to carol before the backup, acked by carol after it.
    acked_later: bytes
    sent_during: list[bytes] = field(default_factory=list)
    #: A message to bob accepted after the backup (not in it).
    lost: bytes = b""


async def before_backup(hub: HubServer, directory: Path) -> Scenario:
    alice = await enroll_clinician(hub, directory / "alice", "alice", "10000000001")
    bob = await enroll_clinician(hub, directory / "bob", "bob", "10000000002")
    carol = await enroll_clinician(hub, directory / "carol", "carol", "10000000003")
    async with Client.connect(alice) as a:
        team = await a.create_team("Cardio garde")
        await a.add_member(team, bob.user_id)
        queued = {await a.send(bob.user_id, f"avis n°{i} avant la sauvegarde") for i in range(3)}
        queued.add(await a.send(team, "à l'équipe, avant la sauvegarde"))
        acked_later = await a.send(carol.user_id, "reçu après la sauvegarde")
    return Scenario(alice, bob, carol, team, queued, acked_later)


async def during_backup(s: Scenario, take: Callable[[], Awaitable[T]]) -> T:
    """Run ``take`` (the backup) while alice sends to carol without pause;
    its result. The messages accepted meanwhile are in ``s.sent_during``."""
    done = asyncio.Event()
    async with Client.connect(s.alice) as a:

        async def steady() -> None:
            while not done.is_set():
                s.sent_during.append(await a.send(s.carol.user_id, f"pendant {len(s.sent_during)}"))

        sender = asyncio.create_task(steady())
        try:
            return await take()
        finally:
            done.set()
            await sender


async def after_backup(s: Scenario, url: str) -> None:
    got = await inbox(s.carol, url)
    assert {m.id for m in got} == {s.acked_later, *s.sent_during}
    async with Client.connect(s.alice, url=url) as a:
        s.lost = await a.send(s.bob.user_id, "après la sauvegarde")


async def check_restored(s: Scenario, url: str) -> str:
    """Assert what a restore must bring back (module doc) on the hub at
    ``url``; a line saying what bob received, for the test to print."""
    got = await inbox(s.bob, url)
    assert {m.id for m in got} == s.queued and len(got) == len(s.queued)
    assert s.lost not in {m.id for m in got}
    assert "à l'équipe, avant la sauvegarde" in {m.body for m in got}
    assert all(m.from_user == s.alice.user_id for m in got)
    assert await inbox(s.carol, url) == []
    async with Client.connect(s.alice, url=url) as a, Client.connect(s.bob, url=url) as b:
        view = await a.team(s.team)
        assert {s.alice.user_id, s.bob.user_id} <= set(view.members)
        fresh = await a.send(s.bob.user_id, "après la restauration")
        to_team = await a.send(s.team, "équipe, après la restauration")
        new = messages(await b.drain(idle=1.0))
        assert {m.id for m in new} == {fresh, to_team}
        answer = await b.send(s.alice.user_id, "bien reçu")
        assert answer in {m.id for m in messages(await a.drain(idle=1.0))}
    return (
        f"after restore: bob received {len(got)} of {len(s.queued)} queued message(s), "
        f"carol, who had kept her {1 + len(s.sent_during)} after the backup, saw none of them twice"
    )
