"""Notices (SPEC.md §17.3): reproduce ``vectors/notices.json`` and check the
bounds of a notice, its text rendering and its place in the plaintext.

Every value is recomputed from the inputs stored in the JSON through the
``protocol`` package (``generate_notices.py`` is never called); the packed
plaintext is also rebuilt key by key with plain msgpack, so that SPEC.md's
order and the code cannot drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import nacl.signing
import pytest

import protocol
from protocol import attestation, crypto, notices
from protocol.notices import Notice, NoticeError, render_text

VECTORS = Path(protocol.__file__).resolve().parent / "vectors"
DOC = json.loads((VECTORS / "notices.json").read_text(encoding="utf-8"))
CRYPTO = json.loads((VECTORS / "crypto.json").read_text(encoding="utf-8"))
KEYS = {k["device"]: k for k in CRYPTO["keys"]}


def device_keys(device: str) -> crypto.DeviceKeys:
    if device in KEYS:
        k = KEYS[device]
        return crypto.DeviceKeys(bytes.fromhex(k["sign_seed"]), bytes.fromhex(k["box_secret"]))
    k = DOC["service_attestation"]["device_seeds"][device]
    return crypto.DeviceKeys(bytes.fromhex(k["sign_seed"]), bytes.fromhex(k["box_secret"]))


def descriptions(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["description"][:50] for v in vectors]


def test_file_describes_itself_and_names_the_bounds() -> None:
    assert DOC["protocol"] == protocol.SUBPROTOCOL and DOC["description"]
    c = DOC["constants"]
    assert (c["MAX_TITLE"], c["MAX_EVENT"], c["MAX_FIELDS"]) == (200, 32, 32)
    assert (c["MAX_LABEL"], c["MAX_VALUE"], c["MAX_REPLY"]) == (64, 512, 256)
    assert c["REPLY_PREFIX"] == "Pour toute question : "


def test_event_labels_are_french_and_a_later_name_is_other() -> None:
    labels = {e["event"]: e["label"] for e in DOC["events"]}
    assert labels == {
        "admission": "Admission",
        "transfer": "Mutation",
        "discharge": "Sortie",
        "death": "Décès",
        "update": "Mise à jour",
        "other": "Autre",
        "planned_readmission": "Autre",
    }
    for event, label in labels.items():
        assert notices.event_label(event) == label


@pytest.mark.parametrize("vector", DOC["notices"]["valid"], ids=descriptions(DOC["notices"]["valid"]))
def test_valid_notice_vector(vector: dict[str, Any]) -> None:
    packed = bytes.fromhex(vector["msgpack"])
    wire = msgpack.unpackb(packed, raw=False)
    assert wire == vector["fields"]
    # Keys in the SPEC's order, reply only when present.
    assert list(wire) == ["title", "event", "at", "fields", *(["reply"] if "reply" in wire else [])]
    n = Notice.from_wire(wire)
    assert msgpack.packb(n.to_wire(), use_bin_type=True) == packed
    assert n.label == vector["label"]
    assert render_text(n) == vector["text"]


def test_render_text_is_title_fields_then_reply() -> None:
    n = Notice.from_wire(DOC["notices"]["valid"][0]["fields"])
    lines = render_text(n).split("\n")
    assert lines[0] == "Admission de M. DUPONT Jean"
    assert lines[1] == "Patient : DUPONT Jean"
    assert lines[-1] == "Pour toute question : Bureau des admissions : 01 64 60 40 00"
    assert len(lines) == 1 + len(n.fields) + 1
    # An empty value leaves no trailing space; no reply, no reply line.
    assert render_text(Notice("T", "other", 0, (("Commentaire", ""),))) == "T\nCommentaire :"


@pytest.mark.parametrize("vector", DOC["notices"]["invalid"], ids=descriptions(DOC["notices"]["invalid"]))
def test_invalid_notice_vector(vector: dict[str, Any]) -> None:
    with pytest.raises(NoticeError):
        Notice.from_wire(msgpack.unpackb(bytes.fromhex(vector["msgpack"]), raw=False))


def test_edge_valid_notice_ignores_an_unknown_key() -> None:
    (edge,) = DOC["notices"]["edge_valid"]
    n = Notice.from_wire(msgpack.unpackb(bytes.fromhex(edge["msgpack"]), raw=False))
    assert n == Notice.from_wire(DOC["notices"]["valid"][0]["fields"])


def test_construction_checks_the_same_bounds() -> None:
    """What an integration builds is refused before it is sent, with a
    message naming the culprit."""
    with pytest.raises(NoticeError, match="title"):
        Notice("", "admission", 0)
    with pytest.raises(NoticeError, match="event"):
        Notice("T", "Admission", 0)
    with pytest.raises(NoticeError, match="at"):
        Notice("T", "admission", True)
    with pytest.raises(NoticeError, match="fields"):
        Notice("T", "admission", 0, tuple(("L", "v") for _ in range(33)))
    with pytest.raises(NoticeError, match="field label"):
        Notice("T", "admission", 0, (("", "v"),))
    with pytest.raises(NoticeError, match="reply"):
        Notice("T", "admission", 0, reply="r" * 257)
    # Code points, not bytes nor UTF-16 units: 200 astral characters fit.
    assert len(Notice("🏥" * 200, "admission", 0).title) == 200


def test_notice_plaintext_vector() -> None:
    (v,) = DOC["plaintexts"]["valid"]
    packed = bytes.fromhex(v["packed_plaintext"])
    assert len(packed) % v["pad_to"] == 0
    recipient = device_keys(v["recipient_device"])
    sender_box_pk = bytes.fromhex(DOC["service_attestation"]["devices"][0][2])
    assert crypto.open_envelope(bytes.fromhex(v["envelope"]), recipient, sender_box_pk) == packed
    assert crypto.seal(
        packed, device_keys(v["sender_device"]), recipient.box_pk, bytes.fromhex(v["nonce"])
    ) == (bytes.fromhex(v["envelope"]))
    p = crypto.unpack_plaintext(packed)
    admission = Notice.from_wire(DOC["notices"]["valid"][0]["fields"])
    assert p.notice == admission and p.kind == "text" and p.body == render_text(admission)
    assert p.id.hex() == v["message_id"] and p.from_user == DOC["service_attestation"]["user"]
    assert crypto.pack_plaintext(p, pad_to=v["pad_to"]) == packed
    # Rebuilt from SPEC §6.3 / §17.3 with plain msgpack: 'notice' after every
    # other key, just before 'pad'.
    wire = msgpack.unpackb(packed, raw=False)
    assert list(wire) == ["v", "id", "from", "to", "sent_at", "kind", "body", "notice", "pad"]
    assert wire["notice"] == DOC["notices"]["valid"][0]["fields"]
    assert msgpack.packb(wire, use_bin_type=True) == packed


@pytest.mark.parametrize(
    "vector", DOC["plaintexts"]["invalid"], ids=descriptions(DOC["plaintexts"]["invalid"])
)
def test_invalid_notice_plaintext_vector(vector: dict[str, Any]) -> None:
    with pytest.raises(crypto.EnvelopeError):
        crypto.unpack_plaintext(bytes.fromhex(vector["packed"]))


def test_service_attestation_vector() -> None:
    v = DOC["service_attestation"]
    authority = nacl.signing.SigningKey(bytes.fromhex(v["authority_seed"]))
    assert v["authority_pk"] == CRYPTO["attestation"]["authority_pk"] == bytes(authority.verify_key).hex()
    devices = tuple(
        attestation.AttestedDevice(d, bytes.fromhex(s), bytes.fromhex(b)) for d, s, b in v["devices"]
    )
    for d in devices:
        keys = device_keys(d.device)
        assert (keys.sign_pk, keys.box_pk) == (d.sign_pk, d.box_pk)
    a = attestation.Attestation(
        v["user"],
        v["rpps"],
        v["name"],
        v["profession"],
        v["organisation"],
        devices,
        v["not_before"],
        v["not_after"],
    )
    assert attestation.sign(a, authority).hex() == v["att"]
    checked = attestation.verify(bytes.fromhex(v["att"]), bytes.fromhex(v["authority_pk"]), v["not_before"])
    assert checked.profession == "service" and checked.rpps.startswith("svc:")


def test_plaintext_without_notice_is_unchanged() -> None:
    """Revision 7 is additive: a plaintext without a notice packs as before."""
    p = crypto.Plaintext(bytes(16), "u_a", "u_b", 1, body="bonjour")
    assert "notice" not in msgpack.unpackb(crypto.pack_plaintext(p, pad_to=256), raw=False)
    assert crypto.unpack_plaintext(crypto.pack_plaintext(p)).notice is None
