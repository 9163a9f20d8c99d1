"""``miss-admin team``: care teams made and changed by the deployment's
administrators (SPEC §13.1), with records signed by the verification
authority's key (``by`` = ``authority``).

Commands::

    miss-admin team create --name N [--org O] [--lifespan 24h] --admin USER
    miss-admin team add TEAM USER
    miss-admin team remove TEAM USER
    miss-admin team list
    miss-admin team show TEAM

Each change is the record that follows the team's stored head, checked with
:func:`protocol.teams.apply_record` and the hub's caps (the configuration's
``max_team_members`` and ``max_teams_per_user``), then stored through
:meth:`Store.append_team_record`, whose compare-and-set refuses it if a hub
stored another record meanwhile (run the command again). Hubs read a
team's state from the store at each request, so they route by the change at
once; the ``team.changed`` audit event it writes is how every hub node
learns to push ``team_changed`` to the team's connected members (and to a
removed user) within about a second (``security_feed.py``).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from protocol import teams as pt
from protocol.frames import MAX_LIFESPAN_MS, MIN_LIFESPAN_MS

from .admin_common import authority_key, iso, now_ms, record, resolve, shown, who
from .config import Settings
from .store.base import Store, TeamAppend, TeamInfo, TeamRecordRow
from .teams import team_info, team_state

__all__ = ["add_team_parser", "cmd_team", "parse_lifespan"]

_UNITS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_lifespan(text: str) -> int:
    """``90m``, ``24h``, ``7d`` (or ms) as ms, within SPEC §13.6's bounds; raises ValueError."""
    m = re.fullmatch(r"(\d+)([mhd]?)", text.strip())
    if m is None:
        raise ValueError(f"--lifespan: {text!r} is not a duration such as 24h or 7d")
    ms = int(m.group(1)) * _UNITS.get(m.group(2), 1)
    if not MIN_LIFESPAN_MS <= ms <= MAX_LIFESPAN_MS:
        raise ValueError("--lifespan: between 1h and 30d")
    return ms


async def _team(store: Store, team: str) -> TeamInfo:
    info = await store.team_info(team)
    if info is None:
        raise LookupError(f"no team {team!r}")
    return info


async def _append(
    store: Store,
    settings: Settings,
    key_pk: bytes,
    info: TeamInfo | None,
    signed: pt.SignedRecord,
    joining: tuple[str, ...],
) -> TeamInfo:
    """Check and store one authority record; the team after it."""
    rec = signed.record()
    try:
        state = pt.apply_record(None if info is None else team_state(info), signed, key_pk, team=rec.team)
    except pt.TeamChainError as exc:
        raise ValueError(f"refused: {exc}") from None
    if len(state.members) > settings.max_team_members:
        raise ValueError(f"the team would have more than max_team_members ({settings.max_team_members})")
    after = team_info(state, pt.AUTHORITY if info is None else info.creator)
    outcome = await store.append_team_record(
        after,
        TeamRecordRow(rec.seq, signed.rec, signed.sig, state.head),
        joining=joining,
        max_teams=settings.max_teams_per_user,
    )
    if outcome is TeamAppend.CONFLICT:
        raise ValueError("the team changed meanwhile: run the command again")
    if outcome is TeamAppend.FULL:
        raise ValueError(
            f"{', '.join(joining)} is in max_teams_per_user ({settings.max_teams_per_user}) teams"
        )
    await record(store, "team.changed", user_id=rec.user, detail=rec.team)
    return after


def _row(info: TeamInfo) -> dict[str, Any]:
    return {
        "team": info.team,
        "name": info.name,
        "org": info.org,
        "lifespan": info.lifespan,
        "seq": info.seq,
        "head": info.head.hex(),
        "closed": info.closed,
        "members": sorted(info.members),
        "admins": sorted(info.admins),
        "creator": info.creator,
    }


async def cmd_team(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    if args.action == "list":
        teams = await store.list_teams()
        rows = [_row(t) for t in teams]
        text = "\n".join(
            f"{t.team}  {shown(t.name)}  {shown(t.org)}  {len(t.members)} member(s)"
            + ("  closed" if t.closed else "")
            for t in teams
        )
        return {"teams": rows, "text": text or "no teams yet"}
    if args.action == "show":
        info = await _team(store, args.team)
        records, _ = await store.team_records(args.team, 0, 1 << 40)
        chain = []
        for r in records:
            rec = pt.unpack_record(r.rec)
            chain.append({"seq": rec.seq, "op": rec.op, "user": rec.user, "by": rec.by, "at": iso(rec.at)})
        names = {}
        for member in sorted(info.members):
            found = await store.get_user(member)
            names[member] = who(found) if found is not None else member
        lines = [f"{info.team}  {shown(info.name)}  {shown(info.org)}  head {info.head.hex()[:16]}…"]
        lines += [
            f"  {u}  {names[u]}" + ("  admin" if u in info.admins else "") for u in sorted(info.members)
        ]
        lines += [f"  #{c['seq']} {c['op']} {c['user']} by {c['by']} at {c['at']}" for c in chain]
        return {**_row(info), "records": chain, "text": "\n".join(lines)}

    key = authority_key(settings, args)
    key_pk = bytes(key.verify_key)
    now = now_ms()
    if args.action == "create":
        admin = await resolve(store, args.admin)
        lifespan = parse_lifespan(args.lifespan) if args.lifespan else None
        rec = pt.next_record(
            None,
            "create",
            admin.user_id,
            by=pt.AUTHORITY,
            at=now,
            name=args.name.strip(),
            org=args.org or None,
            lifespan=lifespan,
        )
        after = await _append(
            store, settings, key_pk, None, pt.sign_record_authority(rec, key), (admin.user_id,)
        )
        return {**_row(after), "text": f"team {after.team} {shown(after.name)!r} created, admin {who(admin)}"}
    info = await _team(store, args.team)
    user = await resolve(store, args.user)
    op = "add" if args.action == "add" else "remove"
    rec = pt.next_record(team_state(info), op, user.user_id, by=pt.AUTHORITY, at=now)
    joining = (user.user_id,) if op == "add" else ()
    after = await _append(store, settings, key_pk, info, pt.sign_record_authority(rec, key), joining)
    verb = "added to" if op == "add" else "removed from"
    return {**_row(after), "text": f"{who(user)} {verb} {after.team} {shown(after.name)!r}"}


def add_team_parser(command: Any, key_file_help: str, common: argparse.ArgumentParser) -> None:
    """``team`` and its actions, on the parser-making ``command`` of admin.py."""
    team = command("team", "create and change care teams (records signed by the authority key)")
    actions = team.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a team and name its first admin", parents=[common])
    create.add_argument("--name", required=True, help="1 to 64 characters")
    create.add_argument("--org", default="", help="its organisation (optional)")
    create.add_argument("--lifespan", help="default lifespan of its messages: 1h to 30d (e.g. 24h)")
    create.add_argument("--admin", required=True, help="its first admin: user id or RPPS number")
    create.add_argument("--key-file", help=key_file_help)
    for verb, what in (("add", "add a member"), ("remove", "remove a member")):
        p = actions.add_parser(verb, help=what, parents=[common])
        p.add_argument("team", help="team id (t_...)")
        p.add_argument("user", help="user id or RPPS number")
        p.add_argument("--key-file", help=key_file_help)
    actions.add_parser("list", help="every team", parents=[common])
    show = actions.add_parser("show", help="a team's members and records", parents=[common])
    show.add_argument("team", help="team id (t_...)")
