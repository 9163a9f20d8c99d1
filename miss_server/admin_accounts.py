"""``miss-admin`` commands about one clinician's account: ``invite``,
``reinvite``, ``suspend``/``unsuspend``, and the GDPR's ``export`` and
``delete``.

``delete`` erases what the store holds about the person (account, devices,
codes, contacts, rows queued for their devices) but not the audit log,
which is append-only: its events keep naming the user id, the device ids,
the client addresses and times, and the details written then (the RPPS
number at invitation, the device labels at enrollment). The log is the
hospital's record of who did what to whose account (who invited, verified,
revoked, deleted; failed and refused authentications), kept for
accountability and security investigations, a legal obligation for systems
that carry health data, which the GDPR's right to erasure gives way to
(Art. 17(3)(b) and (e)); it holds no message content, key or code.
"""

from __future__ import annotations

import argparse
import base64
import re
from typing import Any

from protocol import attestation

from .admin_common import (
    ask,
    attestation_of,
    enrollments,
    iso,
    key_file,
    now_ms,
    record,
    resolve,
    shown,
    standing,
    user_events,
    who,
)
from .authority import load_authority, signed_attestation
from .codes import code_hash, new_code
from .config import Settings
from .store.base import AuditEvent, Store, User
from .store.services import is_service_profession

__all__ = [
    "DELETE_HELP",
    "audit_row",
    "audit_text",
    "cmd_delete",
    "cmd_export",
    "cmd_invite",
    "cmd_reinvite",
    "cmd_suspend",
    "new_code_for",
]

RPPS = re.compile(r"^\d{11}$")

DELETE_HELP = (
    "Erase a clinician's account for the GDPR (asks first unless --yes): revokes each active "
    "device (connected hubs disconnect it), then deletes the account, its devices, codes and "
    "contacts, and the messages queued for its devices. The audit log keeps its events about "
    "the account (user and device ids, addresses, times, the RPPS number given at invitation, "
    "device labels), no message content: it is the append-only record of who did what, which "
    "the hospital keeps for accountability and security investigations (GDPR Art. 17(3)(b), (e))."
)


def audit_row(e: AuditEvent) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "at": iso(e.at),
        "actor": e.actor,
        "action": e.action,
        "user": e.user_id,
        "device": e.device_id,
        "address": e.address,
        "detail": e.detail,
    }


def audit_text(row: dict[str, Any]) -> str:
    """One line of ``miss-admin audit`` for a row of :func:`audit_row`."""
    return (
        f"{row['at']}  {row['action']:<22} {shown(row['actor']):<22} "
        + " ".join(f"{k}={shown(row[k])}" for k in ("user", "device", "address") if row[k])
        + (f"  {shown(row['detail'])}" if row["detail"] else "")
    )


# --- invitations --------------------------------------------------------------------


def _authority_text(settings: Settings, args: argparse.Namespace) -> str | None:
    """The authority public key to hand out with a code: the hub's, or the
    administrator's own key file's."""
    if settings.authority_key is not None:
        return settings.authority_key
    path = key_file(args)
    if path.exists():
        return attestation.encode_authority_key(bytes(load_authority(path).verify_key))
    return None


async def new_code_for(
    store: Store, settings: Settings, args: argparse.Namespace, user: User, action: str, detail: str
) -> dict[str, Any]:
    """An enrollment code for ``user``, recorded (hashed) and audited."""
    code = new_code()
    expires = now_ms() + int(settings.invite_ttl_hours * 3_600_000)
    await store.add_enrollment_code(user.user_id, code_hash(code), expires)
    await record(store, action, user_id=user.user_id, detail=detail)
    public = _authority_text(settings, args)
    authority = public or "(unknown: set authority_key, or run where the authority key file is)"
    return {
        "user": user.user_id,
        "code": code,
        "expires": expires,
        "authority": public,
        "text": f"enrollment code: {code}  (single use, expires {iso(expires)})\n"
        f"authority key:   {authority}\n"
        f"once they have enrolled, check their identity and run `miss-admin verify {user.rpps}`",
    }


async def cmd_invite(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    # SPEC §17.1: an attestation names a service if and only if its
    # profession is "service"; a clinician can claim neither that nor a svc: identifier.
    if is_service_profession(args.profession):
        raise ValueError(
            "the profession 'service' is reserved for service accounts: miss-admin service create"
        )
    if args.rpps.strip().lower().startswith("svc:"):
        raise ValueError("svc: identifiers are for service accounts: miss-admin service create")
    if not RPPS.match(args.rpps):
        raise ValueError("an RPPS number has 11 digits")
    if args.organisation not in {o.name for o in await store.list_organisations()}:
        raise ValueError(
            f"unknown organisation {shown(args.organisation)!r}: add it first with `miss-admin org add`"
        )
    try:
        user = await store.create_user(args.name, args.rpps, args.profession, args.organisation, now_ms())
    except ValueError:
        raise ValueError(
            f"RPPS {args.rpps} is already registered (a new code for them: miss-admin reinvite {args.rpps})"
        ) from None
    out = await new_code_for(store, settings, args, user, "account.invited", f"RPPS {user.rpps}")
    out["text"] = f"invited {who(user)} as {user.user_id}\n" + out["text"]
    return out


async def cmd_reinvite(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    user = await resolve(store, args.user)
    if user.suspended:
        raise ValueError(f"{who(user)} is suspended: `miss-admin unsuspend {user.rpps}` first")
    devices = await store.user_devices(user.user_id)
    detail = f"RPPS {user.rpps}, {len(devices)} active device(s) kept"
    out = await new_code_for(store, settings, args, user, "account.reinvited", detail)
    kept = (
        f"their {len(devices)} active device(s) stay until revoked (miss-admin devices {user.rpps}, "
        "miss-admin revoke DEVICE)"
        if devices
        else "they have no active device"
    )
    full = (
        f"\nthey have {len(devices)} active devices, the cap (max_devices): revoke one first, "
        "or enrollment with this code is refused"
        if len(devices) >= settings.max_devices
        else ""
    )
    out["text"] = f"new enrollment code for {who(user)}, {user.user_id}; {kept}{full}\n" + out["text"]
    return out


async def cmd_suspend(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    user = await resolve(store, args.user)
    suspend = args.command == "suspend"
    await store.set_suspended(user.user_id, suspend)
    action = "account.suspended" if suspend else "account.unsuspended"
    await record(store, action, user_id=user.user_id, detail=getattr(args, "reason", "") or "")
    return {"user": user.user_id, "suspended": suspend, "text": f"{shown(user.name)}: {action.split('.')[1]}"}


# --- the GDPR ------------------------------------------------------------------------


async def cmd_export(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    user = await resolve(store, args.user)
    now = now_ms()
    until, word = standing(user, now)
    events = await user_events(store, user.user_id)
    enrolled = await enrollments(store, user.user_id)
    devices: list[dict[str, Any]] = []
    for d in await store.user_devices(user.user_id, include_revoked=True):
        event = enrolled.get(d.device_id)
        devices.append(
            {
                "device": d.device_id,
                "label": d.label,
                "enrolled": iso(d.created_at),
                "enrolled_from": event.address if event is not None else None,
                "revoked": d.revoked,
                "attested": d.attested,
                "sign_key": base64.b64encode(d.sign_pk).decode(),
                "box_key": base64.b64encode(d.box_pk).decode(),
                "queued_messages": 0 if d.revoked else await store.count_pending(d.device_id),
            }
        )
    att = attestation_of(user)
    authority = settings.authority_keys
    summary: dict[str, Any] | None = None
    if att is not None:
        summary = {
            "devices": [d.device for d in att.devices],
            "not_before": iso(att.not_before),
            "not_after": iso(att.not_after),
            # None: the hub's authority key is not configured here, so not checked
            "signed_by_authority": None
            if authority is None
            else signed_attestation(user.attestation, authority) is not None,
        }
    account = {
        "user": user.user_id,
        "name": user.name,
        "rpps": user.rpps,
        "profession": user.profession,
        "organisation": user.organisation,
        "created": iso(user.created_at),
        "suspended": user.suspended,
        "status": user.status,
        "standing": word,
        "verified_until": iso(until) if until is not None else None,
    }
    invitations = [iso(i.expires_at) for i in await store.invitations(now) if i.user_id == user.user_id]
    audit = [audit_row(e) for e in events]
    result = {
        "exported_at": iso(now),
        "account": account,
        "devices": devices,
        "invitations": invitations,
        "attestation": summary,
        "audit": audit,
    }
    lines = [f"Export of {who(user)}, {user.user_id}, at {iso(now)}", "", "Account:"]
    lines += [f"  {k}: {shown(str(v))}" for k, v in account.items() if k != "user"]
    lines += ["", f"Devices ({len(devices)}, revoked ones included):"]
    for row in devices:
        state = "revoked" if row["revoked"] else "attested" if row["attested"] else "NOT attested"
        lines.append(
            f'  {row["device"]}  "{shown(row["label"], "")}"  enrolled {row["enrolled"]} from '
            f"{shown(row['enrolled_from'], 'an unknown address')}  {state}  "
            f"{row['queued_messages']} queued  sign key {row['sign_key']}  box key {row['box_key']}"
        )
    lines += ["", f"Unused enrollment codes: {', '.join(f'expires {e}' for e in invitations) or 'none'}"]
    if summary is None:
        lines += ["Attestation: none"]
    else:
        checked = {None: "", True: ", signed by the authority", False: ", NOT signed by the authority"}
        named = ", ".join(summary["devices"]) or "no device"
        lines += [
            f"Attestation: from {summary['not_before']} to {summary['not_after']}"
            f"{checked[summary['signed_by_authority']]}, naming {named}"
        ]
    lines += ["", f"Audit events about them ({len(audit)}):", *(f"  {audit_text(r)}" for r in audit)]
    result["text"] = "\n".join(lines)
    return result


async def cmd_delete(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    user = await resolve(store, args.user)
    devices = await store.user_devices(user.user_id)
    if not args.yes:
        confirmed = ask(
            f"Delete {who(user)}, {user.user_id}, and their {len(devices)} active device(s) for ever?",
            on_eof="no confirmation on stdin: nothing deleted (pass --yes to delete without asking)",
        )
        if not confirmed:
            raise ValueError(f"not confirmed: {who(user)} is not deleted")
    revoked = []
    for d in devices:
        gone = await store.revoke_device(d.device_id, now_ms())
        if gone is not None:  # so that connected hubs disconnect it, as for any revocation
            await record(
                store, "device.revoked", user_id=user.user_id, device_id=d.device_id, detail="account deleted"
            )
            revoked.append(d.device_id)
    if not await store.delete_user(user.user_id):
        raise LookupError(f"no clinician {user.user_id!r} (deleted meanwhile?)")
    await record(store, "account.deleted", user_id=user.user_id, detail=f"{len(revoked)} device(s) revoked")
    return {
        "user": user.user_id,
        "deleted": True,
        "revoked": revoked,
        "text": f"deleted {who(user)}, {user.user_id}: {len(revoked)} device(s) revoked first; "
        "the audit log keeps its events about them (miss-admin audit --user " + user.user_id + ")",
    }
