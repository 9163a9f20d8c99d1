"""``miss-admin role``: on-call roles (SPEC §14), their holders, their
schedule and their escalation policies, as the deployment's administrators
set them.

Commands::

    miss-admin role create NAME --org ORG [--reserved] [--interval S] [--step TARGET:S ...] [--final S]
    miss-admin role list
    miss-admin role show ROLE [--at TIME]
    miss-admin role assign ROLE USER | miss-admin role unassign ROLE USER
    miss-admin role import FILE.csv
    miss-admin role policy ROLE [--interval S] [--step TARGET:S ... | --no-steps] [--final S] | --clear
    miss-admin role defaults --org ORG --interval S --final S

ROLE is a role id (``r_…``) or a role's exact name; USER a user id or an
RPPS number; a step's TARGET a role (id or exact name) or a clinician (RPPS
number or user id). Durations S are seconds (``90``, ``0.5``) or ``2m``,
``1h``. A policy given in part is completed from the one it replaces (the
role's own, else the effective one: the organisation's default, else the
deployment's), and checked against the hub's caps
(``escalation_min_interval_ms``, ``escalation_max_steps`` of the same
configuration the hub reads): beyond them the command exits with status 2
and changes nothing.

``import`` reads a CSV file (UTF-8, ``,`` or ``;``) with the header
``role,rpps,start,end``; times are ISO 8601, with an offset
(``2026-12-05T20:00:00+01:00``) or naive (Europe/Paris time). Every line
is checked before anything is written: one bad line (unknown role or RPPS,
a clinician who is not verified, an unreadable time, an end not after the
start) refuses the whole file, naming every bad line with its number. A
good file replaces, in one transaction (:meth:`Store.replace_shifts`), the
schedule of every role it names (the others keep theirs; manual holders
stay): a shift in progress or to come that the file does not list is gone.
Shifts of the file already over are skipped (they make nobody a holder any
more), so a week's schedule can be imported on its Wednesday.

Every change is written to the audit log, the role id first in ``detail``:
``role.created``, ``role.assigned`` / ``role.unassigned`` (with the user),
``role.schedule_imported`` (one per role, ``r_… shifts=N``),
``role.policy_set``, and ``org.policy_set`` (``detail`` = the organisation).
Hubs read holders and policies from the store at each request and send, so
a change applies at once; the audit events are how hub nodes learn to push
``role_changed`` to connected clients (``security_feed.py``).
"""

from __future__ import annotations

import argparse
import csv
import io
import re
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from protocol import errors
from protocol.oncall import MAX_ROLE_HOLDERS, Policy, Step, is_role_id, pack_policy, unpack_policy

from .admin_common import iso, now_ms, record, resolve, shown, standing, who
from .config import Settings
from .store.base import Role, Shift, Store, User

__all__ = ["PolicyBeyondCaps", "add_role_parser", "cmd_role", "parse_seconds"]

#: Where a naive time of an imported schedule is.
LOCAL_ZONE = "Europe/Paris"
MAX_NAME = 64
MAX_ORG = 128
HEADER = ["role", "rpps", "start", "end"]


class PolicyBeyondCaps(ValueError):
    """A policy beyond the hub's caps: ``miss-admin`` exits with status 2."""


# --- parsing ----------------------------------------------------------------------

_UNITS = {"": 1000, "s": 1000, "m": 60_000, "h": 3_600_000}


def parse_seconds(text: str, what: str) -> int:
    """``90``, ``0.5``, ``90s``, ``2m``, ``1h`` as ms; raises ValueError."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smh]?)", text.strip())
    if m is None:
        raise ValueError(f"{what}: {text!r} is not a duration in seconds (90, 0.5) or 2m, 1h")
    return round(float(m.group(1)) * _UNITS[m.group(2)])


def _seconds(ms: int) -> str:
    """ms for people: ``90 s``, ``2 min``, ``1 h``."""
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000} h"
    if ms % 60_000 == 0:
        return f"{ms // 60_000} min"
    return f"{ms / 1000:g} s"


def _zone() -> ZoneInfo:
    try:
        return ZoneInfo(LOCAL_ZONE)
    except ZoneInfoNotFoundError:
        raise ValueError(
            f"the time zone database lacks {LOCAL_ZONE}: give times with an offset, or install tzdata"
        ) from None


def parse_time(text: str) -> int:
    """An ISO 8601 time, with an offset or naive (Europe/Paris), as ms; raises ValueError."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time such as 2026-12-05T20:00:00+01:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_zone())
    return int(when.timestamp() * 1000)


# --- finding roles and users ---------------------------------------------------------


async def find_role(store: Store, ref: str, roles: list[Role] | None = None) -> Role:
    """The role named by its id or its exact name; raises LookupError
    (also when two roles have that name: use the id)."""
    if is_role_id(ref):
        found = await store.get_role(ref)
        if found is None:
            raise LookupError(f"no role {ref!r}")
        return found
    named = [r for r in (roles if roles is not None else await store.list_roles()) if r.name == ref.strip()]
    if not named:
        raise LookupError(f"no role named {ref!r}")
    if len(named) > 1:
        raise LookupError(
            f"{len(named)} roles are named {ref!r}: use the id ({', '.join(r.role for r in named)})"
        )
    return named[0]


def _verified(user: User, now: int) -> None:
    """ValueError unless ``user`` is a verified clinician now (not suspended)."""
    _, word = standing(user, now)
    if word != "verified":
        raise ValueError(f"{who(user)} is {word}, not a verified clinician")


async def _step(store: Store, text: str) -> Step:
    """``TARGET:S`` as a step: a role (id or exact name) or a clinician (RPPS or user id)."""
    target, sep, delay = text.rpartition(":")
    if not sep or not target.strip():
        raise ValueError(f"--step: {text!r} is not TARGET:SECONDS (a role or an RPPS number, then a delay)")
    ms = parse_seconds(delay, "--step")
    target = target.strip()
    if target.isdigit() or target.startswith("u_"):
        return Step(ms, user=(await resolve(store, target)).user_id)
    return Step(ms, role=(await find_role(store, target)).role)


# --- policies --------------------------------------------------------------------------


async def org_default(store: Store, settings: Settings, org: str) -> tuple[Policy, str]:
    """The organisation's default policy, else the deployment's; and which."""
    if org:
        stored = await store.get_org_policy(org)
        if stored is not None:
            return Policy(stored.interval, (), stored.final), "organisation"
    return Policy(
        settings.escalation_default_interval_ms, (), settings.escalation_default_final_ms
    ), "deployment"


async def effective(store: Store, settings: Settings, role: Role) -> tuple[Policy, str]:
    """The role's policy, else its organisation's, else the deployment's
    (as the hub's RoleService reads it); and which: role, organisation, deployment."""
    if role.policy is not None:
        try:
            return unpack_policy(role.policy), "role"
        except errors.MalformedFrame:
            pass  # unreadable: the hub falls back as well
    return await org_default(store, settings, role.org)


def check(policy: Policy, settings: Settings) -> Policy:
    """``policy`` if within the hub's caps; PolicyBeyondCaps otherwise."""
    floor, steps = settings.escalation_min_interval_ms, settings.escalation_max_steps
    try:
        policy.check(floor, steps)
    except errors.PolicyOutOfBounds as exc:
        raise PolicyBeyondCaps(
            f"policy refused, beyond this hub's caps ({exc}): interval, each step's delay and final "
            f"must be between {_seconds(max(floor, 100))} and 24 h (escalation_min_interval_ms), "
            f"with at most {steps} step(s) (escalation_max_steps); nothing changed"
        ) from None
    return policy


async def _policy_from_args(store: Store, args: argparse.Namespace, base: Policy) -> Policy | None:
    """The policy the options give, completing ``base``; None when no option is given."""
    steps: tuple[Step, ...] | None = None
    if args.step:
        steps = tuple([await _step(store, s) for s in args.step])
    elif getattr(args, "no_steps", False):
        steps = ()
    if args.interval is None and args.final is None and steps is None:
        return None
    return Policy(
        parse_seconds(args.interval, "--interval") if args.interval is not None else base.interval,
        base.steps if steps is None else steps,
        parse_seconds(args.final, "--final") if args.final is not None else base.final,
    )


def policy_map(policy: Policy, users: list[list[str]] | None = None) -> dict[str, Any]:
    if users is not None:
        policy = replace(
            policy,
            steps=tuple(replace(s, holders=tuple(u)) for s, u in zip(policy.steps, users, strict=True)),
        )
    return policy.to_map(with_holders=users is not None)


def policy_text(policy: Policy, labels: dict[str, str] | None = None) -> str:
    """A policy for people; ``labels`` names step targets (role or user ids)."""
    named = labels or {}
    steps = "".join(f", then {named.get(s.target, s.target)} after {_seconds(s.delay)}" for s in policy.steps)
    return (
        f"reminders every {_seconds(policy.interval)}{steps}; "
        f"no acknowledgement after {_seconds(policy.final)} more"
    )


# --- commands --------------------------------------------------------------------------


def _row(role: Role) -> dict[str, Any]:
    return {
        "role": role.role,
        "name": role.name,
        "org": role.org,
        "reserved": role.reserved,
        "policy": None if role.policy is None else unpack_policy(role.policy).to_map(with_holders=False),
        "created": iso(role.created_at),
    }


def _label(role: Role) -> str:
    return f"{role.role}  {shown(role.name)!r}" + (f"  ({shown(role.org)})" if role.org else "")


async def _create(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    name, org = args.name.strip(), args.org.strip()
    if not 1 <= len(name) <= MAX_NAME:
        raise ValueError(f"a role's name is 1 to {MAX_NAME} characters")
    if len(org) > MAX_ORG:
        raise ValueError(f"an organisation's name is at most {MAX_ORG} characters")
    if org and org not in {o.name for o in await store.list_organisations()}:
        raise LookupError(f"no organisation {org!r} (miss-admin org add, or --org '' for every organisation)")
    roles = await store.list_roles()
    clash = [r.role for r in roles if r.name == name]
    if clash:
        raise ValueError(f"a role named {name!r} exists already ({clash[0]}): names must be unique")
    base, _ = await org_default(store, settings, org)
    policy = await _policy_from_args(store, args, base)
    if policy is not None:
        check(policy, settings)
    role = await store.create_role(
        name, org, bool(args.reserved), None if policy is None else pack_policy(policy), now_ms()
    )
    await record(store, "role.created", detail=role.role)
    return {**_row(role), "text": role.role}


async def _list(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    now = now_ms()
    rows, lines = [], []
    for role in await store.list_roles():
        holders = await store.role_holders(role.role, now)
        rows.append({**_row(role), "holders": sorted(holders)})
        lines.append(
            f"{_label(role)}  {len(holders)} holder(s)"
            + ("  reserved" if role.reserved else "")
            + ("  own policy" if role.policy is not None else "")
        )
    return {"roles": rows, "text": "\n".join(lines) or "no roles yet"}


async def _names(store: Store, users: list[str]) -> dict[str, str]:
    out = {}
    for u in users:
        found = await store.get_user(u)
        out[u] = who(found) if found is not None else u
    return out


async def _show(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    role = await find_role(store, args.role)
    at = parse_time(args.at) if args.at else now_ms()
    holders = sorted(await store.role_holders(role.role, at))
    shifts = await store.shifts(role.role, at)
    now_on = {s.user_id: s for s in shifts if s.start <= at < s.end}
    upcoming = sorted((s for s in shifts if s.start > at), key=lambda s: (s.start, s.user_id))
    policy, source = await effective(store, settings, role)
    users = []
    for step in policy.steps:
        users.append(sorted(await store.role_holders(step.role, at)) if step.role else [step.target])
    names = await _names(
        store, sorted({*holders, *(s.user_id for s in upcoming), *(u for us in users for u in us)})
    )
    holders = holders[:MAX_ROLE_HOLDERS]
    until = {u: iso(now_on[u].end) if u in now_on else None for u in holders}
    lines = [_label(role) + ("  reserved" if role.reserved else "")]
    lines.append(f"holders at {iso(at)}:" if holders else f"nobody holds it at {iso(at)}")
    lines += [f"  {u}  {names[u]}  " + (f"shift until {until[u]}" if until[u] else "manual") for u in holders]
    if upcoming:
        lines.append("upcoming shifts:")
        lines += [f"  {iso(s.start)} → {iso(s.end)}  {names[s.user_id]}" for s in upcoming]
    labels = {s.target: names.get(s.target, s.target) for s in policy.steps}
    for step in policy.steps:
        if step.role is not None:
            found = await store.get_role(step.role)
            labels[step.role] = f"the holders of {shown(found.name)!r}" if found else f"{step.role} (deleted)"
    lines.append(f"policy ({source}): {policy_text(policy, labels)}")
    return {
        **_row(role),
        "at": iso(at),
        "holders": [{"user": u, "scheduled_until": until[u]} for u in holders],
        "upcoming": [{"user": s.user_id, "start": iso(s.start), "end": iso(s.end)} for s in upcoming],
        "effective_policy": policy_map(policy, users),
        "policy_source": source,
        "text": "\n".join(lines),
    }


async def _assign(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    role = await find_role(store, args.role)
    user = await resolve(store, args.user)
    now = now_ms()
    if args.action == "assign":
        _verified(user, now)
        holders = await store.role_holders(role.role, now)
        if user.user_id not in holders and len(holders) >= MAX_ROLE_HOLDERS:
            raise ValueError(f"{role.role} has {len(holders)} holders already (at most {MAX_ROLE_HOLDERS})")
        if not await store.assign_role(role.role, user.user_id, now):
            # Deleted, or filled by others, since the checks above.
            raise ValueError(f"{role.role} is gone or has {MAX_ROLE_HOLDERS} holders now: nothing changed")
        action, verb = "role.assigned", "now holds"
    else:
        if not await store.unassign_role(role.role, user.user_id):
            raise ValueError(f"{who(user)} does not hold {role.role} manually (a scheduled shift stays)")
        action, verb = "role.unassigned", "no longer holds"
    await record(store, action, user_id=user.user_id, detail=role.role)
    holders = sorted(await store.role_holders(role.role, now_ms()))
    return {
        "role": role.role,
        "user": user.user_id,
        "holders": holders,
        "text": f"{who(user)} {verb} {_label(role)}",
    }


async def _policy(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    role = await find_role(store, args.role)
    if args.clear:
        if args.interval or args.final or args.step or args.no_steps:
            raise ValueError("--clear takes no other option")
        policy = None
    else:
        base, _ = await effective(store, settings, role)
        policy = await _policy_from_args(store, args, base)
        if policy is None:
            raise ValueError("give --interval, --step, --no-steps or --final (or --clear)")
        check(policy, settings)
    if not await store.set_role_policy(role.role, None if policy is None else pack_policy(policy)):
        raise LookupError(f"no role {role.role!r}")
    await record(store, "role.policy_set", detail=role.role + (" cleared" if policy is None else ""))
    after, source = await effective(
        store, settings, replace(role, policy=None if policy is None else pack_policy(policy))
    )
    return {
        "role": role.role,
        "policy": None if policy is None else policy.to_map(with_holders=False),
        "effective_policy": after.to_map(with_holders=False),
        "policy_source": source,
        "text": f"{_label(role)}: {policy_text(after)} ({source})",
    }


async def _defaults(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    org = args.org.strip()
    if org not in {o.name for o in await store.list_organisations()}:
        raise LookupError(f"no organisation {org!r}")
    policy = check(
        Policy(parse_seconds(args.interval, "--interval"), (), parse_seconds(args.final, "--final")), settings
    )
    await store.set_org_policy(org, policy.interval, policy.final)
    await record(store, "org.policy_set", detail=org)
    return {
        "org": org,
        "interval": policy.interval,
        "final": policy.final,
        "text": f"default policy of {shown(org)!r}: {policy_text(policy)}",
    }


# --- import ------------------------------------------------------------------------------


@dataclass
class _Schedule:
    shifts: list[Shift]
    roles: dict[str, Role]  # every role the file names, by id
    skipped: int  # shifts already over
    lines: int


def _rows(path: Path) -> tuple[list[tuple[int, list[str]]], list[str]]:
    """The data rows (line number, cells) of a CSV schedule, and the
    problems of its form (header, encoding)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        return [], ["the file is not UTF-8 text (save it as CSV UTF-8)"]
    first = text.split("\n", 1)[0]
    dialect = ";" if ";" in first and "," not in first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=dialect)
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header] != HEADER:
        return [], [f"line 1: the header must be {','.join(HEADER)}"]
    rows = []
    for cells in reader:
        if any(c.strip() for c in cells):
            rows.append((reader.line_num, cells))
    return rows, []


async def read_schedule(store: Store, path: Path, now: int) -> _Schedule:
    """Every shift of the file, checked; ValueError naming every bad line."""
    rows, problems = _rows(path)
    roles = await store.list_roles()
    users: dict[str, User | str] = {}  # an RPPS: the clinician, or why not
    named: dict[str, Role] = {}
    shifts: list[Shift] = []
    skipped = 0
    for line, cells in rows:
        if len(cells) != len(HEADER):
            problems.append(f"line {line}: {len(cells)} columns, expected {len(HEADER)} ({','.join(HEADER)})")
            continue
        role_ref, rpps, start_text, end_text = (c.strip() for c in cells)
        reasons = []
        role: Role | None = None
        try:
            role = await find_role(store, role_ref, roles)
        except LookupError as exc:
            reasons.append(str(exc))
        if rpps not in users:
            try:
                user = await resolve(store, rpps) if rpps else None
                if user is None:
                    raise LookupError("no RPPS number")
                _verified(user, now)
                users[rpps] = user
            except (LookupError, ValueError) as exc:
                users[rpps] = str(exc)
        found = users[rpps]
        if isinstance(found, str):
            reasons.append(found)
        times = []
        for what, text in (("start", start_text), ("end", end_text)):
            try:
                times.append(parse_time(text))
            except ValueError as exc:
                reasons.append(f"{what}: {exc}")
        if len(times) == 2 and times[1] <= times[0]:
            reasons.append(f"end {end_text} is not after start {start_text}")
        if reasons:
            problems.append(f"line {line}: " + "; ".join(reasons))
            continue
        assert role is not None and isinstance(found, User)
        named[role.role] = role
        if times[1] <= now:
            skipped += 1
        else:
            shifts.append(Shift(role.role, found.user_id, times[0], times[1]))
    if problems:
        raise ValueError(f"{path}: nothing imported, {len(problems)} bad line(s):\n" + "\n".join(problems))
    if not rows:
        raise ValueError(f"{path}: no shifts (only a header): nothing imported")
    return _Schedule(shifts, named, skipped, len(rows))


async def _import(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.file)
    schedule = await read_schedule(store, path, now_ms())
    stored = await store.replace_shifts(schedule.shifts, sorted(schedule.roles))
    per_role = {r: sum(1 for s in schedule.shifts if s.role == r) for r in sorted(schedule.roles)}
    for role, n in per_role.items():
        await record(store, "role.schedule_imported", detail=f"{role} shifts={n}")
    lines = [f"{len(schedule.shifts)} shift(s) imported from {path.name}, replacing the schedule of:"]
    lines += [f"  {_label(schedule.roles[r])}  {n} shift(s)" for r, n in per_role.items()]
    if schedule.skipped:
        lines.append(f"{schedule.skipped} shift(s) already over, skipped")
    return {
        "imported": len(schedule.shifts),
        "stored": stored,
        "skipped": schedule.skipped,
        "roles": per_role,
        "text": "\n".join(lines),
    }


_ACTIONS = {
    "create": _create,
    "list": _list,
    "show": _show,
    "assign": _assign,
    "unassign": _assign,
    "import": _import,
    "policy": _policy,
    "defaults": _defaults,
}


async def cmd_role(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    return await _ACTIONS[args.action](store, settings, args)


def _policy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval", metavar="S", help="remind the recipients every S seconds (or 2m, 1h)")
    p.add_argument(
        "--step",
        action="append",
        metavar="TARGET:S",
        help="backup: a role (id or exact name) or a clinician (RPPS), released S seconds after the "
        "previous step (after the send for the first); repeatable, in order",
    )
    p.add_argument(
        "--final", metavar="S", help="tell the sender nobody acknowledged S seconds after the last step"
    )


def add_role_parser(command: Any, common: argparse.ArgumentParser) -> None:
    """``role`` and its actions, on the parser-making ``command`` of admin.py."""
    role = command("role", "on-call roles: holders, schedule, escalation policies")
    actions = role.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a role; prints its id", parents=[common])
    create.add_argument("name", help="1 to 64 characters, unique (e.g. 'Cardiologie — senior de garde')")
    create.add_argument("--org", required=True, help="its organisation ('' for every organisation)")
    create.add_argument(
        "--reserved", action="store_true", help="held only through the schedule and administrators"
    )
    _policy_options(create)
    actions.add_parser("list", help="every role", parents=[common])
    show = actions.add_parser("show", help="a role's holders, upcoming shifts and policy", parents=[common])
    show.add_argument("role", help="role id (r_...) or exact name")
    show.add_argument("--at", metavar="TIME", help="holders at this ISO 8601 time (default: now)")
    for verb, what in (("assign", "make a clinician a holder"), ("unassign", "release a holder")):
        p = actions.add_parser(verb, help=what, parents=[common])
        p.add_argument("role", help="role id (r_...) or exact name")
        p.add_argument("user", help="RPPS number or user id")
    imp = actions.add_parser(
        "import",
        help="replace the schedule of the roles a CSV file names",
        description="Read a CSV schedule with the header role,rpps,start,end (times ISO 8601, naive = "
        "Europe/Paris) and replace the schedule of the roles it names; one bad "
        "line refuses the whole file.",
        parents=[common],
    )
    imp.add_argument("file", help="CSV file (UTF-8)")
    pol = actions.add_parser("policy", help="set or clear a role's escalation policy", parents=[common])
    pol.add_argument("role", help="role id (r_...) or exact name")
    _policy_options(pol)
    pol.add_argument("--no-steps", action="store_true", help="no backup steps")
    pol.add_argument("--clear", action="store_true", help="use the organisation's default again")
    defaults = actions.add_parser(
        "defaults", help="an organisation's default policy (no steps)", parents=[common]
    )
    defaults.add_argument("--org", required=True)
    defaults.add_argument("--interval", metavar="S", required=True)
    defaults.add_argument("--final", metavar="S", required=True)
