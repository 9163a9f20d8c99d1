"""The Store interface: accounts, devices, enrollment codes, queued envelopes.

Every implementation (``sqlite.py`` embedded, ``postgres.py`` production)
passes the same conformance suite (``tests/server/test_store_conformance.py``).

Contracts that the hub's guarantees rest on (DESIGN.md):

* :meth:`Store.accept` returns only once the envelopes are durable (committed
  and synced as the backend defines it). It is idempotent per
  ``(sender_user, message_id)``: a second call with a seen id stores nothing
  and reports ``duplicate=True``, for as long as the id's record has not
  expired.
* Queued rows leave the store only through :meth:`Store.ack` by the device
  they are addressed to, or through :meth:`Store.expire` once past
  ``expires_at``.
* :meth:`Store.ack` deletes the acked rows and, in the same transaction,
  queues a ``delivered`` receipt for every device of the sender, so a receipt
  cannot be lost between the two.
* Sequence numbers (``seq``) grow with insertion order for a given device;
  :meth:`Store.pending` returns a device's rows in ``seq`` order.
* Enrollment codes are stored hashed (SHA-256), single-use and expiring.
* :meth:`Store.accept` also records the sender and recipient as contacts of
  each other (for presence visibility), in the same transaction.

Errors: every method may raise :class:`StoreUnavailable` when the backend
cannot be reached; nothing was written in that case.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "AcceptResult",
    "CodeInvalid",
    "Device",
    "Kind",
    "NewMessage",
    "Queued",
    "SchemaMismatch",
    "Store",
    "StoreUnavailable",
    "User",
]


class StoreUnavailable(Exception):
    """The backend cannot be reached or failed; nothing was written."""


class CodeInvalid(Exception):
    """An enrollment code that is unknown, already used or expired."""


class SchemaMismatch(Exception):
    """The database schema is not the version this code knows."""


class Kind(enum.IntEnum):
    """What a queued row carries to its device."""

    MESSAGE = 1  # an envelope: a ``deliver`` frame
    RECEIPT = 2  # a ``delivered`` receipt


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


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    user_id: str
    sign_pk: bytes
    box_pk: bytes
    label: str
    created_at: int  # ms
    revoked: bool = False


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


@dataclass(frozen=True, slots=True)
class Queued:
    """A row waiting for one device.

    For ``Kind.MESSAGE``, ``peer_user``/``peer_device`` are the sender and
    ``payload`` the envelope. For ``Kind.RECEIPT``, they are the recipient
    device that acked message ``message_id`` and ``payload`` is empty.
    """

    seq: int
    device_id: str
    kind: Kind
    message_id: bytes
    peer_user: str
    peer_device: str
    ts: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class AcceptResult:
    duplicate: bool
    queued: list[Queued]  # empty when duplicate


class Store(Protocol):
    """Durable state of the hub. All methods are coroutines safe to call
    from the event loop; implementations keep blocking work off it."""

    async def open(self) -> None:
        """Connect and check the schema version; raises SchemaMismatch if the
        schema is absent or unknown (run ``miss-admin migrate``)."""

    async def close(self) -> None: ...

    async def migrate(self) -> int:
        """Bring the schema to the newest version; returns that version."""

    # --- accounts and devices ---------------------------------------------

    async def create_user(self, name: str, rpps: str, profession: str, organisation: str, now: int) -> User:
        """Record a clinician; raises ValueError if the RPPS number is taken."""

    async def get_user(self, user_id: str) -> User | None: ...

    async def find_user_by_rpps(self, rpps: str) -> User | None: ...

    async def list_users(self) -> list[User]:
        """Every clinician, by name."""

    async def add_enrollment_code(self, user_id: str, code_hash: bytes, expires_at: int) -> None: ...

    async def set_status(self, user_id: str, status: str) -> None:
        """Durably record a clinician's status (available, busy, on_call, off_duty)."""

    async def statuses(self, user_ids: list[str]) -> dict[str, str]:
        """The status of each existing user among ``user_ids`` (unknown ids are left out)."""

    async def visible_users(self, viewer: str, candidates: list[str]) -> set[str]:
        """Those of ``candidates`` whose presence ``viewer`` may see: users of
        the viewer's organisation, and contacts (a message was accepted
        between the two, either way). The viewer always sees themself."""

    async def enroll_device(
        self, code_hash: bytes, sign_pk: bytes, box_pk: bytes, label: str, now: int
    ) -> Device:
        """Consume a code and register a device for its user; raises
        CodeInvalid if the code is unknown, used or expired."""

    async def get_device(self, device_id: str) -> Device | None: ...

    async def user_devices(self, user_id: str) -> list[Device]:
        """Active (not revoked) devices of a user, oldest first."""

    # --- messages ---------------------------------------------------------

    async def accept(self, message: NewMessage) -> AcceptResult:
        """Durably queue one envelope per target device (see module doc)."""

    async def pending(self, device_id: str, after_seq: int, limit: int, now: int) -> list[Queued]:
        """Unexpired rows for a device with ``seq > after_seq``, in seq order."""

    async def ack(self, device_id: str, seqs: list[int], now: int, expires_at: int) -> list[Queued]:
        """Delete the device's rows with these seqs (others are ignored);
        returns the receipts queued for the senders' devices."""

    async def expire(self, now: int) -> int:
        """Delete expired rows, message-id records and codes; returns how many rows."""

    async def count_pending(self, device_id: str) -> int: ...
