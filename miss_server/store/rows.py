"""How both stores read their tables: the column lists, and how a row of
each becomes one of ``base.py``'s records.

A statement selects ``{USER_COLUMNS}`` (and so on) and hands each row to
the matching ``to_*`` function, which reads it by position: the same code
serves a ``sqlite3`` tuple and an ``asyncpg.Record``.
"""

from __future__ import annotations

from typing import Any, Protocol

from .base import AuditEvent, Device, Kind, Queued, User

__all__ = [
    "AUDIT_COLUMNS",
    "DEVICE_COLUMNS",
    "NO_DEVICE",
    "QUEUED_COLUMNS",
    "USER_COLUMNS",
    "Row",
    "to_audit_event",
    "to_device",
    "to_device_user",
    "to_queued",
    "to_user",
]


class Row(Protocol):
    """A result row read by position."""

    def __getitem__(self, index: int, /) -> Any: ...


USER_COLUMNS = (
    "user_id, name, rpps, profession, organisation, created_at, suspended, status, attestation, "
    "service, replies"
)
DEVICE_COLUMNS = "device_id, user_id, sign_pk, box_pk, label, created_at, revoked_at, attested"
QUEUED_COLUMNS = "seq, device_id, kind, message_id, peer_user, peer_device, ts, payload"
AUDIT_COLUMNS = "seq, at, actor, action, user_id, device_id, address, detail"


def to_user(row: Row) -> User:
    """The user of a row of ``USER_COLUMNS``."""
    r = row
    return User(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7], r[8], bool(r[9]), bool(r[10]))


def to_device(row: Row) -> Device:
    """The device of a row of ``DEVICE_COLUMNS``."""
    return Device(row[0], row[1], row[2], row[3], row[4], row[5], row[6] is not None, bool(row[7]))


_DEVICE_WIDTH = len(DEVICE_COLUMNS.split(", "))
_USER_END = _DEVICE_WIDTH + len(USER_COLUMNS.split(", "))


#: :func:`to_device_user` of no row: an unknown device.
NO_DEVICE: tuple[Device | None, User | None] = (None, None)


def to_device_user(row: Row | None) -> tuple[Device | None, User | None]:
    """The device and user of a row of ``DEVICE_COLUMNS`` then
    ``USER_COLUMNS`` (the user's all NULL when there is none); no row: neither."""
    if row is None:
        return None, None
    device = to_device(row)
    if row[_DEVICE_WIDTH] is None:
        return device, None
    return device, to_user(tuple(row[i] for i in range(_DEVICE_WIDTH, _USER_END)))


def to_queued(row: Row) -> Queued:
    """The queued row of a row of ``QUEUED_COLUMNS``."""
    return Queued(row[0], row[1], Kind(row[2]), row[3], row[4], row[5], row[6], row[7])


def to_audit_event(row: Row) -> AuditEvent:
    """The event of a row of ``AUDIT_COLUMNS``."""
    return AuditEvent(row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[0])
