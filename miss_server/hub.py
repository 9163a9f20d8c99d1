"""The hub's request handlers: enrollment, authentication, send, ack, lookup,
directory search, device management.

:class:`Hub` holds no I/O of its own: it is given a Store and a Broker (the
composition root in ``app.py`` picks them) and the connection handler in
``connection.py`` calls it with frames the protocol session has already
checked. Every handler that answers a request returns the reply frame;
request errors are raised as :mod:`protocol.errors` exceptions, which the
connection turns into ``error`` frames.

The hub caches each user's account (``accounts.py``: suspended or not,
verified until when, which devices are targets) to check a ``send`` without
a read. The cache is a hint: on any mismatch it is reloaded from the store
before the sender is told anything is wrong.

What a device may ask (SPEC §11.4): only an attested device of a verified,
unsuspended account may make requests (:meth:`Hub.requester`); any other
device may authenticate, ack and revoke itself, and nothing else. So a
device enrolled from a stolen link code cannot act for the account's owner.

Security events (revocations, suspensions, verifications) reach every node
twice: at once through the broker when a hub made the change, and through
the audit log, which every node polls (:meth:`Hub.watch_security_forever`),
for changes ``miss-admin`` made without a broker at hand. A revoked device
or a suspended account connected to any node is thus closed within about
a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from protocol import attestation, errors
from protocol.frames import (
    CAP_REFUSALS,
    MAX_RECIPIENT_DEVICES,
    MAX_SEARCH_RESULTS,
    Accepted,
    Ack,
    Auth,
    DeviceEntry,
    DeviceInfo,
    Devices,
    DevicesOk,
    Enroll,
    LinkCode,
    LinkCodeOk,
    Lookup,
    LookupOk,
    Ok,
    Revoke,
    Search,
    SearchOk,
    Send,
    SetStatus,
    Watch,
    Watching,
    encode,
)
from protocol.session import ServerSession, State

from .accounts import Account, Accounts
from .audit import AuditTrail
from .broker.base import CONTROL_CHANNEL, Broker, BrokerUnavailable, device_channel
from .codes import code_hash, new_code
from .config import Settings
from .delivery import DRAIN_WAKEUP, DeviceLink, close_wakeup, row_wakeup
from .guard import Guard
from .metrics import Metrics
from .presence import PresenceService
from .store.base import AuditEvent, CodeInvalid, DeviceLimit, NewMessage, Queued, Store, StoreUnavailable

__all__ = ["Hub"]

log = logging.getLogger("miss.hub")
T = TypeVar("T")

STORE_RETRY_MS = 1000
#: Audit actions that change what a node must enforce (see module doc).
SECURITY_ACTIONS = [
    "device.revoked",
    "device.enrolled",
    "account.suspended",
    "account.unsuspended",
    "account.verified",
    "account.deleted",
]
#: How far back each poll of the audit log looks (ms): events are written
#: in the background, so one may appear a little after its time.
SECURITY_WINDOW_MS = 60_000
#: How old (s) a seq seen by a poll must be before later polls skip every
#: event up to it (Hub.watch_security_forever).
SECURITY_SETTLE_SECONDS = 5.0
#: Events a poll reads at a time; a poll reads pages until one is not full.
SECURITY_PAGE = 10_000
#: Users a search asks the store for (MAX_SEARCH_RESULTS and some spare).
SEARCH_FETCH = MAX_SEARCH_RESULTS + 14


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _wakeups(rows: list[Queued]) -> list[tuple[str, bytes]]:
    return [(device_channel(row.device_id), row_wakeup(row)) for row in rows]


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
    ) -> None:
        self.store = store
        self.broker = broker
        self.presence = presence
        self.settings = settings
        self.metrics = metrics
        self.guard = guard
        self.audit = audit
        self.accounts = Accounts(store, settings.authority_public_key)
        self._links: dict[str, DeviceLink] = {}
        self._local: dict[str, set[str]] = {}  # user id -> ids of their devices connected here
        self._seen_events: dict[int, int] = {}  # audit seq -> at, of security events applied

    # --- authentication -----------------------------------------------------

    async def authenticate(self, session: ServerSession, frame: Auth, address: str) -> None:
        """Check an ``auth`` frame; raises AuthFailed, DeviceRevoked,
        AccountSuspended, RateLimited or StorageUnavailable. Earlier
        failures never refuse a good signature (guard.py); a failure from an
        address that has spent its failures is raised only after a pause."""
        await self.guard.attempt(address)
        device = await self._store_call(self.store.get_device(frame.device))
        try:
            session.authenticate(frame, *((device.user_id, device.sign_pk) if device else (None, None)))
        except errors.AuthFailed as exc:
            await asyncio.sleep(await self.guard.failed(address, frame.device, exc))
            raise
        assert device is not None
        if device.revoked:
            session.state = State.CLOSED
            self.audit.record(
                device.user_id,
                "auth.revoked_device",
                user_id=device.user_id,
                device_id=device.device_id,
                address=address,
                quiet_key=f"rv:{device.device_id}",
            )
            raise errors.DeviceRevoked(device.device_id)
        account = await self._store_call(self.accounts.get(device.user_id))
        if account is None or account.suspended:  # the cache may not know of a reinstatement yet
            account = await self._store_call(self.accounts.get(device.user_id, refresh=True))
        if account is None or account.suspended:
            session.state = State.CLOSED
            raise errors.AccountSuspended(device.user_id)

    async def enroll(self, session: ServerSession, frame: Enroll, address: str) -> None:
        """Register the device of an ``enroll`` frame; raises AuthFailed,
        InvalidCode, TooManyDevices (the code left unused), RateLimited or
        StorageUnavailable. From an address that has spent its failures,
        the code is checked only after a pause (guard.py)."""
        await self.guard.attempt(address)
        session.check_enroll(frame)
        await asyncio.sleep(await self.guard.enroll_hold(address))
        try:
            device = await self._store_call(
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
        await self._user_changed(device.user_id)
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
    ) -> DeviceLink:
        """Register a freshly authenticated connection: its device channel and
        its presence. A previous connection of the same device, on any node,
        is ended with 4409. The caller sends ``welcome``, then starts the
        link, so that the device is online for everyone once it is welcomed
        and its first deliveries follow the ``welcome``."""
        channel = device_channel(device_id)
        try:  # before subscribing, so that only the older connection hears it
            await self.broker.publish(channel, close_wakeup(errors.SessionReplaced))
        except BrokerUnavailable:
            pass  # an older connection elsewhere keeps a subscription that no one publishes to
        link = DeviceLink(
            device_id, self.store, send, close, self.metrics.deliveries.inc, refusals=CAP_REFUSALS in caps
        )
        self._links[device_id] = link
        self._local.setdefault(user_id, set()).add(device_id)
        await self.broker.subscribe(channel, link.on_wakeup)
        link.presence_key = await self.presence.connected(user_id, link)
        self.metrics.authenticated.inc()
        return link

    async def detach(self, user_id: str, link: DeviceLink) -> None:
        await link.stop()
        if self._links.get(link.device_id) is link:
            del self._links[link.device_id]
            local = self._local.get(user_id)
            if local is not None:
                local.discard(link.device_id)
                if not local:
                    del self._local[user_id]
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
        for link in self._links.values():
            link.request_drain()
        asyncio.get_running_loop().create_task(self.presence.resync())

    def on_control(self, payload: bytes) -> None:
        """Node-wide announcements: ``b"I" + user id``: that user's account
        or devices changed."""
        if payload[:1] == b"I":
            self.accounts.forget(payload[1:].decode())

    # --- requests -----------------------------------------------------------

    async def send(self, session: ServerSession, frame: Send) -> bytes:
        """Accept a message durably, wake its devices, return ``accepted``.

        The wake-ups leave *before* the sender hears ``accepted``: a hub
        that dies in between leaves the sender without an answer, so it
        resends, and a resend of a stored id (which stores nothing) asks the
        target devices to drain. The other order would let a node die with
        the message stored, acknowledged, and announced to no one."""
        assert session.user_id is not None and session.device_id is not None
        started = time.perf_counter()
        if len(frame.envs) > self.settings.max_envelopes:
            raise errors.TooManyRecipients(f"{len(frame.envs)} envelopes")
        now = now_ms()
        await self._check_targets(session.user_id, session.device_id, frame, now)
        message = NewMessage(
            message_id=frame.id,
            sender_user=session.user_id,
            sender_device=session.device_id,
            recipient_user=frame.to,
            envelopes=frame.envs,
            ts=now,
            expires_at=now + self.settings.message_ttl_ms,
        )
        result = await self._store_call(self.store.accept(message))
        self.metrics.accept_seconds.observe(time.perf_counter() - started)
        if result.duplicate:
            self.metrics.duplicates.inc()
            await self.wake([(device_channel(d), DRAIN_WAKEUP) for d in frame.envs])
            return encode(Accepted(frame.id, dup=True))
        self.metrics.accepted.inc()
        self.metrics.envelopes.inc(len(result.queued))
        await self.wake(_wakeups(result.queued))
        return encode(Accepted(frame.id))

    async def ack(self, session: ServerSession, link: DeviceLink, frame: Ack) -> None:
        """Forget the acked and refused rows; queue and announce the
        receipts (SPEC §6.4, §6.5)."""
        assert session.device_id is not None
        refused = {r.seq: r.reason for r in frame.refused or ()}
        if not frame.seqs and not refused:
            return
        now = now_ms()
        receipts = await self._store_call(
            self.store.ack(
                session.device_id, list(frame.seqs), now, now + self.settings.message_ttl_ms, refused
            )
        )
        link.acked((*frame.seqs, *refused))
        self.metrics.acks.inc(len(frame.seqs))
        if refused:
            self.metrics.refusals.inc(len(refused))
        await self.wake(_wakeups(receipts))

    async def requester(self, session: ServerSession) -> Account:
        """The requester's account, if this device may make requests: an
        attested device of a verified, unsuspended account (SPEC §11.4).
        Raises NotVerified (after reloading a cached refusal) or
        StorageUnavailable."""
        assert session.user_id is not None and session.device_id is not None
        now = now_ms()
        for refresh in (False, True):
            account = await self._store_call(self.accounts.get(session.user_id, refresh=refresh))
            if account is not None and account.may_send(session.device_id, now):
                return account
        raise errors.NotVerified(session.device_id)

    async def lookup(self, session: ServerSession, frame: Lookup) -> bytes:
        """A verified, unsuspended clinician (or the requester's own account)
        and their active devices, attested ones first (SPEC §11.3)."""
        if frame.user is not None:
            user_id = frame.user
        elif frame.rpps is not None:
            user = await self._store_call(self.store.find_user_by_rpps(frame.rpps))
            if user is None:
                raise errors.UnknownUser("no such user")
            user_id = user.user_id
        else:
            raise errors.UnknownUser("lookup names nobody")
        account = await self._store_call(self.accounts.get(user_id, refresh=True))
        if account is None or (user_id != session.user_id and not account.verified(now_ms())):
            raise errors.UnknownUser("no such user")  # hidden like one that does not exist
        user = account.user
        # Attested first (sorted is stable: oldest first within each); at most
        # what a lookup_ok carries, for accounts from before the device cap.
        listed = sorted(account.devices, key=lambda d: d.device_id not in account.targets)
        return encode(
            LookupOk(
                rid=frame.rid,
                user=user.user_id,
                name=user.name,
                rpps=user.rpps,
                profession=user.profession,
                organisation=user.organisation,
                devices=tuple(
                    DeviceInfo(d.device_id, d.sign_pk, d.box_pk) for d in listed[:MAX_RECIPIENT_DEVICES]
                ),
                att=user.attestation,
            )
        )

    async def search(self, frame: Search) -> bytes:
        """Attestations of matching clinicians, leaving out those no client
        would accept (expired, or not readable): they would only take the
        places of valid ones."""
        # A few more than the answer holds: an expired attestation is skipped.
        users = await self._store_call(self.store.search_users(frame.query.strip(), SEARCH_FETCH))
        now = now_ms()
        atts = []
        for user in users:
            try:
                if user.attestation is not None and attestation.peek(user.attestation).not_after > now:
                    atts.append(user.attestation)
            except attestation.AttestationError:
                continue
            if len(atts) == MAX_SEARCH_RESULTS:
                break
        return encode(SearchOk(frame.rid, tuple(atts)))

    async def devices(self, session: ServerSession, frame: Devices) -> bytes:
        assert session.user_id is not None
        account = await self._store_call(self.accounts.get(session.user_id, refresh=True))
        assert account is not None
        entries = tuple(
            DeviceEntry(d.device_id, d.label, d.created_at, d.device_id in account.targets)
            for d in account.devices
        )
        return encode(DevicesOk(frame.rid, entries))

    async def revoke(self, session: ServerSession, frame: Revoke) -> bytes:
        """Revoke one of the requester's own devices (SPEC §11.4); the caller
        checked that the requester may (any device may revoke itself)."""
        assert session.user_id is not None
        account = await self._store_call(self.accounts.get(session.user_id, refresh=True))
        if account is None or frame.device not in {d.device_id for d in account.devices}:
            raise errors.Forbidden("not one of your active devices")
        revoked = await self._store_call(self.store.revoke_device(frame.device, now_ms()))
        if revoked is not None:
            self.audit.record(
                session.user_id,
                "device.revoked",
                user_id=session.user_id,
                device_id=frame.device,
                detail=f"by its owner, from {session.device_id}",
            )
            self.metrics.revoked.inc()
            log.info("device revoked", extra={"user": session.user_id, "device": frame.device})
            await self._device_revoked(session.user_id, frame.device)
        return encode(Ok(frame.rid))

    async def link_code(self, session: ServerSession, frame: LinkCode) -> bytes:
        """A link code, if the user has room under the device cap (SPEC §5.3)."""
        assert session.user_id is not None
        code = new_code()
        now = now_ms()
        expires = now + int(self.settings.link_code_ttl_minutes * 60_000)
        try:
            await self._store_call(
                self.store.add_link_code(
                    session.user_id, code_hash(code), expires, now, self.settings.max_devices
                )
            )
        except DeviceLimit:
            raise errors.TooManyDevices(session.user_id) from None
        log.info("link code issued", extra={"user": session.user_id, "device": session.device_id})
        return encode(LinkCodeOk(rid=frame.rid, code=code, expires=expires))

    async def set_status(self, session: ServerSession, frame: SetStatus) -> bytes:
        assert session.user_id is not None
        await self._store_call(self.presence.set_status(session.user_id, frame.status))
        return encode(Ok(frame.rid))

    async def watch(self, session: ServerSession, link: DeviceLink, frame: Watch) -> bytes:
        assert session.user_id is not None
        current = await self._store_call(self.presence.watch(session.user_id, link, frame.users))
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

    # --- helpers ------------------------------------------------------------

    async def _check_targets(self, sender_user: str, sender_device: str, frame: Send, now: int) -> None:
        """The sender must be verified and the recipient too, and the
        envelopes must cover exactly the target set (SPEC §6.2): the
        recipient's targets and the sender's other targets."""
        targets = frame.envs.keys()
        sender: Account | None = None
        recipient: Account | None = None
        required: frozenset[str] = frozenset()
        for refresh in (False, True):
            sender = await self._store_call(self.accounts.get(sender_user, refresh=refresh))
            if sender is None or sender.suspended:
                if refresh:
                    raise errors.AccountSuspended(sender_user)
                continue
            if not sender.may_send(sender_device, now):
                if refresh:
                    raise errors.NotVerified(sender_device)
                continue
            recipient = await self._store_call(self.accounts.get(frame.to, refresh=refresh))
            if recipient is None:
                if refresh:
                    raise errors.UnknownUser("unknown recipient")
                continue
            if not recipient.verified(now):
                if refresh:
                    raise errors.RecipientNotVerified(frame.to)
                continue
            required = (recipient.targets | sender.targets) - {sender_device}
            if targets == required:
                return
        assert recipient is not None
        if not recipient.targets:
            raise errors.NoDevices("recipient has no device")
        extra = targets - required
        if extra:
            raise errors.UnknownDevice(f"{len(extra)} unknown target devices")
        raise errors.MissingDevices(sorted(required - targets))

    # --- security events ----------------------------------------------------------

    async def _user_changed(self, user_id: str) -> None:
        """Every node forgets its cached account of ``user_id``."""
        self.accounts.forget(user_id)
        with contextlib.suppress(BrokerUnavailable):
            await self.broker.publish(CONTROL_CHANNEL, b"I" + user_id.encode())

    async def _device_revoked(self, user_id: str, device_id: str) -> None:
        """End the device's connection wherever it is, now (the audit log
        feed is the slower second path)."""
        await self._user_changed(user_id)
        try:  # reaches this node's connection of the device too
            await self.broker.publish(device_channel(device_id), close_wakeup(errors.DeviceRevoked))
        except BrokerUnavailable:
            self._close_local(device_id, errors.DeviceRevoked)

    def _close_local(self, device_id: str, error: type[errors.FatalError]) -> None:
        link = self._links.get(device_id)
        if link is not None:
            link.on_wakeup(close_wakeup(error))

    def apply_security_event(self, event: AuditEvent) -> None:
        """Enforce one security event of the audit log on this node."""
        if event.user_id is None:
            return
        self.accounts.forget(event.user_id)
        if event.action == "device.revoked" and event.device_id is not None:
            self._close_local(event.device_id, errors.DeviceRevoked)
        elif event.action in ("account.suspended", "account.deleted"):
            for device_id in list(self._local.get(event.user_id, ())):
                self._close_local(device_id, errors.AccountSuspended)

    async def watch_security_forever(self, interval: float = 0.5) -> None:
        """Poll the audit log for security events (runs as a task). Events
        already in the log when the node starts are only marked seen: the
        store already tells the truth to every later authentication.

        Each poll reads the last minute's events above a cursor, page by
        page (``SECURITY_PAGE``), oldest first, so that no event is skipped
        however many come at once. The cursor is the highest seq seen at
        least ``SECURITY_SETTLE_SECONDS`` ago (an event with a lower seq
        could only appear later if its transaction stayed open that long).
        A burst (10,000 devices enrolled at once) is thus read for a few
        seconds, not at every poll for a minute."""
        loop = asyncio.get_running_loop()
        first = True
        cursor = top = 0  # top: the highest seq seen so far
        marks: deque[tuple[float, int]] = deque()  # (when, top then)
        while True:
            since = now_ms() - SECURITY_WINDOW_MS
            with contextlib.suppress(StoreUnavailable):  # try again at the next poll
                after = cursor
                while True:
                    page = await self.store.audit_log(
                        since_at=since,
                        actions=SECURITY_ACTIONS,
                        limit=SECURITY_PAGE,
                        after_seq=after,
                        oldest=True,
                    )
                    for event in page:
                        if event.seq not in self._seen_events:
                            self._seen_events[event.seq] = event.at
                            if not first:
                                self.apply_security_event(event)
                    if page:
                        after = page[-1].seq
                        top = max(top, after)
                    if len(page) < SECURITY_PAGE:
                        break
                first = False
                now = loop.time()
                marks.append((now, top))
                while marks and marks[0][0] <= now - SECURITY_SETTLE_SECONDS:
                    cursor = marks.popleft()[1]
                self._seen_events = {
                    seq: at for seq, at in self._seen_events.items() if at >= since and seq > cursor
                }
            await asyncio.sleep(interval)

    async def wake(self, wakeups: list[tuple[str, bytes]]) -> None:
        """Publish wake-ups. A lost one only delays: the row is stored, and
        a broker outage ends with a gap, which drains every device."""
        if not wakeups:
            return
        try:
            if len(wakeups) == 1:
                await self.broker.publish(*wakeups[0])
            else:
                await self.broker.publish_many(wakeups)
        except BrokerUnavailable as exc:
            log.warning("wake-ups not published", extra={"count": len(wakeups), "error": str(exc)})

    @staticmethod
    async def _store_call(call: Awaitable[T]) -> T:
        try:
            return await call
        except StoreUnavailable as exc:
            log.warning("store unavailable", extra={"error": str(exc)})
            raise errors.StorageUnavailable(str(exc), retry_after_ms=STORE_RETRY_MS) from None
