"""The ``send`` request: a message checked, stored, its devices woken, and
the sender's ``accepted`` (SPEC §6.2).

:class:`Sending` holds the 1:1 send and the send to a team (§13.4); sends
to a role, urgent sends and 1:1 bodies with attachments go to
``urgent_send.py`` (§14.4, §16), which shares the sender's checks
(:meth:`Sending.check_sender`). Both are given the hub's services by the
hub (``hub.py``), which routes ``send`` frames here.

The order of a send: the sender's checks and the recipients' (from the
account cache, reloaded before any refusal, ``accounts.py``), the rows
stored in one group commit, then the wake-ups, then ``accepted``. The
wake-ups leave *before* the sender hears ``accepted``: a hub that dies in
between leaves the sender without an answer, so it resends, and a resend of
a stored id (which stores nothing) asks the target devices to drain. The
other order would let a node die with the message stored, acknowledged,
and announced to no one (guarantee 1).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

from protocol import errors
from protocol import teams as pt
from protocol.frames import MAX_WRAPS, Accepted, Send, encode

from .accounts import Account, Accounts, now_ms
from .blobs.service import BlobService
from .broker.base import device_channel
from .config import Settings
from .metrics import Metrics
from .roles import RoleService
from .store.base import NewMessage, NewTeamMessage, Store, StoreUnavailable
from .teams import TeamService, target_mismatch
from .urgent_send import UrgentSend
from .wakeup import DRAIN_WAKEUP, row_wakeups
from .waking import Waker

__all__ = ["STORE_RETRY_MS", "Sending", "store_call"]

log = logging.getLogger("miss.hub")
T = TypeVar("T")

#: ``retry_after`` of storage_unavailable (ms).
STORE_RETRY_MS = 1000


async def store_call(call: Awaitable[T]) -> T:
    """Await a store call; StoreUnavailable becomes the request error
    ``storage_unavailable``, with a retry delay, and a warning."""
    try:
        return await call
    except StoreUnavailable as exc:
        log.warning("store unavailable", extra={"error": str(exc)})
        raise errors.StorageUnavailable(str(exc), retry_after_ms=STORE_RETRY_MS) from None


class Sending:
    """The ``send`` request of one hub node (module doc)."""

    def __init__(
        self,
        store: Store,
        accounts: Accounts,
        teams: TeamService,
        roles: RoleService,
        blobs: BlobService,
        waker: Waker,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._accounts = accounts
        self._teams = teams
        self._blobs = blobs
        self._waker = waker
        self._settings = settings
        self._metrics = metrics
        #: Sends to a role, urgent sends, 1:1 bodies with attachments.
        self.urgent = UrgentSend(
            store, accounts, teams, roles, blobs, settings, metrics, self.check_sender, waker.wake
        )

    async def send(self, sender_user: str, sender_device: str, frame: Send) -> bytes:
        """Accept a message of ``sender_device`` durably, wake its devices,
        return ``accepted`` (module doc); raises the errors of SPEC §6.2
        (§13.4 to a team, §14.4 to a role or urgent) in their order."""
        started = time.perf_counter()
        if len(frame.envs) > (MAX_WRAPS if frame.body is not None else self._settings.max_envelopes):
            raise errors.TooManyRecipients(f"{len(frame.envs)} envelopes")
        self._blobs.check_count(frame)
        now = now_ms()
        # SPEC §13.6: rows go at ts + ttl, or at the default expiry if sooner.
        expires_at = now + min(frame.ttl or self._settings.message_ttl_ms, self._settings.message_ttl_ms)
        if self.urgent.handles(frame):
            return await store_call(
                self.urgent.send(sender_user, sender_device, frame, now, expires_at, started)
            )
        if pt.is_team_id(frame.to):
            return await self._to_team(sender_user, sender_device, frame, now, expires_at, started)
        if frame.body is not None or frame.head is not None:  # a 1:1 body with blobs went to self.urgent
            raise errors.MalformedFrame("body without urgent or blobs, or head, is for a send to a team")
        await self._check_targets(sender_user, sender_device, frame, now)
        message = NewMessage(
            message_id=frame.id,
            sender_user=sender_user,
            sender_device=sender_device,
            recipient_user=frame.to,
            envelopes=frame.envs,
            ts=now,
            expires_at=expires_at,
        )
        result = await store_call(self._store.accept(message))
        self._metrics.accept_seconds.observe(time.perf_counter() - started)
        if result.duplicate:
            return self._duplicate(frame)
        self._metrics.accepted.inc()
        self._metrics.envelopes.inc(len(result.queued))
        await self._waker.wake_together(row_wakeups(result.queued))
        return encode(Accepted(frame.id))

    async def _to_team(
        self, sender_user: str, sender_device: str, frame: Send, now: int, expires_at: int, started: float
    ) -> bytes:
        """A ``send`` to a team (SPEC §13.4): the sender's checks of §6.2,
        then the team's, in order; stores the body once and a row per
        device of *T*, wakes them, ``accepted``."""
        await store_call(self.check_sender(sender_user, sender_device, now))
        wanted = frame.envs.keys()
        required: frozenset[str] = frozenset()
        for refresh in (False, True):
            required = await store_call(
                self._teams.targets(
                    frame.to, sender_user, sender_device, frame.head, frame.body is not None, refresh=refresh
                )
            )
            if wanted == required:
                break
        else:
            raise target_mismatch(wanted, required)
        assert frame.body is not None
        await self._blobs.link(sender_user, sender_device, frame, required, expires_at)
        message = NewTeamMessage(
            frame.id, sender_user, sender_device, frame.to, frame.body, frame.envs, now, expires_at
        )
        result = await store_call(self._store.accept_team(message))
        self._metrics.accept_seconds.observe(time.perf_counter() - started)
        if result.duplicate:
            return self._duplicate(frame)
        self._metrics.accepted.inc()
        self._metrics.team_messages.inc()
        self._metrics.envelopes.inc(len(result.queued))
        self._waker.wake(row_wakeups(result.queued))
        return encode(Accepted(frame.id))

    def _duplicate(self, frame: Send) -> bytes:
        """``accepted`` with ``dup`` for a resend of a stored id, which
        stored nothing: its devices are asked to drain (module doc)."""
        self._metrics.duplicates.inc()
        self._waker.wake([(device_channel(d), DRAIN_WAKEUP) for d in frame.envs])
        return encode(Accepted(frame.id, dup=True))

    async def check_sender(self, sender_user: str, sender_device: str, now: int) -> None:
        """The sender's checks of SPEC §6.2: suspended (fatal), then verified
        with this device attested; a cached refusal is reloaded first."""
        for refresh in (False, True):
            sender = await self._accounts.get(sender_user, refresh=refresh)
            if sender is None or sender.suspended:
                if refresh:
                    raise errors.AccountSuspended(sender_user)
                continue
            if sender.may_send(sender_device, now):
                return
            if refresh:
                raise errors.NotVerified(sender_device)

    async def _check_targets(self, sender_user: str, sender_device: str, frame: Send, now: int) -> None:
        """The sender must be verified and the recipient too, the recipient
        must accept replies if it is a service (SPEC §17.2), and the
        envelopes must cover exactly the target set (SPEC §6.2): the
        recipient's targets and the sender's other targets. A refusal read
        from the account cache is reloaded first; an account the cache says
        accepts replies is not (every node forgets it when an administrator
        switches replies off: ``service.replies`` in security_feed.py)."""
        targets = frame.envs.keys()
        sender: Account | None = None
        recipient: Account | None = None
        required: frozenset[str] = frozenset()
        for refresh in (False, True):
            sender = await store_call(self._accounts.get(sender_user, refresh=refresh))
            if sender is None or sender.suspended:
                if refresh:
                    raise errors.AccountSuspended(sender_user)
                continue
            if not sender.may_send(sender_device, now):
                if refresh:
                    raise errors.NotVerified(sender_device)
                continue
            recipient = await store_call(self._accounts.get(frame.to, refresh=refresh))
            if recipient is None:
                if refresh:
                    raise errors.UnknownUser("unknown recipient")
                continue
            if not recipient.verified(now):
                if refresh:
                    raise errors.RecipientNotVerified(frame.to)
                continue
            # SPEC §17.2: a service that does not accept replies; a send to
            # oneself (read notices, §13.5) is the service's own business.
            if recipient.user.refuses_replies and frame.to != sender_user:
                if refresh:
                    raise errors.RepliesRefused(frame.to)
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
