"""Text from other people, made safe to show on a terminal.

Labels, names, organisations and (later) message bodies come from someone
else. Written to a terminal as they are, a carriage return or an ANSI
escape sequence can move the cursor and overwrite what the program printed
(a device label ``"phone\\r…attested"`` printing over "NOT attested"), and
a bidi override can show characters in another order than they are stored.

:func:`printable` replaces every such character with a visible stand-in,
so that whatever someone typed is shown, and cannot act:

* C0 controls (U+0000 to U+001F, newline and tab included) become their
  Control Pictures (U+2400 to U+241F: ``␛`` for ESC, ``␍`` for CR, ``␊`` for
  LF), DEL becomes ``␡``. An ANSI escape sequence thus loses its ESC (or,
  for the 8-bit CSI, the C1 character below) and shows as text
  (``␛[2K``): it is neutralised, and the administrator sees it was there.
* C1 controls (U+0080 to U+009F), bidi marks, embeddings, overrides and
  isolates (U+200E, U+200F, U+202A to U+202E, U+2066 to U+2069), the
  zero-width spaces that can hide a difference between two names (U+200B,
  U+FEFF), line and paragraph separators (U+2028, U+2029) and lone
  surrogates become U+FFFD ``�``.

Everything else (accents, other scripts, emoji with their joiners) is kept.
The function is pure and total: any ``str`` in, a ``str`` that encodes in
UTF-8 out. A caller that wants several lines splits on ``"\\n"`` first.
"""

from __future__ import annotations

__all__ = ["printable"]

REPLACEMENT = "\ufffd"

_BIDI_CONTROLS = (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_INVISIBLE = (0x200B, 0xFEFF)

_TABLE: dict[int, str] = {
    **{c: chr(0x2400 + c) for c in range(0x20)},
    0x7F: "\u2421",
    **dict.fromkeys(range(0x80, 0xA0), REPLACEMENT),
    **dict.fromkeys(_BIDI_CONTROLS, REPLACEMENT),
    **dict.fromkeys(_INVISIBLE, REPLACEMENT),
    0x2028: REPLACEMENT,
    0x2029: REPLACEMENT,
    **dict.fromkeys(range(0xD800, 0xE000), REPLACEMENT),
}


def printable(text: str) -> str:
    """``text`` with every character that could act on a terminal (control
    characters, escape sequences, bidi controls) replaced by a visible
    stand-in (module doc)."""
    return text.translate(_TABLE)
