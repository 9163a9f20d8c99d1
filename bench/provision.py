"""Invite and verify the simulated clinicians, in bulk, through the Store
API of the very store the hub uses.

:func:`invite_all` writes users and enrollment codes (as ``miss-admin
invite`` does, one at a time); the devices then enroll with those codes over
WebSocket, like real clients (see ``loadgen``). :func:`verify_all` then
does what ``miss-admin verify`` does for each of them: it signs, with the
run's authority key, an attestation of the user and their enrolled devices
(SPEC §11) and records it, so that the hub lets them send and be sent to.
:func:`attestations` reads back the signed attestations (a clinician signs
team records with their own, SPEC §13.2), and :func:`stored_bytes` what the
store holds for given messages.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence

import nacl.signing

from miss_server.app import build_store, embedded_store
from miss_server.authority import attest
from miss_server.codes import code_hash, new_code
from miss_server.config import load_settings
from miss_server.store.base import Store

__all__ = ["attestations", "invite_all", "stored_bytes", "verify_all"]

CHUNK = 256
CODE_TTL_MS = 6 * 3_600_000
#: Validity of the bench's attestations: far more than any run.
ATTESTATION_TTL_MS = 2 * 86_400_000


def invite_all(store_url: str, devices_per_user: list[int]) -> tuple[list[str], list[list[str]]]:
    """Create one verified clinician per entry and one enrollment code per
    device; returns (user ids, codes per user)."""
    return asyncio.run(_invite_all(store_url, devices_per_user))


async def _invite_all(store_url: str, devices_per_user: list[int]) -> tuple[list[str], list[list[str]]]:
    settings = load_settings(store=store_url)
    store = build_store(settings)
    if embedded_store(settings):
        await store.migrate()
    await store.open()
    try:
        now = time.time_ns() // 1_000_000
        # Random 11-digit RPPS numbers, consecutive from a random base: unique in a fresh store.
        base = 10_000_000_000 + secrets.randbelow(80_000_000_000)
        users: list[str] = []
        codes: list[list[str]] = []
        n = len(devices_per_user)
        for start in range(0, n, CHUNK):
            batch = range(start, min(n, start + CHUNK))
            created = await asyncio.gather(
                *(
                    store.create_user(f"Dr Bench {i}", f"{base + i:011d}", "médecin", "CHRU Bench", now)
                    for i in batch
                )
            )
            batch_codes = [[new_code() for _ in range(devices_per_user[i])] for i in batch]
            await asyncio.gather(
                *(
                    store.add_enrollment_code(user.user_id, code_hash(code), now + CODE_TTL_MS)
                    for user, user_codes in zip(created, batch_codes, strict=True)
                    for code in user_codes
                )
            )
            users += [u.user_id for u in created]
            codes += batch_codes
        return users, codes
    finally:
        await store.close()


def verify_all(store_url: str, user_ids: Sequence[str], signing_key: nacl.signing.SigningKey) -> int:
    """Attest every user with their active (enrolled) devices, signed with
    the authority ``signing_key``; returns the number of devices attested."""
    return asyncio.run(_verify_all(store_url, list(user_ids), signing_key))


async def _verify_one(store: Store, user_id: str, key: nacl.signing.SigningKey, now: int) -> int:
    att = await attest(store, user_id, key, valid_ms=ATTESTATION_TTL_MS, now=now)
    return len(att.devices)


async def _verify_all(store_url: str, user_ids: list[str], key: nacl.signing.SigningKey) -> int:
    settings = load_settings(store=store_url)
    store = build_store(settings)
    await store.open()
    try:
        now = time.time_ns() // 1_000_000
        attested = 0
        for start in range(0, len(user_ids), CHUNK):
            batch = user_ids[start : start + CHUNK]
            attested += sum(await asyncio.gather(*(_verify_one(store, u, key, now) for u in batch)))
        return attested
    finally:
        await store.close()


def attestations(store_url: str, user_ids: Sequence[str]) -> dict[str, bytes]:
    """The stored attestation (signed bytes) of each of ``user_ids`` that has one."""
    return asyncio.run(_attestations(store_url, list(user_ids)))


async def _attestations(store_url: str, user_ids: list[str]) -> dict[str, bytes]:
    store = build_store(load_settings(store=store_url))
    await store.open()
    try:
        users = await asyncio.gather(*(store.get_user(u) for u in user_ids))
        return {u.user_id: u.attestation for u in users if u is not None and u.attestation is not None}
    finally:
        await store.close()


def stored_bytes(store_url: str, sender_user: str, message_ids: Sequence[bytes]) -> list[int]:
    """Bytes the store holds for each message (its rows, and a team
    message's body, stored once), as the store itself counts them
    (``Store.stored_bytes``); the messages must not be acked yet."""
    return asyncio.run(_stored_bytes(store_url, sender_user, list(message_ids)))


async def _stored_bytes(store_url: str, sender_user: str, message_ids: list[bytes]) -> list[int]:
    store = build_store(load_settings(store=store_url))
    await store.open()
    try:
        return [int(await store.stored_bytes(sender_user, mid)) for mid in message_ids]
    finally:
        await store.close()
