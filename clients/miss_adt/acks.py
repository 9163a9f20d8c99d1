"""HL7 v2.5 acknowledgements (original mode) of what miss-adt did with a
message, without I/O.

An :class:`Outcome` is what the listener decided (ACK code, MSA-3 text,
and for a refusal the ERR segment's parts); :func:`build_ack` writes the
ACK message: MSH with sender and receiver swapped (MSH-3/4 ← MSH-5/6 and
MSH-5/6 ← MSH-3/4), MSH-9 ``ACK^<trigger>^ACK``, a fresh MSH-10, MSH-11 and
MSH-18 copied; MSA-1 the code, MSA-2 the message's MSH-10, MSA-3 the text;
for ``AE``/``AR`` an ERR segment: ERR-2 the location (``PID^1^3``), ERR-3
the HL7 table 0357 code, ERR-4 ``E``, ERR-5 miss-adt's reason code (coding
system ``L``, local), ERR-8 the French message for the interface team.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

__all__ = ["TABLE_0357", "Outcome", "build_ack", "escape"]

#: HL7 table 0357 (message error condition codes), the ones miss-adt uses.
TABLE_0357 = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    206: "Application record locked",
    207: "Application internal error",
}

_ESCAPES = str.maketrans({"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "~": "\\R\\", "&": "\\T\\", "\r": " "})
_counter = itertools.count(1)
_PREFIX = f"{os.getpid() % 100000:05d}"


def escape(text: str) -> str:
    """``text`` as the content of one HL7 field component (delimiters escaped)."""
    return text.translate(_ESCAPES)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What was done with a message. ``ack``: ``AA``, ``AE`` or ``AR``;
    ``text``: MSA-3 (``notice sent``, ``spooled``...); for a refusal
    ``reason`` (stable, ERR-5: ``no_gp``, ``unknown_rpps``...), ``code``
    (HL7 table 0357, ERR-3), ``location`` (ERR-2) and ``detail`` (French,
    ERR-8)."""

    ack: str
    text: str
    reason: str = ""
    code: int = 0
    location: str = ""
    detail: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str) -> Outcome:
        return cls(**json.loads(data))


def build_ack(outcome: Outcome, header: dict[str, str], tz: ZoneInfo | None = None) -> str:
    """The ACK of ``outcome`` to the message whose MSH ``header`` (as
    :func:`~miss_adt.hl7_events.header_of` returns it; empty strings for
    what could not be read) was received; segments end with CR."""
    now = (
        datetime.now(tz).strftime("%Y%m%d%H%M%S%z")
        if tz
        else datetime.now().astimezone().strftime("%Y%m%d%H%M%S%z")
    )
    trigger = header.get("trigger", "")
    msh = [
        "MSH",
        "^~\\&",
        header.get("receiving_app", "") or "MISS-ADT",
        header.get("receiving_facility", ""),
        header.get("sending_app", ""),
        header.get("sending_facility", ""),
        now,
        "",
        f"ACK^{escape(trigger)}^ACK" if trigger else "ACK",
        f"ACK{_PREFIX}{next(_counter):09d}",
        header.get("processing_id", "") or "P",
        "2.5",
    ]
    charset = header.get("charset", "")
    if charset:
        msh += ["", "", "", "", "", charset]
    segments = [
        "|".join(msh),
        "|".join(["MSA", outcome.ack, escape(header.get("control_id", "")), escape(outcome.text[:80])]),
    ]
    if outcome.ack != "AA":
        code = outcome.code or 207
        err = [
            "ERR",
            "",
            outcome.location,
            f"{code}^{TABLE_0357.get(code, '')}^HL70357",
            "E",
            f"{escape(outcome.reason)}^^L" if outcome.reason else "",
            "",
            "",
            escape(outcome.detail),
        ]
        segments.append("|".join(err))
    return "\r".join(segments) + "\r"
