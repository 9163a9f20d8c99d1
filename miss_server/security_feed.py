"""Security events between hub nodes: each node enforces revocations and
suspensions on the devices connected to it, whichever node or tool made
them.

Security events (revocations, suspensions, verifications) reach every node
twice: at once through the broker when a hub made the change, and through
the audit log, which every node polls, for changes ``miss-admin`` made
without a broker at hand. A revoked device or a suspended account connected
to any node is thus closed within about a second.

Contract
--------
:class:`SecurityFeed` is given the store to poll, the broker, the node's
account cache and the node's :class:`~miss_server.delivery.LocalLinks`.

The fast path, for the hub's handlers: :meth:`SecurityFeed.user_changed`
(every node forgets its cached account of a user) and
:meth:`SecurityFeed.device_revoked` (the device's connection ends wherever
it is). A broker outage is no error to them: the other nodes then learn
from the audit log. :meth:`SecurityFeed.on_control` is the handler of the
broker's control channel, whose one announcement is ``b"I" + user id``:
that user's account or devices changed.

The slow path: run :meth:`SecurityFeed.run_forever` as a task; it never
returns and survives store outages (it tries again at the next poll). For
each event it has not applied before, :meth:`SecurityFeed.apply`:

* forgets the user's cached account, so the next request reads the store;
* ``device.revoked``: ends that device's connection here with
  ``device_revoked``;
* ``account.suspended``, ``account.deleted``: ends every connection here of
  the user's devices with ``account_suspended``.

Events already in the log when the node starts are only marked seen: the
store already tells the truth to every later authentication.

Theory of operation
-------------------
Each poll reads the last ``SECURITY_WINDOW_MS`` of events above a cursor,
page by page (``SECURITY_PAGE``), oldest first, so that no event is skipped
however many come at once. Events are written in the background, so one
may appear a little after its time; the cursor is therefore the highest seq
seen at least ``SECURITY_SETTLE_SECONDS`` ago (an event with a lower seq
could only appear later if its transaction stayed open that long). A burst
(10,000 devices enrolled at once) is thus read for a few seconds, not at
every poll for a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from protocol import errors

from .accounts import Accounts
from .broker.base import CONTROL_CHANNEL, Broker, BrokerUnavailable, device_channel
from .delivery import LocalLinks
from .store.base import AuditEvent, Store, StoreUnavailable
from .wakeup import close_wakeup

__all__ = ["ROLE_ACTIONS", "SECURITY_ACTIONS", "SecurityFeed"]

#: Audit actions that change what a node must enforce (see module doc).
SECURITY_ACTIONS = [
    "device.revoked",
    "device.enrolled",
    "account.suspended",
    "account.unsuspended",
    "account.verified",
    "account.deleted",
    # miss-admin service replies (SPEC §17.2): the cached account says
    # whether the service accepts replies, and must be read again.
    "service.replies",
    # A team record written by miss-admin (SPEC §13): detail is the team id,
    # user_id the user it concerns; members get ``team_changed``.
    "team.changed",
    # An administrator's assignment of an on-call role (SPEC §14.6): detail
    # starts with the role id; the user gets ``role_changed``.
    "role.assigned",
    "role.unassigned",
]
#: The actions of SECURITY_ACTIONS that only call for a ``role_changed`` push.
ROLE_ACTIONS = frozenset({"role.assigned", "role.unassigned"})
#: How far back each poll of the audit log looks (ms).
SECURITY_WINDOW_MS = 60_000
#: How old (s) a seq seen by a poll must be before later polls skip every
#: event up to it.
SECURITY_SETTLE_SECONDS = 5.0
#: Events a poll reads at a time; a poll reads pages until one is not full.
SECURITY_PAGE = 10_000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SecurityFeed:
    """Spreads security events to every node and enforces them on this one
    (see module doc)."""

    def __init__(self, store: Store, broker: Broker, accounts: Accounts, links: LocalLinks) -> None:
        self._store = store
        self._broker = broker
        self._accounts = accounts
        self._links = links
        self._seen: dict[int, int] = {}  # audit seq -> at, of the events applied
        #: Pushes ``team_changed`` for a team (and a user it concerns) to this
        #: node's connections, given by the hub (teams.py).
        self.on_team_changed: Callable[[str, list[str]], Awaitable[None]] | None = None
        #: Pushes ``role_changed`` for a role to this node's connections of
        #: the users given, by the hub (roles.py).
        self.on_role_changed: Callable[[str, list[str]], Awaitable[None]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- through the broker -----------------------------------------------------

    async def user_changed(self, user_id: str) -> None:
        """Every node forgets its cached account of ``user_id``."""
        self._accounts.forget(user_id)
        with contextlib.suppress(BrokerUnavailable):
            await self._broker.publish(CONTROL_CHANNEL, b"I" + user_id.encode())

    async def device_revoked(self, user_id: str, device_id: str) -> None:
        """End the device's connection wherever it is, now (the audit log
        is the slower second path)."""
        await self.user_changed(user_id)
        try:  # reaches this node's connection of the device too
            await self._broker.publish(device_channel(device_id), close_wakeup(errors.DeviceRevoked))
        except BrokerUnavailable:
            self._links.end_device(device_id, errors.DeviceRevoked)

    def on_control(self, payload: bytes) -> None:
        """Broker handler of the control channel (module doc)."""
        if payload[:1] == b"I":
            self._accounts.forget(payload[1:].decode())

    # --- through the audit log --------------------------------------------------

    def apply(self, event: AuditEvent) -> None:
        """Enforce one security event on this node (module doc)."""
        if event.user_id is None:
            return
        if event.action == "team.changed":
            if self.on_team_changed is not None:
                self._spawn(self._team_changed(event.detail, event.user_id))
            return
        if event.action in ROLE_ACTIONS:
            if self.on_role_changed is not None and event.detail:
                self._spawn(self._role_changed(event.detail.split(" ", 1)[0], event.user_id))
            return
        self._accounts.forget(event.user_id)
        if event.action == "device.revoked" and event.device_id is not None:
            self._links.end_device(event.device_id, errors.DeviceRevoked)
        elif event.action in ("account.suspended", "account.deleted"):
            self._links.end_user(event.user_id, errors.AccountSuspended)

    def _spawn(self, push: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(push)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _role_changed(self, role: str, user_id: str) -> None:
        assert self.on_role_changed is not None
        with contextlib.suppress(StoreUnavailable):  # a push is best effort
            await self.on_role_changed(role, [user_id])

    async def _team_changed(self, team: str, user_id: str) -> None:
        assert self.on_team_changed is not None
        with contextlib.suppress(StoreUnavailable):  # a push is best effort
            await self.on_team_changed(team, [user_id])

    async def run_forever(self, interval: float = 0.5) -> None:
        """Poll the audit log every ``interval`` seconds (runs as a task)."""
        loop = asyncio.get_running_loop()
        first = True
        cursor = top = 0  # top: the highest seq seen so far
        marks: deque[tuple[float, int]] = deque()  # (when, top then)
        while True:
            since = _now_ms() - SECURITY_WINDOW_MS
            with contextlib.suppress(StoreUnavailable):  # try again at the next poll
                after = cursor
                while True:
                    page = await self._store.audit_log(
                        since_at=since,
                        actions=SECURITY_ACTIONS,
                        limit=SECURITY_PAGE,
                        after_seq=after,
                        oldest=True,
                    )
                    for event in page:
                        if event.seq not in self._seen:
                            self._seen[event.seq] = event.at
                            if not first:
                                self.apply(event)
                    if page:
                        after = page[-1].seq
                        top = max(top, after)
                    if len(page) < SECURITY_PAGE:
                        break
                first = False
                now = loop.time()
                marks.append((now, top))
                while marks and marks[0][0] <= now - SECURITY_SETTLE_SECONDS:
                    cursor = marks.popleft()[1]
                self._seen = {seq: at for seq, at in self._seen.items() if at >= since and seq > cursor}
            await asyncio.sleep(interval)
