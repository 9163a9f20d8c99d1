"""The Store's on-call roles and urgent messages (SPEC §14), on every Store.

Roles and their holders (manual, scheduled), handovers and caps; then an
urgent message's life: primary rows at once, backups' rows held until their
step fires (then queued with new seqs, seen by a drain), statuses for the
sender, reminders, the final deadline, the first acknowledgement deleting
what is still held, and held rows going with their body (recall, expiry).
Times are passed explicitly: nothing sleeps.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import msgpack
import pytest

from miss_server.store.base import EscalationDue, EscalationPlan, Kind, NewTeamMessage, Queued, Shift, Store
from miss_server.store.postgres import PostgresStore
from tests.support.store_samples import DAY, NOW, user_with_devices

DSN = os.environ.get("MISS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

ROLE_ID = "r_00112233445566aa"
HOUR = 3_600_000


def _status(q: Queued) -> list[object]:
    return list(msgpack.unpackb(q.payload, raw=False))


# --- roles ------------------------------------------------------------------------------


async def test_roles_are_created_found_and_deleted(store: Store) -> None:
    r1 = await store.create_role("Cardiologie — senior de garde", "CHRU", False, None, NOW)
    r2 = await store.create_role("Réanimation", "Clinique Pasteur", True, b"\x83policy", NOW)
    assert r1.role.startswith("r_") and len(r1.role) == 18 and r1.role != r2.role
    assert await store.get_role(r2.role) == r2 and r2.reserved and r2.policy == b"\x83policy"
    assert await store.get_role("r_ffffffffffffffff") is None
    # Case and accents folded, on the name or the org; empty query: everything.
    assert [r.role for r in await store.search_roles("REANIM", 20, NOW)] == [r2.role]
    assert [r.role for r in await store.search_roles("pasteur", 20, NOW)] == [r2.role]
    assert [r.role for r in await store.search_roles("senior de", 20, NOW)] == [r1.role]
    assert len(await store.search_roles("", 20, NOW)) == 2
    assert len(await store.search_roles("", 1, NOW)) == 1
    assert await store.search_roles("nothing", 20, NOW) == []
    assert [r.role for r in await store.list_roles()] == [r1.role, r2.role]
    assert await store.set_role_policy(r1.role, b"p") and (await store.get_role(r1.role)).policy == b"p"  # type: ignore[union-attr]
    assert await store.set_role_policy(r1.role, None) and (await store.get_role(r1.role)).policy is None  # type: ignore[union-attr]
    assert not await store.set_role_policy("r_ffffffffffffffff", None)
    alice, _ = await user_with_devices(store, "10000000001", 1)
    await store.assign_role(r1.role, alice, NOW)
    assert await store.delete_role(r1.role) and not await store.delete_role(r1.role)
    assert await store.get_role(r1.role) is None and await store.user_roles(alice, NOW) == []


async def test_holders_are_manual_and_scheduled_shifts_at_their_bounds(store: Store) -> None:
    role = await store.create_role("Garde", "CHRU", False, None, NOW)
    alice, _ = await user_with_devices(store, "10000000001", 1)
    bob, _ = await user_with_devices(store, "10000000002", 1)
    assert await store.role_holders(role.role, NOW) == []
    assert await store.assign_role(role.role, alice, NOW)
    assert not await store.assign_role("r_ffffffffffffffff", alice, NOW)
    n = await store.replace_shifts([Shift(role.role, bob, NOW + HOUR, NOW + 2 * HOUR)], [role.role])
    assert n == 1
    assert await store.role_holders(role.role, NOW + HOUR - 1) == [alice]
    assert await store.role_holders(role.role, NOW + HOUR) == sorted([alice, bob])  # start included
    assert await store.role_holders(role.role, NOW + 2 * HOUR - 1) == sorted([alice, bob])
    assert await store.role_holders(role.role, NOW + 2 * HOUR) == [alice]  # end excluded
    assert [r.role for r in await store.user_roles(bob, NOW + HOUR)] == [role.role]
    assert await store.user_roles(bob, NOW) == []
    assert await store.shifts(role.role, NOW) == [Shift(role.role, bob, NOW + HOUR, NOW + 2 * HOUR)]
    assert await store.shifts(role.role, NOW + 2 * HOUR) == []
    # An import replaces the role's shifts whole.
    await store.replace_shifts([Shift(role.role, alice, NOW, NOW + HOUR)], [role.role])
    assert await store.shifts(role.role, 0) == [Shift(role.role, alice, NOW, NOW + HOUR)]
    assert await store.role_holders(role.role, NOW + HOUR) == [alice]
    assert await store.unassign_role(role.role, alice) and not await store.unassign_role(role.role, alice)
    assert await store.role_holders(role.role, NOW + HOUR) == []
    # At most 16 holders, by user id.
    many = [(await user_with_devices(store, f"2000000{i:04d}", 0))[0] for i in range(18)]
    await store.replace_shifts([Shift(role.role, u, NOW, NOW + HOUR) for u in many], [role.role])
    assert await store.role_holders(role.role, NOW) == sorted(many)[:16]


async def test_take_hands_over_join_adds_leave_and_the_caps(store: Store) -> None:
    role = await store.create_role("Garde", "CHRU", False, None, NOW)
    other = await store.create_role("Astreinte", "CHRU", False, None, NOW)
    alice, _ = await user_with_devices(store, "10000000001", 1)
    bob, _ = await user_with_devices(store, "10000000002", 1)
    carol, _ = await user_with_devices(store, "10000000003", 1)
    await store.replace_shifts([Shift(role.role, carol, NOW, NOW + HOUR)], [role.role])
    assert await store.take_role(role.role, alice, False, NOW, 16) == (True, [])
    assert await store.take_role(role.role, bob, True, NOW, 16) == (True, [])
    assert await store.role_holders(role.role, NOW) == sorted([alice, bob, carol])
    # A handover releases the other manual holders, not the scheduled one.
    assert await store.take_role(role.role, alice, False, NOW, 16) == (True, [bob])
    assert await store.role_holders(role.role, NOW) == sorted([alice, carol])
    # role_full: bob already holds one role manually, at a cap of one.
    assert await store.take_role(other.role, bob, False, NOW, 16) == (True, [])
    assert await store.take_role(role.role, bob, True, NOW, 1) == (False, [])
    assert await store.role_holders(role.role, NOW) == sorted([alice, carol])
    # Taking a role one holds already does not count against the cap.
    assert await store.take_role(other.role, bob, False, NOW, 1) == (True, [])
    # Leave: the manual holdership only; leaving what one does not hold is fine.
    assert await store.leave_role(role.role, alice)
    assert not await store.leave_role(role.role, alice)
    assert not await store.leave_role(role.role, carol)
    assert await store.role_holders(role.role, NOW) == [carol]
    try:
        await store.take_role("r_ffffffffffffffff", alice, False, NOW, 16)
    except LookupError:
        pass
    else:
        raise AssertionError("an unknown role is a LookupError")
    events = await store.audit_log(actions=["role.taken", "role.left"], oldest=True)
    assert [(e.action, e.user_id) for e in events] == [
        ("role.taken", alice),
        ("role.taken", bob),
        ("role.taken", alice),
        ("role.taken", bob),
        ("role.taken", bob),
        ("role.left", alice),
    ]
    assert f"released={bob}" in events[2].detail and role.role in events[2].detail


async def test_organisation_default_policies(store: Store) -> None:
    assert await store.get_org_policy("CHRU") is None
    await store.set_org_policy("CHRU", 60_000, 300_000)
    await store.set_org_policy("CHRU", 90_000, 600_000)
    await store.set_org_policy("Clinique", 120_000, 900_000)
    got = await store.get_org_policy("CHRU")
    assert got is not None and (got.org, got.interval, got.final) == ("CHRU", 90_000, 600_000)


# --- urgent messages ---------------------------------------------------------------------


class Scene:
    """Alice (a1, a2) sends an urgent message to a role held by bob (b1);
    step 1 is the role of carol (c1, c2), step 2 dave (d1). Reminders every
    second; steps at +5 s and +10 s; final at +20 s."""

    def __init__(self) -> None:
        self.alice = self.bob = self.carol = self.dave = self.eve = ""
        self.a1 = self.a2 = self.b1 = self.c1 = self.c2 = self.d1 = self.e1 = ""

    async def setup(self, store: Store) -> Scene:
        self.alice, (self.a1, self.a2) = await user_with_devices(store, "10000000001", 2)
        self.bob, (self.b1,) = await user_with_devices(store, "10000000002", 1)
        self.carol, (self.c1, self.c2) = await user_with_devices(store, "10000000003", 2)
        self.dave, (self.d1,) = await user_with_devices(store, "10000000004", 1)
        self.eve, (self.e1,) = await user_with_devices(store, "10000000005", 1)
        return self

    def message(self, mid: int = 1, ts: int = NOW, ttl: int = DAY) -> NewTeamMessage:
        return NewTeamMessage(
            mid.to_bytes(16, "big"),
            self.alice,
            self.a1,
            ROLE_ID,
            b"B" * 300,
            {self.b1: b"w" * 72, self.a2: b"x" * 72},
            ts,
            ts + ttl,
            urgent=True,
            held={1: {self.c1: b"c" * 72, self.c2: b"C" * 72}, 2: {self.d1: b"d" * 72}},
            plan=EscalationPlan(
                1000,
                (ts + 5000, ts + 10_000, ts + 20_000),
                ((self.alice, self.bob), (self.carol,), (self.dave,)),
                ("r_0000000000000003", self.dave),
            ),
            role=ROLE_ID,
        )


async def test_primary_rows_at_once_backups_held(store: Store) -> None:
    s = await Scene().setup(store)
    m = s.message()
    result = await store.accept_team(m)
    assert sorted(q.device_id for q in result.queued) == sorted([s.b1, s.a2])
    (row,) = await store.pending(s.b1, 0, 10, NOW)
    assert (row.kind, row.team, row.role, row.urgent, row.step, row.body) == (
        Kind.TEAM,
        ROLE_ID,
        ROLE_ID,
        True,
        None,
        m.body,
    )
    assert row == next(q for q in result.queued if q.device_id == s.b1)
    assert await store.pending(s.c1, 0, 10, NOW) == [] and await store.pending(s.d1, 0, 10, NOW) == []
    assert await store.held_rows(s.alice, m.message_id) == 3
    state = await store.escalation_state(s.alice, m.message_id)
    assert state is not None and (state["state"], state["step"], state["held"]) == ("open", 0, 3)
    assert await store.escalation_state(s.bob, m.message_id) is None
    # Nothing due before the first reminder: no work, no rows.
    assert await store.due_escalations(NOW + 999, 10) == []
    # A duplicate stores nothing: no second escalation, no second held rows.
    assert (await store.accept_team(m)).duplicate
    assert await store.held_rows(s.alice, m.message_id) == 3
    # Held rows are counted in what the store holds for the message.
    assert await store.stored_bytes(s.alice, m.message_id) > 300 + 5 * 72


async def test_steps_release_held_rows_with_new_seqs_then_final(store: Store) -> None:
    s = await Scene().setup(store)
    m = s.message()
    first = (await store.accept_team(m)).queued
    # A message accepted meanwhile takes seqs after the primaries.
    later = (
        await store.accept_team(
            NewTeamMessage(
                b"\x09" * 16, s.eve, s.e1, "t_0011223344556677", b"b", {s.c1: b"z" * 72}, NOW, NOW + DAY
            )
        )
    ).queued
    (c1_cursor,) = [q.seq for q in later]
    done = await store.due_escalations(NOW + 5000, 10)
    kinds = [(d.kind, d.step) for d in done]
    assert kinds == [("step", 1), ("remind", 1)]
    step = done[0]
    assert (step.sender_user, step.message_id, step.target) == (s.alice, m.message_id, "r_0000000000000003")
    assert sorted(q.device_id for q in step.released) == sorted([s.c1, s.c2])
    assert all(q.seq > max(x.seq for x in first) and q.seq > c1_cursor for q in step.released)
    assert all((q.step, q.urgent, q.role, q.kind) == (1, True, ROLE_ID, Kind.TEAM) for q in step.released)
    # The backup's drain past its cursor sees its released row.
    (got,) = await store.pending(s.c1, c1_cursor, 10, NOW + 5000)
    assert got == next(q for q in step.released if q.device_id == s.c1)
    assert got.payload == b"c" * 72 and got.body == m.body
    # `escalated` statuses for alice's attested devices.
    assert sorted(q.device_id for q in step.statuses) == sorted([s.a1, s.a2])
    assert all(q.kind is Kind.URGENT_STATUS and q.peer_user == s.alice for q in step.statuses)
    assert _status(step.statuses[0]) == ["escalated", 1, None, None, "r_0000000000000003"]
    pending_a1 = await store.pending(s.a1, 0, 10, NOW + 5000)
    assert [q.kind for q in pending_a1] == [Kind.URGENT_STATUS]
    # The reminder: bob and now carol (not alice, the sender).
    assert set(done[1].remind_users) == {s.bob, s.carol} and done[1].n == 1
    assert await store.held_rows(s.alice, m.message_id) == 1
    # Exactly once: the same time again does nothing.
    assert await store.due_escalations(NOW + 5000, 10) == []
    # Step 2, then (no acknowledgement) the final deadline.
    done = await store.due_escalations(NOW + 10_000, 10)
    assert [(d.kind, d.step) for d in done] == [("step", 2), ("remind", 2)]
    assert [q.device_id for q in done[0].released] == [s.d1] and done[0].target == s.dave
    assert await store.held_rows(s.alice, m.message_id) == 0
    done = await store.due_escalations(NOW + 20_000, 10)
    assert [d.kind for d in done] == ["final"]
    assert sorted(q.device_id for q in done[0].statuses) == sorted([s.a1, s.a2])
    assert _status(done[0].statuses[0]) == ["unacknowledged", 2, None, None, None]
    state = await store.escalation_state(s.alice, m.message_id)
    assert state is not None and state["state"] == "unacknowledged" and state["next_at"] is None
    assert await store.due_escalations(NOW + 60_000, 10) == []  # reminders stop
    events = await store.audit_log(actions=["urgent.escalated", "urgent.unacknowledged"], oldest=True)
    assert [(e.action, e.actor, e.user_id) for e in events] == [
        ("urgent.escalated", "hub", s.alice),
        ("urgent.escalated", "hub", s.alice),
        ("urgent.unacknowledged", "hub", s.alice),
    ]
    assert m.message_id.hex() in events[0].detail and "step=1" in events[0].detail


async def test_reminders_advance_and_are_not_caught_up(store: Store) -> None:
    s = await Scene().setup(store)
    m = s.message()
    await store.accept_team(m)
    done = await store.due_escalations(NOW + 1000, 10)
    assert [(d.kind, d.n, d.remind_users) for d in done] == [("remind", 1, (s.bob,))]
    assert await store.due_escalations(NOW + 1999, 10) == []
    assert [d.n for d in await store.due_escalations(NOW + 2000, 10)] == [2]
    # Far behind (a hub down for a while): one reminder, the next an interval after now.
    assert [d.n for d in await store.due_escalations(NOW + 4500, 10)] == [3]
    assert await store.due_escalations(NOW + 4999, 10) == []  # 5000 is step 1's
    state = await store.escalation_state(s.alice, m.message_id)
    assert state is not None and state["next_at"] == NOW + 5000 and state["reminders"] == 3


async def test_the_first_acknowledgement_deletes_what_is_held(store: Store) -> None:
    s = await Scene().setup(store)
    m = s.message()
    await store.accept_team(m)
    await store.due_escalations(NOW + 5000, 10)  # step 1: carol's devices get their copy
    # Not a recipient (yet): dave's step is still held; eve never; the sender is no target.
    assert await store.acknowledge(s.alice, m.message_id, s.dave, s.d1, NOW + 6000, NOW + DAY) is None
    assert await store.acknowledge(s.alice, m.message_id, s.eve, s.e1, NOW + 6000, NOW + DAY) is None
    assert await store.acknowledge(s.alice, m.message_id, s.alice, s.a2, NOW + 6000, NOW + DAY) is None
    assert await store.acknowledge(s.alice, b"\x07" * 16, s.bob, s.b1, NOW + 6000, NOW + DAY) is None
    ack = await store.acknowledge(s.alice, m.message_id, s.carol, s.c2, NOW + 6000, NOW + DAY)
    assert ack is not None and ack.first
    assert (ack.user, ack.device, ack.at, ack.step, ack.deleted_held) == (s.carol, s.c2, NOW + 6000, 1, 1)
    # Statuses: alice's devices, bob's, carol's other device; not the acknowledging one.
    assert sorted(q.device_id for q in ack.statuses) == sorted([s.a1, s.a2, s.b1, s.c1])
    assert _status(ack.statuses[0]) == ["acknowledged", 1, s.carol, s.c2, None]
    assert all(q.kind is Kind.URGENT_STATUS for q in ack.statuses)
    # A status acked by its device earns no receipt.
    a1_rows = [q for q in ack.statuses if q.device_id == s.a1]
    assert await store.ack(s.a1, [q.seq for q in a1_rows], NOW + 6001, NOW + DAY) == []
    assert [q.kind for q in await store.pending(s.a1, 0, 10, NOW + 6001)] == [Kind.URGENT_STATUS]  # escalated
    assert await store.held_rows(s.alice, m.message_id) == 0
    assert await store.pending(s.d1, 0, 10, NOW + 30_000) == []  # dave never gets it
    # Nothing more to do: no step, no reminder, no final.
    assert await store.due_escalations(NOW + 30_000, 10) == []
    # A later acknowledgement reports the first.
    again = await store.acknowledge(s.alice, m.message_id, s.bob, s.b1, NOW + 7000, NOW + DAY)
    assert again is not None and not again.first
    assert (again.user, again.device, again.at, again.statuses, again.deleted_held) == (
        s.carol,
        s.c2,
        NOW + 6000,
        [],
        0,
    )
    events = await store.audit_log(actions=["urgent.acknowledged"])
    assert [(e.actor, e.user_id, e.device_id) for e in events] == [(s.carol, s.carol, s.c2)]
    state = await store.escalation_state(s.alice, m.message_id)
    assert state is not None and (state["state"], state["ack_user"]) == ("acknowledged", s.carol)


async def test_a_primary_acknowledges_before_any_step(store: Store) -> None:
    s = await Scene().setup(store)
    m = s.message()
    await store.accept_team(m)
    ack = await store.acknowledge(s.alice, m.message_id, s.bob, s.b1, NOW + 100, NOW + DAY)
    assert ack is not None and ack.first and ack.step == 0 and ack.deleted_held == 3
    assert sorted(q.device_id for q in ack.statuses) == sorted([s.a1, s.a2])
    for device in (s.c1, s.c2, s.d1):
        assert await store.pending(device, 0, 10, NOW + 30_000) == []
    assert await store.due_escalations(NOW + 30_000, 10) == []


async def test_recall_and_expiry_take_held_rows_and_escalations(store: Store) -> None:
    s = await Scene().setup(store)
    m1, m2 = s.message(1), s.message(2, ttl=HOUR)
    await store.accept_team(m1)
    await store.accept_team(m2)
    # Recall: primaries counted, held rows counted, the escalation gone.
    assert await store.recall(s.alice, m1.message_id) == 2 + 3
    assert await store.held_rows(s.alice, m1.message_id) == 0
    assert await store.escalation_state(s.alice, m1.message_id) is None
    # Every primary row acked: the body stays while held rows refer to it.
    for device in (s.b1, s.a2):
        rows = await store.pending(device, 0, 10, NOW)
        await store.ack(device, [r.seq for r in rows], NOW + 1, NOW + DAY)
    await store.expire(NOW + 2)
    assert await store.held_rows(s.alice, m2.message_id) == 3
    done = await store.due_escalations(NOW + 5000, 10)
    assert [d.kind for d in done] == ["step", "remind"] and len(done[0].released) == 2
    # Expiry with the body: held rows and the escalation go too.
    await store.expire(NOW + HOUR)
    assert await store.held_rows(s.alice, m2.message_id) == 0
    assert await store.escalation_state(s.alice, m2.message_id) is None
    assert await store.due_escalations(NOW + 2 * HOUR, 10) == []
    assert await store.pending(s.c1, 0, 10, NOW + HOUR) == []


async def test_due_escalations_takes_at_most_limit_escalations(store: Store) -> None:
    s = await Scene().setup(store)
    for mid in range(1, 6):
        await store.accept_team(s.message(mid))
    done = await store.due_escalations(NOW + 1000, 2)
    assert len({d.message_id for d in done}) == 2
    done = await store.due_escalations(NOW + 1000, 10)
    assert len({d.message_id for d in done}) == 3


async def test_open_escalations_counts_the_senders_open_unexpired_ones(store: Store) -> None:
    """What max_open_urgent_per_user caps: acknowledged, unacknowledged and
    expired escalations, and other senders', do not count."""
    s = await Scene().setup(store)
    assert await store.open_escalations(s.alice, NOW) == 0
    for mid in (1, 2, 3):
        await store.accept_team(s.message(mid))
    await store.accept_team(s.message(4, ttl=HOUR))
    assert (await store.accept_team(s.message(1))).duplicate  # a resend opens nothing
    assert await store.open_escalations(s.alice, NOW) == 4
    assert await store.open_escalations(s.bob, NOW) == 0
    await store.acknowledge(s.alice, (1).to_bytes(16, "big"), s.bob, s.b1, NOW + 100, NOW + DAY)
    assert await store.open_escalations(s.alice, NOW + 100) == 3
    assert await store.open_escalations(s.alice, NOW + HOUR) == 2  # message 4 expired
    # No acknowledgement by the final deadline: unacknowledged, no longer open.
    await store.due_escalations(NOW + 5000, 10)
    await store.due_escalations(NOW + 10_000, 10)
    await store.due_escalations(NOW + 20_000, 10)
    assert await store.open_escalations(s.alice, NOW + 20_000) == 0


# --- PostgreSQL: several hub nodes -----------------------------------------------------------


@pytest.fixture
async def two_nodes() -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores (two pools, as two hub nodes) on one schema of their own."""
    schema = "miss_test_" + secrets.token_hex(6)
    a = PostgresStore(DSN, schema=schema, pool_min=1, pool_max=4)
    b = PostgresStore(DSN, schema=schema, pool_min=1, pool_max=4)
    try:
        await a.migrate()
        await a.open()
        await b.open()
        yield a, b
    finally:
        await a.close()
        await b.close()
        conn = await asyncpg.connect(DSN)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()


def _key(d: EscalationDue) -> tuple[bytes, str, int, int]:
    return (d.message_id, d.kind, d.step, d.n)


async def test_two_nodes_perform_each_step_exactly_once(
    two_nodes: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two_nodes
    s = await Scene().setup(a)
    n = 30
    for mid in range(1, n + 1):
        await a.accept_team(s.message(mid))
    done: list[EscalationDue] = []
    for now in (NOW + 5000, NOW + 10_000, NOW + 20_000):
        # Both nodes poll at once, several times, each in small bites.
        results = await asyncio.gather(
            *(node.due_escalations(now, 4) for node in (a, b, a, b)),
            *(node.due_escalations(now, 100) for node in (b, a)),
        )
        done.extend(d for r in results for d in r)
        done.extend(await a.due_escalations(now, 1000))  # whatever the polls left
    counts = Counter(_key(d) for d in done)
    assert all(c == 1 for c in counts.values()), [k for k, c in counts.items() if c > 1]
    steps = Counter((d.kind, d.step) for d in done if d.kind != "remind")
    assert steps == {("step", 1): n, ("step", 2): n, ("final", 2): n}
    # Every released row exactly once, on its device, with distinct seqs.
    released = [q for d in done for q in d.released]
    assert len(released) == 3 * n and len({q.seq for q in released}) == 3 * n
    assert len(await a.pending(s.c1, 0, 1000, NOW + 20_000)) == n
    for mid in range(1, n + 1):
        assert await b.held_rows(s.alice, mid.to_bytes(16, "big")) == 0
    events = await a.audit_log(actions=["urgent.escalated"], limit=1000)
    assert len(events) == 2 * n


async def test_a_node_killed_mid_escalation_rolls_back_and_another_does_it(
    two_nodes: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two_nodes
    s = await Scene().setup(a)
    m = s.message()
    await a.accept_team(m)
    # A "node" claims the escalation and starts the release, then dies.
    dead = await asyncpg.connect(DSN, server_settings={"search_path": a.schema or "public"})
    try:
        tx = dead.transaction()
        await tx.start()
        await dead.execute("SELECT id FROM escalations FOR UPDATE")
        await dead.execute("DELETE FROM held_queue WHERE step = 1")
        assert await b.due_escalations(NOW + 5000, 10) == []  # claimed elsewhere: skipped, not waited for
    finally:
        dead.terminate()
    done = await b.due_escalations(NOW + 5000, 10)
    assert [(d.kind, d.step) for d in done] == [("step", 1), ("remind", 1)]
    assert sorted(q.device_id for q in done[0].released) == sorted([s.c1, s.c2])
