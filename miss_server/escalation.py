"""The timers of urgent messages (SPEC §14.6), and their acknowledgement.

Theory of operation
-------------------
An urgent message is stored with its escalation row in the transaction
that accepts it (:meth:`Store.accept_team`): the absolute deadlines of its
steps and of its final deadline, and the time of its next reminder. No node
keeps a timer of its own. Every node runs :meth:`Escalator.run_forever`,
which every ``escalation_tick_ms`` asks the store for what is due
(:meth:`Store.due_escalations`). The store claims each due escalation in a
transaction of its own (PostgreSQL: ``FOR UPDATE SKIP LOCKED``), performs
the action and advances the timers in that same transaction, and audits it
there too; so each action happens exactly once whichever nodes poll, and a
node killed mid-tick leaves the claim uncommitted for the next poll of any
node. The cost of a node's death is at most one tick of delay.

What the node does with an action once the store committed it:

* ``step``: the held rows of step k became ordinary rows, and ``escalated``
  statuses were queued for the sender; both are announced with wake-ups on
  the devices' channels (``wakeup.py``), like any new row.
* ``final``: the ``unacknowledged`` statuses were queued; announced likewise.
* ``remind``: the released recipients get an ``urgent_reminder`` push. A
  push is not a row: the node publishes ``b"U" + msgpack([id, sender, n,
  users])`` on the broker's control channel and every node, itself
  included, pushes the frame to its local connections of those users that
  named ``oncall``. A lost reminder is lost (the next one follows an
  interval later); a lost wake-up is not, since the row is in the store.

An acknowledgement (:meth:`Escalator.acknowledge`) goes to the store, which
stops the escalation, deletes the held rows nobody will see, and queues the
``acknowledged`` statuses, in one transaction; the node wakes them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgpack

from protocol import errors
from protocol.frames import Acknowledge, AcknowledgeOk, UrgentReminder, encode

from .broker.base import CONTROL_CHANNEL, Broker, BrokerUnavailable
from .config import Settings
from .delivery import LocalLinks
from .metrics import Metrics
from .store.base import EscalationDue, Store, StoreUnavailable
from .wakeup import row_wakeups

__all__ = ["ESCALATION_BATCH", "TAG_URGENT_REMINDER", "Escalator"]

log = logging.getLogger("miss.escalation")

#: The control channel's reminder announcement (module doc).
TAG_URGENT_REMINDER = b"U"
#: Escalations one call of ``due_escalations`` handles; a full batch is
#: followed at once by another.
ESCALATION_BATCH = 100


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Escalator:
    """Runs the due actions of urgent messages on this node and answers
    ``acknowledge`` (module doc). ``wake`` publishes wake-ups (the hub's);
    ``clock`` gives the time in ms."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        links: LocalLinks,
        settings: Settings,
        metrics: Metrics,
        wake: Callable[[list[tuple[str, bytes]]], None],
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self._store = store
        self._broker = broker
        self._links = links
        self._settings = settings
        self._metrics = metrics
        self._wake = wake
        self._clock = clock

    # --- the timers --------------------------------------------------------------

    async def run_forever(self) -> None:
        """Poll for due actions every ``escalation_tick_ms`` (runs as a task);
        survives store and broker outages (tries again at the next tick)."""
        tick = self._settings.escalation_tick_ms / 1000
        while True:
            try:
                while await self.tick() >= ESCALATION_BATCH:
                    pass
            except StoreUnavailable as exc:
                log.warning("escalations not checked", extra={"error": str(exc)})
            except Exception:  # a bug must not stop every urgent message for good
                log.exception("escalation tick failed")
            await asyncio.sleep(tick)

    async def tick(self) -> int:
        """Perform what is due now; returns how many actions. Raises StoreUnavailable."""
        due = await self._store.due_escalations(self._clock(), ESCALATION_BATCH)
        for action in due:
            await self._performed(action)
        return len(due)

    async def _performed(self, action: EscalationDue) -> None:
        """Announce what the store did for one due action."""
        self._metrics.escalation_steps.labels(action.kind).inc()
        self._wake(row_wakeups([*action.released, *action.statuses]))
        if action.kind == "remind":
            if action.remind_users:
                await self.remind(action.message_id, action.sender_user, action.n, action.remind_users)
        else:
            log.info(
                "urgent message escalated" if action.kind == "step" else "urgent message unacknowledged",
                extra={"escalation": action.esc_id, "step": action.step, "released": len(action.released)},
            )

    # --- reminders -----------------------------------------------------------------

    async def remind(
        self, message_id: bytes, sender: str, n: int, users: tuple[str, ...] | list[str]
    ) -> None:
        """Push the ``n``-th ``urgent_reminder`` to every connection, on every
        node, of ``users`` that named ``oncall``; without a broker, this node's."""
        payload = TAG_URGENT_REMINDER + msgpack.packb([message_id, sender, n, list(users)], use_bin_type=True)
        try:
            await self._broker.publish(CONTROL_CHANNEL, payload)
        except BrokerUnavailable as exc:
            log.warning("reminder not published", extra={"error": str(exc)})
            self.on_control(payload)

    def on_control(self, payload: bytes) -> None:
        """The control channel's reminders (module doc)."""
        try:
            message_id, sender, n, users = msgpack.unpackb(payload[1:], raw=False)
            frame = encode(UrgentReminder(message_id, sender, n))
        except Exception as exc:  # from a newer node, or garbled: nothing to push
            log.warning("unreadable reminder", extra={"error": str(exc)})
            return
        self._links.push(frame, users, lambda link: link.oncall)

    # --- acknowledge -------------------------------------------------------------------

    async def acknowledge(self, user_id: str, device_id: str, frame: Acknowledge) -> bytes:
        """Record the user's acknowledgement of urgent message ``frame.id``
        of ``frame.sender``; ``acknowledge_ok`` naming the first one.
        NotRecipient unless a copy of it was released to this user (the
        same answer for an unknown id, a message that is not urgent, and
        one released to others only)."""
        now = self._clock()
        result = await self._store.acknowledge(
            frame.sender, frame.id, user_id, device_id, now, now + self._settings.message_ttl_ms
        )
        if result is None:
            raise errors.NotRecipient("no urgent message released to this user under this id")
        if result.first:
            self._metrics.acknowledgements.inc()
            log.info("urgent message acknowledged", extra={"step": result.step, "held": result.deleted_held})
        self._wake(row_wakeups(result.statuses))
        return encode(
            AcknowledgeOk(
                frame.rid, frame.id, frame.sender, result.user, result.device, result.at, result.first
            )
        )
