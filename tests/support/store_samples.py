"""Sample clinicians and messages for the Store tests (conformance and
PostgreSQL-specific), written straight through the Store API."""

from __future__ import annotations

from miss_server.codes import code_hash
from miss_server.config import Settings
from miss_server.store.base import NewMessage, Store
from tests.support.authority import verify

#: The hub's default cap on a clinician's active devices, for enrollments made straight on a store.
MAX_DEVICES: int = Settings.model_fields["max_devices"].default

NOW = 1_800_000_000_000
DAY = 86_400_000


async def user_with_devices(
    store: Store, rpps: str, n: int, organisation: str = "CHRU", *, attested: bool = True
) -> tuple[str, list[str]]:
    """A clinician with ``n`` enrolled devices, attested by the tests'
    authority unless ``attested`` is false; returns (user id, device ids)."""
    user = await store.create_user(f"Dr {rpps}", rpps, "médecin", organisation, NOW)
    devices = []
    for i in range(n):
        code = f"CODE-{rpps}-{i}"
        await store.add_enrollment_code(user.user_id, code_hash(code), NOW + DAY)
        sign_pk = bytes([i]) + rpps.encode().ljust(31, b"k")
        d = await store.enroll_device(code_hash(code), sign_pk, b"b" * 32, f"dev{i}", NOW + i, MAX_DEVICES)
        devices.append(d.device_id)
    if attested and devices:
        await verify(store, user.user_id)
    return user.user_id, devices


def message(mid: int, sender: str, sender_dev: str, to: str, targets: list[str], ts: int = NOW) -> NewMessage:
    """Message number ``mid`` with one recognisable envelope per target device."""
    return NewMessage(
        message_id=mid.to_bytes(16, "big"),
        sender_user=sender,
        sender_device=sender_dev,
        recipient_user=to,
        envelopes={d: f"env-{mid}-{d}".encode() for d in targets},
        ts=ts,
        expires_at=ts + DAY,
    )
