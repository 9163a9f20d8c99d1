"""Value types of on-call roles and urgent messages (SPEC §14) that the SDK
hands to applications; :mod:`miss_client.models` re-exports the events in
its ``Event`` union::

    async for event in client.events():
        match event:
            case Message(urgent=True): ...     # ring; client.acknowledge(event) stops it
            case UrgentReminded(): ...         # ring again (not stored)
            case UrgentStatusChanged(): ...    # escalated / acknowledged / unacknowledged
            case RoleHoldersChanged(): ...     # a handover: who holds the role now

No behaviour beyond small helpers; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.oncall import Policy

__all__ = [
    "URGENT_STATES",
    "Acknowledgement",
    "RoleHoldersChanged",
    "RoleView",
    "UrgentInfo",
    "UrgentReminded",
    "UrgentStatusChanged",
]

#: The states of :attr:`UrgentInfo.state`: ``open`` (sent or received, not
#: acknowledged), then ``escalated`` (ours: a backup step was released),
#: ``acknowledged`` or ``unacknowledged`` (ours: nobody, by the end).
URGENT_STATES = ("open", "escalated", "acknowledged", "unacknowledged")


@dataclass(frozen=True, slots=True)
class RoleView:
    """An on-call role as the hub describes it now (``role_ok``): its
    ``holders`` (user ids, sorted) and its effective escalation ``policy``,
    each step with the holders of its target now. The hub decides who holds
    a role (SPEC §14.11): a send encrypts only to holders whose attestation
    verifies, as for any recipient."""

    role: str
    name: str
    org: str
    reserved: bool
    holders: tuple[str, ...]
    policy: Policy

    def holds(self, user: str) -> bool:
        return user in self.holders

    @property
    def vacant(self) -> bool:
        return not self.holders


@dataclass(frozen=True, slots=True)
class UrgentInfo:
    """What this device recorded about a message sent to a role, or urgent
    (the local state's ``oncall`` table; it survives restarts).

    ``direction`` ``out`` (ours) or ``in``. ``role``: the role it was sent
    to. ``step``: for a received copy, the escalation step that released it
    to us (None: we were a primary recipient); for ours, the last step
    released (``target``: that step's role or user id). ``state``: one of
    :data:`URGENT_STATES`; once ``acknowledged``, ``ack_user``,
    ``ack_device`` and ``ack_at`` (ms) say who and when. ``reminders``:
    how many reminders came (received messages)."""

    from_user: str
    id: bytes
    direction: str
    role: str | None
    urgent: bool
    step: int | None
    target: str | None
    state: str
    ack_user: str | None = None
    ack_device: str | None = None
    ack_at: int | None = None
    reminders: int = 0
    updated_at: int = 0

    @property
    def acknowledged(self) -> bool:
        return self.state == "acknowledged"

    @property
    def waiting(self) -> bool:
        """Urgent and not acknowledged: an alert still rings for it."""
        return self.urgent and self.state in ("open", "escalated")


@dataclass(frozen=True, slots=True)
class UrgentReminded:
    """Event: the ``n``-th reminder of urgent message ``id`` of ``sender``,
    not acknowledged yet: ring again (best effort, never stored)."""

    id: bytes
    sender: str
    n: int


@dataclass(frozen=True, slots=True)
class UrgentStatusChanged:
    """Event: news about urgent message ``id`` of ``sender`` (SPEC §14.6),
    already recorded in the local state: ``escalated`` (step ``step``
    released to ``target``), ``acknowledged`` (by ``user``'s ``device`` at
    ``ts``), ``unacknowledged`` (nobody, by the end of the policy). ``info``
    is the message's record after it."""

    id: bytes
    sender: str
    state: str
    step: int
    ts: int
    user: str | None = None
    device: str | None = None
    target: str | None = None
    info: UrgentInfo | None = None


@dataclass(frozen=True, slots=True)
class RoleHoldersChanged:
    """Event: our holdership of ``role`` changed (we took it, left it, were
    handed over or assigned): ``holders`` now. ``name``: the role's name if
    this device knows it."""

    role: str
    holders: tuple[str, ...]
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    """The answer to :meth:`Client.acknowledge`: who acknowledged urgent
    message ``id`` of ``sender`` first (``user``, ``device``, ``at`` in
    ms), and whether it was this request (``first``)."""

    id: bytes
    sender: str
    user: str
    device: str
    at: int
    first: bool
