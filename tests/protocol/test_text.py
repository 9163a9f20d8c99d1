"""protocol.text.printable: what someone else typed, shown on a terminal
without acting on it."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from protocol.text import printable


def test_control_characters_and_escape_sequences_show_instead_of_acting() -> None:
    assert printable("phone\r\x1b[2K\x1b[32mattested\x1b[0m") == "phone␍␛[2K␛[32mattested␛[0m"
    assert printable("a\nb\tc\x00d\x7fe\x07") == "a␊b␉c␀d␡e␇"
    assert printable("\x9b2J\x85next") == "\ufffd2J\ufffdnext"  # 8-bit CSI, NEL
    assert printable("\x1b]0;title\x07") == "␛]0;title␇"  # OSC: set the window title


def test_bidi_controls_cannot_reorder_what_is_shown() -> None:
    assert printable("Dr \u202eenilno\u202c") == "Dr \ufffdenilno\ufffd"
    assert printable("\u2066a\u2067b\u2068c\u2069") == "\ufffda\ufffdb\ufffdc\ufffd"
    assert printable("line\u2028break\u2029") == "line\ufffdbreak\ufffd"


def test_what_people_write_is_kept() -> None:
    for text in ("Dr Élise Lefèvre", "د. سارة", "医生", "👩‍⚕️ cardiologie", "CHRU de Lille — 59000", ""):
        assert printable(text) == text


@given(st.text())
def test_nothing_that_acts_on_a_terminal_survives(text: str) -> None:
    shown = printable(text)
    assert len(shown) == len(text)
    shown.encode("utf-8")  # no lone surrogate left
    for c in shown:
        assert unicodedata.category(c) not in ("Cc", "Zl", "Zp", "Cs"), repr(c)
        assert not (0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069), repr(c)
