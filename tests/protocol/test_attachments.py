"""Encrypted attachments (SPEC.md §16): reproduce ``vectors/attachments.json``
and check what a recipient must refuse.

Every value is recomputed from the inputs stored in the JSON through the
``protocol`` package, and, where SPEC §16.1 gives a formula, from the
formula with libsodium directly, so the text, the code and the vectors the
browser client also reads cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import msgpack
import nacl.bindings as sodium
import pytest

import protocol
from protocol import attachments as att
from protocol import crypto
from protocol.attachments import CHUNK, Attachment, AttachmentError, Decryptor, Encryptor

VECTORS = Path(protocol.__file__).resolve().parent / "vectors"
DOC = json.loads((VECTORS / "attachments.json").read_text(encoding="utf-8"))
FRAMES = json.loads((VECTORS / "frames.json").read_text(encoding="utf-8"))
CRYPTO = json.loads((VECTORS / "crypto.json").read_text(encoding="utf-8"))
BLOBS, DESCRIPTORS, PLAINTEXTS = DOC["blobs"], DOC["descriptors"], DOC["plaintexts"]


def names(vectors: list[dict[str, Any]]) -> list[str]:
    return [v.get("name") or v["description"][:40] for v in vectors]


def spec_plaintext(size: int) -> bytes:
    """The vectors' file: byte i is (i * 31 + 7) mod 256 (attachments.json)."""
    return bytes((i * 31 + 7) % 256 for i in range(size))


def from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"bin"}:
            return bytes.fromhex(value["bin"])
        return {k: from_json(v) for k, v in value.items()}
    return value


def feed_in_pieces(dec: Decryptor, blob: bytes, piece: int) -> bytes:
    out = b"".join(dec.feed(blob[i : i + piece]) for i in range(0, len(blob), piece))
    dec.finish()
    return out


# --- the file and its constants ---------------------------------------------------


def test_the_file_names_the_protocol_constants() -> None:
    assert DOC["protocol"] == protocol.SUBPROTOCOL and DOC["description"]
    assert DOC["constants"] == {
        "CHUNK": 65536,
        "HEADER_BYTES": 24,
        "ABYTES": 17,
        "THUMB_MAX": att.THUMB_MAX,
        "PIECE_MAX": att.PIECE_MAX,
        "HTTP_PART_MAX": att.HTTP_PART_MAX,
        "MAX_ATTACHMENTS_WIRE": 16,
        "MAX_SIZE": att.MAX_SIZE,
    }
    # libsodium's own sizes are the ones SPEC §16.1 states.
    assert sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES == att.HEADER_BYTES == 24
    assert sodium.crypto_secretstream_xchacha20poly1305_ABYTES == att.ABYTES == 17


@pytest.mark.parametrize("row", DOC["cipher_sizes"], ids=lambda r: str(r["size"]))
def test_cipher_size_follows_the_spec_formula(row: dict[str, int]) -> None:
    size = row["size"]
    n = max(1, -(-size // CHUNK))
    assert row["chunks"] == n == att.chunk_count(size)
    assert row["cipher_size"] == 24 + size + 17 * n == att.cipher_size(size)
    assert att.plain_size(row["cipher_size"]) == size


def test_plain_size_knows_the_lengths_no_file_has() -> None:
    # One full chunk is CHUNK + 41 bytes; two chunks start at CHUNK + 59.
    assert att.plain_size(40) is None and att.plain_size(41) == 0
    assert [att.plain_size(CHUNK + k) for k in (41, 42, 58, 59)] == [CHUNK, None, None, CHUNK + 1]


# --- blobs (SPEC §16.1) -----------------------------------------------------------


@pytest.mark.parametrize("vector", BLOBS["valid"], ids=names(BLOBS["valid"]))
def test_valid_blob_vector(vector: dict[str, Any]) -> None:
    key, blob, digest = (
        bytes.fromhex(vector["key"]),
        bytes.fromhex(vector["blob"]),
        bytes.fromhex(vector["hash"]),
    )
    size = vector["size"]
    plain = spec_plaintext(size)
    assert hashlib.sha256(plain).hexdigest() == vector["plaintext_sha256"]
    assert hashlib.sha256(blob).digest() == digest and len(blob) == att.cipher_size(size)
    assert att.decrypt_bytes(blob, key, size, digest) == plain
    # Streaming, in pieces that straddle the header and chunk boundaries.
    assert feed_in_pieces(Decryptor(key, size, digest), blob, 7_777) == plain
    # SPEC §16.1 by hand: the header opens the blob; each chunk is pushed with
    # MESSAGE, the last with FINAL (a state set by init_pull pushes exactly as
    # one set by init_push with that header).
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, blob[:24], key)
    n = vector["chunks"]
    again = blob[:24] + b"".join(
        sodium.crypto_secretstream_xchacha20poly1305_push(
            state, plain[i * CHUNK : (i + 1) * CHUNK], None, 3 if i == n - 1 else 0
        )
        for i in range(n)
    )
    assert again == blob


@pytest.mark.parametrize("vector", BLOBS["invalid"], ids=names(BLOBS["invalid"]))
def test_invalid_blob_vector(vector: dict[str, Any]) -> None:
    key, blob, digest = (
        bytes.fromhex(vector["key"]),
        bytes.fromhex(vector["blob"]),
        bytes.fromhex(vector["hash"]),
    )
    with pytest.raises(AttachmentError):
        att.decrypt_bytes(blob, key, vector["size"], digest)
    # Streaming: refused at some point, and then for good.
    dec = Decryptor(key, vector["size"], digest)
    with pytest.raises(AttachmentError):
        feed_in_pieces(dec, blob, 1000)
    with pytest.raises(AttachmentError):
        dec.finish()


def test_the_invalid_blobs_cover_every_check() -> None:
    assert set(names(BLOBS["invalid"])) >= {
        "truncated",
        "missing_final_tag",
        "final_too_early",
        "flipped_byte",
        "wrong_hash",
        "wrong_size",
    }


def test_a_round_trip_with_a_fresh_key_and_the_encryptor_layout() -> None:
    data = os.urandom(2 * CHUNK + 5)
    key, blob, digest = att.encrypt_bytes(data)
    assert (
        len(key) == 32 and len(blob) == att.cipher_size(len(data)) and digest == hashlib.sha256(blob).digest()
    )
    assert att.decrypt_bytes(blob, key, len(data), digest) == data
    # Another key: another blob (the header is fresh too).
    assert att.encrypt_bytes(data)[1][:24] != blob[:24]
    enc = Encryptor(key)
    with pytest.raises(ValueError, match="exactly CHUNK"):
        enc.push(b"short", final=False)  # only the last chunk may be short
    enc.push(b"", final=True)
    with pytest.raises(ValueError, match="final"):
        enc.push(b"", final=True)


def test_a_decryptor_refuses_bytes_past_the_size_before_decrypting_them() -> None:
    key, blob, digest = att.encrypt_bytes(b"x" * 100)
    dec = Decryptor(key, 100, digest)
    assert dec.feed(blob) == b"x" * 100
    with pytest.raises(AttachmentError, match="more bytes"):
        dec.feed(b"\x00")
    with pytest.raises(AttachmentError):
        dec.finish()
    # finish() before the last byte: too short.
    short = Decryptor(key, 100, digest)
    short.feed(blob[:-1])
    with pytest.raises(AttachmentError):
        short.finish()


# --- descriptors (SPEC §16.2) -----------------------------------------------------


@pytest.mark.parametrize("vector", DESCRIPTORS["valid"], ids=names(DESCRIPTORS["valid"]))
def test_valid_descriptor_vector(vector: dict[str, Any]) -> None:
    packed = bytes.fromhex(vector["msgpack"])
    fields = from_json(vector["fields"])
    a = Attachment.from_map(msgpack.unpackb(packed, raw=False))
    assert a.to_map() == fields and list(a.to_map()) == list(fields)
    assert msgpack.packb(a.to_map(), use_bin_type=True) == packed
    assert list(fields)[:6] == ["blob", "key", "hash", "size", "type", "name"]


@pytest.mark.parametrize("vector", DESCRIPTORS["invalid"], ids=names(DESCRIPTORS["invalid"]))
def test_invalid_descriptor_vector(vector: dict[str, Any]) -> None:
    with pytest.raises(AttachmentError):
        Attachment.from_map(msgpack.unpackb(bytes.fromhex(vector["msgpack"]), raw=False))


def test_a_name_of_255_bytes_and_unknown_keys_are_fine() -> None:
    (edge,) = DESCRIPTORS["edge_valid"]
    a = Attachment.from_map(msgpack.unpackb(bytes.fromhex(edge["msgpack"]), raw=False))
    assert len(a.name.encode()) == 255 and "later" not in a.to_map()


# --- the message (SPEC §16.3) -----------------------------------------------------


def test_the_plaintext_with_attachments_vector() -> None:
    (vector,) = PLAINTEXTS["valid"]
    packed = bytes.fromhex(vector["packed_plaintext"])
    p = crypto.unpack_plaintext(packed)
    assert p.kind == "text"
    assert [a.to_map() for a in p.atts] == [from_json(d["fields"]) for d in DESCRIPTORS["valid"]]
    assert crypto.pack_plaintext(p, pad_to=vector["pad_to"]) == packed and len(packed) % 256 == 0
    assert list(msgpack.unpackb(packed, raw=False))[-2:] == ["atts", "pad"]
    sender = next(k for k in CRYPTO["keys"] if k["device"] == vector["sender_device"])
    sign_pk = bytes.fromhex(sender["sign_pk"])
    body, key, mid = (bytes.fromhex(vector[k]) for k in ("body", "body_key", "message_id"))
    assert crypto.open_body(body, key, mid, sign_pk) == packed
    # frames.json carries this very body, and wraps of its key.
    by_name = {v["name"]: v for v in FRAMES["valid"]}
    send = by_name["send_attachments"]["fields"]
    assert send["body"]["bin"] == vector["body"] and send["id"]["bin"] == vector["message_id"]
    assert send["blobs"] == [d["fields"]["blob"] for d in DESCRIPTORS["valid"]]
    assert by_name["deliver_attachments"]["fields"]["body"]["bin"] == vector["body"]
    assert "team" not in by_name["deliver_attachments"]["fields"]


@pytest.mark.parametrize("vector", PLAINTEXTS["invalid"], ids=names(PLAINTEXTS["invalid"]))
def test_invalid_plaintext_with_attachments_vector(vector: dict[str, Any]) -> None:
    with pytest.raises(crypto.EnvelopeError):
        crypto.unpack_plaintext(bytes.fromhex(vector["packed"]))


def test_a_plaintext_without_attachments_packs_as_before() -> None:
    p = crypto.Plaintext(bytes(16), "u_a", "u_b", 1, "text", "x")
    assert "atts" not in msgpack.unpackb(crypto.pack_plaintext(p), raw=False)
    assert crypto.unpack_plaintext(crypto.pack_plaintext(p, pad_to=256)).atts == ()


# --- type sniffing --------------------------------------------------------------------


@pytest.mark.parametrize("vector", DOC["sniff"], ids=lambda v: f"{v['name']}:{v['first_bytes'][:16]}")
def test_sniff_vector(vector: dict[str, Any]) -> None:
    assert att.sniff_type(bytes.fromhex(vector["first_bytes"]), vector["name"]) == vector["type"]
    assert vector["type"] is None or vector["type"] in att.ALLOWED_TYPES
