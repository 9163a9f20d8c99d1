"""``miss-chat`` commands of revision 3 (SPEC §13): care teams, recall, read
receipts; :mod:`.chat` parses their arguments.

A TEAM argument is a team id (``t_...``) or the name of a team this profile
knows (``team list`` shows them), case-insensitive; a USER is an RPPS
number or a user id. What a team is comes from the chain of signed records
this device verified, never from the hub alone: ``team show`` prints the
members that chain names, and the problem this device found, if any (then
nothing is sent to the team).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from protocol.frames import CAP_TEAMS

from .cli_common import PROG, EventPrinter, UsageError, check_recipient, connected, open_profile
from .client import Client
from .errors import UnknownMessage
from .models import TeamView, format_id, is_rpps, is_team_id, is_user_id, parse_id
from .render import Names, clean, lifespan_label, parse_lifespan, team_lines, team_problem_line
from .state import LocalState

#: How long a command waits for the hub's list of teams to find a team by
#: name it does not know yet (s).
TEAM_SYNC_WAIT = 3.0

__all__ = [
    "cmd_read",
    "cmd_read_receipts",
    "cmd_recall",
    "cmd_team",
    "find_team",
    "looks_like_team",
    "maybe_team_name",
    "resolve_team",
]


def resolve_team(state: LocalState, text: str) -> str:
    """The team id of a TEAM argument (an id, or a known team's name)."""
    text = text.strip()
    if is_team_id(text):
        return text
    found = [v for v in state.list_teams() if v.name.casefold() == text.casefold()]
    if len(found) == 1:
        return found[0].team
    if found:
        raise UsageError(f"several teams are named {text!r}: give its id (`{PROG} team list`)")
    raise UsageError(f"no team {text!r} known to this profile (`{PROG} team list`)")


def looks_like_team(state: LocalState, text: str) -> bool:
    """True if ``text`` names a team (an id, or a known team's name)."""
    text = text.strip()
    return is_team_id(text) or any(v.name.casefold() == text.casefold() for v in state.list_teams())


def maybe_team_name(text: str) -> bool:
    """True if ``text`` can only be a team's name (not an RPPS number, user
    or team id): worth fetching the teams to find it."""
    text = text.strip()
    service = text.startswith("svc:")  # a service's identifier (SPEC §17.1)
    return bool(text) and not (is_rpps(text) or is_user_id(text) or is_team_id(text) or service)


async def find_team(client: Client, text: str) -> str | None:
    """The team id that ``text`` names, fetching our teams from the hub if
    the local state does not know that name; None if it is not a team."""
    if looks_like_team(client.state, text):
        return resolve_team(client.state, text)
    if not maybe_team_name(text) or CAP_TEAMS not in client.hub_caps:
        return None
    try:
        async with asyncio.timeout(TEAM_SYNC_WAIT):
            await client.teams()
    except TimeoutError:
        return None  # a hub that names ``teams`` but does not answer it
    return resolve_team(client.state, text) if looks_like_team(client.state, text) else None


def _summary(view: TeamView, me: str) -> str:
    role = "admin" if me in view.admins else ("membre" if me in view.members else "ancien membre")
    extra = f", messages {lifespan_label(view.lifespan)}" if view.lifespan else ""
    problem = "  ⚠" if view.problem else ""
    return f"{view.team}  {clean(view.name)}  ({len(view.members)} membres, vous: {role}{extra}){problem}"


async def _print_news(client: Client) -> None:
    """Print what arrived meanwhile (membership changes, problems, messages)."""
    printer = EventPrinter(client.state)
    for event in await client.drain(idle=0.2, limit=2.0):
        print(await printer.line(event, client))


async def cmd_team(args: argparse.Namespace) -> int:
    action: str = args.team_command
    profile = open_profile(args)
    if action == "create":
        lifespan = parse_lifespan(args.lifespan) if args.lifespan else None
        async with connected(args, profile) as client:
            created = await client.create_team(args.name, args.org, lifespan)
        print(f"{created} created: {clean(args.name)}")
        return 0
    if action == "list":
        async with connected(args, profile) as client:
            views = await client.teams()
            me = client.user_id
        for view in views:
            print(_summary(view, me))
        if not views:
            print(f"{PROG}: no team yet (`{PROG} team create NAME`)", file=sys.stderr)
        return 0
    async with connected(args, profile) as client:
        found = await find_team(client, args.team)
        if found is None:
            raise UsageError(f"no team {args.team!r} (`{PROG} team list`)")
        team = found
        if action == "show":
            view = await client.team(team)
            for line in team_lines(view, Names(client.state), client.user_id):
                print(line)
            return 0
        if action == "leave":
            view = await client.leave_team(team)
            print(f"you left {clean(view.name)}")
            return 0
        check_recipient(args.user)
        changes = {
            "add": client.add_member,
            "remove": client.remove_member,
            "promote": client.promote,
            "demote": client.demote,
        }
        view = await changes[action](team, args.user)
        names = Names(client.state)
        peer = await client.resolve(args.user)
        done = {
            "add": "added to",
            "remove": "removed from",
            "promote": "is now an admin of",
            "demote": "is no longer an admin of",
        }[action]
        print(f"{names.of(peer.user)} {done} {clean(view.name)}")
        if view.problem is not None:
            print(team_problem_line(view), file=sys.stderr)
    return 0


async def cmd_recall(args: argparse.Namespace) -> int:
    try:
        message_id = parse_id(args.id)
    except ValueError:
        raise UsageError(f"{args.id!r} is not a message id (as `send` printed it)") from None
    async with connected(args) as client:
        try:
            removed = await client.recall(message_id)
        except UnknownMessage:
            raise UsageError(f"no message of yours with id {args.id} on this device") from None
    print(
        f"{format_id(message_id)} recalled (message retiré; "
        f"{removed} undelivered copie(s) deleted by the hub)"
    )
    return 0


async def cmd_read_receipts(args: argparse.Namespace) -> int:
    profile = open_profile(args)
    with profile.open_state() as state:
        if args.setting is not None:
            state.set_setting("read_receipts", args.setting == "on")
        on = bool(state.get_setting("read_receipts", True))
    if on:
        print("read receipts: on (senders see ✓✓ lu when you read their messages)")
    else:
        print("read receipts: off (only your own devices learn what you read)")
    return 0


async def cmd_read(args: argparse.Namespace) -> int:
    profile = open_profile(args)
    async with connected(args, profile) as client:
        conversation = await find_team(client, args.conversation)
        if conversation is None:
            check_recipient(args.conversation)
            found = client.state.find_peer(args.conversation)
            conversation = found.user if found is not None else args.conversation.strip()
        await client.drain(idle=0.3, limit=5.0)
        count = await client.mark_read(conversation)
    print(f"{count} message(s) marked read")
    return 0


def print_team_problem(view: TeamView) -> None:
    if view.problem is not None:
        print(team_problem_line(view), file=sys.stderr)
