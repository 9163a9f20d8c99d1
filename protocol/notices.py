"""Notices: structured messages from a system to clinicians (SPEC.md §17.3).

A notice is a message of kind ``text`` whose plaintext (§6.3) carries the
key ``notice``, a map of a title, an event name, the instant of the event,
labelled fields and an optional line saying whom to call instead of
replying. Its ``body`` is :func:`render_text` of the notice, so that a
client that predates revision 7 shows readable text; a client that knows
the key shows a card built from the map and never trusts ``body`` to
match it.

:class:`Notice` refuses, at construction and in :meth:`Notice.from_wire`,
anything that breaks the types and bounds of §17.3 (:class:`NoticeError`);
lengths are counted in Unicode code points (Python ``len``), not UTF-16
units nor UTF-8 bytes. The French labels of the events live here, in one
place, for every client to share (:data:`EVENT_LABELS`, :func:`event_label`).

This module does no I/O and imports nothing else of ``protocol/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "EVENTS",
    "EVENT_LABELS",
    "MAX_EVENT",
    "MAX_FIELDS",
    "MAX_LABEL",
    "MAX_REPLY",
    "MAX_TITLE",
    "MAX_VALUE",
    "OTHER",
    "REPLY_PREFIX",
    "Notice",
    "NoticeError",
    "event_label",
    "render_text",
]

#: Event names of revision 7, in the order a client lists them. A later
#: name is valid on the wire and shown as :data:`OTHER`.
EVENTS = ("admission", "transfer", "discharge", "death", "update", "other")
OTHER = "other"
#: The French label of each event, shared by every client (terminal, web).
EVENT_LABELS: dict[str, str] = {
    "admission": "Admission",
    "transfer": "Mutation",
    "discharge": "Sortie",
    "death": "Décès",
    "update": "Mise à jour",
    "other": "Autre",
}
#: What precedes ``reply`` in the text rendering and on a card.
REPLY_PREFIX = "Pour toute question : "

MAX_TITLE = 200
MAX_EVENT = 32
MAX_FIELDS = 32
MAX_LABEL = 64
MAX_VALUE = 512
MAX_REPLY = 256

_EVENT_RE = re.compile(r"[a-z_]{1,32}")


class NoticeError(ValueError):
    """A notice that breaks SPEC §17.3 (a type, a bound, a missing key);
    ``str()`` names what is wrong."""


def event_label(event: str) -> str:
    """The French label of ``event``; a name this version does not know
    (a later one) is shown as « Autre » (SPEC §17.3)."""
    return EVENT_LABELS.get(event, EVENT_LABELS[OTHER])


def _check_str(name: str, value: object, low: int, high: int) -> None:
    if type(value) is not str:
        raise NoticeError(f"notice {name}: not a string")
    if not low <= len(value) <= high:
        raise NoticeError(f"notice {name}: {len(value)} characters, {low} to {high} allowed")


@dataclass(frozen=True, slots=True)
class Notice:
    """A notice (SPEC §17.3). ``at`` is in ms since the Unix epoch (the
    sender's statement of when the event happened); ``fields`` are
    ``(label, value)`` pairs shown in this order; ``reply`` whom to call
    instead of replying. Construction raises :class:`NoticeError` when a
    value breaks §17.3."""

    title: str
    event: str
    at: int
    fields: tuple[tuple[str, str], ...] = ()
    reply: str | None = None

    def __post_init__(self) -> None:
        _check_str("title", self.title, 1, MAX_TITLE)
        if type(self.event) is not str or not _EVENT_RE.fullmatch(self.event):
            raise NoticeError("notice event: 1 to 32 characters of [a-z_]")
        if type(self.at) is not int:  # bool is not an int here
            raise NoticeError("notice at: not an integer")
        if type(self.fields) is not tuple:
            raise NoticeError("notice fields: not a tuple of pairs")
        if len(self.fields) > MAX_FIELDS:
            raise NoticeError(f"notice fields: {len(self.fields)} pairs, at most {MAX_FIELDS}")
        for pair in self.fields:
            if type(pair) is not tuple or len(pair) != 2:
                raise NoticeError("notice fields: each is a pair [label, value]")
            _check_str("field label", pair[0], 1, MAX_LABEL)
            _check_str("field value", pair[1], 0, MAX_VALUE)
        if self.reply is not None:
            _check_str("reply", self.reply, 1, MAX_REPLY)

    @property
    def label(self) -> str:
        """The French label of the event (« Autre » for a later name)."""
        return event_label(self.event)

    def to_wire(self) -> dict[str, Any]:
        """The msgpack map of SPEC §17.3, keys in its order (``reply`` only
        when present)."""
        m: dict[str, Any] = {
            "title": self.title,
            "event": self.event,
            "at": self.at,
            "fields": [[label, value] for label, value in self.fields],
        }
        if self.reply is not None:
            m["reply"] = self.reply
        return m

    @classmethod
    def from_wire(cls, m: object) -> Notice:
        """Parse the ``notice`` map of a plaintext; raises NoticeError if it
        is not a map with ``title``, ``event``, ``at`` and ``fields`` (and
        optionally ``reply``) of the types and bounds of §17.3. Unknown keys
        are ignored (reserved for additive extensions, as in §6.3)."""
        if type(m) is not dict:
            raise NoticeError("notice: not a map")
        for key in ("title", "event", "at", "fields"):
            if key not in m:
                raise NoticeError(f"notice: no {key}")
        fields = m["fields"]
        if type(fields) is not list:
            raise NoticeError("notice fields: not an array")
        pairs = []
        for pair in fields:
            if type(pair) is not list or len(pair) != 2:
                raise NoticeError("notice fields: each is a pair [label, value]")
            pairs.append((pair[0], pair[1]))
        reply = m.get("reply")
        if "reply" in m and type(reply) is not str:  # present: a str, never nil
            raise NoticeError("notice reply: not a string")
        return cls(m["title"], m["event"], m["at"], tuple(pairs), reply)


def render_text(notice: Notice) -> str:
    """The notice as French plain text, the ``body`` a notice is sent with
    (SPEC §17.3): the title, then one ``label : value`` line per field (just
    ``label :`` for an empty value), then ``Pour toute question : reply``
    when there is a reply line; lines joined by ``\\n``, no final newline."""
    lines = [notice.title]
    lines.extend(f"{label} : {value}" if value else f"{label} :" for label, value in notice.fields)
    if notice.reply is not None:
        lines.append(REPLY_PREFIX + notice.reply)
    return "\n".join(lines)
