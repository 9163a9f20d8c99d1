"""``miss-chat``: the terminal client's parser, :func:`main`, and its one-shot
commands (``cmd_*``: connect if needed, do one thing, print, exit).

The interactive ``chat`` lives in :mod:`.chat_session`; what both use
(passphrases, connecting, warnings, event lines, error descriptions) in
:mod:`.cli_common`.

Usage::

    miss-chat --profile DIR enroll --server URL --authority KEY CODE [--label L] [--kdf moderate|interactive]
    miss-chat --profile DIR set-authority KEY [--replace]   # for a profile from before authorities
    miss-chat --profile DIR whoami                   # ids, server, authority fingerprint
    miss-chat --profile DIR passphrase [--kdf ...]   # change the passphrase (and the hashing cost)
    miss-chat --profile DIR send RECIPIENT TEXT      # prints "<message id> accepted"
    miss-chat --profile DIR inbox                    # prints what is waiting, then exits
    miss-chat --profile DIR history [PEER]
    miss-chat --profile DIR link                     # a code to enroll another device
    miss-chat --profile DIR safety RECIPIENT         # the 60-digit safety number, verified or not
    miss-chat --profile DIR verify RECIPIENT [--yes] # mark verified in person, after comparing numbers
    miss-chat --profile DIR trust RECIPIENT|me [--yes]   # accept a key change
    miss-chat --profile DIR search QUERY             # verified clinicians: name, RPPS, profession...
    miss-chat --profile DIR devices                  # your devices
    miss-chat --profile DIR revoke DEVICE [--yes]    # revoke one of them, for ever
    miss-chat --profile DIR status [available|busy|on_call|off_duty]   # set; alone: print it
    miss-chat --profile DIR presence RECIPIENT...    # "● Dr X (RPPS) is on call", "○ ... is offline"
    miss-chat --profile DIR chat RECIPIENT           # a conversation; /quit leaves (see chat_session)
    miss-chat --version

RECIPIENT is an RPPS number (11 digits) or a user id (``u_...``); not
oneself. ``send`` and ``chat`` first resend, with their original ids,
messages that an earlier run recorded but never saw accepted (the hub drops
any it already had); an empty message is not sent. The profile directory
defaults to ``$MISS_PROFILE``, else ``~/.miss``. The passphrase is read
from ``$MISS_PASSPHRASE``, else asked on the terminal (three attempts).
``passphrase`` changes it: the old one as above, the new one from
``$MISS_NEW_PASSPHRASE``, else asked twice on the terminal; the passphrase
hashing cost stays the profile's unless ``--kdf`` is given.

``chat`` is a conversation (:mod:`.chat_session` describes it): a prompt on
a terminal, else one message per line of stdin; it survives the hub
restarting, and steps aside while other commands use the profile. Commands
that connect warn if the hub announces another verification authority than
the profile's.

A status (SPEC §6.7) is the user's, shared by all their devices, and kept by
the hub until changed; ``on-call`` is accepted for ``on_call``. Presence is
shown only for clinicians who may see each other: same organisation, or a
message exchanged once.

Verified clinicians (SPEC §11). ``enroll`` requires ``--authority KEY``, the
verification authority's public key (base64) that the administrator gives
with the code (``miss-admin invite`` prints it); a profile from before
authorities existed is refused until ``set-authority KEY`` stores one.
Only clinicians whose attestation by that authority verifies can be written
to. The device keys of each one are pinned the first time; if they change
later (a new device, new keys, or keys the authority never signed), a
warning says so and nothing is sent to them until ``trust RECIPIENT``
accepts the change (after comparing safety numbers with ``safety``); ``trust
me`` accepts a change of your own devices. ``verify RECIPIENT`` marks a
clinician verified in person once both read the same safety number; a key
change clears the mark. ``verify``, ``trust`` and ``revoke`` ask for
confirmation on stdin unless given ``--yes``.

Exit status: 0 on success, 1 on an expected error (printed as one line on
stderr, no traceback: wrong passphrase, hub unreachable, unknown recipient,
...), 2 on a usage error, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Callable, Coroutine
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version
from pathlib import Path
from typing import Any

from protocol.attestation import authority_fingerprint
from protocol.errors import ProtocolError, UnknownUser

from .chat_session import cmd_chat
from .cli_common import (
    PROG,
    EventPrinter,
    UsageError,
    check_not_self,
    check_recipient,
    confirm,
    connected,
    describe,
    open_profile,
    read_new_passphrase,
    read_passphrase_for_new_profile,
    unlock,
    warn_key_changes,
)
from .client import Client
from .connection import enroll
from .errors import ClientError, ProfileError
from .models import STATUSES, Peer, PeerChange, format_id, is_user_id
from .profile import (
    KDF_INTERACTIVE,
    KDF_MODERATE,
    KdfParams,
    change_passphrase,
    parse_authority,
    set_authority,
)
from .render import Names, clean, format_time, history_line, presence_line, status_label

# EventPrinter moved to cli_common; it stays importable from here, where it was.
__all__ = ["EventPrinter", "build_parser", "main"]


# --- commands --------------------------------------------------------------------


async def cmd_enroll(args: argparse.Namespace) -> int:
    kdf = KDF_INTERACTIVE if args.kdf == "interactive" else KDF_MODERATE
    label = args.label if args.label is not None else socket.gethostname()[:64]
    authority = parse_authority(args.authority)  # before asking the passphrase
    profile = await enroll(
        args.server,
        args.code,
        args.profile,
        read_passphrase_for_new_profile(),
        label,
        authority=authority,
        kdf=kdf,
    )
    print(f"enrolled: user {profile.user_id} device {profile.device_id}")
    print(f"authority fingerprint: {profile.authority_fingerprint}")
    return 0


async def cmd_set_authority(args: argparse.Namespace) -> int:
    key = parse_authority(args.key)
    profile, passphrase = unlock(args.profile)
    current = profile.authority_pk
    if current == key:
        print(f"authority unchanged: {authority_fingerprint(key)}")
        return 0
    if current is not None and not args.replace:
        raise UsageError(
            f"this profile already trusts the authority {authority_fingerprint(current)}; "
            "pass --replace to trust another one instead"
        )
    set_authority(args.profile, passphrase, key)
    print(f"authority set: {authority_fingerprint(key)}")
    return 0


async def cmd_passphrase(args: argparse.Namespace) -> int:
    # Without --kdf the profile keeps its cost: a profile made "interactive"
    # for a low-memory device must not silently become "moderate".
    kdf: KdfParams | None = None
    if args.kdf is not None:
        kdf = KDF_INTERACTIVE if args.kdf == "interactive" else KDF_MODERATE
    _, old = unlock(args.profile)
    new = read_new_passphrase()
    change_passphrase(args.profile, old, new, kdf)
    print("passphrase changed")
    return 0


async def cmd_whoami(args: argparse.Namespace) -> int:
    profile = open_profile(args)
    print(f"user      {profile.user_id}")
    print(f"device    {profile.device_id}" + (f" ({clean(profile.label)})" if profile.label else ""))
    print(f"server    {profile.server}")
    if profile.authority_fingerprint is not None:
        print(f"authority {profile.authority_fingerprint}")
    else:
        print(f"authority none: run `{PROG} set-authority KEY` with the key your administrator gives you")
    with profile.open_state() as state:
        me = state.get_peer(profile.user_id)
    if me is not None:
        print(f"name      {clean(me.display)}")
        print(f"devices   {len(me.devices)}")
    return 0


async def resend_pending(client: Client) -> None:
    """Finish what an earlier run left pending (same ids: never a second copy)."""
    if client.state.pending_outgoing():
        resent = await client.resend_pending()
        print(f"{PROG}: resent {len(resent)} message(s) left pending by an earlier run", file=sys.stderr)


async def cmd_send(args: argparse.Namespace) -> int:
    if not args.text.strip():
        raise UsageError("empty message: nothing sent")
    check_recipient(args.recipient)  # before asking the passphrase
    profile = open_profile(args)
    check_recipient(args.recipient, profile)
    async with connected(args, profile) as client:
        warn_key_changes(client)
        await resend_pending(client)
        peer = await client.resolve(args.recipient)
        check_not_self(peer, client)
        message_id = await client.send(peer.user, args.text)
    print(f"{format_id(message_id)} accepted")
    return 0


async def cmd_inbox(args: argparse.Namespace) -> int:
    async with connected(args) as client:
        warn_key_changes(client)
        printer = EventPrinter(client.state)
        events = await client.drain(idle=args.idle)
        for event in events:
            print(await printer.line(event, client))
    if not events:
        print(f"{PROG}: nothing new", file=sys.stderr)
    return 0


async def cmd_history(args: argparse.Namespace) -> int:
    profile = open_profile(args)
    with profile.open_state() as state:
        peer: str | None = None
        if args.peer is not None:
            found = state.find_peer(args.peer)
            if found is not None:
                peer = found.user
            elif is_user_id(args.peer):
                peer = args.peer
            else:
                raise UsageError(f"no conversation with {args.peer!r} in this profile")
        names = Names(state)
        for entry in state.history(peer, limit=args.limit):
            print(history_line(entry, names))
    return 0


async def cmd_link(args: argparse.Namespace) -> int:
    async with connected(args) as client:
        code, expires = await client.link_code()
    print(code)
    print(
        f"valid until {format_time(expires)}; on the new device run: {PROG} --profile DIR enroll "
        f"--server URL --authority KEY {code}; then an administrator verifies your account again",
        file=sys.stderr,
    )
    return 0


async def cmd_safety(args: argparse.Namespace) -> int:
    check_recipient(args.recipient)
    async with connected(args) as client:
        warn_key_changes(client)
        number = await client.safety_number(args.recipient)
        peer = await client.resolve(args.recipient)
    print(f"Safety number with {clean(peer.display)}:")
    print(number)
    if peer.verified:
        print("verified in person: yes ✓")
    else:
        print(f"verified in person: no (once you both read the same number: `{PROG} verify {peer.rpps}`)")
    if peer.pending is not None:
        print(f"key change pending: {peer.pending.describe()} (accept it with `{PROG} trust {peer.rpps}`)")
    return 0


def _device_lines(peer: Peer, change: PeerChange) -> list[str]:
    """What a pending change consists of, one device per line."""
    listed = {d.device: d for d in peer.listed}
    lines = []
    for label, ids in (
        ("new device", change.added),
        ("NEW KEYS", change.changed),
        ("keys NOT signed by the authority (never encrypted to)", change.substituted),
    ):
        for device in ids:
            known = listed.get(device)
            keys = f" {known.sign_pk.hex()[:16]}…/{known.box_pk.hex()[:16]}…" if known else ""
            lines.append(f"  {device}: {label}{keys}")
    return lines


async def cmd_trust(args: argparse.Namespace) -> int:
    if args.recipient.strip().lower() != "me":
        check_recipient(args.recipient)
    async with connected(args) as client:
        warn_key_changes(client)
        own = args.recipient.strip().lower() == "me"
        who = client.user_id if own else args.recipient
        peer = await client.resolve(who, refresh=True)
        name = "your own account" if peer.user == client.user_id else clean(peer.display)
        if peer.pending is None:
            print(f"nothing to accept: the devices of {name} are the pinned ones")
            return 0
        print(f"Key change of {name}: {peer.pending.describe()}")
        print("\n".join(_device_lines(peer, peer.pending)))
        if peer.user != client.user_id:
            print("New safety number:")
            print(await client.safety_number(peer.user))
        if not await confirm(f"Accept the new devices of {name}?", args.yes):
            print("not accepted: nothing is sent to them until you accept", file=sys.stderr)
            return 1
        await client.accept_keys(peer.user, expected=peer.pending)
    print(f"accepted: the current devices of {name} are now pinned")
    return 0


async def cmd_verify(args: argparse.Namespace) -> int:
    check_recipient(args.recipient)
    async with connected(args) as client:
        warn_key_changes(client)
        number = await client.safety_number(args.recipient)
        peer = await client.resolve(args.recipient)
        if peer.user == client.user_id:
            raise UsageError("compare safety numbers with someone else, not yourself")
        print(f"Safety number with {clean(peer.display)}:")
        print(number)
        if peer.pending is not None:
            print(f"(this also accepts their pending key change: {peer.pending.describe()})")
        if not await confirm(f"Does {clean(peer.display)} read the same number?", args.yes):
            print("not marked verified", file=sys.stderr)
            return 1
        await client.mark_verified(peer.user)
    print(f"{clean(peer.display)} is verified in person ✓")
    return 0


async def cmd_search(args: argparse.Namespace) -> int:
    async with connected(args) as client:
        entries = await client.search(args.query)
        for entry in entries:
            pinned = client.state.get_peer(entry.user)
            mark = " ✓" if pinned is not None and pinned.verified else ""
            fields = [
                f"{clean(entry.name)}{mark}",
                f"RPPS {clean(entry.rpps)}",
                clean(entry.profession) or "-",
                clean(entry.organisation) or "-",
                entry.user,
            ]
            print(" | ".join(fields))
    if not entries:
        print(f"{PROG}: no verified clinician matches {args.query!r}", file=sys.stderr)
    return 0


async def cmd_devices(args: argparse.Namespace) -> int:
    async with connected(args) as client:
        devices = await client.devices()
    for d in devices:
        state = "attested" if d.attested else "NOT attested (ask an administrator to verify you again)"
        label = clean(d.label) or "-"
        current = "  (this device)" if d.current else ""
        print(f"{d.device}  {label}  enrolled {format_time(d.created)}  {state}{current}")
    return 0


async def cmd_revoke(args: argparse.Namespace) -> int:
    async with connected(args) as client:
        target = next((d for d in await client.devices() if d.device == args.device), None)
        if target is None:
            raise UsageError(f"{args.device} is not one of your active devices (`{PROG} devices` lists them)")
        if target.current:
            print(
                f"{PROG}: warning: {target.device} is THIS device: once revoked, this profile can "
                "no longer connect (enroll again with a new code)",
                file=sys.stderr,
            )
        label = f" ({clean(target.label)})" if target.label else ""
        if not await confirm(f"Revoke {target.device}{label} for ever?", args.yes):
            print("not revoked", file=sys.stderr)
            return 1
        await client.revoke(target.device)
    print(f"revoked {target.device}")
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    async with connected(args) as client:
        if args.status is not None:
            await client.set_status(args.status)
            status = args.status
        else:
            # Our own presence is always visible to us; this connection watches nothing else.
            mine = [p for p in await client.watch([client.user_id]) if p.user == client.user_id]
            if not mine:
                raise ClientError("the hub did not report your status")
            status = mine[0].status
    print(f"status: {status_label(status)}")
    return 0


async def cmd_presence(args: argparse.Namespace) -> int:
    for recipient in args.recipients:
        check_recipient(recipient)
    async with connected(args) as client:
        warn_key_changes(client)
        peers: dict[str, Peer] = {}
        for recipient in args.recipients:
            try:
                peer = await client.resolve(recipient)
            except UnknownUser:
                raise UsageError(
                    f"unknown recipient {recipient!r} (no such clinician in the directory)"
                ) from None
            peers.setdefault(peer.user, peer)
        shown = {p.user: p for p in await client.watch(list(peers))}
        names = Names(client.state)
        for user, peer in peers.items():
            if user in shown:
                print(presence_line(shown[user], names))
            else:
                print(f"? {clean(peer.display)}: presence not shared with you")
    return 0


# --- entry point --------------------------------------------------------------------


def miss_version() -> str:
    """The installed version of the ``miss`` distribution."""
    try:
        return distribution_version("miss")
    except PackageNotFoundError:
        return "(version unknown: not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="MiSS terminal client")
    parser.add_argument(
        "--profile",
        type=Path,
        default=Path(os.environ.get("MISS_PROFILE", "~/.miss")).expanduser(),
        help="profile directory (default: $MISS_PROFILE or ~/.miss)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log SDK details to stderr")
    parser.add_argument("--version", action="version", version=f"{PROG} {miss_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], help: str) -> Any:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = add("enroll", cmd_enroll, "enroll this device with an invitation or link code")
    p.add_argument("--server", required=True, help="hub URL, e.g. wss://miss.example.org/")
    p.add_argument(
        "--authority",
        required=True,
        metavar="KEY",
        help="the verification authority's public key (base64), as your administrator gives it",
    )
    p.add_argument("code", help="the one-time code, XXXX-XXXX-XXXX-XXXX")
    p.add_argument("--label", help="device label shown to you (default: host name)")
    p.add_argument(
        "--kdf",
        choices=("moderate", "interactive"),
        default="moderate",
        help="passphrase hashing cost (default: moderate)",
    )
    p = add("set-authority", cmd_set_authority, "store the verification authority's public key")
    p.add_argument("key", metavar="KEY", help="the authority's public key (base64)")
    p.add_argument("--replace", action="store_true", help="replace an authority key already set")
    add("whoami", cmd_whoami, "show this device's identity and authority")
    p = add(
        "passphrase",
        cmd_passphrase,
        "change the passphrase of this profile (old one: $MISS_PASSPHRASE, new one: $MISS_NEW_PASSPHRASE, "
        "else both asked on the terminal)",
    )
    p.add_argument(
        "--kdf",
        choices=("moderate", "interactive"),
        help="a new passphrase hashing cost (default: keep the profile's)",
    )
    p = add("send", cmd_send, "send one message")
    p.add_argument("recipient", help="RPPS number or user id")
    p.add_argument("text")
    p = add("inbox", cmd_inbox, "print waiting messages and receipts, then exit")
    p.add_argument("--idle", type=float, default=0.5, help="seconds without news that end the inbox")
    p = add("history", cmd_history, "print the local history")
    p.add_argument("peer", nargs="?", help="only the conversation with this RPPS number or user id")
    p.add_argument("--limit", type=int, default=100)
    add("link", cmd_link, "get a code to enroll another device of yours")
    p = add("safety", cmd_safety, "print the safety number with a recipient")
    p.add_argument("recipient")
    p = add("verify", cmd_verify, "mark a clinician verified in person, after comparing safety numbers")
    p.add_argument("recipient")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p = add("trust", cmd_trust, "accept a clinician's key change (`me`: your own devices)")
    p.add_argument("recipient", help="RPPS number, user id, or `me`")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p = add("search", cmd_search, "search the directory of verified clinicians")
    p.add_argument("query", help="part of a name, RPPS number, profession or organisation")
    add("devices", cmd_devices, "list your devices")
    p = add("revoke", cmd_revoke, "revoke one of your devices, for ever")
    p.add_argument("device", help="device id (d_...), as `devices` prints it")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p = add("status", cmd_status, "set your status, or print it")
    p.add_argument(
        "status",
        nargs="?",
        type=lambda s: s.strip().lower().replace("-", "_"),
        choices=STATUSES,
        help="the new status (default: print the current one)",
    )
    p = add("presence", cmd_presence, "print the presence of clinicians")
    p.add_argument("recipients", nargs="+", metavar="RECIPIENT", help="RPPS number or user id")
    p = add("chat", cmd_chat, "conversation: a prompt on a terminal, else one message per line of stdin")
    p.add_argument("recipient")
    p.add_argument(
        "--linger", type=float, default=1.0, help="at end of input, seconds to wait for news before leaving"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``miss-chat``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format=f"{PROG}: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        logging.getLogger("websockets").setLevel(logging.ERROR)
    try:
        command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = args.func
        return asyncio.run(command(args))
    except KeyboardInterrupt:
        return 130
    except (ClientError, ProtocolError, ProfileError) as exc:
        print(f"{PROG}: error: {describe(exc)}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:  # bad argument values; unwritable profile directory
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
