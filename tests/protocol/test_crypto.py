"""Crypto v1 helpers (SPEC.md §5, §6.1, §6.3, §8, §9)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgpack
import nacl.bindings
import pytest

from protocol import crypto

ALICE = crypto.DeviceKeys(bytes(range(32)), bytes(range(32, 64)))
BOB = crypto.DeviceKeys(bytes(range(64, 96)), bytes(range(96, 128)))
MALLORY = crypto.DeviceKeys(bytes(range(128, 160)), bytes(range(160, 192)))
MID = crypto.new_message_id(1_767_225_600_000, bytes(10))
TEXT = crypto.Plaintext(
    id=MID, from_user="u_a", to_user="u_b", sent_at=1_767_225_600_000, body="Patient stable ?"
)


# --- device keys and signatures ---------------------------------------------------------------


def test_device_keys_are_distinct_and_sized() -> None:
    k = crypto.DeviceKeys.generate()
    assert len(k.sign_seed) == len(k.box_secret) == len(k.sign_pk) == len(k.box_pk) == 32
    assert k.sign_pk != k.box_pk
    assert crypto.DeviceKeys.generate().sign_pk != k.sign_pk


def test_signature_verifies_only_for_its_message_and_key() -> None:
    message = crypto.auth_message(bytes(32), "d_1")
    sig = ALICE.sign(message)
    assert len(sig) == 64
    assert crypto.verify_signature(ALICE.sign_pk, message, sig)
    assert not crypto.verify_signature(BOB.sign_pk, message, sig)
    assert not crypto.verify_signature(ALICE.sign_pk, message + b"x", sig)
    assert not crypto.verify_signature(ALICE.sign_pk, message, sig[:-1] + bytes([sig[-1] ^ 1]))


@pytest.mark.parametrize(
    ("pk", "sig"), [(b"\x00" * 31, b"\x00" * 64), (ALICE.sign_pk, b"\x00" * 63), (ALICE.sign_pk, b"")]
)
def test_verify_signature_returns_false_for_garbage(pk: bytes, sig: bytes) -> None:
    assert crypto.verify_signature(pk, b"message", sig) is False


def test_signed_messages_layout() -> None:
    nonce = bytes(range(32))
    assert crypto.auth_message(nonce, "d_é") == b"miss.v1/auth\x00" + nonce + "d_é".encode()
    # The code is signed exactly as sent: not upper-cased, not stripped.
    assert crypto.enroll_message(nonce, "ab-cd ", b"S" * 32, b"B" * 32) == (
        b"miss.v1/enroll\x00" + nonce + b"S" * 32 + b"B" * 32 + b"ab-cd "
    )
    # The contexts keep an auth signature from ever passing as an enroll one.
    assert crypto.AUTH_CONTEXT != crypto.ENROLL_CONTEXT
    assert not crypto.ENROLL_CONTEXT.startswith(crypto.AUTH_CONTEXT)


# --- envelopes --------------------------------------------------------------------------------


def test_seal_open_round_trip() -> None:
    packed = crypto.pack_plaintext(TEXT)
    env = crypto.seal(packed, ALICE, BOB.box_pk)
    assert len(env) == crypto.NONCE_BYTES + 16 + len(packed)
    assert crypto.open_envelope(env, BOB, ALICE.box_pk) == packed
    assert crypto.unpack_plaintext(crypto.open_envelope(env, BOB, ALICE.box_pk)) == TEXT


def test_each_seal_uses_a_fresh_nonce() -> None:
    packed = crypto.pack_plaintext(TEXT)
    a, b = crypto.seal(packed, ALICE, BOB.box_pk), crypto.seal(packed, ALICE, BOB.box_pk)
    assert a[:24] != b[:24] and a != b
    assert crypto.open_envelope(a, BOB, ALICE.box_pk) == crypto.open_envelope(b, BOB, ALICE.box_pk) == packed


def test_seal_with_given_nonce_is_deterministic() -> None:
    nonce = bytes(range(24))
    a = crypto.seal(b"x", ALICE, BOB.box_pk, nonce=nonce)
    assert a == crypto.seal(b"x", ALICE, BOB.box_pk, nonce=nonce)
    assert a[:24] == nonce


def test_the_box_is_symmetric_between_the_two_devices() -> None:
    """crypto_box keys on the pair: Bob can answer under the same shared key."""
    env = crypto.seal(b"reply", BOB, ALICE.box_pk)
    assert crypto.open_envelope(env, ALICE, BOB.box_pk) == b"reply"


ENV = crypto.seal(crypto.pack_plaintext(TEXT), ALICE, BOB.box_pk)


@pytest.mark.parametrize("position", [0, 23, 24, 39, 40, len(ENV) // 2, len(ENV) - 1])
def test_any_flipped_bit_is_detected(position: int) -> None:
    tampered = bytearray(ENV)
    tampered[position] ^= 0x01
    with pytest.raises(crypto.EnvelopeError):
        crypto.open_envelope(bytes(tampered), BOB, ALICE.box_pk)


@pytest.mark.parametrize(
    "envelope",
    [b"", ENV[:24], ENV[:39], ENV[:40], ENV[:-1], ENV + b"\x00", ENV[24:]],
    ids=["empty", "nonce-only", "39-bytes", "40-bytes", "cut-1", "plus-1", "no-nonce"],
)
def test_truncated_or_extended_envelope_fails(envelope: bytes) -> None:
    with pytest.raises(crypto.EnvelopeError):
        crypto.open_envelope(envelope, BOB, ALICE.box_pk)


def test_wrong_recipient_key_fails() -> None:
    with pytest.raises(crypto.EnvelopeError):
        crypto.open_envelope(ENV, MALLORY, ALICE.box_pk)


def test_wrong_claimed_sender_fails() -> None:
    """The box authenticates the sender's device key: a hub that relabels
    Mallory's envelope as Alice's is caught."""
    forged = crypto.seal(crypto.pack_plaintext(TEXT), MALLORY, BOB.box_pk)
    with pytest.raises(crypto.EnvelopeError):
        crypto.open_envelope(forged, BOB, ALICE.box_pk)


@pytest.mark.parametrize("sender_pk", [bytes(32), b"\x01" * 31, b""], ids=["low-order", "short", "empty"])
def test_bad_sender_key_is_an_envelope_error(sender_pk: bytes) -> None:
    with pytest.raises(crypto.EnvelopeError):
        crypto.open_envelope(ENV, BOB, sender_pk)


# --- plaintext -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plaintext",
    [
        TEXT,
        crypto.Plaintext(MID, "u_a", "u_b", 0, "text", ""),
        crypto.Plaintext(MID, "u_a", "u_b", 1, "text", "Ça va ? 🩺 " * 50, reply_to=bytes(range(16))),
        crypto.Plaintext(MID, "u_a", "u_b", 2**63 - 1, "future_kind", "x"),
    ],
    ids=["text", "empty-body", "unicode-reply", "other-kind"],
)
def test_plaintext_round_trip(plaintext: crypto.Plaintext) -> None:
    assert crypto.unpack_plaintext(crypto.pack_plaintext(plaintext)) == plaintext


def test_plaintext_wire_map() -> None:
    m = msgpack.unpackb(crypto.pack_plaintext(TEXT), raw=False)
    assert list(m) == ["v", "id", "from", "to", "sent_at", "kind", "body"]
    assert m == {
        "v": 1,
        "id": MID,
        "from": "u_a",
        "to": "u_b",
        "sent_at": TEXT.sent_at,
        "kind": "text",
        "body": TEXT.body,
    }
    with_reply = msgpack.unpackb(
        crypto.pack_plaintext(crypto.Plaintext(MID, "u_a", "u_b", 1, reply_to=MID)), raw=False
    )
    assert list(with_reply)[-1] == "reply_to" and with_reply["reply_to"] == MID


def test_plaintext_ignores_unknown_keys() -> None:
    m = msgpack.unpackb(crypto.pack_plaintext(TEXT), raw=False)
    m["attachments"] = [{"url": "https://example.invalid/x"}]
    assert crypto.unpack_plaintext(msgpack.packb(m, use_bin_type=True)) == TEXT


def _mutated(**changes: Any) -> bytes:
    m: dict[str, Any] = msgpack.unpackb(crypto.pack_plaintext(TEXT), raw=False)
    for key, value in changes.items():
        if value is KeyError:
            del m[key]
        else:
            m[key] = value
    out: bytes = msgpack.packb(m, use_bin_type=True)
    return out


@pytest.mark.parametrize(
    "data",
    [
        _mutated(v=2),
        _mutated(v=0),
        _mutated(v=True),
        _mutated(v=1.0),
        _mutated(v="1"),
        _mutated(v=KeyError),
        _mutated(id=MID[:15]),
        _mutated(id=MID + b"\x00"),
        _mutated(id=MID.hex()),
        _mutated(id=KeyError),
        _mutated(**{"from": 7}),
        _mutated(**{"from": KeyError}),
        _mutated(to=b"u_b"),
        _mutated(to=KeyError),
        _mutated(sent_at="2026-01-01"),
        _mutated(sent_at=1.5),
        _mutated(sent_at=KeyError),
        _mutated(kind=None),
        _mutated(kind=KeyError),
        _mutated(body=b"bytes"),
        _mutated(body=None),
        _mutated(body=KeyError),
        _mutated(reply_to="an id"),
        _mutated(reply_to=b"\x00" * 8),
        msgpack.packb([1, 2, 3]),
        msgpack.packb("text"),
        b"\xc1",
        b"",
        _mutated()[:-1],
    ],
)
def test_bad_plaintext_is_refused(data: bytes) -> None:
    with pytest.raises(crypto.EnvelopeError):
        crypto.unpack_plaintext(data)


def _key_twice(packed: bytes, key: str, value: Any) -> bytes:
    """``packed`` (a fixmap) with ``key`` given once more, last, as ``value``."""
    assert 0x80 <= packed[0] < 0x8F
    return bytes([packed[0] + 1]) + packed[1:] + msgpack.packb(key) + msgpack.packb(value, use_bin_type=True)


def test_plaintext_with_a_key_twice_is_refused() -> None:
    """SPEC §3.1: a key twice is refused at any depth, whichever value is
    the first (two readers must not disagree on what a sealed message says)."""
    packed = crypto.pack_plaintext(TEXT)
    for key, value in (("body", "another body"), ("body", TEXT.body), ("from", "u_mallory"), ("v", 1)):
        with pytest.raises(crypto.EnvelopeError, match="a key twice"):
            crypto.unpack_plaintext(_key_twice(packed, key, value))
    # In an unknown key's map too: c"x" -> {"a": 1, "a": 2}.
    nested = _key_twice(packed, "x", {})[:-1] + bytes.fromhex("82a16101a16102")
    with pytest.raises(crypto.EnvelopeError, match="a key twice"):
        crypto.unpack_plaintext(nested)
    # The same bytes without the repetition are read.
    assert crypto.unpack_plaintext(_key_twice(packed, "x", {"a": 1})) == TEXT


# --- message ids ------------------------------------------------------------------------------------


def test_message_id_layout() -> None:
    for rand in (bytes(10), b"\xff" * 10, bytes(range(10))):
        mid = crypto.new_message_id(1_767_225_600_000, rand)
        assert len(mid) == 16
        assert mid[6] >> 4 == 7  # version
        assert mid[8] >> 6 == 0b10  # variant
        u = uuid.UUID(bytes=mid)
        assert u.version == 7 and u.variant == uuid.RFC_4122
        assert crypto.message_id_time_ms(mid) == 1_767_225_600_000


def test_message_ids_are_time_ordered() -> None:
    ids = [crypto.new_message_id(t) for t in (1_000, 2_000, 2_001, 1_767_225_600_000)]
    assert ids == sorted(ids)
    # Even when the random part of the earlier one is larger.
    assert crypto.new_message_id(5, b"\xff" * 10) < crypto.new_message_id(6, bytes(10))


def test_fresh_message_ids_differ_and_carry_the_current_time() -> None:
    import time

    before = time.time_ns() // 1_000_000
    a, b = crypto.new_message_id(), crypto.new_message_id()
    after = time.time_ns() // 1_000_000
    assert a != b
    assert before <= crypto.message_id_time_ms(a) <= crypto.message_id_time_ms(b) <= after


# --- safety numbers ---------------------------------------------------------------------------------

A_KEYS = [crypto.device_identity(k.sign_pk, k.box_pk) for k in (ALICE, MALLORY)]
B_KEYS = [crypto.device_identity(BOB.sign_pk, BOB.box_pk)]


def test_safety_number_format() -> None:
    number = crypto.safety_number("u_a", A_KEYS, "u_b", B_KEYS)
    assert re.fullmatch(r"\d{5}( \d{5}){11}", number)


def test_safety_number_is_symmetric() -> None:
    assert crypto.safety_number("u_a", A_KEYS, "u_b", B_KEYS) == crypto.safety_number(
        "u_b", B_KEYS, "u_a", A_KEYS
    )
    assert crypto.safety_number("u_a", A_KEYS, "u_b", B_KEYS) == crypto.safety_number(
        "u_a", list(reversed(A_KEYS)), "u_b", B_KEYS
    )


def test_safety_number_changes_with_any_key_or_user() -> None:
    base = crypto.safety_number("u_a", A_KEYS, "u_b", B_KEYS)
    fresh = crypto.DeviceKeys.generate()
    new_key = crypto.device_identity(fresh.sign_pk, fresh.box_pk)
    variants = [
        ("u_a", A_KEYS, "u_b", [crypto.device_identity(BOB.sign_pk, fresh.box_pk)]),  # only a box key swapped
        ("u_a", [new_key, A_KEYS[1]], "u_b", B_KEYS),  # Alice's first key replaced
        ("u_a", [A_KEYS[0], new_key], "u_b", B_KEYS),  # Alice's second key replaced
        ("u_a", A_KEYS, "u_b", [new_key]),  # Bob's key replaced
        ("u_a", [*A_KEYS, new_key], "u_b", B_KEYS),  # a device added
        ("u_a", A_KEYS[:1], "u_b", B_KEYS),  # a device removed
        ("u_a", A_KEYS, "u_b", [*B_KEYS, new_key]),
        ("u_a", A_KEYS, "u_b", []),
        ("u_c", A_KEYS, "u_b", B_KEYS),  # same keys, another user
        ("u_a", B_KEYS, "u_b", A_KEYS),  # keys swapped between the users
    ]
    numbers = {crypto.safety_number(*v) for v in variants}
    assert base not in numbers
    assert len(numbers) == len(variants)


def new_identity() -> bytes:
    k = crypto.DeviceKeys.generate()
    return crypto.device_identity(k.sign_pk, k.box_pk)


def test_safety_number_halves_are_per_user() -> None:
    """Only the half of the user whose key changed moves (SPEC §8)."""
    before = crypto.safety_number("u_a", A_KEYS, "u_b", B_KEYS).split()
    after = crypto.safety_number("u_a", A_KEYS, "u_b", [new_identity()]).split()
    assert before[:6] == after[:6] and before[6:] != after[6:]


# --- sealed bodies and key wraps (SPEC §13.3) ------------------------------------------------

TEAM_TEXT = crypto.Plaintext(
    id=MID, from_user="u_a", to_user="t_00112233445566aa", sent_at=1_767_225_600_000, body="Lit 12 : INR 4,2"
)


def test_sealed_body_round_trip_and_layout() -> None:
    packed = crypto.pack_plaintext(TEAM_TEXT, pad_to=256)
    key, body = crypto.seal_body(packed, MID, ALICE)
    assert len(key) == 32 and len(body) == 24 + 64 + len(packed) + 16 == crypto.BODY_OVERHEAD + len(packed)
    assert crypto.unpack_plaintext(crypto.open_body(body, key, MID, ALICE.sign_pk)) == TEAM_TEXT
    # Fresh key and nonce each time.
    key2, body2 = crypto.seal_body(packed, MID, ALICE)
    assert key2 != key and body2[:24] != body[:24]
    # Given key and nonce: deterministic.
    fixed = crypto.seal_body(packed, MID, ALICE, key=bytes(32), nonce=bytes(24))
    assert fixed == crypto.seal_body(packed, MID, ALICE, key=bytes(32), nonce=bytes(24))


def test_wrap_round_trip() -> None:
    key, _ = crypto.seal_body(b"x", MID, ALICE)
    wrap = crypto.wrap_key(key, ALICE, BOB.box_pk)
    assert len(wrap) == crypto.WRAP_BYTES == 72
    assert crypto.unwrap_key(wrap, BOB, ALICE.box_pk) == key


def test_wrong_wrap_fails() -> None:
    key, _ = crypto.seal_body(b"x", MID, ALICE)
    wrap = crypto.wrap_key(key, ALICE, BOB.box_pk)
    with pytest.raises(crypto.EnvelopeError):
        crypto.unwrap_key(wrap, MALLORY, ALICE.box_pk)  # not for Mallory
    with pytest.raises(crypto.EnvelopeError):
        crypto.unwrap_key(wrap, BOB, MALLORY.box_pk)  # not from Mallory
    with pytest.raises(crypto.EnvelopeError):
        crypto.unwrap_key(wrap[:-1], BOB, ALICE.box_pk)
    # A 72-byte envelope that does not hold a key of 32 bytes.
    with pytest.raises(crypto.EnvelopeError):
        crypto.unwrap_key(crypto.seal(b"k" * 31, ALICE, BOB.box_pk) + b"x", BOB, ALICE.box_pk)


def test_insider_cannot_forge_a_body_under_the_senders_name() -> None:
    """Bob, a member, knows K: he re-encrypts another plaintext under K and
    the same id, signed by himself or not at all. Carol's device, which
    checks the signature with Alice's key, refuses it."""
    packed = crypto.pack_plaintext(TEAM_TEXT)
    key, body = crypto.seal_body(packed, MID, ALICE)
    forged_text = crypto.pack_plaintext(
        crypto.Plaintext(**{**TEAM_TEXT.__dict__, "body": "Arrêter l'héparine"})
    )
    _, forged = crypto.seal_body(forged_text, MID, BOB, key=key)  # signed by Bob
    with pytest.raises(crypto.EnvelopeError):
        crypto.open_body(forged, key, MID, ALICE.sign_pk)
    assert crypto.open_body(forged, key, MID, BOB.sign_pk) == forged_text  # Bob's own, not Alice's
    # Alice's signature moved onto another plaintext.
    nonce = body[:24]
    inner = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
        body[24:], crypto.BODY_CONTEXT + MID, nonce, key
    )
    spliced = nonce + nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        inner[:64] + forged_text, crypto.BODY_CONTEXT + MID, nonce, key
    )
    with pytest.raises(crypto.EnvelopeError):
        crypto.open_body(spliced, key, MID, ALICE.sign_pk)


def test_tampered_body_or_wrong_id_or_key_fails() -> None:
    packed = crypto.pack_plaintext(TEAM_TEXT)
    key, body = crypto.seal_body(packed, MID, ALICE)
    for i in (0, 23, 24, 60, len(body) - 1):
        tampered = bytearray(body)
        tampered[i] ^= 0x01
        with pytest.raises(crypto.EnvelopeError):
            crypto.open_body(bytes(tampered), key, MID, ALICE.sign_pk)
    other_id = crypto.new_message_id(1_767_225_600_001, bytes(10))
    for args in (
        (body, key, other_id, ALICE.sign_pk),  # replayed under another id
        (body, bytes(32), MID, ALICE.sign_pk),
        (body[: crypto.BODY_OVERHEAD - 1], key, MID, ALICE.sign_pk),
        (body, key[:31], MID, ALICE.sign_pk),
        (body, key, MID, b"\x00" * 31),
    ):
        with pytest.raises(crypto.EnvelopeError):
            crypto.open_body(*args)


# --- plaintext keys of revision 3 (SPEC §13.5) -----------------------------------------------


def test_new_plaintext_keys_round_trip_in_order() -> None:
    notice = crypto.Plaintext(
        id=MID,
        from_user="u_a",
        to_user="u_b",
        sent_at=5,
        kind="read",
        reply_to=MID,
        head=b"h" * 32,
        expires_at=99,
        refs=(MID, bytes(16)),
        team="t_00112233445566aa",
    )
    packed = crypto.pack_plaintext(notice, pad_to=256)
    assert len(packed) == 256
    m = msgpack.unpackb(packed, raw=False)
    assert " ".join(m) == "v id from to sent_at kind body reply_to head expires_at refs team pad"
    assert set(m["pad"]) <= {0}
    assert crypto.unpack_plaintext(packed) == notice
    assert crypto.KINDS == ("text", "read", "recall")


def test_padding_is_the_smallest_multiple() -> None:
    for n in range(0, 600, 7):
        p = crypto.Plaintext(MID, "u_a", "u_b", 5, body="x" * n)
        plain = crypto.pack_plaintext(p)
        padded = crypto.pack_plaintext(p, pad_to=256)
        assert len(padded) % 256 == 0
        # "pad" (4 bytes) + bin 8 header (2 bytes) + n zero bytes, n in 0..255.
        assert len(plain) + 6 <= len(padded) < len(plain) + 6 + 256
        assert crypto.unpack_plaintext(padded) == p
    # No pad_to: the bytes of revision 2, no pad key.
    assert b"pad" not in crypto.pack_plaintext(TEXT)


@pytest.mark.parametrize(
    "change",
    [
        {"head": b"h" * 31},
        {"head": "h" * 32},
        {"expires_at": -1},
        {"expires_at": "tomorrow"},
        {"refs": []},
        {"refs": [MID] * 257},
        {"refs": [MID[:15]]},
        {"refs": MID},
        {"team": 7},
        {"pad": "   "},
    ],
    ids=repr,
)
def test_bad_new_plaintext_keys_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(crypto.EnvelopeError):
        crypto.unpack_plaintext(_mutated(**change))


def test_unknown_kind_still_unpacks() -> None:
    """A client acks and ignores a kind it does not know (SPEC §13.5): the
    plaintext itself is not refused."""
    assert crypto.unpack_plaintext(_mutated(kind="later")).kind == "later"
