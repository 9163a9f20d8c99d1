"""``miss-chat``: the terminal client's parser and :func:`main`.

The one-shot commands (``cmd_*``: connect if needed, do one thing, print,
exit) live in :mod:`.chat_commands`, the interactive ``chat`` in
:mod:`.chat_session`; what both use (passphrases, connecting, warnings,
event lines, error descriptions) in :mod:`.cli_common`.

Usage::

    miss-chat --profile DIR enroll --server URL --authority KEY CODE [--label L] [--kdf moderate|interactive]
    miss-chat --profile DIR set-authority KEY [--replace]   # for a profile from before authorities
    miss-chat --profile DIR whoami                   # ids, server, authority fingerprint
    miss-chat --profile DIR passphrase [--kdf ...]   # change the passphrase (and the hashing cost)
    miss-chat --profile DIR send RECIPIENT|TEAM TEXT [--lifespan 1h..30d]   # prints "<message id> accepted"
    miss-chat --profile DIR inbox                    # prints what is waiting, then exits
    miss-chat --profile DIR history [PEER]
    miss-chat --profile DIR link                     # a code to enroll another device
    miss-chat --profile DIR safety RECIPIENT         # the 60-digit safety number, verified or not
    miss-chat --profile DIR verify RECIPIENT [--yes] # mark verified in person, after comparing numbers
    miss-chat --profile DIR trust RECIPIENT|me [--yes]   # accept a key change
    miss-chat --profile DIR search QUERY             # verified clinicians: name, RPPS, profession...
    miss-chat --profile DIR devices                  # your devices
    miss-chat --profile DIR ping                     # "hub joignable : aller-retour 12 ms"
    miss-chat --profile DIR revoke DEVICE [--yes]    # revoke one of them, for ever
    miss-chat --profile DIR status [available|busy|on_call|off_duty]   # set; alone: print it
    miss-chat --profile DIR presence RECIPIENT...    # "● Dr X (RPPS) is on call", "○ ... is offline"
    miss-chat --profile DIR chat RECIPIENT|TEAM      # a conversation; /quit leaves (see chat_session)
    miss-chat --profile DIR team create NAME [--org O] [--lifespan 24h]   # a care team (SPEC §13)
    miss-chat --profile DIR team add|remove|promote|demote TEAM USER
    miss-chat --profile DIR team leave TEAM
    miss-chat --profile DIR team list | team show TEAM
    miss-chat --profile DIR recall MESSAGE_ID        # "message retiré" everywhere it arrived
    miss-chat --profile DIR read RECIPIENT|TEAM      # mark a conversation read (read notices)
    miss-chat --profile DIR read-receipts [on|off]   # whether senders learn you read them
    miss-chat --profile DIR send RECIPIENT|TEAM|ROLE TEXT --urgent   # rings until acknowledged (SPEC §14)
    miss-chat --profile DIR send RECIPIENT|TEAM [TEXT] --attach FILE...   # images, PDF (SPEC §16)
    miss-chat --profile DIR save ID DIR [--index N]  # fetch, check and save a message's attachments
    miss-chat --profile DIR ack ID                   # acquitter an urgent message you received
    miss-chat --profile DIR urgent                   # urgent messages not acknowledged yet
    miss-chat --profile DIR role list | role search TEXT | role show ROLE
    miss-chat --profile DIR role take ROLE [--join] | role leave ROLE
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

Care teams (SPEC §13, :mod:`.chat_teams`): TEAM is a team id (``t_...``)
or the name of a team this profile knows. Who is a member is what the
chain of signed records this device verified says; if the hub shows
otherwise, commands say so in French and nothing is sent to the team.
``--lifespan`` (``1h`` to ``30d``) deletes a message everywhere once over;
a team's default lifespan applies to its messages unless given.

On-call roles and urgent messages (SPEC §14, :mod:`.chat_oncall`): ROLE is
a role id (``r_...``) or a role's exact name; ``send ROLE`` prints who
holds it before sending. ``--urgent`` makes a message ring (reminders,
``\a``) until someone acknowledges it with ``ack ID``, and reach the role's
backups step by step; the sender sees ``escalade vers … (étape 1)``,
``acquitté par Dr X à HH:MM`` or ``aucun acquittement``.

Attachments (SPEC §16, :mod:`.chat_attachments`): ``send --attach FILE…``
refuses too many, too large or unaccepted files before uploading anything;
``history`` and ``inbox`` show ``📎 plaie.jpg — 1,2 Mo, image JPEG`` under
the message and its id in brackets, which ``save ID DIR`` takes.

Exit status: 0 on success, 1 on an expected error (printed as one line on
stderr, no traceback: wrong passphrase, hub unreachable, unknown recipient,
...), 2 on a usage error, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version
from pathlib import Path
from typing import Any

from protocol.errors import ProtocolError

from .chat_attachments import cmd_save
from .chat_commands import (
    cmd_devices,
    cmd_enroll,
    cmd_history,
    cmd_inbox,
    cmd_link,
    cmd_passphrase,
    cmd_ping,
    cmd_presence,
    cmd_revoke,
    cmd_safety,
    cmd_search,
    cmd_send,
    cmd_set_authority,
    cmd_status,
    cmd_trust,
    cmd_verify,
    cmd_whoami,
)
from .chat_oncall import cmd_ack, cmd_role, cmd_urgent
from .chat_session import cmd_chat
from .chat_teams import cmd_read, cmd_read_receipts, cmd_recall, cmd_team
from .cli_common import PROG, EventPrinter, describe
from .errors import ClientError, ProfileError
from .models import STATUSES

# EventPrinter moved to cli_common; it stays importable from here, where it was.
__all__ = ["EventPrinter", "build_parser", "main"]


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
    p.add_argument("recipient", help="RPPS number, user id, team or role (id or name)")
    p.add_argument("text", nargs="?", default="", help="the text (may be left out with --attach)")
    p.add_argument(
        "--attach",
        nargs="+",
        action="extend",
        metavar="FILE",
        help="attach files (JPEG, PNG, HEIC images or PDF; up to the hub's limit, 6 by default)",
    )
    p.add_argument("--lifespan", metavar="1h..30d", help="delete the message everywhere after this long")
    p.add_argument(
        "--urgent", action="store_true", help="urgent: rings until acknowledged, escalates to backups"
    )
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
    add("ping", cmd_ping, "check that the hub answers now, and how fast (SPEC §4.1)")
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
    p = add("team", cmd_team, "care teams: create, add, remove, leave, promote, demote, list, show")
    teams = p.add_subparsers(dest="team_command", required=True, metavar="ACTION")
    t = teams.add_parser("create", help="create a team, with you as its admin")
    t.add_argument("name")
    t.add_argument("--org", help="organisation")
    t.add_argument("--lifespan", metavar="1h..30d", help="the team's default message lifespan")
    for action, what in (
        ("add", "add a clinician (admins)"),
        ("remove", "remove a member (admins)"),
        ("promote", "make a member an admin (admins)"),
        ("demote", "make an admin a member again (admins)"),
    ):
        t = teams.add_parser(action, help=what)
        t.add_argument("team", help="team id or name")
        t.add_argument("user", help="RPPS number or user id")
    t = teams.add_parser("leave", help="leave a team")
    t.add_argument("team", help="team id or name")
    teams.add_parser("list", help="your teams")
    t = teams.add_parser("show", help="a team's members, as its signed chain says")
    t.add_argument("team", help="team id or name")
    p = add("recall", cmd_recall, "recall one of your messages (message retiré)")
    p.add_argument("id", help="the message id, as `send` printed it")
    p = add("read", cmd_read, "mark a conversation read (sends read notices)")
    p.add_argument("conversation", help="RPPS number, user id, or team")
    p = add("read-receipts", cmd_read_receipts, "whether senders learn that you read their messages")
    p.add_argument("setting", nargs="?", choices=("on", "off"))
    p = add("ack", cmd_ack, "acquitter (acknowledge) an urgent message you received")
    p.add_argument("id", help="the message id, as shown with the urgent message")
    add("urgent", cmd_urgent, "urgent messages not acknowledged yet (received and sent)")
    p = add("role", cmd_role, "on-call roles: list, search, show, take, leave")
    roles = p.add_subparsers(dest="role_command", required=True, metavar="ACTION")
    roles.add_parser("list", help="the roles you hold now")
    r = roles.add_parser("search", help="roles whose name or organisation contains TEXT, with their holders")
    r.add_argument("text")
    r = roles.add_parser("show", help="a role, its holders and its escalation")
    r.add_argument("role", help="role id (r_...) or name")
    r = roles.add_parser("take", help="take a role (a handover, unless --join)")
    r.add_argument("role", help="role id (r_...) or name")
    r.add_argument("--join", action="store_true", help="join its holders instead of taking it over")
    r = roles.add_parser("leave", help="stop holding a role")
    r.add_argument("role", help="role id (r_...) or name")
    p = add("save", cmd_save, "fetch, check and save the attachments of a message")
    p.add_argument("id", help="the message id, as `history` or `inbox` shows it [in brackets]")
    p.add_argument("directory", help="an existing directory to write the files into")
    p.add_argument("--index", type=int, help="only the attachment with this number (1, 2, ...)")
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
