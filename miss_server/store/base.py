"""The Store interface: accounts, devices, enrollment codes, queued envelopes.

Every implementation (``sqlite.py`` embedded, ``postgres.py`` production)
passes the same conformance suite (``tests/server/test_store_conformance.py``).

Contracts that the hub's guarantees rest on (docs/ARCHITECTURE.md, the guarantees):

* :meth:`Store.accept` returns only once the envelopes are durable (committed
  and synced as the backend defines it). It is idempotent per
  ``(sender_user, message_id)``: a second call with a seen id stores nothing
  and reports ``duplicate=True``, for as long as the id's record has not
  expired.
* Queued rows leave the store only through :meth:`Store.ack` by the device
  they are addressed to, or through :meth:`Store.expire` once past
  ``expires_at``.
* :meth:`Store.ack` deletes the acked (and refused) rows and, in the same
  transaction, queues a ``delivered`` (or ``refused``) receipt for every
  *attested* active device of the sender, so a receipt cannot be lost
  between the two, and devices nobody vouched for get none (SPEC §6.5).
* A device is *attested* while the user's stored attestation names it with
  its keys: :meth:`Store.set_attestation` keeps ``Device.attested`` in step.
* A user has at most ``max_devices`` active devices: :meth:`Store.enroll_device`
  and :meth:`Store.add_link_code` check it in the transaction that would
  exceed it, and raise :class:`DeviceLimit` (SPEC §5.3).
* Sequence numbers (``seq``) grow with insertion order for a given device;
  :meth:`Store.pending` returns a device's rows in ``seq`` order.
* Enrollment codes are stored hashed (SHA-256), single-use and expiring.
* :meth:`Store.accept` also records the sender and recipient as contacts of
  each other (for presence visibility), in the same transaction.
* :meth:`Store.revoke_device` is for ever: the device leaves
  :meth:`Store.user_devices`, its queued rows are deleted, and
  :meth:`Store.get_device` reports it ``revoked`` from then on.
* The audit log is append-only and holds who, when and what, never message
  content: :meth:`Store.audit` appends, :meth:`Store.audit_log` reads. Hub
  nodes poll it (:meth:`Store.audit_log` with ``since_at`` and ``actions``)
  to learn of revocations and suspensions made elsewhere.

* Care teams (SPEC §13): :meth:`Store.append_team_record` stores a record
  only as the next one of its team's chain (a compare-and-set on the
  chain's length, so two hub nodes never both extend one head) with the
  team's state after it, which the hub verified; members and admins are
  derived from it for routing. A team message (:meth:`Store.accept_team`)
  is one body row plus one lean row per target device (seq, device, body
  id, 72-byte wrap) in the same seq space as the device's other rows;
  :meth:`Store.pending` returns the body with each row (``Kind.TEAM``),
  :meth:`Store.ack` deletes team rows and queues receipts like a 1:1
  message's, and rows go with their body at its expiry
  (``min(ts + ttl, default)``), by :meth:`Store.recall`, or with the
  device; :meth:`Store.expire` deletes bodies no row refers to.

Errors: every method may raise :class:`StoreUnavailable` when the backend
cannot be reached; nothing was written in that case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .records import (  # re-exported: callers import the records from here
    AcceptResult,
    AckResult,
    AuditEvent,
    Device,
    EscalationDue,
    EscalationPlan,
    Invitation,
    Kind,
    NewMessage,
    NewTeamMessage,
    Organisation,
    OrgPolicy,
    Queued,
    Refusals,
    Role,
    Shift,
    TeamAppend,
    TeamInfo,
    TeamRecordRow,
    User,
)

__all__ = [
    "COMMIT_INTERVAL",
    "AcceptResult",
    "AckResult",
    "AuditEvent",
    "CodeInvalid",
    "Device",
    "DeviceLimit",
    "EscalationDue",
    "EscalationPlan",
    "GroupCommitStats",
    "Invitation",
    "Kind",
    "NewMessage",
    "NewTeamMessage",
    "OrgPolicy",
    "Organisation",
    "Queued",
    "Refusals",
    "Role",
    "SchemaMismatch",
    "ServiceLimit",
    "Shift",
    "Store",
    "StoreUnavailable",
    "TeamAppend",
    "TeamInfo",
    "TeamRecordRow",
    "User",
]


#: Group commit pacing (s): a store's committer starts a transaction no
#: sooner than this after its previous one ended. Calls that arrive meanwhile
#: ride in the next batch, so a busy hub commits (and syncs) at most about
#: 200 times a second whatever its load, and a quiet one adds no delay (its
#: last commit is long past). The cost: at most this much more before
#: ``accepted``. Each commit writes and syncs the pages it touched whatever
#: the number of calls in it, so this halves the CPU per message of a hub
#: at 1,000 messages/s (README, Benchmarks).
COMMIT_INTERVAL = 0.005


@dataclass(slots=True)
class GroupCommitStats:
    """Counters of a store's committer: ``calls / transactions`` is the batching factor."""

    transactions: int = 0  # committed transactions that carried calls
    calls: int = 0  # calls resolved by them


class StoreUnavailable(Exception):
    """The backend cannot be reached or failed: nothing was written, or
    (a connection lost while a commit was in flight) the outcome is unknown
    and a resend is safe (a resent ``accept`` is answered ``duplicate``)."""


class CodeInvalid(Exception):
    """An enrollment code that is unknown, already used or expired."""


class DeviceLimit(Exception):
    """The user has as many active devices (and, for a link code, unused link
    codes) as the cap allows; nothing was written, the code stays unused."""


class ServiceLimit(Exception):
    """The organisation has as many services as the cap allows; nothing was written."""


class SchemaMismatch(Exception):
    """The database schema is not the version this code knows."""


class Store(Protocol):
    """Durable state of the hub. All methods are coroutines safe to call
    from the event loop; implementations keep blocking work off it."""

    async def open(self) -> None:
        """Connect and check the schema version; raises SchemaMismatch if the
        schema is absent or unknown (run ``miss-admin migrate``)."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Run a trivial query; raises StoreUnavailable if the store does not
        answer (the readiness probe, ``lifecycle.py``, bounds its wait)."""

    async def migrate(self) -> int:
        """Bring the schema to the newest version; returns that version."""

    # --- accounts and devices ---------------------------------------------

    async def create_user(self, name: str, rpps: str, profession: str, organisation: str, now: int) -> User:
        """Record a clinician; raises ValueError if the RPPS number is taken."""

    async def get_user(self, user_id: str) -> User | None: ...

    async def get_account(self, user_id: str) -> tuple[User | None, list[Device]]:
        """The user and their active devices (as :meth:`user_devices`), in
        one trip to the store: what the hub loads per account
        (``accounts.py``), once per authentication on a cold node."""

    async def find_user_by_rpps(self, rpps: str) -> User | None: ...

    async def list_users(self) -> list[User]:
        """Every clinician, by name."""

    # --- service accounts (SPEC §17.1) ----------------------------------------

    async def create_service(
        self, name: str, ident: str, organisation: str, replies: bool, now: int, max_per_org: int
    ) -> User:
        """Record a service account: ``service`` true, ``profession``
        ``"service"``, ``rpps`` its identifier ``ident`` (``svc:...``, checked
        by the caller). Raises ServiceLimit if ``organisation`` already has
        ``max_per_org`` services (counted in the same transaction), and
        ValueError if the identifier is taken; nothing is written then."""

    async def list_services(self, organisation: str | None = None) -> list[User]:
        """The services (of ``organisation``, or of all), by organisation, name, user id."""

    async def set_replies(self, user_id: str, replies: bool) -> None:
        """Whether the service accepts replies; raises LookupError if
        ``user_id`` is not a service (a clinician always accepts them)."""

    async def add_enrollment_code(self, user_id: str, code_hash: bytes, expires_at: int) -> None:
        """Record an invitation code (an administrator's): it does not count
        under the device cap until it enrolls a device."""

    async def add_link_code(
        self, user_id: str, code_hash: bytes, expires_at: int, now: int, max_devices: int
    ) -> None:
        """Record a link code (SPEC §5.3); raises DeviceLimit if the user's
        active devices plus unused, unexpired link codes reach ``max_devices``."""

    async def set_status(self, user_id: str, status: str) -> None:
        """Durably record a clinician's status (available, busy, on_call,
        off_duty); raises ValueError for a status not in
        ``protocol.frames.STATUSES``. An unknown ``user_id``: nothing is written."""

    async def statuses(self, user_ids: list[str]) -> dict[str, str]:
        """The status of each existing user among ``user_ids`` (unknown ids are left out)."""

    async def visible_users(self, viewer: str, candidates: list[str]) -> set[str]:
        """Those of ``candidates`` whose presence ``viewer`` may see: users of
        the viewer's organisation, and contacts (a message was accepted
        between the two, either way). The viewer always sees themself."""

    async def enroll_device(
        self, code_hash: bytes, sign_pk: bytes, box_pk: bytes, label: str, now: int, max_devices: int
    ) -> Device:
        """Consume a code and register a device for its user; raises
        CodeInvalid if the code is unknown, used or expired, DeviceLimit if
        the user already has ``max_devices`` active devices (the code is
        then left unused), ValueError if the signing key is enrolled."""

    async def get_device(self, device_id: str) -> Device | None: ...

    async def get_device_user(self, device_id: str) -> tuple[Device | None, User | None]:
        """The device (revoked or not, as :meth:`get_device`) and its user
        (as :meth:`get_user`), in one read: what an authentication needs
        (hub.py). (None, None) for an unknown device. The reads asked in one
        turn of the event loop are made in one statement
        (``batched_reads.py``): a reconnection storm's."""

    async def user_devices(self, user_id: str, include_revoked: bool = False) -> list[Device]:
        """Active (not revoked) devices of a user, oldest first; with
        ``include_revoked``, the revoked ones too."""

    # --- verification, suspension, revocation (SPEC §11) ------------------

    async def set_attestation(self, user_id: str, attestation: bytes) -> None:
        """Record the user's latest attestation (replacing any earlier one)
        and mark attested exactly the user's devices it names with their
        keys (none, for bytes that are not an attestation); raises
        LookupError for an unknown user."""

    async def set_suspended(self, user_id: str, suspended: bool) -> None:
        """Suspend or reinstate an account; raises LookupError for an unknown user."""

    async def revoke_device(self, device_id: str, now: int) -> Device | None:
        """Revoke an active device for ever and delete its queued rows;
        returns it as it was, or None if unknown or already revoked."""

    async def search_users(self, query: str, limit: int) -> list[User]:
        """Users with an attestation, not suspended and not services (SPEC
        §17.1), whose name, RPPS number, profession or organisation contains
        ``query`` (case-insensitive, at least for ASCII), by name, at most
        ``limit``; none for a query of fewer than three characters. Served
        by an index (SPEC §11.3)."""

    async def delete_user(self, user_id: str) -> bool:
        """Erase an account (GDPR): its row, devices, enrollment codes,
        contacts and the rows queued for its devices. Rows it sent that
        wait for others stay theirs, and the records of its accepted message
        ids expire with the message lifetime (SPEC §6.6). False if unknown.
        The audit log is left alone (its events name the user id)."""

    # --- organisations and invitations ------------------------------------

    async def add_organisation(self, name: str, now: int) -> Organisation:
        """Raises ValueError if an organisation of that name exists."""

    async def list_organisations(self) -> list[Organisation]:
        """By name."""

    async def invitations(self, now: int) -> list[Invitation]:
        """Unused, unexpired enrollment codes, soonest expiry first."""

    # --- audit log ------------------------------------------------------------

    async def audit(self, events: list[AuditEvent]) -> None:
        """Append events (their ``seq`` is ignored and assigned)."""

    async def audit_log(
        self,
        *,
        since_at: int = 0,
        user_id: str | None = None,
        actions: list[str] | None = None,
        limit: int = 100,
        after_seq: int = 0,
        oldest: bool = False,
    ) -> list[AuditEvent]:
        """Events with ``at >= since_at`` and ``seq > after_seq``, optionally
        only about ``user_id`` or with one of ``actions``, oldest first, at
        most ``limit``: the *newest* ``limit`` when more match, or with
        ``oldest`` the oldest ``limit``, a page to read the log forward
        (the next page is after the last seq of this one)."""

    # --- messages ---------------------------------------------------------

    async def accept(self, message: NewMessage) -> AcceptResult:
        """Durably queue one envelope per target device (see module doc)."""

    async def pending(self, device_id: str, after_seq: int, limit: int, now: int) -> list[Queued]:
        """Unexpired rows for a device with ``seq > after_seq``, in seq order,
        at most ``limit``. The pages asked in one turn of the event loop are
        read together (``batched_reads.py``): a reconnection storm's first
        pages."""

    async def ack(
        self, device_id: str, seqs: list[int], now: int, expires_at: int, refused: Refusals | None = None
    ) -> list[Queued]:
        """Delete the device's rows with these seqs and those of ``refused``
        (seq -> reason; seqs that are not the device's rows are ignored);
        returns the receipts (``delivered``, or ``refused`` with the reason)
        queued for the attested devices of the messages' senders."""

    async def expire(self, now: int) -> int:
        """Delete expired rows, message-id records and codes; returns how many rows."""

    async def count_pending(self, device_id: str) -> int: ...

    # --- care teams (SPEC §13) ----------------------------------------------

    async def append_team_record(
        self, state: TeamInfo, record: TeamRecordRow, *, joining: tuple[str, ...], max_teams: int
    ) -> TeamAppend:
        """Store ``record`` as the new head of its team and ``state`` (the
        team after it, verified by the caller) as the team's current state,
        atomically, unless the team's stored chain does not end just before
        ``record.seq`` (a creation, ``seq`` 0, of a team that exists, or a
        change whose ``seq`` is not the stored number of records): then
        CONFLICT. FULL if a user of ``joining`` (the one added, or the
        creator) is already a member of ``max_teams`` teams, or, for a
        creation by a user, has created ``max_teams`` teams. Nothing is
        stored unless OK."""

    async def team_info(self, team: str) -> TeamInfo | None:
        """The team's current state, None for an unknown team."""

    async def team_records(
        self, team: str, from_seq: int, max_bytes: int
    ) -> tuple[list[TeamRecordRow], bool]:
        """The records from ``from_seq`` on, in order, as many as fit in
        ``max_bytes`` of ``rec`` and ``sig`` (at least one when any exists);
        and whether more follow."""

    async def user_teams(self, user_id: str, limit: int) -> list[tuple[str, int, bytes]]:
        """``(team, seq, head)`` of the teams the user is a member of, by team id, at most ``limit``."""

    async def list_teams(self) -> list[TeamInfo]:
        """Every team, by name then id (for administrators)."""

    async def accept_team(self, message: NewTeamMessage) -> AcceptResult:
        """Durably store a team message: its body once and one row per
        device of ``wraps``, sharing the seq space of the device's other
        rows; idempotent per ``(sender_user, message_id)`` as :meth:`accept`."""

    async def recall(self, sender_user: str, message_id: bytes) -> int:
        """Delete every row of message ``message_id`` from ``sender_user``
        not acked yet (1:1 envelopes and team rows, for every device) and a
        team message's body; returns how many rows."""

    async def has_sent(self, sender_user: str, message_id: bytes) -> bool:
        """Whether the store still records ``message_id`` as accepted from ``sender_user``."""

    async def stored_bytes(self, sender_user: str, message_id: bytes) -> int:
        """Bytes the store holds now for a message: the sum of the sizes of
        every column of its rows (8 per integer, the length of each text and
        blob) in the body row, the device rows and its accepted-id record.
        Indexes and the engines' per-row headers are not counted."""

    # --- on-call roles (SPEC §14) --------------------------------------------------

    async def create_role(self, name: str, org: str, reserved: bool, policy: bytes | None, now: int) -> Role:
        """Create a role with a fresh id (``protocol.oncall.new_role_id``)."""

    async def get_role(self, role: str) -> Role | None: ...

    async def set_role_policy(self, role: str, policy: bytes | None) -> bool:
        """Replace the role's policy (None: the organisation's default); False if unknown."""

    async def delete_role(self, role: str) -> bool:
        """Delete a role with its holders and shifts; False if unknown."""

    async def search_roles(self, query: str, limit: int, now: int) -> list[Role]:
        """Roles whose name or org contains ``query`` (case and accents
        folded as :meth:`search_users`; an empty query matches all), by name
        then id, at most ``limit``."""

    async def list_roles(self) -> list[Role]:
        """Every role, by org, name, id."""

    async def role_holders(self, role: str, now: int) -> list[str]:
        """Manual holders and users with a shift ``start <= now < end``,
        sorted, the first ``MAX_ROLE_HOLDERS`` (16)."""

    async def user_roles(self, user_id: str, now: int) -> list[Role]:
        """The roles the user holds at ``now`` (manually or by a shift), by name then id."""

    async def take_role(
        self, role: str, user_id: str, join: bool, now: int, max_roles: int
    ) -> tuple[bool, list[str]]:
        """Make the user a manual holder. Without ``join``, a handover: the
        other manual holders are released (returned). ``(False, [])`` when the
        user already holds ``max_roles`` other roles manually (``role_full``),
        or the role is unknown, nothing written; holding it already is ok.
        Audited ``role.taken`` (with the released users) in the same transaction."""

    async def leave_role(self, role: str, user_id: str) -> bool:
        """Remove the user's manual holdership (True if there was one);
        audited ``role.left`` when there was."""

    async def assign_role(self, role: str, user_id: str, now: int) -> bool:
        """An administrator's: add a manual holder, without the
        ``max_roles`` cap; False if the role is unknown."""

    async def unassign_role(self, role: str, user_id: str) -> bool:
        """Remove a manual holder; True if there was one."""

    async def replace_shifts(self, role_shifts: list[Shift], roles: list[str]) -> int:
        """Import a schedule: atomically replace every shift of ``roles`` by
        ``role_shifts`` (whose roles must be among ``roles``); returns how
        many were inserted. Manual holders are left alone."""

    async def shifts(self, role: str, since: int) -> list[Shift]:
        """The role's shifts with ``end > since``, by start then user."""

    async def set_org_policy(self, org: str, interval: int, final: int) -> None: ...

    async def get_org_policy(self, org: str) -> OrgPolicy | None: ...

    # --- urgent messages (SPEC §14) -------------------------------------------------

    async def due_escalations(self, now: int, limit: int) -> list[EscalationDue]:
        """Claim and perform every due action of up to ``limit`` escalations
        (``next_at <= now``), each escalation in its own transaction, exactly
        once across hub nodes: release the held rows of a due step (moved
        into the queue with new seqs) with ``escalated`` statuses for the
        sender, the ``unacknowledged`` statuses at the final deadline, or a
        reminder (``next_remind`` advances by ``interval``, to ``now +
        interval`` when far behind: reminders are not caught up). Audits
        ``urgent.escalated`` / ``urgent.unacknowledged`` in the same
        transaction (metadata only). Cheap when nothing is due."""

    async def acknowledge(
        self, sender_user: str, message_id: bytes, user_id: str, device_id: str, now: int, expires_at: int
    ) -> AckResult | None:
        """Acknowledge urgent message ``(sender_user, message_id)`` for
        ``user_id``: None unless the user is a target of a step already
        released (0 = primary). The first: state ``acknowledged``, held rows
        deleted, ``acknowledged`` statuses queued (expiring at ``expires_at``)
        for the sender's and every released recipient's attested devices but
        ``device_id``, audited ``urgent.acknowledged``; later ones change
        nothing and report the first (``first=False``)."""

    async def escalation_state(self, sender_user: str, message_id: bytes) -> dict[str, Any] | None:
        """For tests and administrators: ``{state, step, held, next_at,
        reminders, ack_user, ack_device, ack_at}``, None if no escalation."""

    async def held_rows(self, sender_user: str, message_id: bytes) -> int:
        """The message's rows still held (not released)."""

    async def open_escalations(self, sender_user: str, now: int) -> int:
        """How many of ``sender_user``'s escalations are still open (neither
        acknowledged nor unacknowledged) and unexpired (``expires_at > now``):
        what ``max_open_urgent_per_user`` caps (SPEC §14.4)."""
