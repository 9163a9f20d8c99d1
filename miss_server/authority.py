"""The administrators' side of the verification authority (SPEC.md §11.1).

Only ``miss-admin`` (and harnesses acting as an administrator: the bench,
the tests) use this module: the hub itself never holds the authority key.
:func:`load_authority` reads the key file that ``miss-admin authority
init`` writes; :func:`attest` signs a clinician's attestation and records it
in the store.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import nacl.signing

from protocol import attestation

from .store.base import Store

__all__ = ["KEY_FILE_HEADER", "LEEWAY_MS", "attest", "key_file_text", "load_authority"]

KEY_FILE_HEADER = "# MiSS verification authority key (Ed25519 seed, base64). Keep it secret and off the hub."
#: An attestation starts this long before it is signed, for clients whose clock is behind.
LEEWAY_MS = 60_000


def load_authority(path: Path) -> nacl.signing.SigningKey:
    """Read an authority key file; raises ValueError with a message for people."""
    try:
        lines = [x.strip() for x in path.read_text().splitlines() if x.strip() and not x.startswith("#")]
        seed = base64.b64decode(lines[-1], validate=True)
    except FileNotFoundError:
        raise ValueError(
            f"no authority key file {path} (create one with `miss-admin authority init`)"
        ) from None
    except (OSError, IndexError, ValueError) as exc:
        raise ValueError(f"{path} is not an authority key file ({type(exc).__name__})") from None
    if len(seed) != 32:
        raise ValueError(f"{path} is not an authority key file")
    return nacl.signing.SigningKey(seed)


def key_file_text(key: nacl.signing.SigningKey) -> str:
    """The text of a key file for ``key`` (the caller creates the file, mode 600)."""
    return f"{KEY_FILE_HEADER}\n{base64.b64encode(bytes(key)).decode()}\n"


async def attest(
    store: Store,
    user_id: str,
    key: nacl.signing.SigningKey,
    *,
    valid_ms: int,
    now: int | None = None,
    devices: list[attestation.AttestedDevice] | None = None,
) -> attestation.Attestation:
    """Sign an attestation of ``user_id`` and their active devices (or of
    ``devices``), valid from a minute ago for ``valid_ms``, and record it.
    Raises LookupError for an unknown user."""
    user = await store.get_user(user_id)
    if user is None:
        raise LookupError(f"no clinician {user_id!r}")
    if devices is None:
        devices = [
            attestation.AttestedDevice(d.device_id, d.sign_pk, d.box_pk)
            for d in await store.user_devices(user_id)
        ]
    now = time.time_ns() // 1_000_000 if now is None else now
    att = attestation.Attestation(
        user=user.user_id,
        rpps=user.rpps,
        name=user.name,
        profession=user.profession,
        organisation=user.organisation,
        devices=tuple(devices),
        not_before=now - LEEWAY_MS,
        not_after=now + valid_ms,
    )
    await store.set_attestation(user_id, attestation.sign(att, key))
    return att
