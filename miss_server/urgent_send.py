"""A ``send`` to an on-call role, an urgent ``send`` to anyone (SPEC §14.4),
and a 1:1 ``send`` with a sealed body (revision 6, SPEC §16: a message
with attachments is always sealed once).

Theory of operation
-------------------
Both are sealed once (a body and one 72-byte key wrap per target device,
SPEC §13.3) and stored like a team message (:meth:`Store.accept_team`),
with what makes them different in the same transaction:

* The **primary** targets *P*: for a role, the attested devices of its
  holders at send time; for a user, theirs; for a team, its members'
  (the team's checks of §13.4 first); plus, always, the sender's other
  attested devices. Their rows are delivered at once.
* A 1:1 sealed body with attachments (``blobs``; revision 6) that is not
  urgent is stored the same way, *P* only, exactly like an urgent 1:1
  message without its plan: the store's ``team`` is the recipient's user
  id (``deliver`` does not repeat it), and its rows, like every sealed
  body's, go to connections that named ``teams``.
* For an **urgent** send, the effective policy (roles.py) with the send's
  override of ``interval``/``final``, and per step k the devices *T_k* of
  its target's users at send time (a role's holders, or a user), minus the
  devices of *P* and of earlier steps; a user already counted is not
  counted again. The sender sealed a wrap for every one of them; the rows
  of *T_k* are stored **held**, with the escalation plan (deadlines,
  the users of each step, the step targets), and released by the timers
  (escalation.py) unless someone acknowledges first.

The ``envs`` of the frame must name exactly *P* and every *T_k*: a
device the hub does not expect is ``unknown_device``, an expected one
missing is ``missing_devices`` (after reloading the accounts once, as for
any send), more than MAX_WRAPS is ``too_many_recipients``. The send's
``blobs`` are linked to the message, for *P* and every *T_k*, before it is
stored (blobs/service.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from protocol import errors
from protocol import teams as pt
from protocol.frames import Accepted, Send, encode
from protocol.oncall import MAX_ESCALATION_MS, MIN_ESCALATION_MS, Policy, is_role_id

from .accounts import Account, Accounts
from .blobs.service import BlobService
from .broker.base import device_channel
from .config import Settings
from .metrics import Metrics
from .roles import RoleService, attested_organisation
from .store.base import EscalationPlan, NewTeamMessage, Store
from .teams import TeamService, target_mismatch
from .wakeup import DRAIN_WAKEUP, row_wakeups

__all__ = ["UrgentSend"]

log = logging.getLogger("miss.urgent")


@dataclass
class _Targets:
    """What a send must cover: the primary users and devices, and per step
    its target id, users and devices."""

    primary_users: list[str]
    primary: set[str]
    policy: Policy | None = None
    role: str | None = None
    step_users: list[list[str]] = field(default_factory=list)
    step_devices: list[set[str]] = field(default_factory=list)

    def required(self) -> set[str]:
        out = set(self.primary)
        for devices in self.step_devices:
            out |= devices
        return out


class UrgentSend:
    """Sends to roles and urgent sends (module doc). ``check_sender`` is the
    hub's check of the sending device (SPEC §6.2); ``wake`` publishes
    wake-ups. Store errors are raised as StoreUnavailable."""

    def __init__(
        self,
        store: Store,
        accounts: Accounts,
        teams: TeamService,
        roles: RoleService,
        blobs: BlobService,
        settings: Settings,
        metrics: Metrics,
        check_sender: Callable[[str, str, int], Awaitable[None]],
        wake: Callable[[list[tuple[str, bytes]]], None],
    ) -> None:
        self._store = store
        self._accounts = accounts
        self._teams = teams
        self._roles = roles
        self._blobs = blobs
        self._settings = settings
        self._metrics = metrics
        self._check_sender = check_sender
        self._wake = wake

    @staticmethod
    def handles(frame: Send) -> bool:
        """Whether ``frame`` is this module's: to a role, urgent, or a 1:1
        sealed body with attachments (revision 6: a 1:1 body without
        ``urgent`` or ``blobs`` stays malformed, SPEC §13.3)."""
        return (
            frame.urgent is not None
            or is_role_id(frame.to)
            or (frame.blobs is not None and not pt.is_team_id(frame.to))
        )

    async def send(
        self, sender_user: str, sender_device: str, frame: Send, now: int, expires_at: int, started: float
    ) -> bytes:
        """Check, link its blobs, store and announce the send; ``accepted``.
        Raises the errors of SPEC §14.4 in order: the sender's (§6.2), unknown_role and
        role_vacant, malformed_frame (fatal: no body, or a head not to a
        team), the recipient's (unknown_user, recipient_not_verified,
        no_devices, replies_refused: §17.2) or the team's (§13.4), policy_out_of_bounds, then
        too_many_recipients, unknown_device, missing_devices, then
        urgent_limit (a new urgent message over max_open_urgent_per_user),
        then unknown_blob (SPEC §16)."""
        await self._check_sender(sender_user, sender_device, now)
        if is_role_id(frame.to):
            await self._roles.holders(frame.to, now)  # unknown_role, role_vacant first
        if frame.body is None:
            raise errors.MalformedFrame("a send to a role, or an urgent send, carries a sealed body")
        if not pt.is_team_id(frame.to) and frame.head is not None:
            raise errors.MalformedFrame("head is for a send to a team")
        wanted = frame.envs.keys()
        for refresh in (False, True):
            targets = await self._targets(sender_user, sender_device, frame, now, refresh=refresh)
            required = targets.required()
            if wanted == required:
                break
        else:
            raise target_mismatch(wanted, required)
        if targets.policy is not None:
            await self._check_open(sender_user, frame, now)
        await self._blobs.link(sender_user, sender_device, frame, required, expires_at)
        message = self._message(sender_user, sender_device, frame, targets, now, expires_at)
        result = await self._store.accept_team(message)
        self._metrics.accept_seconds.observe(time.perf_counter() - started)
        if result.duplicate:
            self._metrics.duplicates.inc()
            self._wake([(device_channel(d), DRAIN_WAKEUP) for d in targets.primary])
            return encode(Accepted(frame.id, dup=True))
        self._metrics.accepted.inc()
        self._metrics.envelopes.inc(len(result.queued))
        if message.urgent:
            self._metrics.urgent_messages.inc()
        if message.role is not None:
            self._metrics.role_messages.inc()
        elif pt.is_team_id(frame.to):
            self._metrics.team_messages.inc()
        self._wake(row_wakeups(result.queued))
        return encode(Accepted(frame.id))

    async def _check_open(self, sender_user: str, frame: Send, now: int) -> None:
        """UrgentLimit for a new urgent message while the sender's user has
        ``max_open_urgent_per_user`` escalations open; a resend of an
        accepted one goes on, to be answered ``dup``."""
        if await self._store.open_escalations(sender_user, now) < self._settings.max_open_urgent_per_user:
            return
        if await self._store.has_sent(sender_user, frame.id):
            return
        raise errors.UrgentLimit(f"{self._settings.max_open_urgent_per_user} urgent messages still open")

    # --- targets -------------------------------------------------------------------

    async def _targets(
        self, sender_user: str, sender_device: str, frame: Send, now: int, *, refresh: bool
    ) -> _Targets:
        """*P* and, for an urgent send, the policy and each step's users and *T_k*."""
        sender = await self._account(sender_user, now, refresh=refresh)
        own = set(sender.targets) if sender is not None else set()
        own.discard(sender_device)
        if is_role_id(frame.to):
            role, holders = await self._roles.holders(frame.to, now)
            primary_users = [u for u in holders if u != sender_user]
            primary: set[str] = set()
            for user in holders:
                account = await self._account(user, now, refresh=refresh)
                if account is not None:
                    primary |= account.targets
            if refresh and not primary - own - {sender_device}:  # a cached account may be stale
                raise errors.NoDevices("no holder of the role has an attested device")
            targets = _Targets(primary_users, (primary | own) - {sender_device}, role=role.role)
            if frame.urgent is not None:
                targets.policy = await self._roles.role_policy(role)
        elif pt.is_team_id(frame.to):
            primary = set(
                await self._teams.targets(
                    frame.to, sender_user, sender_device, frame.head, True, refresh=refresh
                )
            )
            info = await self._store.team_info(frame.to)
            assert info is not None  # targets() raised UnknownTeam otherwise
            members = sorted(m for m in info.members if m != sender_user)
            targets = _Targets(members, primary, policy=await self._roles.org_policy(info.org))
        else:
            recipient = await self._recipient(frame.to, now, sender_user)
            targets = _Targets([frame.to], (set(recipient.targets) | own) - {sender_device})
            if frame.urgent is not None:
                targets.policy = await self._roles.org_policy(attested_organisation(recipient))
        if frame.urgent is not None:
            assert targets.policy is not None
            targets.policy = self._override(targets.policy, frame)
            await self._steps(targets, sender_user, now, refresh=refresh)
        else:
            targets.policy = None
        return targets

    def _override(self, policy: Policy, frame: Send) -> Policy:
        """The policy with the send's ``interval``/``final``, each within
        [escalation_min_interval_ms, MAX_ESCALATION_MS]; else PolicyOutOfBounds."""
        assert frame.urgent is not None
        floor = max(self._settings.escalation_min_interval_ms, MIN_ESCALATION_MS)
        for name, value in (("interval", frame.urgent.interval), ("final", frame.urgent.final)):
            if value is not None and not floor <= value <= MAX_ESCALATION_MS:
                raise errors.PolicyOutOfBounds(f"{name} = {value} ms")
        return policy.with_override(frame.urgent.interval, frame.urgent.final)

    async def _steps(self, targets: _Targets, sender_user: str, now: int, *, refresh: bool) -> None:
        """Each step's users and devices *T_k* (module doc)."""
        assert targets.policy is not None
        counted = {sender_user, *targets.primary_users}
        covered = set(targets.primary)
        for users in await self._roles.step_users(targets.policy, now):
            fresh = [u for u in users if u not in counted]
            counted.update(fresh)
            devices: set[str] = set()
            for user in fresh:
                account = await self._account(user, now, refresh=refresh)
                if account is not None:
                    devices |= account.targets
            devices -= covered
            covered |= devices
            targets.step_users.append(fresh)
            targets.step_devices.append(devices)

    async def _account(self, user_id: str, now: int, *, refresh: bool) -> Account | None:
        """A verified user's account (None otherwise)."""
        account = await self._accounts.get(user_id, refresh=refresh)
        return account if account is not None and account.verified(now) else None

    async def _recipient(self, user_id: str, now: int, sender_user: str) -> Account:
        """The recipient of an urgent 1:1 send, checked as in SPEC §6.2,
        then whether it accepts replies (a service, SPEC §17.2; a send to
        oneself always goes); a cached refusal is reloaded first."""
        for refresh in (False, True):
            account = await self._accounts.get(user_id, refresh=refresh)
            if account is not None and account.verified(now) and account.targets:
                if not account.user.refuses_replies or user_id == sender_user:
                    return account
                if refresh:
                    raise errors.RepliesRefused(user_id)
        if account is None:
            raise errors.UnknownUser("unknown recipient")
        if not account.verified(now):
            raise errors.RecipientNotVerified(user_id)
        raise errors.NoDevices("recipient has no device")

    # --- the stored message --------------------------------------------------------

    def _message(
        self, sender_user: str, sender_device: str, frame: Send, t: _Targets, now: int, expires_at: int
    ) -> NewTeamMessage:
        """The message to store: primary wraps, held wraps and the plan."""
        assert frame.body is not None
        wraps = {d: frame.envs[d] for d in t.primary}
        held: dict[int, dict[str, bytes]] = {}
        plan = None
        if t.policy is not None:
            for k, devices in enumerate(t.step_devices, start=1):
                if devices:
                    held[k] = {d: frame.envs[d] for d in devices}
            plan = EscalationPlan(
                interval=t.policy.interval,
                deadlines=tuple(t.policy.deadlines(now)),
                targets=(tuple(t.primary_users), *(tuple(u) for u in t.step_users)),
                step_targets=tuple(s.target for s in t.policy.steps),
            )
        return NewTeamMessage(
            frame.id,
            sender_user,
            sender_device,
            frame.to,
            frame.body,
            wraps,
            now,
            expires_at,
            urgent=plan is not None,
            held=held,
            plan=plan,
            role=t.role,
        )
