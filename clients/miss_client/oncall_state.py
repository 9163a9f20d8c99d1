"""The local record of role and urgent messages, and of roles (SPEC §14), in
the profile's state DB (tables of schema version 5: :mod:`.state_schema`).

Theory of operation
-------------------
Urgency must survive a restart: a clinician who closes the client with an
urgent message not acknowledged must see "urgent, not acknowledged" when it
opens again, and a sender must still see where the escalation stands.
:class:`OncallState` keeps, per message ``(from_user, id)``:

* the role it was sent to, whether it is urgent (as its plaintext said), the
  escalation step a backup's copy came with;
* its state: ``open``, ``escalated`` (ours: step and target), then
  ``acknowledged`` (by whom, when) or ``unacknowledged``. A state only
  moves forward (:func:`_advance`): statuses may arrive in any order, or
  twice, and an ``acknowledged`` is final;
* every ``urgent_status`` applied, once (``oncall_log``): what the sender's
  status lines show.

The row of an outgoing message is written *before* the message's history
row (:meth:`OncallState.record_out`), and the row of a received one before
:meth:`LocalState.record_incoming`: a crash between the two leaves a row
about a message that is resent or redelivered, never an urgent message
recorded as an ordinary one. Statuses are recorded before they are acked.

Only metadata the hub sees anyway is kept here (ids, role ids, times): no
text. ``roles`` caches what ``role_ok`` said (name, organisation, holders),
so that names show offline and a role can be given by its name.
"""

from __future__ import annotations

from typing import Any

import msgpack

from protocol import frames as f
from protocol.oncall import Policy

from .models import now_ms
from .oncall_models import RoleView, UrgentInfo
from .state import LocalState

__all__ = ["OncallState", "StatusLine"]

_COLUMNS = (
    "from_user, id, direction, role, urgent, step, target, state, ack_user, ack_device, ack_at, "
    "reminders, updated_at"
)

#: How far each state is along; a status never moves a message back.
_RANK = {"open": 0, "escalated": 1, "unacknowledged": 2, "acknowledged": 3}

#: One applied status: (state, step, target, user, device, ts).
StatusLine = tuple[str, int, str | None, str | None, str | None, int]


def _info(row: tuple[Any, ...]) -> UrgentInfo:
    (from_user, mid, direction, role, urgent, step, target, state, au, ad, at, reminders, updated) = row
    return UrgentInfo(
        from_user,
        bytes(mid),
        direction,
        role,
        bool(urgent),
        step,
        target,
        state,
        au,
        ad,
        at,
        reminders,
        updated,
    )


def _advance(info: UrgentInfo, state: str, step: int) -> bool:
    """Whether a status ``state`` at ``step`` moves ``info`` forward."""
    if _RANK[state] != _RANK[info.state]:
        return _RANK[state] > _RANK[info.state]
    return state == "escalated" and step > (info.step or 0)


class OncallState:
    """The on-call tables of one profile's state DB (module docstring)."""

    def __init__(self, state: LocalState) -> None:
        self._state = state
        self.own_user = state.own_user

    # --- messages -----------------------------------------------------------------

    def record_out(
        self,
        message_id: bytes,
        *,
        role: str | None,
        urgent: bool,
        interval_ms: int | None = None,
        final_ms: int | None = None,
    ) -> None:
        """Record a message we are about to send to a role, or urgent, with
        the send's override of the policy (kept for a resend). Keeps a row
        already there (a resend)."""
        with self._state.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO oncall (from_user, id, direction, role, urgent, state, "
                "interval_ms, final_ms, updated_at) VALUES (?, ?, 'out', ?, ?, 'open', ?, ?, ?)",
                (self.own_user, message_id, role, int(urgent), interval_ms, final_ms, now_ms()),
            )

    def override(self, message_id: bytes) -> f.Urgent | None:
        """The ``send.urgent`` of one of our urgent messages (None: not urgent)."""
        row = self._state.db.execute(
            "SELECT urgent, interval_ms, final_ms FROM oncall WHERE from_user = ? AND id = ?",
            (self.own_user, message_id),
        ).fetchone()
        if row is None or not row[0]:
            return None
        return f.Urgent(row[1], row[2])

    def record_in(
        self, from_user: str, message_id: bytes, *, role: str | None, urgent: bool, step: int | None
    ) -> None:
        """Record a received role or urgent message (or our own copy),
        before the message itself; keeps a row already there."""
        direction = "out" if from_user == self.own_user else "in"
        with self._state.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO oncall (from_user, id, direction, role, urgent, step, state, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, 'open', ?)",
                (from_user, message_id, direction, role, int(urgent), step, now_ms()),
            )

    def get(self, from_user: str, message_id: bytes) -> UrgentInfo | None:
        row = self._state.db.execute(
            f"SELECT {_COLUMNS} FROM oncall WHERE from_user = ? AND id = ?", (from_user, message_id)
        ).fetchone()
        return None if row is None else _info(row)

    def with_id(self, message_id: bytes) -> list[UrgentInfo]:
        """The records of messages with this id (ids are per sender: maybe several)."""
        rows = self._state.db.execute(f"SELECT {_COLUMNS} FROM oncall WHERE id = ?", (message_id,)).fetchall()
        return [_info(r) for r in rows]

    def waiting(self, direction: str | None = None) -> list[UrgentInfo]:
        """Urgent messages not acknowledged (``in``: alerts still ringing
        here; ``out``: ours still escalating), oldest first."""
        where = "" if direction is None else "AND direction = ?"
        args: tuple[str, ...] = () if direction is None else (direction,)
        rows = self._state.db.execute(
            f"SELECT {_COLUMNS} FROM oncall WHERE urgent = 1 AND state IN ('open', 'escalated') {where} "
            "ORDER BY updated_at",
            args,
        ).fetchall()
        return [_info(r) for r in rows]

    def apply_status(self, status: f.UrgentStatus) -> tuple[UrgentInfo, bool]:
        """Record an ``urgent_status`` row (before it is acked); returns the
        message's record after it, and whether the status was new."""
        sender, mid = status.sender, status.id
        with self._state.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO oncall_log (from_user, id, state, step, target, user, device, ts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sender,
                    mid,
                    status.state,
                    status.step,
                    status.target,
                    status.user,
                    status.device,
                    status.ts,
                ),
            )
            new = cur.rowcount > 0
            direction = "out" if sender == self.own_user else "in"
            db.execute(
                "INSERT OR IGNORE INTO oncall (from_user, id, direction, urgent, state, updated_at) "
                "VALUES (?, ?, ?, 1, 'open', ?)",
                (sender, mid, direction, now_ms()),
            )
            row = db.execute(f"SELECT {_COLUMNS} FROM oncall WHERE from_user = ? AND id = ?", (sender, mid))
            info = _info(row.fetchone())
            if _advance(info, status.state, status.step):
                self._set(
                    db, info, status.state, status.step, status.target, status.user, status.device, status.ts
                )
        after = self.get(sender, mid)
        assert after is not None
        return after, new

    def record_ack(self, answer: f.AcknowledgeOk) -> UrgentInfo:
        """Record the answer to our ``acknowledge`` (the first acknowledgement)."""
        with self._state.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO oncall (from_user, id, direction, urgent, state, updated_at) "
                "VALUES (?, ?, 'in', 1, 'open', ?)",
                (answer.sender, answer.id, now_ms()),
            )
            row = db.execute(
                f"SELECT {_COLUMNS} FROM oncall WHERE from_user = ? AND id = ?", (answer.sender, answer.id)
            )
            info = _info(row.fetchone())
            if info.state != "acknowledged":
                self._set(
                    db, info, "acknowledged", info.step or 0, None, answer.user, answer.device, answer.at
                )
        after = self.get(answer.sender, answer.id)
        assert after is not None
        return after

    @staticmethod
    def _set(
        db: Any,
        info: UrgentInfo,
        state: str,
        step: int,
        target: str | None,
        user: str | None,
        device: str | None,
        ts: int,
    ) -> None:
        if state == "acknowledged":
            db.execute(
                "UPDATE oncall SET state = ?, ack_user = ?, ack_device = ?, ack_at = ?, updated_at = ? "
                "WHERE from_user = ? AND id = ?",
                (state, user, device, ts, now_ms(), info.from_user, info.id),
            )
        elif state == "escalated" and info.direction == "out":
            db.execute(
                "UPDATE oncall SET state = ?, step = ?, target = ?, updated_at = ? "
                "WHERE from_user = ? AND id = ?",
                (state, step, target, now_ms(), info.from_user, info.id),
            )
        else:
            db.execute(
                "UPDATE oncall SET state = ?, updated_at = ? WHERE from_user = ? AND id = ?",
                (state, now_ms(), info.from_user, info.id),
            )

    def reminded(self, sender: str, message_id: bytes, n: int) -> UrgentInfo | None:
        """Count a reminder; None if this device does not know the message."""
        with self._state.transaction() as db:
            db.execute(
                "UPDATE oncall SET reminders = MAX(reminders, ?) WHERE from_user = ? AND id = ?",
                (n, sender, message_id),
            )
        return self.get(sender, message_id)

    def statuses(self, from_user: str, message_id: bytes) -> list[StatusLine]:
        """Every status applied to a message, in order of time."""
        rows = self._state.db.execute(
            "SELECT state, step, target, user, device, ts FROM oncall_log WHERE from_user = ? AND id = ? "
            "ORDER BY ts, step",
            (from_user, message_id),
        ).fetchall()
        return [tuple(r) for r in rows]

    # --- roles --------------------------------------------------------------------------

    def save_role(self, view: RoleView) -> None:
        with self._state.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO roles (role, name, org, reserved, holders, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    view.role,
                    view.name,
                    view.org,
                    int(view.reserved),
                    msgpack.packb(list(view.holders)),
                    now_ms(),
                ),
            )

    def set_holders(self, role: str, holders: tuple[str, ...]) -> None:
        with self._state.transaction() as db:
            db.execute(
                "UPDATE roles SET holders = ?, updated_at = ? WHERE role = ?",
                (msgpack.packb(list(holders)), now_ms(), role),
            )

    def role_name(self, role: str) -> str | None:
        row = self._state.db.execute("SELECT name FROM roles WHERE role = ?", (role,)).fetchone()
        return None if row is None else str(row[0])

    def roles_named(self, name: str) -> list[str]:
        """Ids of the known roles named ``name`` (case-insensitive)."""
        rows = self._state.db.execute("SELECT role, name FROM roles").fetchall()
        return sorted(r for r, n in rows if n.casefold() == name.strip().casefold())

    def known_roles(self) -> list[RoleView]:
        """The roles this device saw (holders as last seen; no policy)."""
        rows = self._state.db.execute(
            "SELECT role, name, org, reserved, holders FROM roles ORDER BY name"
        ).fetchall()
        return [
            RoleView(r, n, o, bool(res), tuple(msgpack.unpackb(h)), Policy(0, (), 0))
            for r, n, o, res, h in rows
        ]
