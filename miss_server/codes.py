"""Enrollment codes: the one-time secrets that bind a new device to a clinician.

A code is 16 characters of Crockford base32 (80 random bits) printed as
``XXXX-XXXX-XXXX-XXXX``. Users may type it in any case, with or without
dashes or spaces. The store keeps only :func:`code_hash` of the normalised
code (SPEC.md §5.1).
"""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["code_hash", "new_code", "normalize_code"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford: no I, L, O, U
_CONFUSABLE = str.maketrans({"I": "1", "L": "1", "O": "0"})


def new_code() -> str:
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(16))
    return "-".join(raw[i : i + 4] for i in range(0, 16, 4))


def normalize_code(code: str) -> str:
    """Uppercase, drop separators, map look-alike letters to digits."""
    return code.upper().replace("-", "").replace(" ", "").translate(_CONFUSABLE)


def code_hash(code: str) -> bytes:
    return hashlib.sha256(b"miss.v1/code\x00" + normalize_code(code).encode()).digest()
