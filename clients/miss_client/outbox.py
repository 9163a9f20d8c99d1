"""The send side: recording, sealing and sending messages until the hub accepts
them (SPEC §6.2).

:func:`build_send` (no I/O) encrypts one inner plaintext for every device of
the target set *T* (SPEC §6.2, §11.2): the recipient's active devices that
their attestation vouches for with the same keys, and the sender's such
devices except the sending one (``Peer.devices`` holds exactly those;
:meth:`miss_client.peers.Peers.lookup` built them). The hub refuses anything
else (``missing_devices``/``unknown_device``).

:class:`Outbox` records each message in the local history first
(``pending``), then sends it and waits for ``accepted``. A
``missing_devices``/``unknown_device`` answer refreshes both device lists
and resends with the same id; ``storage_unavailable``/``rate_limited`` are
retried after ``retry_after``; both a bounded number of times
(:class:`~miss_client.retry.RetryPolicy`). The message is then marked
``accepted``, or ``failed`` on a definitive refusal; retryable errors,
timeouts and lost connections leave it ``pending`` for
:meth:`Outbox.resend_pending`.

Revision 3 (SPEC §13): every plaintext is padded to a multiple of 256
bytes; a lifespan adds ``ttl`` to the ``send`` and ``expires_at`` to the
plaintext. A message to a team (:func:`build_team_send`) is sealed once
(:func:`protocol.crypto.seal_body`) and its key wrapped for each target
device of the chain this device verified (:mod:`miss_client.teams`), with
our head of the chain; ``team_changed`` fetches the chain, re-targets and
resends with the same id; a ``missing_devices`` naming devices of nobody
in the verified chain marks the team tampered and sends nothing.
Notices (read, recall: :meth:`Outbox.send_notice`) are sent like messages
but not recorded in the history.

Revision 4 (SPEC §14): ``to`` may be a role id (sealed for its holders, and
with ``urgent`` for each escalation step's backups: :mod:`miss_client.oncall`);
an urgent message to a user is sealed too (:func:`build_sealed_send`), to a
team it keeps its head. Whether a message is urgent, and the send's override
of the policy, are recorded (:mod:`miss_client.oncall_state`) before the
message, so a resend after a reconnection or a restart is urgent again, with
the same id.

Revision 6 (SPEC §16): a message with attachments
(:mod:`miss_client.uploads`) is checked against the hub's limits before
anything else, its files encrypted into the spool, recorded ``pending``
with their upload records, uploaded, and only then sent, always sealed
(also 1:1), with ``blobs`` naming the uploaded blobs; its plaintext
carries the descriptors (``atts``). A resend (:meth:`Outbox.resend_pending`)
first finishes the uploads a lost connection interrupted, from the bytes
the hub holds.

Revision 7 (SPEC §17): a message may carry a notice (recorded with it, so a
resend carries it again: :mod:`miss_client.notice_keys` makes notices
idempotent); a 1:1 message to a service whose lookup says it does not
accept replies raises RepliesNotAccepted before anything is recorded, and
the hub's ``replies_refused`` marks a message ``failed`` like any
definitive refusal.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import replace

from protocol import crypto
from protocol import frames as f
from protocol.attachments import Attachment
from protocol.errors import MissingDevices, NoDevices, RequestError, StaleTeamHead
from protocol.notices import Notice
from protocol.oncall import is_role_id

from .errors import (
    BadRecipient,
    ClientError,
    KeyChangePending,
    MessageTooLarge,
    RepliesNotAccepted,
    TeamProblem,
    UnverifiedPeer,
)
from .models import HistoryEntry, Peer, format_id, is_team_id, now_ms
from .notice_keys import last_notice_reply
from .oncall import Roles, build_sealed_send
from .oncall_state import OncallState
from .peers import Peers
from .profile import Profile
from .requests import Router
from .retry import RetryPolicy
from .state import LocalState
from .teams import Teams
from .uploads import Attachments, Progress

__all__ = ["PAD_TO", "TEAM_CHANGED_RESENDS", "Outbox", "RetryPolicy", "build_send", "build_team_send"]

log = logging.getLogger("miss_client")

#: Every plaintext is padded to a multiple of this (SPEC §13.5): a read
#: notice and a short message have the same size.
PAD_TO = 256
#: How many times a team message is re-targeted after ``team_changed``.
TEAM_CHANGED_RESENDS = 3


def check_lifespan(lifespan_ms: int | None) -> None:
    if lifespan_ms is not None and not f.MIN_LIFESPAN_MS <= lifespan_ms <= f.MAX_LIFESPAN_MS:
        raise ValueError("a lifespan is between 1 hour and 30 days")


def build_team_send(
    plaintext: bytes,
    message_id: bytes,
    keys: crypto.DeviceKeys,
    own_device: str,
    team: str,
    head: bytes,
    targets: dict[str, bytes],
    ttl: int | None = None,
    urgent: f.Urgent | None = None,
    blobs: Sequence[str] = (),
) -> bytes:
    """The encoded team ``send`` (SPEC §13.3, §13.4, with ``urgent`` §14.4,
    ``blobs`` §16): ``plaintext`` sealed once, its key wrapped for each of
    ``targets`` (``device -> box_pk``).
    Raises NoDevices without targets, ClientError past MAX_WRAPS,
    MessageTooLarge past MAX_FRAME_BYTES."""
    if not targets:
        raise NoDevices(f"nobody in {team} has an active, verified device")
    if len(targets) > f.MAX_WRAPS:
        raise ClientError(f"more than {f.MAX_WRAPS} devices to encrypt for")
    key, body = crypto.seal_body(plaintext, message_id, keys)
    wraps = {device: crypto.wrap_key(key, keys, box_pk) for device, box_pk in targets.items()}
    data = f.encode(
        f.Send(
            id=message_id,
            sender=own_device,
            to=team,
            envs=wraps,
            body=body,
            head=head,
            ttl=ttl,
            urgent=urgent,
            blobs=tuple(blobs) or None,
        )
    )
    if len(data) > f.MAX_FRAME_BYTES:
        raise MessageTooLarge(
            f"message too long: {len(data)} bytes once wrapped for {len(wraps)} devices "
            f"(limit {f.MAX_FRAME_BYTES})"
        )
    return data


def _blobs(plaintext: crypto.Plaintext) -> tuple[str, ...]:
    """The ``send.blobs`` of a message: its attachments' blob ids."""
    return tuple(a.blob for a in plaintext.atts)


def build_send(
    plaintext: bytes,
    message_id: bytes,
    keys: crypto.DeviceKeys,
    own_device: str,
    peer: Peer,
    own: Peer,
    ttl: int | None = None,
) -> bytes:
    """The encoded ``send`` frame carrying ``plaintext`` (a packed
    :class:`protocol.crypto.Plaintext`) sealed for every target device of
    ``peer`` and of ``own`` (this user) except ``own_device``, each under a
    fresh nonce. Devices listed but not attested with the same keys are not
    in ``Peer.devices`` and get nothing.

    Raises :class:`protocol.errors.NoDevices` if ``peer`` has no target
    device (nobody could read it: SPEC §6.2 says not to send), MessageTooLarge if
    the frame would exceed MAX_FRAME_BYTES, ClientError past
    MAX_RECIPIENT_DEVICES devices.
    """
    targets = {d.device: d.box_pk for d in own.devices if d.device != own_device}
    targets.update((d.device, d.box_pk) for d in peer.devices if d.device != own_device)
    if not targets or (not peer.devices and peer.user != own.user):
        raise NoDevices(f"{peer.user} has no active, verified device")
    if len(targets) > f.MAX_RECIPIENT_DEVICES:
        raise ClientError(f"more than {f.MAX_RECIPIENT_DEVICES} devices to encrypt for")
    envs = {device: crypto.seal(plaintext, keys, box_pk) for device, box_pk in targets.items()}
    data = f.encode(f.Send(id=message_id, sender=own_device, to=peer.user, envs=envs, ttl=ttl))
    if len(data) > f.MAX_FRAME_BYTES:
        raise MessageTooLarge(
            f"message too long: {len(data)} bytes once encrypted for {len(envs)} devices "
            f"(limit {f.MAX_FRAME_BYTES})"
        )
    return data


class Outbox:
    """The send side of one connection (see the module docstring): frames
    through ``router``, recipients through ``peers``, history in ``state``."""

    def __init__(
        self,
        router: Router,
        peers: Peers,
        profile: Profile,
        state: LocalState,
        teams: Teams,
        roles: Roles,
        attachments: Attachments,
    ) -> None:
        self._attachments = attachments
        self._router = router
        self._peers = peers
        self._profile = profile
        self._state = state
        self._teams = teams
        self._roles = roles
        self._oncall: OncallState = roles.state

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
        notice: Notice | None = None,
        also: Callable[[sqlite3.Connection], object] | None = None,
    ) -> bytes:
        """Record ``text`` to ``to`` (an RPPS number, user id, team id or
        role id), with ``attachments`` (file paths), send it and return its
        id once accepted; raises like :meth:`miss_client.client.Client.send`,
        which has the details. ``notice`` (SPEC §17.3) rides in the
        plaintext and the record; ``also`` runs in the transaction that
        records the message (a notice's key, :mod:`miss_client.notice_keys`)."""
        files = self._attachments.check(list(attachments)) if attachments else []
        if not text.strip() and not files:
            raise ValueError("empty message: nothing to send")
        if notice is not None and (files or kind != "text"):
            raise ValueError("a notice is a text message without attachments")
        if files and kind != "text":
            raise ValueError("only a text message carries attachments")
        if message_id is None:
            message_id = crypto.new_message_id()
        elif len(message_id) != 16:
            raise ValueError("a message id is 16 bytes")
        check_lifespan(lifespan_ms)
        me = self._profile.user_id
        sent_at = now_ms()
        team: str | None = None
        role: str | None = None
        if (interval_ms is not None or final_ms is not None) and not urgent:
            raise ValueError("interval_ms and final_ms are for urgent messages")
        if is_role_id(to.strip()):
            role = target = to.strip()
        elif is_team_id(to.strip()):
            team = to.strip()
            view = await self._teams.ensure(team)
            self._teams.sendable(view)
            if lifespan_ms is None:
                lifespan_ms = view.lifespan
            target = team
        else:
            peer = await self._peers.resolve(to)
            if peer.user == me:
                raise BadRecipient("you cannot send a message to yourself")
            if peer.service and not peer.replies:
                raise RepliesNotAccepted(peer.user, self._last_reply(peer.user))
            self._peers.check_sendable(peer, await self._peers.lookup(user=me))
            target = peer.user
        expires_at = None if lifespan_ms is None else sent_at + lifespan_ms
        spooled = await self._attachments.spool(files) if files else []
        if urgent or role is not None:
            self._oncall.record_out(
                message_id, role=role, urgent=urgent, interval_ms=interval_ms, final_ms=final_ms
            )
        uploads = self._attachments.uploads
        self._state.record_outgoing(
            message_id,
            target,
            sent_at,
            kind,
            text,
            expires_at=expires_at,
            team=team,
            notice=notice,
            also=(lambda db: uploads.insert(db, message_id, spooled)) if spooled else also,
        )
        atts = await self._upload(message_id, on_progress) if spooled else ()
        plaintext = crypto.Plaintext(
            message_id,
            me,
            target,
            sent_at,
            kind,
            text,
            expires_at=expires_at,
            urgent=urgent,
            atts=atts,
            notice=notice,
        )
        await self._send_recorded(plaintext)
        return message_id

    async def _upload(self, message_id: bytes, on_progress: Progress | None) -> tuple[Attachment, ...]:
        """Finish the uploads of a recorded message; a definitive refusal
        (a quota, a file the hub finds too large) marks it ``failed`` and
        drops its spool files, anything else leaves it ``pending``."""
        try:
            return await self._attachments.upload(message_id, on_progress)
        except RequestError as exc:
            if not exc.retryable:
                self._state.set_status(message_id, "failed")
                self._attachments.uploads.discard(message_id)
            raise

    async def send_notice(
        self, to: str, kind: str, refs: Sequence[bytes], *, team: str | None = None, to_team: bool = False
    ) -> bytes | None:
        """Send a notice (``kind`` ``read`` or ``recall``, SPEC §13.5) about
        the messages ``refs``: 1:1 to user ``to`` (our own user included:
        then to our other devices only), with ``team`` when they were team
        messages; or, with ``to_team``, to the team ``to``. Not recorded in
        the history. Returns its id, None if nobody could receive it (our
        own user without another device)."""
        if not 1 <= len(refs) <= 256:
            raise ValueError("a notice names 1 to 256 messages")
        me = self._profile.user_id
        message_id = crypto.new_message_id()
        plaintext = crypto.Plaintext(
            message_id, me, to, now_ms(), kind, "", refs=tuple(refs), team=None if to_team else team
        )
        self._state.mark_seen(me, message_id)
        try:
            await self._send_until_accepted(plaintext)
        except NoDevices:
            if to == me:
                return None
            raise
        return message_id

    async def resend_pending(self, on_progress: Progress | None = None) -> list[bytes]:
        """Resend, with their original ids, messages recorded but never seen
        accepted (first finishing their uploads, from the bytes the hub
        holds); returns the ids now accepted. A message refused for good is
        marked ``failed`` and skipped (logged); one to a peer that does not
        verify or whose key change is pending stays ``pending`` and is
        skipped (logged); connection errors and fatal errors propagate."""
        done = []
        for entry in self._state.pending_outgoing():
            try:
                await self.resend(entry, on_progress)
            except (RequestError, MessageTooLarge, UnverifiedPeer, KeyChangePending, TeamProblem) as exc:
                log.warning(
                    "pending message %s not resent: %s",
                    format_id(entry.id),
                    exc.code if isinstance(exc, RequestError) else type(exc).__name__,
                )
                continue
            done.append(entry.id)
        return done

    async def resend(self, entry: HistoryEntry, on_progress: Progress | None = None) -> None:
        """Send our recorded message ``entry`` again, with its id, its text
        and its notice, finishing its uploads first; it is then marked
        ``accepted`` (or ``failed`` on a definitive refusal). Raises like
        :meth:`send`."""
        atts = entry.attachments
        if self._attachments.uploads.rows(entry.id):
            atts = await self._upload(entry.id, on_progress)
        plaintext = crypto.Plaintext(
            entry.id,
            self._profile.user_id,
            entry.peer,
            entry.sent_at,
            entry.kind,
            entry.body,
            expires_at=entry.expires_at,
            urgent=self._oncall.override(entry.id) is not None,
            atts=atts,
            notice=entry.notice,
        )
        await self._send_recorded(plaintext)

    def _last_reply(self, peer: str) -> str | None:
        return last_notice_reply(self._state, peer)

    async def _send_recorded(self, plaintext: crypto.Plaintext) -> None:
        try:
            await self._send_until_accepted(plaintext)
        except (RequestError, MessageTooLarge, TeamProblem) as exc:
            # A definitive refusal; retryable errors, timeouts and lost
            # connections leave the message pending for resend_pending().
            if not (isinstance(exc, RequestError) and exc.retryable):
                self._state.set_status(plaintext.id, "failed")
            raise
        self._state.set_status(plaintext.id, "accepted")

    @staticmethod
    def _ttl(plaintext: crypto.Plaintext) -> int | None:
        if plaintext.expires_at is None:
            return None
        # A resend keeps the original deadline; the hub wants at least the minimum.
        return max(plaintext.expires_at - plaintext.sent_at, f.MIN_LIFESPAN_MS)

    async def _send_until_accepted(self, plaintext: crypto.Plaintext) -> f.Accepted:
        if self._router.sending(plaintext.id):
            raise ValueError(f"message {format_id(plaintext.id)} is already being sent")
        urgent = self._oncall.override(plaintext.id) if plaintext.urgent else None
        if plaintext.urgent and urgent is None:
            urgent = f.Urgent()  # not recorded (a caller of the outbox's own): the policy as is
        if is_role_id(plaintext.to_user):
            packed = crypto.pack_plaintext(plaintext, pad_to=PAD_TO)
            return await self._roles.send_role(plaintext, packed, urgent, self._ttl(plaintext))
        if is_team_id(plaintext.to_user):
            return await self._send_team(plaintext, urgent)
        packed = crypto.pack_plaintext(plaintext, pad_to=PAD_TO)
        profile = self._profile
        retrying = self._router.retry.retrying(f"resending {format_id(plaintext.id)}", refresh_devices=True)
        async for attempt in retrying:
            # Errors of the lookups and checks are final: only the hub's
            # answer to the send itself is retried.
            peer = await self._peers.lookup(user=plaintext.to_user, refresh=retrying.refresh)
            own = await self._peers.lookup(user=profile.user_id, refresh=retrying.refresh)
            self._peers.check_sendable(peer, own)
            if urgent is not None or plaintext.atts:
                # Urgent messages (SPEC §14.4) and messages with attachments
                # (§16) are always sealed.
                if not peer.devices:
                    raise NoDevices(f"{peer.user} has no active, verified device")
                targets = {d.device: d.box_pk for d in (*own.devices, *peer.devices)}
                targets.pop(profile.device_id, None)
                data = build_sealed_send(
                    packed,
                    plaintext.id,
                    profile.keys,
                    profile.device_id,
                    peer.user,
                    targets,
                    self._ttl(plaintext),
                    urgent=urgent,
                    blobs=_blobs(plaintext),
                )
            else:
                data = build_send(
                    packed, plaintext.id, profile.keys, profile.device_id, peer, own, self._ttl(plaintext)
                )
            with attempt:
                return await self._router.send_message(plaintext.id, data)
        raise AssertionError("unreachable: the policy retries until an answer or an error")

    async def _send_team(self, plaintext: crypto.Plaintext, urgent: f.Urgent | None) -> f.Accepted:
        """A team message until accepted: ``team_changed`` refreshes the
        chain and re-targets (same id), at most TEAM_CHANGED_RESENDS times."""
        team = plaintext.to_user
        for round_ in range(TEAM_CHANGED_RESENDS + 1):
            try:
                return await self._send_team_once(plaintext, urgent)
            except StaleTeamHead:
                if round_ == TEAM_CHANGED_RESENDS:
                    raise
                log.info("team %s changed: re-targeting %s", team, format_id(plaintext.id))
                await self._teams.refresh(team)
        raise AssertionError("unreachable")

    async def _send_team_once(self, plaintext: crypto.Plaintext, urgent: f.Urgent | None) -> f.Accepted:
        profile = self._profile
        team = plaintext.to_user
        retrying = self._router.retry.retrying(f"resending {format_id(plaintext.id)}", refresh_devices=True)
        async for attempt in retrying:
            view = await self._teams.ensure(team)
            self._teams.sendable(view)
            targets = await self._teams.targets(view, refresh=retrying.refresh)
            packed = crypto.pack_plaintext(replace(plaintext, head=view.head), pad_to=PAD_TO)
            data = build_team_send(
                packed,
                plaintext.id,
                profile.keys,
                profile.device_id,
                team,
                view.head,
                targets,
                self._ttl(plaintext),
                urgent,
                _blobs(plaintext),
            )
            with attempt:
                try:
                    return await self._router.send_message(plaintext.id, data)
                except MissingDevices as exc:
                    await self._teams.check_missing(view, exc.missing)  # raises TeamTampered
                    raise
        raise AssertionError("unreachable: the policy retries until an answer or an error")
