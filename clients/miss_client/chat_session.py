"""``miss-chat chat``: the interactive conversation with one clinician.

On a terminal it shows a prompt (``Dr X ▸``); what arrives is printed
above it, never in the middle of what is being typed, and a bottom bar
shows the connection (connected, reconnecting in N s, paused). Otherwise
(stdin a pipe) it reads one message per line: at end of input it keeps
printing what arrives until nothing has for ``--linger`` seconds, then
exits. Incoming messages, receipts (``✓ delivered to Dr X (RPPS), device
d_1a2b…: «Bonjour…»``, or ``✗ NOT delivered`` when a device of theirs
refused the message) and the peer's presence (``● Dr X (RPPS) is on
call``, ``○ Dr X (RPPS) is offline``: first their current one, then each
change) are printed as they arrive.

A care team (SPEC §13) is a conversation too: ``chat TEAM`` (its id or its
name) sends each line to every member of the chain this device verified
and shows its membership changes as they come; if the hub's view of the
team is found wrong, the problem is printed in French and lines are not
sent. Messages shown are marked read (read notices to their senders, or
only to your own devices with ``read-receipts off``), and read notices of
others are shown as ``✓✓ lu par …``.

An on-call role (SPEC §14) is a conversation too: ``chat ROLE`` (its id or
its name) sends each line to whoever holds it at that moment. In any
conversation ``/joindre FICHIER…`` sends files (SPEC §16,
:mod:`.chat_attachments`), ``/urgent TEXT`` sends TEXT as an urgent
message (it rings until acknowledged), and ``/ack`` acknowledges the last urgent message
received (``/ack ID`` another one); urgent messages, their reminders (with
the terminal's bell) and their statuses are printed as they come.

The chat survives the hub: when the connection ends (a restart, a lost
node, the network), it reconnects with backoff (:mod:`miss_client.reconnect`),
watches the peer again and resends what is pending, and lines typed
meanwhile are kept (in the local history, pending) and sent once connected
again. Other ``miss-chat`` commands may run on the same profile meanwhile:
the chat steps aside while they are connected and comes back after (file
locks in the profile directory); only one ``chat`` per profile runs at a
time. Errors that reconnecting cannot cure (device revoked, account
suspended, authentication refused) end it with their message.

:func:`cmd_chat` is the entry point that :mod:`.chat`'s parser calls; the
rest of ``miss-chat`` is in :mod:`.chat`, what both share in
:mod:`.cli_common`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from protocol.crypto import new_message_id
from protocol.errors import ProtocolError, RepliesRefused, SessionReplaced

from .chat_attachments import chat_attach
from .chat_oncall import find_role, maybe_role, print_role_targets
from .chat_teams import find_team, looks_like_team, maybe_team_name
from .cli_common import (
    PROG,
    EventPrinter,
    UsageError,
    check_not_self,
    check_recipient,
    describe,
    open_profile,
    warn_authority_mismatch,
    warn_key_changes,
)
from .client import Client
from .errors import ClientError, ConnectionLost, RequestTimeout
from .models import Message, Peer, PresenceChanged, PresenceInfo, TeamView, format_id, parse_id
from .oncall_models import RoleView
from .oncall_state import OncallState
from .profile import Profile
from .reconnect import CHAT_LOCK, Phase, ProfileLock, Reconnector, Status, is_transient
from .render import clean, excerpt, outgoing_line, presence_line, team_problem_line
from .render_notices import replies_refused_text
from .state import LocalState

__all__ = ["Chat", "cmd_chat", "stdin_is_terminal"]


def trouble(exc: BaseException | None) -> str:
    """Why a connection ended or an attempt failed, in a few words."""
    if exc is None:
        return "no connection"
    if isinstance(exc, SessionReplaced):
        return "this device connected elsewhere"
    if isinstance(exc, ConnectionLost) and exc.close_code == 1001:
        return "the hub is restarting"
    if isinstance(exc, ConnectionLost) and exc.close_code == 1006:
        return "the connection dropped"
    return describe(exc).split("; ")[0]


class Chat:
    """One ``miss-chat chat`` run (see the module docstring).

    Theory of operation: three tasks share this object. The *input* (a
    prompt_toolkit prompt on a terminal, else a thread reading stdin) puts
    lines into :attr:`lines`. The *connection* is a
    :class:`~miss_client.reconnect.Reconnector` running :meth:`session` on
    each connection: it re-watches the peer, resends what is pending, then
    prints events until the connection ends. The *sender* takes lines once
    the first connection has resolved the peer, and sends each through the
    current client; while there is none (reconnecting), or if the send
    fails because the connection ended, the message is recorded as pending
    in the local state, where the next session's ``resend_pending`` finds it
    (same id: never sent twice, and kept by the next run if this one ends
    first).
    """

    def __init__(
        self, profile: Profile, state: LocalState, recipient: str, *, interactive: bool, linger: float
    ) -> None:
        self.profile = profile
        self.state = state
        self.recipient = recipient
        self.interactive = interactive
        self.linger = linger
        self.printer = EventPrinter(state)
        self.names = self.printer.names
        self.lines: asyncio.Queue[str | None] = asyncio.Queue()
        self.peer: Peer | None = None
        #: The team, when the conversation is one (then ``peer`` stays None).
        self.team: TeamView | None = None
        #: The role, when the conversation is one (SPEC §14).
        self.role: RoleView | None = None
        #: The last urgent message received: (sender, id), for ``/ack``.
        self.last_urgent: tuple[str, bytes] | None = None
        self.peer_ready = asyncio.Event()
        #: The connected client, once caught up (None while reconnecting).
        self.client: Client | None = None
        #: Messages typed in this run and not seen accepted yet: id -> (text, sent_at).
        self.unsent: dict[bytes, tuple[str, int]] = {}
        self.presence: PresenceInfo | None = None
        self.reconnector = Reconnector(profile, state, on_status=self.on_status)
        self.status = Status(Phase.CONNECTING)
        self.interrupted = False
        self.last_activity = 0.0
        self._authority_warned = False
        self._presence_hidden_said = False

    # --- output ---------------------------------------------------------------

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.touch()

    def note(self, line: str) -> None:
        print(f"{PROG}: {line}", file=sys.stderr, flush=True)

    def touch(self) -> None:
        self.last_activity = asyncio.get_running_loop().time()

    def on_status(self, status: Status) -> None:
        before, self.status = self.status, status
        self.touch()
        if status.phase is Phase.CONNECTED and status.again:
            self.note("connected again")
        elif status.phase is Phase.WAITING and before.phase is Phase.CONNECTED:
            self.note(f"connection lost ({trouble(status.error)}); reconnecting")
        elif status.phase is Phase.PAUSED and before.phase is not Phase.PAUSED:
            self.note(f"another {PROG} command is using this profile; the chat resumes when it is done")

    @property
    def recipient_id(self) -> str:
        if self.team is not None:
            return self.team.team
        if self.role is not None:
            return self.role.role
        assert self.peer is not None
        return self.peer.user

    def prompt(self) -> str:
        if self.team is not None:
            return f"{clean(self.team.name)} ▸ "
        if self.role is not None:
            return f"{clean(self.role.name)} ▸ "
        return f"{clean(self.peer.name) if self.peer else self.recipient} ▸ "

    def toolbar(self) -> str:
        """The connection's state, for the bottom toolbar."""
        status = self.status
        if status.phase is Phase.CONNECTED:
            text = "● connected"
            if self.peer is not None and self.presence is not None:
                text += f" · {presence_line(self.presence, self.names)[2:]}"
        elif status.phase is Phase.WAITING:
            when = ""
            if status.retry_at is not None:
                left = status.retry_at - asyncio.get_running_loop().time()
                when = f" in {max(1, math.ceil(left))} s"
            text = f"○ reconnecting{when} · /quit leaves · {trouble(status.error)}"
            return f" {text}"
        elif status.phase is Phase.PAUSED:
            text = f"○ paused: another {PROG} command is using this profile"
        elif status.phase is Phase.CONNECTING:
            text = "○ connecting…"
        else:
            text = "○ disconnected"
        return f" {text} · /quit leaves"

    # --- the run ------------------------------------------------------------------

    async def run(self) -> int:
        """Chat until /quit, end of input (then ``linger``), Ctrl-C or a
        fatal error (raised). Returns the exit status."""
        loop = asyncio.get_running_loop()
        self.touch()
        connection = asyncio.create_task(self.reconnector.run(self.session), name="miss-chat-connection")
        reader = asyncio.create_task(self.read_prompt() if self.interactive else self.read_stdin())
        sender = asyncio.create_task(self.send_lines(), name="miss-chat-sender")
        try:
            done, _ = await asyncio.wait({connection, sender}, return_when=asyncio.FIRST_COMPLETED)
            if connection in done:
                connection.result()  # a fatal error: raise it
                return 0
            if sender.result() == "eof" and not self.interactive:
                while (
                    not connection.done() and (left := self.linger - (loop.time() - self.last_activity)) > 0
                ):
                    await asyncio.wait({connection}, timeout=left)
                if connection.done():
                    connection.result()
        finally:
            for task in (sender, reader, connection):
                task.cancel()
            await asyncio.gather(sender, reader, connection, return_exceptions=True)
            self.report_unsent()
        return 130 if self.interrupted else 0

    def report_unsent(self) -> None:
        pending = {e.id for e in self.state.pending_outgoing()}
        left = [text for mid, (text, _) in self.unsent.items() if mid in pending]
        if left:
            self.note(
                f"{len(left)} message(s) not sent yet, e.g. {excerpt(left[0])}: they are kept, and sent "
                f"by the next `{PROG} send` or `{PROG} chat`"
            )

    # --- connection ---------------------------------------------------------------

    async def session(self, client: Client, again: bool) -> None:
        """Runs on each connection (Reconnector's ``session``): never returns."""
        warn_key_changes(client)
        if not self._authority_warned:
            self._authority_warned = warn_authority_mismatch(client)
        if self.peer is None and self.team is None and self.role is None:
            team = await find_team(client, self.recipient)
            role = (
                await find_role(client, self.recipient)
                if team is None and maybe_role(self.recipient)
                else None
            )
            if team is not None:
                self.team = await client.team(team)
                self.note(f"chatting in the team {clean(self.team.name)}; /quit leaves")
                if self.team.problem is not None:
                    self.say(team_problem_line(self.team))
            elif role is not None:
                self.role = role
                self.note(
                    f"rôle {clean(role.name)} : chaque ligne va à qui le tient au moment de l'envoi; "
                    "/quit leaves"
                )
                await print_role_targets(client, role, False)
            else:
                peer = await client.resolve(self.recipient)
                check_not_self(peer, client)
                self.peer = peer
                self.note(f"chatting with {clean(peer.display)}; /quit leaves")
                if peer.service and not peer.replies:
                    # Before the user types (SPEC §17.2): whom to call instead.
                    self.note(replies_refused_text(self.state, peer.user))
        if self.peer is not None:
            await self.watch(client, self.peer)
        await self.catch_up(client)
        self.client = client
        self.peer_ready.set()
        conversation = self.recipient_id
        await self.mark_read(client, conversation)
        try:
            async for event in client.events():
                if (
                    isinstance(event, PresenceChanged)
                    and self.peer is not None
                    and event.user == self.peer.user
                ):
                    self.presence = event.info
                self.say(await self.printer.line(event, client))
                if isinstance(event, Message) and event.urgent and not event.outgoing_copy:
                    self.last_urgent = (event.from_user, event.id)
                if isinstance(event, Message) and event.peer == conversation and not event.outgoing_copy:
                    await self.mark_read(client, conversation)
        finally:
            self.client = None
        # events() ends quietly only after aclose(): a send got no answer.
        raise ConnectionLost("no answer from the hub in time")

    async def mark_read(self, client: Client, conversation: str) -> None:
        """What the chat shows is read: tell the senders (or our devices)."""
        try:
            await client.mark_read(conversation)
        except (ProtocolError, ClientError) as exc:
            if client.closed or is_transient(exc):
                raise
            self.note(f"read notice not sent: {describe(exc)}")

    async def watch(self, client: Client, peer: Peer) -> None:
        """Follow the peer's presence; print it if it is news."""
        try:
            current = await client.watch([peer.user])
        except (ProtocolError, ClientError) as exc:
            if client.closed or is_transient(exc):
                raise
            self.note(f"presence of {clean(peer.display)} unavailable: {describe(exc)}")
            return
        if current:
            if current[0] != self.presence:
                self.say(presence_line(current[0], self.names))
            self.presence = current[0]
        elif not self._presence_hidden_said:
            self._presence_hidden_said = True
            self.note(f"the presence of {clean(peer.display)} is not shared with you")

    async def catch_up(self, client: Client) -> None:
        """Resend what is pending (typed while disconnected, cut off by a
        drop, or left by an earlier run), until nothing new is: lines typed
        meanwhile are recorded as pending too, and go in the next round."""
        tried: set[bytes] = set()
        earlier = 0
        while pending := [e for e in self.state.pending_outgoing() if e.id not in tried]:
            tried.update(e.id for e in pending)
            for message_id in await client.resend_pending():
                if message_id in self.unsent:
                    text, sent_at = self.unsent.pop(message_id)
                    note = "sent after reconnecting"
                    self.say(outgoing_line(sent_at, self.recipient_id, text, self.names, note))
                else:
                    earlier += 1
        if earlier:
            self.note(f"resent {earlier} message(s) left pending by an earlier run")
        still = {e.id for e in self.state.pending_outgoing()}
        for message_id in [m for m in self.unsent if m in tried and m not in still]:
            text, _ = self.unsent.pop(message_id)
            self.note(f"not sent: {excerpt(text)} was refused (see the warning above)")

    # --- input and sending ------------------------------------------------------------

    async def send_lines(self) -> str:
        """Send each line once the peer is known: "quit" after /quit, "eof" at
        the end of input."""
        await self.peer_ready.wait()
        while True:
            line = await self.lines.get()
            if line is None:
                return "eof"
            text = line.rstrip("\r\n")
            if text.strip() == "/quit":
                return "quit"
            if not text.strip():
                self.note("empty message: nothing sent")
                continue
            command, _, rest = text.strip().partition(" ")
            if command == "/ack":
                await self.acknowledge(rest.strip())
                continue
            if command in ("/joindre", "/attach"):
                if self.client is None:
                    self.note("pas connecté : réessayez /joindre une fois reconnecté")
                    continue
                sent, line = await chat_attach(self.client, self.recipient_id, rest, self.names)
                (self.say if sent else self.note)(line)
                continue
            if command == "/urgent":
                if not rest.strip():
                    self.note("/urgent TEXTE : le message urgent à envoyer")
                    continue
                await self.send(rest.strip(), urgent=True)
                continue
            await self.send(text)

    async def acknowledge(self, arg: str) -> None:
        """``/ack [ID]``: acquitter the last urgent message received, or ID."""
        client = self.client
        if client is None:
            self.note("pas connecté : réessayez /ack une fois reconnecté")
            return
        target = self.last_urgent
        if arg:
            try:
                message_id = parse_id(arg)
            except ValueError:
                self.note(f"{arg!r} n'est pas un identifiant de message")
                return
            found = [i for i in client.roles.state.with_id(message_id) if i.from_user != client.user_id]
            target = (found[0].from_user, message_id) if found else None
        if target is None:
            self.note("aucun message urgent à acquitter")
            return
        try:
            ack = await client.acknowledge(target)
        except (ProtocolError, ClientError) as exc:
            self.note(f"non acquitté : {describe(exc)}")
            return
        if ack.first:
            self.say(f"acquitté : message {format_id(target[1])} de {self.names.of(target[0])}")
        else:
            self.say(f"déjà acquitté par {self.names.short(ack.user)}")

    async def send(self, text: str, urgent: bool = False) -> None:
        to = self.recipient_id
        message_id = new_message_id()
        sent_at = time.time_ns() // 1_000_000
        self.printer.texts.remember(message_id, text)
        client = self.client
        if client is None:
            team = self.team.team if self.team is not None else None
            expires_at = None
            if self.team is not None and self.team.lifespan is not None:
                expires_at = sent_at + self.team.lifespan
            if urgent or self.role is not None:
                self.record_oncall(message_id, urgent)
            self.state.record_outgoing(
                message_id, to, sent_at, "text", text, expires_at=expires_at, team=team
            )
            self.unsent[message_id] = (text, sent_at)
            self.say(outgoing_line(sent_at, to, text, self.names, "not connected: sent once connected again"))
            return
        try:
            await client.send(to, text, message_id, urgent=urgent)
        except (ProtocolError, ClientError) as exc:
            retry = isinstance(exc, ConnectionLost | RequestTimeout) or getattr(exc, "retryable", False)
            if not (client.closed or retry):
                if isinstance(exc, RepliesRefused) and self.peer is not None:
                    self.note(f"not sent: {replies_refused_text(self.state, self.peer.user)}")
                else:
                    self.note(f"not sent: {describe(exc)}")
                return
            # The message waits in the local state (send recorded it, unless
            # the connection ended before), and the next session resends it.
            if message_id not in {e.id for e in self.state.pending_outgoing()}:
                if urgent or self.role is not None:
                    self.record_oncall(message_id, urgent)
                team = self.team.team if self.team is not None else None
                self.state.record_outgoing(message_id, to, sent_at, "text", text, team=team)
            self.unsent[message_id] = (text, sent_at)
            self.say(outgoing_line(sent_at, to, text, self.names, f"not sent yet: {trouble(exc)}"))
            if not client.closed:
                await client.aclose()  # reconnect: the resend finds out whether the hub has it
            return
        self.say(outgoing_line(sent_at, to, text, self.names, "🔴 URGENT" if urgent else ""))

    def record_oncall(self, message_id: bytes, urgent: bool) -> None:
        """Record a role or urgent line typed offline as the SDK would, so
        that its resend is urgent too (miss_client.oncall_state)."""
        role = self.role.role if self.role is not None else None
        OncallState(self.state).record_out(message_id, role=role, urgent=urgent)

    async def read_stdin(self) -> None:
        """Lines of stdin, read by a daemon thread (so that a blocked read
        never holds the program open); None marks the end of input."""
        loop = asyncio.get_running_loop()

        def put(item: str | None) -> bool:
            try:
                loop.call_soon_threadsafe(self.lines.put_nowait, item)
            except RuntimeError:  # the loop is closed: the program is leaving
                return False
            return True

        def run() -> None:
            while True:
                try:
                    line = sys.stdin.readline()
                except (OSError, ValueError):
                    line = ""
                if not line:
                    put(None)
                    return
                if not put(line):
                    return

        threading.Thread(target=run, name="miss-chat-stdin", daemon=True).start()

    async def read_prompt(self) -> None:
        """Lines typed at a prompt_toolkit prompt. Whatever the other tasks
        print meanwhile appears above the prompt (patch_stdout), never in
        the middle of what is being typed; the bottom toolbar shows the
        connection's state."""
        from prompt_toolkit import PromptSession
        from prompt_toolkit.patch_stdout import patch_stdout

        session: PromptSession[str] = PromptSession(
            erase_when_done=True, bottom_toolbar=self.toolbar, refresh_interval=0.5
        )
        with patch_stdout(), _logs_to(sys.stderr):
            while True:
                try:
                    text = await session.prompt_async(self.prompt)
                except EOFError:
                    break
                except KeyboardInterrupt:
                    self.interrupted = True
                    break
                self.lines.put_nowait(text)
                if text.strip() == "/quit":
                    break
        self.lines.put_nowait(None)


@contextmanager
def _logs_to(stream: TextIO) -> Iterator[None]:
    """Point the root logger's stream handlers at ``stream`` (the patched
    stderr, so that SDK warnings appear above the prompt too)."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    before = [h.setStream(stream) for h in handlers]
    try:
        yield
    finally:
        for handler, old in zip(handlers, before, strict=True):
            if old is not None:
                handler.setStream(old)


class _ChatHandlesReplacement(logging.Filter):
    """The chat pauses and resumes on ``session_replaced`` and says so: the
    SDK's warning about that fatal error would only alarm the user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return SessionReplaced.code not in record.getMessage()


async def cmd_chat(args: argparse.Namespace) -> int:
    if not args.recipient.strip().startswith(("t_", "r_")):
        check_recipient(args.recipient)  # before asking the passphrase
    profile = open_profile(args)
    with profile.open_state() as state:
        team = looks_like_team(state, args.recipient) or maybe_team_name(args.recipient)
    if not team and not args.recipient.strip().startswith("r_"):
        check_recipient(args.recipient, profile)
    chat_lock = ProfileLock(profile.directory / CHAT_LOCK)
    if not chat_lock.try_acquire():
        raise UsageError(f"another chat is running with this profile ({profile.directory})")
    quiet = _ChatHandlesReplacement()
    logging.getLogger("miss_client").addFilter(quiet)
    try:
        with profile.open_state() as state:
            chat = Chat(profile, state, args.recipient, interactive=stdin_is_terminal(), linger=args.linger)
            return await chat.run()
    finally:
        logging.getLogger("miss_client").removeFilter(quiet)
        chat_lock.release()


def stdin_is_terminal() -> bool:
    """Interactive mode (prompt_toolkit) when stdin and stdout are terminals."""
    return sys.stdin.isatty() and sys.stdout.isatty()
