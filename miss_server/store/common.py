"""What both stores share that is not SQL: reading an attestation's device
keys, and the directory's field separator."""

from __future__ import annotations

from protocol import attestation
from protocol.frames import MIN_SEARCH_CHARS

__all__ = ["SEARCH_MIN_CHARS", "SEARCH_SEPARATOR", "attested_keys"]

#: Joins a user's searched fields in the directory index (unit separator):
#: no query contains it, so no match spans two fields.
SEARCH_SEPARATOR = "\x1f"
#: The shortest query the directory answers (SPEC §11.3): the shortest a
#: trigram index serves, and shorter ones match thousands and tell nobody anything.
SEARCH_MIN_CHARS = MIN_SEARCH_CHARS


def attested_keys(blob: bytes) -> set[tuple[str, bytes, bytes]]:
    """``(device id, sign_pk, box_pk)`` of every device an attestation names;
    none for bytes that are not an attestation (which vouch for nothing).
    The signature is not checked: the store records what the administrators
    signed, and the hub and clients check it."""
    try:
        parsed = attestation.peek(blob)
    except attestation.AttestationError:
        return set()
    return {(d.device, d.sign_pk, d.box_pk) for d in parsed.devices}
