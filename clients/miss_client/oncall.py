"""On-call roles and urgent messages as one device sees them (SPEC §14).

Theory of operation
-------------------
A **role** ("Cardiologie — senior de garde") is held by whoever the hub
says holds it now: holders are not signed (SPEC §14.11). What bounds a hub
that lies is the sender's side: :meth:`Roles.targets` looks up every holder
and every backup as any recipient (SPEC §11.2: attestation, pins, pending
key changes) and encrypts only to their attested devices, so a role
message reaches no one this device did not see.

* **Requests** (:meth:`Roles.search`, :meth:`Roles.get`, :meth:`Roles.take`,
  :meth:`Roles.leave`): ``role_search``/``role_get``/``role_take``/
  ``role_leave``; each answer is cached in the local state (names and
  holders, :mod:`miss_client.oncall_state`) so that a role can be named
  and shown offline. :meth:`Roles.find` takes a role id or a known role's
  name (asking the hub when the name is not known here).
* **Sending** to a role (:meth:`Roles.send_role`): sealed once
  (:func:`protocol.crypto.seal_body`) and its key wrapped for *P*, the
  attested devices of the holders and our other devices; if urgent, also
  for every *T_k*, the devices of each escalation step's users (the holders
  the ``role_ok`` lists for the step), minus those already counted, exactly
  as the hub computes them (SPEC §14.4): the hub stores those wraps held and
  releases them step by step. ``missing_devices``/``unknown_device``
  re-resolve the role and its steps and resend with the same id (the
  :class:`~miss_client.retry.RetryPolicy`). A holder or a backup whose
  attestation does not verify gets nothing (the hub counts only verified
  accounts); a pending key change of anyone raises KeyChangePending and
  nothing is sent. Urgent messages to a user or a team are sealed too
  (:mod:`miss_client.outbox`); their policy (an organisation's default)
  has no steps, so the hub needs no backup wraps for them.
* **Receiving**: ``urgent_status`` rows are recorded (:meth:`on_status`)
  then acked; ``urgent_reminder`` and ``role_changed`` pushes become
  :class:`~miss_client.oncall_models.UrgentReminded` and
  :class:`~miss_client.oncall_models.RoleHoldersChanged` events.
  :meth:`Roles.acknowledge` sends ``acknowledge`` and records the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from protocol import crypto
from protocol import frames as f
from protocol.errors import NoDevices, RoleVacant
from protocol.oncall import is_role_id

from .errors import ClientError, ConnectionFailed, MessageTooLarge, UnverifiedPeer
from .models import Message, Peer, check_frame_text, format_id
from .oncall_models import Acknowledgement, RoleHoldersChanged, RoleView, UrgentReminded, UrgentStatusChanged
from .oncall_state import OncallState
from .peers import Peers
from .profile import Profile
from .requests import Router

__all__ = ["Roles", "build_sealed_send", "role_view"]

log = logging.getLogger("miss_client")


def role_view(info: f.RoleInfo) -> RoleView:
    """The application's view of a ``RoleInfo``."""
    return RoleView(info.role, info.name, info.org, info.reserved, tuple(info.holders), info.policy)


def build_sealed_send(
    plaintext: bytes,
    message_id: bytes,
    keys: crypto.DeviceKeys,
    own_device: str,
    to: str,
    targets: dict[str, bytes],
    ttl: int | None = None,
    *,
    head: bytes | None = None,
    urgent: f.Urgent | None = None,
    blobs: tuple[str, ...] = (),
) -> bytes:
    """The encoded sealed ``send`` (SPEC §13.3, §14.4) to ``to`` (a role, a
    user or a team with its ``head``): ``plaintext`` sealed once, its key
    wrapped for each of ``targets`` (``device -> box_pk``); ``blobs``: the
    attachments' blob ids (SPEC §16). Raises NoDevices
    without targets, ClientError past MAX_WRAPS, MessageTooLarge past
    MAX_FRAME_BYTES."""
    if not targets:
        raise NoDevices(f"nobody reachable for {to} has an active, verified device")
    if len(targets) > f.MAX_WRAPS:
        raise ClientError(f"more than {f.MAX_WRAPS} devices to encrypt for")
    key, body = crypto.seal_body(plaintext, message_id, keys)
    wraps = {device: crypto.wrap_key(key, keys, box_pk) for device, box_pk in targets.items()}
    frame = f.Send(
        id=message_id,
        sender=own_device,
        to=to,
        envs=wraps,
        body=body,
        head=head,
        ttl=ttl,
        urgent=urgent,
        blobs=blobs or None,
    )
    data = f.encode(frame)
    if len(data) > f.MAX_FRAME_BYTES:
        raise MessageTooLarge(
            f"message too long: {len(data)} bytes once wrapped for {len(wraps)} devices "
            f"(limit {f.MAX_FRAME_BYTES})"
        )
    return data


class Roles:
    """On-call roles and urgent messages of one connection (module doc):
    requests through ``router``, recipients through ``peers``, records in
    ``oncall`` (:attr:`state`); ``ack`` acks a queued row."""

    def __init__(
        self,
        router: Router,
        peers: Peers,
        profile: Profile,
        oncall: OncallState,
        ack: Callable[[int], Awaitable[None]],
    ) -> None:
        self._router = router
        self._peers = peers
        self._profile = profile
        self.state = oncall
        self._ack = ack

    # --- requests ----------------------------------------------------------------------

    async def _role_request(self, build: Callable[[int], f.Frame], what: str) -> RoleView:
        reply = await self._router.request_retrying(build, what)
        if not isinstance(reply, f.RoleOk):
            raise ConnectionFailed(f"the hub answered {what} with something else")
        view = role_view(reply.info)
        self.state.save_role(view)
        return view

    async def search(self, query: str = "", *, mine: bool = False) -> list[RoleView]:
        """Roles whose name or organisation contains ``query`` (0-64
        characters, case- and accent-insensitive), at most 20; with
        ``mine``, the roles this user holds now (``query`` ignored)."""
        query = check_frame_text(query.strip(), "a role search")
        if len(query) > 64:
            raise ValueError("a role search has at most 64 characters")
        reply = await self._router.request_retrying(
            lambda rid: f.RoleSearch(rid=rid, query=query, mine=True if mine else None), "role_search"
        )
        if not isinstance(reply, f.RoleSearchOk):
            raise ConnectionFailed("the hub answered role_search with something else")
        views = [role_view(info) for info in reply.roles]
        for view in views:
            self.state.save_role(view)
        return views

    async def get(self, role: str) -> RoleView:
        """A role, its holders now and its effective policy. Raises
        UnknownRole, ValueError for something that is not a role id."""
        role = _role_id(role)
        return await self._role_request(lambda rid: f.RoleGet(rid=rid, role=role), "role_get")

    async def take(self, role: str, join: bool = False) -> RoleView:
        """Take ``role``: a handover (we become its only manual holder; the
        others are released at once), or with ``join`` one more holder.
        Raises UnknownRole, RoleReserved, RoleForbidden (another
        organisation's), RoleFull."""
        role = _role_id(role)
        return await self._role_request(
            lambda rid: f.RoleTake(rid=rid, role=role, join=True if join else None), "role_take"
        )

    async def leave(self, role: str) -> RoleView:
        """Stop holding ``role`` manually (a scheduled shift stays); leaving
        a role we do not hold changes nothing. Raises UnknownRole."""
        role = _role_id(role)
        return await self._role_request(lambda rid: f.RoleLeave(rid=rid, role=role), "role_leave")

    async def find(self, text: str) -> RoleView | None:
        """The role ``text`` names: a role id (fetched), or the exact name
        (case-insensitive) of a role this device knows or the hub finds;
        None if it names no role. Raises ValueError if several roles have
        that name."""
        text = text.strip()
        if is_role_id(text):
            return await self.get(text)
        if not text or len(text) > 64:
            return None
        known = self.state.roles_named(text)
        if len(known) == 1:
            return await self.get(known[0])
        found = [v for v in await self.search(text) if v.name.casefold() == text.casefold()]
        if len(found) > 1:
            raise ValueError(f"several roles are named {text!r}: give its id")
        return found[0] if found else None

    async def acknowledge(self, message: Message | tuple[str, bytes]) -> Acknowledgement:
        """Acknowledge an urgent message we received (a :class:`Message`, or
        ``(sender, id)``): the hub stops the reminders and escalation, and
        tells the sender and the other recipients. Returns the first
        acknowledgement (maybe another's: ``first`` False), recorded here.
        Raises NotRecipient (not an urgent message that reached us)."""
        sender, message_id = (message.from_user, message.id) if isinstance(message, Message) else message
        reply = await self._router.request_retrying(
            lambda rid: f.Acknowledge(rid=rid, id=message_id, sender=sender), "acknowledge"
        )
        if not isinstance(reply, f.AcknowledgeOk) or (reply.id, reply.sender) != (message_id, sender):
            raise ConnectionFailed("the hub answered acknowledge with something else")
        self.state.record_ack(reply)
        return Acknowledgement(reply.id, reply.sender, reply.user, reply.device, reply.at, reply.first)

    # --- targets of a role send ----------------------------------------------------------

    async def _devices(self, user: str, own: Peer, refresh: bool) -> dict[str, bytes]:
        """The attested devices of ``user`` (checked like any recipient), or
        nothing if their attestation does not verify."""
        try:
            peer = own if user == own.user else await self._peers.lookup(user=user, refresh=refresh)
        except UnverifiedPeer as exc:
            log.warning("role send: %s does not verify (%s): nothing encrypted to them", user, exc.reason)
            return {}
        self._peers.check_sendable(peer, own)
        return {d.device: d.box_pk for d in peer.devices}

    async def targets(self, view: RoleView, urgent: bool, *, refresh: bool = False) -> dict[str, bytes]:
        """``device -> box_pk`` of every wrap of a send to ``view``'s role:
        *P* (the holders' attested devices and our other devices), and, if
        ``urgent``, every step's *T_k* (module doc). Raises RoleVacant
        (nobody holds it), NoDevices (no holder has a verified device),
        KeyChangePending, UnverifiedPeer (this device is not attested)."""
        if view.vacant:
            raise RoleVacant(view.role, "nobody holds this role now")
        me = self._profile.user_id
        own = await self._peers.lookup(user=me, refresh=refresh)
        self._peers.check_sendable(own, own)
        primary: dict[str, bytes] = {}
        for user in view.holders:
            primary.update(await self._devices(user, own, refresh))
        primary.pop(self._profile.device_id, None)
        if not primary:
            raise NoDevices(f"nobody holding {view.name} has an active, verified device")
        targets = dict(primary)
        targets.update((d.device, d.box_pk) for d in own.devices)
        targets.pop(self._profile.device_id, None)
        if not urgent:
            return targets
        counted = {me, *view.holders}
        for step in view.policy.steps:
            users = step.holders if step.role is not None else (step.target,)
            for user in users:
                if user in counted:
                    continue
                counted.add(user)
                for device, box_pk in (await self._devices(user, own, refresh)).items():
                    targets.setdefault(device, box_pk)
        targets.pop(self._profile.device_id, None)
        return targets

    async def send_role(
        self, plaintext: crypto.Plaintext, packed: bytes, urgent: f.Urgent | None, ttl: int | None
    ) -> f.Accepted:
        """Send a recorded message (``packed``: its padded plaintext) to a
        role until accepted (module doc)."""
        profile = self._profile
        retrying = self._router.retry.retrying(f"resending {format_id(plaintext.id)}", refresh_devices=True)
        async for attempt in retrying:
            view = await self.get(plaintext.to_user)
            targets = await self.targets(view, urgent is not None, refresh=retrying.refresh)
            data = build_sealed_send(
                packed,
                plaintext.id,
                profile.keys,
                profile.device_id,
                view.role,
                targets,
                ttl,
                urgent=urgent,
                blobs=tuple(a.blob for a in plaintext.atts),
            )
            with attempt:
                return await self._router.send_message(plaintext.id, data)
        raise AssertionError("unreachable: the policy retries until an answer or an error")

    # --- pushes and queued rows ------------------------------------------------------------

    async def on_status(self, frame: f.UrgentStatus) -> UrgentStatusChanged | None:
        """Record an ``urgent_status`` row, then ack it; the event if new."""
        info, new = self.state.apply_status(frame)
        await self._ack(frame.seq)
        if not new:
            return None
        return UrgentStatusChanged(
            frame.id,
            frame.sender,
            frame.state,
            frame.step,
            frame.ts,
            frame.user,
            frame.device,
            frame.target,
            info,
        )

    def on_reminder(self, frame: f.UrgentReminder) -> UrgentReminded | None:
        """An ``urgent_reminder``: an event, unless this device already
        knows the message acknowledged (a reminder crossing an ack)."""
        info = self.state.reminded(frame.sender, frame.id, frame.n)
        if info is not None and info.state == "acknowledged":
            return None
        return UrgentReminded(frame.id, frame.sender, frame.n)

    def on_role_changed(self, frame: f.RoleChanged) -> RoleHoldersChanged:
        self.state.set_holders(frame.role, tuple(frame.holders))
        return RoleHoldersChanged(frame.role, tuple(frame.holders), self.state.role_name(frame.role))


def _role_id(role: str) -> str:
    role = role.strip()
    if not is_role_id(role):
        raise ValueError(f"{role!r} is not a role id (r_ and 16 hex digits)")
    return role
