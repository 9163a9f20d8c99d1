"""How the terminal client shows notices and services (SPEC §17).

A notice is shown as a **card** built from its ``notice`` map, never from
its ``body`` (the text fallback, which a sender could make say something
else): the event's French label and the title on the message's line, then
a framed block of the fields, labels aligned, the reply line, and when the
event happened::

    [09:20] [Service] CH Provins — Admissions — CH de Provins: ┏ Admission — Admission de M. DUPONT Jean
        ┃ Patient   : DUPONT Jean
        ┃ IPP       : 000123456
        ┃ Pour toute question : Bureau des admissions : 01 64 60 40 00
        ┗ événement du 2026-01-01 09:15

Everything in it comes from the sender and goes through
:func:`protocol.text.printable` (a newline in a value shows as ``␊``: it
cannot break the frame). A service is shown as ``[Service] Name —
Organisation`` (:attr:`miss_client.models.Peer.display`); one that does not
accept replies says so in French, with the reply line of its last notice
(:func:`replies_refused_text`).
"""

from __future__ import annotations

from datetime import datetime

from protocol.notices import REPLY_PREFIX, Notice
from protocol.text import printable

from .errors import RepliesNotAccepted
from .notice_keys import last_notice_reply
from .state import LocalState

__all__ = ["INDENT", "notice_card", "replies_refused_text"]

#: How the lines of a card after the first are indented (as a message's
#: continuation lines are, render.clean).
INDENT = "    "


def _when(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, OSError, ValueError):  # any int on the wire: a date no clock shows
        return "date inconnue"


def notice_card(notice: Notice) -> str:
    """The card of ``notice`` as the body of a message line: its first line
    (``┏ Label — Title``) goes on the message's line, the others are
    indented by :data:`INDENT`."""
    lines = [f"┏ {notice.label} — {printable(notice.title)}"]
    width = max((len(printable(label)) for label, _ in notice.fields), default=0)
    for label, value in notice.fields:
        lines.append(f"┃ {printable(label).ljust(width)} : {printable(value)}".rstrip())
    if notice.reply is not None:
        lines.append(f"┃ {REPLY_PREFIX}{printable(notice.reply)}")
    lines.append(f"┗ événement du {_when(notice.at)}")
    return f"\n{INDENT}".join(lines)


def replies_refused_text(state: LocalState, user: str) -> str:
    """« Ce service n'accepte pas de réponse », and whom to call: the reply
    line of the last notice ``user`` sent us, if this device has one."""
    reply = last_notice_reply(state, user)
    return printable(str(RepliesNotAccepted(user, reply)))
