"""Value types the SDK hands to applications.

They are plain frozen dataclasses with no behaviour beyond small helpers, so
an application can match on them::

    async for event in client.events():
        match event:
            case Message(): ...
            case Delivered(): ...          # a device of the recipient kept it
            case Refused(): ...            # a device of the recipient refused it (SPEC §6.5)
            case MessageHeld(): ...        # a message we could not check yet: it comes again
            case PresenceChanged(): ...    # only after client.watch()

Message ids are the 16 raw bytes of the wire; :func:`format_id` shows one as
a UUID string (ids are laid out as UUIDv7).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from protocol import crypto
from protocol.attachments import Attachment
from protocol.frames import STATUSES, DeviceInfo
from protocol.notices import Notice

from .oncall_models import RoleHoldersChanged, UrgentReminded, UrgentStatusChanged

__all__ = [
    "REFUSAL_REASONS",
    "SERVICE_PROFESSION",
    "STATUSES",
    "AuthorityRotated",
    "Delivered",
    "DirectoryEntry",
    "Event",
    "HistoryEntry",
    "Message",
    "MessageHeld",
    "OwnDevice",
    "Peer",
    "PeerChange",
    "PresenceChanged",
    "PresenceInfo",
    "ReadBy",
    "Recalled",
    "Refused",
    "RoleHoldersChanged",
    "RotationRefused",
    "TeamEvent",
    "TeamProblemFound",
    "TeamView",
    "UrgentReminded",
    "UrgentStatusChanged",
    "check_frame_text",
    "format_id",
    "is_rpps",
    "is_team_id",
    "is_user_id",
    "now_ms",
    "parse_id",
]


#: The profession of a service's attestation (SPEC §17.1): never a clinician's.
SERVICE_PROFESSION = "service"


def now_ms() -> int:
    """This machine's clock in ms since the epoch, as the protocol counts time."""
    return time.time_ns() // 1_000_000


def format_id(message_id: bytes) -> str:
    """A message id as a UUID string, e.g. ``0190c3e1-...``."""
    return str(uuid.UUID(bytes=message_id))


def parse_id(text: str) -> bytes:
    """Inverse of :func:`format_id` (also accepts 32 hex digits); ValueError if invalid."""
    return uuid.UUID(text).bytes


def is_rpps(recipient: str) -> bool:
    """RPPS numbers are all digits (11 in practice; the hub allows up to 32)."""
    return recipient.isascii() and recipient.isdigit() and len(recipient) <= 32


def is_user_id(recipient: str) -> bool:
    """Hub-assigned user ids start with ``u_`` (and never hold U+0000)."""
    return recipient.startswith("u_") and len(recipient) > 2 and "\x00" not in recipient


def check_frame_text(value: str, what: str) -> str:
    """``value``, unchanged, if it may go in a frame's string field; raises
    ValueError ("<what> must not contain U+0000 (NUL)") if it holds U+0000.

    The hub treats a frame string holding U+0000 as ``malformed_frame`` and
    closes the connection (SPEC §3.1), so whatever a user typed (a search,
    a device label, an invitation code, a team name...) is checked before it
    is sent: refused, never silently changed, like the SDK's other bounds.
    """
    if "\x00" in value:
        raise ValueError(f"{what} must not contain U+0000 (NUL)")
    return value


def is_team_id(recipient: str) -> bool:
    """Team ids are ``t_`` and 16 lowercase hex digits (SPEC §13.1)."""
    return (
        len(recipient) == 18
        and recipient.startswith("t_")
        and all(c in "0123456789abcdef" for c in recipient[2:])
    )


@dataclass(frozen=True, slots=True)
class Peer:
    """A verified clinician (SPEC §11.2), as :meth:`Client.lookup` returns it.

    The identity (name, RPPS number, profession, organisation) comes from
    the authority's attestation, never from the hub's own fields.
    ``devices`` is the target set: the active devices that the attestation
    vouches for with the same keys, the only ones anything is encrypted to
    or accepted from. ``listed`` is every active device as the hub listed
    it (the input of a safety number, SPEC §8); ``substituted`` names listed
    devices whose keys differ from the attested ones and ``unattested`` the
    ones the attestation does not name (linked since the last verification).

    ``pending`` is the key change (relative to the keys pinned in the local
    state) that the user has not accepted yet: while it is set, nothing is
    sent to this peer. ``verified`` is true if the user marked the peer
    verified in person after comparing safety numbers (cleared by any key
    change). ``attested_until`` is the end of the attestation (ms).

    SPEC §17.1: :attr:`service` is true when the verified attestation's
    profession is ``"service"`` (a system of ``organisation``, never shown
    as a clinician); ``replies`` is False only when the lookup said the
    service does not accept replies (``lookup_ok.replies``, §17.2).
    """

    user: str
    name: str
    rpps: str
    profession: str
    organisation: str
    devices: tuple[DeviceInfo, ...]
    listed: tuple[DeviceInfo, ...] = ()
    substituted: tuple[str, ...] = ()
    unattested: tuple[str, ...] = ()
    attested_until: int = 0
    verified: bool = False
    pending: PeerChange | None = None
    #: The attestation bytes of the lookup (None for an entry from the local
    #: state): what a team record signed by this user carries (SPEC §13.2).
    att: bytes | None = field(default=None, repr=False)
    replies: bool = True

    @property
    def service(self) -> bool:
        """True for a service account (its attestation says so, SPEC §17.1)."""
        return self.profession == SERVICE_PROFESSION

    def device(self, device_id: str) -> DeviceInfo | None:
        """The target device with this id, or None if it is not one."""
        for d in self.devices:
            if d.device == device_id:
                return d
        return None

    @property
    def identities(self) -> list[bytes]:
        """Public keys of every device the hub lists (or, for an entry from
        the local state, of the pinned ones): a safety number's input (SPEC §8)."""
        return [crypto.device_identity(d.sign_pk, d.box_pk) for d in (self.listed or self.devices)]

    @property
    def display(self) -> str:
        """``Name (RPPS)``, as the chat client shows a sender; a service
        ``[Service] Name — Organisation``, without its identifier (SPEC §17.1)."""
        if self.service:
            return f"[Service] {self.name} — {self.organisation}"
        return f"{self.name} ({self.rpps})"


@dataclass(frozen=True, slots=True)
class PeerChange:
    """How a peer's attested devices differ from the ones pinned in the
    local state (SPEC §11.2, step 3), device ids in each field.

    ``first_seen`` is true when nothing was pinned yet: the keys are pinned
    without a warning (trust on first use), unless some are ``substituted``.
    ``added``: attested devices that were not pinned; ``changed``: pinned
    devices whose attested keys differ; ``substituted``: devices the hub
    lists with keys the authority did not sign (never encrypted to);
    ``removed``: pinned devices no longer attested (dropped without asking,
    so they never make a change pending on their own).
    """

    user: str
    first_seen: bool = False
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    substituted: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.substituted)

    @property
    def needs_acceptance(self) -> bool:
        """True if the user must accept this change before anything is sent."""
        return bool(self.added or self.changed or self.substituted)

    def describe(self) -> str:
        """``1 added, 1 with NEW KEYS, ...``, for a warning."""
        parts = [f"{len(self.added)} added"] if self.added else []
        parts += [f"{len(self.changed)} with NEW KEYS"] if self.changed else []
        parts += [f"{len(self.substituted)} with keys the authority did not sign"] if self.substituted else []
        parts += [f"{len(self.removed)} removed"] if self.removed else []
        return ", ".join(parts) or "no change"


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """A verified clinician found by :meth:`Client.search`, from their
    attestation alone (SPEC §11.3): who they are, not which devices are
    active (look them up for that)."""

    user: str
    name: str
    rpps: str
    profession: str
    organisation: str
    attested_until: int

    @property
    def display(self) -> str:
        return f"{self.name} ({self.rpps})"


@dataclass(frozen=True, slots=True)
class OwnDevice:
    """One of this clinician's active devices (SPEC §11.4): ``created`` in ms,
    ``attested`` if the current attestation vouches for it (otherwise it
    can neither send nor receive until an administrator verifies the
    account again), ``current`` if it is the device of this profile."""

    device: str
    label: str
    created: int
    attested: bool
    current: bool


@dataclass(frozen=True, slots=True)
class Message:
    """A decrypted, checked message (SPEC §6.3).

    ``outgoing_copy`` is true for a message this user sent from another of
    their devices (``from_user`` is us, ``to_user`` the peer). ``sent_at`` is
    the sender's clock (ms); ``received_at`` the hub's acceptance time (ms).
    """

    id: bytes
    from_user: str
    from_device: str
    to_user: str
    sent_at: int
    body: str = field(repr=False)  # never in a log line by accident
    kind: str = "text"
    outgoing_copy: bool = False
    received_at: int = 0
    #: The team of a team message (``to_user`` is then the team id too).
    team: str | None = None
    #: When the plaintext is deleted (ms, sender's clock), SPEC §13.6.
    expires_at: int | None = None
    #: The sender's head of the team's chain (team messages).
    head: bytes | None = field(default=None, repr=False)
    #: Notices (``read``, ``recall``): the message ids concerned, and the
    #: team they were sent to when they were team messages.
    refs: tuple[bytes, ...] = field(default=(), repr=False)
    notice_team: str | None = None
    #: SPEC §14: the role a role message was sent to; ``urgent`` as the
    #: plaintext says (it must be acknowledged: Client.acknowledge); ``step``:
    #: this copy reached us as a backup, at that escalation step (``to_user``
    #: is then whoever it was sent to: a role, a user or a team).
    role: str | None = None
    urgent: bool = False
    step: int | None = None
    #: SPEC §16: the message's attachments (descriptors: blob id, key, hash,
    #: size, type, name, thumbnail); fetch with Client.fetch_attachment or
    #: Client.save.
    attachments: tuple[Attachment, ...] = field(default=(), repr=False)
    #: SPEC §17.3: the notice this message carries, shown as a card (then
    #: ``body`` is only its text fallback, never trusted to match it).
    notice: Notice | None = field(default=None, repr=False)

    @property
    def peer(self) -> str:
        """The conversation: the team for a team message, else the other end."""
        if self.team is not None:
            return self.team
        return self.to_user if self.outgoing_copy else self.from_user


@dataclass(frozen=True, slots=True)
class Delivered:
    """Receipt: message ``id`` reached device ``device`` of user ``user`` at ``ts`` (ms)."""

    id: bytes
    user: str
    device: str
    ts: int = 0


#: Why a device refuses a message (SPEC §6.3, §6.5), as the SDK sends them.
REFUSAL_REASONS = ("sender_unverified", "undecryptable")


@dataclass(frozen=True, slots=True)
class Refused:
    """Receipt: device ``device`` of user ``user`` refused our message ``id``
    at ``ts`` (ms) because of ``reason`` (one of :data:`REFUSAL_REASONS`, or
    a later one): the message was **not** delivered to that device. Shown as
    a refusal, never as delivered (docs/ARCHITECTURE.md, guarantee 7)."""

    id: bytes
    user: str
    device: str
    ts: int
    reason: str


@dataclass(frozen=True, slots=True)
class MessageHeld:
    """A message this device could not check yet (the sender's lookup failed
    for a reason that may pass: a timeout, a dropped connection, an answer
    the SDK could not read). It was neither kept nor refused: the hub
    delivers it again on the next connection. ``reason`` is for people and
    logs; it never holds message content."""

    id: bytes
    from_user: str
    from_device: str
    reason: str


@dataclass(frozen=True, slots=True)
class PresenceInfo:
    """A clinician's presence (SPEC §6.7): the ``status`` they chose (one of
    :data:`STATUSES`) and whether any of their devices is ``online``."""

    user: str
    status: str
    online: bool


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    """Event: a watched clinician's presence changed; the fields are their
    whole new presence. Not stored in the history."""

    user: str
    status: str
    online: bool

    @property
    def info(self) -> PresenceInfo:
        return PresenceInfo(self.user, self.status, self.online)


@dataclass(frozen=True, slots=True)
class ReadBy:
    """Event: ``user`` read our messages ``ids`` (their read notice, SPEC
    §13.5), or, when ``user`` is us, another of our devices read the
    messages ``ids`` (they are marked read here too)."""

    ids: tuple[bytes, ...]
    user: str
    ts: int = 0
    team: str | None = None


@dataclass(frozen=True, slots=True)
class Recalled:
    """Event: ``from_user`` recalled message ``id`` (SPEC §13.5): its text
    was deleted from this device (or it will be dropped if it arrives)."""

    id: bytes
    from_user: str
    conversation: str
    known: bool  # the message was here (and is now "message retiré")


@dataclass(frozen=True, slots=True)
class TeamView:
    """A care team as its verified chain of records says (SPEC §13.1-§13.2).

    ``members`` and ``admins`` are user ids, sorted; ``lifespan`` the team's
    default message lifespan (ms) or None; ``head`` the hash of the last
    verified record and ``seq`` their number. ``problem`` is None, or what
    this device found wrong with the hub's view of the team:
    ``"tampered"`` (the hub showed a membership nobody signed) or
    ``"diverged"`` (members do not see the same chain); nothing is sent to
    the team while it is set. ``closed``: the last member left."""

    team: str
    name: str
    org: str | None
    lifespan: int | None
    members: tuple[str, ...]
    admins: tuple[str, ...]
    head: bytes
    seq: int
    closed: bool = False
    problem: str | None = None

    def is_member(self, user: str) -> bool:
        return user in self.members

    def is_admin(self, user: str) -> bool:
        return user in self.admins

    @property
    def problem_text(self) -> str | None:
        """The problem, in French, as the user reads it."""
        if self.problem == "tampered":
            return f"Le hub présente pour l'équipe {self.name} une liste de membres que personne n'a signée"
        if self.problem == "diverged":
            return "Les membres de l'équipe ne voient pas la même liste : envoi bloqué"
        return None


@dataclass(frozen=True, slots=True)
class TeamEvent:
    """Event: a verified change of a team's membership (one record of its
    chain, SPEC §13.2): ``op`` (create, add, remove, leave, promote,
    demote) about ``user`` by ``by`` (a user id or ``authority``) at ``at``
    (ms, signer's clock). ``by_name``: the signer's name from the
    attestation in the record, if any."""

    team: str
    team_name: str
    seq: int
    op: str
    user: str
    by: str
    at: int
    by_name: str | None = None


@dataclass(frozen=True, slots=True)
class TeamProblemFound:
    """Event: this device found the hub's view of ``team`` wrong
    (``problem``: ``tampered`` or ``diverged``, see :class:`TeamView`);
    ``text`` says it in French. Sending to the team is blocked."""

    team: str
    problem: str
    text: str


@dataclass(frozen=True, slots=True)
class AuthorityRotated:
    """Event (first of a connection): the hub announced a new verification
    authority key with statements signed by the key this profile trusted
    (SPEC §15), so the profile now trusts ``current``; ``previous`` are the
    older keys, each counting until its ``until`` (ms). ``text`` says it in
    French, for the user."""

    current: bytes
    fingerprint: str
    previous: tuple[tuple[bytes, int], ...]
    text: str


@dataclass(frozen=True, slots=True)
class RotationRefused:
    """Event ``rotation_refused`` (first of a connection): the hub announced
    another authority key than the profile's without a valid chain of
    statements from it; the profile keeps its key (clinicians attested by
    the other key look unverified). ``reason`` says what was wrong,
    ``text`` the French notice for the user."""

    announced: bytes
    reason: str
    text: str
    #: How many statements the hub sent (0: none, it just announces another key).
    statements: int = 0
    code: str = "rotation_refused"


#: What :meth:`miss_client.client.Client.events` yields.
Event = (
    AuthorityRotated
    | RotationRefused
    | Message
    | Delivered
    | Refused
    | MessageHeld
    | PresenceChanged
    | ReadBy
    | Recalled
    | TeamEvent
    | TeamProblemFound
    | UrgentReminded
    | UrgentStatusChanged
    | RoleHoldersChanged
)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One message from the local history (see :mod:`miss_client.state`).

    ``direction`` is ``"in"`` or ``"out"``; ``status`` is ``"pending"``,
    ``"accepted"`` or ``"failed"`` for outgoing messages sent from this
    device, ``"received"`` otherwise. ``delivered_to`` lists the recipient
    devices that acknowledged it; ``refused_by`` the ``(device, reason)``
    of those that refused it.

    SPEC §13: ``team`` is the team of a team message (``peer`` is then the
    team id); ``expires_at`` when its text is deleted; ``gone`` is None, or
    ``"recalled"``/``"expired"`` once its text was deleted (``body`` is then
    empty, and ``attachments`` too); ``read_at`` when this user read it (incoming); ``read_by`` the
    users whose read notices named it (outgoing).
    """

    id: bytes
    from_user: str
    peer: str
    direction: str
    sent_at: int
    received_at: int
    kind: str
    body: str = field(repr=False)
    status: str
    delivered_to: tuple[str, ...] = field(default=())
    refused_by: tuple[tuple[str, str], ...] = field(default=())
    team: str | None = None
    expires_at: int | None = None
    gone: str | None = None
    read_at: int | None = None
    read_by: tuple[str, ...] = field(default=())
    #: SPEC §16: its attachments' descriptors (none once recalled or expired).
    attachments: tuple[Attachment, ...] = field(default=(), repr=False)
    #: SPEC §17.3: its notice (None once recalled or expired).
    notice: Notice | None = field(default=None, repr=False)

    @property
    def shown_body(self) -> str:
        """The text, or ``message retiré`` / ``message expiré`` once deleted."""
        if self.gone == "recalled":
            return "message retiré"
        if self.gone == "expired":
            return "message expiré"
        return self.body
