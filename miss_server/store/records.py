"""The records a :class:`~miss_server.store.base.Store` takes and returns:
users, devices, queued rows, team and on-call rows, and the outcomes of its
calls. Plain frozen data, shared by both stores and the hub; ``base.py``
re-exports every name, so callers import them from there.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "AcceptResult",
    "AckResult",
    "AuditEvent",
    "Device",
    "EscalationDue",
    "EscalationPlan",
    "Invitation",
    "Kind",
    "NewMessage",
    "NewTeamMessage",
    "OrgPolicy",
    "Organisation",
    "Queued",
    "Refusals",
    "Role",
    "Shift",
    "TeamAppend",
    "TeamInfo",
    "TeamRecordRow",
    "User",
]

#: The rows a device refuses in one ack: seq -> reason, a short lowercase
#: name such as ``sender_unverified`` (SPEC §6.5).
Refusals = dict[int, str]


class Kind(enum.IntEnum):
    """What a queued row carries to its device."""

    MESSAGE = 1  # an envelope: a ``deliver`` frame
    RECEIPT = 2  # a ``delivered`` receipt
    REFUSAL = 3  # a ``refused`` receipt; the payload is the reason (ASCII)
    #: A team message (SPEC §13.3): the payload is the device's 72-byte key
    #: wrap, ``body`` the sealed body stored once for every device, ``team``
    #: the team. Sent only on connections that named the ``teams`` capability.
    TEAM = 4
    #: An ``urgent_status`` (SPEC §14): the payload is the msgpack array
    #: ``[state, step, user, device, target]``, ``peer_user`` the urgent
    #: message's sender. Sent only on connections that named ``oncall``.
    URGENT_STATUS = 5


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    name: str
    rpps: str
    profession: str
    organisation: str
    created_at: int  # ms
    suspended: bool = False
    status: str = "available"  # one of protocol.frames.STATUSES
    #: The latest attestation of the verification authority (protocol.attestation), if any.
    attestation: bytes | None = None
    #: A service account (SPEC §17.1): a system of ``organisation``, whose
    #: ``profession`` is ``"service"`` and ``rpps`` its ``svc:`` identifier.
    service: bool = False
    #: Whether others may write to it (SPEC §17.2): always true for a
    #: clinician; a service's is set by ``miss-admin service replies``.
    replies: bool = True

    @property
    def refuses_replies(self) -> bool:
        """A service that does not accept replies: a ``send`` to it is ``replies_refused``."""
        return self.service and not self.replies


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    user_id: str
    sign_pk: bytes
    box_pk: bytes
    label: str
    created_at: int  # ms
    revoked: bool = False
    #: The user's stored attestation names this device with these keys.
    attested: bool = False


@dataclass(frozen=True, slots=True)
class Organisation:
    name: str
    created_at: int  # ms


@dataclass(frozen=True, slots=True)
class Invitation:
    """An enrollment code not used yet and not expired (the code itself is not kept)."""

    user_id: str
    expires_at: int  # ms


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One line of the audit log. ``actor`` is who acted (``admin:<login>``,
    a user id, ``hub``); ``action`` a dotted name (``device.revoked``,
    ``auth.failed``...); ``detail`` a short free text that never holds
    message content, keys or codes. ``seq`` is assigned by the store (0 when
    appending)."""

    at: int  # ms
    actor: str
    action: str
    user_id: str | None = None
    device_id: str | None = None
    address: str | None = None
    detail: str = ""
    seq: int = 0


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One accepted ``send``: ``envelopes`` maps each target device id to its
    sealed envelope. ``ts`` is the hub's receive time (ms)."""

    message_id: bytes
    sender_user: str
    sender_device: str
    recipient_user: str
    envelopes: dict[str, bytes]
    ts: int
    expires_at: int

    def queued(self, seq: int, device_id: str) -> Queued:
        """The queue row of this message's envelope for ``device_id``, stored as ``seq``."""
        return Queued(
            seq,
            device_id,
            Kind.MESSAGE,
            self.message_id,
            self.sender_user,
            self.sender_device,
            self.ts,
            self.envelopes[device_id],
        )


@dataclass(frozen=True, slots=True)
class Queued:
    """A row waiting for one device.

    For ``Kind.MESSAGE``, ``peer_user``/``peer_device`` are the sender and
    ``payload`` the envelope. For ``Kind.RECEIPT`` and ``Kind.REFUSAL``,
    they are the recipient device that acked (or refused) message
    ``message_id``; ``payload`` is empty for a receipt and the reason, in
    ASCII, for a refusal.
    """

    seq: int
    device_id: str
    kind: Kind
    message_id: bytes
    peer_user: str
    peer_device: str
    ts: int
    payload: bytes
    #: ``Kind.TEAM`` only: the sealed body and the team it was sent to
    #: (the ``to`` of the send: a team, role or user id).
    body: bytes | None = None
    team: str | None = None
    #: ``Kind.TEAM`` only (SPEC §14): the role a role message was sent to,
    #: whether it is urgent, and the escalation step that released this copy
    #: (None for a primary row).
    role: str | None = None
    urgent: bool = False
    step: int | None = None


@dataclass(frozen=True, slots=True)
class NewTeamMessage:
    """One accepted ``send`` to a team (SPEC §13.4): ``body`` is stored once,
    and ``wraps`` maps each target device to its 72-byte key wrap, one lean
    row each. ``ts`` is the hub's receive time, ``expires_at`` the time its
    rows and body go (``min(ts + ttl, ts + default expiry)``).

    Role and urgent messages (SPEC §14) are sealed-body messages too:
    ``team`` is the ``to`` (a team, role or user id), ``role`` the role of a
    role message. An urgent one has ``plan`` (its timers) and ``held``:
    step (1..n) -> device -> wrap, the backups' rows, stored held until
    their step fires; ``wraps`` are then the primary rows (step 0)."""

    message_id: bytes
    sender_user: str
    sender_device: str
    team: str
    body: bytes
    wraps: dict[str, bytes]
    ts: int
    expires_at: int
    urgent: bool = False
    held: dict[int, dict[str, bytes]] = field(default_factory=dict)
    plan: EscalationPlan | None = None
    role: str | None = None

    def queued(self, seq: int, device_id: str) -> Queued:
        """The queue row of this message for ``device_id``, stored as ``seq``."""
        return Queued(
            seq,
            device_id,
            Kind.TEAM,
            self.message_id,
            self.sender_user,
            self.sender_device,
            self.ts,
            self.wraps[device_id],
            self.body,
            self.team,
            self.role,
            self.urgent,
            None,
        )


@dataclass(frozen=True, slots=True)
class TeamRecordRow:
    """One signed record of a team's chain as stored (SPEC §13.2): its
    position, the packed record, its signature and its hash (the head once
    it is the last)."""

    seq: int
    rec: bytes
    sig: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class TeamInfo:
    """A team's state as the hub routes by it, derived from its verified
    chain: ``seq`` is the number of records, ``head`` the hash of the last;
    ``creator`` is who the creation record names as ``by`` (``authority``
    for an administrator's)."""

    team: str
    name: str
    org: str
    lifespan: int | None
    seq: int
    head: bytes
    closed: bool
    members: frozenset[str]
    admins: frozenset[str]
    creator: str


class TeamAppend(enum.Enum):
    """What :meth:`Store.append_team_record` did."""

    OK = "ok"  # stored, the record is the new head
    CONFLICT = "conflict"  # the chain moved on (or a creation of an existing team): nothing stored
    FULL = "full"  # a user would pass max_teams_per_user: nothing stored


# --- on-call roles and urgent messages (SPEC §14) ------------------------------------


@dataclass(frozen=True, slots=True)
class Role:
    """An on-call role: ``policy`` is its escalation policy in store form
    (``protocol.oncall.pack_policy``), None for the organisation's default."""

    role: str
    name: str
    org: str
    reserved: bool
    policy: bytes | None
    created_at: int  # ms


@dataclass(frozen=True, slots=True)
class Shift:
    """A scheduled holdership: ``user_id`` holds ``role`` for ``start <= t < end`` (ms)."""

    role: str
    user_id: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class OrgPolicy:
    """An organisation's default escalation policy (no steps)."""

    org: str
    interval: int
    final: int


@dataclass(frozen=True, slots=True)
class EscalationPlan:
    """One urgent message's timers, stored with it atomically.

    ``deadlines`` are absolute (ms): the release times of steps 1..n, then
    the final deadline (``Policy.deadlines``). ``targets[k]`` are the users
    of step k (0 = primary); ``step_targets[k - 1]`` the target id (role or
    user) of step k, for ``urgent_status.target``."""

    interval: int
    deadlines: tuple[int, ...]
    targets: tuple[tuple[str, ...], ...]
    step_targets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EscalationDue:
    """One action :meth:`Store.due_escalations` performed (and committed).

    ``kind``: ``"step"`` (step ``step`` released: ``released`` are its rows,
    moved to the queue with new seqs, ``statuses`` the ``escalated`` rows for
    the sender's devices, ``target`` the step's target id), ``"final"``
    (``statuses`` the ``unacknowledged`` rows) or ``"remind"`` (``remind_users``
    are the released recipients to re-notify, ``n`` the reminder's number)."""

    esc_id: int
    sender_user: str
    message_id: bytes
    kind: str
    step: int
    target: str | None
    released: list[Queued]
    statuses: list[Queued]
    remind_users: tuple[str, ...]
    n: int


@dataclass(frozen=True, slots=True)
class AckResult:
    """What :meth:`Store.acknowledge` did: ``user``/``device``/``at`` are of
    the FIRST acknowledgement (``first`` when this call made it); ``step``
    the step reached then; ``statuses`` the ``acknowledged`` rows queued and
    ``deleted_held`` the held rows deleted (both empty/0 unless ``first``)."""

    first: bool
    user: str
    device: str
    at: int
    step: int
    statuses: list[Queued]
    deleted_held: int


@dataclass(frozen=True, slots=True)
class AcceptResult:
    duplicate: bool
    queued: list[Queued]  # empty when duplicate
