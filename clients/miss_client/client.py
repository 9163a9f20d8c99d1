"""The asyncio client SDK: one authenticated device connection (SPEC §4-§6).

Theory of operation
-------------------
``async with Client.connect(profile) as client:`` opens the WebSocket,
answers the challenge with an ``auth`` signed by the device key, and starts
one background reader. :class:`Client` is the facade applications call; the
work is done by the parts it owns, one per concern:

* :class:`~miss_client.requests.Router` (:mod:`.requests`): the reader, and
  matching answers to requests; a fatal ``error`` or a close ends the
  connection, and every waiting and later call raises what the hub named
  (or ConnectionLost). Requests that may be resent are retried as
  :class:`RetryPolicy` says (:mod:`.retry`);
* :class:`~miss_client.peers.Peers` (:mod:`.peers`): verified clinicians
  (SPEC §11.2): attestations, pinned keys, key changes and their
  acceptance; only verified clinicians are written to or read from;
* :class:`~miss_client.presence.Presence` (:mod:`.presence`): our status
  and the presence of watched users (SPEC §6.7), applied by the reader;
* :class:`~miss_client.outbox.Outbox` (:mod:`.outbox`): sending, until the
  hub accepts, with the local history as the record;
* :class:`~miss_client.inbox.Inbox` and
  :class:`~miss_client.inbox.AckBatcher` (:mod:`.inbox`): deliveries and
  receipts, stored then acked (or refused, SPEC §6.5), acks in batches.

Incoming frames are decrypted, checked, stored and acked by whoever consumes
them (:meth:`Client.events`, :meth:`Client.receive`, :meth:`Client.drain`),
not by the reader: opening an envelope may need a ``lookup`` of the sender,
whose answer the reader must stay free to route. Only one consumer should
read events at a time.

* :class:`~miss_client.teams.Teams` (:mod:`.teams`): care teams (SPEC §13):
  verified chains of membership records, changes, team targets; synced
  after ``welcome`` when the hub speaks ``teams``.
* :class:`~miss_client.oncall.Roles` (:mod:`.oncall`, :attr:`Client.roles`):
  on-call roles and urgent messages (SPEC §14): role requests, the targets
  of a role send (holders and escalation backups, each verified), statuses,
  reminders and acknowledgements, recorded in the local state
  (:mod:`.oncall_state`) so that urgency survives a restart.

* :class:`~miss_client.uploads.Attachments` (:mod:`.uploads`): attachments
  (SPEC §16): files checked, encrypted to the spool (:mod:`.attachments`),
  uploaded with resumption (:mod:`.upload_state`), fetched over HTTP
  (:mod:`.http_fetch`), verified, saved.

* :class:`~miss_client.notice_keys.NoticeSender` (:mod:`.notice_keys`):
  notices (SPEC §17.3), sent idempotently by a caller's key
  (:meth:`Client.send_notice`, :meth:`Client.notice_id`).

Revision 3 also brings read notices (:meth:`Client.mark_read`), recall
(:meth:`Client.recall`) and lifespans (``send(..., lifespan_ms=)``): the
local state deletes expired texts on open, before every history read, and
every :data:`SWEEP_SECONDS` while connected.

The client names the capabilities it speaks (``connection.CLIENT_CAPS``) in
its ``auth``; :attr:`Client.hub_authority` and :attr:`Client.hub_caps` hold
what the hub's ``challenge`` announced.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from websockets.asyncio.client import ClientConnection

from protocol import frames as f
from protocol.attachments import Attachment
from protocol.errors import DeviceRevoked, ProtocolError, RepliesRefused
from protocol.notices import Notice

from .attachments import SPOOL_DIR
from .connection import authenticator, handshake, open_websocket
from .errors import ClientError, ConnectionFailed, ConnectionLost, UnknownMessage
from .inbox import ACK_DELAY, AckBatcher, Inbox
from .models import (
    AuthorityRotated,
    Delivered,
    DirectoryEntry,
    Event,
    Message,
    OwnDevice,
    Peer,
    PeerChange,
    PresenceInfo,
    RotationRefused,
    TeamView,
    is_team_id,
)
from .notice_keys import NoticeSender
from .oncall import Roles
from .oncall_models import Acknowledgement, UrgentInfo
from .oncall_state import OncallState
from .outbox import Outbox
from .peers import Peers
from .presence import Presence
from .profile import Profile, with_saved_authority
from .requests import Router
from .retry import RetryPolicy
from .rotation import follow_rotation
from .state import LocalState
from .teams import Teams
from .upload_state import UploadState
from .uploads import Attachments, Progress, save_attachments

# ACK_DELAY is read from here by bench/client.py, which acks like the SDK.
__all__ = ["ACK_DELAY", "SWEEP_SECONDS", "Client", "RetryPolicy"]

log = logging.getLogger("miss_client")

#: While connected, expired texts are deleted this often (s).
SWEEP_SECONDS = 30.0
#: At most this many ids in one read notice (SPEC §13.5).
MAX_REFS = 256


class Client:
    """One authenticated connection of the profile's device. Build it with
    :meth:`connect`; all methods must be called from the event loop that did."""

    def __init__(
        self,
        ws: ClientConnection,
        profile: Profile,
        state: LocalState,
        *,
        request_timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        challenge: f.Challenge | None = None,
        welcome: f.Welcome | None = None,
        server: str | None = None,
    ) -> None:
        self.profile = profile
        self.state = state
        #: The verification authority key the hub announced (SPEC §5.1), if
        #: any: when it differs from the profile's, every clinician will
        #: look unverified to this client (tell the user).
        self.hub_authority: bytes | None = challenge.authority if challenge else None
        #: What this connection did about the hub's authority key (SPEC
        #: §15): followed a rotation, refused one, or None (nothing to do).
        #: Also the first of :meth:`events`.
        self.rotation: AuthorityRotated | RotationRefused | None = None
        #: The capabilities the hub announced (SPEC §10).
        self.hub_caps: frozenset[str] = frozenset(challenge.caps or ()) if challenge else frozenset()
        self._router = Router(ws, request_timeout=request_timeout, retry=retry or RetryPolicy())
        self._peers = Peers(self._router, profile, state)
        self._presence = Presence(self._router, self._peers)
        self._router.on_answer = self._presence.on_answer
        self._router.on_presence = self._presence.on_push
        #: Events produced outside a delivery (team changes, problems),
        #: handed out by receive() before the next frame.
        self._events: deque[Event] = deque()
        self._teams = Teams(self._router, self._peers, profile, state, self._events.append)
        self._acks = AckBatcher(self._router.send)
        #: On-call roles (SPEC §14): ``search``, ``get``, ``take``, ``leave``, ``find``.
        self.roles = Roles(self._router, self._peers, profile, OncallState(state), self._acks.ack)
        blobs = welcome is not None and f.CAP_BLOBS in self.hub_caps
        self._attachments = Attachments(
            self._router,
            UploadState(state, profile.directory / SPOOL_DIR),
            server or profile.server,
            welcome.att_max if blobs and welcome is not None else None,
            welcome.blob_max if blobs and welcome is not None else None,
        )
        self._outbox = Outbox(
            self._router, self._peers, profile, state, self._teams, self.roles, self._attachments
        )
        self._notices = NoticeSender(self._outbox, self._peers, state)
        refuse = self._acks.refuse if f.CAP_REFUSALS in self.hub_caps else None
        self._inbox = Inbox(
            state,
            profile.keys,
            profile.user_id,
            self._peers.sender_device,
            self._acks.ack,
            refuse,
            check_team=self._teams.check_head,
            oncall=self.roles.state,
        )
        self._sweeper: asyncio.Task[None] | None = None
        self._syncing: asyncio.Task[None] | None = None

    # --- life cycle ------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        profile: Profile,
        *,
        url: str | None = None,
        state: LocalState | None = None,
        open_timeout: float = 10.0,
        request_timeout: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> AsyncIterator[Client]:
        """Connect to ``url`` (default: the profile's server) and authenticate.

        Raises AuthorityNotSet (a profile without an authority key: nobody
        could be verified) before connecting; then ConnectionFailed,
        AuthFailed (device unknown), DeviceRevoked, AccountSuspended or
        another :mod:`protocol.errors` exception. Opens the profile's state
        DB unless ``state`` is given; closes what it opened on exit.
        """
        profile.authority  # noqa: B018 - raises AuthorityNotSet
        # A rotation another connection of this profile followed since it was loaded.
        profile = with_saved_authority(profile)
        ws = await open_websocket(url or profile.server, open_timeout)
        try:
            answer = authenticator(profile.keys, profile.device_id)

            challenge, welcome = await handshake(ws, answer, open_timeout)
            if (welcome.user, welcome.device) != (profile.user_id, profile.device_id):
                raise ConnectionFailed("the hub welcomed another device than this profile's")
            # Before anything verifies a peer: a new authority key the old one announced (SPEC §15).
            profile, rotation_event = follow_rotation(profile, challenge)
            own_state = state is None
            local = profile.open_state() if state is None else state
        except BaseException:
            await ws.close()
            raise
        client = cls(
            ws,
            profile,
            local,
            request_timeout=request_timeout,
            retry=retry,
            challenge=challenge,
            welcome=welcome,
            server=url or profile.server,
        )
        if rotation_event is not None:
            client.rotation = rotation_event
            client._events.append(rotation_event)
        client._router.start()
        client._sweeper = asyncio.create_task(client._sweep(), name="miss-client-sweeper")
        if f.CAP_TEAMS in client.hub_caps:
            # In the background: what it finds comes as events, and a hub
            # slow to answer must not delay the connection.
            client._syncing = asyncio.create_task(client._sync_teams(), name="miss-client-teams")
        try:
            yield client
        finally:
            await client.aclose()
            if own_state:
                local.close()

    @property
    def user_id(self) -> str:
        return self.profile.user_id

    @property
    def device_id(self) -> str:
        return self.profile.device_id

    @property
    def closed(self) -> bool:
        """True once the connection has ended (for whatever reason)."""
        return self._router.closed

    @property
    def request_timeout(self) -> float:
        """Seconds a request waits for its answer before RequestTimeout."""
        return self._router.request_timeout

    @request_timeout.setter
    def request_timeout(self, seconds: float) -> None:
        self._router.request_timeout = seconds

    @property
    def retry(self) -> RetryPolicy:
        """How :meth:`send` and the other requests that may be resent retry."""
        return self._router.retry

    @retry.setter
    def retry(self, policy: RetryPolicy) -> None:
        self._router.retry = policy

    @property
    def on_key_change(self) -> Callable[[Peer, PeerChange], None]:
        """Called when a lookup finds a key change relative to the pinned keys
        (new device, new keys, substituted keys: then it is pending until
        accepted), or pinned devices removed. Default: log a warning."""
        return self._peers.on_key_change

    @on_key_change.setter
    def on_key_change(self, callback: Callable[[Peer, PeerChange], None]) -> None:
        self._peers.on_key_change = callback

    async def aclose(self) -> None:
        """Close the connection; pending requests raise ConnectionLost. Idempotent."""
        for task in (self._sweeper, self._syncing):
            if task is not None:
                task.cancel()
        if not self._router.closing:
            await self._acks.flush()
        await self._router.aclose()

    async def _sync_teams(self) -> None:
        try:
            await self._teams.sync()
        except (ProtocolError, ClientError) as exc:
            log.info("teams not synced after welcome: %s", type(exc).__name__)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            self.state.sweep_expired()

    # --- verified clinicians (SPEC §11.2, §11.3, §8): see miss_client.peers ----------

    async def lookup(
        self, user: str | None = None, rpps: str | None = None, *, refresh: bool = False
    ) -> Peer:
        """A verified clinician and their target devices, by user id or RPPS
        (SPEC §11.2), cached for the connection unless ``refresh``. Raises
        UnverifiedPeer (nothing is kept about them) or UnknownUser; reports a
        key change to :attr:`on_key_change` (:meth:`Peers.lookup
        <miss_client.peers.Peers.lookup>` has the details)."""
        return await self._peers.lookup(user, rpps, refresh=refresh)

    async def resolve(self, recipient: str, *, refresh: bool = False) -> Peer:
        """Look up a recipient given as an RPPS number (11 digits) or a user
        id (``u_...``); raises BadRecipient for anything else."""
        return await self._peers.resolve(recipient, refresh=refresh)

    async def search(self, query: str) -> list[DirectoryEntry]:
        """Verified clinicians whose name, RPPS number, profession or
        organisation contains ``query`` (3-64 characters), at most 50, in the
        hub's order (by name); entries that do not verify are dropped."""
        return await self._peers.search(query)

    async def safety_number(self, recipient: str) -> str:
        """The 60-digit safety number between this user and ``recipient``,
        from freshly looked-up device keys (SPEC §8: every device the hub
        lists for either user). Raises UnverifiedPeer like :meth:`lookup`."""
        return await self._peers.safety_number(recipient)

    async def accept_keys(self, user: str, expected: PeerChange | None = None) -> Peer:
        """Accept the pending key change of ``user`` (user id or RPPS number;
        our own user id for our own devices): the attested keys of the last
        lookup become the pinned ones, and sending to them resumes. A no-op
        if nothing is pending. With ``expected`` (the change the user was
        shown), raises KeyChangePending if the pending change is another one
        by now. Raises UnverifiedPeer if the peer does not verify."""
        return await self._peers.accept_keys(user, expected)

    async def mark_verified(self, user: str) -> Peer:
        """Mark ``user`` verified in person, once both sides read the same
        safety number (:meth:`safety_number`); a pending key change is
        accepted along with it. Any later key change clears the mark."""
        return await self._peers.mark_verified(user)

    # --- own devices (SPEC §11.4) ------------------------------------------------------

    async def devices(self) -> list[OwnDevice]:
        """This clinician's active devices, oldest first, ``attested`` if the
        current attestation vouches for them."""
        reply = await self._router.request_retrying(lambda rid: f.Devices(rid=rid), "devices")
        if not isinstance(reply, f.DevicesOk):
            raise ConnectionFailed("the hub answered devices with something else")
        return [
            OwnDevice(d.device, d.label, d.created, d.attested, d.device == self.device_id)
            for d in reply.devices
        ]

    async def revoke(self, device_id: str) -> None:
        """Revoke one of this clinician's active devices, for ever (a lost
        phone): the hub drops its queue and disconnects it. Revoking this
        very device is allowed; the hub then closes this connection too, and
        the profile can no longer connect. Raises Forbidden if ``device_id``
        is not one of our active devices."""
        if not device_id or len(device_id) > f.MAX_ID_CHARS or "\x00" in device_id:
            raise ValueError("a device id looks like d_0123456789abcdef")
        try:
            reply = await self._router.request_retrying(
                lambda rid: f.Revoke(rid=rid, device=device_id), "revoke"
            )
        except DeviceRevoked:
            if device_id == self.device_id:
                return  # the hub closed us before its answer reached us
            raise
        if not isinstance(reply, f.Ok):
            raise ConnectionFailed("the hub answered revoke with something else")
        self._peers.forget(self.user_id)  # our device list changed

    async def link_code(self) -> tuple[str, int]:
        """A one-time code to enroll another device of this clinician, and its
        expiry (ms since the epoch)."""
        reply = await self._router.request_retrying(lambda rid: f.LinkCode(rid=rid), "link_code")
        if not isinstance(reply, f.LinkCodeOk):
            raise ConnectionFailed("the hub answered link_code with something else")
        return reply.code, reply.expires

    async def ping(self) -> float:
        """The hub's round trip now, in seconds: a ``ping`` request answered
        ``ok`` (SPEC §4.1), or with a hub that does not name the ``ping``
        capability, a WebSocket ping. Not retried: it measures this moment.
        Raises RateLimited, RequestTimeout, or what ended the connection."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        if f.CAP_PING in self.hub_caps:
            reply = await self._router.request(lambda rid: f.Ping(rid=rid))
            if not isinstance(reply, f.Ok):
                raise ConnectionFailed("the hub answered ping with something else")
        else:
            await self._router.ping()
        return loop.time() - started

    # --- presence (SPEC §6.7): see miss_client.presence ----------------------------------

    async def set_status(self, status: str) -> None:
        """Set this clinician's status, for all their devices: one of
        :data:`~miss_client.models.STATUSES`. Returns once the hub has stored
        it. Raises ValueError for another value, StorageUnavailable or
        RateLimited once the retries of :attr:`retry` are spent."""
        await self._presence.set_status(status)

    async def watch(self, users: Iterable[str]) -> list[PresenceInfo]:
        """Follow the presence of ``users`` (user ids or RPPS numbers) on this
        connection, **replacing** what it watched before (an empty list stops
        watching); returns the current presence of those the hub lets us see,
        in the order given. Changes then arrive as PresenceChanged events
        from :meth:`events`; watch again after reconnecting. Raises
        UnknownUser, BadRecipient, ValueError (more than 512 users),
        StorageUnavailable or RateLimited once :attr:`retry` is spent."""
        return await self._presence.watch(users)

    def presence(self, user: str) -> PresenceInfo | None:
        """The last known presence of a watched user (user id, or RPPS number
        of someone looked up on this connection); None if not watched."""
        return self._presence.presence(user)

    @property
    def watched(self) -> frozenset[str]:
        """User ids this connection watches, as the hub last confirmed."""
        return self._presence.watched

    # --- sending: see miss_client.outbox --------------------------------------------------

    async def send(
        self,
        to: str,
        text: str,
        message_id: bytes | None = None,
        *,
        kind: str = "text",
        lifespan_ms: int | None = None,
        urgent: bool = False,
        interval_ms: int | None = None,
        final_ms: int | None = None,
        attachments: Sequence[str | os.PathLike[str]] = (),
        on_progress: Progress | None = None,
    ) -> bytes:
        """Encrypt ``text`` for every device of ``to`` and our other devices,
        and return the message id once the hub has durably accepted it.

        ``attachments`` (SPEC §16): paths of up to :attr:`att_max` files
        (JPEG, PNG, HEIC/HEIF images or PDF, each at most :attr:`blob_max`
        bytes); ``text`` may then be empty. Before anything is encrypted or
        uploaded, raises TooManyAttachments, AttachmentTooLarge,
        AttachmentTypeNotAllowed (the type is what the bytes say),
        AttachmentsNotSupported (a hub without ``blobs``) or OSError. Each
        file is encrypted under a fresh key into the profile's spool, then
        uploaded (``on_progress(name, have, total)``: bytes of the
        encrypted file the hub holds); a lost connection leaves the message
        ``pending`` and :meth:`resend_pending` resumes the upload where the
        hub stopped. The message is sealed once, also 1:1, and carries the
        descriptors; the hub's quota errors (BlobQuota, BlobTooLarge...)
        mark it ``failed``.

        ``to`` may be a role id (``r_...``, SPEC §14): sealed for the
        attested devices of whoever the hub says holds it now, each looked
        up and verified as any recipient (raises RoleVacant if nobody does,
        UnknownRole). ``urgent`` (to a user, a team or a role) makes the hub
        re-notify the recipients until one of them acknowledges
        (:meth:`acknowledge`), and, to a role whose policy has steps, reach
        each step's backups in turn: their copies are sealed now, for the
        backups this device verified. ``interval_ms``/``final_ms`` override
        the policy's within the hub's bounds (PolicyOutOfBounds). What
        happens next comes as UrgentStatusChanged events and is kept in
        :meth:`urgent_info`.

        ``to`` may be a team id (``t_...``, SPEC §13): the message is then
        sealed once for every attested device of every member of the team's
        verified chain; raises TeamTampered / TeamDiverged (nothing sent)
        while the team has a problem, NotMember if we are not a member.
        ``lifespan_ms`` (1 h to 30 days; a team's default applies unless
        given) deletes the message everywhere once over (SPEC §13.6).

        ``message_id`` (16 bytes) defaults to a fresh UUIDv7; passing the id of
        an earlier attempt resends it without a second copy. The message is
        recorded in the local history first (``pending``), then marked
        ``accepted``, or ``failed`` on a definitive refusal.

        Only verified clinicians are written to (SPEC §11.2): raises
        UnverifiedPeer if the recipient's attestation, or our own, does not
        verify, or this device is not attested yet; KeyChangePending if the
        keys of the recipient or of our own user changed since they were
        pinned and the change was not accepted. In both cases nothing is
        encrypted and nothing recorded. Likewise RepliesNotAccepted for a
        service whose lookup says it does not accept replies (SPEC §17.2);
        the hub's own RepliesRefused marks the message ``failed``.

        Raises ValueError for an empty message, BadRecipient (also for
        ourselves), UnknownUser (nobody, or nobody verified: SPEC §11.3),
        NotVerified (this device may not look anyone up: not attested),
        NoDevices, MessageTooLarge, the last
        retryable error once :attr:`retry` is exhausted, RequestTimeout,
        ConnectionLost or a fatal :mod:`protocol.errors` exception. After
        RequestTimeout or ConnectionLost the message stays ``pending``: it
        may have been accepted, and :meth:`resend_pending` finds out.
        """
        return await self._outbox.send(
            to,
            text,
            message_id,
            kind=kind,
            lifespan_ms=lifespan_ms,
            urgent=urgent,
            interval_ms=interval_ms,
            final_ms=final_ms,
            attachments=attachments,
            on_progress=on_progress,
        )

    async def send_notice(
        self,
        notice: Notice,
        *,
        key: str,
        user: str | None = None,
        rpps: str | None = None,
        role: str | None = None,
        text: str | None = None,
        lifespan_ms: int | None = None,
    ) -> bytes:
        """Send ``notice`` (SPEC §17.3) to exactly one of ``user`` (a user
        id), ``rpps`` (an RPPS number, or a service's ``svc:`` identifier:
        ``lookup {rpps}``) or ``role`` (a role id: sealed for its holders
        now), and return its message id once the hub accepted it. Its body
        is ``text``, or :func:`protocol.notices.render_text` of the notice
        (what a client that predates notices shows).

        Idempotent by ``key`` (1-200 characters, e.g. an HL7 message control
        id; :mod:`miss_client.notice_keys`): the first call records ``key``
        and the id in the transaction that records the message, before
        anything is sent; a later call with the same key (within 365 days,
        on this profile) resends that same message, with the same id, while
        it is ``pending`` or ``failed`` (the hub answers ``dup`` if it had
        it), and returns its id without sending anything once it was
        accepted. The first call's content wins.

        Raises ValueError (a bad key, not exactly one recipient, an empty
        text), NoticeError (never: a Notice is checked when built), and
        whatever :meth:`send` raises (UnknownUser, UnverifiedPeer,
        KeyChangePending, RoleVacant, RepliesNotAccepted...). After
        RequestTimeout or ConnectionLost the notice stays ``pending``:
        call again with the same key, or :meth:`resend_pending`."""
        return await self._notices.send(
            notice, key=key, user=user, rpps=rpps, role=role, text=text, lifespan_ms=lifespan_ms
        )

    def notice_id(self, key: str) -> bytes | None:
        """The message id of the notice sent with ``key`` from this profile
        (within the last 365 days), whatever its status; None if none (so
        that an integration can recall it: :meth:`recall`)."""
        return self._notices.keys.get(key)

    async def resend_pending(self, on_progress: Progress | None = None) -> list[bytes]:
        """Resend, with their original ids, messages recorded but never seen
        accepted (e.g. the connection dropped while waiting); the hub answers
        ``dup`` for any it had in fact stored. Returns the ids now accepted.
        Uploads a lost connection interrupted are finished first, from the
        bytes the hub holds (``on_progress`` as for :meth:`send`).

        A message the hub refuses for good is marked ``failed`` and skipped
        (logged); one to a peer that does not verify or whose key change is
        pending stays ``pending`` and is skipped (logged); connection errors
        and fatal errors propagate.
        """
        return await self._outbox.resend_pending(on_progress)

    # --- attachments (SPEC §16): see miss_client.uploads ------------------------------------

    @property
    def att_max(self) -> int | None:
        """Most attachments the hub takes in one message (None: it takes none)."""
        return self._attachments.att_max

    @property
    def blob_max(self) -> int | None:
        """Largest attachment the hub takes, in bytes (None: it takes none)."""
        return self._attachments.blob_max

    async def fetch_attachment(self, att: Attachment) -> bytes:
        """The file ``att`` describes (an item of ``Message.attachments``),
        fetched through an expiring link (``blob_link``, then HTTP GET on
        the hub's port), verified and decrypted, in memory. Raises
        AttachmentUnavailable (expired, recalled, or not sent to this
        device), AttachmentCorrupt (the bytes do not verify: "pièce jointe
        altérée"), AttachmentsNotSupported."""
        out = bytearray()
        await self._attachments.fetch_into(att, out.extend)
        return bytes(out)

    async def save(
        self, message: Message | bytes, directory: str | os.PathLike[str], index: int | None = None
    ) -> list[Path]:
        """Fetch the attachments of ``message`` (a Message, or the id of a
        message of the local history), or only its ``index``-th, and write
        each, once verified, into ``directory`` (which must exist) under
        its name (`` (2)`` added when the name exists; never outside
        ``directory``). Returns the paths written, in order. Raises
        UnknownMessage, IndexError, AttachmentUnavailable, AttachmentCorrupt
        (that file is not saved; the ones before it are), OSError."""
        if isinstance(message, bytes):
            entry = self.state.find_message(message)
            if entry is None:
                raise UnknownMessage("no message with that id on this device")
            atts = entry.attachments
        else:
            atts = message.attachments
        if index is not None:
            atts = (atts[index],)
        return await save_attachments(self._attachments, atts, Path(directory))

    # --- receiving: see miss_client.inbox ----------------------------------------------------

    async def receive(self) -> Event:
        """The next new message or receipt, already stored and acked, or
        presence change of a watched user (:meth:`watch`).

        Duplicates and undecryptable envelopes are acked and skipped (see
        :mod:`miss_client.inbox`). Once the connection has ended and nothing
        is left to process, raises the error that ended it (ConnectionLost if
        :meth:`aclose` did). Cancelling it mid-processing loses nothing but
        the return value: the message is in the local history.
        """
        return await self._receive(None)

    async def _receive(self, wait: float | None) -> Event:
        # ``wait`` bounds the wait for a frame (TimeoutError), never the
        # processing of one, so that a deadline cannot drop a stored event.
        while True:
            if self._events:
                return self._events.popleft()
            item = await self._router.next_push(wait)
            if isinstance(item, f.TeamChanged):
                await self._teams.on_changed(item)
                continue
            if isinstance(item, f.UrgentStatus):
                status = await self.roles.on_status(item)
                if status is not None:
                    return status
                continue
            if isinstance(item, f.UrgentReminder):
                reminder = self.roles.on_reminder(item)
                if reminder is not None:
                    return reminder
                continue
            if isinstance(item, f.RoleChanged):
                return self.roles.on_role_changed(item)
            if not isinstance(item, f.Deliver | f.Delivered | f.Refused):
                return item
            event = await self._inbox.process(item)
            if event is not None:
                return event

    async def events(self) -> AsyncIterator[Event]:
        """Messages, receipts and presence changes (once :meth:`watch` was
        called) in arrival order, until the connection ends.

        Ends quietly after :meth:`aclose`; raises the hub's error or
        ConnectionLost if the connection ended otherwise.
        """
        while True:
            try:
                event = await self.receive()
            except ConnectionLost:
                if self._router.closing:
                    return
                raise
            yield event

    async def messages(self) -> AsyncIterator[Message]:
        """Like :meth:`events`, messages only (receipts are still stored and acked)."""
        async for event in self.events():
            if isinstance(event, Message):
                yield event

    async def receipts(self) -> AsyncIterator[Delivered]:
        """Like :meth:`events`, receipts only (messages are still stored and acked)."""
        async for event in self.events():
            if isinstance(event, Delivered):
                yield event

    async def drain(self, idle: float = 0.5, limit: float | None = 30.0) -> list[Event]:
        """Everything waiting: events until no frame arrives for ``idle``
        seconds, or ``limit`` seconds in all. The hub sends queued deliveries
        right after ``welcome``, so this is "the inbox"."""
        deadline = None if limit is None else asyncio.get_running_loop().time() + limit
        out: list[Event] = []
        while True:
            wait = idle
            if deadline is not None:
                wait = min(idle, deadline - asyncio.get_running_loop().time())
                if wait <= 0:
                    return out
            try:
                out.append(await self._receive(wait))
            except TimeoutError:
                return out

    # --- care teams (SPEC §13): see miss_client.teams ------------------------------------------

    async def create_team(self, name: str, org: str | None = None, lifespan_ms: int | None = None) -> str:
        """Create a care team with this clinician as its first admin, and
        return its id (``t_...``). ``lifespan_ms`` is the team's default
        message lifespan (1 h to 30 days). Raises ValueError, TeamFull,
        UnverifiedPeer (this device is not attested)."""
        return await self._teams.create(name, org, lifespan_ms)

    async def _change(self, team: str, op: str, user: str) -> TeamView:
        if op not in ("leave",) and not user.startswith("u_"):
            user = (await self._peers.resolve(user)).user
        return await self._teams.change(team, op, user)

    async def add_member(self, team: str, user: str) -> TeamView:
        """Add a verified clinician (user id or RPPS number) to ``team``
        (admins only: TeamForbidden otherwise). Returns the team's view."""
        peer = await self._peers.resolve(user)
        return await self._teams.change(team, "add", peer.user)

    async def remove_member(self, team: str, user: str) -> TeamView:
        """Remove a member (admins only); they get nothing sent after."""
        return await self._change(team, "remove", user)

    async def leave_team(self, team: str) -> TeamView:
        """Leave ``team`` (the last admin must promote someone first, unless
        alone: the team is then closed)."""
        return await self._teams.change(team, "leave", self.user_id)

    async def promote(self, team: str, user: str) -> TeamView:
        """Make a member an admin (admins only)."""
        return await self._change(team, "promote", user)

    async def demote(self, team: str, user: str) -> TeamView:
        """Make an admin a member again (admins only; another admin remains)."""
        return await self._change(team, "demote", user)

    async def teams(self) -> list[TeamView]:
        """Every team this device knows, as its verified chain says, after
        fetching what changed (teams we left or were removed from stay
        listed, without us among the members)."""
        if f.CAP_TEAMS in self.hub_caps:
            return await self._teams.sync()
        return self._teams.views()

    async def team(self, team_id: str) -> TeamView:
        """One team, brought up to date with the hub and verified (``problem``
        set if the hub's view of it is wrong). Raises UnknownTeam."""
        return await self._teams.refresh(team_id)

    # --- urgent messages (SPEC §14): see miss_client.oncall ----------------------------------------

    async def acknowledge(self, message: Message | tuple[str, bytes]) -> Acknowledgement:
        """Acknowledge an urgent message we received (the Message, or
        ``(sender user, id)``): its reminders and escalation stop, and the
        sender and other recipients learn who acknowledged. Returns the
        first acknowledgement (another's if someone was faster: ``first``
        False), recorded in :meth:`urgent_info`. Raises NotRecipient."""
        return await self.roles.acknowledge(message)

    def urgent_info(self, sender: str, message_id: bytes) -> UrgentInfo | None:
        """What this device recorded about a role or urgent message of
        ``sender``: its state (open, escalated, acknowledged by whom,
        unacknowledged); None for another message."""
        return self.roles.state.get(sender, message_id)

    def urgent_waiting(self, direction: str | None = None) -> list[UrgentInfo]:
        """Urgent messages not acknowledged yet, as recorded here (``in``:
        received, still to acknowledge; ``out``: ours, still escalating)."""
        return self.roles.state.waiting(direction)

    # --- notices, recall (SPEC §13.5, §13.6) -------------------------------------------------

    @property
    def read_receipts(self) -> bool:
        """Whether read notices go to senders (else only to our own devices)."""
        return bool(self.state.get_setting("read_receipts", True))

    def set_read_receipts(self, on: bool) -> None:
        """Turn read receipts on or off for this device (kept in the local state)."""
        self.state.set_setting("read_receipts", bool(on))

    def _conversation(self, conversation: str) -> str:
        conversation = conversation.strip()
        if is_team_id(conversation) or conversation.startswith("u_"):
            return conversation
        found = self.state.find_peer(conversation)
        return found.user if found is not None else self._peers.user_of(conversation)

    async def mark_read(self, conversation: str) -> int:
        """Mark the unread messages of a conversation (user id, RPPS number or
        team id) read, and send read notices: to each sender (with the team
        for team messages), or, with read receipts off, only to our own
        other devices (only with a hub that speaks ``teams``, revision 3).
        Returns how many messages were newly read."""
        conversation = self._conversation(conversation)
        unread = self.state.unread(conversation)
        if not unread:
            return 0
        by_sender: dict[str, list[bytes]] = {}
        for sender, message_id in unread:
            by_sender.setdefault(sender, []).append(message_id)
        for sender, ids in by_sender.items():
            self.state.mark_read(ids, sender)
        team = conversation if is_team_id(conversation) else None
        if f.CAP_TEAMS not in self.hub_caps:
            # Notices are revision 3: a peer behind an older hub would show
            # them as text. Marked read here only.
            return len(unread)
        if self.read_receipts:
            for sender, ids in by_sender.items():
                for i in range(0, len(ids), MAX_REFS):
                    try:
                        await self._outbox.send_notice(sender, "read", ids[i : i + MAX_REFS], team=team)
                    except RepliesRefused:
                        # A service that does not accept replies takes no
                        # read notice either (SPEC §17.2): read here only.
                        break
        else:
            ids = [message_id for _, message_id in unread]
            for i in range(0, len(ids), MAX_REFS):
                await self._outbox.send_notice(self.user_id, "read", ids[i : i + MAX_REFS], team=team)
        return len(unread)

    async def recall(self, message_id: bytes) -> int:
        """Recall one of our messages: the hub deletes its undelivered rows
        (returns how many), then a recall notice asks every device that has
        it to delete its text ("message retiré"). Its text is deleted here
        too. Raises UnknownMessage, TeamForbidden."""
        entry = self.state.get_message(self.user_id, message_id)
        if entry is None:
            raise UnknownMessage("no message of yours with that id on this device")
        reply = await self._router.request_retrying(lambda rid: f.Recall(rid=rid, id=message_id), "recall")
        if not isinstance(reply, f.RecallOk):
            raise ConnectionFailed("the hub answered recall with something else")
        self.state.recall_message(self.user_id, message_id)
        if entry.team is not None:
            await self._outbox.send_notice(entry.team, "recall", [message_id], to_team=True)
        else:
            await self._outbox.send_notice(entry.peer, "recall", [message_id])
        return reply.removed
