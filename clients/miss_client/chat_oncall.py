"""``miss-chat`` commands of revision 4 (SPEC §14): on-call roles and urgent
messages; :mod:`.chat` parses their arguments.

* ``role list`` (the roles you hold now), ``role search TEXT`` (with their
  holders' names), ``role show ROLE``, ``role take ROLE [--join]`` (a
  handover unless ``--join``), ``role leave ROLE``. A ROLE is a role id
  (``r_...``) or a role's exact name (case-insensitive).
* ``send ROLE TEXT`` writes to whoever holds the role now (their names are
  printed first: the hub decides who holds a role, SPEC §14.11);
  ``--urgent`` (to a clinician, a team or a role) makes it ring until
  someone acknowledges, and reach the role's backups step by step.
* ``ack ID`` (acquitter) acknowledges an urgent message you received.
* ``urgent`` lists the urgent messages not acknowledged yet, received and
  sent, as this device recorded them (it survives restarts).

What users read is French first.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from protocol.errors import (
    NotRecipient,
    PolicyOutOfBounds,
    ProtocolError,
    RoleForbidden,
    RoleFull,
    RoleReserved,
    RoleVacant,
    UnknownRole,
    UrgentLimit,
)
from protocol.frames import CAP_ONCALL
from protocol.oncall import is_role_id

from .cli_common import PROG, EventPrinter, UsageError, connected, open_profile
from .client import Client
from .errors import ClientError
from .models import format_id, parse_id
from .oncall_models import RoleView, UrgentInfo
from .render import Names, clean, clock, excerpt, format_time, role_line

__all__ = [
    "ROLE_ERRORS",
    "cmd_ack",
    "cmd_role",
    "cmd_urgent",
    "describe_oncall",
    "find_role",
    "maybe_role",
    "print_role_targets",
]

#: How long a command waits for the hub to find a role by name (s).
ROLE_FIND_WAIT = 5.0

#: The role errors as the user reads them (SPEC §14.9).
ROLE_ERRORS: dict[type[Exception], str] = {
    UnknownRole: "rôle inconnu (unknown_role)",
    RoleVacant: (
        "personne ne tient ce rôle actuellement : choisissez une personne ou un autre rôle (role_vacant)"
    ),
    RoleReserved: "rôle réservé : seuls le planning ou un administrateur l'attribuent (role_reserved)",
    RoleForbidden: "ce rôle appartient à une autre organisation (role_forbidden)",
    RoleFull: "trop de titulaires, ou vous tenez déjà autant de rôles que permis : quittez-en un (role_full)",
    PolicyOutOfBounds: "délais d'escalade hors des bornes du hub (policy_out_of_bounds)",
    NotRecipient: "aucun message urgent reçu avec cet identifiant (not_recipient)",
    UrgentLimit: (
        "trop de vos messages urgents attendent encore un acquittement : "
        "attendez qu'ils soient acquittés ou arrivés au bout de leur escalade (urgent_limit)"
    ),
}


def describe_oncall(exc: BaseException) -> str | None:
    """The French line for a role error, None for another error."""
    for kind, text in ROLE_ERRORS.items():
        if isinstance(exc, kind):
            return text
    return None


def maybe_role(text: str) -> bool:
    """True if ``text`` may name a role (an id, or a name: not an RPPS
    number or a user id)."""
    text = text.strip()
    return is_role_id(text) or (bool(text) and not text.isdigit() and not text.startswith(("u_", "t_")))


async def find_role(client: Client, text: str) -> RoleView | None:
    """The role ``text`` names (id or exact name), None if none (or if the
    hub does not speak ``oncall``: a name is then no role's)."""
    if CAP_ONCALL not in client.hub_caps and not is_role_id(text.strip()):
        return None
    try:
        async with asyncio.timeout(ROLE_FIND_WAIT):
            return await client.roles.find(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except TimeoutError:
        return None  # a hub that names ``oncall`` but does not answer it


async def print_role_targets(client: Client, view: RoleView, urgent: bool) -> None:
    """Who a role message goes to, on stderr, before sending (SPEC §14.11)."""
    names = Names(client.state)
    for user in view.holders:
        await _know(client, user)
    for step in view.policy.steps if urgent else ():
        for user in step.holders:
            await _know(client, user)
    holders = ", ".join(names.of(u) for u in view.holders) or "personne"
    print(f"{PROG}: {clean(view.name)} : titulaires {holders}", file=sys.stderr)
    if urgent:
        for i, step in enumerate(view.policy.steps, 1):
            who = ", ".join(names.of(u) for u in step.holders) or "personne"
            print(f"{PROG}:   renfort étape {i} : {names.of(step.target)} ({who})", file=sys.stderr)


async def _know(client: Client, user: str) -> None:
    if client.state.get_peer(user) is None:
        try:
            await client.lookup(user=user)
        except (ProtocolError, ClientError):
            pass  # shown by id then


def _role_lines(views: list[RoleView], names: Names, me: str) -> list[str]:
    return [role_line(v, names, me) for v in views]


async def cmd_role(args: argparse.Namespace) -> int:
    action: str = args.role_command
    async with connected(args) as client:
        names = Names(client.state)
        if action in ("list", "search"):
            mine = action == "list"
            views = await client.roles.search("" if mine else args.text, mine=mine)
            for view in views:
                for user in view.holders:
                    await _know(client, user)
            for line in _role_lines(views, names, client.user_id):
                print(line)
            if not views:
                none = "vous ne tenez aucun rôle" if mine else f"aucun rôle ne correspond à {args.text!r}"
                print(f"{PROG}: {none}", file=sys.stderr)
            return 0
        found = await find_role(client, args.role)
        if found is None:
            raise UsageError(f"aucun rôle {args.role!r} (`{PROG} role search TEXTE`)")
        view = found
        if action == "take":
            view = await client.roles.take(view.role, join=args.join)
            done = "vous tenez désormais" if not args.join else "vous rejoignez les titulaires de"
        elif action == "leave":
            view = await client.roles.leave(view.role)
            done = "vous avez quitté"
        else:
            done = ""
        for user in view.holders:
            await _know(client, user)
        if done:
            print(f"{done} le rôle {clean(view.name)}")
        print(role_line(view, names, client.user_id))
    return 0


def _urgent_line(info: UrgentInfo, printer: EventPrinter) -> str:
    """One urgent message still waiting: to acknowledge, or ours escalating."""
    names = printer.names
    if info.direction == "in":
        return f"🔴 URGENT de {names.of(info.from_user)} à acquitter : {PROG} ack {format_id(info.id)}"
    what = printer.texts.excerpt(info.id, None)
    where = f"escalade vers {names.of(info.target)} (étape {info.step})" if info.target else "en attente"
    return f"🔴 URGENT envoyé {what} : {where}, pas encore acquitté ({format_id(info.id)})"


async def cmd_urgent(args: argparse.Namespace) -> int:
    profile = open_profile(args)
    async with connected(args, profile) as client:
        printer = EventPrinter(client.state)
        for event in await client.drain(idle=0.3, limit=5.0):
            print(await printer.line(event, client))
        waiting = client.urgent_waiting()
        for info in waiting:
            print(_urgent_line(info, printer))
    if not waiting:
        print(f"{PROG}: aucun message urgent en attente d'acquittement", file=sys.stderr)
    return 0


async def cmd_ack(args: argparse.Namespace) -> int:
    try:
        message_id = parse_id(args.id)
    except ValueError:
        raise UsageError(f"{args.id!r} n'est pas un identifiant de message (tel que affiché)") from None
    async with connected(args) as client:
        # What waits on the hub first: the message may have just arrived.
        printer = EventPrinter(client.state)
        for event in await client.drain(idle=0.3, limit=5.0):
            print(await printer.line(event, client))
        received = [i for i in client.roles.state.with_id(message_id) if i.from_user != client.user_id]
        if not received:
            raise UsageError(f"aucun message urgent reçu avec l'identifiant {args.id} sur cet appareil")
        info = received[0]
        ack = await client.acknowledge((info.from_user, message_id))
        names = Names(client.state)
        entry = client.state.get_message(info.from_user, message_id)
        what = excerpt(entry.body) if entry is not None else format_id(message_id)
        if ack.first:
            print(f"acquitté : {what} de {names.of(info.from_user)} (à {clock(ack.at)})")
        else:
            await _know(client, ack.user)
            who = "vous, sur un autre appareil" if ack.user == client.user_id else names.short(ack.user)
            print(f"déjà acquitté par {who} à {clock(ack.at)} : {what} ({format_time(ack.at)})")
    return 0
