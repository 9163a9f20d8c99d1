"""``miss-chat``: the terminal client.

Usage::

    miss-chat --profile DIR enroll --server URL CODE [--label L] [--kdf moderate|interactive]
    miss-chat --profile DIR whoami
    miss-chat --profile DIR send RECIPIENT TEXT      # prints "<message id> accepted"
    miss-chat --profile DIR inbox                    # prints what is waiting, then exits
    miss-chat --profile DIR history [PEER]
    miss-chat --profile DIR link                     # a code to enroll another device
    miss-chat --profile DIR safety RECIPIENT         # the 60-digit safety number
    miss-chat --profile DIR status [available|busy|on_call|off_duty]   # set; alone: print it
    miss-chat --profile DIR presence RECIPIENT...    # "● Dr X (RPPS) is on call", "○ ... is offline"
    miss-chat --profile DIR chat RECIPIENT           # interactive; /quit leaves

RECIPIENT is an RPPS number (digits) or a user id (``u_...``). ``send`` and
``chat`` first resend, with their original ids, messages that an earlier run
recorded but never saw accepted (the hub drops any it already had). The profile
directory defaults to ``$MISS_PROFILE``, else ``~/.miss``. The passphrase is
read from ``$MISS_PASSPHRASE``, else asked on the terminal.

``chat`` reads one message per line from stdin, which may be a pipe: at end
of input it keeps printing what arrives until nothing has for ``--linger``
seconds, then exits. Incoming messages, ``✓ delivered`` receipts and the
peer's presence (``● Dr X (RPPS) is on call``, ``○ Dr X (RPPS) is offline``:
first their current one, then each change) are printed as they arrive.

A status (SPEC §6.7) is the user's, shared by all their devices, and kept by
the hub until changed; ``on-call`` is accepted for ``on_call``. Presence is
shown only for clinicians who may see each other: same organisation, or a
message exchanged once.

Exit status: 0 on success, 1 on an expected error (printed as one line on
stderr, no traceback: wrong passphrase, hub unreachable, unknown recipient,
...), 2 on a usage error, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from protocol.errors import AuthFailed, InvalidCode, NoDevices, ProtocolError, SessionReplaced, UnknownUser

from .client import Client
from .connection import enroll
from .errors import ClientError, ProfileError
from .models import STATUSES, Delivered, Message, Peer, PeerChange, PresenceChanged, format_id, is_user_id
from .profile import KDF_INTERACTIVE, KDF_MODERATE, Profile, load_profile
from .render import (
    Names,
    clean,
    format_time,
    history_line,
    message_line,
    presence_line,
    receipt_line,
    short_id,
    status_label,
)

__all__ = ["main"]

PROG = "miss-chat"


class UsageError(ClientError):
    """A mistake in how the command was called that argparse cannot see."""


# --- passphrase and profile ----------------------------------------------------


def read_passphrase(confirm: bool = False) -> str:
    """``$MISS_PASSPHRASE`` if set, else ask on the terminal (twice if ``confirm``)."""
    env = os.environ.get("MISS_PASSPHRASE")
    if env is not None:
        return env
    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
    except OSError:
        raise UsageError("no terminal to ask the passphrase on: set MISS_PASSPHRASE") from None
    try:
        passphrase = getpass.getpass("Passphrase: ")
        if confirm and getpass.getpass("Passphrase again: ") != passphrase:
            raise UsageError("the two passphrases differ")
    except EOFError:
        raise UsageError("no passphrase given") from None
    return passphrase


def open_profile(args: argparse.Namespace) -> Profile:
    return load_profile(args.profile, read_passphrase())


def warn_key_change(peer: Peer, change: PeerChange) -> None:
    """Tell the user, on stderr, that a peer's devices changed since last seen."""
    parts = [f"{len(change.added)} added"] if change.added else []
    parts += [f"{len(change.removed)} removed"] if change.removed else []
    parts += [f"{len(change.changed)} with NEW KEYS"] if change.changed else []
    print(
        f"{PROG}: note: the devices of {clean(peer.display)} changed ({', '.join(parts)}); "
        "compare safety numbers again",
        file=sys.stderr,
    )


async def print_event(event: Message | Delivered | PresenceChanged, client: Client, names: Names) -> None:
    """Print one event, looking up the peer first if the local directory lacks
    them (e.g. a copy of a message sent from another device)."""
    peer = event.peer if isinstance(event, Message) else event.user
    if client.state.get_peer(peer) is None and not client.closed:
        try:
            await client.lookup(user=peer)
        except (ProtocolError, ClientError):
            pass  # shown by user id then
    if isinstance(event, Message):
        line = message_line(event, names)
    elif isinstance(event, Delivered):
        line = receipt_line(event, names)
    else:
        line = presence_line(event, names)
    print(line, flush=True)


# --- commands --------------------------------------------------------------------


async def cmd_enroll(args: argparse.Namespace) -> int:
    kdf = KDF_INTERACTIVE if args.kdf == "interactive" else KDF_MODERATE
    label = args.label if args.label is not None else socket.gethostname()[:64]
    profile = await enroll(
        args.server, args.code, args.profile, read_passphrase(confirm=True), label, kdf=kdf
    )
    print(f"enrolled: user {profile.user_id} device {profile.device_id}")
    return 0


async def cmd_whoami(args: argparse.Namespace) -> int:
    profile = open_profile(args)
    print(f"user    {profile.user_id}")
    print(f"device  {profile.device_id}" + (f" ({clean(profile.label)})" if profile.label else ""))
    print(f"server  {profile.server}")
    with profile.open_state() as state:
        me = state.get_peer(profile.user_id)
    if me is not None:
        print(f"name    {clean(me.display)}")
        print(f"devices {len(me.devices)}")
    return 0


async def resend_pending(client: Client) -> None:
    """Finish what an earlier run left pending (same ids: never a second copy)."""
    if client.state.pending_outgoing():
        resent = await client.resend_pending()
        print(f"{PROG}: resent {len(resent)} message(s) left pending by an earlier run", file=sys.stderr)


async def cmd_send(args: argparse.Namespace) -> int:
    async with Client.connect(open_profile(args)) as client:
        client.on_key_change = warn_key_change
        await resend_pending(client)
        message_id = await client.send(args.recipient, args.text)
    print(f"{format_id(message_id)} accepted")
    return 0


async def cmd_inbox(args: argparse.Namespace) -> int:
    async with Client.connect(open_profile(args)) as client:
        client.on_key_change = warn_key_change
        names = Names(client.state)
        events = await client.drain(idle=args.idle)
        for event in events:
            await print_event(event, client, names)
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
    async with Client.connect(open_profile(args)) as client:
        code, expires = await client.link_code()
    print(code)
    print(
        f"valid until {format_time(expires)}; on the new device run: {PROG} --profile DIR enroll "
        f"--server URL {code}",
        file=sys.stderr,
    )
    return 0


async def cmd_safety(args: argparse.Namespace) -> int:
    async with Client.connect(open_profile(args)) as client:
        client.on_key_change = warn_key_change
        number = await client.safety_number(args.recipient)
        peer = await client.resolve(args.recipient)
    print(f"Safety number with {clean(peer.display)}:")
    print(number)
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    async with Client.connect(open_profile(args)) as client:
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
    async with Client.connect(open_profile(args)) as client:
        client.on_key_change = warn_key_change
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


async def watch_peer(client: Client, peer: Peer, names: Names) -> None:
    """Follow the peer's presence and print the current one (chat, on start)."""
    try:
        current = await client.watch([peer.user])
    except (ProtocolError, ClientError) as exc:
        if client.closed:
            raise
        print(f"{PROG}: presence of {clean(peer.display)} unavailable: {describe(exc)}", file=sys.stderr)
        return
    if current:
        print(presence_line(current[0], names), flush=True)
    else:
        print(f"{PROG}: the presence of {clean(peer.display)} is not shared with you", file=sys.stderr)


async def cmd_chat(args: argparse.Namespace) -> int:
    interactive = sys.stdin.isatty()
    async with Client.connect(open_profile(args)) as client:
        client.on_key_change = warn_key_change
        peer = await client.resolve(args.recipient)
        await resend_pending(client)
        names = Names(client.state)
        print(f"chatting with {clean(peer.display)}; /quit leaves", file=sys.stderr)
        await watch_peer(client, peer, names)
        loop = asyncio.get_running_loop()
        last_activity = [loop.time()]

        async def show_events() -> None:
            async for event in client.events():
                await print_event(event, client, names)
                last_activity[0] = loop.time()

        async def send_lines() -> str:
            lines = _stdin_lines(loop)
            while True:
                line = await lines.get()
                if line is None:
                    return "eof"
                text = line.rstrip("\r\n")
                if text.strip() == "/quit":
                    return "quit"
                if not text.strip():
                    continue
                try:
                    message_id = await client.send(peer.user, text)
                except (ProtocolError, ClientError) as exc:
                    if client.closed:
                        raise
                    print(f"{PROG}: not sent: {describe(exc)}", file=sys.stderr)
                    continue
                if not interactive:
                    when = format_time(time.time_ns() // 1_000_000)
                    shown = f"{clean(text)} ({short_id(message_id)} accepted)"
                    print(f"[{when}] me → {clean(peer.display)}: {shown}", flush=True)
                last_activity[0] = loop.time()

        printer = asyncio.create_task(show_events())
        sender = asyncio.create_task(send_lines())
        try:
            done, _ = await asyncio.wait({printer, sender}, return_when=asyncio.FIRST_COMPLETED)
            if printer in done:
                printer.result()  # the connection ended: raise why
                return 0
            if sender.result() == "eof":
                while (left := args.linger - (loop.time() - last_activity[0])) > 0 and not printer.done():
                    await asyncio.wait({printer}, timeout=left)
                if printer.done():
                    printer.result()
        finally:
            for task in (printer, sender):
                task.cancel()
            await asyncio.gather(printer, sender, return_exceptions=True)
    return 0


def _stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str | None]:
    """Lines of stdin, read by a daemon thread (so that a blocked read never
    holds the program open); None marks the end of input."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def put(item: str | None) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the program is leaving
            return False
        return True

    def run() -> None:
        while True:
            try:
                line = sys.stdin.readline()
            except (OSError, ValueError):
                line = ""
            if not line:
                put(None)
                return
            if not put(line):
                return

    threading.Thread(target=run, name="miss-chat-stdin", daemon=True).start()
    return queue


# --- entry point --------------------------------------------------------------------


def describe(exc: BaseException) -> str:
    """A one-line, user-facing description of an expected error."""
    if isinstance(exc, UnknownUser):
        return "unknown recipient (no such clinician in the directory)"
    if isinstance(exc, AuthFailed):
        return "authentication failed: this device is unknown to the hub or was revoked"
    if isinstance(exc, NoDevices):
        return "the recipient has no device enrolled yet; nobody could read the message"
    if isinstance(exc, SessionReplaced):
        return "this device connected again elsewhere (another miss-chat running with this profile?)"
    if isinstance(exc, InvalidCode):
        return "invalid enrollment code (unknown, already used or expired)"
    if isinstance(exc, ProtocolError):
        return f"{exc.message} ({exc.code})" if type(exc) is not ProtocolError else str(exc)
    return str(exc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="MiSS terminal client")
    parser.add_argument(
        "--profile",
        type=Path,
        default=Path(os.environ.get("MISS_PROFILE", "~/.miss")).expanduser(),
        help="profile directory (default: $MISS_PROFILE or ~/.miss)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log SDK details to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], help: str) -> Any:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = add("enroll", cmd_enroll, "enroll this device with an invitation or link code")
    p.add_argument("--server", required=True, help="hub URL, e.g. wss://miss.example.org/")
    p.add_argument("code", help="the one-time code, XXXX-XXXX-XXXX-XXXX")
    p.add_argument("--label", help="device label shown to you (default: host name)")
    p.add_argument(
        "--kdf",
        choices=("moderate", "interactive"),
        default="moderate",
        help="passphrase hashing cost (default: moderate)",
    )
    add("whoami", cmd_whoami, "show this device's identity")
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
    p = add("chat", cmd_chat, "interactive conversation (reads lines from stdin)")
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
