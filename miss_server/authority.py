"""The administrators' side of the verification authority (SPEC.md §11.1).

Only ``miss-admin`` (and harnesses acting as an administrator: the bench,
the tests) use this module: the hub itself never holds the authority key.
:func:`create_key_file` writes the key file that ``miss-admin authority
init`` makes and :func:`load_authority` reads it; :func:`attest` signs a
clinician's attestation and records it in the store, :func:`reissue` signs
a previous one again for fewer devices or a new validity period.

The store is the hub's, so what it holds is not trusted here either:
:func:`signed_attestation` gives back a stored attestation only if the
authority signed it, so that a device a hostile hub (or anyone who can write
to its database) slipped into a stored attestation is never carried over
into a new one.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import time
from pathlib import Path

import nacl.exceptions
import nacl.signing

from protocol import attestation, rotation

from .store.base import Store

__all__ = [
    "KEY_FILE_HEADER",
    "LEEWAY_MS",
    "attest",
    "create_key_file",
    "key_file_text",
    "load_authority",
    "reissue",
    "signed_attestation",
]

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


def create_key_file(path: Path, key: nacl.signing.SigningKey) -> None:
    """Write ``key`` to a new file ``path``, mode 600, creating its directory
    (mode 700) if it does not exist. Never replaces a file. Raises ValueError,
    with a message for people, when the file exists or cannot be written."""
    parent = path.parent
    if not parent.exists():
        try:
            parent.mkdir(mode=0o700, parents=True)
            os.chmod(parent, 0o700)  # mkdir's mode is filtered by the umask
        except OSError as exc:
            raise ValueError(
                f"cannot create the directory {parent} for the authority key: {exc.strerror or exc} "
                "(create it, mode 700, or choose another --key-file)"
            ) from None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ValueError(f"{path} exists already; refusing to replace an authority key") from None
    except OSError as exc:
        raise ValueError(f"cannot write the authority key file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(key_file_text(key))


def signed_attestation(
    blob: bytes | None, authority_pk: bytes | rotation.AuthorityKeys
) -> attestation.Attestation | None:
    """The attestation in ``blob`` if the authority signed it, whatever its
    dates (an expired one still says which devices were confirmed); None
    for no blob, a malformed one or another signer. With the keys of a
    rotation, an older key counts only until its ``until`` (SPEC §15)."""
    if blob is None:
        return None
    try:
        return attestation.check_signature(blob, authority_pk, time.time_ns() // 1_000_000)
    except attestation.AttestationError:
        return None


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


async def reissue(
    store: Store,
    previous: attestation.Attestation,
    key: nacl.signing.SigningKey,
    *,
    valid_ms: int,
    devices: list[attestation.AttestedDevice],
    now: int | None = None,
) -> attestation.Attestation:
    """Sign the identity of ``previous`` (user, RPPS, name, profession,
    organisation: as the authority vouched for it, not as the store has it
    now) for ``devices``, valid from a minute ago for ``valid_ms``, and
    record it as the user's attestation. Raises LookupError for a user the
    store no longer has."""
    now = time.time_ns() // 1_000_000 if now is None else now
    att = dataclasses.replace(
        previous, devices=tuple(devices), not_before=now - LEEWAY_MS, not_after=now + valid_ms
    )
    await store.set_attestation(previous.user, attestation.sign(att, key))
    return att
