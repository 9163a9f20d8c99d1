"""How the terminal client shows messages, receipts, presence and history lines.

Everything a peer controls (message bodies, directory names) goes through
:func:`clean` first: control characters and bidirectional overrides are
shown escaped, so a message cannot move the cursor, recolour the terminal
or disguise text ("Trojan source"). Times are local, ``YYYY-MM-DD HH:MM``.
"""

from __future__ import annotations

import re
from datetime import datetime

from .models import Delivered, HistoryEntry, Message, Peer, PresenceChanged, PresenceInfo, format_id
from .state import LocalState

__all__ = [
    "Names",
    "clean",
    "format_time",
    "history_line",
    "message_line",
    "presence_line",
    "receipt_line",
    "short_id",
    "status_label",
]

_STATUS_LABELS = {"available": "available", "busy": "busy", "on_call": "on call", "off_duty": "off duty"}

_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def clean(text: str) -> str:
    """``text`` with terminal-unsafe characters escaped; newlines indented."""
    text = _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text.replace("\n", "\n    ")


def format_time(ms: int) -> str:
    """Local time of a ms timestamp."""
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


def short_id(message_id: bytes) -> str:
    """The last 8 hex digits of a message id (the first ones are a timestamp)."""
    return format_id(message_id)[-8:]


class Names:
    """Display names from the local directory (what lookups pinned)."""

    def __init__(self, state: LocalState) -> None:
        self._state = state

    def of(self, user: str) -> str:
        """``Name (RPPS)`` if the user is in the local directory, else the user id."""
        peer: Peer | None = self._state.get_peer(user)
        return clean(peer.display) if peer is not None else user


def message_line(message: Message, names: Names) -> str:
    """``[time] Name (RPPS): text``, or ``[time] me → Name (RPPS): text`` for
    a copy of a message this user sent from another device."""
    body = clean(message.body) if message.kind == "text" else f"[{clean(message.kind)}] {clean(message.body)}"
    when = format_time(message.sent_at)
    if message.outgoing_copy:
        return f"[{when}] me → {names.of(message.to_user)}: {body}"
    return f"[{when}] {names.of(message.from_user)}: {body}"


def receipt_line(receipt: Delivered, names: Names) -> str:
    """``[time] ✓ delivered <short id> to Name (RPPS)``."""
    when = format_time(receipt.ts) if receipt.ts else "-"
    return f"[{when}] ✓ delivered {short_id(receipt.id)} to {names.of(receipt.user)}"


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
    """One history entry; outgoing ones end with their status or ``✓``."""
    when = format_time(entry.sent_at)
    body = clean(entry.body)
    if entry.direction == "in":
        return f"[{when}] {names.of(entry.from_user)}: {body}"
    if entry.delivered_to:
        mark = " ✓"
    elif entry.status in ("pending", "failed"):
        mark = f" ({entry.status})"
    else:
        mark = ""
    return f"[{when}] me → {names.of(entry.peer)}: {body}{mark}"
