"""The wake-up format: what a hub node publishes on a device's channel
(``dev:{device_id}``, ``broker/base.py``) and what the node where the device
is connected reads back (:class:`~miss_server.delivery.DeviceLink`).

A wake-up is one broker payload. Its first byte is a tag:

* ``b"Q" + seq + frame``: a queued message; ``frame`` is its ``deliver``;
* ``b"R" + seq + frame``: a queued receipt (``delivered``);
* ``b"F" + seq + frame``: a queued refusal receipt (``refused``), which a
  link sends only if its client named the ``refusals`` capability (SPEC
  §6.5): to any other the row does not exist, and waits in the store;
* ``b"T" + seq + frame``: a queued team message (SPEC §13), which a link
  sends only if its client named the ``teams`` capability; otherwise the
  row waits in the store, like a refusal;
* ``b"O" + seq + frame``: a queued message to a role or urgent message
  (SPEC §14), which a link sends only if its client named both ``teams``
  (it is a sealed body, §13.3) and ``oncall``; otherwise the row waits;
* ``b"S" + seq + frame``: a queued ``urgent_status`` (SPEC §14.6), which a
  link sends only if its client named ``oncall``;
* ``b"D"``: drain: rows may exist that no wake-up announced (a resend of an
  id whose first wake-ups died with a hub node, or a connection of the
  device that ended while a newer one existed);
* ``b"X" + error code`` (ASCII): end the connection with that fatal error
  (e.g. ``device_revoked``); ``b"X" + error code + b"/" + generation``
  (ASCII digits): end it if its generation is lower (``session_replaced``:
  the same device authenticated on a newer connection, hub.py).

``seq`` is the row's sequence number in the store, 8 bytes, unsigned
big-endian. The frame of a row wake-up is, byte for byte, the frame a drain
of the store sends for that row (:func:`row_frame`): the wake-up carries a
copy so that the common case costs no read, never the only one (docs/ARCHITECTURE.md,
guarantee 1).

Request ids: a row wake-up needs no field of its own to carry the request
that caused it across nodes (logs.py): its frame names the message id,
which is the id of the ``send`` (of a receipt: of the ``send`` it answers).
:func:`request_id` reads it back, for the logs only.

Reading: :func:`parse` splits a payload into ``(tag, seq, body)``, and
:func:`close_error` names the error of an ``X`` body. A payload that is
empty, or a row wake-up with no frame after its seq, raises
:class:`MalformedWakeup`. A tag this module does not know is returned as it
is, for the reader to ignore: a newer node may send one during a rolling
upgrade.
"""

from __future__ import annotations

import msgpack

from protocol import errors
from protocol import teams as pt
from protocol.frames import Deliver, Delivered, Refused, UrgentStatus, encode

from .broker.base import device_channel
from .store.base import Kind, Queued

__all__ = [
    "DRAIN_WAKEUP",
    "ROW_TAGS",
    "TAG_CLOSE",
    "TAG_DRAIN",
    "TAG_MESSAGE",
    "TAG_ONCALL",
    "TAG_RECEIPT",
    "TAG_REFUSAL",
    "TAG_STATUS",
    "TAG_TEAM",
    "MalformedWakeup",
    "close_error",
    "close_generation",
    "close_wakeup",
    "is_oncall_row",
    "parse",
    "request_id",
    "row_frame",
    "row_wakeup",
    "row_wakeups",
]

TAG_MESSAGE = ord("Q")
TAG_RECEIPT = ord("R")
TAG_REFUSAL = ord("F")
TAG_TEAM = ord("T")
TAG_ONCALL = ord("O")
TAG_STATUS = ord("S")
TAG_DRAIN = ord("D")
TAG_CLOSE = ord("X")
#: The tags followed by a seq and a frame.
ROW_TAGS = frozenset({TAG_MESSAGE, TAG_RECEIPT, TAG_REFUSAL, TAG_TEAM, TAG_ONCALL, TAG_STATUS})
DRAIN_WAKEUP = b"D"

_SEQ_END = 9  # the tag, then 8 bytes of seq
_TAGS = {
    Kind.MESSAGE: b"Q",
    Kind.RECEIPT: b"R",
    Kind.REFUSAL: b"F",
    Kind.TEAM: b"T",
    Kind.URGENT_STATUS: b"S",
}


class MalformedWakeup(ValueError):
    """A payload on a device channel that is not a wake-up (module doc)."""


# --- building -------------------------------------------------------------------


def is_oncall_row(row: Queued) -> bool:
    """Whether ``row`` is a message to a role or an urgent one (SPEC §14),
    which only a connection that named ``teams`` and ``oncall`` may get."""
    return row.kind is Kind.TEAM and (row.role is not None or row.urgent)


def row_frame(row: Queued) -> bytes:
    """The frame that carries a queued row to its device."""
    if row.kind is Kind.MESSAGE:
        return encode(Deliver(row.seq, row.message_id, row.peer_user, row.peer_device, row.ts, row.payload))
    if row.kind is Kind.TEAM:
        # The store keeps what a message was sent to in ``team``: a team,
        # or for SPEC §14 a role or a user, which the frame does not repeat.
        return encode(
            Deliver(
                row.seq,
                row.message_id,
                row.peer_user,
                row.peer_device,
                row.ts,
                row.payload,
                body=row.body,
                team=row.team if row.team is not None and pt.is_team_id(row.team) else None,
                role=row.role,
                urgent=True if row.urgent else None,
                step=row.step,
            )
        )
    if row.kind is Kind.URGENT_STATUS:
        state, step, user, device, target = msgpack.unpackb(row.payload, raw=False)
        return encode(
            UrgentStatus(row.seq, row.message_id, row.peer_user, state, step, row.ts, user, device, target)
        )
    if row.kind is Kind.REFUSAL:
        reason = row.payload.decode("ascii")
        return encode(Refused(row.seq, row.message_id, row.peer_user, row.peer_device, row.ts, reason))
    return encode(Delivered(row.seq, row.message_id, row.peer_user, row.peer_device, row.ts))


def row_wakeup(row: Queued) -> bytes:
    """The wake-up announcing ``row``, with a copy of its frame."""
    tag = b"O" if is_oncall_row(row) else _TAGS[row.kind]
    return tag + row.seq.to_bytes(8, "big") + row_frame(row)


def row_wakeups(rows: list[Queued]) -> list[tuple[str, bytes]]:
    """``(channel, payload)`` of the wake-ups announcing ``rows``, each on
    its device's channel, in the order of ``rows``."""
    return [(device_channel(row.device_id), row_wakeup(row)) for row in rows]


def close_wakeup(error: type[errors.FatalError], generation: int | None = None) -> bytes:
    """The wake-up that ends the device's connection with ``error``; with
    ``generation``, only the connections of a lower generation."""
    suffix = b"" if generation is None else b"/%d" % generation
    return b"X" + error.code.encode() + suffix


# --- reading --------------------------------------------------------------------


def parse(payload: bytes) -> tuple[int, int, bytes]:
    """``(tag, seq, body)`` of a wake-up: for a row wake-up its seq and its
    frame; for any other tag, seq 0 and the rest of the payload. Raises
    MalformedWakeup for an empty payload or a row wake-up with no frame."""
    if not payload:
        raise MalformedWakeup("empty wake-up")
    tag = payload[0]
    if tag in ROW_TAGS:
        if len(payload) <= _SEQ_END:
            raise MalformedWakeup(f"row wake-up of {len(payload)} bytes")
        return tag, int.from_bytes(payload[1:_SEQ_END], "big"), payload[_SEQ_END:]
    return tag, 0, payload[1:]


def request_id(frame: bytes) -> str | None:
    """The request id (logs.py) of a row frame: its message id in hex, or
    None if the frame names none. For logging: it decodes the frame."""
    try:
        fields = msgpack.unpackb(frame, raw=False)
    except (ValueError, msgpack.UnpackException):
        return None
    mid = fields.get("id") if isinstance(fields, dict) else None
    return mid.hex() if isinstance(mid, bytes) else None


def close_error(body: bytes) -> type[errors.FatalError] | None:
    """The fatal error an ``X`` wake-up's body names; None for anything
    that names no fatal error (a code from a newer node, say)."""
    error = errors.error_class(body.decode("ascii", "replace").split("/", 1)[0])
    return error if issubclass(error, errors.FatalError) else None


def close_generation(body: bytes) -> int | None:
    """The generation an ``X`` body names (None: every connection)."""
    _, sep, generation = body.partition(b"/")
    return int(generation) if sep and generation.isdigit() else None
