"""The rules of escalation timers (SPEC §14), pure: what both stores
(``sqlite_oncall.py``, ``postgres_oncall.py``) do to an ``escalations`` row
when its ``next_at`` has come, and the shapes they share.

An escalation row holds the plan (``deadlines``: steps 1..n, then the final
deadline; ``targets`` per step, 0 = primary; ``step_targets``) and its
progress: ``step`` (steps released), ``state`` (``open``, ``acknowledged``,
``unacknowledged``), ``next_remind`` and ``reminders``. :func:`advance`
says which actions are due at ``now`` and what the row becomes; the stores
perform them (release held rows, queue statuses, audit) in the transaction
that writes the new row.
"""

from __future__ import annotations

import json
import time
import unicodedata
from dataclasses import dataclass, replace

import msgpack

from protocol.oncall import MAX_ROLE_HOLDERS

from .base import AuditEvent, EscalationPlan

__all__ = [
    "MAX_ROLE_HOLDERS",
    "OPEN",
    "Action",
    "EscRow",
    "advance",
    "audit_event",
    "fold",
    "initial",
    "next_at",
    "now_ms",
    "released_users",
    "status_payload",
]

OPEN = "open"
ACKNOWLEDGED = "acknowledged"
UNACKNOWLEDGED = "unacknowledged"
ESCALATED = "escalated"


def now_ms() -> int:
    """The audit time of a ``leave_role``, whose signature has no ``now``."""
    return int(time.time() * 1000)


def fold(text: str) -> str:
    """``text`` for a case- and accent-insensitive contains test: NFKD,
    combining marks dropped, casefolded ("Équipe" and "equipe" meet)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def role_search_text(name: str, org: str) -> str:
    """What a role's ``search`` column holds."""
    return fold(name) + "\x1f" + fold(org)


@dataclass(frozen=True, slots=True)
class EscRow:
    """An ``escalations`` row as both stores read it."""

    id: int
    sender_user: str
    message_id: bytes
    ts: int
    expires_at: int
    interval: int
    deadlines: tuple[int, ...]
    targets: tuple[tuple[str, ...], ...]
    step_targets: tuple[str, ...]
    step: int
    state: str
    next_remind: int | None
    reminders: int

    @property
    def steps(self) -> int:
        return len(self.deadlines) - 1


#: The columns of :class:`EscRow`, in order, for a SELECT.
ESC_COLUMNS = (
    "id, sender_user, message_id, ts, expires_at, interval, deadlines, targets, step_targets, "
    "step, state, next_remind, reminders"
)


def to_esc_row(r: tuple) -> EscRow:  # type: ignore[type-arg]
    """A row of :data:`ESC_COLUMNS` (the JSON columns parsed)."""
    return EscRow(
        int(r[0]),
        r[1],
        bytes(r[2]),
        int(r[3]),
        int(r[4]),
        int(r[5]),
        tuple(json.loads(r[6])),
        tuple(tuple(t) for t in json.loads(r[7])),
        tuple(json.loads(r[8])),
        int(r[9]),
        r[10],
        None if r[11] is None else int(r[11]),
        int(r[12]),
    )


def initial(plan: EscalationPlan, ts: int) -> tuple[str, str, str, int | None, int | None]:
    """``(deadlines, targets, step_targets, next_remind, next_at)`` of a new
    escalation row (JSON columns as text)."""
    if (
        len(plan.deadlines) < 1
        or len(plan.targets) != len(plan.deadlines)
        or (len(plan.step_targets) != len(plan.deadlines) - 1)
    ):
        raise ValueError("an escalation plan needs n + 1 deadlines, n + 1 target lists and n step targets")
    remind = ts + plan.interval if plan.interval > 0 else None
    first = plan.deadlines[0]
    return (
        json.dumps(list(plan.deadlines)),
        json.dumps([list(t) for t in plan.targets]),
        json.dumps(list(plan.step_targets)),
        remind,
        first if remind is None else min(first, remind),
    )


@dataclass(frozen=True, slots=True)
class Action:
    """One due action: ``kind`` ``step`` (step ``step`` released), ``final``
    or ``remind`` (reminder number ``n``)."""

    kind: str
    step: int
    n: int = 0


def next_at(row: EscRow) -> int | None:
    """When the row next needs the scheduler (None: never again)."""
    if row.state != OPEN:
        return None
    deadline = row.deadlines[row.step]  # step n+1's release, or the final deadline once all are out
    return deadline if row.next_remind is None else min(deadline, row.next_remind)


def advance(row: EscRow, now: int) -> tuple[list[Action], EscRow]:
    """The actions due at ``now``, in order, and the row after them: every
    step whose release time has come, then the final deadline (which ends
    the reminders), else at most one reminder. Reminders are not caught up:
    the next is due ``interval`` after this one's due time, or after ``now``
    when that is past already."""
    actions: list[Action] = []
    if row.state != OPEN:
        return actions, row
    while row.step < row.steps and row.deadlines[row.step] <= now:
        row = replace(row, step=row.step + 1)
        actions.append(Action("step", row.step))
    if row.step == row.steps and row.deadlines[-1] <= now:
        actions.append(Action("final", row.step))
        return actions, replace(row, state=UNACKNOWLEDGED)
    if row.next_remind is not None and row.next_remind <= now:
        n = row.reminders + 1
        nxt = row.next_remind + row.interval
        if nxt <= now:
            nxt = now + row.interval
        actions.append(Action("remind", row.step, n))
        row = replace(row, reminders=n, next_remind=nxt)
    return actions, row


def released_users(row: EscRow) -> list[str]:
    """The users of the steps released so far (0 = primary), but the sender, in order, once each."""
    out: list[str] = []
    for targets in row.targets[: row.step + 1]:
        for user in targets:
            if user != row.sender_user and user not in out:
                out.append(user)
    return out


def status_payload(state: str, step: int, user: str | None, device: str | None, target: str | None) -> bytes:
    """An ``urgent_status`` row's payload (``Kind.URGENT_STATUS``)."""
    return bytes(msgpack.packb([state, step, user, device, target]))


def audit_event(
    at: int,
    action: str,
    row: EscRow,
    step: int,
    *,
    actor: str = "hub",
    device: str | None = None,
    user: str | None = None,
    target: str | None = None,
) -> AuditEvent:
    """An ``urgent.*`` audit event: ids and the step, never content."""
    detail = f"id={row.message_id.hex()} sender={row.sender_user} step={step}"
    if target is not None:
        detail += f" target={target}"
    return AuditEvent(at, actor, action, user or row.sender_user, device, None, detail)
