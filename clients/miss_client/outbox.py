"""The send side, without I/O: sealing a ``send`` frame and the retry policy (SPEC §6.2).

:func:`build_send` encrypts one inner plaintext for every device of the
target set *T* (SPEC §6.2, §11.2): the recipient's active devices that
their attestation vouches for with the same keys, and the sender's such
devices except the sending one (``Peer.devices`` holds exactly those;
:meth:`miss_client.client.Client.lookup` built them). The hub refuses anything else
(``missing_devices``/``unknown_device``), and :class:`RetryPolicy` bounds
how often :meth:`miss_client.client.Client.send` refreshes device lists or
waits out retryable errors before giving up.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import crypto
from protocol import frames as f
from protocol.errors import NoDevices, ProtocolError

from .errors import ClientError, MessageTooLarge
from .models import Peer

__all__ = ["RetryPolicy", "build_send"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How :meth:`~miss_client.client.Client.send` retries (and, with
    ``attempts`` only, :meth:`~miss_client.client.Client.set_status` and
    :meth:`~miss_client.client.Client.watch`).

    ``attempts``: total tries when the hub answers a retryable error
    (storage_unavailable, rate_limited), waiting its ``retry_after`` (or
    ``default_delay``), at most ``max_delay`` seconds, between tries.
    ``refreshes``: how many times a changed device list is refreshed and the
    message resent with the same id.
    """

    attempts: int = 5
    refreshes: int = 3
    default_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, exc: ProtocolError) -> float:
        """Seconds to wait before retrying after ``exc``."""
        seconds = exc.retry_after_ms / 1000 if exc.retry_after_ms else self.default_delay
        return min(max(seconds, 0.0), self.max_delay)


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
