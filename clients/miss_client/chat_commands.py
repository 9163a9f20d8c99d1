"""The one-shot commands of ``miss-chat`` (``cmd_*``: connect if needed, do one
thing, print, exit); :mod:`.chat` describes them and parses their arguments.
"""

from __future__ import annotations

import argparse
import socket
import sys

from protocol.attestation import authority_fingerprint
from protocol.errors import RepliesRefused, UnknownUser
from protocol.oncall import is_role_id

from .chat_attachments import ProgressLine, check_attach_args
from .chat_oncall import find_role, maybe_role, print_role_targets
from .chat_teams import find_team, looks_like_team, maybe_team_name, resolve_team
from .cli_common import (
    PROG,
    EventPrinter,
    UsageError,
    check_not_self,
    check_recipient,
    confirm,
    connected,
    open_profile,
    read_new_passphrase,
    read_passphrase_for_new_profile,
    unlock,
    warn_key_changes,
)
from .client import Client
from .connection import enroll
from .errors import ClientError, RepliesNotAccepted
from .models import Peer, PeerChange, format_id, is_team_id, is_user_id, now_ms
from .notice_keys import last_notice_reply
from .profile import (
    KDF_INTERACTIVE,
    KDF_MODERATE,
    KdfParams,
    change_passphrase,
    parse_authority,
    set_authority,
)
from .render import (
    Names,
    clean,
    format_time,
    history_line,
    parse_lifespan,
    presence_line,
    status_label,
    team_event_line,
    team_problem_line,
)
from .teams import chain_events

__all__ = [
    "cmd_devices",
    "cmd_enroll",
    "cmd_history",
    "cmd_inbox",
    "cmd_link",
    "cmd_passphrase",
    "cmd_ping",
    "cmd_presence",
    "cmd_revoke",
    "cmd_safety",
    "cmd_search",
    "cmd_send",
    "cmd_set_authority",
    "cmd_status",
    "cmd_trust",
    "cmd_verify",
    "cmd_whoami",
]


async def cmd_enroll(args: argparse.Namespace) -> int:
    kdf = KDF_INTERACTIVE if args.kdf == "interactive" else KDF_MODERATE
    label = args.label if args.label is not None else socket.gethostname()[:64]
    authority = parse_authority(args.authority)  # before asking the passphrase
    profile = await enroll(
        args.server,
        args.code,
        args.profile,
        read_passphrase_for_new_profile(),
        label,
        authority=authority,
        kdf=kdf,
    )
    print(f"enrolled: user {profile.user_id} device {profile.device_id}")
    print(f"authority fingerprint: {profile.authority_fingerprint}")
    return 0


async def cmd_set_authority(args: argparse.Namespace) -> int:
    key = parse_authority(args.key)
    profile, passphrase = unlock(args.profile)
    current = profile.authority_pk
    if current == key:
        print(f"authority unchanged: {authority_fingerprint(key)}")
        return 0
    if current is not None and not args.replace:
        raise UsageError(
            f"this profile already trusts the authority {authority_fingerprint(current)}; "
            "pass --replace to trust another one instead"
        )
    set_authority(args.profile, passphrase, key)
    print(f"authority set: {authority_fingerprint(key)}")
    return 0


async def cmd_passphrase(args: argparse.Namespace) -> int:
    # Without --kdf the profile keeps its cost: a profile made "interactive"
    # for a low-memory device must not silently become "moderate".
    kdf: KdfParams | None = None
    if args.kdf is not None:
        kdf = KDF_INTERACTIVE if args.kdf == "interactive" else KDF_MODERATE
    _, old = unlock(args.profile)
    new = read_new_passphrase()
    change_passphrase(args.profile, old, new, kdf)
    print("passphrase changed")
    return 0


async def cmd_whoami(args: argparse.Namespace) -> int:
    profile = open_profile(args)
    print(f"user      {profile.user_id}")
    print(f"device    {profile.device_id}" + (f" ({clean(profile.label)})" if profile.label else ""))
    print(f"server    {profile.server}")
    if profile.authority_fingerprint is not None:
        print(f"authority {profile.authority_fingerprint}")
        # During a rotation's overlap (SPEC §15): the older keys that still count, and until when.
        for previous in profile.authority_previous:
            if previous.until >= now_ms():
                print(
                    f"          clé précédente {authority_fingerprint(previous.key)}, "
                    f"valable jusqu'au {format_time(previous.until)}"
                )
    else:
        print(f"authority none: run `{PROG} set-authority KEY` with the key your administrator gives you")
    with profile.open_state() as state:
        me = state.get_peer(profile.user_id)
    if me is not None:
        print(f"name      {clean(me.display)}")
        print(f"devices   {len(me.devices)}")
    return 0


async def resend_pending(client: Client) -> None:
    """Finish what an earlier run left pending (same ids: never a second copy)."""
    if client.state.pending_outgoing():
        resent = await client.resend_pending()
        print(f"{PROG}: resent {len(resent)} message(s) left pending by an earlier run", file=sys.stderr)


def accepted_line(message_id: bytes, urgent: bool) -> str:
    """``<id> accepted``, and for an urgent message what happens next."""
    if urgent:
        return f"{format_id(message_id)} accepted — 🔴 URGENT : rappels jusqu'à acquittement"
    return f"{format_id(message_id)} accepted"


async def cmd_send(args: argparse.Namespace) -> int:
    attach = check_attach_args(getattr(args, "attach", None))
    if not args.text.strip() and not attach:
        raise UsageError("empty message: nothing sent")
    progress = ProgressLine()
    lifespan = parse_lifespan(args.lifespan) if getattr(args, "lifespan", None) else None
    urgent = bool(getattr(args, "urgent", False))
    recipient = args.recipient.strip()
    if not (is_team_id(recipient) or is_role_id(recipient)):
        check_recipient(args.recipient)  # before asking the passphrase
    profile = open_profile(args)
    if maybe_team_name(recipient) or is_team_id(recipient) or is_role_id(recipient):
        async with connected(args, profile) as client:
            warn_key_changes(client)
            await resend_pending(client)
            team = None if is_role_id(recipient) else await find_team(client, recipient)
            if team is not None:
                message_id = await client.send(
                    team,
                    args.text,
                    lifespan_ms=lifespan,
                    urgent=urgent,
                    attachments=attach,
                    on_progress=progress,
                )
            else:
                role = await find_role(client, recipient) if maybe_role(recipient) else None
                if role is None:
                    raise UsageError(
                        f"{args.recipient!r} is neither an RPPS number nor a user id (u_...), "
                        "nor the name of one of your teams or of a role"
                    )
                await print_role_targets(client, role, urgent)
                message_id = await client.send(
                    role.role,
                    args.text,
                    lifespan_ms=lifespan,
                    urgent=urgent,
                    attachments=attach,
                    on_progress=progress,
                )
        print(accepted_line(message_id, urgent))
        return 0
    check_recipient(args.recipient, profile)
    async with connected(args, profile) as client:
        warn_key_changes(client)
        await resend_pending(client)
        peer = await client.resolve(args.recipient)
        check_not_self(peer, client)
        try:
            message_id = await client.send(
                peer.user,
                args.text,
                lifespan_ms=lifespan,
                urgent=urgent,
                attachments=attach,
                on_progress=progress,
            )
        except RepliesRefused:
            # The hub knew better than the lookup: say whom to call (SPEC §17.2).
            raise RepliesNotAccepted(peer.user, last_notice_reply(client.state, peer.user)) from None
    print(accepted_line(message_id, urgent))
    return 0


async def cmd_inbox(args: argparse.Namespace) -> int:
    async with connected(args) as client:
        warn_key_changes(client)
        printer = EventPrinter(client.state)
        events = await client.drain(idle=args.idle)
        for event in events:
            print(await printer.line(event, client))
    if not events:
        print(f"{PROG}: nothing new", file=sys.stderr)
    return 0


async def cmd_history(args: argparse.Namespace) -> int:
    profile = open_profile(args)
    with profile.open_state() as state:
        peer: str | None = None
        if args.peer is not None and looks_like_team(state, args.peer):
            peer = resolve_team(state, args.peer)
        elif args.peer is not None:
            found = state.find_peer(args.peer)
            if found is not None:
                peer = found.user
            elif is_user_id(args.peer):
                peer = args.peer
            else:
                raise UsageError(f"no conversation with {args.peer!r} in this profile")
        names = Names(state)
        lines: list[tuple[int, str]] = [
            (entry.sent_at, history_line(entry, names)) for entry in state.history(peer, limit=args.limit)
        ]
        if peer is not None and is_team_id(peer):
            # The team's membership changes are part of its conversation.
            view = state.get_team(peer)
            records = state.team_records(peer)
            if view is not None and profile.authority_pk is not None:
                for event in chain_events(peer, view.name, records, profile.authority):
                    lines.append((event.at, team_event_line(event, names)))
            lines.sort(key=lambda pair: pair[0])
            if view is not None and view.problem is not None:
                lines.append((0, team_problem_line(view)))
        for _, line in lines:
            print(line)
    return 0


async def cmd_link(args: argparse.Namespace) -> int:
    async with connected(args) as client:
        code, expires = await client.link_code()
    print(code)
    print(
        f"valid until {format_time(expires)}; on the new device run: {PROG} --profile DIR enroll "
        f"--server URL --authority KEY {code}; then an administrator verifies your account again",
        file=sys.stderr,
    )
    return 0


async def cmd_safety(args: argparse.Namespace) -> int:
    check_recipient(args.recipient)
    async with connected(args) as client:
        warn_key_changes(client)
        number = await client.safety_number(args.recipient)
        peer = await client.resolve(args.recipient)
    print(f"Safety number with {clean(peer.display)}:")
    print(number)
    if peer.verified:
        print("verified in person: yes ✓")
    else:
        print(f"verified in person: no (once you both read the same number: `{PROG} verify {peer.rpps}`)")
    if peer.pending is not None:
        print(f"key change pending: {peer.pending.describe()} (accept it with `{PROG} trust {peer.rpps}`)")
    return 0


def _device_lines(peer: Peer, change: PeerChange) -> list[str]:
    """What a pending change consists of, one device per line."""
    listed = {d.device: d for d in peer.listed}
    lines = []
    for label, ids in (
        ("new device", change.added),
        ("NEW KEYS", change.changed),
        ("keys NOT signed by the authority (never encrypted to)", change.substituted),
    ):
        for device in ids:
            known = listed.get(device)
            keys = f" {known.sign_pk.hex()[:16]}…/{known.box_pk.hex()[:16]}…" if known else ""
            lines.append(f"  {device}: {label}{keys}")
    return lines


async def cmd_trust(args: argparse.Namespace) -> int:
    if args.recipient.strip().lower() != "me":
        check_recipient(args.recipient)
    async with connected(args) as client:
        warn_key_changes(client)
        own = args.recipient.strip().lower() == "me"
        who = client.user_id if own else args.recipient
        peer = await client.resolve(who, refresh=True)
        name = "your own account" if peer.user == client.user_id else clean(peer.display)
        if peer.pending is None:
            print(f"nothing to accept: the devices of {name} are the pinned ones")
            return 0
        print(f"Key change of {name}: {peer.pending.describe()}")
        print("\n".join(_device_lines(peer, peer.pending)))
        if peer.user != client.user_id:
            print("New safety number:")
            print(await client.safety_number(peer.user))
        if not await confirm(f"Accept the new devices of {name}?", args.yes):
            print("not accepted: nothing is sent to them until you accept", file=sys.stderr)
            return 1
        await client.accept_keys(peer.user, expected=peer.pending)
    print(f"accepted: the current devices of {name} are now pinned")
    return 0


async def cmd_verify(args: argparse.Namespace) -> int:
    check_recipient(args.recipient)
    async with connected(args) as client:
        warn_key_changes(client)
        number = await client.safety_number(args.recipient)
        peer = await client.resolve(args.recipient)
        if peer.user == client.user_id:
            raise UsageError("compare safety numbers with someone else, not yourself")
        print(f"Safety number with {clean(peer.display)}:")
        print(number)
        if peer.pending is not None:
            print(f"(this also accepts their pending key change: {peer.pending.describe()})")
        if not await confirm(f"Does {clean(peer.display)} read the same number?", args.yes):
            print("not marked verified", file=sys.stderr)
            return 1
        await client.mark_verified(peer.user)
    print(f"{clean(peer.display)} is verified in person ✓")
    return 0


async def cmd_search(args: argparse.Namespace) -> int:
    async with connected(args) as client:
        entries = await client.search(args.query)
        for entry in entries:
            pinned = client.state.get_peer(entry.user)
            mark = " ✓" if pinned is not None and pinned.verified else ""
            fields = [
                f"{clean(entry.name)}{mark}",
                f"RPPS {clean(entry.rpps)}",
                clean(entry.profession) or "-",
                clean(entry.organisation) or "-",
                entry.user,
            ]
            print(" | ".join(fields))
    if not entries:
        print(f"{PROG}: no verified clinician matches {args.query!r}", file=sys.stderr)
    return 0


async def cmd_devices(args: argparse.Namespace) -> int:
    async with connected(args) as client:
        devices = await client.devices()
    for d in devices:
        state = "attested" if d.attested else "NOT attested (ask an administrator to verify you again)"
        label = clean(d.label) or "-"
        current = "  (this device)" if d.current else ""
        print(f"{d.device}  {label}  enrolled {format_time(d.created)}  {state}{current}")
    return 0


async def cmd_ping(args: argparse.Namespace) -> int:
    """Whether the hub answers now, and its round trip (SPEC §4.1)."""
    async with connected(args) as client:
        seconds = await client.ping()
    print(f"hub joignable : aller-retour {seconds * 1000:.0f} ms")
    return 0


async def cmd_revoke(args: argparse.Namespace) -> int:
    async with connected(args) as client:
        target = next((d for d in await client.devices() if d.device == args.device), None)
        if target is None:
            raise UsageError(f"{args.device} is not one of your active devices (`{PROG} devices` lists them)")
        if target.current:
            print(
                f"{PROG}: warning: {target.device} is THIS device: once revoked, this profile can "
                "no longer connect (enroll again with a new code)",
                file=sys.stderr,
            )
        label = f" ({clean(target.label)})" if target.label else ""
        if not await confirm(f"Revoke {target.device}{label} for ever?", args.yes):
            print("not revoked", file=sys.stderr)
            return 1
        await client.revoke(target.device)
    print(f"revoked {target.device}")
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    async with connected(args) as client:
        if args.status is not None:
            await client.set_status(args.status)
            status = args.status
        else:
            # Our own presence is always visible to us; this connection watches nothing else.
            mine = [p for p in await client.watch([client.user_id]) if p.user == client.user_id]
            if not mine:
                raise ClientError("the hub did not report your status")
            status = mine[0].status
    print(f"status: {status_label(status)}")
    return 0


async def cmd_presence(args: argparse.Namespace) -> int:
    for recipient in args.recipients:
        check_recipient(recipient)
    async with connected(args) as client:
        warn_key_changes(client)
        peers: dict[str, Peer] = {}
        for recipient in args.recipients:
            try:
                peer = await client.resolve(recipient)
            except UnknownUser:
                raise UsageError(
                    f"unknown recipient {recipient!r} (no such clinician in the directory)"
                ) from None
            peers.setdefault(peer.user, peer)
        shown = {p.user: p for p in await client.watch(list(peers))}
        names = Names(client.state)
        for user, peer in peers.items():
            if user in shown:
                print(presence_line(shown[user], names))
            else:
                print(f"? {clean(peer.display)}: presence not shared with you")
    return 0
