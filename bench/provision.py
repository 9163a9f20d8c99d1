"""Invite the simulated clinicians: users and enrollment codes written in
bulk through the Store API of the very store the hub uses (as
``miss-admin invite`` does, one at a time). The devices then enroll with
those codes over WebSocket, like real clients (see ``loadgen``).
"""

from __future__ import annotations

import asyncio
import secrets
import time

from miss_server.app import build_store, embedded_store
from miss_server.codes import code_hash, new_code
from miss_server.config import load_settings

__all__ = ["invite_all"]

CHUNK = 256
CODE_TTL_MS = 6 * 3_600_000


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
