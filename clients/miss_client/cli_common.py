"""What the ``miss-chat`` command modules share (:mod:`.chat`, the one-shot
commands, and :mod:`.chat_session`, the interactive chat).

* Asking for passphrases and unlocking the profile (:func:`unlock`).
* A one-shot command's connection (:func:`connected`): the profile's session
  lock, and the warnings every connecting command gives (key changes, an
  authority mismatch).
* Refusing impossible recipients before connecting, and asking confirmation.
* :class:`EventPrinter`: SDK events as the lines the user reads.
* :func:`describe`: an expected error as one user-facing line.

It imports neither command module, so that both can import it.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import random
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from protocol.attestation import authority_fingerprint
from protocol.errors import (
    AccountSuspended,
    AuthFailed,
    DeviceRevoked,
    Forbidden,
    InvalidCode,
    NoDevices,
    NotMember,
    NotVerified,
    ProtocolError,
    RecipientNotVerified,
    RepliesRefused,
    SessionReplaced,
    TeamForbidden,
    TooManyConnections,
    UnknownTeam,
    UnknownUser,
)

from .client import Client
from .errors import (
    ClientError,
    HubBusy,
    KeyChangePending,
    ProfileNotFound,
    TeamProblem,
    UnverifiedPeer,
    WrongPassphrase,
)
from .models import (
    AuthorityRotated,
    Event,
    Message,
    MessageHeld,
    Peer,
    PeerChange,
    PresenceChanged,
    ReadBy,
    Recalled,
    Refused,
    RoleHoldersChanged,
    RotationRefused,
    TeamEvent,
    TeamProblemFound,
    UrgentReminded,
    UrgentStatusChanged,
    is_rpps,
)
from .profile import Profile, load_profile, profile_exists
from .reconnect import session_lock
from .render import (
    MessageTexts,
    Names,
    clean,
    held_line,
    message_line,
    presence_line,
    read_line,
    recalled_line,
    receipt_line,
    refused_line,
    reminder_line,
    role_changed_line,
    team_event_line,
    team_problem_line,
    urgent_status_line,
)
from .state import LocalState

__all__ = [
    "PASSPHRASE_ATTEMPTS",
    "PROG",
    "EventPrinter",
    "UsageError",
    "check_not_self",
    "check_recipient",
    "confirm",
    "connected",
    "describe",
    "open_profile",
    "read_new_passphrase",
    "read_passphrase_for_new_profile",
    "unlock",
    "warn_authority_mismatch",
    "warn_key_change",
    "warn_key_changes",
]

PROG = "miss-chat"
#: Passphrase attempts when it is asked on the terminal.
PASSPHRASE_ATTEMPTS = 3
RPPS_DIGITS = 11


class UsageError(ClientError):
    """A mistake in how the command was called that argparse cannot see."""


# --- passphrase and profile ----------------------------------------------------


def _ask(prompt: str) -> str:
    """Ask on the terminal (/dev/tty), without echo; UsageError if there is none."""
    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
    except OSError:
        raise UsageError("no terminal to ask the passphrase on: set MISS_PASSPHRASE") from None
    try:
        return getpass.getpass(prompt)
    except EOFError:
        raise UsageError("no passphrase given") from None


def read_new_passphrase() -> str:
    """A new passphrase: ``$MISS_NEW_PASSPHRASE`` if set (for scripts), else
    asked twice on the terminal."""
    env = os.environ.get("MISS_NEW_PASSPHRASE")
    if env is not None:
        return env
    passphrase = _ask("New passphrase: ")
    if _ask("New passphrase again: ") != passphrase:
        raise UsageError("the two passphrases differ")
    return passphrase


def read_passphrase_for_new_profile() -> str:
    """``$MISS_PASSPHRASE`` if set, else asked twice on the terminal."""
    env = os.environ.get("MISS_PASSPHRASE")
    if env is not None:
        return env
    passphrase = _ask("Passphrase: ")
    if _ask("Passphrase again: ") != passphrase:
        raise UsageError("the two passphrases differ")
    return passphrase


def unlock(directory: Path) -> tuple[Profile, str]:
    """Open the profile in ``directory`` and return it with its passphrase:
    ``$MISS_PASSPHRASE`` if set (one attempt), else asked on the terminal,
    up to PASSPHRASE_ATTEMPTS times. Raises ProfileNotFound before asking,
    WrongPassphrase after the last attempt."""
    env = os.environ.get("MISS_PASSPHRASE")
    if env is not None:
        return load_profile(directory, env), env
    if not profile_exists(directory):
        raise ProfileNotFound(f"no profile in {directory} (run enroll first)")
    for attempt in range(1, PASSPHRASE_ATTEMPTS + 1):
        passphrase = _ask("Passphrase: ")
        try:
            return load_profile(directory, passphrase), passphrase
        except WrongPassphrase:
            if attempt == PASSPHRASE_ATTEMPTS:
                raise WrongPassphrase(f"wrong passphrase ({PASSPHRASE_ATTEMPTS} attempts)") from None
            print("wrong passphrase, try again", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def open_profile(args: argparse.Namespace) -> Profile:
    return unlock(args.profile)[0]


# --- connecting and checking ------------------------------------------------------


def warn_key_changes(client: Client) -> None:
    """Have ``client`` tell the user, on stderr, when a peer's devices change."""
    client.on_key_change = lambda peer, change: warn_key_change(client, peer, change)


def warn_key_change(client: Client, peer: Peer, change: PeerChange) -> None:
    """Tell the user, on stderr, that a peer's devices changed since pinned."""
    own = peer.user == client.user_id
    who = "your own account" if own else clean(peer.display)
    if not change.needs_acceptance:
        print(f"{PROG}: note: the devices of {who} changed ({change.describe()})", file=sys.stderr)
        return
    arg = "me" if own else peer.rpps
    compare = "" if own else f"compare safety numbers (`{PROG} safety {arg}`), then "
    print(
        f"{PROG}: WARNING: the devices of {who} changed ({change.describe()}); nothing is sent to "
        f"{'anyone' if own else 'them'} until you accept: {compare}run `{PROG} trust {arg}`",
        file=sys.stderr,
    )


def warn_authority_mismatch(client: Client) -> bool:
    """Warn, on stderr, if the hub announces another authority key than the
    profile's: then nobody's attestation verifies. True if warned."""
    announced, mine = client.hub_authority, client.profile.authority_pk
    if announced is None or mine is None or announced == mine:
        return False
    print(
        f"{PROG}: WARNING: the hub announces the verification authority {authority_fingerprint(announced)} "
        f"but this profile trusts {authority_fingerprint(mine)}: every clinician will look unverified "
        f"until the profile has the right key: `{PROG} set-authority KEY --replace` with the key your "
        "administrator gives you",
        file=sys.stderr,
    )
    return True


@asynccontextmanager
async def connected(args: argparse.Namespace, profile: Profile | None = None) -> AsyncIterator[Client]:
    """A one-shot command's connection: holds the profile's ``session.lock``
    while connected (see :mod:`miss_client.reconnect`), so that an open
    chat steps aside and comes back after, and warns about an authority
    mismatch. A node draining for a rolling restart answers 503
    (:class:`HubBusy`): the command tries again, :data:`BUSY_TRIES` times
    in all with the reconnection's backoff and jitter, rather than make the
    clinician run it again."""
    if profile is None:
        profile = open_profile(args)

    def waiting() -> None:
        print(f"{PROG}: waiting for another {PROG} command using this profile to finish", file=sys.stderr)

    async with session_lock(profile.directory, on_wait=waiting), AsyncExitStack() as stack:
        for attempt in range(1, BUSY_TRIES + 1):
            try:
                client = await stack.enter_async_context(Client.connect(profile))
                break
            except HubBusy:
                if attempt == BUSY_TRIES:
                    raise
                await asyncio.sleep(busy_wait(attempt))
        if client.rotation is not None:
            print(f"{PROG}: {client.rotation.text}", file=sys.stderr)
        warn_authority_mismatch(client)
        yield client


#: Tries of a one-shot command's connection while nodes answer 503.
BUSY_TRIES = 4


def busy_wait(attempt: int) -> float:
    """Seconds before try ``attempt + 1``: 0.5 s doubling, with full jitter
    so that the clients a drained node sent away do not come back together."""
    return random.uniform(0, 0.5 * 2 ** (attempt - 1))


def check_recipient(recipient: str, profile: Profile | None = None) -> None:
    """Refuse, before connecting, what cannot be a recipient: a number that
    is not 11 digits long, or (as far as the local state tells) oneself."""
    text = recipient.strip()
    if text.isascii() and text.isdigit() and len(text) != RPPS_DIGITS:
        raise UsageError(f"an RPPS number has {RPPS_DIGITS} digits ({text!r} has {len(text)})")
    if profile is None:
        return
    if text == profile.user_id:
        raise UsageError("you cannot send a message to yourself")
    if is_rpps(text):
        with profile.open_state() as state:
            me = state.get_peer(profile.user_id)
        if me is not None and me.rpps == text:
            raise UsageError("you cannot send a message to yourself")


def check_not_self(peer: Peer, client: Client) -> None:
    if peer.user == client.user_id:
        raise UsageError("you cannot send a message to yourself")


async def confirm(question: str, yes: bool) -> bool:
    """``--yes``, or a y/n answer read from stdin (the question on stderr)."""
    if yes:
        return True
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)  # the connection keeps answering pings meanwhile
    if not line:
        raise UsageError("no answer on stdin: pass --yes to confirm without being asked")
    return line.strip().lower() in ("y", "yes", "o", "oui")


# --- output -----------------------------------------------------------------------


class EventPrinter:
    """Turns SDK events into lines (see :mod:`miss_client.render`), looking
    up what the local state lacks: the peer's name, and the labels of our
    own devices when a receipt names one."""

    def __init__(self, state: LocalState) -> None:
        self.names = Names(state)
        self.texts = MessageTexts(state)
        self._state = state
        self._labels: dict[str, str] | None = None

    async def line(self, event: Event, client: Client) -> str:
        if isinstance(event, AuthorityRotated | RotationRefused):
            return f"*** {event.text}"  # the French notice of SPEC §15's contract
        if isinstance(event, TeamProblemFound):
            return team_problem_line(event)
        if isinstance(event, UrgentReminded):
            await self._know(event.sender, client)
            return reminder_line(event, self.names)
        if isinstance(event, UrgentStatusChanged):
            for who in (event.sender, event.user, event.target):
                if who is not None:
                    await self._know(who, client)
            return urgent_status_line(event, self.names, self.texts, client.user_id)
        if isinstance(event, RoleHoldersChanged):
            for who in event.holders:
                await self._know(who, client)
            return role_changed_line(event, self.names, client.user_id)
        if isinstance(event, TeamEvent):
            for who in {event.user, event.by} - {"authority"}:
                await self._know(who, client)
            return team_event_line(event, self.names)
        if isinstance(event, Message):
            user = event.from_user if event.team is not None else event.peer
        elif isinstance(event, MessageHeld | Recalled):
            user = event.from_user
        else:
            user = event.user
        await self._know(user, client)
        if isinstance(event, Message):
            if event.role is not None:
                await self._know_role(event.role, client)
            return message_line(event, self.names, self.names.urgent(event.from_user, event.id))
        if isinstance(event, MessageHeld):
            return held_line(event, self.names)
        if isinstance(event, PresenceChanged):
            return presence_line(event, self.names)
        if isinstance(event, ReadBy):
            return read_line(event, self.names, self.texts, client.user_id)
        if isinstance(event, Recalled):
            return recalled_line(event, self.names)
        labels = await self._own_labels(client) if event.user == client.user_id else {}
        if isinstance(event, Refused):
            return refused_line(event, self.names, self.texts, labels)
        return receipt_line(event, self.names, self.texts, labels)

    async def _know(self, user: str, client: Client) -> None:
        """Look ``user`` up if the local directory lacks their name."""
        if user.startswith("u_") and self._state.get_peer(user) is None and not client.closed:
            try:
                await client.lookup(user=user)
            except (ProtocolError, ClientError):
                pass  # shown by user id then

    async def _know_role(self, role: str, client: Client) -> None:
        """Fetch a role's name if this device does not know it."""
        if self.names.role(role) == role and not client.closed:
            try:
                await client.roles.get(role)
            except (ProtocolError, ClientError, ValueError):
                pass  # shown by id then

    async def _own_labels(self, client: Client) -> dict[str, str]:
        if self._labels is None and not client.closed:
            try:
                self._labels = {d.device: d.label for d in await client.devices()}
            except (ProtocolError, ClientError):
                return {}
        return self._labels or {}


def describe(exc: BaseException) -> str:
    """A one-line, user-facing description of an expected error."""
    from .chat_oncall import describe_oncall  # it imports this module

    oncall = describe_oncall(exc)
    if oncall is not None:
        return oncall
    if isinstance(exc, UnknownUser):
        return "unknown recipient (no such clinician in the directory)"
    if isinstance(exc, AuthFailed):
        return "authentication failed: this device is unknown to the hub or was revoked"
    if isinstance(exc, NoDevices):
        return "the recipient has no device enrolled yet; nobody could read the message"
    if isinstance(exc, SessionReplaced):
        return "this device connected again elsewhere (another miss-chat running with this profile?)"
    if isinstance(exc, InvalidCode):
        return "invalid enrollment code (unknown, already used or expired)"
    if isinstance(exc, DeviceRevoked):
        return "this device has been revoked: it can no longer connect; enroll again with a new code"
    if isinstance(exc, AccountSuspended):
        return "your account is suspended; contact your administrator"
    if isinstance(exc, NotVerified):
        return (
            "your account or this device is not verified by the authority: ask an administrator to "
            "run `miss-admin verify` (again, after you link a device)"
        )
    if isinstance(exc, RecipientNotVerified):
        return "the recipient is not a verified clinician (not attested, or suspended)"
    if isinstance(exc, Forbidden):
        return f"not one of your active devices (`{PROG} devices` lists them)"
    if isinstance(exc, KeyChangePending):
        if exc.own:
            return (
                f"the devices of your own account changed ({exc.change.describe()}): nothing is sent "
                f"until you accept them with `{PROG} trust me`"
            )
        arg = exc.peer.rpps
        return (
            f"the devices of {clean(exc.peer.display)} changed ({exc.change.describe()}): nothing is "
            f"sent until you accept; compare safety numbers (`{PROG} safety {arg}`), "
            f"then run `{PROG} trust {arg}`"
        )
    if isinstance(exc, UnverifiedPeer):
        if exc.own and exc.reason == "device_not_attested":
            return (
                "this device is not attested yet (linked since your account was last verified): "
                "ask an administrator to run `miss-admin verify` again"
            )
        if exc.own:
            return (
                f"your account is not verified by the authority ({exc.reason.replace('_', ' ')}): "
                "ask an administrator to run `miss-admin verify`"
            )
        return clean(str(exc))
    if isinstance(exc, TeamProblem):
        return clean(str(exc))
    if isinstance(exc, TooManyConnections):
        return (
            "trop de connexions ouvertes pour ce compte (miss-chat, onglets, appareils) : "
            "fermez-en une (too_many_connections)"
        )
    if isinstance(exc, NotMember):
        return "vous n'êtes pas membre de cette équipe (not_member)"
    if isinstance(exc, TeamForbidden):
        return (
            "refusé : réservé aux administrateurs de l'équipe, ou dernier administrateur, "
            "ou équipe fermée (team_forbidden)"
        )
    if isinstance(exc, UnknownTeam):
        return "équipe inconnue (unknown_team)"
    if isinstance(exc, RepliesRefused):
        return "Ce service n'accepte pas de réponse (replies_refused)"
    if isinstance(exc, ProtocolError):
        return f"{exc.message} ({exc.code})" if type(exc) is not ProtocolError else str(exc)
    return str(exc)
