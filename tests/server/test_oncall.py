"""On-call roles and urgent messages on a real hub over real WebSockets
(SPEC §14), with time-scaled policies (100 ms floor, 50 ms tick): an urgent
message escalates step by step to backups who open the original text, stops
at the first acknowledgement with its held copies deleted unseen, follows
handovers and shifts at once, refuses bad input with typed errors and
changes nothing then, leaves its plaintext nowhere, and every new request
spends the device's budget."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from miss_server.app import HubServer
from miss_server.logs import JsonFormatter
from miss_server.store.base import AuditEvent
from protocol.frames import (
    CAP_ONCALL,
    CAP_REFUSALS,
    CAP_TEAMS,
    Accepted,
    Acknowledge,
    AcknowledgeOk,
    Deliver,
    Error,
    Frame,
    LinkCode,
    LinkCodeOk,
    RoleChanged,
    RoleGet,
    RoleLeave,
    RoleOk,
    RoleSearch,
    RoleSearchOk,
    RoleTake,
    Send,
    Urgent,
    UrgentReminder,
    UrgentStatus,
)
from protocol.oncall import Policy, Step, pack_policy
from tests.support.admin_cli import Admin
from tests.support.inprocess_hub import HubFactory, hub_settings
from tests.support.oncall_wire import OncallDevice, keys, opened, sealed
from tests.support.pg_hub import postgres_store_url
from tests.support.store_fixtures import POSTGRES_DSN
from tests.support.team_wire import now_ms
from tests.support.verified_hubs import verify_on
from tests.support.wire import invite

#: Settings that let a whole escalation run in about a second.
FAST = {"escalation_min_interval_ms": 100, "escalation_tick_ms": 50}
ORG = "CHRU Test"

_rpps = iter(range(21_000_000_001, 21_000_099_999))


async def clinician(hub: HubServer, name: str, devices: int = 1, org: str = ORG) -> list[OncallDevice]:
    """A verified clinician of ``org`` with ``devices`` connected devices (all attested)."""
    _, code = await invite(hub, f"Dr {name}", str(next(_rpps)), org)
    first = OncallDevice(hub.url)
    await first.enroll(code)
    out = [first]
    for _ in range(devices - 1):
        out.append(await _linked(hub, first))
    return out


async def _linked(hub: HubServer, first: OncallDevice) -> OncallDevice:
    reply = await first.ask(LinkCode(rid=9))
    assert isinstance(reply, LinkCodeOk), reply
    other = OncallDevice(hub.url)
    await other.enroll(reply.code)
    await verify_on(hub, first.user_id)
    hub.hub.accounts.forget(first.user_id)
    return other


async def make_role(
    hub: HubServer, name: str, *, org: str = ORG, reserved: bool = False, policy: Policy | None = None
) -> str:
    role = await hub.store.create_role(
        name, org, reserved, None if policy is None else pack_policy(policy), now_ms()
    )
    return role.role


async def assign(hub: HubServer, role: str, *users: list[OncallDevice]) -> None:
    for devs in users:
        assert await hub.store.assign_role(role, devs[0].user_id, now_ms())


async def accepted(dev: OncallDevice, send: Send) -> None:
    reply = await dev.ask(send)
    assert reply == Accepted(send.id), reply


async def refused(dev: OncallDevice, frame: Frame, code: str) -> Error:
    reply = await dev.ask(frame)
    assert isinstance(reply, Error) and reply.code == code and not reply.fatal, reply
    return reply


async def audit_count(hub: HubServer, action: str) -> int:
    await hub.audit.flush()
    return len(await hub.store.audit_log(actions=[action], limit=1000))


async def wait_for(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return bool(condition())


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    if request.param == "sqlite":
        yield None
    else:
        async with postgres_store_url() as url:
            yield url


def on(store_url: str | None, **settings: Any) -> dict[str, Any]:
    return {**FAST, **settings, **({} if store_url is None else {"store": store_url})}


# --- (a) an urgent message nobody acknowledges ---------------------------------------


async def test_unacknowledged_urgent_message_escalates_to_each_backup_then_tells_the_sender(
    store_url: str | None, make_hub: HubFactory
) -> None:
    hub = await make_hub(**on(store_url))
    sender, holder, backup1, backup2 = [await clinician(hub, n) for n in ("Sophie", "Hugo", "Bea", "Basile")]
    backups = await make_role(hub, "Cardiologie — senior d'astreinte")
    await assign(hub, backups, backup1)
    policy = Policy(300, (Step(500, role=backups), Step(500, user=backup2[0].user_id)), 500)
    role = await make_role(hub, "Cardiologie — interne de garde", policy=policy)
    await assign(hub, role, holder)
    (s,), (h,), (b1,), (b2,) = sender, holder, backup1, backup2
    for dev in (s, h, b1, b2):
        dev.record()

    text = "Patient lit 12 : douleur thoracique, ECG modifié"
    send = sealed(s, role, keys(holder, backup1, backup2), text, urgent=Urgent())
    sent = time.monotonic()
    await s.send_frame(send)
    assert await wait_for(lambda: s.of(Accepted), 2)
    assert await wait_for(
        lambda: s.of(UrgentStatus) and s.of(UrgentStatus)[-1][1].state == "unacknowledged", 4
    )
    await asyncio.sleep(0.6)  # reminders stop at the final deadline
    for dev in (s, h, b1, b2):
        await dev.stop_recording()

    # The holder: the message at once, then a reminder every interval.
    [(t0, first)] = h.of(Deliver)
    assert t0 - sent < 0.5 and first.role == role and first.urgent and first.step is None
    assert opened(h, first, s).body == text
    reminders = [(t, f) for t, f in h.of(UrgentReminder) if f.id == send.id]
    print(f"\nholder reminders at {[round(t - sent, 2) for t, _ in reminders]} s")
    assert len(reminders) >= 3 and [f.n for _, f in reminders] == list(range(1, len(reminders) + 1))
    # On the interval's grid (the n-th due n times 0.3 s after the send): never
    # early. A late one (a loaded machine) shortens the gap to the next.
    assert all(t - sent >= 0.3 * f.n - 0.02 for t, f in reminders)
    assert reminders[-1][0] - sent < 1.5 + 0.4  # none after the final deadline
    # Backup 1 at step 1, backup 2 at step 2: each opens the original text.
    for dev, step, due in ((b1, 1, 0.5), (b2, 2, 1.0)):
        [(t, got)] = dev.of(Deliver)
        print(f"backup {step} delivered at {t - sent:.2f} s (due {due} s)")
        assert due - 0.05 <= t - sent <= due + 0.6
        assert (got.id, got.step, got.role, got.urgent) == (send.id, step, role, True)
        plain = opened(dev, got, s)
        assert plain.body == text and plain.urgent and plain.to_user == role
    assert b1.of(UrgentReminder), "a released backup is reminded too"
    # The sender: escalated to each step's target, then « aucun acquittement ».
    states = [(f.state, f.step, f.target) for _, f in s.of(UrgentStatus)]
    assert states[:2] == [("escalated", 1, backups), ("escalated", 2, backup2[0].user_id)], states
    assert [state for state, _, _ in states[2:]] == ["unacknowledged"], states
    assert not h.of(UrgentStatus) and not b1.of(UrgentStatus)
    assert await hub.store.held_rows(s.user_id, send.id) == 0
    assert await audit_count(hub, "urgent.escalated") == 2
    assert await audit_count(hub, "urgent.unacknowledged") == 1


# --- (b) the primary acknowledges before the first step ------------------------------


async def test_acknowledgement_before_the_delay_deletes_the_held_copies_and_tells_everyone(
    store_url: str | None, make_hub: HubFactory
) -> None:
    hub = await make_hub(**on(store_url))
    (s,) = await clinician(hub, "Sophie")
    holder = await clinician(hub, "Hugo", devices=2)
    backup1, backup2 = await clinician(hub, "Bea"), await clinician(hub, "Basile")
    policy = Policy(200, (Step(400, user=backup1[0].user_id), Step(400, user=backup2[0].user_id)), 300)
    role = await make_role(hub, "Réanimation — senior", policy=policy)
    await assign(hub, role, holder)
    h, h2 = holder
    for dev in (h2, *backup1, *backup2):
        dev.record()

    send = sealed(s, role, keys(holder, backup1, backup2), "Arrêt cardiaque box 4", urgent=Urgent())
    sent = time.monotonic()
    await accepted(s, send)
    got = await h.next_of(Deliver, timeout=2)
    assert got.id == send.id and got.urgent
    assert await hub.store.held_rows(s.user_id, send.id) == 2  # one device per backup
    ack = await h.ask(Acknowledge(rid=5, id=send.id, sender=s.user_id))
    assert isinstance(ack, AcknowledgeOk), ack
    assert (ack.rid, ack.id, ack.sender, ack.user, ack.device, ack.first) == (
        5, send.id, s.user_id, h.user_id, h.device_id, True,
    )  # fmt: skip
    assert time.monotonic() - sent < 0.4, "acknowledged before the first step, or the test proves nothing"
    assert await hub.store.held_rows(s.user_id, send.id) == 0
    again = await h.ask(Acknowledge(rid=6, id=send.id, sender=s.user_id))
    assert isinstance(again, AcknowledgeOk) and not again.first
    assert (again.user, again.device, again.at) == (ack.user, ack.device, ack.at)

    await asyncio.sleep(0.4 + 0.4 + 0.3 + 0.5 - (time.monotonic() - sent))  # past every deadline
    for dev in (h2, *backup1, *backup2):
        await dev.stop_recording()
    for dev in (*backup1, *backup2):
        assert not dev.seen, f"a backup got {dev.seen}"
    statuses = [f for f in await s.received() if isinstance(f, UrgentStatus)]
    assert [(f.state, f.user, f.device, f.ts, f.step) for f in statuses] == [
        ("acknowledged", h.user_id, h.device_id, ack.at, 0)
    ], statuses
    # The holder's other device stops its alert too; no reminder after the acknowledgement.
    assert [f.state for _, f in h2.of(UrgentStatus)] == ["acknowledged"]
    assert all(t - sent < 0.4 for t, _ in h2.of(UrgentReminder))
    assert await audit_count(hub, "urgent.escalated") == 0
    assert await audit_count(hub, "urgent.acknowledged") == 1


# --- (c) holders: handover, join, leave, vacancy, shifts -----------------------------


async def test_a_handover_takes_effect_at_once_and_the_released_holder_is_told(make_hub: HubFactory) -> None:
    hub = await make_hub(**FAST)
    sender, alice, bob, carol = [await clinician(hub, n) for n in ("Sophie", "Alice", "Bob", "Carol")]
    (s,), (a,), (b,), (c,) = sender, alice, bob, carol
    role = await make_role(hub, "Pédiatrie — interne de garde")

    taken = await a.ask(RoleTake(rid=1, role=role))
    assert isinstance(taken, RoleOk) and taken.info.holders == (a.user_id,)
    await accepted(s, sealed(s, role, keys(alice), "pour Alice"))
    assert (await a.next_of(Deliver, timeout=2)).role == role

    handed = await b.ask(RoleTake(rid=2, role=role))
    assert isinstance(handed, RoleOk) and handed.info.holders == (b.user_id,)
    pushed = await a.next_of(RoleChanged, timeout=2)
    assert pushed == RoleChanged(role, (b.user_id,))
    stale = await refused(s, sealed(s, role, keys(alice), "encore Alice ?"), "unknown_device")
    assert stale.id is not None
    send = sealed(s, role, keys(bob), "pour Bob")
    await accepted(s, send)
    assert (await b.next_of(Deliver, timeout=2)).id == send.id

    joined = await c.ask(RoleTake(rid=3, role=role, join=True))
    assert isinstance(joined, RoleOk) and joined.info.holders == tuple(sorted((b.user_id, c.user_id)))
    await refused(s, sealed(s, role, keys(bob), "Bob seul"), "missing_devices")
    left = await b.ask(RoleLeave(rid=4, role=role))
    assert isinstance(left, RoleOk) and left.info.holders == (c.user_id,)
    nothing = await a.ask(RoleLeave(rid=5, role=role))  # not a holder: ok, nothing changes
    assert isinstance(nothing, RoleOk) and nothing.info.holders == (c.user_id,)
    mine = await c.ask(RoleSearch(rid=6, query="", mine=True))
    assert isinstance(mine, RoleSearchOk) and [r.role for r in mine.roles] == [role]
    found = await s.ask(RoleSearch(rid=7, query="pediatrie"))  # accents and case folded
    assert isinstance(found, RoleSearchOk) and [r.role for r in found.roles] == [role]

    assert isinstance(await c.ask(RoleLeave(rid=9, role=role)), RoleOk)
    vacant = await refused(s, sealed(s, role, keys(carol), "personne ?"), "role_vacant")
    assert vacant.role == role and vacant.id is not None


async def test_a_schedule_import_changes_the_targets_at_the_shift_boundary(
    make_hub: HubFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The administrator imports tonight's schedule with ``miss-admin role
    import`` while the hub runs; a send just before the boundary reaches the
    night's holder, one just after the day's, with nothing else to do."""
    hub = await make_hub(**FAST)
    (s,), night, day = (
        await clinician(hub, "Sophie"),
        await clinician(hub, "Nuit"),
        await clinician(hub, "Jour"),
    )
    role = await make_role(hub, "Urgences — senior", reserved=True)
    rpps = {}
    for who in (night, day):
        user = await hub.store.get_user(who[0].user_id)
        assert user is not None
        rpps[who[0].user_id] = user.rpps
    boundary = now_ms() + 2500

    def iso(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")

    schedule = tmp_path / "planning.csv"
    schedule.write_text(
        "role,rpps,start,end\n"
        f"Urgences — senior,{rpps[night[0].user_id]},{iso(boundary - 3_600_000)},{iso(boundary)}\n"
        f"Urgences — senior,{rpps[day[0].user_id]},{iso(boundary)},{iso(boundary + 3_600_000)}\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MISS_AUTHORITY_KEY_FILE", raising=False)
    admin = Admin(hub.settings.store, tmp_path / "authority.key", capsys, monkeypatch)
    await asyncio.to_thread(admin, "role", "import", str(schedule))

    info = await s.ask(RoleGet(rid=1, role=role))
    assert isinstance(info, RoleOk) and info.info.holders == (night[0].user_id,)
    before = sealed(s, role, keys(night), "avant la relève")
    await accepted(s, before)
    assert (await night[0].next_of(Deliver, timeout=2)).id == before.id

    await asyncio.sleep((boundary - now_ms()) / 1000 + 0.05)
    await refused(s, sealed(s, role, keys(night), "après la relève, à la nuit"), "unknown_device")
    after = sealed(s, role, keys(day), "après la relève")
    await accepted(s, after)
    assert (await day[0].next_of(Deliver, timeout=2)).id == after.id
    with pytest.raises(TimeoutError):
        pytest.fail(f"the night got {await night[0].recv(timeout=0.3)}")


async def test_an_urgent_message_to_a_user_escalates_to_the_policy_of_the_recipients_organisation(
    make_hub: HubFactory,
) -> None:
    """To a user, the organisation's default applies (no steps): reminders,
    then unacknowledged; a body to a user without ``urgent`` stays a fatal
    malformed_frame."""
    hub = await make_hub(**FAST)
    (s,), (r,) = await clinician(hub, "Sophie"), await clinician(hub, "Remi")
    await hub.store.set_org_policy(ORG, 150, 400)
    send = sealed(s, r.user_id, keys([r]), "rappel urgent", urgent=Urgent())
    await accepted(s, send)
    got = await r.next_of(Deliver, timeout=2)
    assert (got.id, got.urgent, got.role, got.team, got.step) == (send.id, True, None, None, None)
    assert opened(r, got, s).urgent
    assert (await r.next_of(UrgentReminder, timeout=2)).id == send.id
    status = await s.next_of(UrgentStatus, timeout=3)
    assert (status.state, status.id, status.sender) == ("unacknowledged", send.id, s.user_id)
    await s.send_frame(sealed(s, r.user_id, keys([r]), "corps sans urgence"))
    error, code = await s.until_closed(3)
    assert error is not None and error.code == "malformed_frame" and code is not None


async def test_open_urgent_messages_are_capped_per_user_and_a_resend_still_goes(make_hub: HubFactory) -> None:
    """With two urgent messages escalating, a third is urgent_limit and
    nothing of it is stored; a resend of the first is still accepted (dup);
    once one is acknowledged, a new urgent message goes again."""
    hub = await make_hub(**FAST, max_open_urgent_per_user=2)
    (s,), (r,) = await clinician(hub, "Sophie"), await clinician(hub, "Remi")
    await hub.store.set_org_policy(ORG, 5000, 60_000)  # nothing ends on its own during the test
    first, second = (sealed(s, r.user_id, keys([r]), t, urgent=Urgent()) for t in ("un", "deux"))
    await accepted(s, first)
    await accepted(s, second)
    third = sealed(s, r.user_id, keys([r]), "trois", urgent=Urgent())
    refusal = await refused(s, third, "urgent_limit")
    assert refusal.id == third.id and not await hub.store.has_sent(s.user_id, third.id)
    assert await s.ask(sealed(s, r.user_id, keys([r]), "un", urgent=Urgent(), mid=first.id)) == Accepted(
        first.id, dup=True
    )
    ack = await r.ask(Acknowledge(rid=1, id=first.id, sender=s.user_id))
    assert isinstance(ack, AcknowledgeOk) and ack.first
    await accepted(s, third)


async def test_oncall_rows_wait_for_a_connection_that_names_oncall(make_hub: HubFactory) -> None:
    hub = await make_hub(**FAST)
    (s,), (h,) = await clinician(hub, "Sophie"), await clinician(hub, "Hugo")
    role = await make_role(hub, "Gériatrie — garde")
    await assign(hub, role, [h])
    await h.close()
    h.caps = (CAP_REFUSALS, CAP_TEAMS)  # a revision 3 client
    await h.auth()
    send = sealed(s, role, keys([h]), "pour la garde")
    await accepted(s, send)
    with pytest.raises(TimeoutError):
        pytest.fail(f"unexpected {await h.recv(timeout=0.4)}")
    assert await hub.store.count_pending(h.device_id) == 1
    await h.close()
    h.caps = (CAP_REFUSALS, CAP_TEAMS, CAP_ONCALL)
    await h.auth()
    got = await h.next_of(Deliver)
    assert got.id == send.id and got.role == role and opened(h, got, s).body == "pour la garde"


async def test_an_administrators_assignment_is_pushed_to_the_assigned_user(make_hub: HubFactory) -> None:
    hub = await make_hub(**FAST)
    (h,) = await clinician(hub, "Hugo")
    role = await make_role(hub, "Chef de garde", reserved=True)
    assert await hub.store.assign_role(role, h.user_id, now_ms())
    # What miss-admin role assign writes; every node polls the audit log.
    await hub.store.audit([AuditEvent(now_ms(), "admin:test", "role.assigned", h.user_id, None, None, role)])
    assert await h.next_of(RoleChanged, timeout=3) == RoleChanged(role, (h.user_id,))


# --- (d) bad input ---------------------------------------------------------------------


async def test_bad_input_is_refused_with_typed_errors_and_changes_nothing(
    store_url: str | None, make_hub: HubFactory
) -> None:
    hub = await make_hub(**on(store_url, max_roles_per_user=1))
    sender, holder, other = (
        await clinician(hub, "Sophie"),
        await clinician(hub, "Hugo"),
        await clinician(hub, "Olga"),
    )
    stranger = await clinician(hub, "Étienne", org="CH Ailleurs")
    (s,), (h,), (o,), (x,) = sender, holder, other, stranger
    role = await make_role(
        hub, "Néphrologie — garde", policy=Policy(200, (Step(5000, user=o.user_id),), 5000)
    )
    reserved = await make_role(hub, "Chef de garde", reserved=True)
    elsewhere = await make_role(hub, "Garde d'un autre hôpital", org="CH Ailleurs")
    await assign(hub, role, holder)
    unknown = "r_" + "0" * 16

    err = await refused(s, RoleGet(rid=1, role=unknown), "unknown_role")
    assert err.rid == 1
    err = await refused(s, sealed(s, unknown, keys(holder), "à personne"), "unknown_role")
    assert err.id is not None
    # Overrides beyond the caps: nothing stored.
    for urgent in (Urgent(interval=50), Urgent(final=86_400_001), Urgent(interval=100, final=99)):
        send = sealed(s, role, keys(holder, other), "trop vite", urgent=urgent)
        assert (await refused(s, send, "policy_out_of_bounds")).id == send.id
        assert not await hub.store.has_sent(s.user_id, send.id)
    # Acknowledging what one did not receive: an unknown id, a copy still
    # held for a later step, a message that is not urgent.
    await refused(h, Acknowledge(rid=2, id=secrets.token_bytes(16), sender=s.user_id), "not_recipient")
    urgent = sealed(s, role, keys(holder, other), "urgent", urgent=Urgent())
    await accepted(s, urgent)
    await refused(o, Acknowledge(rid=3, id=urgent.id, sender=s.user_id), "not_recipient")
    await refused(s, Acknowledge(rid=4, id=urgent.id, sender=s.user_id), "not_recipient")
    plain = sealed(s, role, keys(holder), "pas urgent")
    await accepted(s, plain)
    await refused(h, Acknowledge(rid=5, id=plain.id, sender=s.user_id), "not_recipient")
    assert await hub.store.held_rows(s.user_id, urgent.id) == 1  # still held, still escalating
    # Taking: a reserved role, a role of another organisation, one role too many.
    await refused(o, RoleTake(rid=6, role=reserved), "role_reserved")
    await refused(o, RoleTake(rid=7, role=elsewhere), "role_forbidden")
    assert isinstance(await x.ask(RoleTake(rid=8, role=elsewhere)), RoleOk)  # its own organisation's
    other_role = await make_role(hub, "Néphrologie — astreinte")
    assert isinstance(await o.ask(RoleTake(rid=9, role=other_role)), RoleOk)
    await refused(o, RoleTake(rid=10, role=role, join=True), "role_full")
    now = now_ms()
    assert await hub.store.role_holders(reserved, now) == []
    assert await hub.store.role_holders(elsewhere, now) == [x.user_id]
    assert await hub.store.role_holders(role, now) == [h.user_id]
    assert [r.role for r in await hub.store.user_roles(o.user_id, now)] == [other_role]


# --- (e) the plaintext of an urgent message is nowhere --------------------------------


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def captured_logs() -> Iterator[_Captured]:
    handler = _Captured()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_the_marker_of_an_urgent_role_message_is_nowhere(store_url: str | None, tmp_path: Path) -> None:
    """An urgent role message with backups, escalated once, then
    acknowledged: its plaintext marker is in no file of the SQLite store, in
    no PostgreSQL table (held rows, escalation rows and audit log included),
    looked at while step 2's copy is still held and again at the end, and in
    no log line."""
    marker = "MARKER-" + secrets.token_hex(12)
    schema = None if store_url is None else store_url.split("schema=")[1]

    async def assert_nowhere() -> None:
        if schema is None:
            files = [p for p in tmp_path.rglob("*") if p.is_file()]  # noqa: ASYNC240 (small test files)
            assert any(p.name.startswith("miss.db") for p in files)
            for path in files:
                assert marker.encode() not in path.read_bytes(), f"plaintext marker found in {path}"
            return
        conn = await asyncpg.connect(POSTGRES_DSN)
        try:
            tables = [
                r["tablename"]
                for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
            ]
            assert {"audit_log", "escalations", "held_queue"} <= set(tables), tables
            for table in tables:
                rows = await conn.fetch(f'SELECT t::text AS row FROM "{schema}"."{table}" t')
                dump = "\n".join(r["row"] for r in rows)
                assert marker not in dump and marker.encode().hex() not in dump, f"marker in table {table}"
        finally:
            await conn.close()

    with captured_logs() as logs:
        hub = HubServer(hub_settings(tmp_path, **on(store_url)))
        await hub.start()
        try:
            (s,), (h,), backup1, backup2 = [
                await clinician(hub, n) for n in ("Sophie", "Hugo", "Bea", "Basile")
            ]
            policy = Policy(
                150, (Step(300, user=backup1[0].user_id), Step(5000, user=backup2[0].user_id)), 300
            )
            role = await make_role(hub, "Hématologie — garde", policy=policy)
            await assign(hub, role, [h])
            send = sealed(s, role, keys([h], backup1, backup2), f"patient note {marker}", urgent=Urgent())
            await accepted(s, send)
            got = await backup1[0].next_of(Deliver, timeout=3)  # escalated to step 1
            assert got.step == 1 and marker in opened(backup1[0], got, s).body  # it did travel
            assert await hub.store.held_rows(s.user_id, send.id) == 1  # step 2's copy, held
            await assert_nowhere()
            ack = await backup1[0].ask(Acknowledge(rid=1, id=send.id, sender=s.user_id))
            assert isinstance(ack, AcknowledgeOk) and ack.first
            assert (await s.next_of(UrgentStatus, timeout=2)).state == "escalated"
            assert (await s.next_of(UrgentStatus, timeout=2)).state == "acknowledged"
        finally:
            await hub.stop()  # flushes the audit log and the store before looking
    assert logs.lines and not [line for line in logs.lines if marker in line]
    await assert_nowhere()
    if schema is not None:
        conn = await asyncpg.connect(POSTGRES_DSN)
        try:
            events = await conn.fetchval(
                f"SELECT count(*) FROM \"{schema}\".audit_log WHERE action LIKE 'urgent.%'"
            )
        finally:
            await conn.close()
        assert events >= 2  # escalated, acknowledged: metadata only


# --- (f) every new request spends the device's budget ---------------------------------


async def test_oncall_requests_spend_the_devices_budget(make_hub: HubFactory) -> None:
    """Each new request type spends the device's request budget: the second
    of a kind from a device with a burst of one is rate_limited, while a
    bystander's budget is untouched."""
    hub = await make_hub(**FAST, rate_device="1/min burst 1")
    role = await make_role(hub, "Radiologie — garde")
    (sender,) = await clinician(hub, "Sophie")
    requests = [
        lambda: RoleSearch(rid=1, query="garde"),
        lambda: RoleGet(rid=1, role=role),
        lambda: RoleTake(rid=1, role=role, join=True),
        lambda: RoleLeave(rid=1, role=role),
        lambda: Acknowledge(rid=1, id=bytes(16), sender=sender.user_id),
    ]
    for make in requests:
        (dev,) = await clinician(hub, "Flooder")
        first = await dev.ask(make())
        assert not (isinstance(first, Error) and first.code == "rate_limited"), first
        limited = await refused(dev, make(), "rate_limited")
        assert limited.rid == 1 and limited.retry_after
    (bystander,) = await clinician(hub, "Bystander")
    assert isinstance(await bystander.ask(RoleGet(rid=2, role=role)), RoleOk)
