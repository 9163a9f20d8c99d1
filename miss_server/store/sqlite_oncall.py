"""The embedded store's on-call roles and urgent messages (SPEC §14):
:class:`SQLiteOncall`, the methods :class:`~miss_server.store.sqlite.SQLiteStore`
gains, and the jobs they hand to its threads.

Roles, manual holders, shifts and organisation defaults are plain tables
(migration 0007). An urgent message is a team-style message
(``sqlite_teams.py``): its primary rows go to ``team_queue`` at once, its
backups' rows to ``held_queue``, and its ``escalations`` row holds the plan
and its progress, all in the transaction of :func:`store_urgent` called by
``accept_team``. The scheduler's poll (:meth:`SQLiteOncall.due_escalations`)
reads the due ids on the reader (cheap when none: a partial index on
``next_at``), then performs each escalation in a writer job of its own,
which checks it is still due: the writer is the only one, so an action
cannot be done twice. Released rows move to ``team_queue`` with seqs from
the queue's counter, so a device's drain (``seq > cursor``) sees them.
"""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING, Any

from protocol.oncall import new_role_id

from . import oncall_rules as rules
from . import sqlite_teams as teams
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

if TYPE_CHECKING:
    from .sqlite_threads import Threads

__all__ = ["SQLiteOncall", "accept_urgent", "expire_oncall", "recall_oncall"]

_ROLE_COLUMNS = "role, name, org, reserved, policy, created_at"

_HOLDERS = """
SELECT user_id FROM role_holders WHERE role = ?1
UNION
SELECT user_id FROM role_shifts WHERE role = ?1 AND start <= ?2 AND "end" > ?2
ORDER BY 1 LIMIT ?3"""


def _role(r: tuple) -> Role:  # type: ignore[type-arg]
    return Role(r[0], r[1], r[2], bool(r[3]), None if r[4] is None else bytes(r[4]), r[5])


def _audit(conn: sqlite3.Connection, events: list[AuditEvent]) -> None:
    conn.executemany(
        "INSERT INTO audit_log (at, actor, action, user_id, device_id, address, detail) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(e.at, e.actor, e.action, e.user_id, e.device_id, e.address, e.detail) for e in events],
    )


def _holders(conn: sqlite3.Connection, role: str, now: int) -> list[str]:
    return [u for (u,) in conn.execute(_HOLDERS, (role, now, rules.MAX_ROLE_HOLDERS))]


# --- roles ----------------------------------------------------------------------------


def _take_role(
    conn: sqlite3.Connection, role: str, user_id: str, join: bool, now: int, max_roles: int
) -> tuple[bool, list[str]] | None:
    if conn.execute("SELECT 1 FROM roles WHERE role = ?", (role,)).fetchone() is None:
        return None
    manual = [u for (u,) in conn.execute("SELECT user_id FROM role_holders WHERE role = ?", (role,))]
    if user_id not in manual:
        held = conn.execute("SELECT count(*) FROM role_holders WHERE user_id = ?", (user_id,)).fetchone()[0]
        if held >= max_roles:
            return False, []
        if (
            join
            and user_id not in _holders(conn, role, now)
            and len(_holders(conn, role, now)) >= (rules.MAX_ROLE_HOLDERS)
        ):
            return False, []
    released = [] if join else sorted(u for u in manual if u != user_id)
    conn.executemany("DELETE FROM role_holders WHERE role = ? AND user_id = ?", [(role, u) for u in released])
    conn.execute(
        "INSERT INTO role_holders (role, user_id, since) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        (role, user_id, now),
    )
    detail = f"role={role} join={str(join).lower()}" + (f" released={','.join(released)}" if released else "")
    _audit(conn, [AuditEvent(now, user_id, "role.taken", user_id, None, None, detail)])
    return True, released


def _leave_role(conn: sqlite3.Connection, role: str, user_id: str, now: int) -> bool:
    n = conn.execute("DELETE FROM role_holders WHERE role = ? AND user_id = ?", (role, user_id)).rowcount
    if n:
        _audit(conn, [AuditEvent(now, user_id, "role.left", user_id, None, None, f"role={role}")])
    return bool(n)


def _assign_role(conn: sqlite3.Connection, role: str, user_id: str, now: int) -> bool:
    if conn.execute("SELECT 1 FROM roles WHERE role = ?", (role,)).fetchone() is None:
        return False
    holders = _holders(conn, role, now)
    if user_id not in holders and len(holders) >= rules.MAX_ROLE_HOLDERS:
        return False
    conn.execute(
        "INSERT INTO role_holders (role, user_id, since) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        (role, user_id, now),
    )
    return True


def _replace_shifts(conn: sqlite3.Connection, role_shifts: list[Shift], roles: list[str]) -> int:
    conn.execute(
        "DELETE FROM role_shifts WHERE role IN (SELECT value FROM json_each(?))", (json.dumps(roles),)
    )
    conn.executemany(
        'INSERT INTO role_shifts (role, user_id, start, "end") VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING',
        [(s.role, s.user_id, s.start, s.end) for s in role_shifts],
    )
    return len(role_shifts)


def _delete_role(conn: sqlite3.Connection, role: str) -> bool:
    conn.execute("DELETE FROM role_holders WHERE role = ?", (role,))
    conn.execute("DELETE FROM role_shifts WHERE role = ?", (role,))
    return bool(conn.execute("DELETE FROM roles WHERE role = ?", (role,)).rowcount)


# --- urgent messages ---------------------------------------------------------------------


def accept_urgent(conn: sqlite3.Connection, m: NewTeamMessage) -> AcceptResult:
    """``accept_team`` of a message with held rows or a plan: the team
    message's body and primary rows, its held rows and its escalation row,
    in one transaction; a duplicate stores nothing (no second escalation)."""
    result = teams.accept_team(conn, m)
    if result.duplicate:
        return result
    body_id = conn.execute(
        "SELECT id FROM bodies WHERE sender_user = ? AND message_id = ?", (m.sender_user, m.message_id)
    ).fetchone()[0]
    conn.executemany(
        "INSERT INTO held_queue (body_id, step, device_id, wrap) VALUES (?, ?, ?, ?)",
        [(body_id, step, d, w) for step, wraps in sorted(m.held.items()) for d, w in wraps.items()],
    )
    if m.plan is None:
        return result
    deadlines, targets, step_targets, remind, next_at = rules.initial(m.plan, m.ts)
    conn.execute(
        "INSERT INTO escalations (sender_user, message_id, ts, expires_at, interval, deadlines, targets, "
        "step_targets, next_remind, next_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
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
        ),
    )
    return result


def _attested(conn: sqlite3.Connection, user_id: str) -> list[str]:
    return [
        d
        for (d,) in conn.execute(
            "SELECT device_id FROM devices WHERE user_id = ? AND revoked_at IS NULL AND attested "
            "ORDER BY created_at, device_id",
            (user_id,),
        )
    ]


def _statuses(
    conn: sqlite3.Connection,
    row: rules.EscRow,
    users: list[str],
    skip: str | None,
    ts: int,
    expires_at: int,
    payload: bytes,
) -> list[Queued]:
    """Queue an ``urgent_status`` for every attested device of ``users`` but ``skip``."""
    out: list[Queued] = []
    for user in users:
        for device in _attested(conn, user):
            if device == skip:
                continue
            cur = conn.execute(
                "INSERT INTO queue (device_id, kind, message_id, peer_user, peer_device, recipient_user, ts, "
                "expires_at, payload) VALUES (?, ?, ?, ?, '', ?, ?, ?, ?)",
                (
                    device,
                    int(Kind.URGENT_STATUS),
                    row.message_id,
                    row.sender_user,
                    user,
                    ts,
                    expires_at,
                    payload,
                ),
            )
            assert cur.lastrowid is not None
            out.append(
                Queued(
                    cur.lastrowid,
                    device,
                    Kind.URGENT_STATUS,
                    row.message_id,
                    row.sender_user,
                    "",
                    ts,
                    payload,
                )
            )
    return out


_BODY = (
    "SELECT id, sender_device, ts, body, team, role, urgent FROM bodies "
    "WHERE sender_user = ? AND message_id = ?"
)


def _release(conn: sqlite3.Connection, row: rules.EscRow, step: int) -> list[Queued]:
    """Move the held rows of ``step`` into ``team_queue`` with new seqs."""
    body = conn.execute(_BODY, (row.sender_user, row.message_id)).fetchone()
    if body is None:
        return []
    held = conn.execute(
        "DELETE FROM held_queue WHERE body_id = ? AND step = ? RETURNING device_id, wrap", (body[0], step)
    ).fetchall()
    held.sort()
    first = teams.take_seqs(conn, len(held))
    conn.executemany(
        "INSERT INTO team_queue (seq, device_id, body_id, wrap, step) VALUES (?, ?, ?, ?, ?)",
        [(first + i, d, body[0], w, step) for i, (d, w) in enumerate(held)],
    )
    return [
        Queued(
            first + i,
            d,
            Kind.TEAM,
            row.message_id,
            row.sender_user,
            body[1],
            body[2],
            w,
            body[3],
            body[4],
            body[5],
            bool(body[6]),
            step,
        )
        for i, (d, w) in enumerate(held)
    ]


def _escalation(conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> rules.EscRow | None:
    r = conn.execute(f"SELECT {rules.ESC_COLUMNS} FROM escalations WHERE {where}", args).fetchone()
    return None if r is None else rules.to_esc_row(r)


def _perform(conn: sqlite3.Connection, esc_id: int, now: int) -> list[EscalationDue]:
    """Every action due on one escalation, and its new timers (one writer job)."""
    row = _escalation(conn, "id = ? AND next_at <= ?", (esc_id, now))
    if row is None:
        return []  # done meanwhile (acknowledged, recalled, expired)
    actions, after = rules.advance(row, now)
    out: list[EscalationDue] = []
    events: list[AuditEvent] = []
    for a in actions:
        if a.kind == "step":
            target = row.step_targets[a.step - 1]
            released = _release(conn, row, a.step)
            payload = rules.status_payload(rules.ESCALATED, a.step, None, None, target)
            statuses = _statuses(conn, row, [row.sender_user], None, now, row.expires_at, payload)
            events.append(rules.audit_event(now, "urgent.escalated", row, a.step, target=target))
            out.append(
                EscalationDue(
                    esc_id, row.sender_user, row.message_id, "step", a.step, target, released, statuses, (), 0
                )
            )
        elif a.kind == "final":
            payload = rules.status_payload(rules.UNACKNOWLEDGED, a.step, None, None, None)
            statuses = _statuses(conn, row, [row.sender_user], None, now, row.expires_at, payload)
            events.append(rules.audit_event(now, "urgent.unacknowledged", row, a.step))
            out.append(
                EscalationDue(
                    esc_id, row.sender_user, row.message_id, "final", a.step, None, [], statuses, (), 0
                )
            )
        else:
            users = tuple(rules.released_users(after))
            out.append(
                EscalationDue(
                    esc_id, row.sender_user, row.message_id, "remind", a.step, None, [], [], users, a.n
                )
            )
    conn.execute(
        "UPDATE escalations SET step = ?, state = ?, next_remind = ?, reminders = ?, next_at = ? "
        "WHERE id = ?",
        (after.step, after.state, after.next_remind, after.reminders, rules.next_at(after), esc_id),
    )
    _audit(conn, events)
    return out


def _acknowledge(
    conn: sqlite3.Connection, sender: str, mid: bytes, user: str, device: str, now: int, expires_at: int
) -> AckResult | None:
    row = _escalation(conn, "sender_user = ? AND message_id = ?", (sender, mid))
    if row is None or user not in rules.released_users(row):
        return None
    first = conn.execute(
        "SELECT ack_user, ack_device, ack_at FROM escalations WHERE id = ?", (row.id,)
    ).fetchone()
    if row.state == rules.ACKNOWLEDGED:
        return AckResult(False, first[0], first[1], first[2], row.step, [], 0)
    conn.execute(
        "UPDATE escalations SET state = ?, ack_user = ?, ack_device = ?, ack_at = ?, next_at = NULL "
        "WHERE id = ?",
        (rules.ACKNOWLEDGED, user, device, now, row.id),
    )
    deleted = conn.execute(
        "DELETE FROM held_queue WHERE body_id IN "
        "(SELECT id FROM bodies WHERE sender_user = ? AND message_id = ?)",
        (sender, mid),
    ).rowcount
    payload = rules.status_payload(rules.ACKNOWLEDGED, row.step, user, device, None)
    statuses = _statuses(conn, row, [sender, *rules.released_users(row)], device, now, expires_at, payload)
    _audit(
        conn,
        [rules.audit_event(now, "urgent.acknowledged", row, row.step, actor=user, user=user, device=device)],
    )
    return AckResult(True, user, device, now, row.step, statuses, int(deleted))


def _escalation_state(conn: sqlite3.Connection, sender: str, mid: bytes) -> dict[str, Any] | None:
    r = conn.execute(
        "SELECT state, step, next_at, reminders, ack_user, ack_device, ack_at FROM escalations "
        "WHERE sender_user = ? AND message_id = ?",
        (sender, mid),
    ).fetchone()
    if r is None:
        return None
    keys = ("state", "step", "next_at", "reminders", "ack_user", "ack_device", "ack_at")
    return {**dict(zip(keys, r, strict=True)), "held": _held_rows(conn, sender, mid)}


def _held_rows(conn: sqlite3.Connection, sender: str, mid: bytes) -> int:
    return int(
        conn.execute(
            "SELECT count(*) FROM held_queue h JOIN bodies b ON b.id = h.body_id "
            "WHERE b.sender_user = ? AND b.message_id = ?",
            (sender, mid),
        ).fetchone()[0]
    )


def expire_oncall(conn: sqlite3.Connection, now: int) -> None:
    """Held rows and escalations go with their body (before the bodies' sweep)."""
    conn.execute(
        "DELETE FROM held_queue WHERE body_id IN (SELECT id FROM bodies WHERE expires_at <= ?)", (now,)
    )
    conn.execute("DELETE FROM escalations WHERE expires_at <= ?", (now,))


def recall_oncall(conn: sqlite3.Connection, sender: str, mid: bytes) -> int:
    """``recall``'s part, before the body goes: the held rows (counted) and the escalation."""
    conn.execute("DELETE FROM escalations WHERE sender_user = ? AND message_id = ?", (sender, mid))
    return int(
        conn.execute(
            "DELETE FROM held_queue WHERE body_id IN (SELECT id FROM bodies WHERE sender_user = ? "
            "AND message_id = ?)",
            (sender, mid),
        ).rowcount
    )


# --- the store's methods ---------------------------------------------------------------


class SQLiteOncall:
    """The on-call methods of :class:`~miss_server.store.sqlite.SQLiteStore`
    (see :class:`~miss_server.store.base.Store`)."""

    _db: Threads

    async def create_role(self, name: str, org: str, reserved: bool, policy: bytes | None, now: int) -> Role:
        role = Role(new_role_id(), name, org, reserved, policy, now)
        await self._db.write(
            lambda c: c.execute(
                f"INSERT INTO roles ({_ROLE_COLUMNS}, search) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (role.role, name, org, int(reserved), policy, now, rules.role_search_text(name, org)),
            )
        )
        return role

    async def get_role(self, role: str) -> Role | None:
        def run(conn: sqlite3.Connection) -> Role | None:
            r = conn.execute(f"SELECT {_ROLE_COLUMNS} FROM roles WHERE role = ?", (role,)).fetchone()
            return None if r is None else _role(r)

        return await self._db.read(run)

    async def set_role_policy(self, role: str, policy: bytes | None) -> bool:
        return await self._db.write(
            lambda c: bool(c.execute("UPDATE roles SET policy = ? WHERE role = ?", (policy, role)).rowcount)
        )

    async def delete_role(self, role: str) -> bool:
        return await self._db.write(_delete_role, role)

    async def search_roles(self, query: str, limit: int, now: int) -> list[Role]:
        folded = rules.fold(query)

        def run(conn: sqlite3.Connection) -> list[Role]:
            rows = conn.execute(
                f"SELECT {_ROLE_COLUMNS} FROM roles WHERE instr(search, ?) > 0 ORDER BY name, role LIMIT ?",
                (folded, limit),
            ).fetchall()
            return [_role(r) for r in rows]

        return await self._db.read(run)

    async def list_roles(self) -> list[Role]:
        return await self._db.read(
            lambda c: [
                _role(r) for r in c.execute(f"SELECT {_ROLE_COLUMNS} FROM roles ORDER BY org, name, role")
            ]
        )

    async def role_holders(self, role: str, now: int) -> list[str]:
        return await self._db.read(_holders, role, now)

    async def user_roles(self, user_id: str, now: int) -> list[Role]:
        def run(conn: sqlite3.Connection) -> list[Role]:
            rows = conn.execute(
                f"SELECT {_ROLE_COLUMNS} FROM roles WHERE role IN ("
                "SELECT role FROM role_holders WHERE user_id = ?1 UNION "
                'SELECT role FROM role_shifts WHERE user_id = ?1 AND start <= ?2 AND "end" > ?2) '
                "ORDER BY name, role",
                (user_id, now),
            ).fetchall()
            return [_role(r) for r in rows]

        return await self._db.read(run)

    async def take_role(
        self, role: str, user_id: str, join: bool, now: int, max_roles: int
    ) -> tuple[bool, list[str]]:
        done = await self._db.write(_take_role, role, user_id, join, now, max_roles)
        if done is None:  # raised here, not in the writer: the batch it rode in commits
            raise LookupError(f"unknown role {role!r}")
        return done

    async def leave_role(self, role: str, user_id: str) -> bool:
        return await self._db.write(_leave_role, role, user_id, rules.now_ms())

    async def assign_role(self, role: str, user_id: str, now: int) -> bool:
        return await self._db.write(_assign_role, role, user_id, now)

    async def unassign_role(self, role: str, user_id: str) -> bool:
        return await self._db.write(
            lambda c: bool(
                c.execute("DELETE FROM role_holders WHERE role = ? AND user_id = ?", (role, user_id)).rowcount
            )
        )

    async def replace_shifts(self, role_shifts: list[Shift], roles: list[str]) -> int:
        if any(s.role not in roles for s in role_shifts):
            raise ValueError("a shift of a role not among those replaced")
        return await self._db.write(_replace_shifts, list(role_shifts), list(roles))

    async def shifts(self, role: str, since: int) -> list[Shift]:
        return await self._db.read(
            lambda c: [
                Shift(*r)
                for r in c.execute(
                    'SELECT role, user_id, start, "end" FROM role_shifts WHERE role = ? AND "end" > ? '
                    "ORDER BY start, user_id",
                    (role, since),
                )
            ]
        )

    async def set_org_policy(self, org: str, interval: int, final: int) -> None:
        await self._db.write(
            lambda c: c.execute(
                "INSERT INTO org_policies (org, interval, final) VALUES (?, ?, ?) "
                "ON CONFLICT (org) DO UPDATE SET interval = excluded.interval, final = excluded.final",
                (org, interval, final),
            )
        )

    async def get_org_policy(self, org: str) -> OrgPolicy | None:
        def run(conn: sqlite3.Connection) -> OrgPolicy | None:
            r = conn.execute("SELECT org, interval, final FROM org_policies WHERE org = ?", (org,)).fetchone()
            return None if r is None else OrgPolicy(*r)

        return await self._db.read(run)

    async def due_escalations(self, now: int, limit: int) -> list[EscalationDue]:
        ids = await self._db.read(
            lambda c: [
                i
                for (i,) in c.execute(
                    "SELECT id FROM escalations WHERE next_at <= ? ORDER BY next_at, id LIMIT ?", (now, limit)
                )
            ]
        )
        out: list[EscalationDue] = []
        for esc_id in ids:
            out.extend(await self._db.write(_perform, esc_id, now))
        return out

    async def acknowledge(
        self, sender_user: str, message_id: bytes, user_id: str, device_id: str, now: int, expires_at: int
    ) -> AckResult | None:
        return await self._db.write(
            _acknowledge, sender_user, message_id, user_id, device_id, now, expires_at
        )

    async def escalation_state(self, sender_user: str, message_id: bytes) -> dict[str, Any] | None:
        return await self._db.read(_escalation_state, sender_user, message_id)

    async def held_rows(self, sender_user: str, message_id: bytes) -> int:
        return await self._db.read(_held_rows, sender_user, message_id)

    async def open_escalations(self, sender_user: str, now: int) -> int:
        return await self._db.read(
            lambda c: c.execute(
                "SELECT count(*) FROM escalations WHERE sender_user = ? AND state = ? AND expires_at > ?",
                (sender_user, rules.OPEN, now),
            ).fetchone()[0]
        )
