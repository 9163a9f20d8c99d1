"""PostgreSQL's on-call roles and urgent messages (SPEC §14):
:class:`PostgresOncall`, the methods :class:`~miss_server.store.postgres.PostgresStore`
gains; the same tables and rules as the embedded store's ``sqlite_oncall.py``
(read its module doc), the timers' rules in ``oncall_rules.py``.

Several hub nodes poll :meth:`PostgresOncall.due_escalations`. Each
escalation is claimed with ``SELECT ... FOR UPDATE SKIP LOCKED`` in a
transaction that performs its due actions (release held rows into
``team_queue``, queue statuses, audit) and advances its timers: another node
skips the row while it is locked and finds it no longer due once committed,
so each action happens exactly once; a node that dies mid-transaction rolls
back, and the row is due again for the next poll. The poll is one probe of
the partial index on ``next_at`` when nothing is due.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg

from protocol.oncall import new_role_id

from . import oncall_rules as rules
from .base import (
    AcceptResult,
    AckResult,
    AuditEvent,
    EscalationDue,
    Kind,
    NewTeamMessage,
    OrgPolicy,
    Queued,
    Role,
    Shift,
)
from .postgres_teams import accept_team

if TYPE_CHECKING:
    from .postgres_pool import Database

__all__ = ["EXPIRE_ONCALL", "PostgresOncall", "accept_urgent", "recall_oncall"]

_ROLE_COLUMNS = "role, name, org, reserved, policy, created_at"

_HOLDERS = """
SELECT user_id FROM (
    SELECT user_id FROM role_holders WHERE role = $1
    UNION
    SELECT user_id FROM role_shifts WHERE role = $1 AND start <= $2 AND "end" > $2
) h ORDER BY user_id COLLATE "C" LIMIT $3"""

#: Expiry (``PostgresStore.expire``, before the bodies' sweep), in statements
#: of at most $2 rows ($1 now): held rows and escalations go with their body.
EXPIRE_ONCALL = {
    "held_queue": "DELETE FROM held_queue WHERE (body_id, step, device_id) IN ("
    "SELECT h.body_id, h.step, h.device_id FROM held_queue h JOIN bodies b ON b.id = h.body_id "
    "WHERE b.expires_at <= $1 LIMIT $2 FOR UPDATE OF h SKIP LOCKED)",
    "escalations": "DELETE FROM escalations WHERE id = ANY(ARRAY("
    "SELECT id FROM escalations WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED))",
}


def _role(r: asyncpg.Record) -> Role:
    return Role(r[0], r[1], r[2], bool(r[3]), None if r[4] is None else bytes(r[4]), r[5])


def _count(status: str) -> int:
    return int(status.split()[-1])


async def _audit(conn: asyncpg.Connection, events: list[AuditEvent]) -> None:
    if events:
        await conn.executemany(
            "INSERT INTO audit_log (at, actor, action, user_id, device_id, address, detail) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [(e.at, e.actor, e.action, e.user_id, e.device_id, e.address, e.detail) for e in events],
        )


async def _holders(conn: asyncpg.Connection, role: str, now: int) -> list[str]:
    return [r[0] for r in await conn.fetch(_HOLDERS, role, now, rules.MAX_ROLE_HOLDERS)]


# --- roles ----------------------------------------------------------------------------


async def _take_role(
    conn: asyncpg.Connection, role: str, user_id: str, join: bool, now: int, max_roles: int
) -> tuple[bool, list[str]]:
    # The role's row lock serialises takes of one role across hub nodes; the
    # count of a user's roles may race with a take of another role by one, as
    # the teams' caps tolerate.
    if await conn.fetchval("SELECT 1 FROM roles WHERE role = $1 FOR UPDATE", role) is None:
        raise LookupError(f"unknown role {role!r}")
    manual = [r[0] for r in await conn.fetch("SELECT user_id FROM role_holders WHERE role = $1", role)]
    if user_id not in manual:
        if await conn.fetchval("SELECT count(*) FROM role_holders WHERE user_id = $1", user_id) >= max_roles:
            return False, []
        holders = await _holders(conn, role, now)
        if join and user_id not in holders and len(holders) >= rules.MAX_ROLE_HOLDERS:
            return False, []
    released = [] if join else sorted(u for u in manual if u != user_id)
    if released:
        await conn.execute(
            "DELETE FROM role_holders WHERE role = $1 AND user_id = ANY($2::text[])", role, released
        )
    await conn.execute(
        "INSERT INTO role_holders (role, user_id, since) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        role,
        user_id,
        now,
    )
    detail = f"role={role} join={str(join).lower()}" + (f" released={','.join(released)}" if released else "")
    await _audit(conn, [AuditEvent(now, user_id, "role.taken", user_id, None, None, detail)])
    return True, released


async def _assign_role(conn: asyncpg.Connection, role: str, user_id: str, now: int) -> bool:
    if await conn.fetchval("SELECT 1 FROM roles WHERE role = $1 FOR UPDATE", role) is None:
        return False
    holders = await _holders(conn, role, now)
    if user_id not in holders and len(holders) >= rules.MAX_ROLE_HOLDERS:
        return False
    await conn.execute(
        "INSERT INTO role_holders (role, user_id, since) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        role,
        user_id,
        now,
    )
    return True


# --- urgent messages ---------------------------------------------------------------------


async def accept_urgent(conn: asyncpg.Connection, m: NewTeamMessage) -> AcceptResult:
    """``accept_team`` of a message with held rows or a plan, in the caller's
    transaction: body, primary rows, held rows and the escalation row; a
    duplicate stores nothing."""
    result = await accept_team(conn, m)
    if result.duplicate:
        return result
    body_id = await conn.fetchval(
        "SELECT id FROM bodies WHERE sender_user = $1 AND message_id = $2", m.sender_user, m.message_id
    )
    held = [(step, d, w) for step, wraps in sorted(m.held.items()) for d, w in wraps.items()]
    if held:
        await conn.execute(
            "INSERT INTO held_queue (body_id, step, device_id, wrap) "
            "SELECT $1, s, d, w FROM unnest($2::int[], $3::text[], $4::bytea[]) AS h (s, d, w)",
            body_id,
            [h[0] for h in held],
            [h[1] for h in held],
            [h[2] for h in held],
        )
    if m.plan is not None:
        deadlines, targets, step_targets, remind, next_at = rules.initial(m.plan, m.ts)
        await conn.execute(
            "INSERT INTO escalations (sender_user, message_id, ts, expires_at, interval, deadlines, targets, "
            "step_targets, next_remind, next_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            m.sender_user,
            m.message_id,
            m.ts,
            m.expires_at,
            m.plan.interval,
            deadlines,
            targets,
            step_targets,
            remind,
            next_at,
        )
    return result


async def recall_oncall(conn: asyncpg.Connection, sender: str, mid: bytes) -> int:
    """``recall``'s part, before the body goes: the held rows (counted) and the escalation."""
    await conn.execute("DELETE FROM escalations WHERE sender_user = $1 AND message_id = $2", sender, mid)
    return await recall_held(conn, sender, mid)


async def _statuses(
    conn: asyncpg.Connection,
    row: rules.EscRow,
    users: list[str],
    skip: str | None,
    ts: int,
    expires_at: int,
    payload: bytes,
) -> list[Queued]:
    """Queue an ``urgent_status`` for every attested device of ``users`` but ``skip``."""
    targets: list[tuple[str, str]] = []
    for user in users:
        for r in await conn.fetch(
            "SELECT device_id FROM devices WHERE user_id = $1 AND revoked_at IS NULL AND attested "
            "ORDER BY created_at, device_id",
            user,
        ):
            if r[0] != skip:
                targets.append((r[0], user))
    if not targets:
        return []
    rows = await conn.fetch(
        "INSERT INTO queue (device_id, kind, payload, message_id, peer_user, peer_device, recipient_user, "
        "ts, expires_at) "
        "SELECT d, $3, $4, $5, $6, '', u, $7, $8 FROM unnest($1::text[], $2::text[]) "
        "WITH ORDINALITY AS t (d, u, ord) ORDER BY ord RETURNING seq, device_id",
        [t[0] for t in targets],
        [t[1] for t in targets],
        int(Kind.URGENT_STATUS),
        payload,
        row.message_id,
        row.sender_user,
        ts,
        expires_at,
    )
    return sorted(
        (
            Queued(r[0], r[1], Kind.URGENT_STATUS, row.message_id, row.sender_user, "", ts, payload)
            for r in rows
        ),
        key=lambda q: q.seq,
    )


async def _release(conn: asyncpg.Connection, row: rules.EscRow, step: int) -> list[Queued]:
    """Move the held rows of ``step`` into ``team_queue`` with new seqs."""
    # FOR SHARE: the expiry sweep (FOR UPDATE SKIP LOCKED) leaves the body alone meanwhile.
    body = await conn.fetchrow(
        "SELECT id, sender_device, ts, body, team, role, urgent FROM bodies "
        "WHERE sender_user = $1 AND message_id = $2 FOR SHARE",
        row.sender_user,
        row.message_id,
    )
    if body is None:
        return []
    rows = await conn.fetch(
        "WITH h AS (DELETE FROM held_queue WHERE body_id = $1 AND step = $2 RETURNING device_id, wrap) "
        "INSERT INTO team_queue (device_id, body_id, wrap, step) "
        'SELECT device_id, $1, wrap, $2 FROM h ORDER BY device_id COLLATE "C" '
        "RETURNING seq, device_id, wrap",
        body[0],
        step,
    )
    return sorted(
        (
            Queued(
                r[0],
                r[1],
                Kind.TEAM,
                row.message_id,
                row.sender_user,
                body[1],
                body[2],
                bytes(r[2]),
                bytes(body[3]),
                body[4],
                body[5],
                bool(body[6]),
                step,
            )
            for r in rows
        ),
        key=lambda q: q.seq,
    )


async def _perform_next(conn: asyncpg.Connection, now: int) -> list[EscalationDue] | None:
    """Claim one due escalation and perform its due actions (in the caller's
    transaction); None when none is due (or every due one is claimed elsewhere)."""
    r = await conn.fetchrow(
        f"SELECT {rules.ESC_COLUMNS} FROM escalations WHERE next_at IS NOT NULL AND next_at <= $1 "
        "ORDER BY next_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        now,
    )
    if r is None:
        return None
    row = rules.to_esc_row(tuple(r))
    actions, after = rules.advance(row, now)
    out: list[EscalationDue] = []
    events: list[AuditEvent] = []
    for a in actions:
        if a.kind == "step":
            target = row.step_targets[a.step - 1]
            released = await _release(conn, row, a.step)
            payload = rules.status_payload(rules.ESCALATED, a.step, None, None, target)
            statuses = await _statuses(conn, row, [row.sender_user], None, now, row.expires_at, payload)
            events.append(rules.audit_event(now, "urgent.escalated", row, a.step, target=target))
            out.append(
                EscalationDue(
                    row.id, row.sender_user, row.message_id, "step", a.step, target, released, statuses, (), 0
                )
            )
        elif a.kind == "final":
            payload = rules.status_payload(rules.UNACKNOWLEDGED, a.step, None, None, None)
            statuses = await _statuses(conn, row, [row.sender_user], None, now, row.expires_at, payload)
            events.append(rules.audit_event(now, "urgent.unacknowledged", row, a.step))
            out.append(
                EscalationDue(
                    row.id, row.sender_user, row.message_id, "final", a.step, None, [], statuses, (), 0
                )
            )
        else:
            users = tuple(rules.released_users(after))
            out.append(
                EscalationDue(
                    row.id, row.sender_user, row.message_id, "remind", a.step, None, [], [], users, a.n
                )
            )
    await conn.execute(
        "UPDATE escalations SET step = $2, state = $3, next_remind = $4, reminders = $5, next_at = $6 "
        "WHERE id = $1",
        row.id,
        after.step,
        after.state,
        after.next_remind,
        after.reminders,
        rules.next_at(after),
    )
    await _audit(conn, events)
    return out


async def _acknowledge(
    conn: asyncpg.Connection, sender: str, mid: bytes, user: str, device: str, now: int, expires_at: int
) -> AckResult | None:
    # FOR UPDATE (no SKIP): two acknowledgements, or one and the scheduler, take turns.
    r = await conn.fetchrow(
        f"SELECT {rules.ESC_COLUMNS}, ack_user, ack_device, ack_at FROM escalations "
        "WHERE sender_user = $1 AND message_id = $2 FOR UPDATE",
        sender,
        mid,
    )
    if r is None:
        return None
    row = rules.to_esc_row(tuple(r))
    if user not in rules.released_users(row):
        return None
    if row.state == rules.ACKNOWLEDGED:
        return AckResult(False, r["ack_user"], r["ack_device"], r["ack_at"], row.step, [], 0)
    await conn.execute(
        "UPDATE escalations SET state = $2, ack_user = $3, ack_device = $4, ack_at = $5, next_at = NULL "
        "WHERE id = $1",
        row.id,
        rules.ACKNOWLEDGED,
        user,
        device,
        now,
    )
    deleted = await recall_held(conn, sender, mid)
    payload = rules.status_payload(rules.ACKNOWLEDGED, row.step, user, device, None)
    statuses = await _statuses(
        conn, row, [sender, *rules.released_users(row)], device, now, expires_at, payload
    )
    await _audit(
        conn,
        [rules.audit_event(now, "urgent.acknowledged", row, row.step, actor=user, user=user, device=device)],
    )
    return AckResult(True, user, device, now, row.step, statuses, deleted)


async def recall_held(conn: asyncpg.Connection, sender: str, mid: bytes) -> int:
    """Delete a message's held rows; how many."""
    return _count(
        await conn.execute(
            "DELETE FROM held_queue WHERE body_id IN "
            "(SELECT id FROM bodies WHERE sender_user = $1 AND message_id = $2)",
            sender,
            mid,
        )
    )


async def _held_rows(conn: asyncpg.Connection, sender: str, mid: bytes) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM held_queue h JOIN bodies b ON b.id = h.body_id "
            "WHERE b.sender_user = $1 AND b.message_id = $2",
            sender,
            mid,
        )
    )


# --- the store's methods ---------------------------------------------------------------


class PostgresOncall:
    """The on-call methods of :class:`~miss_server.store.postgres.PostgresStore`
    (see :class:`~miss_server.store.base.Store`)."""

    _db: Database

    async def create_role(self, name: str, org: str, reserved: bool, policy: bytes | None, now: int) -> Role:
        role = Role(new_role_id(), name, org, reserved, policy, now)
        await self._db.write(
            lambda c: c.execute(
                f"INSERT INTO roles ({_ROLE_COLUMNS}, search) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                role.role,
                name,
                org,
                reserved,
                policy,
                now,
                rules.role_search_text(name, org),
            )
        )
        return role

    async def get_role(self, role: str) -> Role | None:
        r = await self._db.retryable(
            lambda c: c.fetchrow(f"SELECT {_ROLE_COLUMNS} FROM roles WHERE role = $1", role)
        )
        return None if r is None else _role(r)

    async def set_role_policy(self, role: str, policy: bytes | None) -> bool:
        status = await self._db.write(
            lambda c: c.execute("UPDATE roles SET policy = $2 WHERE role = $1", role, policy)
        )
        return bool(_count(status))

    async def delete_role(self, role: str) -> bool:
        async def run(conn: asyncpg.Connection) -> bool:
            await conn.execute("DELETE FROM role_holders WHERE role = $1", role)
            await conn.execute("DELETE FROM role_shifts WHERE role = $1", role)
            return bool(_count(await conn.execute("DELETE FROM roles WHERE role = $1", role)))

        return await self._db.write(run)

    async def search_roles(self, query: str, limit: int, now: int) -> list[Role]:
        folded = rules.fold(query)
        rows = await self._db.retryable(
            lambda c: c.fetch(
                f"SELECT {_ROLE_COLUMNS} FROM roles WHERE strpos(search, $1) > 0 "
                'ORDER BY name COLLATE "C", role COLLATE "C" LIMIT $2',
                folded,
                limit,
            )
        )
        return [_role(r) for r in rows]

    async def list_roles(self) -> list[Role]:
        rows = await self._db.retryable(
            lambda c: c.fetch(
                f"SELECT {_ROLE_COLUMNS} FROM roles "
                'ORDER BY org COLLATE "C", name COLLATE "C", role COLLATE "C"'
            )
        )
        return [_role(r) for r in rows]

    async def role_holders(self, role: str, now: int) -> list[str]:
        return await self._db.retryable(lambda c: _holders(c, role, now))

    async def user_roles(self, user_id: str, now: int) -> list[Role]:
        rows = await self._db.retryable(
            lambda c: c.fetch(
                f"SELECT {_ROLE_COLUMNS} FROM roles WHERE role IN ("
                "SELECT role FROM role_holders WHERE user_id = $1 UNION "
                'SELECT role FROM role_shifts WHERE user_id = $1 AND start <= $2 AND "end" > $2) '
                'ORDER BY name COLLATE "C", role COLLATE "C"',
                user_id,
                now,
            )
        )
        return [_role(r) for r in rows]

    async def take_role(
        self, role: str, user_id: str, join: bool, now: int, max_roles: int
    ) -> tuple[bool, list[str]]:
        return await self._db.write(lambda c: _take_role(c, role, user_id, join, now, max_roles))

    async def leave_role(self, role: str, user_id: str) -> bool:
        async def run(conn: asyncpg.Connection) -> bool:
            n = _count(
                await conn.execute("DELETE FROM role_holders WHERE role = $1 AND user_id = $2", role, user_id)
            )
            if n:
                event = AuditEvent(rules.now_ms(), user_id, "role.left", user_id, None, None, f"role={role}")
                await _audit(conn, [event])
            return bool(n)

        return await self._db.write(run)

    async def assign_role(self, role: str, user_id: str, now: int) -> bool:
        return await self._db.write(lambda c: _assign_role(c, role, user_id, now))

    async def unassign_role(self, role: str, user_id: str) -> bool:
        status = await self._db.write(
            lambda c: c.execute("DELETE FROM role_holders WHERE role = $1 AND user_id = $2", role, user_id)
        )
        return bool(_count(status))

    async def replace_shifts(self, role_shifts: list[Shift], roles: list[str]) -> int:
        if any(s.role not in roles for s in role_shifts):
            raise ValueError("a shift of a role not among those replaced")

        async def run(conn: asyncpg.Connection) -> int:
            await conn.execute("DELETE FROM role_shifts WHERE role = ANY($1::text[])", list(roles))
            await conn.execute(
                'INSERT INTO role_shifts (role, user_id, start, "end") '
                "SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) "
                "ON CONFLICT DO NOTHING",
                [s.role for s in role_shifts],
                [s.user_id for s in role_shifts],
                [s.start for s in role_shifts],
                [s.end for s in role_shifts],
            )
            return len(role_shifts)

        return await self._db.write(run)

    async def shifts(self, role: str, since: int) -> list[Shift]:
        rows = await self._db.retryable(
            lambda c: c.fetch(
                'SELECT role, user_id, start, "end" FROM role_shifts WHERE role = $1 AND "end" > $2 '
                'ORDER BY start, user_id COLLATE "C"',
                role,
                since,
            )
        )
        return [Shift(r[0], r[1], r[2], r[3]) for r in rows]

    async def set_org_policy(self, org: str, interval: int, final: int) -> None:
        await self._db.write(
            lambda c: c.execute(
                "INSERT INTO org_policies (org, interval, final) VALUES ($1, $2, $3) "
                "ON CONFLICT (org) DO UPDATE SET interval = excluded.interval, final = excluded.final",
                org,
                interval,
                final,
            )
        )

    async def get_org_policy(self, org: str) -> OrgPolicy | None:
        r = await self._db.retryable(
            lambda c: c.fetchrow("SELECT org, interval, final FROM org_policies WHERE org = $1", org)
        )
        return None if r is None else OrgPolicy(r[0], r[1], r[2])

    async def due_escalations(self, now: int, limit: int) -> list[EscalationDue]:
        # A read first: a poll that finds nothing due costs no transaction.
        due = await self._db.retryable(
            lambda c: c.fetchval(
                "SELECT 1 FROM escalations WHERE next_at IS NOT NULL AND next_at <= $1 LIMIT 1", now
            )
        )
        out: list[EscalationDue] = []
        if due is None:
            return out
        for _ in range(limit):
            done = await self._db.write(lambda c: _perform_next(c, now))
            if done is None:
                break
            out.extend(done)
        return out

    async def acknowledge(
        self, sender_user: str, message_id: bytes, user_id: str, device_id: str, now: int, expires_at: int
    ) -> AckResult | None:
        return await self._db.write(
            lambda c: _acknowledge(c, sender_user, message_id, user_id, device_id, now, expires_at)
        )

    async def escalation_state(self, sender_user: str, message_id: bytes) -> dict[str, Any] | None:
        async def run(conn: asyncpg.Connection) -> dict[str, Any] | None:
            r = await conn.fetchrow(
                "SELECT state, step, next_at, reminders, ack_user, ack_device, ack_at FROM escalations "
                "WHERE sender_user = $1 AND message_id = $2",
                sender_user,
                message_id,
            )
            if r is None:
                return None
            return {**dict(r.items()), "held": await _held_rows(conn, sender_user, message_id)}

        return await self._db.retryable(run)

    async def held_rows(self, sender_user: str, message_id: bytes) -> int:
        return await self._db.retryable(lambda c: _held_rows(c, sender_user, message_id))

    async def open_escalations(self, sender_user: str, now: int) -> int:
        return await self._db.retryable(
            lambda c: c.fetchval(
                "SELECT count(*) FROM escalations WHERE sender_user = $1 AND state = $2 AND expires_at > $3",
                sender_user,
                rules.OPEN,
                now,
            )
        )
