"""``miss-admin service``: service accounts (SPEC §17.1), the accounts an
organisation's systems (an admissions feed, a laboratory) write to
clinicians from.

* ``service create --name N --ident svc:ID --organisation O [--replies]``
  records the service (profession ``service``, its identifier where a
  clinician's RPPS number goes) and prints its user id and an enrollment
  code, as ``invite`` does: the integration server enrolls its device with
  it, then ``miss-admin verify svc:ID`` attests it like any account.
  At most ``max_services_per_org`` services per organisation.
* ``service list [--organisation O]`` lists them, with whether each accepts
  replies and its standing (verified, unverified...).
* ``service replies USER on|off`` switches whether clinicians may write to
  it; connected hubs apply it within about a second (the audit event
  ``service.replies``, security_feed.py).

Each change is audited (``service.created``, ``service.replies``), with the
administrator as actor. ``miss-admin invite`` refuses the profession
``service`` and identifiers starting with ``svc:`` (admin_accounts.py), so
that an attestation names a service if and only if its profession is
``service``.
"""

from __future__ import annotations

import argparse
from typing import Any

from .admin_accounts import new_code_for
from .admin_common import iso, now_ms, record, resolve, shown, standing
from .config import Settings
from .store.base import ServiceLimit, Store
from .store.services import SERVICE_IDENT

__all__ = ["add_service_parser", "cmd_service"]


async def cmd_service(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    if args.action == "create":
        return await _create(store, settings, args)
    if args.action == "list":
        return await _list(store, args)
    return await _replies(store, args)


async def _create(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    name = args.name.strip()
    if not name:
        raise ValueError("--name: give the service a name, e.g. 'CH Provins — Admissions'")
    if not SERVICE_IDENT.fullmatch(args.ident):
        raise ValueError(
            f"--ident {shown(args.ident)!r}: a service identifier is svc: followed by 1 to 28 "
            "lowercase letters, digits or hyphens (e.g. svc:provins-adt)"
        )
    if args.organisation not in {o.name for o in await store.list_organisations()}:
        raise ValueError(
            f"unknown organisation {shown(args.organisation)!r}: add it first with `miss-admin org add`"
        )
    cap = settings.max_services_per_org
    try:
        user = await store.create_service(name, args.ident, args.organisation, args.replies, now_ms(), cap)
    except ServiceLimit:
        raise ValueError(
            f"{shown(args.organisation)!r} already has {cap} services, the cap (max_services_per_org)"
        ) from None
    except ValueError:
        raise ValueError(
            f"{args.ident} is already taken (miss-admin service list; a new code: miss-admin reinvite "
            f"{args.ident})"
        ) from None
    replies = "on" if args.replies else "off"
    await record(
        store,
        "service.created",
        user_id=user.user_id,
        detail=f"{args.ident}, {args.organisation}, replies {replies}",
    )
    out = await new_code_for(store, settings, args, user, "account.invited", f"service {args.ident}")
    out["ident"] = user.rpps
    out["replies"] = args.replies
    out["text"] = (
        f"created service {shown(name)!r} ({args.ident}) of {shown(args.organisation)} as {user.user_id}, "
        f"replies {replies}\n"
        "enroll the integration server's device with the code below, then attest it\n" + out["text"]
    )
    return out


async def _list(store: Store, args: argparse.Namespace) -> dict[str, Any]:
    now = now_ms()
    rows: list[dict[str, Any]] = []
    for u in await store.list_services(args.organisation):
        until, word = standing(u, now)
        rows.append(
            {
                "user": u.user_id,
                "name": u.name,
                "ident": u.rpps,
                "organisation": u.organisation,
                "replies": u.replies,
                "devices": len(await store.user_devices(u.user_id)),
                "standing": word,
                "verified_until": until,
            }
        )
    text = "\n".join(
        f"{r['user']}  {r['ident']}  {shown(r['name'])} — {shown(r['organisation'])}  "
        f"replies {'on' if r['replies'] else 'off'}, {r['devices']} device(s)  [{r['standing']}"
        + (f" until {iso(r['verified_until'])}]" if r["standing"] == "verified" else "]")
        for r in rows
    )
    return {"services": rows, "text": text or "no services yet"}


async def _replies(store: Store, args: argparse.Namespace) -> dict[str, Any]:
    user = await resolve(store, args.user)
    if not user.service:
        raise ValueError(f"{args.user} is a clinician, not a service: a clinician always accepts replies")
    on = args.state == "on"
    await store.set_replies(user.user_id, on)
    await record(store, "service.replies", user_id=user.user_id, detail=args.state)
    return {
        "user": user.user_id,
        "replies": on,
        "text": f"{shown(user.name)} ({user.rpps}): replies {args.state}"
        + ("" if on else "; a message to it is refused with replies_refused"),
    }


def add_service_parser(command: Any, common: argparse.ArgumentParser) -> None:
    """``service`` and its actions, on the parser-making ``command`` of admin.py."""
    service = command(
        "service",
        "service accounts: an organisation's systems that write to clinicians (SPEC §17)",
    )
    actions = service.add_subparsers(dest="action", required=True)
    create = actions.add_parser(
        "create",
        help="record a service and print an enrollment code for its device",
        description="Record a service account (profession 'service', its identifier where a "
        "clinician's RPPS number goes) and print its user id and a one-time enrollment code for "
        "the integration server's device; then attest it with `miss-admin verify svc:ID`.",
        parents=[common],
    )
    create.add_argument(
        "--name", required=True, help="as clinicians will see it, e.g. 'CH Provins — Admissions'"
    )
    create.add_argument(
        "--ident", required=True, help="svc: and 1 to 28 of a-z, 0-9, - (e.g. svc:provins-adt)"
    )
    create.add_argument("--organisation", required=True)
    create.add_argument(
        "--replies", action="store_true", help="clinicians may write to it (default: they may not)"
    )
    create.add_argument("--key-file", help="authority key file, to print its public key with the code")
    listing = actions.add_parser("list", help="the service accounts", parents=[common])
    listing.add_argument("--organisation", help="only this organisation's")
    replies = actions.add_parser(
        "replies",
        help="whether clinicians may write to a service",
        description="Switch whether clinicians may write to a service; off, their messages are "
        "refused (replies_refused). Connected hubs apply it within about a second.",
        parents=[common],
    )
    replies.add_argument("user", help="user id or svc: identifier")
    replies.add_argument("state", choices=["on", "off"])
