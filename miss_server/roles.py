"""On-call roles on one hub node (SPEC §14): the ``role_search``,
``role_get``, ``role_take`` and ``role_leave`` requests, the effective
escalation policy of a message, the holders a send to a role goes to, and
the ``role_changed`` push.

A role names a function ("Cardiologie — senior de garde"); who holds it is
the store's answer at a given instant: the manual holders (taken in a
client, assigned by an administrator) and the users whose schedule shift
covers that instant (:meth:`Store.role_holders`). No cache: every request
and every send reads the store, so a handover made on another node, or a
shift that began a second ago, is seen by the next send on every node.

The effective policy (:meth:`RoleService.role_policy`,
:meth:`RoleService.org_policy`): the role's own, else its organisation's
default (interval and final, no steps), else the deployment's
(``escalation_default_interval_ms``, ``escalation_default_final_ms``).

``role_changed`` crosses nodes on the broker's control channel like
``team_changed`` (teams.py): the node that changed a holdership publishes
``b"R" + msgpack([role, holders, users])`` (the holders after the change and
the users whose holdership changed), and every node, itself included, pushes
the frame to its local connections of those users that named ``oncall``.
An administrator's assignment (``miss-admin role assign``) reaches the hubs
through the audit log (``role.assigned``/``role.unassigned``,
``security_feed.py``), which each node polls and turns into the same local
pushes (:meth:`RoleService.announce_stored`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

import msgpack

from protocol import attestation, errors
from protocol.frames import (
    MAX_ROLE_HOLDERS,
    MAX_ROLE_RESULTS,
    RoleChanged,
    RoleGet,
    RoleInfo,
    RoleLeave,
    RoleOk,
    RoleSearch,
    RoleSearchOk,
    RoleTake,
    encode,
)
from protocol.oncall import Policy, unpack_policy

from .accounts import Account
from .broker.base import CONTROL_CHANNEL, Broker, BrokerUnavailable
from .config import Settings
from .delivery import LocalLinks
from .store.base import Role, Store

__all__ = ["TAG_ROLE_CHANGED", "RoleService", "attested_organisation"]

log = logging.getLogger("miss.roles")

#: The control channel's announcement of a holdership change (module doc).
TAG_ROLE_CHANGED = b"R"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def attested_organisation(account: Account) -> str | None:
    """The organisation the user's attestation names; None without a readable one."""
    if account.user.attestation is None:
        return None
    try:
        return attestation.peek(account.user.attestation).organisation
    except attestation.AttestationError:
        return None


class RoleService:
    """The role requests of one hub node (module doc). ``clock`` gives the
    hub's time in ms (tests may pass their own)."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        links: LocalLinks,
        settings: Settings,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self._store = store
        self._broker = broker
        self._links = links
        self._settings = settings
        self._clock = clock

    # --- requests --------------------------------------------------------------------

    async def search(self, user_id: str, frame: RoleSearch) -> bytes:
        """``role_search_ok``: at most MAX_ROLE_RESULTS roles whose name or
        organisation contains the query, or with ``mine`` the roles the
        user holds now."""
        now = self._clock()
        if frame.mine:
            roles = (await self._store.user_roles(user_id, now))[:MAX_ROLE_RESULTS]
        else:
            roles = await self._store.search_roles(frame.query.strip(), MAX_ROLE_RESULTS, now)
        infos = tuple([await self.info(role, now) for role in roles[:MAX_ROLE_RESULTS]])
        return encode(RoleSearchOk(frame.rid, infos))

    async def get(self, frame: RoleGet) -> bytes:
        """``role_ok``; UnknownRole for a role that does not exist."""
        role = await self._role(frame.role)
        return encode(RoleOk(frame.rid, await self.info(role, self._clock())))

    async def take(self, account: Account, frame: RoleTake) -> bytes:
        """Take a role: a handover (the taker becomes its only manual
        holder, the others are released at once), or with ``join`` an added
        holder. Checks in order: unknown_role, role_reserved (clients never
        take a reserved role: the schedule and administrators fill it),
        role_forbidden (the role's organisation is not the one the taker's
        attestation names), role_full (MAX_ROLE_HOLDERS holders already, or
        the taker holds ``max_roles_per_user`` roles). Nothing changes on
        an error. The taker and the released holders get ``role_changed``."""
        role = await self._role(frame.role)
        if role.reserved:
            raise errors.RoleReserved(role.role)
        if role.org and attested_organisation(account) != role.org:
            raise errors.RoleForbidden(role.role)
        user_id = account.user.user_id
        now = self._clock()
        holders = await self._store.role_holders(role.role, now)
        if frame.join and user_id not in holders and len(holders) >= MAX_ROLE_HOLDERS:
            raise errors.RoleFull(f"{len(holders)} holders")
        taken, released = await self._store.take_role(
            role.role, user_id, bool(frame.join), now, self._settings.max_roles_per_user
        )
        if not taken:
            raise errors.RoleFull("max_roles_per_user")
        info = await self.info(role, now)
        await self.announce(role.role, info.holders, {user_id, *released})
        log.info(
            "role taken",
            extra={"role": role.role, "user": user_id, "join": bool(frame.join), "released": len(released)},
        )
        return encode(RoleOk(frame.rid, info))

    async def leave(self, user_id: str, frame: RoleLeave) -> bytes:
        """Stop holding a role manually; a scheduled shift stays, and
        leaving a role one does not hold changes nothing. ``role_ok`` with
        the holders after."""
        role = await self._role(frame.role)
        left = await self._store.leave_role(role.role, user_id)
        info = await self.info(role, self._clock())
        if left:
            await self.announce(role.role, info.holders, {user_id})
            log.info("role left", extra={"role": role.role, "user": user_id})
        return encode(RoleOk(frame.rid, info))

    # --- what a send reads ------------------------------------------------------------

    async def holders(self, role_id: str, now: int) -> tuple[Role, list[str]]:
        """The role and its holders at ``now`` (sorted, at most
        MAX_ROLE_HOLDERS: the first by user id). UnknownRole, or RoleVacant
        when nobody holds it."""
        role = await self._role(role_id)
        holders = sorted(await self._store.role_holders(role_id, now))[:MAX_ROLE_HOLDERS]
        if not holders:
            raise errors.RoleVacant(role_id, "nobody holds the role now")
        return role, holders

    async def step_users(self, policy: Policy, now: int) -> list[list[str]]:
        """The users of each step of ``policy`` at ``now``: a role step's
        holders then (none for a role that no longer exists), a user step's user."""
        out = []
        for step in policy.steps:
            if step.role is not None:
                out.append(sorted(await self._store.role_holders(step.role, now))[:MAX_ROLE_HOLDERS])
            else:
                out.append([step.target])
        return out

    async def role_policy(self, role: Role) -> Policy:
        """The role's policy, else its organisation's default, else the deployment's."""
        if role.policy is not None:
            try:
                return unpack_policy(role.policy)
            except errors.MalformedFrame as exc:  # written by a newer miss-admin, say
                log.warning("unreadable role policy", extra={"role": role.role, "error": str(exc)})
        return await self.org_policy(role.org)

    async def org_policy(self, org: str | None) -> Policy:
        """The organisation's default policy (no steps), else the deployment's."""
        if org:
            stored = await self._store.get_org_policy(org)
            if stored is not None:
                return Policy(stored.interval, (), stored.final)
        s = self._settings
        return Policy(s.escalation_default_interval_ms, (), s.escalation_default_final_ms)

    async def info(self, role: Role, now: int) -> RoleInfo:
        """The RoleInfo of ``role`` at ``now``: holders and effective policy,
        each step with its target's holders."""
        holders = sorted(await self._store.role_holders(role.role, now))[:MAX_ROLE_HOLDERS]
        policy = await self.role_policy(role)
        users = await self.step_users(policy, now)
        steps = tuple(replace(s, holders=tuple(u)) for s, u in zip(policy.steps, users, strict=True))
        return RoleInfo(
            role.role, role.name, role.org, role.reserved, tuple(holders), replace(policy, steps=steps)
        )

    async def _role(self, role_id: str) -> Role:
        role = await self._store.get_role(role_id)
        if role is None:
            raise errors.UnknownRole(role_id)
        return role

    # --- role_changed -------------------------------------------------------------------

    async def announce(self, role: str, holders: Iterable[str], users: Iterable[str]) -> None:
        """Push ``role_changed`` (the holders now) to every connection, on
        every node, of ``users`` that named ``oncall``. Without a broker,
        this node's own."""
        payload = TAG_ROLE_CHANGED + msgpack.packb([role, list(holders), sorted(users)])
        try:
            await self._broker.publish(CONTROL_CHANNEL, payload)
        except BrokerUnavailable as exc:
            log.warning("role change not announced", extra={"role": role, "error": str(exc)})
            self.on_control(payload)

    async def announce_stored(self, role: str, users: Iterable[str]) -> None:
        """Push the role's holders now, read from the store, to this node's
        connections of ``users`` (an administrator's assignment, which each
        node learns from the audit log: ``security_feed.py``)."""
        holders = sorted(await self._store.role_holders(role, self._clock()))[:MAX_ROLE_HOLDERS]
        self._push_local(encode(RoleChanged(role, tuple(holders))), users)

    def on_control(self, payload: bytes) -> None:
        """The control channel's role announcements (module doc)."""
        try:
            role, holders, users = msgpack.unpackb(payload[1:])
            frame = encode(RoleChanged(role, tuple(holders)))
        except Exception as exc:  # from a newer node, or garbled: nothing to push
            log.warning("unreadable role announcement", extra={"error": str(exc)})
            return
        self._push_local(frame, users)

    def _push_local(self, frame: bytes, users: Iterable[str]) -> None:
        """Hand ``frame`` to this node's connections of ``users`` that named ``oncall``."""
        self._links.push(frame, users, lambda link: link.oncall)
