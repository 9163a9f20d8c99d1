"""The tests' verification authority (SPEC.md §11): a fixed Ed25519 key that
plays the hospital administrators' offline key.

``verify`` does what ``miss-admin verify`` does, directly on a store: it
signs an attestation of the user and their active devices and records it.
Tests that need an attestation with something wrong in it (expired, another
key, other devices) pass the corresponding argument.
"""

from __future__ import annotations

from pathlib import Path

import nacl.signing

from miss_server.authority import LEEWAY_MS, attest, key_file_text
from miss_server.store.base import Store
from protocol import attestation
from tests.support.clock import DAY_MS, now_ms

AUTHORITY = nacl.signing.SigningKey(bytes(range(0x60, 0x80)))
AUTHORITY_PK = bytes(AUTHORITY.verify_key)
AUTHORITY_TEXT = attestation.encode_authority_key(AUTHORITY_PK)

#: Budgets that tests which are not about rate limits never reach.
UNLIMITED = {
    "rate_device": "100000/s burst 100000",
    "rate_address": "100000/s burst 100000",
    "rate_auth": "100000/s burst 100000",
    "rate_failed_auth": "100000/s burst 100000",
    "rate_ack": "100000/s burst 100000",
    "rate_search": "100000/s burst 100000",
}


def write_key_file(path: Path) -> Path:
    """The authority key in the file format of ``miss-admin authority init``."""
    path.write_text(key_file_text(AUTHORITY))
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
    devices, as ``miss-admin verify`` does, valid for a day unless the
    bounds are given; returns the attestation recorded in the store."""
    now = now_ms()
    start = now - LEEWAY_MS if not_before is None else not_before
    end = now + DAY_MS if not_after is None else not_after
    await attest(
        store, user_id, key, valid_ms=end - start - LEEWAY_MS, now=start + LEEWAY_MS, devices=devices
    )
    user = await store.get_user(user_id)
    assert user is not None and user.attestation is not None
    return user.attestation
