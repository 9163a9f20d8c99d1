"""What the orchestrator tells the load generator workers: who the simulated
devices are and who sends to whom. Plain picklable dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DeviceSpec", "Entry", "Flow", "relay_ids"]


@dataclass(frozen=True)
class DeviceSpec:
    """One simulated device: its private keys and which clinician it belongs to."""

    index: int
    user: int  # index of its clinician
    sign_seed: bytes
    box_secret: bytes
    node: int = 0  # which hub node it connects to (multi-node)


@dataclass(frozen=True)
class Entry:
    """The public directory entry of a device, as ``lookup`` would give it."""

    user_id: str
    device_id: str
    box_pk: bytes
    #: Its Ed25519 key: what checks the signature of a sealed body (SPEC §13.3).
    sign_pk: bytes = b""


@dataclass(frozen=True)
class Flow:
    """Messages from device ``sender`` to clinician ``to_user``, sealed for
    ``targets``: every device of the recipient and the sender's own other
    devices (SPEC §6.2). A flow's sender and targets live in one worker, so
    that a closed loop can wait for its own deliveries."""

    sender: int
    to_user: int
    targets: tuple[int, ...] = field(default_factory=tuple)
    #: ``delivered`` receipts one message yields on a hub: one per device of
    #: the recipient, for each device of the sender's clinician (SPEC §6.5)
    receipts: int = 0
    #: A team message (SPEC §13.3): ``to_user`` is then the index of a team
    #: (the worker's ``teams``: its id and current head), the plaintext is
    #: sealed once as a body and each of ``targets`` gets a 72-byte wrap of
    #: its key. Hub only (the relay has no teams).
    team: bool = False


def relay_ids(index: int, user: int) -> tuple[str, str]:
    """Ids the devices use on the relay, shaped like the hub's."""
    return f"u_{user:016x}", f"d_{index:016x}"
