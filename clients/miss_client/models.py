"""Value types the SDK hands to applications.

They are plain frozen dataclasses with no behaviour beyond small helpers, so
an application can match on them::

    async for event in client.events():
        match event:
            case Message(): ...
            case Delivered(): ...
            case PresenceChanged(): ...  # only after client.watch()

Message ids are the 16 raw bytes of the wire; :func:`format_id` shows one as
a UUID string (ids are laid out as UUIDv7).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from protocol import crypto
from protocol.frames import STATUSES, DeviceInfo

__all__ = [
    "STATUSES",
    "Delivered",
    "Event",
    "HistoryEntry",
    "Message",
    "Peer",
    "PeerChange",
    "PresenceChanged",
    "PresenceInfo",
    "format_id",
    "is_rpps",
    "is_user_id",
    "parse_id",
]


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
    """Hub-assigned user ids start with ``u_``."""
    return recipient.startswith("u_") and len(recipient) > 2


@dataclass(frozen=True, slots=True)
class Peer:
    """A clinician from the directory, with their active devices' public keys."""

    user: str
    name: str
    rpps: str
    profession: str
    organisation: str
    devices: tuple[DeviceInfo, ...]

    def device(self, device_id: str) -> DeviceInfo | None:
        """The device with this id, or None if it is not an active device."""
        for d in self.devices:
            if d.device == device_id:
                return d
        return None

    @property
    def identities(self) -> list[bytes]:
        """Every device's public keys (the input of a safety number, SPEC §8)."""
        return [crypto.device_identity(d.sign_pk, d.box_pk) for d in self.devices]

    @property
    def display(self) -> str:
        """``Name (RPPS)``, as the chat client shows a sender."""
        return f"{self.name} ({self.rpps})"


@dataclass(frozen=True, slots=True)
class PeerChange:
    """How a peer's device list differs from the one pinned in the local state.

    ``first_seen`` is true when nothing was pinned yet (no warning is due).
    ``changed`` lists device ids whose keys differ from the pinned ones: that
    should never happen for an honest hub and deserves a loud warning.
    """

    user: str
    first_seen: bool = False
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


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

    @property
    def peer(self) -> str:
        """The other end of the conversation."""
        return self.to_user if self.outgoing_copy else self.from_user


@dataclass(frozen=True, slots=True)
class Delivered:
    """Receipt: message ``id`` reached device ``device`` of user ``user`` at ``ts`` (ms)."""

    id: bytes
    user: str
    device: str
    ts: int = 0


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


#: What :meth:`miss_client.client.Client.events` yields.
Event = Message | Delivered | PresenceChanged


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One message from the local history (see :mod:`miss_client.state`).

    ``direction`` is ``"in"`` or ``"out"``; ``status`` is ``"pending"``,
    ``"accepted"`` or ``"failed"`` for outgoing messages sent from this
    device, ``"received"`` otherwise. ``delivered_to`` lists the recipient
    devices that acknowledged it.
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
