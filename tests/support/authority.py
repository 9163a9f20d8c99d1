"""The tests' verification authority (SPEC.md §11): a fixed Ed25519 key that
plays the hospital administrators' offline key.

``verify`` does what ``miss-admin verify`` does, directly on a store: it
signs an attestation of the user and their active devices and records it.
Tests that need an attestation with something wrong in it (expired, another
key, other devices) pass the corresponding argument.
"""

from __future__ import annotations

import time
from pathlib import Path

import nacl.signing

from miss_server.store.base import Store
from protocol import attestation

AUTHORITY = nacl.signing.SigningKey(bytes(range(0x60, 0x80)))
AUTHORITY_PK = bytes(AUTHORITY.verify_key)
AUTHORITY_TEXT = attestation.encode_authority_key(AUTHORITY_PK)
DAY_MS = 86_400_000

#: Budgets that tests which are not about rate limits never reach.
UNLIMITED = {
    "rate_device": "100000/s burst 100000",
    "rate_address": "100000/s burst 100000",
    "rate_auth": "100000/s burst 100000",
    "rate_failed_auth": "100000/s burst 100000",
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def write_key_file(path: Path) -> Path:
    """The authority key in the file format of ``miss-admin authority init``."""
    import base64

    path.write_text(f"# test authority\n{base64.b64encode(bytes(AUTHORITY)).decode()}\n")
    path.chmod(0o600)
    return path


async def verify(
    store: Store,
    user_id: str,
    *,
    key: nacl.signing.SigningKey = AUTHORITY,
    not_before: int | None = None,
    not_after: int | None = None,
    devices: list[attestation.AttestedDevice] | None = None,
) -> bytes:
    """Attest ``user_id`` and (unless ``devices`` is given) their active
    devices; returns the attestation recorded in the store."""
    user = await store.get_user(user_id)
    assert user is not None, user_id
    if devices is None:
        devices = [
            attestation.AttestedDevice(d.device_id, d.sign_pk, d.box_pk)
            for d in await store.user_devices(user_id)
        ]
    now = now_ms()
    att = attestation.Attestation(
        user=user.user_id,
        rpps=user.rpps,
        name=user.name,
        profession=user.profession,
        organisation=user.organisation,
        devices=tuple(devices),
        not_before=now - 60_000 if not_before is None else not_before,
        not_after=now + DAY_MS if not_after is None else not_after,
    )
    blob = attestation.sign(att, key)
    await store.set_attestation(user_id, blob)
    return blob
