"""Write ``notices.json``, the vectors of services and notices (SPEC.md §17).

Run by hand, from the repository root::

    .venv/bin/python protocol/vectors/generate_notices.py

``generate.py`` runs it too; ``tests/protocol/test_notices.py`` recomputes every
value from the inputs stored in the JSON. The keys of Bob's phone and of the
verification authority are those of ``crypto.json``; the service's device
keys are new, simple byte ranges.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import nacl.signing

from protocol import attestation, crypto, notices
from protocol.notices import Notice
from protocol.vectors.generate import (
    AUTHORITY_SEED,
    BOB,
    BOB_PHONE,
    DAY_MS,
    ENVELOPE_NONCE,
    KEYS,
    T0,
)

HERE = Path(__file__).resolve().parent

SERVICE = "u_5e7c1ce000000001"
SERVICE_DEVICE = "d_5e7c1ce000000001"
SERVICE_KEYS = crypto.DeviceKeys(bytes(range(0xD0, 0xF0)), bytes(range(0xE0, 0x100)))
SERVICE_RPPS = "svc:provins-adt"
#: The notice message, the service's integration server -> Bob (SPEC §17.3).
NOTICE_MESSAGE_ID = crypto.new_message_id(T0 + 30_000, bytes(range(0x60, 0x6A)))
#: 2026-01-01T08:15:00Z, the admission.
EVENT_AT = T0 + 8 * 3_600_000 + 15 * 60_000


def service_attestation() -> attestation.Attestation:
    return attestation.Attestation(
        user=SERVICE,
        rpps=SERVICE_RPPS,
        name="CH Provins — Admissions",
        profession="service",
        organisation="CH de Provins",
        devices=(attestation.AttestedDevice(SERVICE_DEVICE, SERVICE_KEYS.sign_pk, SERVICE_KEYS.box_pk),),
        not_before=T0,
        not_after=T0 + 365 * DAY_MS,
    )


def admission() -> Notice:
    return Notice(
        title="Admission de M. DUPONT Jean",
        event="admission",
        at=EVENT_AT,
        fields=(
            ("Patient", "DUPONT Jean"),
            ("Né(e) le", "14/03/1951"),
            ("IPP", "000123456"),
            ("Service", "Cardiologie — UF 2104"),
            ("Événement", "Admission en hospitalisation complète"),
            ("Date", "01/01/2026 09:15"),
        ),
        reply="Bureau des admissions : 01 64 60 40 00",
    )


def valid_notices() -> list[tuple[str, Notice]]:
    return [
        ("an admission: six fields and a reply line (the plaintext below carries it)", admission()),
        ("a death: no field, no reply line", Notice("Décès de Mme MARTIN Paule", "death", EVENT_AT)),
        (
            "a later event name (shown as 'other', « Autre »), an empty value, at 0",
            Notice("Réadmission", "planned_readmission", 0, (("Patient", "LEROY Anne"), ("Commentaire", ""))),
        ),
        (
            "bounds reached, counted in code points: a title of 200 astral characters (400 UTF-16 "
            "units), 32 fields, a 64-character label, a 512-character value, a 256-character reply",
            Notice(
                "🏥" * 200,
                "a" * 32,
                EVENT_AT,
                (("L" * 64, "v" * 512), *((f"Champ {i}", str(i)) for i in range(31))),
                "r" * 256,
            ),
        ),
    ]


def notice_vectors() -> dict[str, Any]:
    valid = []
    for description, n in valid_notices():
        packed = msgpack.packb(n.to_wire(), use_bin_type=True)
        assert Notice.from_wire(msgpack.unpackb(packed, raw=False)) == n
        valid.append(
            {
                "description": description,
                "fields": n.to_wire(),
                "msgpack": packed.hex(),
                "label": n.label,
                "text": notices.render_text(n),
            }
        )
    base = admission().to_wire()

    def without(key: str) -> dict[str, Any]:
        return {k: v for k, v in base.items() if k != key}

    cases: list[tuple[str, Any]] = [
        ("not a map", [base["title"], base["event"], base["at"], base["fields"]]),
        ("no title", without("title")),
        ("title empty", {**base, "title": ""}),
        ("title of 201 characters", {**base, "title": "é" * 201}),
        ("title as bin", {**base, "title": b"Admission"}),
        ("no event", without("event")),
        ("event empty", {**base, "event": ""}),
        ("event in upper case", {**base, "event": "Admission"}),
        ("event with a hyphen", {**base, "event": "re-admission"}),
        ("event of 33 characters", {**base, "event": "a" * 33}),
        ("no at", without("at")),
        ("at as a float", {**base, "at": float(EVENT_AT)}),
        ("at as a boolean", {**base, "at": True}),
        ("at as a string", {**base, "at": str(EVENT_AT)}),
        ("no fields", without("fields")),
        ("fields nil", {**base, "fields": None}),
        ("fields a map", {**base, "fields": {"Patient": "DUPONT Jean"}}),
        ("33 fields", {**base, "fields": [["Champ", "x"]] * 33}),
        ("a field of three strings", {**base, "fields": [["Patient", "DUPONT", "Jean"]]}),
        ("a field of one string", {**base, "fields": [["Patient"]]}),
        ("a field that is a string", {**base, "fields": ["Patient : DUPONT Jean"]}),
        ("a field label empty", {**base, "fields": [["", "DUPONT Jean"]]}),
        ("a field label of 65 characters", {**base, "fields": [["L" * 65, "x"]]}),
        ("a field value of 513 characters", {**base, "fields": [["Patient", "v" * 513]]}),
        ("a field value as an integer", {**base, "fields": [["IPP", 123456]]}),
        ("a field value nil", {**base, "fields": [["IPP", None]]}),
        ("reply empty", {**base, "reply": ""}),
        ("reply of 257 characters", {**base, "reply": "r" * 257}),
        ("reply nil (present: a string)", {**base, "reply": None}),
    ]
    invalid = []
    for description, m in cases:
        try:
            Notice.from_wire(m)
        except notices.NoticeError:
            pass
        else:  # pragma: no cover - the generator checks its own vectors
            raise AssertionError(description)
        invalid.append({"description": description, "msgpack": msgpack.packb(m, use_bin_type=True).hex()})
    edge = {**base, "later": 1}
    assert Notice.from_wire(edge) == admission()
    return {
        "description": (
            "SPEC §17.3. 'valid': the notice map (keys title, event, at, fields, then reply when present), "
            "its canonical msgpack, the French label of its event, and render_text (the body it is sent "
            "with; lines joined by LF, no final newline). 'invalid': maps a receiver MUST refuse (the "
            "plaintext carrying one is then undecryptable). 'edge_valid': accepted, the unknown key ignored."
        ),
        "valid": valid,
        "invalid": invalid,
        "edge_valid": [
            {
                "description": "the admission with an unknown key 'later' (ignored): equal to the admission",
                "msgpack": msgpack.packb(edge, use_bin_type=True).hex(),
            }
        ],
    }


def notice_plaintext() -> crypto.Plaintext:
    n = admission()
    return crypto.Plaintext(
        NOTICE_MESSAGE_ID, SERVICE, BOB, T0 + 30_000, "text", notices.render_text(n), notice=n
    )


def plaintext_vectors() -> dict[str, Any]:
    p = notice_plaintext()
    packed = crypto.pack_plaintext(p, pad_to=256)
    assert crypto.unpack_plaintext(packed) == p
    wire = msgpack.unpackb(packed, raw=False)
    assert list(wire)[-2:] == ["notice", "pad"]
    envelope = crypto.seal(packed, SERVICE_KEYS, KEYS[BOB_PHONE].box_pk, nonce=ENVELOPE_NONCE)
    assert crypto.open_envelope(envelope, KEYS[BOB_PHONE], SERVICE_KEYS.box_pk) == packed
    base = {k: v for k, v in wire.items() if k not in ("notice", "pad")}
    notice = admission().to_wire()
    cases: list[tuple[str, dict[str, Any]]] = [
        ("notice nil", {**base, "notice": None}),
        ("notice an array", {**base, "notice": list(notice.values())}),
        ("notice with a title of 201 characters", {**base, "notice": {**notice, "title": "x" * 201}}),
        ("notice without fields", {**base, "notice": {k: v for k, v in notice.items() if k != "fields"}}),
        ("notice in a read notice (only in a text)", {**base, "kind": "read", "notice": notice}),
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
            "SPEC §17.3: the admission notice (notices.valid[0]), the service's device -> Bob, 1:1, kind "
            "'text', body = render_text(notice), key 'notice' after every other key and before 'pad', padded "
            "to 256 bytes, sealed for Bob's phone (SPEC §6.1) with 'nonce'; Bob opens it with the box_pk the "
            "service's attestation vouches for. 'invalid': packed plaintexts a receiver MUST refuse."
        ),
        "valid": [
            {
                "description": "an admission notice from a service to a clinician",
                "sender_device": SERVICE_DEVICE,
                "recipient_device": BOB_PHONE,
                "message_id": NOTICE_MESSAGE_ID.hex(),
                "pad_to": 256,
                "packed_plaintext": packed.hex(),
                "nonce": ENVELOPE_NONCE.hex(),
                "envelope": envelope.hex(),
            }
        ],
        "invalid": invalid,
    }


def attestation_vector() -> dict[str, Any]:
    a = service_attestation()
    authority = nacl.signing.SigningKey(AUTHORITY_SEED)
    blob = attestation.sign(a, authority)
    assert attestation.verify(blob, bytes(authority.verify_key), T0).profession == "service"
    return {
        "description": (
            "SPEC §17.1: a service's attestation, signed by the authority key of crypto.json: profession "
            "exactly 'service', rpps its 'svc:' identifier. A client shows it as « [Service] name — "
            "organisation », never as a clinician."
        ),
        "authority_seed": AUTHORITY_SEED.hex(),
        "authority_pk": bytes(authority.verify_key).hex(),
        "user": a.user,
        "rpps": a.rpps,
        "name": a.name,
        "profession": a.profession,
        "organisation": a.organisation,
        "devices": [[d.device, d.sign_pk.hex(), d.box_pk.hex()] for d in a.devices],
        "device_seeds": {
            SERVICE_DEVICE: {
                "sign_seed": SERVICE_KEYS.sign_seed.hex(),
                "box_secret": SERVICE_KEYS.box_secret.hex(),
            }
        },
        "not_before": a.not_before,
        "not_after": a.not_after,
        "att": blob.hex(),
    }


def notices_document() -> dict[str, Any]:
    return {
        "description": (
            "MiSS services and notices (SPEC.md §17): the notice map and its text rendering ('notices'), a "
            "plaintext carrying one ('plaintexts'), a service's attestation ('service_attestation'), and the "
            "French labels of the events ('events'). Byte strings are lowercase hex. Lengths are counted in "
            "Unicode code points. Bob's keys and the authority key are those of crypto.json."
        ),
        "generator": "protocol/vectors/generate_notices.py",
        "protocol": "miss.v1",
        "constants": {
            "MAX_TITLE": notices.MAX_TITLE,
            "MAX_EVENT": notices.MAX_EVENT,
            "MAX_FIELDS": notices.MAX_FIELDS,
            "MAX_LABEL": notices.MAX_LABEL,
            "MAX_VALUE": notices.MAX_VALUE,
            "MAX_REPLY": notices.MAX_REPLY,
            "REPLY_PREFIX": notices.REPLY_PREFIX,
        },
        "events": [
            {"event": e, "label": notices.event_label(e)} for e in (*notices.EVENTS, "planned_readmission")
        ],
        "notices": notice_vectors(),
        "plaintexts": plaintext_vectors(),
        "service_attestation": attestation_vector(),
    }


def main() -> None:
    path = HERE / "notices.json"
    path.write_text(json.dumps(notices_document(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
