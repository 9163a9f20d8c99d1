"""``miss-admin``: administer a hub's store, while the hub runs or not.

Commands::

    miss-admin migrate                       create the store or apply schema migrations
    miss-admin authority init [--key-file F] create the verification authority key (SPEC §11.1)
    miss-admin authority show [--key-file F] print its public key, for the hub and clients
    miss-admin authority rotate --key-file OLD --new-key-file NEW [--overlap-days 30]
    miss-admin authority reissue --key-file NEW [--previous-key OLD_PUBLIC ...]
    miss-admin authority retire --statement TEXT
                                             replace the authority key (SPEC §15, admin_rotation.py)
    miss-admin org add NAME | miss-admin orgs
                                             record / list organisations
    miss-admin invite --name N --rpps R --profession P --organisation O
                                             record a clinician, print a one-time enrollment code
    miss-admin reinvite USER                 a new enrollment code for an existing account
    miss-admin invitations                   enrollment codes not used yet
    miss-admin verify USER [--device D ...] [--days N] [--key-file F]
                                             show USER's devices, attest those confirmed
    miss-admin renew [--within DAYS] [--days N] [--key-file F]
                                             re-issue attestations that name revoked devices
                                             or expire soon (run it daily where the key is)
    miss-admin suspend USER [--reason R] | miss-admin unsuspend USER
    miss-admin revoke DEVICE [--reason R]    revoke a device for ever (and re-issue the
                                             attestation without it, if the key file is here)
    miss-admin users                         list clinicians
    miss-admin devices USER                  list a clinician's devices
    miss-admin export USER                   everything the store holds about a clinician (GDPR)
    miss-admin delete USER [--yes]           erase a clinician's account (GDPR)
    miss-admin audit [--user U] [--action A] [--since T] [--limit N]
                                             the audit log, oldest first
    miss-admin team create --name N [--org O] [--lifespan 24h] --admin USER [--key-file F]
    miss-admin team add TEAM USER | miss-admin team remove TEAM USER [--key-file F]
    miss-admin team list | miss-admin team show TEAM
                                             care teams, records signed by the authority key
                                             (admin_teams.py)
    miss-admin role create|list|show|assign|unassign|import|policy|defaults ...
                                             on-call roles, their schedule and escalation
                                             policies (admin_roles.py)
    miss-admin service create --name N --ident svc:ID --organisation O [--replies]
    miss-admin service list [--organisation O] | miss-admin service replies USER on|off
                                             service accounts of an organisation's systems
                                             (SPEC §17, admin_services.py)
    miss-admin backup --to FILE              copy the embedded store while the hub runs, checked
    miss-admin restore --from FILE           put such a copy in place (hub stopped) (admin_backup.py)
    miss-admin web-hash [--dir PATH]         the hash of the browser client's bundle this hub
                                             serves (or of a copy in PATH), and its files

USER is a user id (``u_...``), an RPPS number or a service's ``svc:`` identifier. The authority key file
(``--key-file``, default ``$MISS_AUTHORITY_KEY_FILE`` or
``miss-authority.key``) is read only by ``authority``, ``verify``, ``renew``
and ``revoke``: keep it off the hub's machine. Every change is written to
the audit log with the administrator's login as actor; connected hubs
enforce a revocation, a suspension or a deletion within about a second.

It reads the same configuration as ``miss-server`` (``--config``,
``MISS_*``), so it finds the same store, and says on stderr which store it
uses. It never creates a SQLite store except with ``migrate``: run from
another directory, it would otherwise have made an empty one. Output is
plain text, with what others typed (names, labels) made safe for a
terminal (``protocol.text``); ``--json`` (before or after the command)
prints machine-readable JSON instead. Questions (``verify``, ``delete``)
are asked on stderr and answered on stdin, terminal or not.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import nacl.signing

from protocol import attestation

from .admin_accounts import (
    DELETE_HELP,
    audit_row,
    audit_text,
    cmd_delete,
    cmd_export,
    cmd_invite,
    cmd_reinvite,
    cmd_suspend,
)
from .admin_backup import NotEmbedded, add_backup_parser, cmd_backup, cmd_restore
from .admin_common import (
    DEFAULT_KEY_FILE,
    Command,
    attestation_of,
    enrollments,
    iso,
    key_file,
    now_ms,
    origin,
    record,
    resolve,
    shown,
    standing,
    vouches,
)
from .admin_roles import PolicyBeyondCaps, add_role_parser, cmd_role
from .admin_rotation import ROTATION_ACTIONS, add_rotation_arguments, cmd_reissue, cmd_retire, cmd_rotate
from .admin_services import add_service_parser, cmd_service
from .admin_teams import add_team_parser, cmd_team
from .admin_verify import cmd_renew, cmd_revoke, cmd_verify
from .app import build_store, embedded_store
from .authority import create_key_file, load_authority, signed_attestation
from .config import ConfigError, Settings, load_settings
from .store.base import SchemaMismatch, Store, StoreUnavailable
from .web import BUNDLE_DIR, WebBundle

__all__ = ["main"]


def _public_text(key: nacl.signing.SigningKey) -> dict[str, Any]:
    public = bytes(key.verify_key)
    text = attestation.encode_authority_key(public)
    fp = attestation.authority_fingerprint(public)
    return {
        "public_key": text,
        "fingerprint": fp,
        "text": f"public key: {text}\nfingerprint: {fp}\n"
        f"give it to the hub (MISS_AUTHORITY_KEY={text}, or authority_key in its TOML file)\n"
        f"and to every clinician's client (miss-chat enroll --authority {text})",
    }


async def cmd_authority(store: Store | None, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    path = key_file(args)
    if args.action == "init":
        key = nacl.signing.SigningKey.generate()
        create_key_file(path, key)
        out = _public_text(key)
        out["text"] = f"wrote {path} (mode 600)\n" + out["text"]
        return out
    return _public_text(load_authority(path))


async def cmd_web_hash(store: Store | None, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """The bundle hash (web.bundle_hash: SHA-256 of index.html, which pins
    the other files by SRI) and every file the hub would serve, with its size."""
    directory = Path(args.dir) if args.dir else BUNDLE_DIR
    try:
        bundle = WebBundle.load(directory)
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
    sizes = {a.name: len(a.body) for a in bundle.assets.values()}
    width = max(map(len, sizes))
    lines = [bundle.hash] + [f"  {name:<{width}}  {size:>9,} bytes" for name, size in sizes.items()]
    if args.dir is None and not settings.web_client:
        lines.append("(web_client is off: this hub does not serve it)")
    return {
        "hash": bundle.hash,
        "directory": str(directory.absolute()),
        "files": [{"name": name, "size": size} for name, size in sizes.items()],
        "served": args.dir is None and settings.web_client,
        "text": "\n".join(lines),
    }


async def cmd_org(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    org = await store.add_organisation(args.name.strip(), now_ms())
    await record(store, "org.added", detail=org.name)
    return {"organisation": org.name, "text": f"organisation {shown(org.name)!r} recorded"}


async def cmd_orgs(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    orgs = await store.list_organisations()
    rows = [{"organisation": o.name, "created": iso(o.created_at)} for o in orgs]
    return {"organisations": rows, "text": "\n".join(shown(o.name) for o in orgs) or "no organisations yet"}


async def cmd_invitations(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    pending = await store.invitations(now_ms())
    names = {u.user_id: u.name for u in await store.list_users()} if pending else {}
    rows = [
        {"user": inv.user_id, "name": names.get(inv.user_id, "?"), "expires": iso(inv.expires_at)}
        for inv in pending
    ]
    text = "\n".join(f"{r['user']}  {shown(r['name'])}  expires {r['expires']}" for r in rows)
    return {"invitations": rows, "text": text or "no pending invitations"}


def _since(text: str | None) -> int:
    """``2026-11-29``, ``2026-11-29T10:00``, or a duration back from now: ``15m``, ``2h``, ``7d``."""
    if not text:
        return 0
    m = re.fullmatch(r"(\d+)([smhd])", text)
    if m:
        return now_ms() - int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)] * 1000
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since: {text!r} is neither a date (2026-11-29T10:00) nor a duration (2h)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


async def cmd_audit(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    user_id = None
    if args.user:
        try:
            user_id = (await resolve(store, args.user)).user_id
        except LookupError:
            if not args.user.startswith("u_"):
                raise
            user_id = args.user  # a deleted account: its events stay (admin_accounts.py)
    events = await store.audit_log(
        since_at=_since(args.since), user_id=user_id, actions=args.action or None, limit=args.limit
    )
    rows = [audit_row(e) for e in events]
    return {"events": rows, "text": "\n".join(map(audit_text, rows)) or "no matching events"}


async def cmd_migrate(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    version = await store.migrate()
    return {"schema_version": version, "text": f"schema at version {version}"}


async def cmd_users(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    users = await store.list_users()
    now = now_ms()
    rows: list[dict[str, Any]] = []
    for u in users:
        until, word = standing(u, now)
        rows.append(
            {
                "user": u.user_id,
                "name": u.name,
                "rpps": u.rpps,
                "profession": u.profession,
                "organisation": u.organisation,
                "standing": word,
                "verified_until": until,
            }
        )
    text = "\n".join(
        f"{r['user']}  {r['rpps']}  {shown(r['name'])} — {shown(r['profession'])}, "
        f"{shown(r['organisation'])}  [{r['standing']}"
        + (f" until {iso(r['verified_until'])}]" if r["standing"] == "verified" else "]")
        for r in rows
    )
    return {"users": rows, "text": text or "no clinicians yet"}


async def cmd_devices(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    user = await resolve(store, args.user)
    devices = await store.user_devices(user.user_id)
    authority = settings.authority_keys
    att = attestation_of(user) if authority is None else signed_attestation(user.attestation, authority)
    enrolled = await enrollments(store, user.user_id)
    rows: list[dict[str, Any]] = [
        {
            "device": d.device_id,
            "label": d.label,
            "enrolled": iso(d.created_at),
            "address": enrolled[d.device_id].address if d.device_id in enrolled else None,
            "attested": vouches(att, d),
            "sign_key": base64.b64encode(d.sign_pk).decode(),
        }
        for d in devices
    ]
    text = "\n".join(
        f'{d.device_id}  "{shown(d.label, "")}"  {origin(d, enrolled)}  '
        f"{'attested' if r['attested'] else 'NOT attested'}  key {r['sign_key'][:12]}…"
        for d, r in zip(devices, rows, strict=True)
    )
    return {"user": user.user_id, "devices": rows, "text": text or f"{shown(user.name)} has no device yet"}


COMMANDS: dict[str, Command] = {
    "migrate": cmd_migrate,
    "invite": cmd_invite,
    "reinvite": cmd_reinvite,
    "users": cmd_users,
    "devices": cmd_devices,
    "org": cmd_org,
    "orgs": cmd_orgs,
    "invitations": cmd_invitations,
    "verify": cmd_verify,
    "renew": cmd_renew,
    "suspend": cmd_suspend,
    "unsuspend": cmd_suspend,
    "revoke": cmd_revoke,
    "export": cmd_export,
    "delete": cmd_delete,
    "audit": cmd_audit,
    "team": cmd_team,
    "role": cmd_role,
    "service": cmd_service,
}


KEY_FILE_HELP = f"authority key file (default: $MISS_AUTHORITY_KEY_FILE or {DEFAULT_KEY_FILE})"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="miss-admin", description="Administer a MiSS hub.")
    p.add_argument("--version", action="version", version=f"%(prog)s {version('miss')}")
    p.add_argument("--config", metavar="FILE", help="TOML configuration file (default: $MISS_CONFIG)")
    p.add_argument("--store", help="store URL (default: as the hub's configuration)")
    p.add_argument("--json", action="store_true", help="print JSON")
    # The same options after the command (`miss-admin audit --json`); SUPPRESS
    # leaves the value given before the command when they are absent.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--store", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description or help, parents=[common])

    command("migrate", "create the store, or bring its schema up to date")
    inv = command("invite", "record a clinician and print an enrollment code")
    inv.add_argument("--name", required=True)
    inv.add_argument("--rpps", required=True, help="11-digit RPPS number")
    inv.add_argument("--profession", required=True, help="e.g. médecin, pharmacien, infirmier")
    inv.add_argument("--organisation", required=True)
    inv.add_argument("--key-file", help="authority key file, to print its public key with the code")
    reinv = command(
        "reinvite",
        "a new enrollment code for an existing clinician",
        "A new enrollment code for an existing clinician (an expired invitation, a lost only "
        "device). Their devices stay until revoked (miss-admin revoke DEVICE).",
    )
    reinv.add_argument("user", help="user id or RPPS number")
    reinv.add_argument("--key-file", help="authority key file, to print its public key with the code")
    command("users", "list clinicians")
    dev = command("devices", "list a clinician's devices")
    dev.add_argument("user", help="user id or RPPS number")
    auth = command("authority", "create, show or rotate the verification authority key (SPEC §11, §15)")
    auth.add_argument("action", choices=["init", "show", *ROTATION_ACTIONS])
    auth.add_argument("--key-file", help=KEY_FILE_HELP + "; init creates its directory, mode 700")
    add_rotation_arguments(auth)
    org = command("org", "record an organisation")
    org.add_argument("verb", choices=["add"])
    org.add_argument("name")
    command("orgs", "list organisations")
    command("invitations", "enrollment codes not used yet")
    ver = command(
        "verify",
        "attest a clinician's identity and the devices you confirm",
        "Show each active device of a clinician (label, enrollment time and address, whether "
        "the current attestation names it) and sign an attestation of their identity and of "
        "the devices confirmed: those already attested, and each other one you answer y for "
        "(questions on stderr, answers on stdin: `echo y | miss-admin verify ...` works) or "
        "that you name with --device.",
    )
    ver.add_argument("user", help="user id or RPPS number")
    ver.add_argument(
        "--device",
        action="append",
        metavar="DEVICE",
        help="attest this device without asking (repeatable); no other device is asked about",
    )
    ver.add_argument("--days", type=float, default=90, help="validity of the attestation (default 90)")
    ver.add_argument("--key-file", help=KEY_FILE_HELP)
    ren = command(
        "renew",
        "re-issue attestations naming revoked devices or expiring soon",
        "Re-issue, for the devices it names that are still active (never one more), every "
        "attestation that names a revoked device or expires within --within days. Suspended "
        "accounts are skipped, and expired attestations left alone (verify again). Run it "
        "daily where the key is.",
    )
    ren.add_argument("--within", type=float, default=7, help="renew those expiring within DAYS (default 7)")
    ren.add_argument("--days", type=float, default=90, help="validity of the new attestations (default 90)")
    ren.add_argument("--key-file", help=KEY_FILE_HELP)
    sus = command("suspend", "suspend an account (its devices are disconnected)")
    sus.add_argument("user", help="user id or RPPS number")
    sus.add_argument("--reason", default="")
    uns = command("unsuspend", "reinstate a suspended account")
    uns.add_argument("user", help="user id or RPPS number")
    rev = command(
        "revoke",
        "revoke a device for ever (it is disconnected)",
        "Revoke a device for ever (connected hubs disconnect it), then re-issue its owner's "
        "attestation without it if the authority key file can be read here; otherwise "
        "`miss-admin renew` must run where the key is.",
    )
    rev.add_argument("device", help="device id (d_...)")
    rev.add_argument("--reason", default="")
    rev.add_argument(
        "--days", type=float, default=90, help="validity of the re-issued attestation (default 90)"
    )
    rev.add_argument("--key-file", help=KEY_FILE_HELP)
    exp = command("export", "everything the store holds about a clinician (GDPR)")
    exp.add_argument("user", help="user id or RPPS number")
    dele = command("delete", "erase a clinician's account (GDPR)", DELETE_HELP)
    dele.add_argument("user", help="user id or RPPS number")
    dele.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    web = command(
        "web-hash",
        "the hash of the browser client's bundle, and its files",
        "Print the bundle hash (sha256: and the hex SHA-256 of index.html, which pins the other "
        "files with SRI) of the browser client this hub serves, then each file and its size. "
        "Needs no store.",
    )
    web.add_argument("--dir", metavar="PATH", help="hash the bundle in PATH (a copy served elsewhere)")
    add_team_parser(command, KEY_FILE_HELP, common)
    add_backup_parser(command)
    add_role_parser(command, common)
    add_service_parser(command, common)
    aud = command("audit", "show the audit log")
    aud.add_argument("--user", help="only events about this user (id or RPPS)")
    aud.add_argument("--action", action="append", help="only this action (repeatable), e.g. auth.failed")
    aud.add_argument("--since", help="a date (2026-11-29T10:00, UTC) or a duration back from now (2h, 7d)")
    aud.add_argument("--limit", type=int, default=200, help="newest N events at most (default 200)")
    return p


def _announce_store(settings: Settings) -> None:
    """One line on stderr naming the store (never its password)."""
    where = settings.store_display
    if embedded_store(settings) and not settings.sqlite_path.is_absolute():
        where += f" ({settings.sqlite_path.absolute()})"
    print(f"miss-admin: store {where}", file=sys.stderr)


async def _run(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "authority" and args.action not in ("reissue", "retire"):
        if args.action == "rotate":
            return await cmd_rotate(settings, args)
        return await cmd_authority(None, settings, args)
    if args.command == "web-hash":
        return await cmd_web_hash(None, settings, args)
    _announce_store(settings)
    if args.command in ("backup", "restore"):  # on the file itself, never through a Store
        return await (cmd_backup if args.command == "backup" else cmd_restore)(None, settings, args)
    embedded = embedded_store(settings)
    if embedded and args.command != "migrate" and not settings.sqlite_path.exists():
        raise ValueError(
            f"no store at {settings.sqlite_path.absolute()}: run miss-admin from the hub's directory, "
            "pass --store/--config, or create one with miss-admin migrate"
        )
    store = build_store(settings)
    if args.command == "migrate":
        try:
            return await cmd_migrate(store, settings, args)
        finally:
            await store.close()
    if embedded:
        await store.migrate()  # an existing embedded store migrates itself, as the hub does
    await store.open()
    try:
        if args.command == "authority":  # reissue, retire: the stored attestations
            return await (cmd_reissue if args.action == "reissue" else cmd_retire)(store, settings, args)
        return await COMMANDS[args.command](store, settings, args)
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config, store=args.store)
        result = asyncio.run(_run(settings, args))
    except (ConfigError, PolicyBeyondCaps, NotEmbedded) as exc:
        print(f"miss-admin: {exc}", file=sys.stderr)
        return 2
    except (SchemaMismatch, StoreUnavailable, LookupError, ValueError, NotImplementedError) as exc:
        print(f"miss-admin: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a store path that cannot be created or written, say
        print(f"miss-admin: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nmiss-admin: interrupted", file=sys.stderr)
        return 130
    text = result.pop("text")
    print(json.dumps(result, ensure_ascii=False) if args.json else text)
    return 1 if result.get("exit") else 0  # authority retire: 1 while attestations depend on the key


if __name__ == "__main__":
    sys.exit(main())
