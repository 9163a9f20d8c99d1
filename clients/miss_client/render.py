"""How the terminal client shows messages, receipts, presence and history lines.

Everything a peer controls (message bodies, directory names, device labels,
refusal reasons) goes through :func:`clean` first: control characters and
bidirectional overrides are shown escaped, so a message cannot move the
cursor, recolour the terminal or disguise text ("Trojan source"). Times are
local, ``YYYY-MM-DD HH:MM``.

Receipts name what the user knows: the message by a short excerpt of its
text (``«Bonjour, un avis sur…»``, from :class:`MessageTexts`) and the device
by the short form of its id (``d_1a2b…``), with its label when it is one of
the user's own devices. A refusal (SPEC §6.5) is always shown as
``✗ NOT delivered``, never as delivered (docs/ARCHITECTURE.md, guarantee 7).

Care teams (SPEC §13): a team message shows its team (``[Cardio garde]
Dr X: …``); membership changes are lines of the conversation in French
(``Dr X a ajouté Dr Y``); a team whose chain this device could not trust
shows its problem in French; read notices show ``✓✓ lu par Dr X``;
recalled and expired texts show ``message retiré`` / ``message expiré``.

Attachments (SPEC §16): one line each under the message, ``📎 plaie.jpg —
1,2 Mo, image JPEG``, numbered when there are several (``save ID DIR``
fetches them; the name is the sender's, cleaned like any text).

On-call roles and urgent messages (SPEC §14): a message sent to a role
names it (``[→ Cardiologie — garde]``); an urgent one starts with
``🔴 URGENT — à acquitter`` and the command that acknowledges it (then
``URGENT — acquitté par Dr X à HH:MM``), a backup's copy says so
(``envoyé à vous en renfort, étape 1``); reminders ring the terminal's bell
(``\a``); the sender's status lines read ``escalade vers … (étape 1)``,
``acquitté par Dr X à HH:MM``, ``aucun acquittement``.

Notices and services (SPEC §17): a notice shows as a card built from its
``notice`` map, never from its text (:mod:`.render_notices`); a service as
``[Service] Name — Organisation`` (:attr:`.models.Peer.display`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from protocol.attachments import Attachment
from protocol.oncall import is_role_id
from protocol.text import printable

from .attachments import describe_size, describe_type
from .models import (
    Delivered,
    HistoryEntry,
    Message,
    MessageHeld,
    Peer,
    PresenceChanged,
    PresenceInfo,
    ReadBy,
    Recalled,
    Refused,
    TeamEvent,
    TeamProblemFound,
    TeamView,
    format_id,
    is_team_id,
)
from .oncall_models import RoleHoldersChanged, RoleView, UrgentInfo, UrgentReminded, UrgentStatusChanged
from .oncall_state import OncallState
from .render_notices import notice_card
from .state import LocalState

__all__ = [
    "MessageTexts",
    "Names",
    "attachment_line",
    "clean",
    "excerpt",
    "format_time",
    "held_line",
    "history_line",
    "lifespan_label",
    "message_line",
    "outgoing_line",
    "parse_lifespan",
    "presence_line",
    "read_line",
    "recalled_line",
    "receipt_line",
    "refusal_reason",
    "refused_line",
    "reminder_line",
    "role_changed_line",
    "role_line",
    "short_device",
    "status_label",
    "team_event_line",
    "team_lines",
    "team_problem_line",
    "urgent_mark",
    "urgent_status_line",
    "with_attachments",
]

#: The terminal's bell: an urgent message and its reminders ring.
BELL = "\a"

_STATUS_LABELS = {"available": "available", "busy": "busy", "on_call": "on call", "off_duty": "off duty"}

#: What a refusal reason (SPEC §6.3) means, as the sender reads it; other
#: reasons (from a later revision) are shown as they come.
_REFUSAL_REASONS = {
    "sender_unverified": "the sender could not be verified by that device",
    "undecryptable": "that device could not decrypt or check it",
}

#: Characters of a message shown in a receipt.
EXCERPT_CHARS = 24


def clean(text: str) -> str:
    """``text`` made safe for a terminal (protocol.text.printable), each line
    of it, the lines after the first indented."""
    return "\n    ".join(printable(line) for line in text.split("\n"))


def attachment_line(att: Attachment, number: int | None = None) -> str:
    """``📎 plaie.jpg — 1,2 Mo, image JPEG`` (``📎 2. …`` with a number)."""
    n = f"{number}. " if number is not None else ""
    return f"📎 {n}{clean(att.name)} — {describe_size(att.size)}, {clean(describe_type(att.type))}"


def with_attachments(line: str, atts: Sequence[Attachment]) -> str:
    """``line``, then one indented :func:`attachment_line` per attachment."""
    if not atts:
        return line
    numbered = len(atts) > 1
    return line + "".join(
        "\n    " + attachment_line(a, i if numbered else None) for i, a in enumerate(atts, 1)
    )


def format_time(ms: int) -> str:
    """Local time of a ms timestamp."""
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


def excerpt(text: str, chars: int = EXCERPT_CHARS) -> str:
    """``«first words…»``: the start of a message on one line, made safe."""
    flat = " ".join(text.split())
    if len(flat) > chars:
        flat = flat[:chars].rstrip() + "…"
    return f"«{clean(flat)}»"


def short_device(device: str) -> str:
    """``d_1a2b…``: enough of a device id to tell devices apart on screen."""
    return clean(device if len(device) <= 6 else device[:6] + "…")


def refusal_reason(reason: str) -> str:
    """A refusal reason as people say it (unknown ones as they come)."""
    return _REFUSAL_REASONS.get(reason, clean(reason))


class Names:
    """Display names from the local directory (what lookups pinned), and
    team names from the verified chains."""

    def __init__(self, state: LocalState) -> None:
        self._state = state
        self._oncall = OncallState(state)

    def of(self, user: str) -> str:
        """``Name (RPPS)`` if the user is in the local directory, a team's
        name for a team id, a role's for a role id, else the id."""
        if is_team_id(user):
            return self.team(user)
        if is_role_id(user):
            return self.role(user)
        peer: Peer | None = self._state.get_peer(user)
        return clean(peer.display) if peer is not None else user

    def short(self, user: str, fallback: str | None = None) -> str:
        """``Name`` alone (``fallback``, e.g. from an attestation, else the id)."""
        if user == "authority":
            return "l'administration"
        peer: Peer | None = self._state.get_peer(user)
        if peer is not None:
            return clean(peer.name)
        return clean(fallback) if fallback else user

    def team(self, team: str) -> str:
        view = self._state.get_team(team)
        return clean(view.name) if view is not None else team

    def role(self, role: str) -> str:
        """A role's name, as this device last saw it (else its id)."""
        name = self._oncall.role_name(role)
        return clean(name) if name is not None else role

    def urgent(self, from_user: str, message_id: bytes) -> UrgentInfo | None:
        """What this device recorded about a role or urgent message."""
        return self._oncall.get(from_user, message_id)


#: What a lifespan argument may end with, in ms.
_LIFESPAN_UNITS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_lifespan(text: str) -> int:
    """``30m``, ``1h``, ``24h``, ``7d`` -> ms (1 h to 30 days, SPEC §13.6);
    ValueError otherwise."""
    text = text.strip().lower()
    unit = _LIFESPAN_UNITS.get(text[-1:]) if text else None
    if unit is None or not text[:-1].isdigit():
        raise ValueError(f"a lifespan looks like 1h, 24h or 7d, not {text!r}")
    ms = int(text[:-1]) * unit
    if not 3_600_000 <= ms <= 2_592_000_000:
        raise ValueError("a lifespan is between 1h and 30d")
    return ms


def lifespan_label(ms: int) -> str:
    """7 j, 24 h, 90 min: a lifespan as people say it."""
    if ms % 86_400_000 == 0 and ms >= 2 * 86_400_000:
        return f"{ms // 86_400_000} j"
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000} h"
    return f"{ms // 60_000} min"


class MessageTexts:
    """The text of our own messages, for receipts: remembered when sent in
    this run, else found among the last ``scan`` messages of the local
    history (one scan per conversation, cached)."""

    def __init__(self, state: LocalState, scan: int = 500) -> None:
        self._state = state
        self._scan = scan
        self._bodies: dict[bytes, str] = {}
        self._scanned: set[str | None] = set()

    def remember(self, message_id: bytes, body: str) -> None:
        self._bodies[message_id] = body

    def excerpt(self, message_id: bytes, peer: str | None) -> str:
        """``«Bonjour…»`` for message ``message_id`` (sent to ``peer``, if
        known), or a plain phrase if this device's history lacks it."""
        for where in (peer, None):
            if message_id in self._bodies:
                break
            if where not in self._scanned:
                self._scanned.add(where)
                for entry in self._state.history(where, limit=self._scan):
                    self._bodies.setdefault(entry.id, entry.body)
        body = self._bodies.get(message_id)
        return excerpt(body) if body is not None else "a message not in this device's history"


def _device(device: str, labels: Mapping[str, str]) -> str:
    label = labels.get(device)
    return f"{short_device(device)} ({clean(label)})" if label else short_device(device)


def clock(ms: int) -> str:
    """``HH:MM``, local time."""
    return datetime.fromtimestamp(ms / 1000).strftime("%H:%M")


def urgent_mark(info: UrgentInfo | None, names: Names, *, incoming: bool, message_id: bytes) -> str:
    """The urgency of a message as its line starts: ``🔴 URGENT — à
    acquitter (miss-chat ack ID)`` while a received one waits;
    ``URGENT — acquitté par Dr X à HH:MM`` once done; for ours, where the
    escalation stands."""
    if info is None or not info.urgent:
        return ""
    if info.state == "acknowledged":
        who = names.short(info.ack_user) if info.ack_user else "?"
        at = f" à {clock(info.ack_at)}" if info.ack_at else ""
        return f"URGENT — acquitté par {who}{at} · "
    if not incoming:
        if info.state == "unacknowledged":
            return "🔴 URGENT — aucun acquittement · "
        if info.state == "escalated" and info.target:
            return f"🔴 URGENT — escalade vers {names.of(info.target)} (étape {info.step}) · "
        return "🔴 URGENT — en attente d'acquittement · "
    return f"🔴 URGENT — à acquitter (miss-chat ack {format_id(message_id)}) · "


def message_line(message: Message, names: Names, info: UrgentInfo | None = None) -> str:
    """``[time] Name (RPPS): text``, or ``[time] me → Name (RPPS): text`` for
    a copy of a message this user sent from another device; a team message
    starts with ``[Team]``, a role message names the role, an urgent one
    starts with its :func:`urgent_mark` (and the bell, if not acknowledged);
    ``info``: its record (else the message's own fields). Its attachments
    follow, one line each (:func:`with_attachments`), and its id when it
    has some (what ``save ID DIR`` takes)."""
    line = _message_line(message, names, info)
    if message.attachments:
        line = f"{line.rstrip()} [{format_id(message.id)}]"
    return with_attachments(line, message.attachments)


def _message_line(message: Message, names: Names, info: UrgentInfo | None) -> str:
    body = clean(message.body) if message.kind == "text" else f"[{clean(message.kind)}] {clean(message.body)}"
    if message.notice is not None:
        body = notice_card(message.notice)
    if message.expires_at is not None:
        body += f" (expire le {format_time(message.expires_at)})"
    when = format_time(message.sent_at)
    if message.urgent or message.role is not None:
        if info is None:
            info = UrgentInfo(
                message.from_user, message.id, "in", message.role, message.urgent, message.step, None, "open"
            )
        mark = urgent_mark(info, names, incoming=not message.outgoing_copy, message_id=message.id)
        if message.step is not None:
            sent_to = names.of(message.to_user)
            mark += f"envoyé à vous en renfort, étape {message.step} (destinataire : {sent_to}) · "
        if mark and not message.outgoing_copy and not info.acknowledged:
            mark = BELL + mark
        role = f"[→ {names.role(message.role)}] " if message.role is not None and message.step is None else ""
        if message.outgoing_copy:
            return f"[{when}] {mark}me → {names.of(message.to_user)}: {body}"
        return f"[{when}] {mark}{role}{names.of(message.from_user)}: {body}"
    if message.team is not None:
        who = "me" if message.outgoing_copy else names.of(message.from_user)
        return f"[{when}] [{names.team(message.team)}] {who}: {body}"
    if message.outgoing_copy:
        return f"[{when}] me → {names.of(message.to_user)}: {body}"
    return f"[{when}] {names.of(message.from_user)}: {body}"


_TEAM_OPS = {
    "create": "{by} a créé l'équipe {team}",
    "add": "{by} a ajouté {user}",
    "remove": "{by} a retiré {user} de l'équipe",
    "leave": "{user} a quitté l'équipe",
    "promote": "{by} a nommé {user} administrateur",
    "demote": "{by} a retiré à {user} le rôle d'administrateur",
}


def team_event_line(event: TeamEvent, names: Names) -> str:
    """``[time] [Team] Dr X a ajouté Dr Y``: one verified membership change."""
    template = _TEAM_OPS.get(event.op, "{by}: " + clean(event.op) + " {user}")
    text = template.format(
        by=names.short(event.by, event.by_name),
        user=names.short(event.user, event.by_name if event.user == event.by else None),
        team=clean(event.team_name),
    )
    return f"[{format_time(event.at)}] [{clean(event.team_name)}] {text}"


def team_problem_line(problem: TeamProblemFound | TeamView) -> str:
    """``! <the problem, in French>``."""
    text = problem.text if isinstance(problem, TeamProblemFound) else (problem.problem_text or "")
    return f"! {clean(text)}"


def read_line(event: ReadBy, names: Names, texts: MessageTexts, own_user: str) -> str:
    """``[time] ✓✓ lu par Dr X: «Bonjour…»``; for our own other device,
    ``… lu sur un autre de vos appareils``."""
    when = format_time(event.ts) if event.ts else "-"
    first = event.ids[0] if event.ids else b""
    more = f" (+{len(event.ids) - 1})" if len(event.ids) > 1 else ""
    if event.user == own_user:
        return f"[{when}] ✓✓ lu sur un autre de vos appareils ({len(event.ids)} message(s))"
    return (
        f"[{when}] ✓✓ lu par {names.of(event.user)}: {texts.excerpt(first, event.team or event.user)}{more}"
    )


def recalled_line(event: Recalled, names: Names) -> str:
    """``Dr X a retiré un message`` (``message retiré``)."""
    where = f"[{names.team(event.conversation)}] " if is_team_id(event.conversation) else ""
    return f"{where}{names.of(event.from_user)}: message retiré"


def team_lines(view: TeamView, names: Names, me: str) -> list[str]:
    """``team show``: the team, its members (admins marked ★), its problem."""
    lines = [f"{clean(view.name)}  ({view.team})"]
    if view.org:
        lines.append(f"organisation: {clean(view.org)}")
    if view.lifespan is not None:
        lines.append(f"durée de vie des messages: {lifespan_label(view.lifespan)}")
    if view.closed:
        lines.append("équipe fermée (plus aucun membre)")
    for user in view.members:
        star = " ★ admin" if user in view.admins else ""
        you = " (vous)" if user == me else ""
        lines.append(f"  {names.of(user)}{star}{you}")
    if me not in view.members and not view.closed:
        lines.append("vous n'êtes pas membre de cette équipe")
    if view.problem is not None:
        lines.append(team_problem_line(view))
    return lines


def outgoing_line(sent_at: int, to_user: str, text: str, names: Names, note: str = "") -> str:
    """``[time] me → Name (RPPS): text``, then `` (note)`` if given."""
    suffix = f" ({note})" if note else ""
    return f"[{format_time(sent_at)}] me → {names.of(to_user)}: {clean(text)}{suffix}"


def receipt_line(
    receipt: Delivered, names: Names, texts: MessageTexts, labels: Mapping[str, str] | None = None
) -> str:
    """``[time] ✓ delivered to Name (RPPS), device d_1a2b…: «Bonjour…»``;
    ``labels`` names the user's own devices."""
    when = format_time(receipt.ts) if receipt.ts else "-"
    device = _device(receipt.device, labels or {})
    what = texts.excerpt(receipt.id, receipt.user)
    return f"[{when}] ✓ delivered to {names.of(receipt.user)}, device {device}: {what}"


def refused_line(
    refusal: Refused, names: Names, texts: MessageTexts, labels: Mapping[str, str] | None = None
) -> str:
    """``[time] ✗ NOT delivered: Name (RPPS)'s device d_1a2b… refused «Bonjour…» (reason: ...)``."""
    when = format_time(refusal.ts) if refusal.ts else "-"
    device = _device(refusal.device, labels or {})
    what = texts.excerpt(refusal.id, refusal.user)
    return (
        f"[{when}] ✗ NOT delivered: {names.of(refusal.user)}'s device {device} refused {what} "
        f"(reason: {refusal_reason(refusal.reason)})"
    )


def held_line(held: MessageHeld, names: Names) -> str:
    """One warning, without content, for a message that could not be checked yet."""
    return (
        f"! a message from {names.of(held.from_user)} could not be checked yet ({clean(held.reason)}); "
        "it will come again on the next connection"
    )


def status_label(status: str) -> str:
    """``on_call`` -> ``on call`` (SPEC §6.7 statuses, as people say them)."""
    return _STATUS_LABELS.get(status, clean(status))


def presence_line(presence: PresenceInfo | PresenceChanged, names: Names) -> str:
    """``● Name (RPPS) is on call`` while any of their devices is connected;
    ``○ Name (RPPS) is offline``, with the status they keep unless it is
    ``available``, e.g. ``○ Name (RPPS) is offline (on call)``."""
    who = names.of(presence.user)
    if presence.online:
        return f"● {who} is {status_label(presence.status)}"
    if presence.status == "available":
        return f"○ {who} is offline"
    return f"○ {who} is offline ({status_label(presence.status)})"


def history_line(entry: HistoryEntry, names: Names) -> str:
    """One history entry. Outgoing ones end with ``✓`` once a device of the
    recipient kept them, ``✗ NOT delivered: refused by d_1a2b… (reason)``
    for each device that refused them, or their status (pending, failed).
    An urgent one starts with its :func:`urgent_mark` (from the local
    record: it survives restarts). Its attachments follow, one line each,
    and its id when it has some (what ``save ID DIR`` takes)."""
    line = _history_line(entry, names)
    if entry.attachments:
        line = f"{line.rstrip()} [{format_id(entry.id)}]"
    return with_attachments(line, entry.attachments)


def _history_line(entry: HistoryEntry, names: Names) -> str:
    when = format_time(entry.sent_at)
    info = names.urgent(entry.from_user, entry.id)
    mark = urgent_mark(info, names, incoming=entry.direction == "in", message_id=entry.id)
    if info is not None and info.step is not None and entry.direction == "in":
        mark += f"renfort, étape {info.step} · "
    if info is not None and info.role is not None and entry.direction == "in" and info.step is None:
        mark += f"[→ {names.role(info.role)}] "
    body = clean(entry.shown_body)
    if entry.notice is not None and entry.gone is None:
        body = notice_card(entry.notice)
    if entry.gone is None and entry.expires_at is not None:
        body += f" (expire le {format_time(entry.expires_at)})"
    where = mark + (f"[{names.team(entry.team)}] " if entry.team is not None else "")
    if entry.direction == "in":
        return f"[{when}] {where}{names.of(entry.from_user)}: {body}"
    marks = []
    if entry.delivered_to:
        marks.append("✓")
    if entry.refused_by:
        refusals = ", ".join(f"{short_device(d)} ({refusal_reason(r)})" for d, r in entry.refused_by)
        marks.append(f"✗ {'' if entry.delivered_to else 'NOT delivered: '}refused by {refusals}")
    elif not entry.delivered_to and entry.status in ("pending", "failed"):
        marks.append(f"({entry.status})")
    if entry.read_by:
        marks.append("✓✓ lu par " + ", ".join(names.short(u) for u in entry.read_by))
    mark = f" {' '.join(marks)}" if marks else ""
    if entry.team is not None:
        return f"[{when}] {where}me: {body}{mark}"
    return f"[{when}] {where}me → {names.of(entry.peer)}: {body}{mark}"


def urgent_status_line(event: UrgentStatusChanged, names: Names, texts: MessageTexts, own_user: str) -> str:
    """A status of an urgent message: for ours, ``🔴 «Bonjour…» : escalade
    vers Dr Y (étape 1)``, ``✓ «…» acquitté par Dr X à HH:MM``, ``⚠ «…» :
    aucun acquittement``; for one we received, that someone acknowledged it
    (its alert stops here)."""
    when = format_time(event.ts) if event.ts else "-"
    what = texts.excerpt(event.id, None)
    if event.state == "acknowledged":
        who = names.short(event.user) if event.user else "?"
        if event.user == own_user and event.sender != own_user:
            return f"[{when}] ✓ URGENT {what} acquitté sur un autre de vos appareils à {clock(event.ts)}"
        if event.sender == own_user:
            return f"[{when}] ✓ URGENT {what} acquitté par {who} à {clock(event.ts)}"
        return (
            f"[{when}] ✓ URGENT de {names.of(event.sender)} acquitté par {who} à {clock(event.ts)} "
            "(alerte arrêtée)"
        )
    if event.state == "escalated":
        target = names.of(event.target) if event.target else "?"
        return f"[{when}] 🔴 URGENT {what} : escalade vers {target} (étape {event.step})"
    return f"[{when}] ⚠ URGENT {what} : aucun acquittement"


def reminder_line(event: UrgentReminded, names: Names) -> str:
    """``\a🔴 URGENT — rappel n°2 : message de Dr X à acquitter (miss-chat ack ID)``."""
    return (
        f"{BELL}🔴 URGENT — rappel n°{event.n} : message de {names.of(event.sender)} à acquitter "
        f"(miss-chat ack {format_id(event.id)})"
    )


def role_line(view: RoleView, names: Names, me: str) -> str:
    """``r_… Cardiologie — garde (CHRU) · titulaires : Dr X, Dr Y (vous)``."""
    holders = ", ".join(names.short(u) + (" (vous)" if u == me else "") for u in view.holders)
    org = f" ({clean(view.org)})" if view.org else ""
    reserved = " · réservé (planning ou administrateur)" if view.reserved else ""
    who = f"titulaires : {holders}" if holders else "vacant (personne ne le tient)"
    steps = ""
    if view.policy.steps:
        steps = " · escalade : " + ", ".join(
            f"{i}. {names.of(s.target)} après {_duration(s.delay)}"
            for i, s in enumerate(view.policy.steps, 1)
        )
    return f"{view.role}  {clean(view.name)}{org} · {who}{reserved}{steps}"


def _duration(ms: int) -> str:
    if ms % 60_000 == 0:
        return f"{ms // 60_000} min"
    if ms % 1000 == 0:
        return f"{ms // 1000} s"
    return f"{ms} ms"


def role_changed_line(event: RoleHoldersChanged, names: Names, me: str) -> str:
    """``[rôle] Cardiologie — garde : vous tenez ce rôle (titulaires : …)``
    or ``… : vous ne tenez plus ce rôle (titulaires : Dr Y)``."""
    name = clean(event.name) if event.name else names.role(event.role)
    holders = ", ".join(names.short(u) for u in event.holders) or "personne"
    mine = "vous tenez ce rôle" if me in event.holders else "vous ne tenez plus ce rôle"
    return f"[rôle] {name} : {mine} (titulaires : {holders})"
