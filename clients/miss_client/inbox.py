"""Turning ``deliver``/``delivered`` frames into application events (SPEC §6.3, §6.4).

Theory of operation
-------------------
:func:`open_delivery` is pure: given a ``deliver`` frame, this device's keys
and the sender device's public keys, it returns the checked
:class:`~miss_client.models.Message` or raises :class:`Undecryptable`. The
checks are the ones SPEC §6.3 requires: the inner id and sender repeat the
frame's, and the message is addressed to us, unless it is our own message
copied to this device (then it is flagged ``outgoing_copy``).

:class:`Inbox` runs the receive-side policy for one connection, for each
frame in arrival order:

1. a frame whose ``(from_user, id)`` was seen before is acked and dropped;
2. an envelope that does not open or fails the checks is acked and dropped
   with a logged warning (id and sender only, never content): it can only
   come from a broken or hostile peer or hub, and an unacked frame would be
   redelivered forever;
3. otherwise the message is written to the local state, *then* acked, then
   returned. A crash between the two steps means a redelivery, which rule 1
   drops, so the user sees each message once.

Receipts follow the same store-then-ack order and are deduplicated by
``(id, device)``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from protocol import crypto
from protocol import frames as f

from .models import Delivered, Event, Message, format_id
from .state import LocalState

__all__ = ["Inbox", "Undecryptable", "open_delivery"]

log = logging.getLogger("miss_client")

#: Finds a sender device's public keys: ``(user, device) -> DeviceInfo``, or
#: None if that device is not an active device of that user.
SenderLookup = Callable[[str, str], Awaitable[f.DeviceInfo | None]]


class Undecryptable(Exception):
    """A delivery to ack and drop. The message is safe to log (no content)."""


def open_delivery(frame: f.Deliver, keys: crypto.DeviceKeys, own_user: str, sender: f.DeviceInfo) -> Message:
    """Decrypt ``frame.env`` with this device's ``keys`` and the ``sender``
    device's box key, and check it against the frame. Raises Undecryptable."""
    if sender.device != frame.from_device:
        raise Undecryptable("keys given for another device than the sender's")
    try:
        inner = crypto.unpack_plaintext(crypto.open_envelope(frame.env, keys, sender.box_pk))
    except crypto.EnvelopeError as exc:
        raise Undecryptable(str(exc)) from None
    if inner.id != frame.id:
        raise Undecryptable("inner message id differs from the delivery's")
    if inner.from_user != frame.from_user:
        raise Undecryptable("inner sender differs from the delivery's")
    own_copy = frame.from_user == own_user
    if inner.to_user != own_user and not own_copy:
        raise Undecryptable("addressed to another user")
    return Message(
        id=frame.id,
        from_user=frame.from_user,
        from_device=frame.from_device,
        to_user=inner.to_user,
        sent_at=inner.sent_at,
        body=inner.body,
        kind=inner.kind,
        outgoing_copy=own_copy and inner.to_user != own_user,
        received_at=frame.ts,
    )


class Inbox:
    """Receive-side policy of one connection (see the module docstring).

    ``find_sender`` supplies sender keys (it may do a network lookup);
    ``ack`` sends an ``ack`` for one seq and must not raise when the
    connection is gone (a lost ack only means a redelivery).
    """

    def __init__(
        self,
        state: LocalState,
        keys: crypto.DeviceKeys,
        own_user: str,
        find_sender: SenderLookup,
        ack: Callable[[int], Awaitable[None]],
    ) -> None:
        self._state = state
        self._keys = keys
        self._own_user = own_user
        self._find_sender = find_sender
        self._ack = ack

    async def process(self, frame: f.Deliver | f.Delivered) -> Event | None:
        """Store, ack and return the event a frame carries, or None if it is a
        duplicate or was dropped. Errors from ``find_sender`` other than
        Undecryptable (e.g. the connection ended) propagate, nothing acked."""
        if isinstance(frame, f.Delivered):
            new = self._state.record_receipt(frame.id, frame.user, frame.device, frame.ts)
            await self._ack(frame.seq)
            return Delivered(frame.id, frame.user, frame.device, frame.ts) if new else None
        if self._state.is_seen(frame.from_user, frame.id):
            await self._ack(frame.seq)
            return None
        try:
            sender = await self._find_sender(frame.from_user, frame.from_device)
            if sender is None:
                raise Undecryptable("sender device is not an active device of the sender")
            message = open_delivery(frame, self._keys, self._own_user, sender)
        except Undecryptable as exc:
            log.warning(
                "dropping message %s from %s/%s: %s",
                format_id(frame.id),
                frame.from_user,
                frame.from_device,
                exc,
            )
            await self._ack(frame.seq)
            return None
        new = self._state.record_incoming(message)
        await self._ack(frame.seq)
        return message if new else None
