"""``miss-admin verify``, ``renew`` and ``revoke``: what the verification
authority signs, and keeping it true after revocations (SPEC.md §11.1).

``verify`` shows every active device of a clinician and attests those the
administrator confirms, one by one on stdin or with ``--device``, with the
devices the current attestation already vouches for. It never attests a
device nobody confirmed: a device enrolled from a stolen link code stays
unattested, and so can do nothing for its owner (SPEC §11.4).

``renew`` and ``revoke`` re-issue an attestation for the devices it already
names that are still active: never one more. "Already attested" is read
from the stored attestation only if the authority key signed it
(:func:`~miss_server.authority.signed_attestation`), so that a device
written into the hub's database by someone else is never carried over.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import nacl.signing

from protocol import attestation
from protocol.rotation import AuthorityKeys

from .admin_common import (
    DAY_MS,
    ask,
    attestation_of,
    authority_key,
    enrollments,
    iso,
    now_ms,
    origin,
    record,
    resolve,
    shown,
    vouches,
    who,
)
from .authority import attest, reissue, signed_attestation
from .config import Settings
from .store.base import AuditEvent, Device, Store, User

__all__ = ["cmd_renew", "cmd_revoke", "cmd_verify"]


def _validity_ms(days: float) -> int:
    if not 0 < days <= 3650:
        raise ValueError("--days: the validity is between 0 and 3650 days")
    return int(days * DAY_MS)


def _listing(
    user: User, devices: list[Device], decisions: dict[str, str], enrolled: dict[str, AuditEvent]
) -> str:
    lines = [f"{who(user)}, {user.user_id}:"]
    for d in devices:
        label = shown(d.label, "")
        lines.append(f'  {d.device_id}  "{label}"  {origin(d, enrolled)}  {decisions[d.device_id]}')
    return "\n".join(lines)


async def cmd_verify(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    key = authority_key(settings, args)
    valid_ms = _validity_ms(args.days)
    user = await resolve(store, args.user)
    devices = await store.user_devices(user.user_id)
    if not devices:
        raise ValueError(f"{who(user)} has no device yet: verify once they have enrolled one")
    active = {d.device_id for d in devices}
    named = list(dict.fromkeys(args.device or ()))
    strangers = [d for d in named if d not in active]
    if strangers:
        raise ValueError(
            f"{', '.join(map(shown, strangers))}: not an active device of {who(user)} "
            f"(its devices: {', '.join(sorted(active))})"
        )
    # An attestation by an older key of a rotation still counts until its end (SPEC §15).
    current = signed_attestation(user.attestation, settings.authority_keys or bytes(key.verify_key))
    if current is not None and current.user != user.user_id:
        current = None
    enrolled = await enrollments(store, user.user_id)

    chosen = {d.device_id for d in devices if vouches(current, d)}
    decisions = dict.fromkeys(chosen, "attested already")
    undecided = [d for d in devices if d.device_id not in chosen]
    if named:
        chosen.update(named)
        for d in undecided:
            decisions[d.device_id] = "confirmed (--device)" if d.device_id in named else "NOT attested"
    elif undecided:
        waiting = {d.device_id: "not attested yet" for d in undecided}
        print(_listing(user, devices, {**decisions, **waiting}, enrolled), file=sys.stderr)
        for d in undecided:
            yes = ask(
                f'Attest {d.device_id} ("{shown(d.label, "")}", {origin(d, enrolled)})?',
                on_eof=f"no answer for {d.device_id} on stdin: nothing attested. Answer y or n for each "
                "device not attested yet, or pass --device for each device to attest",
            )
            decisions[d.device_id] = "confirmed" if yes else "NOT attested (declined)"
            if yes:
                chosen.add(d.device_id)
        # A device revoked while the questions were answered is attested no more.
        still = {d.device_id for d in await store.user_devices(user.user_id)}
        for device_id in chosen - still:
            decisions[device_id] = "NOT attested (revoked meanwhile)"
        chosen &= still

    attested = [d for d in devices if d.device_id in chosen]
    listing = _listing(user, devices, decisions, enrolled)
    rows = [
        {
            "device": d.device_id,
            "label": d.label,
            "enrolled": iso(d.created_at),
            "address": enrolled[d.device_id].address if d.device_id in enrolled else None,
            "attested": d.device_id in chosen,
            "decision": decisions[d.device_id],
        }
        for d in devices
    ]
    if not attested:
        return {
            "user": user.user_id,
            "issued": False,
            "devices": [],
            "listing": rows,
            "text": f"{listing}\nno device confirmed: no attestation issued"
            + (" (the current one is unchanged)" if user.attestation is not None else ""),
        }
    att = await attest(
        store,
        user.user_id,
        key,
        valid_ms=valid_ms,
        devices=[attestation.AttestedDevice(d.device_id, d.sign_pk, d.box_pk) for d in attested],
    )
    ids = ", ".join(d.device_id for d in attested)
    await record(
        store, "account.verified", user_id=user.user_id, detail=f"devices {ids}, until {iso(att.not_after)}"
    )
    return {
        "user": user.user_id,
        "issued": True,
        "devices": [d.device_id for d in attested],
        "not_after": att.not_after,
        "listing": rows,
        "text": f"{listing}\nverified {who(user)} until {iso(att.not_after)}: the attestation names {ids}",
    }


# --- renewal ----------------------------------------------------------------------


async def renew_user(
    store: Store,
    user: User,
    key: nacl.signing.SigningKey,
    *,
    now: int,
    horizon: int,
    valid_ms: int,
    trusted: AuthorityKeys | None = None,
) -> dict[str, Any] | None:
    """Re-issue ``user``'s attestation if it names a device that is no longer
    active, or ends before ``horizon``, for the devices it names that are
    still active with the same keys. None if there is nothing to do (an
    expired attestation is left to lapse: clients refuse it already, and
    only ``verify`` vouches for the clinician again), else what was done:
    ``{"user", "renewed": bool, "why" | "skipped", "text"}``. ``trusted``:
    the configured keys (an attestation by an older key of a rotation is
    renewed under ``key`` while that key counts, SPEC §15)."""
    old = signed_attestation(user.attestation, trusted or bytes(key.verify_key))
    if old is not None and old.not_after <= now:
        return None  # clients refuse it already; `miss-admin users` shows it expired
    if old is None or old.user != user.user_id:
        return {
            "user": user.user_id,
            "renewed": False,
            "skipped": "its attestation is not signed by this authority key",
            "text": f"skipped {who(user)}: its attestation is not signed by this authority key "
            f"(miss-admin verify {user.rpps})",
        }
    active = {d.device_id: d for d in await store.user_devices(user.user_id)}
    keep = [d for d in old.devices if d.device in active and vouches(old, active[d.device])]
    gone = [d.device for d in old.devices if d not in keep]
    why = []
    if gone:
        why.append(f"it named {', '.join(gone)}, no longer active")
    if old.not_after <= horizon:
        why.append(f"it expires {iso(old.not_after)}")
    if not why:
        return None
    skipped = None
    if user.suspended:
        skipped = "suspended"
    elif not keep and not gone:
        skipped = f"its attestation names no device (miss-admin verify {user.rpps} once they enroll one)"
    if skipped is not None:
        text = f"skipped {who(user)}: {skipped}"
        return {"user": user.user_id, "renewed": False, "skipped": skipped, "text": text}
    att = await reissue(store, old, key, valid_ms=valid_ms, devices=keep, now=now)
    names = ", ".join(d.device for d in keep) or "no device"
    reasons = "; ".join(why)
    await record(
        store,
        "account.verified",
        user_id=user.user_id,
        detail=f"renewed ({reasons}): devices {names}, until {iso(att.not_after)}",
    )
    return {
        "user": user.user_id,
        "renewed": True,
        "why": reasons,
        "devices": [d.device for d in keep],
        "not_after": att.not_after,
        "text": f"renewed {who(user)} until {iso(att.not_after)}, naming {names} ({reasons})",
    }


async def cmd_renew(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    key = authority_key(settings, args)
    valid_ms = _validity_ms(args.days)
    if args.within < 0:
        raise ValueError("--within: a number of days, 0 or more")
    now = now_ms()
    horizon = now + int(args.within * DAY_MS)
    done = []
    for user in await store.list_users():
        if user.attestation is None:
            continue
        outcome = await renew_user(
            store, user, key, now=now, horizon=horizon, valid_ms=valid_ms, trusted=settings.authority_keys
        )
        if outcome is not None:
            done.append(outcome)
    renewed = sum(1 for r in done if r["renewed"])
    summary = f"{renewed} attestation(s) renewed, {len(done) - renewed} skipped"
    lines = [r.pop("text") for r in done]
    return {"results": done, "text": "\n".join([*lines, summary]) if done else "nothing to renew"}


# --- revocation -------------------------------------------------------------------


async def cmd_revoke(store: Store, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    device = await store.revoke_device(args.device, now_ms())
    if device is None:
        raise LookupError(f"no active device {args.device!r}")
    await record(
        store,
        "device.revoked",
        user_id=device.user_id,
        device_id=device.device_id,
        detail=args.reason or "by an administrator",
    )
    result: dict[str, Any] = {"user": device.user_id, "device": device.device_id, "reissued": False}
    lines = [f"revoked {device.device_id} of {device.user_id}"]
    user = await store.get_user(device.user_id)
    stored = attestation_of(user) if user is not None else None
    if user is None or stored is None or stored.device(device.device_id) is None:
        result["text"] = lines[0]
        return result
    try:
        key = authority_key(settings, args)
    except ValueError as exc:
        lines.append(
            f"the attestation of {who(user)} still names it until {iso(stored.not_after)}: "
            f"run `miss-admin renew` where the authority key is ({exc})"
        )
        result["renew_needed"] = True
        result["text"] = "\n".join(lines)
        return result
    now = now_ms()
    outcome = await renew_user(
        store,
        user,
        key,
        now=now,
        horizon=now,
        valid_ms=_validity_ms(args.days),
        trusted=settings.authority_keys,
    )
    if outcome is not None:
        lines.append(outcome.pop("text"))
        result["reissued"] = outcome["renewed"]
        result["attestation"] = outcome
    result["text"] = "\n".join(lines)
    return result
