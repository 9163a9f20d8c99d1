"""Turning ``deliver``/``delivered``/``refused`` frames into application
events (SPEC §6.3, §6.4, §6.5).

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
2. a message this device cannot accept is **refused** (SPEC §6.3): the
   sender is not a verified clinician for this device's authority key, or
   the sending device is not one their attestation vouches for
   (``sender_unverified``), or the envelope does not open or fails the
   checks (``undecryptable``). The sender then sees "refused", never a
   false "delivered". With a hub that does not know refusals, it is acked
   and dropped instead, as before them. Either way a warning is logged
   (id and sender only, never content);
3. a message whose sender cannot be resolved *yet* (the lookup timed out,
   the hub's answer could not be read, this device may not look anyone up
   now) is **held**: neither acked nor refused, so the hub delivers it
   again on the next connection, and reported as a
   :class:`~miss_client.models.MessageHeld` event. The frames after it are
   handled as usual: one sender never stops the queue;
4. otherwise the message is written to the local state, *then* acked, then
   returned. A crash between the two steps means a redelivery, which rule 1
   drops, so the user sees each message once.

Receipts (``delivered`` and ``refused``) follow the same store-then-ack order
and are deduplicated by ``(id, device)``.

Revision 3 (SPEC §13): a team message (``deliver`` with ``body`` and
``team``) is opened by unwrapping its key with the sender device's box key
and checking the sealed body's signature with its sign key; its plaintext
must be addressed to ``deliver.team``, and name a head of the chain this
device verified (``check_team``, :meth:`miss_client.teams.Teams.check_head`:
a head we never verified, even after fetching the chain, marks the team
``diverged``). Notices are not stored as messages: a ``read`` notice marks
our messages read by its sender (or, from our own devices, theirs read
here), a ``recall`` notice deletes the text of the sender's message (or
remembers the id, to drop the message if it comes later); kinds this client
does not know are acked and ignored, never shown.

Revision 6 (SPEC §16): a message with attachments is always a sealed
body, also 1:1 (without urgency); its plaintext's descriptors become
``Message.attachments``, stored with its text. The files themselves are
fetched only when asked (:meth:`Client.fetch_attachment
<miss_client.client.Client.fetch_attachment>`, :meth:`Client.save
<miss_client.client.Client.save>`), and checked then.

Revision 4 (SPEC §14.5): a sealed body may come without a team: a message
to a role (``deliver.role``; its plaintext must be addressed to that role),
an urgent message to this user, or a backup's copy released at an
escalation ``step`` (addressed to whoever it was sent to, and accepted only
if its plaintext says ``urgent``: it is shown as "urgent, sent to you as
backup", in the conversation with its sender). A message is urgent if and
only if its plaintext says so; its role, urgency and step are recorded
(:mod:`miss_client.oncall_state`) before the message itself.

:class:`AckBatcher` sends those acks and refusals in batches
(:data:`ACK_DELAY`, :data:`ACK_BATCH`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from protocol import crypto
from protocol import frames as f
from protocol.errors import NotVerified, ProtocolError, RateLimited, StorageUnavailable, UnknownUser

from .errors import ClientError, ConnectionFailed, ConnectionLost, RequestTimeout, UnverifiedPeer
from .models import Delivered, Event, Message, MessageHeld, ReadBy, Recalled, Refused, format_id
from .oncall_state import OncallState
from .state import LocalState

__all__ = ["ACK_BATCH", "ACK_DELAY", "AckBatcher", "Inbox", "Undecryptable", "open_delivery"]

log = logging.getLogger("miss_client")

#: Acks wait this long (s) for others to share their frame ... Each ack
#: frame costs the hub a read and a store call; the only thing that waits is
#: the sender's "delivered" tick, for which a fifth of a second is nothing.
#: A device receiving ten messages a second (the bench's ``online``) sends
#: one ack frame per four or five rows instead of one per row or two
#: (0.05 s): 4.4 frames per message through the hub instead of 5.0.
ACK_DELAY = 0.2
#: ... unless this many are waiting.
ACK_BATCH = 256

#: Finds a sender device's public keys: ``(user, device) -> DeviceInfo``, or
#: None if that device is not an active device of that user.
SenderLookup = Callable[[str, str], Awaitable[f.DeviceInfo | None]]

#: Checks a team message's head: ``(team, sender, head) -> None``; raises
#: LookupError if the sender was not a member at that head.
TeamCheck = Callable[[str, str, bytes | None], Awaitable[object]]

#: Sender lookups that fail for a reason that may pass: the message is held.
_NOT_YET = (RequestTimeout, ConnectionFailed, StorageUnavailable, RateLimited, NotVerified)


class Undecryptable(Exception):
    """A delivery to refuse. ``reason`` is the refusal reason of SPEC §6.5;
    the message is safe to log (no content)."""

    def __init__(self, detail: str, reason: str = "undecryptable") -> None:
        super().__init__(detail)
        self.reason = reason


def open_delivery(frame: f.Deliver, keys: crypto.DeviceKeys, own_user: str, sender: f.DeviceInfo) -> Message:
    """Decrypt ``frame.env`` with this device's ``keys`` and the ``sender``
    device's box key, and check it against the frame. Raises Undecryptable."""
    if sender.device != frame.from_device:
        raise Undecryptable("keys given for another device than the sender's")
    backup = frame.step is not None
    team = frame.team if frame.body is not None and not backup else None
    role = frame.role if frame.body is not None else None
    try:
        if frame.body is not None:
            key = crypto.unwrap_key(frame.env, keys, sender.box_pk)
            opened = crypto.open_body(frame.body, key, frame.id, sender.sign_pk)
        else:
            opened = crypto.open_envelope(frame.env, keys, sender.box_pk)
        inner = crypto.unpack_plaintext(opened)
    except crypto.EnvelopeError as exc:
        raise Undecryptable(str(exc)) from None
    if inner.id != frame.id:
        raise Undecryptable("inner message id differs from the delivery's")
    if inner.from_user != frame.from_user:
        raise Undecryptable("inner sender differs from the delivery's")
    own_copy = frame.from_user == own_user
    if frame.body is not None and frame.team is None and not inner.urgent and role is None and not inner.atts:
        # SPEC §13.3, §14.4, §16: sealed 1:1 only when urgent or with attachments.
        raise Undecryptable("a sealed body to a user that is neither urgent nor with attachments")
    if inner.atts and inner.kind != "text":
        raise Undecryptable("attachments on a message that is not a text")
    if backup:
        # A backup's copy was sealed for whoever the message was sent to.
        if not inner.urgent:
            raise Undecryptable("a copy released by escalation of a message that is not urgent")
    elif team is not None:
        if inner.to_user != team:
            raise Undecryptable("addressed to another team")
    elif role is not None:
        if inner.to_user != role:
            raise Undecryptable("addressed to another role")
    elif inner.to_user != own_user and not own_copy:
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
        team=team,
        expires_at=inner.expires_at,
        head=inner.head,
        refs=tuple(inner.refs or ()),
        notice_team=inner.team,
        role=role,
        urgent=inner.urgent,
        step=frame.step,
        attachments=tuple(inner.atts),
        notice=inner.notice,
    )


class Inbox:
    """Receive-side policy of one connection (see the module docstring).

    ``find_sender`` supplies sender keys (it may do a network lookup);
    ``ack`` acknowledges one seq and ``refuse`` refuses one (None: the hub
    does not know refusals, so refused messages are acked); neither may
    raise when the connection is gone (a lost ack only means a redelivery).
    """

    def __init__(
        self,
        state: LocalState,
        keys: crypto.DeviceKeys,
        own_user: str,
        find_sender: SenderLookup,
        ack: Callable[[int], Awaitable[None]],
        refuse: Callable[[int, str], Awaitable[None]] | None = None,
        check_team: TeamCheck | None = None,
        oncall: OncallState | None = None,
    ) -> None:
        self._state = state
        self._keys = keys
        self._own_user = own_user
        self._find_sender = find_sender
        self._ack = ack
        self._refuse = refuse
        self._check_team = check_team
        self._oncall = oncall

    async def process(self, frame: f.Deliver | f.Delivered | f.Refused) -> Event | None:
        """Store, ack and return the event a frame carries; a MessageHeld for
        a message kept for later; None if it is a duplicate or was refused.
        Errors from ``find_sender`` that say the connection ended propagate,
        nothing acked."""
        if isinstance(frame, f.Delivered | f.Refused):
            reason = frame.reason if isinstance(frame, f.Refused) else None
            new = self._state.record_receipt(frame.id, frame.user, frame.device, frame.ts, reason)
            await self._ack(frame.seq)
            if not new:
                return None
            if reason is not None:
                return Refused(frame.id, frame.user, frame.device, frame.ts, reason)
            return Delivered(frame.id, frame.user, frame.device, frame.ts)
        if self._state.is_seen(frame.from_user, frame.id):
            await self._ack(frame.seq)
            return None
        try:
            try:
                sender = await self._find_sender(frame.from_user, frame.from_device)
            except (UnverifiedPeer, UnknownUser) as exc:
                raise Undecryptable(
                    f"sender is not a verified clinician ({exc})", "sender_unverified"
                ) from None
            if sender is None:
                raise Undecryptable(
                    "sender device is not one their attestation vouches for", "sender_unverified"
                )
            message = open_delivery(frame, self._keys, self._own_user, sender)
            if message.team is not None:
                if self._check_team is None:
                    raise Undecryptable("a team message, and this client has no teams")
                try:
                    await self._check_team(message.team, message.from_user, message.head)
                except LookupError as exc:
                    raise Undecryptable(str(exc), "sender_unverified") from None
        except _NOT_YET as exc:
            log.warning(
                "holding message %s from %s/%s for the next connection: %s",
                format_id(frame.id),
                frame.from_user,
                frame.from_device,
                type(exc).__name__,
            )
            return MessageHeld(frame.id, frame.from_user, frame.from_device, str(exc))
        except Undecryptable as exc:
            log.warning(
                "refusing message %s from %s/%s: %s",
                format_id(frame.id),
                frame.from_user,
                frame.from_device,
                exc,
            )
            if self._refuse is not None:
                await self._refuse(frame.seq, exc.reason)
            else:
                await self._ack(frame.seq)
            return None
        if message.kind != "text":
            event = self._notice(message)
            self._state.mark_seen(message.from_user, message.id)
            await self._ack(frame.seq)
            return event
        if self._oncall is not None and (message.urgent or message.role is not None):
            self._oncall.record_in(
                message.from_user, message.id, role=message.role, urgent=message.urgent, step=message.step
            )
        new = self._state.record_incoming(message)
        await self._ack(frame.seq)
        return message if new else None

    def _notice(self, notice: Message) -> Event | None:
        """Apply a notice (SPEC §13.5) to the local state; the event to show, if any."""
        ts = notice.received_at or notice.sent_at
        if notice.kind == "read" and notice.refs:
            if notice.from_user == self._own_user:
                # Our other device read them: theirs (the notice's "to"), or
                # anyone's when it was sent to our own user (receipts off).
                whose = None if notice.to_user == self._own_user else notice.to_user
                self._state.mark_read(notice.refs, whose, at=ts)
                return ReadBy(notice.refs, notice.from_user, ts, notice.notice_team or notice.team)
            new = self._state.record_reads(notice.refs, notice.from_user, ts)
            if not new:
                return None
            return ReadBy(tuple(new), notice.from_user, ts, notice.notice_team or notice.team)
        if notice.kind == "recall" and notice.refs:
            # Only the original sender's notice counts: the recall applies to
            # the messages of the notice's sender alone.
            event: Event | None = None
            for ref in notice.refs:
                conversation = self._state.recall_message(notice.from_user, ref)
                if event is None:
                    event = Recalled(
                        ref, notice.from_user, conversation or notice.peer, conversation is not None
                    )
            return event
        log.info("ignoring a %r notice from %s", notice.kind, notice.from_user)
        return None


class AckBatcher:
    """Acks and refusals of one connection, sent in batches through
    ``send`` (one encoded frame). :meth:`ack` and :meth:`refuse` only queue
    (the event is already stored) and never raise for a lost connection;
    :meth:`flush` sends what is queued now. Use from one event loop."""

    def __init__(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        self._send = send
        self._acks: list[int] = []
        self._refusals: list[f.Refusal] = []
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Future[None] | None = None  # a flush the timer started

    async def ack(self, seq: int) -> None:
        """Queue an ack. Acks leave together, ``ACK_DELAY`` after the first
        one, on :meth:`flush`, or once ``ACK_BATCH`` wait: one frame for a
        burst instead of one per message, which the hub feels; only the
        sender's receipt waits, a fraction of a second."""
        self._acks.append(seq)
        await self._queued()

    async def refuse(self, seq: int, reason: str) -> None:
        """Queue a refusal (SPEC §6.5); it leaves with the acks."""
        self._refusals.append(f.Refusal(seq, reason))
        await self._queued()

    async def _queued(self) -> None:
        if len(self._acks) >= ACK_BATCH or len(self._refusals) >= f.MAX_ACK_REFUSALS:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(ACK_DELAY, self._due)

    def _due(self) -> None:
        self._timer = None
        self._task = asyncio.ensure_future(self.flush())

    async def flush(self) -> None:
        """Send every queued ack and refusal in one frame, if any."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        seqs, self._acks = self._acks, []
        refused, self._refusals = self._refusals, []
        if not seqs and not refused:
            return
        # Best effort: an ack lost with the connection means a redelivery,
        # which the seen table drops (and a refusal, another refusal).
        frame = f.Ack(seqs=tuple(seqs), refused=tuple(refused) if refused else None)
        try:
            await self._send(f.encode(frame))
        except (ConnectionLost, ProtocolError, ClientError) as exc:
            log.debug("ack of %d seqs not sent: %s", len(seqs) + len(refused), type(exc).__name__)
