"""One hub node's handling of a device: enrollment, authentication, its
connection's life, and its requests: ack, presence, and, through the
modules that hold them, ``send`` (``sending.py``), the directory
(``directory.py``) and the account's own devices (``devices.py``); on-call
roles (``roles.py``), sends to a role, urgent sends and 1:1 sealed bodies
(``urgent_send.py``), acknowledgements and the timers of urgent messages
(``escalation.py``), and attachments (``blobs/service.py``).

:class:`Hub` holds no I/O of its own: it is given a Store and a Broker (the
composition root in ``app.py`` picks them) and the connection handler in
``connection.py`` calls it with frames the protocol session has already
checked. Every handler that answers a request returns the reply frame;
request errors are raised as :mod:`protocol.errors` exceptions, which the
connection turns into ``error`` frames.

Where a frame is handled
------------------------
A client frame passes, in order: the session's state table
(``protocol/session.py``, ``ALLOWED``), which admits its type in the
connection's state; the connection handler (``connection.py``), which
meters it (``guard.py``); then :meth:`Hub.request`, **the dispatch**, which
checks the requester's rights and calls the frame's handler (an ``ack``
goes to :meth:`Hub.ack`; ``auth`` and ``enroll``, before, to
:meth:`Hub.authenticate` and :meth:`Hub.enroll`). A new request frame type
is admitted in ``ALLOWED``, given a handler, and routed in
:meth:`Hub.request`.

What a device may ask (SPEC §11.4): only an attested device of a verified,
unsuspended account may make requests (:meth:`Hub.requester`); any other
device may authenticate, ack and revoke itself, and nothing else. So a
device enrolled from a stolen link code cannot act for the account's owner.

The hub caches each user's account (``accounts.py``: suspended or not,
verified until when, which devices are targets) to check a ``send`` without
a read. The cache is a hint: on any mismatch it is reloaded from the store
before the sender is told anything is wrong.

Security events (revocations, suspensions, verifications) reach every node
twice: at once through the broker when a hub made the change (here), and
through the audit log, which :attr:`Hub.security` polls
(``security_feed.py``), for changes ``miss-admin`` made without a broker at
hand. Wake-ups on the broker follow ``wakeup.py``; :attr:`Hub.waker`
(``waking.py``) sends them and makes up for lost ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from protocol import errors
from protocol.frames import (
    CAP_ONCALL,
    CAP_REFUSALS,
    CAP_TEAMS,
    Ack,
    Acknowledge,
    Auth,
    Devices,
    Enroll,
    Frame,
    LinkCode,
    Lookup,
    Ok,
    Ping,
    Recall,
    Revoke,
    RoleGet,
    RoleLeave,
    RoleSearch,
    RoleTake,
    Search,
    Send,
    SetStatus,
    TeamChain,
    TeamChange,
    Teams,
    Watch,
    Watching,
    encode,
)
from protocol.session import ServerSession

from .accounts import Account, Accounts, now_ms
from .audit import AuditTrail
from .blobs.service import BlobService
from .broker.base import Broker, BrokerUnavailable, device_channel
from .codes import code_hash
from .config import Settings
from .delivery import DeviceLink, LocalLinks
from .devices import AccountDevices
from .directory import Directory
from .escalation import TAG_URGENT_REMINDER, Escalator
from .guard import Guard
from .metrics import Metrics
from .presence import PresenceService
from .roles import TAG_ROLE_CHANGED, RoleService
from .security_feed import SecurityFeed
from .sending import Sending, store_call
from .store.base import CodeInvalid, DeviceLimit, Store, StoreUnavailable
from .teams import TAG_TEAM_CHANGED, TeamService
from .wakeup import DRAIN_WAKEUP, close_wakeup, row_wakeups
from .waking import TAG_NODE_LOST, Waker

__all__ = ["Hub"]

log = logging.getLogger("miss.hub")


class Hub:
    """Routing and account logic of one hub node."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        presence: PresenceService,
        settings: Settings,
        metrics: Metrics,
        guard: Guard,
        audit: AuditTrail,
        blobs: BlobService,
    ) -> None:
        self.store = store
        #: Attachments (SPEC §16): the blob frames, and the blobs of sends and recalls.
        self.blobs = blobs
        self.broker = broker
        self.presence = presence
        self.settings = settings
        self.metrics = metrics
        self.guard = guard
        self.audit = audit
        self.accounts = Accounts(store, settings.authority_keys)
        self._links = LocalLinks()
        #: Spreads security events to every node and enforces them here;
        #: the composition root runs its ``run_forever`` as a task.
        self.security = SecurityFeed(store, broker, self.accounts, self._links)
        #: Wake-ups, and the drains that make up for lost ones (waking.py).
        self.waker = Waker(
            broker, self._links, presence, metrics, bulk_reads=max(1, settings.store_pool_size // 2)
        )
        self.directory = Directory(store, self.accounts)
        self.devices = AccountDevices(store, self.accounts, self.security, audit, metrics, settings)
        self.teams = TeamService(store, broker, self.accounts, self._links, settings)
        self.security.on_team_changed = self.teams.announce_stored
        self.roles = RoleService(store, broker, self._links, settings)
        self.security.on_role_changed = self.roles.announce_stored
        #: Runs the timers of urgent messages; the composition root runs
        #: its ``run_forever`` as a task.
        self.escalator = Escalator(store, broker, self._links, settings, metrics, self.waker.wake)
        #: The ``send`` request (sending.py).
        self.sending = Sending(
            store, self.accounts, self.teams, self.roles, blobs, self.waker, settings, metrics
        )

    def on_control(self, payload: bytes) -> None:
        """Handler of the broker's control channel: team and role
        announcements and urgent reminders go to their services, anything
        else to the security feed."""
        tag = payload[:1]
        if tag == TAG_TEAM_CHANGED:
            self.teams.on_control(payload)
        elif tag == TAG_ROLE_CHANGED:
            self.roles.on_control(payload)
        elif tag == TAG_URGENT_REMINDER:
            self.escalator.on_control(payload)
        elif tag == TAG_NODE_LOST:
            self.waker.drain_all_paced()
        else:
            self.security.on_control(payload)

    # --- authentication -----------------------------------------------------

    async def authenticate(self, session: ServerSession, frame: Auth, address: str) -> bool:
        """Check an ``auth`` frame and return whether the account is a
        service account (for :meth:`attach`); raises AuthFailed, DeviceRevoked,
        AccountSuspended, RateLimited or StorageUnavailable. Earlier
        failures never refuse a good signature (guard.py); a failure from an
        address that has spent its failures is raised only after a pause.

        The device and its user are read fresh, in one read of the store:
        a revoked device, a suspended or deleted account is refused. The
        account's attestation is not checked here: an authenticated device
        of an unverified account may only ack and revoke itself until the
        first request that needs more loads and checks its account
        (:meth:`requester`, ``Sending.send``; SPEC §11.4)."""
        await self.guard.attempt(address)
        device, user = await store_call(self.store.get_device_user(frame.device))
        try:
            session.authenticate(frame, *((device.user_id, device.sign_pk) if device else (None, None)))
        except errors.AuthFailed as exc:
            await asyncio.sleep(await self.guard.failed(address, frame.device, exc))
            raise
        assert device is not None
        if device.revoked:
            session.close()
            self.audit.record(
                device.user_id,
                "auth.revoked_device",
                user_id=device.user_id,
                device_id=device.device_id,
                address=address,
                quiet_key=f"rv:{device.device_id}",
            )
            raise errors.DeviceRevoked(device.device_id)
        if user is None or user.suspended:
            session.close()
            raise errors.AccountSuspended(device.user_id)
        return user.service

    async def enroll(self, session: ServerSession, frame: Enroll, address: str) -> None:
        """Register the device of an ``enroll`` frame; raises AuthFailed,
        InvalidCode, TooManyDevices (the code left unused), RateLimited or
        StorageUnavailable. From an address that has spent its failures,
        the code is checked only after a pause (guard.py)."""
        await self.guard.attempt(address)
        session.check_enroll(frame)
        await asyncio.sleep(await self.guard.enroll_hold(address))
        try:
            device = await store_call(
                self.store.enroll_device(
                    code_hash(frame.code),
                    frame.sign_pk,
                    frame.box_pk,
                    frame.label,
                    now_ms(),
                    self.settings.max_devices,
                )
            )
        except CodeInvalid:
            exc = errors.InvalidCode("code rejected")
            await asyncio.sleep(await self.guard.failed(address, None, exc))
            raise exc from None
        except DeviceLimit:
            raise errors.TooManyDevices("enrollment at the device cap") from None
        except ValueError:  # the signing key is already registered
            raise errors.AuthFailed("signing key already enrolled") from None
        await self.security.user_changed(device.user_id)
        self.metrics.enrollments.inc()
        self.audit.record(
            device.user_id,
            "device.enrolled",
            user_id=device.user_id,
            device_id=device.device_id,
            address=address,
            detail=f"label {frame.label!r}",
        )
        log.info("device enrolled", extra={"user": device.user_id, "device": device.device_id})
        session.enrolled(device.user_id, device.device_id)

    # --- connection life ----------------------------------------------------

    async def attach(
        self,
        user_id: str,
        device_id: str,
        send: Callable[[list[bytes]], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
        caps: frozenset[str] = frozenset(),
        *,
        capped: bool = True,
        service: bool | None = None,
    ) -> DeviceLink:
        """Register a freshly authenticated connection: its presence and its
        device channel. If ``capped``, raises TooManyConnections, with
        nothing registered and no other connection touched, when the account
        already has ``connection_cap`` connections of its other devices on
        every node. A connection that has just enrolled its device is not
        capped: its single-use code is spent and the device stored, so a
        refusal would leave a device its client never learns the id of.
        A previous connection of the same device, on any node, is ended
        with 4409; of two that authenticate at once, the one whose presence
        entry came first (the lower generation, presence.py) is, even if it
        is the last to subscribe: this one then raises SessionReplaced. The
        caller sends ``welcome``, then starts the link, so that the device
        is online for everyone once it is welcomed and its first deliveries
        follow the ``welcome``. ``service``: whether the account is a
        service account, as :meth:`authenticate` returned it; None (after
        an enrollment) reads the account."""
        channel = device_channel(device_id)
        link = DeviceLink(
            device_id,
            self.store,
            send,
            close,
            self.metrics.deliveries.inc,
            refusals=CAP_REFUSALS in caps,
            teams=CAP_TEAMS in caps,
            oncall=CAP_ONCALL in caps,
        )
        # The cap first: a connection it refuses must not end the device's
        # older one, nor be registered anywhere.
        cap = self.settings.connection_cap if capped else None
        # Whether the account is a service never changes: read once, from
        # the user authentication has just read (``service``, a read of the
        # account only after an enrollment). A store that fails here must not
        # refuse an enrollment, whose code is spent: the connection then
        # spends rate_device, the stricter.
        if service is None:
            try:
                account = await self.accounts.get(user_id)
            except StoreUnavailable:
                account = None
            service = account is not None and account.user.service
        link.service = service
        link.presence_key, link.generation, announced = await self.presence.connected(user_id, link, cap)
        replaced = errors.SessionReplaced("a newer connection of this device came first")
        # Generation 0 (Redis did not answer): every older connection ends.
        ending = close_wakeup(errors.SessionReplaced, link.generation or None)
        try:
            try:  # before subscribing, so that it goes to the older connection (broker/base.py)
                await self.broker.publish_many([*announced, (channel, ending)])
            except BrokerUnavailable:
                pass  # an older connection elsewhere keeps a subscription that no one publishes to
            # A newer connection of the device here has subscribed already:
            # this one must not take its subscription (nothing awaits from
            # here to the subscription's handler being set).
            if any(
                other.device_id == device_id and other.generation > link.generation
                for other in self._links.of_user(user_id)
            ):
                raise replaced
            self._links.add(user_id, link)
            await self.broker.subscribe(channel, link.on_wakeup)
            # A newer connection whose wake-up went out before this one
            # subscribed was not heard: ask (0: Redis did not answer).
            if link.generation and await self.presence.newest(device_id) > link.generation:
                raise replaced
        except BaseException:
            self._links.remove(user_id, link)  # each only if still this connection's
            with contextlib.suppress(Exception):
                await self.broker.unsubscribe(channel, link.on_wakeup)
            await self.presence.disconnected(user_id, link.presence_key, link)
            raise
        self.metrics.authenticated.inc()
        return link

    async def detach(self, user_id: str, link: DeviceLink) -> None:
        """Undo :meth:`attach` once the connection has ended."""
        await link.stop()
        self._links.remove(user_id, link)
        channel = device_channel(link.device_id)
        try:
            await self.broker.unsubscribe(channel, link.on_wakeup)
            # A newer connection of this device elsewhere may have missed rows
            # this one was handed locally while both existed: it reads the store.
            await self.broker.publish(channel, DRAIN_WAKEUP)
        except Exception:  # the broker may be down; the subscription dies with it
            log.warning("unsubscribe failed", extra={"device": link.device_id})
        await self.presence.disconnected(user_id, link.presence_key, link)
        self.metrics.authenticated.dec()

    def on_broker_gap(self) -> None:
        """Wake-ups may have been lost: every local device reads the store
        again, and presence is re-established."""
        self.waker.drain_all()
        asyncio.get_running_loop().create_task(self.presence.resync())

    # --- requests -----------------------------------------------------------

    async def request(self, session: ServerSession, link: DeviceLink, frame: Frame) -> bytes:
        """The dispatch: the answer to one admitted, metered request (any
        authenticated frame but ``ack``). Only a device that may make
        requests goes on (:meth:`requester`), except to revoke itself or to
        ping; a ``send`` checks that itself, with its targets."""
        if type(frame) is Send:
            assert session.user_id is not None and session.device_id is not None
            return await self.sending.send(session.user_id, session.device_id, frame)
        if type(frame) is Ping:  # reads nothing, so asks nothing of the account either
            return encode(Ok(rid=frame.rid))
        assert session.user_id is not None and session.device_id is not None
        account: Account | None = None
        if not (type(frame) is Revoke and frame.device == session.device_id):
            account = await self.requester(session)
        if self.blobs.handles(frame):
            return await self.blobs.request(session.user_id, session.device_id, frame)
        if type(frame) is Lookup:
            return await store_call(self.directory.lookup(session.user_id, frame))
        if type(frame) is Search:
            return await store_call(self.directory.search(frame))
        if type(frame) is LinkCode:
            return await store_call(self.devices.link_code(session.user_id, session.device_id, frame))
        if type(frame) is SetStatus:
            return await self.set_status(session, frame)
        if type(frame) is Watch:
            return await self.watch(session, link, frame)
        if type(frame) is Devices:
            return await store_call(self.devices.devices(session.user_id, frame))
        if type(frame) is Revoke:
            return await store_call(self.devices.revoke(session.user_id, session.device_id, frame))
        if type(frame) is TeamChange:
            reply = await store_call(self.teams.change(frame))
            self.metrics.team_changes.inc()
            return reply
        if type(frame) is Teams:
            return await store_call(self.teams.teams(session.user_id, frame))
        if type(frame) is TeamChain:
            return await store_call(self.teams.chain(session.user_id, frame))
        if type(frame) is Recall:
            reply, removed = await store_call(self.teams.recall(session.user_id, frame))
            self.metrics.recalled.inc(removed)
            await self.blobs.recall(session.user_id, frame.id)  # after: a retry finds the rows gone
            return reply
        if type(frame) is Acknowledge:
            return await store_call(self.escalator.acknowledge(session.user_id, session.device_id, frame))
        if type(frame) is RoleSearch:
            return await store_call(self.roles.search(session.user_id, frame))
        if type(frame) is RoleGet:
            return await store_call(self.roles.get(frame))
        if type(frame) is RoleTake:
            assert account is not None
            return await store_call(self.roles.take(account, frame))
        if type(frame) is RoleLeave:
            return await store_call(self.roles.leave(session.user_id, frame))
        raise errors.FrameNotAllowed(frame.TYPE)  # the session's state table admits nothing else

    async def ack(self, session: ServerSession, link: DeviceLink, frame: Ack) -> None:
        """Forget the acked and refused rows; queue and announce the
        receipts (SPEC §6.4, §6.5)."""
        assert session.device_id is not None
        refused = {r.seq: r.reason for r in frame.refused or ()}
        if not frame.seqs and not refused:
            return
        now = now_ms()
        receipts = await store_call(
            self.store.ack(
                session.device_id, list(frame.seqs), now, now + self.settings.message_ttl_ms, refused
            )
        )
        link.acked((*frame.seqs, *refused))
        self.metrics.acks.inc(len(frame.seqs))
        if refused:
            self.metrics.refusals.inc(len(refused))
        self.waker.wake_together(row_wakeups(receipts))  # an ack has no answer to hold

    async def requester(self, session: ServerSession) -> Account:
        """The requester's account, if this device may make requests: an
        attested device of a verified, unsuspended account (SPEC §11.4).
        Raises NotVerified (after reloading a cached refusal) or
        StorageUnavailable."""
        assert session.user_id is not None and session.device_id is not None
        now = now_ms()
        for refresh in (False, True):
            account = await store_call(self.accounts.get(session.user_id, refresh=refresh))
            if account is not None and account.may_send(session.device_id, now):
                return account
        raise errors.NotVerified(session.device_id)

    async def set_status(self, session: ServerSession, frame: SetStatus) -> bytes:
        assert session.user_id is not None
        await store_call(self.presence.set_status(session.user_id, frame.status))
        return encode(Ok(frame.rid))

    async def watch(self, session: ServerSession, link: DeviceLink, frame: Watch) -> bytes:
        assert session.user_id is not None
        current = await store_call(self.presence.watch(session.user_id, link, frame.users))
        return encode(Watching(frame.rid, tuple(current)))

    # --- maintenance ----------------------------------------------------------

    async def expire_forever(self) -> None:
        """Purge expired rows every ``expiry_interval_seconds`` (runs as a task)."""
        while True:
            await asyncio.sleep(self.settings.expiry_interval_seconds)
            try:
                n = await self.store.expire(now_ms())
            except StoreUnavailable as exc:
                log.warning("expiry failed", extra={"error": str(exc)})
                continue
            if n:
                self.metrics.expired.inc(n)
                log.info("expired queued rows", extra={"rows": n})
