"""The asyncio client SDK: one authenticated device connection (SPEC §4-§6).

Theory of operation
-------------------
``async with Client.connect(profile) as client:`` opens the WebSocket,
answers the challenge with an ``auth`` signed by the device key, and starts
one background *reader* task that owns ``recv``:

* answers are matched to their request: ``lookup_ok``/``link_code_ok``/
  ``ok``/``watching`` and ``error`` frames by ``rid``, ``accepted`` and
  ``error`` frames by message ``id``, each to a future the caller awaits,
  whatever else arrives in between;
* ``deliver``, ``delivered`` and ``refused`` frames go, untouched, to an
  incoming queue;
* presence (SPEC §6.7) is applied by the reader itself, in arrival order:
  a ``watching`` answer replaces the presence cache (:meth:`Client.presence`)
  with its snapshot, and a ``presence`` push updates it and, if it changed
  what we knew, queues a :class:`~miss_client.models.PresenceChanged` event
  with the deliveries. Doing both in the reader, not in the awaiting
  caller, keeps a push that follows a snapshot on the wire from being
  overwritten by it;
* a fatal ``error`` frame or a close ends the connection: every waiting
  future and every later call raises the :mod:`protocol.errors` exception the
  hub named (or ConnectionLost);
* a frame that does not decode does not end the connection: if it names a
  ``rid`` or an ``id``, that request fails (ConnectionFailed), otherwise it
  is logged and skipped. A hub's bad answer about one sender must never
  stop the client from reading the rest of its queue.

Incoming frames are decrypted, checked, stored and acked by whoever consumes
them (:meth:`Client.events`, :meth:`Client.receive`, :meth:`Client.drain`),
not by the reader: opening an envelope may need a ``lookup`` of the sender,
whose answer the reader must stay free to route. The policy (store, then
ack; drop duplicates by id; refuse, with a logged warning, what does not
open or fails the SPEC §6.3 checks; hold what cannot be decided yet) lives
in :mod:`miss_client.inbox`. Only one consumer should read events at a time.

Verified clinicians (SPEC §11.2): every ``lookup_ok`` is checked before
anything is encrypted. :meth:`Client.lookup` verifies the attestation with
the profile's authority key (missing, malformed, another key, not yet
valid, expired, or about another user: :class:`UnverifiedPeer`, and the
peer is neither cached nor pinned), takes the peer's identity from it, and
keeps as targets only the listed devices that it vouches for with the same
keys; listed devices with other keys are *substituted*. The attested keys
are then compared with the ones pinned in the local state
(:meth:`LocalState.observe_peer`): trust on first use, and afterwards a new
device, new keys or a substitution is a key change, reported through
:attr:`Client.on_key_change` and *pending* until :meth:`Client.accept_keys`
(or :meth:`Client.mark_verified`). While a change is pending for the
recipient or for our own user, :meth:`Client.send` raises
:class:`KeyChangePending` and encrypts nothing.

Sending (:meth:`Client.send`) encrypts one envelope per target device of the
recipient and of our own other devices, and waits for ``accepted``. A
``missing_devices``/``unknown_device`` answer refreshes both device lists and
resends with the same id; ``storage_unavailable``/``rate_limited`` are
retried after ``retry_after`` a bounded number of times (:class:`RetryPolicy`),
as are the idempotent requests (lookup, search, devices, revoke, link code,
status, watch).

Receiving: a ``deliver`` is opened only with the keys of a target device of
its sender (attested, same keys); anything else (an unverified sender, a
device the attestation does not name, substituted keys) is refused, and the
sender's devices are told so (SPEC §6.5). A pending key change does not
stop receiving: the device is the authority's word, and the user was warned.

The client names the capabilities it speaks (``connection.CLIENT_CAPS``) in
its ``auth``; :attr:`Client.hub_authority` and :attr:`Client.hub_caps` hold
what the hub's ``challenge`` announced.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace

import msgpack
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from protocol import attestation, crypto
from protocol import frames as f
from protocol.errors import (
    DeviceRevoked,
    MissingDevices,
    ProtocolError,
    RateLimited,
    RequestError,
    SessionReplaced,
    StorageUnavailable,
    UnknownDevice,
    UnknownUser,
)

from .connection import CLIENT_CAPS, close_error, error_from_frame, handshake, open_websocket
from .errors import (
    BadRecipient,
    ClientError,
    ConnectionFailed,
    ConnectionLost,
    KeyChangePending,
    MessageTooLarge,
    RequestTimeout,
    UnverifiedPeer,
)
from .inbox import Inbox, Undecryptable
from .models import (
    Delivered,
    DirectoryEntry,
    Event,
    Message,
    OwnDevice,
    Peer,
    PeerChange,
    PresenceChanged,
    PresenceInfo,
    format_id,
    is_rpps,
    is_user_id,
)
from .outbox import RetryPolicy, build_send
from .profile import Profile
from .state import LocalState
from .trust import check_lookup

__all__ = ["Client", "RetryPolicy"]

log = logging.getLogger("miss_client")

_CLOSED = object()  # queued by the reader when the connection has ended
#: An RPPS number (répertoire partagé des professionnels de santé) has 11 digits.
RPPS_DIGITS = 11
#: Acks wait this long (s) for others to share their frame ... Each ack
#: frame costs the hub a read and a store call; the only thing that waits is
#: the sender's "delivered" tick, for which a fifth of a second is nothing.
#: A device receiving ten messages a second (the bench's ``online``) sends
#: one ack frame per four or five rows instead of one per row or two
#: (0.05 s): 4.4 frames per message through the hub instead of 5.0.
ACK_DELAY = 0.2
#: ... unless this many are waiting.
ACK_BATCH = 256


def _log_key_change(peer: Peer, change: PeerChange) -> None:
    log.warning(
        "devices of %s (%s) changed: %s; compare safety numbers%s",
        peer.user,
        peer.rpps,
        change.describe(),
        ", then accept the change" if change.needs_acceptance else "",
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _same_change(a: PeerChange, b: PeerChange) -> bool:
    return (a.user, a.added, a.changed, a.substituted) == (b.user, b.added, b.changed, b.substituted)


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
    ) -> None:
        self.profile = profile
        self.state = state
        self.request_timeout = request_timeout
        self.retry = retry or RetryPolicy()
        #: Called when a lookup finds a key change relative to the pinned keys
        #: (new device, new keys, substituted keys: then it is pending until
        #: accepted), or pinned devices removed. Default: log a warning.
        self.on_key_change: Callable[[Peer, PeerChange], None] = _log_key_change
        self._ws = ws
        self._rids = itertools.count(1)
        self._requests: dict[int, asyncio.Future[f.Frame]] = {}
        self._sends: dict[bytes, asyncio.Future[f.Accepted]] = {}
        self._incoming: asyncio.Queue[object] = asyncio.Queue()
        self._peers: dict[str, Peer] = {}  # this connection's lookups, by user id
        self._rpps: dict[str, str] = {}  # RPPS number -> user id
        self._presence: dict[str, PresenceInfo] = {}  # last known, for watched users only
        self._watched: frozenset[str] = frozenset()  # as of the last ``watching``
        self._watch_rids: set[int] = set()  # ``watch`` requests not answered yet
        self._fatal: ProtocolError | None = None
        self._terminal: Exception | None = None
        self._closing = False
        self._reader: asyncio.Task[None] | None = None
        #: The verification authority key the hub announced (SPEC §5.1), if
        #: any: when it differs from the profile's, every clinician will
        #: look unverified to this client (tell the user).
        self.hub_authority: bytes | None = challenge.authority if challenge else None
        #: The capabilities the hub announced (SPEC §10).
        self.hub_caps: frozenset[str] = frozenset(challenge.caps or ()) if challenge else frozenset()
        self._acks: list[int] = []
        self._refusals: list[f.Refusal] = []
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ack_task: asyncio.Future[None] | None = None
        refuse = self._refuse if f.CAP_REFUSALS in self.hub_caps else None
        self._inbox = Inbox(state, profile.keys, profile.user_id, self._sender_device, self._ack, refuse)

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
        ws = await open_websocket(url or profile.server, open_timeout)
        try:

            def answer(challenge: f.Challenge) -> f.Auth:
                sig = profile.keys.sign(crypto.auth_message(challenge.nonce, profile.device_id))
                return f.Auth(v=f.PROTOCOL_VERSION, device=profile.device_id, sig=sig, caps=CLIENT_CAPS)

            challenge, welcome = await handshake(ws, answer, open_timeout)
            if (welcome.user, welcome.device) != (profile.user_id, profile.device_id):
                raise ConnectionFailed("the hub welcomed another device than this profile's")
            own_state = state is None
            local = profile.open_state() if state is None else state
        except BaseException:
            await ws.close()
            raise
        client = cls(ws, profile, local, request_timeout=request_timeout, retry=retry, challenge=challenge)
        client._reader = asyncio.create_task(client._read_loop(), name="miss-client-reader")
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
        return self._terminal is not None

    async def aclose(self) -> None:
        """Close the connection; pending requests raise ConnectionLost. Idempotent."""
        if not self._closing:
            await self._flush_acks()
        self._closing = True
        await self._ws.close()
        if self._reader is not None:
            await self._reader

    # --- reader ------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            async for data in self._ws:
                if isinstance(data, str):
                    raise ConnectionFailed("the hub sent a text frame")
                try:
                    frame = f.decode(data, f.SERVER_FRAMES)
                except ProtocolError as exc:
                    self._unreadable(data, exc)
                    continue
                self._dispatch(frame)
        except ConnectionClosed:
            pass
        except ConnectionFailed as exc:
            log.warning("closing: the hub sent a text frame")
            self._terminal = exc
            await self._ws.close(4400, "malformed_frame")
        finally:
            if self._terminal is None:
                if self._fatal is not None:
                    self._terminal = self._fatal
                elif self._closing:
                    self._terminal = ConnectionLost("connection closed by the client", self._ws.close_code)
                else:
                    self._terminal = close_error(self._ws.close_code, self._ws.close_reason)
            for request in self._requests.values():
                if not request.done():
                    request.set_exception(self._terminal)
            for sending in self._sends.values():
                if not sending.done():
                    sending.set_exception(self._terminal)
            self._incoming.put_nowait(_CLOSED)

    def _unreadable(self, data: bytes, exc: ProtocolError) -> None:
        """A frame that does not decode (e.g. a ``lookup_ok`` listing more
        devices than SPEC §2 allows): the request it answers fails, if it
        names one; the connection goes on either way."""
        try:
            m = msgpack.unpackb(data, raw=False)
        except Exception:
            m = None
        rid = m.get("rid") if isinstance(m, dict) else None
        mid = m.get("id") if isinstance(m, dict) else None
        kind = m.get("t") if isinstance(m, dict) else None
        failed = ConnectionFailed(f"the hub's answer could not be read ({exc.code})")
        target: asyncio.Future[f.Frame] | asyncio.Future[f.Accepted] | None = None
        if type(rid) is int:
            target = self._requests.get(rid)
        elif type(mid) is bytes and kind in ("accepted", "error"):
            target = self._sends.get(mid)
        if target is not None and not target.done():
            target.set_exception(failed)
        log.warning("ignoring a %r frame from the hub that does not decode (%s)", kind, exc.code)

    def _dispatch(self, frame: f.Frame) -> None:
        if isinstance(frame, f.Deliver | f.Delivered | f.Refused):
            self._incoming.put_nowait(frame)
        elif isinstance(frame, f.Presence):
            self._on_presence(frame)
        elif isinstance(frame, f.Accepted):
            accepted = self._sends.get(frame.id)
            if accepted is not None and not accepted.done():
                accepted.set_result(frame)
        elif isinstance(frame, f.LookupOk | f.LinkCodeOk | f.Ok | f.Watching | f.SearchOk | f.DevicesOk):
            if isinstance(frame, f.Watching):
                self._on_watching(frame)
            answered = self._requests.get(frame.rid)
            if answered is not None and not answered.done():
                answered.set_result(frame)
        elif isinstance(frame, f.Error):
            if frame.rid is not None:
                self._watch_rids.discard(frame.rid)
            exc = error_from_frame(frame)
            target: asyncio.Future[f.Frame] | asyncio.Future[f.Accepted] | None = None
            if frame.fatal:
                self._fatal = exc  # the hub closes next; the reader's exit reports it
                # Another connection of this device (a one-shot command while a
                # chat runs) is routine; the caller decides what it means.
                level = logging.INFO if isinstance(exc, SessionReplaced) else logging.WARNING
                log.log(level, "the hub reported a fatal error: %s", frame.code)
            elif frame.rid is not None:
                target = self._requests.get(frame.rid)
            elif frame.id is not None:
                target = self._sends.get(frame.id)
            else:
                log.warning("the hub reported an error: %s", frame.code)
            if target is not None and not target.done():
                target.set_exception(exc)
        else:
            log.warning("ignoring an unexpected %r frame from the hub", frame.TYPE)

    def _on_watching(self, frame: f.Watching) -> None:
        # The hub answers requests in order, so the last answer is the list in force.
        self._watch_rids.discard(frame.rid)
        self._watched = frozenset(p.user for p in frame.presence)
        self._presence = {p.user: PresenceInfo(p.user, p.status, p.online) for p in frame.presence}

    def _on_presence(self, frame: f.Presence) -> None:
        if frame.user not in self._watched and not self._watch_rids:
            # Sent before the hub saw our latest watch, which dropped this user.
            log.debug("ignoring presence of %s, who is not watched", frame.user)
            return
        info = PresenceInfo(frame.user, frame.status, frame.online)
        if self._presence.get(frame.user) == info:
            return  # a repeat (SPEC §6.7): nothing changed
        self._presence[frame.user] = info
        self._incoming.put_nowait(PresenceChanged(frame.user, frame.status, frame.online))

    # --- requests ----------------------------------------------------------------

    async def _send_bytes(self, data: bytes) -> None:
        if self._terminal is not None:
            raise self._terminal
        try:
            await self._ws.send(data)
        except ConnectionClosed:
            if self._reader is not None:
                await self._reader  # it sets _terminal from the close
            raise self._terminal or ConnectionLost("connection lost") from None

    async def _wait(self, fut: asyncio.Future[f.Frame] | asyncio.Future[f.Accepted]) -> f.Frame:
        try:
            async with asyncio.timeout(self.request_timeout):
                return await fut
        except TimeoutError:
            raise RequestTimeout(f"no answer from the hub within {self.request_timeout:g} s") from None

    async def _request(self, build: Callable[[int], f.Frame]) -> f.Frame:
        rid = next(self._rids)
        fut: asyncio.Future[f.Frame] = asyncio.get_running_loop().create_future()
        self._requests[rid] = fut
        try:
            await self._send_bytes(f.encode(build(rid)))
            return await self._wait(fut)
        finally:
            self._requests.pop(rid, None)

    async def _request_retrying(self, build: Callable[[int], f.Frame], what: str) -> f.Frame:
        """:meth:`_request` for idempotent requests: retries storage_unavailable
        and rate_limited as :attr:`retry` says (each try with a new rid)."""
        tries = 0
        while True:
            try:
                return await self._request(build)
            except (StorageUnavailable, RateLimited) as exc:
                tries += 1
                if tries >= self.retry.attempts:
                    raise
                delay = self.retry.delay(exc)
                log.info("retrying %s in %.2f s: %s", what, delay, exc.code)
                await asyncio.sleep(delay)

    async def lookup(
        self, user: str | None = None, rpps: str | None = None, *, refresh: bool = False
    ) -> Peer:
        """A verified clinician and their target devices, by user id or RPPS
        (SPEC §11.2).

        Answers come from this connection's cache unless ``refresh``. The
        attestation is verified first: if it is missing, malformed, signed
        by another key than the profile's authority, not valid yet, expired,
        or names another user (or RPPS number) than the one looked up,
        raises UnverifiedPeer and nothing about the peer is kept. Otherwise
        the identity comes from the attestation, and its device keys are
        compared with the pinned ones: a change is reported to
        :attr:`on_key_change` and, unless it only removes devices, stays
        pending (``Peer.pending``) until :meth:`accept_keys`. Raises
        UnknownUser.
        """
        if (user is None) == (rpps is None):
            raise ValueError("look up by exactly one of user or rpps")
        if not refresh:
            cached = self._peers.get(user if user is not None else self._rpps.get(rpps or "", ""))
            if cached is not None:
                return cached
        reply = await self._request_retrying(lambda rid: f.Lookup(rid=rid, user=user, rpps=rpps), "lookup")
        if not isinstance(reply, f.LookupOk) or (user or reply.user) != reply.user:
            raise ConnectionFailed("the hub answered a lookup with something else")
        try:
            peer = self._verified_peer(reply, rpps)
        except UnverifiedPeer as exc:
            self._peers.pop(reply.user, None)
            log.info("refusing %s: %s", reply.user, exc.reason)
            raise
        self._peers[peer.user] = peer
        self._rpps[peer.rpps] = peer.user
        return peer

    def _verified_peer(self, reply: f.LookupOk, rpps: str | None) -> Peer:
        """SPEC §11.2 for one ``lookup_ok`` (steps 1-2 in trust.py, then the
        pins); raises UnverifiedPeer."""
        own = reply.user == self.user_id
        checked = check_lookup(reply, self.profile.authority, _now_ms(), own=own, rpps=rpps)
        if checked.not_before < self.state.attestation_floor(reply.user):
            raise UnverifiedPeer(
                reply.user,
                "stale",
                "the hub served an attestation older than one already seen (a revoked device?)",
                own=own,
            )
        peer, substitutes = checked.peer, list(checked.substitutes)
        trusted = None
        if own:
            trusted = f.DeviceInfo(self.device_id, self.profile.keys.sign_pk, self.profile.keys.box_pk)
        seen = self.state.observe_peer(
            peer, checked.attested, substitutes, trusted=trusted, attested_from=checked.not_before
        )
        peer = replace(peer, verified=seen.verified, pending=seen.pending)
        if substitutes:
            log.warning(
                "the hub lists %d device(s) of %s with keys the authority did not sign: never encrypted to",
                len(substitutes),
                peer.user,
            )
        if seen.report is not None:
            self.on_key_change(peer, seen.report)
        return peer

    async def resolve(self, recipient: str, *, refresh: bool = False) -> Peer:
        """Look up a recipient given as an RPPS number (11 digits) or a user
        id (``u_...``); raises BadRecipient for anything else."""
        recipient = recipient.strip()
        if is_user_id(recipient):
            return await self.lookup(user=recipient, refresh=refresh)
        if is_rpps(recipient):
            if len(recipient) != RPPS_DIGITS:
                raise BadRecipient(f"an RPPS number has {RPPS_DIGITS} digits, not {len(recipient)}")
            return await self.lookup(rpps=recipient, refresh=refresh)
        raise BadRecipient(f"{recipient!r} is neither an RPPS number nor a user id (u_...)")

    async def link_code(self) -> tuple[str, int]:
        """A one-time code to enroll another device of this clinician, and its
        expiry (ms since the epoch)."""
        reply = await self._request_retrying(lambda rid: f.LinkCode(rid=rid), "link_code")
        if not isinstance(reply, f.LinkCodeOk):
            raise ConnectionFailed("the hub answered link_code with something else")
        return reply.code, reply.expires

    # --- presence (SPEC §6.7) ------------------------------------------------------

    async def set_status(self, status: str) -> None:
        """Set this clinician's status, for all their devices: one of
        :data:`~miss_client.models.STATUSES` (``available``, ``busy``,
        ``on_call``, ``off_duty``). Returns once the hub has stored it.

        Raises ValueError for another value (checked here: the hub would close
        the connection), StorageUnavailable or RateLimited once the retries of
        :attr:`retry` are spent.
        """
        if status not in f.STATUSES:
            raise ValueError(f"unknown status {status!r} (expected one of {', '.join(f.STATUSES)})")
        reply = await self._request_retrying(lambda rid: f.SetStatus(rid=rid, status=status), "set_status")
        if not isinstance(reply, f.Ok):
            raise ConnectionFailed("the hub answered set_status with something else")

    async def watch(self, users: Iterable[str]) -> list[PresenceInfo]:
        """Follow the presence of ``users`` (user ids or RPPS numbers) on this
        connection, **replacing** what it watched before (an empty list stops
        watching). Returns the current presence of those the hub lets us see
        (ourself, colleagues of the same organisation, contacts), in the
        order given; the others are left out, and unknown user ids too.

        From then on, changes arrive as :class:`PresenceChanged` events from
        :meth:`events`/:meth:`receive`, and :meth:`presence` tells the last
        known state. A watch lasts as long as the connection: watch again
        after reconnecting. Raises UnknownUser for an RPPS number that names
        nobody, BadRecipient for a string that is neither, ValueError for
        more than 512 users, StorageUnavailable or RateLimited once the
        retries of :attr:`retry` are spent.
        """
        wanted: list[str] = []
        for recipient in users:
            recipient = recipient.strip()
            if is_user_id(recipient):
                wanted.append(recipient)
            elif is_rpps(recipient):
                wanted.append((await self.lookup(rpps=recipient)).user)
            else:
                raise BadRecipient(f"{recipient!r} is neither an RPPS number nor a user id (u_...)")
        ids = tuple(dict.fromkeys(wanted))
        if len(ids) > f.MAX_WATCH:
            raise ValueError(f"at most {f.MAX_WATCH} users can be watched at once")

        rids: set[int] = set()

        def build(rid: int) -> f.Watch:
            rids.add(rid)
            self._watch_rids.add(rid)  # until answered, pushes of users not yet watched count
            return f.Watch(rid=rid, users=ids)

        try:
            reply = await self._request_retrying(build, "watch")
        finally:
            self._watch_rids -= rids
        if not isinstance(reply, f.Watching):
            raise ConnectionFailed("the hub answered watch with something else")
        return [PresenceInfo(p.user, p.status, p.online) for p in reply.presence]

    def presence(self, user: str) -> PresenceInfo | None:
        """The last known presence of a watched user (user id, or RPPS number
        of someone looked up on this connection); None if not watched."""
        return self._presence.get(self._rpps.get(user, user))

    @property
    def watched(self) -> frozenset[str]:
        """User ids this connection watches, as the hub last confirmed."""
        return self._watched

    async def safety_number(self, recipient: str) -> str:
        """The 60-digit safety number between this user and ``recipient``,
        from freshly looked-up device keys (SPEC §8: every device the hub
        lists for either user). Raises UnverifiedPeer like :meth:`lookup`."""
        own = await self.lookup(user=self.user_id, refresh=True)
        peer = await self.resolve(recipient, refresh=True)
        return crypto.safety_number(self.user_id, own.identities, peer.user, peer.identities)

    # --- trust (SPEC §11.2) -----------------------------------------------------------

    async def accept_keys(self, user: str, expected: PeerChange | None = None) -> Peer:
        """Accept the pending key change of ``user`` (user id or RPPS number;
        our own user id for our own devices): the attested keys of the last
        lookup, the one that reported the change, become the pinned ones,
        and sending to them resumes. A no-op if nothing is pending.

        With ``expected`` (the change the user was shown), raises
        KeyChangePending if the pending change is another one by now.
        Raises UnverifiedPeer if the peer does not verify.
        """
        peer = await self.resolve(user)
        pending = self.state.pending_change(peer.user)
        if expected is not None and pending is not None and not _same_change(pending, expected):
            raise KeyChangePending(peer, pending, own=peer.user == self.user_id)
        accepted = self.state.accept_pending(peer.user)
        if accepted is not None:
            log.info("key change of %s accepted: %s", peer.user, accepted.describe())
        peer = replace(peer, pending=None)
        self._peers[peer.user] = peer
        return peer

    async def mark_verified(self, user: str) -> Peer:
        """Mark ``user`` verified in person, once both sides read the same
        safety number (:meth:`safety_number`). The number covers the keys of
        a fresh lookup, so a pending key change is accepted along with it.
        Any later key change clears the mark (``Peer.verified``)."""
        peer = await self.resolve(user, refresh=True)
        if peer.pending is not None:
            peer = await self.accept_keys(peer.user)
        self.state.set_verified(peer.user)
        peer = replace(peer, verified=True)
        self._peers[peer.user] = peer
        return peer

    # --- directory and own devices (SPEC §11.3, §11.4) ---------------------------------

    async def search(self, query: str) -> list[DirectoryEntry]:
        """Verified clinicians whose name, RPPS number, profession or
        organisation contains ``query`` (3-64 characters), at most 50, in the
        hub's order (by name). Each entry is verified with the authority key
        and described by its attestation only; entries that do not verify
        are dropped (logged at debug level)."""
        query = query.strip()
        if not f.MIN_SEARCH_CHARS <= len(query) <= 64:
            raise ValueError(f"a search is {f.MIN_SEARCH_CHARS} to 64 characters")
        authority = self.profile.authority
        reply = await self._request_retrying(lambda rid: f.Search(rid=rid, query=query), "search")
        if not isinstance(reply, f.SearchOk):
            raise ConnectionFailed("the hub answered search with something else")
        now = _now_ms()
        found: dict[str, DirectoryEntry] = {}
        for blob in reply.atts:
            try:
                att = attestation.verify(blob, authority, now)
            except attestation.AttestationError as exc:
                log.debug("search: dropping an entry that does not verify: %s", exc)
                continue
            found.setdefault(
                att.user,
                DirectoryEntry(att.user, att.name, att.rpps, att.profession, att.organisation, att.not_after),
            )
        return list(found.values())

    async def devices(self) -> list[OwnDevice]:
        """This clinician's active devices, oldest first, ``attested`` if the
        current attestation vouches for them."""
        reply = await self._request_retrying(lambda rid: f.Devices(rid=rid), "devices")
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
        if not device_id or len(device_id) > f.MAX_ID_CHARS:
            raise ValueError("a device id looks like d_0123456789abcdef")
        try:
            reply = await self._request_retrying(lambda rid: f.Revoke(rid=rid, device=device_id), "revoke")
        except DeviceRevoked:
            if device_id == self.device_id:
                return  # the hub closed us before its answer reached us
            raise
        if not isinstance(reply, f.Ok):
            raise ConnectionFailed("the hub answered revoke with something else")
        self._peers.pop(self.user_id, None)  # our device list changed

    # --- sending -------------------------------------------------------------------

    async def send(self, to: str, text: str, message_id: bytes | None = None, *, kind: str = "text") -> bytes:
        """Encrypt ``text`` for every device of ``to`` and our other devices,
        and return the message id once the hub has durably accepted it.

        ``message_id`` (16 bytes) defaults to a fresh UUIDv7; passing the id of
        an earlier attempt resends it without a second copy. The message is
        recorded in the local history first (``pending``), then marked
        ``accepted``, or ``failed`` on a definitive refusal.

        Only verified clinicians are written to (SPEC §11.2): raises
        UnverifiedPeer if the recipient's attestation, or our own, does not
        verify, or this device is not attested yet; KeyChangePending if the
        keys of the recipient or of our own user changed since they were
        pinned and the change was not accepted. In both cases nothing is
        encrypted and nothing recorded.

        Raises ValueError for an empty message, BadRecipient (also for
        ourselves), UnknownUser (nobody, or nobody verified: SPEC §11.3),
        NotVerified (this device may not look anyone up: not attested),
        NoDevices, MessageTooLarge, the last
        retryable error once :attr:`retry` is exhausted, RequestTimeout,
        ConnectionLost or a fatal :mod:`protocol.errors` exception. After
        RequestTimeout or ConnectionLost the message stays ``pending``: it
        may have been accepted, and :meth:`resend_pending` finds out.
        """
        if not text.strip():
            raise ValueError("empty message: nothing to send")
        if message_id is None:
            message_id = crypto.new_message_id()
        elif len(message_id) != 16:
            raise ValueError("a message id is 16 bytes")
        peer = await self.resolve(to)
        if peer.user == self.user_id:
            raise BadRecipient("you cannot send a message to yourself")
        self._check_sendable(peer, await self.lookup(user=self.user_id))
        plaintext = crypto.Plaintext(message_id, self.user_id, peer.user, _now_ms(), kind, text)
        self.state.record_outgoing(message_id, peer.user, plaintext.sent_at, kind, text)
        await self._send_recorded(plaintext)
        return message_id

    async def resend_pending(self) -> list[bytes]:
        """Resend, with their original ids, messages recorded but never seen
        accepted (e.g. the connection dropped while waiting); the hub answers
        ``dup`` for any it had in fact stored. Returns the ids now accepted.

        A message the hub refuses for good is marked ``failed`` and skipped
        (logged); one to a peer that does not verify or whose key change is
        pending stays ``pending`` and is skipped (logged); connection errors
        and fatal errors propagate.
        """
        done = []
        for entry in self.state.pending_outgoing():
            plaintext = crypto.Plaintext(
                entry.id, self.user_id, entry.peer, entry.sent_at, entry.kind, entry.body
            )
            try:
                await self._send_recorded(plaintext)
            except (RequestError, MessageTooLarge, UnverifiedPeer, KeyChangePending) as exc:
                log.warning("pending message %s not resent: %s", format_id(entry.id), type(exc).__name__)
                continue
            done.append(entry.id)
        return done

    async def _send_recorded(self, plaintext: crypto.Plaintext) -> None:
        try:
            await self._send_until_accepted(plaintext)
        except (RequestError, MessageTooLarge) as exc:
            # A definitive refusal; retryable errors, timeouts and lost
            # connections leave the message pending for resend_pending().
            if not (isinstance(exc, RequestError) and exc.retryable):
                self.state.set_status(plaintext.id, "failed")
            raise
        self.state.set_status(plaintext.id, "accepted")

    async def _send_until_accepted(self, plaintext: crypto.Plaintext) -> f.Accepted:
        if plaintext.id in self._sends:
            raise ValueError(f"message {format_id(plaintext.id)} is already being sent")
        packed = crypto.pack_plaintext(plaintext)
        tries = refreshes = 0
        refresh = False
        while True:
            peer = await self.lookup(user=plaintext.to_user, refresh=refresh)
            own = await self.lookup(user=self.user_id, refresh=refresh)
            self._check_sendable(peer, own)
            data = build_send(packed, plaintext.id, self.profile.keys, self.device_id, peer, own)
            fut: asyncio.Future[f.Accepted] = asyncio.get_running_loop().create_future()
            self._sends[plaintext.id] = fut
            try:
                await self._send_bytes(data)
                accepted = await self._wait(fut)
                assert isinstance(accepted, f.Accepted)
                return accepted
            except (MissingDevices, UnknownDevice) as exc:
                if refreshes >= self.retry.refreshes:
                    raise
                refreshes += 1
                refresh = True
                log.info("resending %s: device list changed (%s)", format_id(plaintext.id), exc.code)
            except (StorageUnavailable, RateLimited) as exc:
                tries += 1
                if tries >= self.retry.attempts:
                    raise
                delay = self.retry.delay(exc)
                log.info("resending %s in %.2f s: %s", format_id(plaintext.id), delay, exc.code)
                await asyncio.sleep(delay)
            finally:
                self._sends.pop(plaintext.id, None)

    def _check_sendable(self, peer: Peer, own: Peer) -> None:
        """Refuse to encrypt while a key change of either user is pending
        (as the local state says now: it may have been accepted on another
        connection), or if this device is not attested."""
        for who in (peer, own):
            pending = self.state.pending_change(who.user)
            if pending is not None:
                raise KeyChangePending(who, pending, own=who.user == self.user_id)
        if own.device(self.device_id) is None:
            raise UnverifiedPeer(
                self.user_id,
                "device_not_attested",
                "this device is not attested yet (linked since the last verification)",
                own=True,
            )

    # --- receiving -------------------------------------------------------------------

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
            async with asyncio.timeout(wait):
                item = await self._incoming.get()
            if item is _CLOSED:
                self._incoming.put_nowait(_CLOSED)  # every later call sees it too
                assert self._terminal is not None
                raise self._terminal
            if isinstance(item, PresenceChanged):
                return item
            assert isinstance(item, f.Deliver | f.Delivered | f.Refused)
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
                if self._closing:
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

    async def _sender_device(self, user: str, device: str) -> f.DeviceInfo | None:
        """Keys of a sender device, refreshing the lookup once if it is new to
        us; only a target device (attested with the same keys) qualifies."""
        try:
            found = (await self.lookup(user=user)).device(device)
            if found is None:
                found = (await self.lookup(user=user, refresh=True)).device(device)
        except UnknownUser:
            raise Undecryptable("sender is not in the directory", "sender_unverified") from None
        except UnverifiedPeer as exc:
            raise Undecryptable(
                f"sender is not a verified clinician ({exc.reason})", "sender_unverified"
            ) from None
        return found

    async def _ack(self, seq: int) -> None:
        """Queue an ack (the event is already stored). Acks leave together,
        ``ACK_DELAY`` after the first one, on close, or once ``ACK_BATCH``
        wait: one frame for a burst instead of one per message, which the
        hub feels; only the sender's receipt waits, a fraction of a second."""
        self._acks.append(seq)
        await self._acks_queued()

    async def _refuse(self, seq: int, reason: str) -> None:
        """Queue a refusal (SPEC §6.5); it leaves with the acks."""
        self._refusals.append(f.Refusal(seq, reason))
        await self._acks_queued()

    async def _acks_queued(self) -> None:
        if len(self._acks) >= ACK_BATCH or len(self._refusals) >= f.MAX_ACK_REFUSALS:
            await self._flush_acks()
        elif self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY, self._acks_due)

    def _acks_due(self) -> None:
        self._ack_timer = None
        self._ack_task = asyncio.ensure_future(self._flush_acks())

    async def _flush_acks(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        seqs, self._acks = self._acks, []
        refused, self._refusals = self._refusals, []
        if not seqs and not refused:
            return
        # Best effort: an ack lost with the connection means a redelivery,
        # which the seen table drops (and a refusal, another refusal).
        frame = f.Ack(seqs=tuple(seqs), refused=tuple(refused) if refused else None)
        try:
            await self._send_bytes(f.encode(frame))
        except (ConnectionLost, ProtocolError, ClientError) as exc:
            log.debug("ack of %d seqs not sent: %s", len(seqs) + len(refused), type(exc).__name__)
