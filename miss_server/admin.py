"""``miss-admin``: administer a hub's store, while the hub runs or not.

Commands::

    miss-admin migrate                       apply schema migrations
    miss-admin authority init [--key-file F] create the verification authority key (SPEC §11.1)
    miss-admin authority show [--key-file F] print its public key, for the hub and clients
    miss-admin org add NAME | miss-admin orgs
                                             record / list organisations
    miss-admin invite --name N --rpps R --profession P --organisation O
                                             record a clinician, print a one-time enrollment code
    miss-admin invitations                   enrollment codes not used yet
    miss-admin verify USER [--days D] [--key-file F]
                                             sign an attestation of USER and their active devices
    miss-admin suspend USER [--reason R] | miss-admin unsuspend USER
    miss-admin revoke DEVICE [--reason R]    revoke a device for ever
    miss-admin users                         list clinicians
    miss-admin devices USER                  list a clinician's devices (USER: user id or RPPS)
    miss-admin audit [--user U] [--action A] [--since T] [--limit N]
                                             the audit log, oldest first

USER is a user id (``u_...``) or an RPPS number. The authority key file
(``--key-file``, default ``$MISS_AUTHORITY_KEY_FILE`` or
``miss-authority.key``) is read only by ``authority`` and ``verify``: keep it
off the hub's machine. Every change is written to the audit log with the
administrator's login as actor; connected hubs enforce a revocation or a
suspension within about a second.

It reads the same configuration as ``miss-server`` (``--config``,
``MISS_*``), so it finds the same store. Output is plain text; ``--json``
prints machine-readable JSON instead.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
import json
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import nacl.signing

from protocol import attestation

from .app import build_store, embedded_store
from .authority import attest, key_file_text, load_authority
from .codes import code_hash, new_code
from .config import ConfigError, Settings, load_settings
from .store.base import AuditEvent, SchemaMismatch, Store, StoreUnavailable, User

DEFAULT_KEY_FILE = "miss-authority.key"

RPPS = re.compile(r"^\d{11}$")


def _now() -> int:
    return time.time_ns() // 1_000_000


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ms / 1000))


def _actor() -> str:
    try:
        return f"admin:{getpass.getuser()}"
    except Exception:  # no login name (a container without passwd entry)
        return "admin"


async def _record(
    store: Store, action: str, *, user_id: str | None = None, device_id: str | None = None, detail: str = ""
) -> None:
    await store.audit([AuditEvent(_now(), _actor(), action, user_id, device_id, None, detail)])


def _key_file(args: argparse.Namespace) -> Path:
    return Path(args.key_file or os.environ.get("MISS_AUTHORITY_KEY_FILE") or DEFAULT_KEY_FILE)


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
    path = _key_file(args)
    if args.action == "init":
        key = nacl.signing.SigningKey.generate()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ValueError(f"{path} exists already; refusing to replace an authority key") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(key_file_text(key))
        out = _public_text(key)
        out["text"] = f"wrote {path} (mode 600)\n" + out["text"]
        return out
    return _public_text(load_authority(path))


async def cmd_org(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    org = await store.add_organisation(args.name.strip(), _now())
    await _record(store, "org.added", detail=org.name)
    return {"organisation": org.name, "text": f"organisation {org.name!r} recorded"}


async def cmd_orgs(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    orgs = await store.list_organisations()
    rows = [{"organisation": o.name, "created": _iso(o.created_at)} for o in orgs]
    return {"organisations": rows, "text": "\n".join(o.name for o in orgs) or "no organisations yet"}


async def cmd_invitations(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    pending = await store.invitations(_now())
    names = {u.user_id: u.name for u in await store.list_users()} if pending else {}
    rows = [
        {"user": inv.user_id, "name": names.get(inv.user_id, "?"), "expires": _iso(inv.expires_at)}
        for inv in pending
    ]
    text = "\n".join(f"{r['user']}  {r['name']}  expires {r['expires']}" for r in rows)
    return {"invitations": rows, "text": text or "no pending invitations"}


async def cmd_verify(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    key = load_authority(_key_file(args))
    public = bytes(key.verify_key)
    if settings.authority_public_key is not None and settings.authority_public_key != public:
        raise ValueError("this key file is not the authority the hub is configured with (authority_key)")
    user = await _resolve(store, args.user)
    devices = await store.user_devices(user.user_id)
    if not devices:
        raise ValueError(f"{user.name} has no device yet: verify once they have enrolled one")
    att = await attest(store, user.user_id, key, valid_ms=int(args.days * 86_400_000))
    detail = f"{len(devices)} devices, until {_iso(att.not_after)}"
    await _record(store, "account.verified", user_id=user.user_id, detail=detail)
    return {
        "user": user.user_id,
        "devices": [d.device_id for d in devices],
        "not_after": att.not_after,
        "text": f"verified {user.name} (RPPS {user.rpps}): {detail}",
    }


async def cmd_suspend(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    user = await _resolve(store, args.user)
    suspend = args.command == "suspend"
    await store.set_suspended(user.user_id, suspend)
    action = "account.suspended" if suspend else "account.unsuspended"
    await _record(store, action, user_id=user.user_id, detail=getattr(args, "reason", "") or "")
    return {"user": user.user_id, "suspended": suspend, "text": f"{user.name}: {action.split('.')[1]}"}


async def cmd_revoke(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    device = await store.revoke_device(args.device, _now())
    if device is None:
        raise LookupError(f"no active device {args.device!r}")
    await _record(
        store,
        "device.revoked",
        user_id=device.user_id,
        device_id=device.device_id,
        detail=args.reason or "by an administrator",
    )
    return {
        "user": device.user_id,
        "device": device.device_id,
        "text": f"revoked {device.device_id} of {device.user_id}",
    }


def _since(text: str | None) -> int:
    """``2026-11-29``, ``2026-11-29T10:00``, or a duration back from now: ``15m``, ``2h``, ``7d``."""
    if not text:
        return 0
    m = re.fullmatch(r"(\d+)([smhd])", text)
    if m:
        return _now() - int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)] * 1000
    from datetime import datetime

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
    user_id = (await _resolve(store, args.user)).user_id if args.user else None
    events = await store.audit_log(
        since_at=_since(args.since), user_id=user_id, actions=args.action or None, limit=args.limit
    )
    rows = [
        {
            "seq": e.seq,
            "at": _iso(e.at),
            "actor": e.actor,
            "action": e.action,
            "user": e.user_id,
            "device": e.device_id,
            "address": e.address,
            "detail": e.detail,
        }
        for e in events
    ]
    text = "\n".join(
        f"{r['at']}  {r['action']:<22} {r['actor']:<22} "
        + " ".join(f"{k}={r[k]}" for k in ("user", "device", "address") if r[k])
        + (f"  {r['detail']}" if r["detail"] else "")
        for r in rows
    )
    return {"events": rows, "text": text or "no matching events"}


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
    if args.organisation not in {o.name for o in await store.list_organisations()}:
        raise ValueError(
            f"unknown organisation {args.organisation!r}: add it first with `miss-admin org add`"
        )
    now = _now()
    try:
        user = await store.create_user(args.name, args.rpps, args.profession, args.organisation, now)
    except ValueError:
        raise ValueError(f"RPPS {args.rpps} is already registered") from None
    code = new_code()
    expires = now + int(settings.invite_ttl_hours * 3_600_000)
    await store.add_enrollment_code(user.user_id, code_hash(code), expires)
    await _record(store, "account.invited", user_id=user.user_id, detail=f"RPPS {user.rpps}")
    public = settings.authority_key
    if public is None and _key_file(args).exists():  # the administrator's own key file
        public = attestation.encode_authority_key(bytes(load_authority(_key_file(args)).verify_key))
    authority = public or "(unknown: set authority_key, or run where the authority key file is)"
    return {
        "user": user.user_id,
        "code": code,
        "expires": expires,
        "authority": public,
        "text": f"invited {user.name} (RPPS {user.rpps}) as {user.user_id}\n"
        f"enrollment code: {code}  (single use, expires {_iso(expires)})\n"
        f"authority key:   {authority}\n"
        f"once they have enrolled, check their identity and run `miss-admin verify {user.rpps}`",
    }


def _attestation_of(user: User) -> attestation.Attestation | None:
    """What the user's stored attestation says (unchecked: for display)."""
    if user.attestation is None:
        return None
    try:
        return attestation.peek(user.attestation)
    except attestation.AttestationError:
        return None


def _standing(user: User, now: int) -> tuple[int | None, str]:
    """(attestation end, one word for people): verified, expired, unverified, suspended."""
    att = _attestation_of(user)
    until = att.not_after if att is not None else None
    if user.suspended:
        return until, "suspended"
    if until is None:
        return None, "unverified"
    return until, "verified" if until > now else "expired"


async def cmd_users(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    users = await store.list_users()
    now = _now()
    rows: list[dict[str, Any]] = []
    for u in users:
        until, standing = _standing(u, now)
        rows.append(
            {
                "user": u.user_id,
                "name": u.name,
                "rpps": u.rpps,
                "profession": u.profession,
                "organisation": u.organisation,
                "standing": standing,
                "verified_until": until,
            }
        )
    text = "\n".join(
        f"{r['user']}  {r['rpps']}  {r['name']} — {r['profession']}, {r['organisation']}  [{r['standing']}"
        + (f" until {_iso(r['verified_until'])}]" if r["standing"] == "verified" else "]")
        for r in rows
    )
    return {"users": rows, "text": text or "no clinicians yet"}


async def cmd_devices(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    user = await _resolve(store, args.user)
    devices = await store.user_devices(user.user_id)
    att = _attestation_of(user)
    attested = {d.device for d in att.devices} if att is not None else set()
    rows: list[dict[str, Any]] = [
        {
            "device": d.device_id,
            "label": d.label,
            "enrolled": _iso(d.created_at),
            "attested": d.device_id in attested,
            "sign_key": base64.b64encode(d.sign_pk).decode(),
        }
        for d in devices
    ]
    text = "\n".join(
        f"{r['device']}  {r['label'] or '-'}  enrolled {r['enrolled']}  "
        f"{'attested' if r['attested'] else 'NOT attested'}  key {r['sign_key'][:12]}…"
        for r in rows
    )
    return {"user": user.user_id, "devices": rows, "text": text or f"{user.name} has no device yet"}


COMMANDS: dict[str, Callable[[Store, Settings, argparse.Namespace], Awaitable[dict[str, Any]]]] = {
    "migrate": cmd_migrate,
    "invite": cmd_invite,
    "users": cmd_users,
    "devices": cmd_devices,
    "org": cmd_org,
    "orgs": cmd_orgs,
    "invitations": cmd_invitations,
    "verify": cmd_verify,
    "suspend": cmd_suspend,
    "unsuspend": cmd_suspend,
    "revoke": cmd_revoke,
    "audit": cmd_audit,
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
    inv.add_argument("--key-file", help="authority key file, to print its public key with the code")
    sub.add_parser("users", help="list clinicians")
    dev = sub.add_parser("devices", help="list a clinician's devices")
    dev.add_argument("user", help="user id or RPPS number")
    auth = sub.add_parser("authority", help="create or show the verification authority key")
    auth.add_argument("action", choices=["init", "show"])
    auth.add_argument("--key-file", help=f"default: $MISS_AUTHORITY_KEY_FILE or {DEFAULT_KEY_FILE}")
    org = sub.add_parser("org", help="record an organisation")
    org.add_argument("verb", choices=["add"])
    org.add_argument("name")
    sub.add_parser("orgs", help="list organisations")
    sub.add_parser("invitations", help="enrollment codes not used yet")
    ver = sub.add_parser("verify", help="attest a clinician's identity and active devices")
    ver.add_argument("user", help="user id or RPPS number")
    ver.add_argument("--days", type=float, default=365, help="validity of the attestation (default 365)")
    ver.add_argument("--key-file", help=f"default: $MISS_AUTHORITY_KEY_FILE or {DEFAULT_KEY_FILE}")
    sus = sub.add_parser("suspend", help="suspend an account (its devices are disconnected)")
    sus.add_argument("user", help="user id or RPPS number")
    sus.add_argument("--reason", default="")
    uns = sub.add_parser("unsuspend", help="reinstate a suspended account")
    uns.add_argument("user", help="user id or RPPS number")
    rev = sub.add_parser("revoke", help="revoke a device for ever (it is disconnected)")
    rev.add_argument("device", help="device id (d_...)")
    rev.add_argument("--reason", default="")
    aud = sub.add_parser("audit", help="show the audit log")
    aud.add_argument("--user", help="only events about this user (id or RPPS)")
    aud.add_argument("--action", action="append", help="only this action (repeatable), e.g. auth.failed")
    aud.add_argument("--since", help="a date (2026-11-29T10:00, UTC) or a duration back from now (2h, 7d)")
    aud.add_argument("--limit", type=int, default=200, help="newest N events at most (default 200)")
    return p


async def _run(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "authority":
        return await cmd_authority(None, settings, args)
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
