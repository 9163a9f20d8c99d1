"""``miss-admin authority rotate | reissue | retire``: replacing the
verification authority key without re-enrolling anyone (SPEC §15).

* ``rotate --key-file OLD --new-key-file NEW [--overlap-days 30]`` creates
  NEW (mode 600, never over an existing file), signs the statement "NEW
  follows OLD from now, OLD counts until now + overlap" with both keys, and
  prints the new public key, the statement and the two configuration lines
  every hub node needs (``authority_key`` = NEW, ``authority_rotations`` =
  the chain so far plus this statement). Needs no store.
* ``reissue --key-file NEW [--previous-key OLD_PUBLIC ...]`` re-signs under
  NEW every stored attestation that an older key of the chain signed (the
  configured ``authority_rotations`` while each counts, plus every
  ``--previous-key``): same identity, devices and dates, a new signer.
* ``retire --statement TEXT`` counts the stored attestations that still
  depend on the statement's old key; exit status 1 while any does, so that
  an operator knows when letting the key lapse harms nobody.

Each re-issue is written to the audit log (``account.verified``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import nacl.signing

from protocol import attestation, rotation

from .admin_common import DAY_MS, iso, key_file, record
from .authority import create_key_file, load_authority
from .config import Settings
from .store.base import Store

__all__ = ["ROTATION_ACTIONS", "add_rotation_arguments", "cmd_reissue", "cmd_retire", "cmd_rotate"]

#: The ``authority`` actions this module implements.
ROTATION_ACTIONS = ("rotate", "reissue", "retire")


def add_rotation_arguments(auth: argparse.ArgumentParser) -> None:
    """The options of ``authority rotate | reissue | retire`` (the parser
    of ``authority`` already has ``action`` and ``--key-file``)."""
    auth.add_argument("--new-key-file", help="rotate: the new authority key file to create (mode 600)")
    auth.add_argument(
        "--overlap-days",
        type=float,
        default=30,
        help="rotate: how long the old key still counts (default 30 days)",
    )
    auth.add_argument(
        "--previous-key",
        action="append",
        metavar="OLD_PUBLIC_B64",
        help="reissue: an older public key whose attestations to re-sign (repeatable; "
        "the configured authority_rotations are taken too)",
    )
    auth.add_argument(
        "--statement", help="retire: the rotation statement (base64) whose old key should lapse"
    )


def _now() -> int:
    return time.time_ns() // 1_000_000


async def cmd_rotate(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Create the new key and the statement; raises ValueError."""
    if not args.new_key_file:
        raise ValueError("authority rotate needs --new-key-file NEW (the file to create)")
    if not 0 < args.overlap_days <= 3650:
        raise ValueError("--overlap-days must be between 0 and 3650")
    old_path = key_file(args)
    old = load_authority(old_path)
    old_pk = bytes(old.verify_key)
    configured = settings.authority_public_key
    if configured is not None and configured != old_pk:
        raise ValueError(
            f"{old_path} is not the key the hub is configured with (authority_key): rotate from the "
            "current key, so that the chain of statements stays unbroken"
        )
    new = nacl.signing.SigningKey.generate()
    now = _now()
    statement = rotation.sign(old, new, now, now + int(args.overlap_days * DAY_MS))
    chain = [*settings.authority_rotations, rotation.encode_text(statement)]
    # Clients check at most MAX_STATEMENTS; the oldest go first (their keys lapsed long ago).
    chain = chain[-rotation.MAX_STATEMENTS :]
    new_path = Path(args.new_key_file)
    create_key_file(new_path, new)
    new_pk = bytes(new.verify_key)
    new_text = attestation.encode_authority_key(new_pk)
    statement_text = rotation.encode_text(statement)
    until = now + int(args.overlap_days * DAY_MS)
    toml_list = "[" + ", ".join(f'"{t}"' for t in chain) + "]"
    lines = [
        f"wrote {new_path} (mode 600)",
        f"new public key: {new_text}",
        f"fingerprint: {attestation.authority_fingerprint(new_pk)}",
        f"the old key ({attestation.authority_fingerprint(old_pk)}) counts until {iso(until)}",
        f"statement: {statement_text}",
        "configuration of every hub node (TOML), then a rolling restart:",
        f'authority_key = "{new_text}"',
        f"authority_rotations = {toml_list}",
        f"then: miss-admin authority reissue --key-file {new_path}",
    ]
    return {
        "new_key_file": str(new_path),
        "public_key": new_text,
        "fingerprint": attestation.authority_fingerprint(new_pk),
        "statement": statement_text,
        "at": now,
        "until": until,
        "authority_rotations": chain,
        "text": "\n".join(lines),
    }


def _previous_keys(settings: Settings, args: argparse.Namespace, now: int) -> dict[bytes, str]:
    """Older keys whose attestations may be re-signed, with where each comes
    from: the configured chain's keys while they count, and ``--previous-key``."""
    keys: dict[bytes, str] = {}
    held = settings.authority_keys
    if held is not None:
        for p in held.previous:
            if now <= p.until:
                keys[p.key] = f"authority_rotations (counts until {iso(p.until)})"
    for text in args.previous_key or ():
        keys[attestation.decode_authority_key(text)] = "--previous-key"
    return keys


async def cmd_reissue(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Re-sign under the key of ``--key-file`` every attestation an older key signed."""
    new = load_authority(key_file(args))
    new_pk = bytes(new.verify_key)
    configured = settings.authority_public_key
    if configured is not None and configured != new_pk:
        raise ValueError(
            f"{key_file(args)} is not the key the hub is configured with (authority_key): "
            "reissue with the newest key"
        )
    now = _now()
    older = _previous_keys(settings, args, now)
    older.pop(new_pk, None)
    if not older:
        raise ValueError("no older key: configure authority_rotations or name one with --previous-key")
    reissued: list[str] = []
    current = other = 0
    for user in await store.list_users():
        if user.attestation is None:
            continue
        try:
            attestation.check_signature(user.attestation, new_pk)
        except attestation.AttestationError:
            pass
        else:
            current += 1
            continue
        signer = next((k for k in older if _signed_by(user.attestation, k)), None)
        if signer is None:
            other += 1
            continue
        att = attestation.peek(user.attestation)
        await store.set_attestation(user.user_id, attestation.sign(att, new))
        await record(
            store,
            "account.verified",
            user_id=user.user_id,
            detail=f"re-signed under the new authority key {attestation.authority_fingerprint(new_pk)} "
            f"(was {attestation.authority_fingerprint(signer)}), until {iso(att.not_after)}",
        )
        reissued.append(user.user_id)
    lines = [f"re-signed {len(reissued)} attestation(s) under {attestation.authority_fingerprint(new_pk)}"]
    lines += [f"  {u}" for u in reissued]
    lines.append(f"{current} already signed by the new key")
    if other:
        lines.append(f"{other} signed by no key of the chain (left alone: verify them again)")
    return {
        "reissued": reissued,
        "already_current": current,
        "unknown_signer": other,
        "text": "\n".join(lines),
    }


def _signed_by(blob: bytes, key: bytes) -> bool:
    try:
        attestation.check_signature(blob, key)
    except attestation.AttestationError:
        return False
    return True


async def cmd_retire(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """How many stored attestations still depend on the statement's old key
    (``exit`` 1 while any does)."""
    if not args.statement:
        raise ValueError("authority retire needs --statement TEXT (as authority rotate printed it)")
    try:
        statement = rotation.verify(rotation.decode_text(args.statement))
    except rotation.RotationError as exc:
        raise ValueError(f"not a valid rotation statement: {exc}") from None
    remaining: list[str] = []
    for user in await store.list_users():
        if user.attestation is not None and _signed_by(user.attestation, statement.old):
            remaining.append(user.user_id)
    old_fp = attestation.authority_fingerprint(statement.old)
    now = _now()
    lapse = "has lapsed" if now > statement.until else f"counts until {iso(statement.until)}"
    lines = [f"{len(remaining)} attestation(s) still depend on the old key {old_fp} (it {lapse})"]
    lines += [f"  {user_id}" for user_id in remaining]
    if remaining:
        lines.append("run miss-admin authority reissue --key-file NEW before it lapses")
    else:
        lines.append("nothing depends on it: once it lapses, remove its statement's key file")
    return {
        "old_key": attestation.encode_authority_key(statement.old),
        "until": statement.until,
        "remaining": len(remaining),
        "users": remaining,
        "exit": 1 if remaining else 0,
        "text": "\n".join(lines),
    }
