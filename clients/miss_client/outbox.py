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
"""

from __future__ import annotations

import logging

from protocol import crypto
from protocol import frames as f
from protocol.errors import NoDevices, RequestError

from .errors import BadRecipient, ClientError, KeyChangePending, MessageTooLarge, UnverifiedPeer
from .models import Peer, format_id, now_ms
from .peers import Peers
from .profile import Profile
from .requests import Router
from .retry import RetryPolicy
from .state import LocalState

__all__ = ["Outbox", "RetryPolicy", "build_send"]

log = logging.getLogger("miss_client")


def build_send(
    plaintext: bytes, message_id: bytes, keys: crypto.DeviceKeys, own_device: str, peer: Peer, own: Peer
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
    if not peer.devices or not targets:
        raise NoDevices(f"{peer.user} has no active, verified device")
    if len(targets) > f.MAX_RECIPIENT_DEVICES:
        raise ClientError(f"more than {f.MAX_RECIPIENT_DEVICES} devices to encrypt for")
    envs = {device: crypto.seal(plaintext, keys, box_pk) for device, box_pk in targets.items()}
    data = f.encode(f.Send(id=message_id, sender=own_device, to=peer.user, envs=envs))
    if len(data) > f.MAX_FRAME_BYTES:
        raise MessageTooLarge(
            f"message too long: {len(data)} bytes once encrypted for {len(envs)} devices "
            f"(limit {f.MAX_FRAME_BYTES})"
        )
    return data


class Outbox:
    """The send side of one connection (see the module docstring): frames
    through ``router``, recipients through ``peers``, history in ``state``."""

    def __init__(self, router: Router, peers: Peers, profile: Profile, state: LocalState) -> None:
        self._router = router
        self._peers = peers
        self._profile = profile
        self._state = state

    async def send(self, to: str, text: str, message_id: bytes | None = None, *, kind: str = "text") -> bytes:
        """Record ``text`` to ``to`` (an RPPS number or user id), send it and
        return its id once accepted; raises like
        :meth:`miss_client.client.Client.send`, which has the details."""
        if not text.strip():
            raise ValueError("empty message: nothing to send")
        if message_id is None:
            message_id = crypto.new_message_id()
        elif len(message_id) != 16:
            raise ValueError("a message id is 16 bytes")
        me = self._profile.user_id
        peer = await self._peers.resolve(to)
        if peer.user == me:
            raise BadRecipient("you cannot send a message to yourself")
        self._peers.check_sendable(peer, await self._peers.lookup(user=me))
        plaintext = crypto.Plaintext(message_id, me, peer.user, now_ms(), kind, text)
        self._state.record_outgoing(message_id, peer.user, plaintext.sent_at, kind, text)
        await self._send_recorded(plaintext)
        return message_id

    async def resend_pending(self) -> list[bytes]:
        """Resend, with their original ids, messages recorded but never seen
        accepted; returns the ids now accepted. A message refused for good is
        marked ``failed`` and skipped (logged); one to a peer that does not
        verify or whose key change is pending stays ``pending`` and is
        skipped (logged); connection errors and fatal errors propagate."""
        done = []
        for entry in self._state.pending_outgoing():
            plaintext = crypto.Plaintext(
                entry.id, self._profile.user_id, entry.peer, entry.sent_at, entry.kind, entry.body
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
                self._state.set_status(plaintext.id, "failed")
            raise
        self._state.set_status(plaintext.id, "accepted")

    async def _send_until_accepted(self, plaintext: crypto.Plaintext) -> f.Accepted:
        if self._router.sending(plaintext.id):
            raise ValueError(f"message {format_id(plaintext.id)} is already being sent")
        packed = crypto.pack_plaintext(plaintext)
        profile = self._profile
        retrying = self._router.retry.retrying(f"resending {format_id(plaintext.id)}", refresh_devices=True)
        async for attempt in retrying:
            # Errors of the lookups and checks are final: only the hub's
            # answer to the send itself is retried.
            peer = await self._peers.lookup(user=plaintext.to_user, refresh=retrying.refresh)
            own = await self._peers.lookup(user=profile.user_id, refresh=retrying.refresh)
            self._peers.check_sendable(peer, own)
            data = build_send(packed, plaintext.id, profile.keys, profile.device_id, peer, own)
            with attempt:
                return await self._router.send_message(plaintext.id, data)
        raise AssertionError("unreachable: the policy retries until an answer or an error")
