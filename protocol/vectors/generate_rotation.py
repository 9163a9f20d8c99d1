"""Write ``rotation.json``: the test vectors of authority key rotation (SPEC §15).

Run by hand from the repository root when the statement format changes on
purpose (it should not within v1)::

    .venv/bin/python protocol/vectors/generate_rotation.py

Nothing imports it: ``tests/protocol/test_rotation.py`` recomputes every
value from the seeds and times stored in the JSON. Ed25519 signatures are
deterministic, so each blob is fixed by its seeds and body. Byte strings are
lowercase hex.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nacl.signing

from protocol import attestation, rotation

#: The authority's first key is the one of every other vector file (AUTHORITY_SEED there).
SEED_1 = bytes(range(0x30, 0x50))
SEED_2 = bytes(range(0x50, 0x70))
SEED_3 = bytes(range(0x70, 0x90))
#: A key nobody trusts (the "not starting at the trusted key" case).
SEED_X = bytes(range(0x90, 0xB0))
DAY = 86_400_000
AT_1 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
UNTIL_1 = AT_1 + 30 * DAY
AT_2 = AT_1 + 60 * DAY
UNTIL_2 = AT_2 + 30 * DAY


def key(seed: bytes) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(seed)


def pk(seed: bytes) -> bytes:
    return bytes(key(seed).verify_key)


def statement_json(name: str, old: bytes, new: bytes, at: int, until: int) -> dict[str, Any]:
    blob = rotation.sign(key(old), key(new), at, until)
    s = rotation.Statement(pk(old), pk(new), at, until)
    return {
        "name": name,
        "old_seed": old.hex(),
        "new_seed": new.hex(),
        "old": s.old.hex(),
        "new": s.new.hex(),
        "at": at,
        "until": until,
        "body": s.body().hex(),
        "blob": blob.hex(),
        "text": rotation.encode_text(blob),
        "new_fingerprint": attestation.authority_fingerprint(s.new),
    }


def document() -> dict[str, Any]:
    s1 = statement_json("k1_to_k2", SEED_1, SEED_2, AT_1, UNTIL_1)
    s2 = statement_json("k2_to_k3", SEED_2, SEED_3, AT_2, UNTIL_2)
    sx = statement_json("x_to_k2", SEED_X, SEED_2, AT_1, UNTIL_1)
    blob = bytearray(bytes.fromhex(s1["blob"]))
    blob[0] ^= 0x01  # flip one bit of old_sig
    bad_old = bytes(blob)
    blob = bytearray(bytes.fromhex(s1["blob"]))
    blob[64] ^= 0x01  # flip one bit of new_sig
    bad_new = bytes(blob)
    return {
        "description": (
            "Authority key rotation statements (SPEC §15). body = canonical msgpack map "
            "{t:'miss-rot', v:1, old:bin32, new:bin32, at:int, until:int} (keys in that order); "
            "blob = Ed25519(old, context||body) || Ed25519(new, context||body) || body. "
            "Keys are Ed25519 seeds (hex); 'old'/'new' are their public keys. 'chains' give "
            "the trusted key, the statements (by name) in order, 'now' and the expected outcome: "
            "the current key and the previous keys with their 'until', or the error class."
        ),
        "context": rotation.CONTEXT.hex(),
        "max_bytes": rotation.MAX_BYTES,
        "max_statements": rotation.MAX_STATEMENTS,
        "statements": [s1, s2, sx],
        "bad_signatures": [
            {
                "name": "old_sig_flipped",
                "of": "k1_to_k2",
                "blob": bad_old.hex(),
                "error": "RotationSignatureInvalid",
            },
            {
                "name": "new_sig_flipped",
                "of": "k1_to_k2",
                "blob": bad_new.hex(),
                "error": "RotationSignatureInvalid",
            },
        ],
        "chains": [
            {
                "name": "one_rotation",
                "trusted": pk(SEED_1).hex(),
                "statements": ["k1_to_k2"],
                "now": AT_1 + DAY,
                "current": pk(SEED_2).hex(),
                "previous": [{"key": pk(SEED_1).hex(), "until": UNTIL_1}],
            },
            {
                "name": "chain_of_two_during_second_overlap",
                "trusted": pk(SEED_1).hex(),
                "statements": ["k1_to_k2", "k2_to_k3"],
                "now": AT_2 + DAY,
                "current": pk(SEED_3).hex(),
                "previous": [{"key": pk(SEED_2).hex(), "until": UNTIL_2}],
            },
            {
                "name": "chain_of_two_before_first_until",
                "trusted": pk(SEED_1).hex(),
                "statements": ["k1_to_k2", "k2_to_k3"],
                "now": AT_1 + DAY,
                "current": pk(SEED_3).hex(),
                "previous": [
                    {"key": pk(SEED_2).hex(), "until": UNTIL_2},
                    {"key": pk(SEED_1).hex(), "until": UNTIL_1},
                ],
            },
            {
                "name": "already_at_middle_key",
                "trusted": pk(SEED_2).hex(),
                "statements": ["k1_to_k2", "k2_to_k3"],
                "now": AT_2 + DAY,
                "current": pk(SEED_3).hex(),
                "previous": [{"key": pk(SEED_2).hex(), "until": UNTIL_2}],
            },
            {
                "name": "not_starting_at_trusted_key",
                "trusted": pk(SEED_1).hex(),
                "statements": ["x_to_k2"],
                "now": AT_1 + DAY,
                "error": "RotationNotTrusted",
            },
            {
                "name": "broken_link",
                "trusted": pk(SEED_1).hex(),
                "statements": ["k2_to_k3", "k1_to_k2"],
                "now": AT_1 + DAY,
                "error": "RotationChainBroken",
            },
            {
                "name": "bad_signature_in_chain",
                "trusted": pk(SEED_1).hex(),
                "statements": ["old_sig_flipped", "k2_to_k3"],
                "now": AT_1 + DAY,
                "error": "RotationSignatureInvalid",
            },
        ],
    }


def main() -> None:
    path = Path(__file__).resolve().parent / "rotation.json"
    path.write_text(json.dumps(document(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
