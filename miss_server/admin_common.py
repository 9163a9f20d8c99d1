"""What the ``miss-admin`` commands share (``admin.py`` is the program):
the clock and date format, the audit trail of an administrator, finding a
clinician, the authority key, and the questions asked on stdin.

Every string that someone else typed (a device label, a name, an audit
detail) goes through :func:`shown` before it reaches the terminal in text
output; JSON output carries the data as stored.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nacl.signing

from protocol import attestation
from protocol.text import printable

from .authority import load_authority
from .config import Settings
from .store.base import AuditEvent, Device, Store, User

DEFAULT_KEY_FILE = "miss-authority.key"
DAY_MS = 86_400_000
#: Audit events read at a time when a command reads all of a user's events.
AUDIT_PAGE = 1000

#: A ``miss-admin`` command: the store (None for ``authority``), the
#: settings, the parsed arguments; returns its result, ``text`` for people.
Command = Callable[[Store, Settings, argparse.Namespace], Awaitable[dict[str, Any]]]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ms / 1000))


def shown(text: str | None, empty: str = "-") -> str:
    """Someone else's text, safe for a terminal (protocol.text.printable)."""
    return printable(text) if text else empty


def who(user: User) -> str:
    """A clinician as the administrator reads it: name and RPPS number (a
    service: name and identifier)."""
    return f"{shown(user.name)} ({'service' if user.service else 'RPPS'} {user.rpps})"


def actor() -> str:
    try:
        return f"admin:{getpass.getuser()}"
    except Exception:  # no login name (a container without passwd entry)
        return "admin"


async def record(
    store: Store, action: str, *, user_id: str | None = None, device_id: str | None = None, detail: str = ""
) -> None:
    """Append one event to the audit log, with the administrator as actor."""
    await store.audit([AuditEvent(now_ms(), actor(), action, user_id, device_id, None, detail)])


async def resolve(store: Store, user: str) -> User:
    """The clinician named by a user id or an RPPS number, or the service
    named by its ``svc:`` identifier (SPEC §17.1); raises LookupError."""
    by_rpps = user.isdigit() or user.startswith("svc:")
    found = await (store.find_user_by_rpps(user) if by_rpps else store.get_user(user))
    if found is None:
        raise LookupError(f"no clinician {user!r}")
    return found


async def user_events(store: Store, user_id: str, actions: list[str] | None = None) -> list[AuditEvent]:
    """Every audit event about ``user_id`` (with one of ``actions``), oldest first."""
    events: list[AuditEvent] = []
    while True:
        after = events[-1].seq if events else 0
        page = await store.audit_log(
            user_id=user_id, actions=actions, after_seq=after, oldest=True, limit=AUDIT_PAGE
        )
        events.extend(page)
        if len(page) < AUDIT_PAGE:
            return events


async def enrollments(store: Store, user_id: str) -> dict[str, AuditEvent]:
    """The ``device.enrolled`` event of each of the user's devices, by device
    id (when and from which address it enrolled; a device enrolled by a
    harness straight into the store has none)."""
    events = await user_events(store, user_id, ["device.enrolled"])
    return {e.device_id: e for e in events if e.device_id is not None}


def origin(device: Device, enrolled: dict[str, AuditEvent]) -> str:
    """``enrolled 2026-… from ADDRESS`` for a device."""
    event = enrolled.get(device.device_id)
    address = shown(event.address, "an unknown address") if event is not None else "an unknown address"
    return f"enrolled {iso(device.created_at)} from {address}"


# --- the authority key ----------------------------------------------------------


def key_file(args: argparse.Namespace) -> Path:
    return Path(
        getattr(args, "key_file", None) or os.environ.get("MISS_AUTHORITY_KEY_FILE") or DEFAULT_KEY_FILE
    )


def authority_key(settings: Settings, args: argparse.Namespace) -> nacl.signing.SigningKey:
    """The authority key from the key file, checked against the public key
    the hub is configured with, if any; raises ValueError."""
    path = key_file(args)
    key = load_authority(path)
    configured = settings.authority_public_key
    if configured is not None and configured != bytes(key.verify_key):
        raise ValueError(
            f"{path}: this key file is not the authority the hub is configured with (authority_key)"
        )
    return key


def attestation_of(user: User) -> attestation.Attestation | None:
    """What the user's stored attestation says (unchecked: for display)."""
    if user.attestation is None:
        return None
    try:
        return attestation.peek(user.attestation)
    except attestation.AttestationError:
        return None


def vouches(att: attestation.Attestation | None, device: Device) -> bool:
    """``att`` names ``device`` with the device's keys."""
    named = att.device(device.device_id) if att is not None else None
    return named is not None and (named.sign_pk, named.box_pk) == (device.sign_pk, device.box_pk)


def standing(user: User, now: int) -> tuple[int | None, str]:
    """(attestation end, one word for people): verified, expired, unverified, suspended."""
    att = attestation_of(user)
    until = att.not_after if att is not None else None
    if user.suspended:
        return until, "suspended"
    if until is None:
        return None, "unverified"
    return until, "verified" if until > now else "expired"


# --- questions --------------------------------------------------------------------

YES = frozenset({"y", "yes", "o", "oui"})


def ask(question: str, *, on_eof: str) -> bool:
    """Ask ``question [y/N]`` on stderr and read the answer from stdin (no
    terminal needed: ``echo y | miss-admin ...``). Anything but y/yes (or
    o/oui) is no. Raises ValueError(``on_eof``) if stdin ends first."""
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline() if sys.stdin is not None else ""
    if not answer:
        print(file=sys.stderr)
        raise ValueError(on_eof)
    if not sys.stdin.isatty():  # a terminal echoed it; a piped answer goes in the transcript
        print(answer.strip(), file=sys.stderr)
    return answer.strip().lower() in YES
