"""``miss-notify``: notices (SPEC §17.3) from an integration server, without
a person at the keyboard.

Usage::

    miss-notify enroll --hub URL --code CODE --authority KEY --profile DIR
    miss-notify send --profile DIR (--rpps R | --user U | --role R) --key K --title T
                     [--event admission] [--at ISO8601] [--field "Patient=DUPONT Jean"]...
                     [--reply TEXT] [--text TEXT]
    miss-notify resend --profile DIR

The passphrase of the profile comes from ``--passphrase-file FILE`` (its
first line) or ``$MISS_PASSPHRASE``; ``miss-notify`` never prompts. Every
command prints one JSON object on stdout: ``send`` prints ``{"id":
"<uuid>", "dup": false}`` (``dup`` true when the key was sent before: then
nothing new reaches anyone), ``resend`` ``{"resent": [...], "pending": [...]}``,
``enroll`` ``{"user", "device", "authority_fingerprint"}``; a failure prints
``{"error": CODE, "message": TEXT}`` (and ``"id"`` when the notice was
recorded), and a line on stderr.

Exit status: 0 done; 2 a usage or profile problem (bad arguments, no
passphrase, wrong passphrase, no profile); 3 refused (unknown RPPS, a
recipient or a profile that is not verified, a key change to accept, a
service that does not accept replies, anything else the hub refuses for
good: the notice is ``failed``, retrying the same way will not help); 4
the hub is unreachable or busy (no answer, lost connection, rate limited):
the notice stays ``pending`` if it was recorded. Run the same ``send``
again, with the same ``--key``: it is idempotent, and resends the recorded
notice with its id. ``resend`` retries every pending message of the
profile. 1 is anything else.

One profile is one device of a service account (``miss-admin service
create``); each ``miss-notify`` command holds the profile's session lock
while connected, so concurrent commands on one profile take turns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from protocol.errors import ProtocolError, RequestError
from protocol.notices import EVENTS, Notice, NoticeError

from .cli_common import BUSY_TRIES, busy_wait
from .client import Client
from .connection import enroll
from .errors import (
    ClientError,
    ConnectionFailed,
    ConnectionLost,
    KeyChangePending,
    ProfileError,
    RepliesNotAccepted,
    RequestTimeout,
    UnverifiedPeer,
)
from .models import format_id
from .profile import KDF_INTERACTIVE, KDF_MODERATE, Profile, load_profile
from .reconnect import session_lock

__all__ = ["EXIT_OK", "EXIT_REFUSED", "EXIT_UNREACHABLE", "EXIT_USAGE", "main"]

PROG = "miss-notify"
EXIT_OK = 0
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4


class Failure(Exception):
    """A command's failure: its exit status, a code and a message for the JSON."""

    def __init__(self, status: int, code: str, message: str, message_id: bytes | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message_id = message_id


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


# --- arguments ------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        emit({"error": "usage", "message": message})
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Send notices (SPEC §17.3) from an integration server; JSON output.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--profile", type=Path, required=True, help="the profile directory")
        q.add_argument(
            "--passphrase-file",
            type=Path,
            help="a file whose first line is the passphrase (else $MISS_PASSPHRASE)",
        )

    e = sub.add_parser("enroll", help="enroll this server as a device of a service account")
    common(e)
    e.add_argument("--hub", required=True, help="the hub's URL (wss://...)")
    e.add_argument("--code", required=True, help="the enrollment code from miss-admin service create")
    e.add_argument("--authority", required=True, help="the verification authority's public key (base64)")
    e.add_argument("--label", help="this device's label (default: the host name)")
    e.add_argument("--kdf", choices=("interactive", "moderate"), default="moderate", help=argparse.SUPPRESS)

    s = sub.add_parser("send", help="send one notice; idempotent by --key")
    common(s)
    to = s.add_mutually_exclusive_group(required=True)
    to.add_argument("--rpps", help="the recipient's RPPS number (or a service's svc: identifier)")
    to.add_argument("--user", help="the recipient's user id (u_...)")
    to.add_argument("--role", help="a role id (r_...): sealed for whoever holds it now")
    s.add_argument("--key", required=True, help="idempotency key, 1-200 characters (e.g. the HL7 MSH-10)")
    s.add_argument("--title", required=True, help="« Admission de M. DUPONT Jean »")
    s.add_argument("--event", default="other", help=f"one of {', '.join(EVENTS)} (default: other)")
    s.add_argument("--at", help="when the event happened, ISO 8601 (default: now; no offset: local time)")
    s.add_argument(
        "--field", action="append", default=[], metavar="LABEL=VALUE", help="a line of the card, in order"
    )
    s.add_argument("--reply", help="whom to call instead of replying (« Bureau des admissions : 01 ... »)")
    s.add_argument("--text", help="the plain-text body (default: the notice rendered as text)")

    r = sub.add_parser("resend", help="resend the profile's pending messages")
    common(r)
    return p


def read_passphrase(args: argparse.Namespace) -> str:
    """The first line of ``--passphrase-file``, else ``$MISS_PASSPHRASE``;
    never a prompt."""
    if args.passphrase_file is not None:
        try:
            text: str = Path(args.passphrase_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise Failure(EXIT_USAGE, "usage", f"cannot read the passphrase file: {exc}") from None
        lines = text.splitlines()
        if not lines or not lines[0]:
            raise Failure(EXIT_USAGE, "usage", "the passphrase file is empty")
        return lines[0]
    env = os.environ.get("MISS_PASSPHRASE")
    if env is None:
        raise Failure(
            EXIT_USAGE, "usage", "no passphrase: pass --passphrase-file FILE or set MISS_PASSPHRASE"
        )
    return env


def parse_at(text: str | None) -> int:
    """``--at`` in ms since the epoch (now if absent); without an offset the
    time is the machine's local time."""
    if text is None:
        return int(datetime.now().timestamp() * 1000)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise Failure(EXIT_USAGE, "usage", f"--at: not an ISO 8601 date and time: {text!r}") from None
    return int(when.timestamp() * 1000)


def parse_fields(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    fields = []
    for item in items:
        label, sep, value = item.partition("=")
        if not sep or not label.strip():
            raise Failure(EXIT_USAGE, "usage", f"--field: expected LABEL=VALUE, got {item!r}")
        fields.append((label.strip(), value.strip()))
    return tuple(fields)


def build_notice(args: argparse.Namespace) -> Notice:
    try:
        return Notice(args.title, args.event, parse_at(args.at), parse_fields(args.field), args.reply or None)
    except NoticeError as exc:
        raise Failure(EXIT_USAGE, "usage", str(exc)) from None


# --- running ----------------------------------------------------------------------


def open_profile(args: argparse.Namespace) -> Profile:
    return load_profile(args.profile, read_passphrase(args))


@asynccontextmanager
async def connected(profile: Profile) -> AsyncIterator[Client]:
    """The profile's connection, holding its session lock; a node that
    answers 503 (draining) is tried again, as miss-chat does."""

    def waiting() -> None:
        print(f"{PROG}: waiting for another command using this profile to finish", file=sys.stderr)

    async with session_lock(profile.directory, on_wait=waiting), AsyncExitStack() as stack:
        for attempt in range(1, BUSY_TRIES + 1):
            try:
                client = await stack.enter_async_context(Client.connect(profile))
                break
            except ConnectionFailed:
                if attempt == BUSY_TRIES:
                    raise
                await asyncio.sleep(busy_wait(attempt))
        yield client


async def cmd_enroll(args: argparse.Namespace) -> dict[str, Any]:
    passphrase = read_passphrase(args)
    kdf = KDF_INTERACTIVE if args.kdf == "interactive" else KDF_MODERATE
    label = args.label if args.label is not None else socket.gethostname()[:64]
    profile = await enroll(
        args.hub, args.code, args.profile, passphrase, label, authority=args.authority, kdf=kdf
    )
    return {
        "user": profile.user_id,
        "device": profile.device_id,
        "authority_fingerprint": profile.authority_fingerprint,
    }


async def cmd_send(args: argparse.Namespace) -> dict[str, Any]:
    notice = build_notice(args)
    profile = open_profile(args)
    async with connected(profile) as client:
        dup = client.notice_id(args.key) is not None
        try:
            message_id = await client.send_notice(
                notice, key=args.key, user=args.user, rpps=args.rpps, role=args.role, text=args.text
            )
        except Exception as exc:
            failure = classify(exc)
            failure.message_id = client.notice_id(args.key)  # recorded: pending, or failed
            raise failure from exc
    return {"id": format_id(message_id), "dup": dup}


async def cmd_resend(args: argparse.Namespace) -> dict[str, Any]:
    profile = open_profile(args)
    async with connected(profile) as client:
        resent = await client.resend_pending()
        pending = [e.id for e in client.state.pending_outgoing()]
    return {"resent": [format_id(i) for i in resent], "pending": [format_id(i) for i in pending]}


def classify(exc: Exception) -> Failure:
    """The exit status, code and message of an error (module doc)."""
    if isinstance(exc, Failure):
        return exc
    message = str(exc) or type(exc).__name__
    if isinstance(exc, ProfileError | ValueError):
        return Failure(EXIT_USAGE, "usage", message)
    if isinstance(exc, ConnectionFailed | ConnectionLost | RequestTimeout):
        return Failure(EXIT_UNREACHABLE, "unreachable", message)
    if isinstance(exc, RequestError) and exc.retryable:
        return Failure(EXIT_UNREACHABLE, exc.code, message)
    if isinstance(exc, ProtocolError):
        return Failure(EXIT_REFUSED, exc.code, message)
    if isinstance(exc, RepliesNotAccepted):
        return Failure(EXIT_REFUSED, "replies_refused", message)
    if isinstance(exc, UnverifiedPeer):
        return Failure(EXIT_REFUSED, "unverified", message)
    if isinstance(exc, KeyChangePending):
        return Failure(EXIT_REFUSED, "key_change_pending", message)
    if isinstance(exc, ClientError):
        return Failure(EXIT_REFUSED, type(exc).__name__, message)
    return Failure(EXIT_OTHER, type(exc).__name__, message)


COMMANDS = {"enroll": cmd_enroll, "send": cmd_send, "resend": cmd_resend}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = asyncio.run(COMMANDS[args.command](args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        failure = classify(exc)
        out: dict[str, Any] = {"error": failure.code, "message": str(failure)}
        if failure.message_id is not None:
            out["id"] = format_id(failure.message_id)
        emit(out)
        print(f"{PROG}: {failure}", file=sys.stderr)
        return failure.status
    emit(result)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
