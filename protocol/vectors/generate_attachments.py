"""Write ``attachments.json``, the vectors of encrypted attachments (SPEC.md §16).

Run by hand, from the repository root (``generate.py`` runs it too, since
the attachment frames of ``frames.json`` carry the sealed message below)::

    .venv/bin/python protocol/vectors/generate_attachments.py

Nothing imports it but ``generate.py``: ``tests/protocol/test_attachments.py``
recomputes every value from the inputs stored in the JSON.

libsodium's ``crypto_secretstream_xchacha20poly1305_init_push`` draws the
24-byte header at random. The generator fixes it instead: ``init_pull``
with a given header leaves the state exactly as ``init_push`` would have
with that header, so pushing from it writes the blob ``init_push`` would
have written. A decrypting implementation needs none of this: it reads
the header from the blob.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import msgpack
import nacl.bindings as sodium

from protocol import attachments as att
from protocol import crypto
from protocol.attachments import CHUNK, Attachment

HERE = Path(__file__).resolve().parent

FILE_KEY = bytes(range(0xA0, 0xC0))  # K of the blob vectors, 32 bytes
HEADER = bytes(range(0xE0, 0xF8))  # the secretstream header, 24 bytes
TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
TAG_PUSH = sodium.crypto_secretstream_xchacha20poly1305_TAG_PUSH
TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
BLOB_1 = "b_" + bytes(range(0x10, 0x20)).hex()
BLOB_2 = "b_" + bytes(range(0x20, 0x30)).hex()
#: The message carrying two attachments (SPEC §16.3), Alice's phone → Bob.
ATTACHMENT_MESSAGE_ID = crypto.new_message_id(1_767_225_600_000 + 20_000, bytes(range(0x50, 0x5A)))
ATTACHMENT_BODY_KEY = bytes(range(0xC0, 0xE0))
ATTACHMENT_BODY_NONCE = bytes(range(0x08, 0x20))


def plaintext_bytes(size: int) -> bytes:
    """The file of the blob vectors: byte i is (i * 31 + 7) mod 256."""
    return bytes((i * 31 + 7) % 256 for i in range(size))


def push_blob(
    plain: bytes, key: bytes = FILE_KEY, header: bytes = HEADER, tags: list[int] | None = None
) -> bytes:
    """The blob of ``plain`` under ``key`` with this ``header``; ``tags``
    overrides each chunk's tag (to build invalid blobs)."""
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, header, key)
    n = att.chunk_count(len(plain))
    tags = tags or [TAG_MESSAGE] * (n - 1) + [TAG_FINAL]
    parts = [header]
    for i in range(n):
        chunk = plain[i * CHUNK : (i + 1) * CHUNK]
        parts.append(sodium.crypto_secretstream_xchacha20poly1305_push(state, chunk, None, tags[i]))
    return b"".join(parts)


def blob_vectors() -> dict[str, Any]:
    valid = []
    for name, size, description in (
        ("empty", 0, "an empty file: one empty chunk tagged FINAL (41 bytes)"),
        ("one_byte", 1, "one byte"),
        ("exactly_chunk", CHUNK, "exactly CHUNK bytes: one full chunk, tagged FINAL"),
        ("chunk_plus_one", CHUNK + 1, "CHUNK + 1 bytes: a full chunk (MESSAGE) and a 1-byte chunk (FINAL)"),
        ("three_chunks", 2 * CHUNK + 1000, "two full chunks (MESSAGE) and 1,000 bytes (FINAL)"),
    ):
        plain = plaintext_bytes(size)
        blob = push_blob(plain)
        # What the reference Encryptor would write with this header.
        assert len(blob) == att.cipher_size(size)
        digest = hashlib.sha256(blob).digest()
        assert att.decrypt_bytes(blob, FILE_KEY, size, digest) == plain
        valid.append(
            {
                "name": name,
                "description": description,
                "key": FILE_KEY.hex(),
                "size": size,
                "chunks": att.chunk_count(size),
                "plaintext_sha256": hashlib.sha256(plain).hexdigest(),
                "hash": digest.hex(),
                "blob": blob.hex(),
            }
        )

    one = push_blob(plaintext_bytes(1))
    two = plaintext_bytes(CHUNK + 1)
    flipped = bytearray(one)
    flipped[30] ^= 0x01
    flipped_header = bytearray(one)
    flipped_header[0] ^= 0x80
    invalid = []

    def bad(
        name: str, description: str, blob: bytes, size: int, digest: bytes | None = None, **kw: Any
    ) -> None:
        key = kw.get("key", FILE_KEY)
        digest = digest if digest is not None else hashlib.sha256(blob).digest()
        try:
            att.decrypt_bytes(blob, key, size, digest)
        except att.AttachmentError:
            pass
        else:  # pragma: no cover - the generator checks its own vectors
            raise AssertionError(name)
        invalid.append(
            {
                "name": name,
                "description": description,
                "key": key.hex(),
                "size": size,
                "hash": digest.hex(),
                "blob": blob.hex(),
            }
        )

    bad("truncated", "the one_byte blob without its last byte (hash of these bytes)", one[:-1], 1)
    bad("extended", "the one_byte blob and one more byte (hash of these bytes)", one + b"\x00", 1)
    bad(
        "missing_final_tag",
        "one chunk tagged MESSAGE: the last chunk must be FINAL (a truncation at a chunk boundary)",
        push_blob(plaintext_bytes(1), tags=[TAG_MESSAGE]),
        1,
    )
    bad(
        "final_too_early",
        "CHUNK + 1 bytes whose first chunk is tagged FINAL: no chunk but the last may be",
        push_blob(two, tags=[TAG_FINAL, TAG_FINAL]),
        CHUNK + 1,
    )
    bad(
        "push_tag",
        "CHUNK + 1 bytes whose first chunk is tagged PUSH: every chunk but the last is MESSAGE",
        push_blob(two, tags=[TAG_PUSH, TAG_FINAL]),
        CHUNK + 1,
    )
    bad("flipped_byte", "one_byte with one ciphertext bit flipped (hash of these bytes)", bytes(flipped), 1)
    bad("flipped_header", "one_byte, one header bit flipped (hash of these bytes)", bytes(flipped_header), 1)
    bad("wrong_key", "one_byte opened with another key", one, 1, key=bytes(32))
    bad(
        "wrong_hash",
        "one_byte, intact, against a hash with its last bit flipped: the blob is not the sender's",
        one,
        1,
        digest=hashlib.sha256(one).digest()[:-1] + bytes([hashlib.sha256(one).digest()[-1] ^ 1]),
    )
    bad("wrong_size", "one_byte against size 2 (its length is cipher_size(1), not cipher_size(2))", one, 2)
    return {
        "description": (
            "SPEC §16.1. blob = header (24) || c_1 || ... || c_n, n = max(1, ceil(size / 65536)); c_i = "
            "crypto_secretstream_xchacha20poly1305_push(chunk_i, no additional data, tag MESSAGE (0), "
            "FINAL (3) for c_n); hash = SHA-256(blob). The header is the blob's first 24 bytes. Plaintext "
            "byte i is (i * 31 + 7) mod 256 (plaintext_sha256 checks it). 'valid': decrypt(blob, key, size, "
            "hash) MUST give that plaintext. 'invalid': it MUST be refused (a length, hash, chunk or tag "
            "check fails; 'hash' is the hash of the given bytes unless the vector is about the hash)."
        ),
        "valid": valid,
        "invalid": invalid,
    }


def cipher_sizes() -> list[dict[str, int]]:
    sizes = (0, 1, 1000, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 20 * 1024 * 1024, att.MAX_SIZE)
    return [{"size": s, "chunks": att.chunk_count(s), "cipher_size": att.cipher_size(s)} for s in sizes]


def descriptors() -> tuple[Attachment, Attachment]:
    image = Attachment(
        blob=BLOB_1,
        key=bytes(range(0x00, 0x20)),
        hash=bytes(range(0x20, 0x40)),
        size=2_345_678,
        type="image/jpeg",
        name="ECG 12 dérivations.jpg",
        thumb=b"\xff\xd8\xff\xe0" + bytes(range(96)) + b"\xff\xd9",
        w=4032,
        h=3024,
    )
    pdf = Attachment(
        blob=BLOB_2,
        key=bytes(range(0x40, 0x60)),
        hash=bytes(range(0x60, 0x80)),
        size=81_920,
        type="application/pdf",
        name="Compte-rendu échographie.pdf",
    )
    return image, pdf


def descriptor_vectors() -> dict[str, Any]:
    image, pdf = descriptors()
    valid = [
        {
            "description": description,
            "fields": jsonable(a.to_map()),
            "msgpack": msgpack.packb(a.to_map(), use_bin_type=True).hex(),
        }
        for description, a in (
            ("an image with its thumbnail and its pixels (every optional key)", image),
            ("a PDF (no optional key); a UTF-8 name", pdf),
        )
    ]
    base = pdf.to_map()
    cases: list[tuple[str, Any]] = [
        ("not a map", [base]),
        ("blob id in upper case", {**base, "blob": BLOB_2.upper().replace("B_", "b_")}),
        ("blob id of 31 hex digits", {**base, "blob": BLOB_2[:-1]}),
        ("key of 31 bytes", {**base, "key": bytes(31)}),
        ("key missing", {k: v for k, v in base.items() if k != "key"}),
        ("hash as a str", {**base, "hash": "00" * 32}),
        ("size negative", {**base, "size": -1}),
        ("size over 2^40", {**base, "size": att.MAX_SIZE + 1}),
        ("type empty", {**base, "type": ""}),
        ("type with a space", {**base, "type": "image/jpeg; x=1"}),
        ("type of 101 characters", {**base, "type": "a" * 101}),
        ("type not ASCII", {**base, "type": "image/jpég"}),
        ("name empty", {**base, "name": ""}),
        ("name '..'", {**base, "name": ".."}),
        ("name '.'", {**base, "name": "."}),
        ("name with a slash", {**base, "name": "../etc/passwd"}),
        ("name with a backslash", {**base, "name": "C:\\x.pdf"}),
        ("name with NUL", {**base, "name": "a\x00.pdf"}),
        ("name of 256 UTF-8 bytes (128 x 'é')", {**base, "name": "é" * 128}),
        ("thumb empty", {**base, "thumb": b""}),
        ("thumb of 4,097 bytes", {**base, "thumb": b"\xff" * 4097}),
        ("w without h", {**base, "w": 10}),
        ("w zero", {**base, "w": 0, "h": 10}),
        ("h over 100,000", {**base, "w": 10, "h": 100_001}),
        ("w as a str", {**base, "w": "10", "h": 10}),
    ]
    invalid = []
    for description, m in cases:
        try:
            Attachment.from_map(m)
        except att.AttachmentError:
            pass
        else:  # pragma: no cover
            raise AssertionError(description)
        invalid.append({"description": description, "msgpack": msgpack.packb(m, use_bin_type=True).hex()})
    # A name of exactly 255 UTF-8 bytes is fine; unknown keys are ignored.
    edge = {**base, "name": "é" * 127 + "x", "later": 1}
    assert Attachment.from_map(edge).name == "é" * 127 + "x"
    return {
        "description": (
            "SPEC §16.2. 'valid': the descriptor's fields (bin as {\"bin\": hex}) and its canonical msgpack "
            "map (keys blob, key, hash, size, type, name, then thumb, w, h when present). 'invalid': maps "
            "a receiver MUST refuse (the whole message is then undecryptable, SPEC §16.3)."
        ),
        "valid": valid,
        "invalid": invalid,
        "edge_valid": [
            {
                "description": "a 255-byte name and an unknown key 'later' (ignored)",
                "msgpack": msgpack.packb(edge, use_bin_type=True).hex(),
            }
        ],
    }


def attachment_plaintext() -> crypto.Plaintext:
    return crypto.Plaintext(
        ATTACHMENT_MESSAGE_ID,
        "u_0123456789abcdef",
        "u_fedcba9876543210",
        1_767_225_600_000 + 20_000,
        "text",
        "ECG et compte-rendu ci-joints.",
        atts=descriptors(),
    )


def sealed_message(sender: crypto.DeviceKeys) -> tuple[bytes, bytes]:
    """(packed plaintext, sealed body) of the message with two attachments."""
    packed = crypto.pack_plaintext(attachment_plaintext(), pad_to=256)
    _, body = crypto.seal_body(
        packed, ATTACHMENT_MESSAGE_ID, sender, key=ATTACHMENT_BODY_KEY, nonce=ATTACHMENT_BODY_NONCE
    )
    return packed, body


def plaintext_vectors(sender: crypto.DeviceKeys, sender_device: str) -> dict[str, Any]:
    p = attachment_plaintext()
    packed, body = sealed_message(sender)
    assert crypto.unpack_plaintext(packed) == p
    assert crypto.open_body(body, ATTACHMENT_BODY_KEY, ATTACHMENT_MESSAGE_ID, sender.sign_pk) == packed
    wire = msgpack.unpackb(packed, raw=False)
    assert list(wire)[-2:] == ["atts", "pad"]
    pdf = descriptors()[1]
    base = {k: v for k, v in wire.items() if k not in ("atts", "pad")}
    cases: list[tuple[str, dict[str, Any]]] = [
        ("atts empty", {**base, "atts": []}),
        ("atts of 17 descriptors", {**base, "atts": [pdf.to_map()] * 17}),
        ("atts not an array", {**base, "atts": pdf.to_map()}),
        ("a descriptor with a bad name", {**base, "atts": [{**pdf.to_map(), "name": "a/b"}]}),
        ("atts in a read notice (only in a text)", {**base, "kind": "read", "atts": [pdf.to_map()]}),
    ]
    invalid = []
    for description, m in cases:
        raw = msgpack.packb(m, use_bin_type=True)
        try:
            crypto.unpack_plaintext(raw)
        except crypto.EnvelopeError:
            pass
        else:  # pragma: no cover
            raise AssertionError(description)
        invalid.append({"description": description, "packed": raw.hex()})
    return {
        "description": (
            "SPEC §16.3: a message with attachments, Alice's phone -> Bob, kind 'text', key 'atts' (the two "
            "descriptors of 'descriptors.valid', in order) just before 'pad', padded to 256 bytes and sealed "
            "as a body (SPEC §13.3) with 'body_key' and 'nonce'; frames.json's 'send_attachments' has it. "
            "'invalid': packed plaintexts a receiver MUST refuse."
        ),
        "valid": [
            {
                "description": "two attachments: an image with a thumbnail, a PDF",
                "sender_device": sender_device,
                "message_id": ATTACHMENT_MESSAGE_ID.hex(),
                "pad_to": 256,
                "packed_plaintext": packed.hex(),
                "body_key": ATTACHMENT_BODY_KEY.hex(),
                "nonce": ATTACHMENT_BODY_NONCE.hex(),
                "body": body.hex(),
            }
        ],
        "invalid": invalid,
    }


def sniff_vectors() -> list[dict[str, Any]]:
    cases = [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "photo.jpg", "image/jpeg"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "scan.png", "image/png"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3", "cr.pdf", "application/pdf"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "IMG_0001.HEIC", "image/heic"),
        (b"\x00\x00\x00\x18ftypheix\x00\x00\x00\x00", "x", "image/heic"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00", "IMG_0002.heic", "image/heic"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00", "image.heif", "image/heif"),
        (b"\x00\x00\x00\x18ftypmsf1\x00\x00\x00\x00", "seq.heif", "image/heif"),
        (b"\x00\x00\x00\x18ftypheif\x00\x00\x00\x00", "x", "image/heif"),
        (b"\x00\x00\x00\x18ftypavif\x00\x00\x00\x00", "photo.heic", None),
        (b"GIF89a\x01\x00\x01\x00", "anim.gif", None),
        (b"PK\x03\x04\x14\x00", "notes.pdf", None),
        (b"MZ\x90\x00", "photo.jpg", None),
        (b"", "empty.pdf", None),
    ]
    out = []
    for first, name, kind in cases:
        assert att.sniff_type(first, name) == kind, (first, name)
        out.append({"first_bytes": first.hex(), "name": name, "type": kind})
    return out


def jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bin": value.hex()}
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def attachments_document(sender: crypto.DeviceKeys, sender_device: str) -> dict[str, Any]:
    return {
        "description": (
            "MiSS encrypted attachments (SPEC.md §16): the file cipher ('blobs', 'cipher_sizes'), the "
            "descriptor ('descriptors'), a message carrying two ('plaintexts'), and type sniffing ('sniff'). "
            "Byte strings are lowercase hex; inside 'fields', a msgpack bin is {\"bin\": hex}. The sender's "
            "keys are those of crypto.json."
        ),
        "generator": "protocol/vectors/generate_attachments.py",
        "protocol": "miss.v1",
        "constants": {
            "CHUNK": CHUNK,
            "HEADER_BYTES": att.HEADER_BYTES,
            "ABYTES": att.ABYTES,
            "THUMB_MAX": att.THUMB_MAX,
            "PIECE_MAX": att.PIECE_MAX,
            "HTTP_PART_MAX": att.HTTP_PART_MAX,
            "MAX_ATTACHMENTS_WIRE": att.MAX_ATTACHMENTS_WIRE,
            "MAX_SIZE": att.MAX_SIZE,
        },
        "cipher_sizes": cipher_sizes(),
        "blobs": blob_vectors(),
        "descriptors": descriptor_vectors(),
        "plaintexts": plaintext_vectors(sender, sender_device),
        "sniff": sniff_vectors(),
    }


def main() -> None:
    from protocol.vectors.generate import ALICE_PHONE, KEYS  # the crypto.json keys

    path = HERE / "attachments.json"
    document = attachments_document(KEYS[ALICE_PHONE], ALICE_PHONE)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()


# --- frames.json (called by generate.py) ----------------------------------------------


def frame_vectors() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The revision 6 entries of frames.json: (valid, invalid)."""
    import base64

    from protocol import errors
    from protocol.frames import (
        BlobBegin,
        BlobEnd,
        BlobLink,
        BlobLinkOk,
        BlobOk,
        BlobPut,
        Deliver,
        Error,
        Send,
        Welcome,
    )
    from protocol.vectors.generate import (
        ALICE,
        ALICE_LAPTOP,
        ALICE_PHONE,
        BOB,
        BOB_PHONE,
        ENVELOPE_NONCE,
        KEYS,
        T0,
        frame_vector,
        invalid_vector,
        pack,
    )

    alice = KEYS[ALICE_PHONE]
    _, body = sealed_message(alice)
    wraps = {
        d: crypto.wrap_key(ATTACHMENT_BODY_KEY, alice, KEYS[d].box_pk, nonce=ENVELOPE_NONCE)
        for d in (BOB_PHONE, ALICE_LAPTOP)
    }
    image = descriptors()[0]
    size = image.cipher_size
    token = base64.urlsafe_b64encode(bytes(range(0x70, 0x90))).rstrip(b"=").decode()
    c, s = "client->hub", "hub->client"

    def error(name: str, cls: type[errors.ProtocolError], description: str, **kw: Any) -> dict[str, Any]:
        return frame_vector(name, s, description, Error(cls.code, cls.message, False, **kw))

    valid = [
        frame_vector(
            "welcome_blobs",
            s,
            "SPEC §16.6: to a client that named 'blobs', the hub's max_attachments and max_attachment_bytes",
            Welcome(ALICE, ALICE_PHONE, att_max=6, blob_max=20 * 1024 * 1024),
        ),
        frame_vector(
            "blob_begin",
            c,
            "SPEC §16.4: a new upload of the image's blob (cipher_size(2,345,678) bytes)",
            BlobBegin(40, size),
        ),
        frame_vector("blob_ok_begin", s, "the hub's id for it; nothing held yet", BlobOk(40, BLOB_1, 0)),
        frame_vector(
            "blob_put",
            c,
            "bytes 0 to 47 of the blob (a real client sends up to PIECE_MAX = 61,440 per frame)",
            BlobPut(41, BLOB_1, 0, bytes(range(0x80, 0xB0))),
        ),
        frame_vector("blob_ok_put", s, "written: the hub holds 48 bytes", BlobOk(41, BLOB_1, 48)),
        frame_vector(
            "blob_begin_resume",
            c,
            "after a reconnection: how much of this upload does the hub hold?",
            BlobBegin(42, size, BLOB_1),
        ),
        frame_vector(
            "blob_ok_resume", s, "48 bytes: the client goes on from offset 48", BlobOk(42, BLOB_1, 48)
        ),
        frame_vector("blob_end", c, "every byte was put: make the blob durable", BlobEnd(43, BLOB_1)),
        frame_vector("blob_ok_end", s, "complete and durable: have = size", BlobOk(43, BLOB_1, size)),
        frame_vector(
            "send_attachments",
            c,
            "SPEC §16.3: Alice's phone -> Bob, 1:1, the sealed body of attachments.json 'plaintexts' (two "
            "attachments) with its key wrapped for Bob's phone and Alice's laptop, naming both blobs",
            Send(ATTACHMENT_MESSAGE_ID, ALICE_PHONE, BOB, wraps, body=body, blobs=(BLOB_1, BLOB_2)),
        ),
        frame_vector(
            "deliver_attachments",
            s,
            "the same message delivered to Bob's phone: a 1:1 sealed body, without 'team' (SPEC §16.3, "
            "as an urgent 1:1 message, §14.5)",
            Deliver(
                9,
                ATTACHMENT_MESSAGE_ID,
                ALICE,
                ALICE_PHONE,
                T0 + 20_001,
                wraps[BOB_PHONE],
                body=body,
            ),
        ),
        frame_vector("blob_link", c, "Bob's phone asks for a download URL", BlobLink(44, BLOB_1)),
        frame_vector(
            "blob_link_ok",
            s,
            "SPEC §16.5: GET <the hub's origin>/blobs/<token> until 'expires' (token: base64url without "
            "padding of 32 random bytes, here 70 71 ... 8f)",
            BlobLinkOk(44, BLOB_1, "/blobs/" + token, size, T0 + 20_000 + 600_000),
        ),
        error(
            "error_unknown_blob",
            errors.UnknownBlob,
            "SPEC §16.7: the one answer for any unusable blob",
            rid=44,
        ),
        error(
            "error_blob_quota",
            errors.BlobQuota,
            "SPEC §16.7: a daily quota reached; retry after the UTC day ends",
            rid=40,
            retry_after=3_600_000,
        ),
        error("error_blob_offset", errors.BlobOffset, "SPEC §16.7: off is not what the hub holds", rid=41),
        error("error_blob_too_large", errors.BlobTooLarge, "SPEC §16.7: over max_attachment_bytes", rid=40),
        error(
            "error_blob_incomplete", errors.BlobIncomplete, "SPEC §16.7: blob_end before every byte", rid=43
        ),
        error(
            "error_too_many_attachments",
            errors.TooManyAttachments,
            "SPEC §16.7: more blobs than max_attachments",
            id=ATTACHMENT_MESSAGE_ID,
        ),
    ]
    mal, unk = errors.MalformedFrame.code, errors.UnknownFrameType.code
    send = {
        "t": "send",
        "id": ATTACHMENT_MESSAGE_ID,
        "from": ALICE_PHONE,
        "to": BOB,
        "envs": {BOB_PHONE: wraps[BOB_PHONE]},
    }
    invalid = [
        invalid_vector(
            "send_blobs_without_body",
            "SPEC §16.4: blobs only with a sealed body",
            pack({**send, "blobs": [BLOB_1]}),
            "client",
            mal,
        ),
        invalid_vector(
            "send_blobs_empty",
            "blobs holds 1 to 16 ids",
            pack({**send, "body": body, "blobs": []}),
            "client",
            mal,
        ),
        invalid_vector(
            "send_blobs_repeated",
            "the ids of blobs are distinct",
            pack({**send, "body": body, "blobs": [BLOB_1, BLOB_1]}),
            "client",
            mal,
        ),
        invalid_vector(
            "send_blobs_17",
            "at most MAX_ATTACHMENTS_WIRE = 16 blobs",
            pack({**send, "body": body, "blobs": [f"b_{i:032x}" for i in range(17)]}),
            "client",
            mal,
        ),
        invalid_vector(
            "blob_link_upper_case_id",
            "a blob id is 'b_' and 32 lowercase hex digits",
            pack({"t": "blob_link", "rid": 1, "blob": BLOB_1.upper().replace("B_", "b_")}),
            "any",
            mal,
        ),
        invalid_vector(
            "blob_begin_size_40",
            "a blob is at least 41 bytes (an empty file's)",
            pack({"t": "blob_begin", "rid": 1, "size": 40}),
            "any",
            mal,
        ),
        invalid_vector(
            "blob_put_empty",
            "data holds 1 to PIECE_MAX bytes",
            pack({"t": "blob_put", "rid": 1, "blob": BLOB_1, "off": 0, "data": b""}),
            "any",
            mal,
        ),
        invalid_vector(
            "blob_put_over_piece_max",
            "data holds at most PIECE_MAX = 61,440 bytes",
            pack({"t": "blob_put", "rid": 1, "blob": BLOB_1, "off": 0, "data": bytes(att.PIECE_MAX + 1)}),
            "any",
            mal,
        ),
        invalid_vector(
            "blob_link_ok_absolute_url",
            "url is '/blobs/' and a 43-character token, a path on the hub's own origin",
            pack(
                {
                    "t": "blob_link_ok",
                    "rid": 1,
                    "blob": BLOB_1,
                    "url": "https://evil.example/" + token,
                    "size": size,
                    "expires": 1,
                }
            ),
            "server",
            mal,
        ),
        invalid_vector(
            "blob_ok_from_client",
            "a hub->client type (blob_ok) sent by a client is unknown in that direction",
            pack({"t": "blob_ok", "rid": 1, "blob": BLOB_1, "have": 0}),
            "client",
            unk,
        ),
    ]
    return valid, invalid
