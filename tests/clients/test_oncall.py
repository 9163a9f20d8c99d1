"""The SDK's on-call roles and urgent messages (SPEC §14) against the real
hub in this process, with time-scaled policies (100 ms floor, 50 ms tick):
role search, take, handover, join and leave with ``role_changed`` events;
an urgent message to a role that escalates to a backup who opens the
original text, reminders as events, an acknowledgement that stops it and
tells the sender who; an early acknowledgement that keeps the backup's
copy unseen; urgent 1:1 messages; urgency that survives a restart and a
resend after the connection was lost."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from miss_client import Client
from miss_client.models import Event, Message
from miss_client.oncall_models import RoleHoldersChanged, UrgentReminded, UrgentStatusChanged
from miss_client.profile import Profile

from miss_server.app import HubServer
from protocol.crypto import new_message_id
from protocol.errors import NotRecipient, RoleForbidden, RoleReserved, RoleVacant
from protocol.oncall import Policy, Step, pack_policy
from tests.support.clock import now_ms
from tests.support.inprocess_hub import hub_settings
from tests.support.verified_hubs import ClinicianFactory

#: Settings that let a whole escalation run in about a second.
FAST = {"escalation_min_interval_ms": 100, "escalation_tick_ms": 50}
ORG = "CHRU Test"
TEXT = "Patient lit 12 : douleur thoracique, ECG modifié"


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubServer]:
    """The in-process hub, with time-scaled escalation settings."""
    async with HubServer(hub_settings(tmp_path, **FAST)) as server:
        yield server


async def make_role(
    hub: HubServer, name: str, *, org: str = ORG, reserved: bool = False, policy: Policy | None = None
) -> str:
    role = await hub.store.create_role(
        name, org, reserved, None if policy is None else pack_policy(policy), now_ms()
    )
    return role.role


async def wait_event(client: Client, match: Callable[[Event], bool], timeout: float = 5.0) -> Event:
    """The first event ``match`` accepts (others are consumed)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no such event")
        event = await asyncio.wait_for(client.receive(), left)
        if match(event):
            return event


async def none_within(client: Client, match: Callable[[Event], bool], seconds: float) -> list[Event]:
    """Every event of ``seconds``; asserts none matches."""
    events = await client.drain(idle=seconds, limit=seconds)
    assert not [e for e in events if match(e)], events
    return events


@contextlib.asynccontextmanager
async def connected(*profiles: Profile) -> AsyncIterator[list[Client]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Client.connect(p)) for p in profiles]


def is_message(message_id: bytes) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, Message) and e.id == message_id


def is_status(state: str) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, UrgentStatusChanged) and e.state == state


async def test_roles_search_take_handover_join_and_leave(clinician: ClinicianFactory, hub: HubServer) -> None:
    alice_p = await clinician("alice", "10000000001")
    bob_p = await clinician("bob", "10000000002")
    role = await make_role(hub, "Cardiologie — interne de garde")
    reserved = await make_role(hub, "Réanimation — senior (planning)", reserved=True)
    elsewhere = await make_role(hub, "Cardiologie — autre hôpital", org="CH Ailleurs")
    async with connected(alice_p, bob_p) as (alice, bob):
        found = await alice.roles.search("cardio")
        assert {v.role for v in found} == {role, elsewhere}
        assert next(v for v in found if v.role == role).vacant

        taken = await alice.roles.take(role)
        assert taken.holders == (alice.user_id,)
        assert [v.role for v in await alice.roles.search(mine=True)] == [role]
        assert await alice.roles.find("CARDIOLOGIE — interne de garde") == taken

        handed = await bob.roles.take(role)  # a handover: alice is released at once
        assert handed.holders == (bob.user_id,)
        # (her own take was announced to her first)
        changed = await wait_event(
            alice, lambda e: isinstance(e, RoleHoldersChanged) and alice.user_id not in e.holders
        )
        assert isinstance(changed, RoleHoldersChanged)
        assert changed.holders == (bob.user_id,) and changed.name == "Cardiologie — interne de garde"
        assert await alice.roles.search(mine=True) == []

        joined = await alice.roles.take(role, join=True)
        assert joined.holders == tuple(sorted((alice.user_id, bob.user_id)))
        left = await bob.roles.leave(role)
        assert left.holders == (alice.user_id,)
        assert (await bob.roles.leave(role)).holders == (alice.user_id,)  # not held: nothing changes

        with pytest.raises(RoleReserved):
            await alice.roles.take(reserved)
        with pytest.raises(RoleForbidden):
            await alice.roles.take(elsewhere)
        assert (await alice.roles.get(elsewhere)).holders == ()
        await alice.roles.leave(role)
        with pytest.raises(RoleVacant):
            await bob.send(role, "Quelqu'un de garde ?")


async def test_urgent_to_a_role_escalates_to_a_backup_who_reads_it_and_acknowledges(
    clinician: ClinicianFactory, hub: HubServer
) -> None:
    sophie_p, hugo_p, bea_p = [
        await clinician(n, r)
        for n, r in (("sophie", "10000000011"), ("hugo", "10000000012"), ("bea", "10000000013"))
    ]
    async with connected(sophie_p, hugo_p, bea_p) as (sophie, hugo, bea):
        policy = Policy(200, (Step(400, user=bea.user_id),), 3000)
        role = await make_role(hub, "Cardiologie — interne de garde", policy=policy)
        await hugo.roles.take(role)
        view = await sophie.roles.get(role)
        assert view.policy.steps[0].holders == (bea.user_id,)

        message_id = await sophie.send(role, TEXT, urgent=True)
        got = await wait_event(hugo, is_message(message_id))
        assert isinstance(got, Message)
        assert (got.body, got.role, got.urgent, got.step, got.to_user) == (TEXT, role, True, None, role)
        assert hugo.urgent_info(sophie.user_id, message_id).waiting  # type: ignore[union-attr]
        reminder = await wait_event(hugo, lambda e: isinstance(e, UrgentReminded))
        assert isinstance(reminder, UrgentReminded) and (reminder.id, reminder.n) == (message_id, 1)

        # Nobody acknowledged within the delay: the backup gets the original text.
        backup = await wait_event(bea, is_message(message_id))
        assert isinstance(backup, Message)
        assert (backup.body, backup.urgent, backup.step, backup.role) == (TEXT, True, 1, role)
        assert backup.peer == sophie.user_id  # in the conversation with the sender
        escalated = await wait_event(sophie, is_status("escalated"))
        assert isinstance(escalated, UrgentStatusChanged)
        assert (escalated.step, escalated.target) == (1, bea.user_id)
        assert sophie.urgent_info(sophie.user_id, message_id).state == "escalated"  # type: ignore[union-attr]

        ack = await bea.acknowledge(backup)
        assert ack.first and ack.user == bea.user_id and ack.device == bea.device_id
        again = await hugo.acknowledge(got)  # too late: the first one stands
        assert not again.first and again.user == bea.user_id

        done = await wait_event(sophie, is_status("acknowledged"))
        assert isinstance(done, UrgentStatusChanged) and done.user == bea.user_id
        info = sophie.urgent_info(sophie.user_id, message_id)
        assert info is not None and info.acknowledged and info.ack_user == bea.user_id and info.ack_at
        assert sophie.urgent_waiting("out") == []
        stopped = await wait_event(hugo, is_status("acknowledged"))
        assert isinstance(stopped, UrgentStatusChanged) and stopped.user == bea.user_id
        assert not hugo.urgent_info(sophie.user_id, message_id).waiting  # type: ignore[union-attr]
        await none_within(hugo, lambda e: isinstance(e, UrgentReminded), 0.5)  # reminders stopped
        with pytest.raises(NotRecipient):
            await sophie.acknowledge((sophie.user_id, new_message_id()))


async def test_an_early_acknowledgement_keeps_the_backup_copy_unseen(
    clinician: ClinicianFactory, hub: HubServer
) -> None:
    sophie_p, hugo_p, bea_p = [
        await clinician(n, r)
        for n, r in (("sophie", "10000000021"), ("hugo", "10000000022"), ("bea", "10000000023"))
    ]
    async with connected(sophie_p, hugo_p, bea_p) as (sophie, hugo, bea):
        backups = await make_role(hub, "Cardiologie — senior d'astreinte")
        await bea.roles.take(backups)
        role = await make_role(
            hub, "Cardiologie — interne", policy=Policy(300, (Step(800, role=backups),), 3000)
        )
        await hugo.roles.take(role)
        message_id = await sophie.send(role, TEXT, urgent=True)
        got = await wait_event(hugo, is_message(message_id))
        assert isinstance(got, Message)
        assert (await hugo.acknowledge(got)).first
        done = await wait_event(sophie, is_status("acknowledged"))
        assert isinstance(done, UrgentStatusChanged) and done.user == hugo.user_id and done.step == 0
        assert await hub.store.held_rows(sophie.user_id, message_id) == 0
        await none_within(bea, is_message(message_id), 1.2)


async def test_an_urgent_message_to_a_person_and_nobody_acknowledging(
    clinician: ClinicianFactory, hub: HubServer
) -> None:
    alice_p, bob_p = await clinician("alice", "10000000031"), await clinician("bob", "10000000032")
    async with connected(alice_p, bob_p) as (alice, bob):
        message_id = await alice.send(
            bob.user_id, "Rappelle-moi vite", urgent=True, interval_ms=200, final_ms=700
        )
        got = await wait_event(bob, is_message(message_id))
        assert (
            isinstance(got, Message) and got.urgent and got.role is None and got.body == "Rappelle-moi vite"
        )
        assert isinstance(await wait_event(bob, lambda e: isinstance(e, UrgentReminded)), UrgentReminded)
        await wait_event(alice, is_status("unacknowledged"))
        assert alice.urgent_info(alice.user_id, message_id).state == "unacknowledged"  # type: ignore[union-attr]
        plain = await alice.send(bob.user_id, "Pas urgent")
        later = await wait_event(bob, is_message(plain))
        assert (
            isinstance(later, Message) and not later.urgent and bob.urgent_info(alice.user_id, plain) is None
        )


async def test_urgency_survives_a_restart_and_a_lost_connection(
    clinician: ClinicianFactory, hub: HubServer
) -> None:
    alice_p, bob_p = await clinician("alice", "10000000041"), await clinician("bob", "10000000042")
    async with connected(alice_p, bob_p) as (alice, bob):
        message_id = await alice.send(bob.user_id, "Urgent : résultat critique", urgent=True)
        await wait_event(bob, is_message(message_id))
    # Both restart: the alert is still there, not acknowledged.
    async with connected(alice_p, bob_p) as (alice, bob):
        [waiting] = bob.urgent_waiting("in")
        assert (waiting.from_user, waiting.id, waiting.state) == (alice.user_id, message_id, "open")
        assert [w.id for w in alice.urgent_waiting("out")] == [message_id]
        await bob.acknowledge((alice.user_id, message_id))
        await wait_event(alice, is_status("acknowledged"))
        # An urgent message recorded but never accepted (the connection dropped):
        # the next connection resends it, urgent, with the same id.
        pending = new_message_id()
        alice.roles.state.record_out(pending, role=None, urgent=True)
        alice.state.record_outgoing(pending, bob.user_id, now_ms(), "text", "Toujours urgent")
    async with connected(alice_p, bob_p) as (alice, bob):
        assert bob.urgent_waiting("in") == []
        info = alice.urgent_info(alice.user_id, message_id)
        assert info is not None and info.acknowledged and info.ack_user == bob.user_id
        assert await alice.resend_pending() == [pending]
        got = await wait_event(bob, is_message(pending))
        assert isinstance(got, Message) and got.urgent and got.body == "Toujours urgent"


async def test_an_urgent_message_to_a_care_team(clinician: ClinicianFactory, hub: HubServer) -> None:
    alice_p, bob_p = await clinician("alice", "10000000051"), await clinician("bob", "10000000052")
    async with connected(alice_p, bob_p) as (alice, bob):
        team = await alice.create_team("Cardio garde", ORG)
        await alice.add_member(team, bob.user_id)
        message_id = await alice.send(team, "Arrêt cardiaque box 3", urgent=True, interval_ms=200)
        got = await wait_event(bob, is_message(message_id))
        assert isinstance(got, Message)
        assert (got.team, got.urgent, got.role, got.body) == (team, True, None, "Arrêt cardiaque box 3")
        assert isinstance(await wait_event(bob, lambda e: isinstance(e, UrgentReminded)), UrgentReminded)
        assert (await bob.acknowledge(got)).first
        done = await wait_event(alice, is_status("acknowledged"))
        assert isinstance(done, UrgentStatusChanged) and done.user == bob.user_id
