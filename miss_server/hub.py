"""The hub's request handlers: enrollment, authentication, send, ack, lookup.

:class:`Hub` holds no I/O of its own: it is given a Store and a Broker (the
composition root in ``app.py`` picks them) and the connection handler in
``connection.py`` calls it with frames the protocol session has already
checked. Every handler that answers a request returns the reply frame;
request errors are raised as :mod:`protocol.errors` exceptions, which the
connection turns into ``error`` frames.

The hub caches each user's set of active device ids to check a ``send``
without a read. The cache is a hint: on any mismatch it is reloaded from the
store before the sender is told anything is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from protocol import errors
from protocol.frames import (
    Accepted,
    Ack,
    Auth,
    DeviceInfo,
    Enroll,
    LinkCode,
    LinkCodeOk,
    Lookup,
    LookupOk,
    Ok,
    Send,
    SetStatus,
    Watch,
    Watching,
    encode,
)
from protocol.session import ServerSession

from .broker.base import CONTROL_CHANNEL, Broker, BrokerUnavailable, device_channel
from .codes import code_hash, new_code
from .config import Settings
from .delivery import DRAIN_WAKEUP, DeviceLink, close_wakeup, row_wakeup
from .metrics import Metrics
from .presence import PresenceService
from .store.base import CodeInvalid, NewMessage, Queued, Store, StoreUnavailable

__all__ = ["Hub"]

log = logging.getLogger("miss.hub")
T = TypeVar("T")

STORE_RETRY_MS = 1000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _wakeups(rows: list[Queued]) -> list[tuple[str, bytes]]:
    return [(device_channel(row.device_id), row_wakeup(row)) for row in rows]


class Hub:
    """Routing and account logic of one hub node."""

    def __init__(
        self, store: Store, broker: Broker, presence: PresenceService, settings: Settings, metrics: Metrics
    ) -> None:
        self.store = store
        self.broker = broker
        self.presence = presence
        self.settings = settings
        self.metrics = metrics
        self._device_ids: dict[str, frozenset[str]] = {}
        self._links: dict[str, DeviceLink] = {}

    # --- authentication -----------------------------------------------------

    async def authenticate(self, session: ServerSession, frame: Auth) -> None:
        """Check an ``auth`` frame; raises AuthFailed or StorageUnavailable."""
        device = await self._store_call(self.store.get_device(frame.device))
        if device is None or device.revoked:
            session.authenticate(frame, None, None)
        else:
            session.authenticate(frame, device.user_id, device.sign_pk)

    async def enroll(self, session: ServerSession, frame: Enroll) -> None:
        """Register the device of an ``enroll`` frame; raises AuthFailed,
        InvalidCode or StorageUnavailable."""
        session.check_enroll(frame)
        try:
            device = await self._store_call(
                self.store.enroll_device(
                    code_hash(frame.code), frame.sign_pk, frame.box_pk, frame.label, now_ms()
                )
            )
        except CodeInvalid:
            raise errors.InvalidCode("code rejected") from None
        except ValueError:  # the signing key is already registered
            raise errors.AuthFailed("signing key already enrolled") from None
        self._device_ids.pop(device.user_id, None)
        with contextlib.suppress(BrokerUnavailable):
            await self.broker.publish(CONTROL_CHANNEL, b"I" + device.user_id.encode())
        self.metrics.enrollments.inc()
        log.info("device enrolled", extra={"user": device.user_id, "device": device.device_id})
        session.enrolled(device.user_id, device.device_id)

    # --- connection life ----------------------------------------------------

    async def attach(
        self,
        user_id: str,
        device_id: str,
        send: Callable[[list[bytes]], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
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
        link = DeviceLink(device_id, self.store, send, close, self.metrics.deliveries.inc)
        self._links[device_id] = link
        await self.broker.subscribe(channel, link.on_wakeup)
        link.presence_key = await self.presence.connected(user_id, link)
        self.metrics.authenticated.inc()
        return link

    async def detach(self, user_id: str, link: DeviceLink) -> None:
        await link.stop()
        if self._links.get(link.device_id) is link:
            del self._links[link.device_id]
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
        """Node-wide announcements: ``b"I" + user id``: that user's devices changed."""
        if payload[:1] == b"I":
            self._device_ids.pop(payload[1:].decode(), None)

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
        await self._check_targets(session.user_id, session.device_id, frame)
        now = now_ms()
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
        assert session.device_id is not None
        if not frame.seqs:
            return
        now = now_ms()
        receipts = await self._store_call(
            self.store.ack(session.device_id, list(frame.seqs), now, now + self.settings.message_ttl_ms)
        )
        link.acked(frame.seqs)
        self.metrics.acks.inc(len(frame.seqs))
        await self.wake(_wakeups(receipts))

    async def lookup(self, frame: Lookup) -> bytes:
        if frame.user is not None:
            user = await self._store_call(self.store.get_user(frame.user))
        elif frame.rpps is not None:
            user = await self._store_call(self.store.find_user_by_rpps(frame.rpps))
        else:
            raise errors.UnknownUser("lookup names nobody")
        if user is None:
            raise errors.UnknownUser("no such user")
        devices = await self._store_call(self.store.user_devices(user.user_id))
        self._device_ids[user.user_id] = frozenset(d.device_id for d in devices)
        return encode(
            LookupOk(
                rid=frame.rid,
                user=user.user_id,
                name=user.name,
                rpps=user.rpps,
                profession=user.profession,
                organisation=user.organisation,
                devices=tuple(DeviceInfo(d.device_id, d.sign_pk, d.box_pk) for d in devices),
            )
        )

    async def link_code(self, session: ServerSession, frame: LinkCode) -> bytes:
        assert session.user_id is not None
        code = new_code()
        expires = now_ms() + int(self.settings.link_code_ttl_minutes * 60_000)
        await self._store_call(self.store.add_enrollment_code(session.user_id, code_hash(code), expires))
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

    async def _check_targets(self, sender_user: str, sender_device: str, frame: Send) -> None:
        """The envelopes must cover exactly the recipient's active devices and
        the sender's other active devices (SPEC §6.2)."""
        targets = frame.envs.keys()
        for refresh in (False, True):
            recipient = await self._device_set(frame.to, refresh)
            if recipient is None:
                raise errors.UnknownUser("unknown recipient")
            own = await self._device_set(sender_user, refresh)
            required = (recipient | (own or frozenset())) - {sender_device}
            if targets == required:
                return
        if not recipient:
            raise errors.NoDevices("recipient has no device")
        extra = targets - required
        if extra:
            raise errors.UnknownDevice(f"{len(extra)} unknown target devices")
        raise errors.MissingDevices(sorted(required - targets))

    async def _device_set(self, user_id: str, refresh: bool) -> frozenset[str] | None:
        """Active device ids of a user; None if the user does not exist."""
        if not refresh:
            cached = self._device_ids.get(user_id)
            if cached is not None:
                return cached
        devices = await self._store_call(self.store.user_devices(user_id))
        if not devices and await self._store_call(self.store.get_user(user_id)) is None:
            return None
        ids = frozenset(d.device_id for d in devices)
        self._device_ids[user_id] = ids
        return ids

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
