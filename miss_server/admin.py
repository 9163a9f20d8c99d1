"""``miss-admin``: administer a hub's store, while the hub runs or not.

Commands::

    miss-admin migrate                       apply schema migrations
    miss-admin invite --name N --rpps R --profession P --organisation O
                                             record a clinician, print a one-time enrollment code
    miss-admin users                         list clinicians
    miss-admin devices USER                  list a clinician's devices (USER: user id or RPPS)

It reads the same configuration as ``miss-server`` (``--config``,
``MISS_*``), so it finds the same store. Output is plain text; ``--json``
prints machine-readable JSON instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .app import build_store, embedded_store
from .codes import code_hash, new_code
from .config import ConfigError, Settings, load_settings
from .store.base import SchemaMismatch, Store, StoreUnavailable, User

RPPS = re.compile(r"^\d{11}$")


def _now() -> int:
    return time.time_ns() // 1_000_000


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ms / 1000))


async def _resolve(store: Store, who: str) -> User:
    user = await (store.find_user_by_rpps(who) if who.isdigit() else store.get_user(who))
    if user is None:
        raise LookupError(f"no clinician {who!r}")
    return user


async def cmd_migrate(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    version = await store.migrate()
    return {"schema_version": version, "text": f"schema at version {version}"}


async def cmd_invite(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    if not RPPS.match(args.rpps):
        raise ValueError("an RPPS number has 11 digits")
    now = _now()
    try:
        user = await store.create_user(args.name, args.rpps, args.profession, args.organisation, now)
    except ValueError:
        raise ValueError(f"RPPS {args.rpps} is already registered") from None
    code = new_code()
    expires = now + int(settings.invite_ttl_hours * 3_600_000)
    await store.add_enrollment_code(user.user_id, code_hash(code), expires)
    return {
        "user": user.user_id,
        "code": code,
        "expires": expires,
        "text": f"invited {user.name} (RPPS {user.rpps}) as {user.user_id}\n"
        f"enrollment code: {code}  (single use, expires {_iso(expires)})",
    }


async def cmd_users(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    users = await store.list_users()
    rows = [
        {
            "user": u.user_id,
            "name": u.name,
            "rpps": u.rpps,
            "profession": u.profession,
            "organisation": u.organisation,
        }
        for u in users
    ]
    text = "\n".join(
        f"{r['user']}  {r['rpps']}  {r['name']} — {r['profession']}, {r['organisation']}" for r in rows
    )
    return {"users": rows, "text": text or "no clinicians yet"}


async def cmd_devices(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    user = await _resolve(store, args.user)
    devices = await store.user_devices(user.user_id)
    rows = [{"device": d.device_id, "label": d.label, "enrolled": _iso(d.created_at)} for d in devices]
    text = "\n".join(f"{r['device']}  {r['label'] or '-'}  enrolled {r['enrolled']}" for r in rows)
    return {"user": user.user_id, "devices": rows, "text": text or f"{user.name} has no device yet"}


COMMANDS: dict[str, Callable[[Store, Settings, argparse.Namespace], Awaitable[dict[str, Any]]]] = {
    "migrate": cmd_migrate,
    "invite": cmd_invite,
    "users": cmd_users,
    "devices": cmd_devices,
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="miss-admin", description="Administer a MiSS hub.")
    p.add_argument("--config", metavar="FILE", help="TOML configuration file (default: $MISS_CONFIG)")
    p.add_argument("--store", help="store URL (default: as the hub's configuration)")
    p.add_argument("--json", action="store_true", help="print JSON")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply schema migrations")
    inv = sub.add_parser("invite", help="record a clinician and print an enrollment code")
    inv.add_argument("--name", required=True)
    inv.add_argument("--rpps", required=True, help="11-digit RPPS number")
    inv.add_argument("--profession", required=True, help="e.g. médecin, pharmacien, infirmier")
    inv.add_argument("--organisation", required=True)
    sub.add_parser("users", help="list clinicians")
    dev = sub.add_parser("devices", help="list a clinician's devices")
    dev.add_argument("user", help="user id or RPPS number")
    return p


async def _run(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    store = build_store(settings)
    if args.command == "migrate":
        try:
            return await cmd_migrate(store, settings, args)
        finally:
            await store.close()
    if embedded_store(settings):
        await store.migrate()  # the embedded store migrates itself, as the hub does
    await store.open()
    try:
        return await COMMANDS[args.command](store, settings, args)
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config, store=args.store)
        result = asyncio.run(_run(settings, args))
    except ConfigError as exc:
        print(f"miss-admin: {exc}", file=sys.stderr)
        return 2
    except (SchemaMismatch, StoreUnavailable, LookupError, ValueError, NotImplementedError) as exc:
        print(f"miss-admin: {exc}", file=sys.stderr)
        return 1
    text = result.pop("text")
    print(json.dumps(result, ensure_ascii=False) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
