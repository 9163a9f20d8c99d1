"""Write the protocol v1 test vectors: ``frames.json``, ``crypto.json``, ``teams.json``, ``oncall.json``
and (through ``generate_attachments.py``, ``generate_notices.py``) ``attachments.json``, ``notices.json``.

Run by hand, from the repository root, whenever the wire format changes on
purpose: within v1 only by addition (new frame types such as the presence
frames of SPEC §6.7, see §10), which adds vectors and changes none::

    .venv/bin/python protocol/vectors/generate.py

It only WRITES the two JSON files beside this script, from the fixed inputs
below, through the ``protocol`` package. Nothing imports or calls it: the
tests (``tests/protocol/test_vectors.py``) recompute every value from the
inputs stored in the JSON, independently, so a change to the codec or the
crypto that alters a single byte makes them fail. If you regenerate, review
the diff: any change to an existing vector breaks every other implementation
(the browser client included). SPEC.md §3, §5, §6, §8, §9 describe what the
vectors pin down.

Encoding used in the JSON files: a msgpack *bin* value (Python ``bytes``) is
written as ``{"bin": "<lowercase hex>"}``; strings, integers, booleans,
arrays and maps are their JSON selves. Every other byte string (keys,
nonces, signatures, encoded frames) is lowercase hex.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import nacl.signing

from protocol import attestation, crypto, errors, oncall, rotation, teams
from protocol.frames import (
    Accepted,
    Ack,
    Acknowledge,
    AcknowledgeOk,
    Auth,
    ChainEntry,
    Challenge,
    Deliver,
    Delivered,
    DeviceEntry,
    DeviceInfo,
    Devices,
    DevicesOk,
    Enroll,
    Error,
    Frame,
    LinkCode,
    LinkCodeOk,
    Lookup,
    LookupOk,
    Ok,
    Ping,
    Presence,
    Recall,
    RecallOk,
    Record,
    Refusal,
    Refused,
    Revoke,
    RoleChanged,
    RoleGet,
    RoleInfo,
    RoleLeave,
    RoleOk,
    RoleSearch,
    RoleSearchOk,
    RoleTake,
    Search,
    SearchOk,
    Send,
    SetStatus,
    TeamChain,
    TeamChainOk,
    TeamChange,
    TeamChanged,
    TeamHead,
    TeamOk,
    Teams,
    TeamsOk,
    Urgent,
    UrgentReminder,
    UrgentStatus,
    Watch,
    Watching,
    Welcome,
    encode,
)

HERE = Path(__file__).resolve().parent

# --- fixed inputs ---------------------------------------------------------
# Simple byte ranges, so that anyone can retype them without this file.

ALICE = "u_0123456789abcdef"
BOB = "u_fedcba9876543210"
ALICE_PHONE = "d_a11ce00000000001"
ALICE_LAPTOP = "d_a11ce00000000002"
BOB_PHONE = "d_b0b0000000000001"
CAROL = "u_0c0c0c0c0c0c0c0c"  # a third clinician, only in the presence vectors

KEYS = {
    ALICE_PHONE: crypto.DeviceKeys(bytes(range(0x01, 0x21)), bytes(range(0x21, 0x41))),
    ALICE_LAPTOP: crypto.DeviceKeys(bytes(range(0x41, 0x61)), bytes(range(0x61, 0x81))),
    BOB_PHONE: crypto.DeviceKeys(bytes(range(0x81, 0xA1)), bytes(range(0xA1, 0xC1))),
}
CHALLENGE_NONCE = bytes(range(0xC0, 0xE0))  # 32 bytes
ENVELOPE_NONCE = bytes(range(0x40, 0x58))  # 24 bytes
ENROLL_CODE = "7K3M-9QXR-2H4P-VW8N"
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms
MESSAGE_ID = crypto.new_message_id(T0 + 1234, bytes(range(0xF0, 0xFA)))
MESSAGE_ID_2 = crypto.new_message_id(T0 + 5678, bytes(range(0x10, 0x1A)))
AUTHORITY_SEED = bytes(range(0x30, 0x50))  # the verification authority's Ed25519 seed (SPEC §11)
ROTATED_SEED = bytes(range(0x50, 0x70))  # the authority's key after a rotation (rotation.json)
DAY_MS = 86_400_000
# --- SPEC revision 3 (§13): care teams and sealed bodies
DAN = "u_0d0d0d0d0d0d0d0d"  # a fourth clinician, named only in team records
TEAM_ID = "t_c4a2d10000000001"
AUTHORITY_TEAM_ID = "t_c4a2d10000000002"
TEAM_MESSAGE_ID = crypto.new_message_id(T0 + 9000, bytes(range(0x20, 0x2A)))
NOTICE_ID = crypto.new_message_id(T0 + 9500, bytes(range(0x30, 0x3A)))
BODY_KEY = bytes(range(0x60, 0x80))  # K, 32 bytes
BODY_NONCE = bytes(range(0x80, 0x98))  # 24 bytes
# --- SPEC revision 4 (§14): on-call roles and urgent messages
ROLE_ID = "r_9a4d000000000001"  # "Cardiologie — senior de garde", held by Bob
BACKUP_ROLE_ID = "r_9a4d000000000002"  # "Cardiologie — chef de clinique", held by Carol
URGENT_MESSAGE_ID = crypto.new_message_id(T0 + 12_000, bytes(range(0x40, 0x4A)))
URGENT_BODY_KEY = bytes(range(0x98, 0xB8))  # 32 bytes, never the team message's K
URGENT_BODY_NONCE = bytes(range(0xB8, 0xD0))  # 24 bytes
ROLE_POLICY = oncall.Policy(
    interval=120_000,
    steps=(oncall.Step(300_000, role=BACKUP_ROLE_ID), oncall.Step(600_000, user=DAN)),
    final=600_000,
)


def alice_attestation() -> attestation.Attestation:
    return attestation.Attestation(
        user=ALICE,
        rpps="10101234567",
        name="Dr Alice Martin",
        profession="Médecin généraliste",
        organisation="CHRU de Tours",
        devices=tuple(
            attestation.AttestedDevice(d, KEYS[d].sign_pk, KEYS[d].box_pk)
            for d in (ALICE_LAPTOP, ALICE_PHONE)
        ),
        not_before=T0,
        not_after=T0 + 365 * DAY_MS,
    )


def alice_att() -> bytes:
    return attestation.sign(alice_attestation(), nacl.signing.SigningKey(AUTHORITY_SEED))


def bob_att() -> bytes:
    """Bob's attestation (SPEC §11.1), for his team records (revision 3)."""
    bob = attestation.Attestation(
        user=BOB,
        rpps="10107654321",
        name="Dr Bob Durand",
        profession="Cardiologue",
        organisation="CHRU de Tours",
        devices=(attestation.AttestedDevice(BOB_PHONE, KEYS[BOB_PHONE].sign_pk, KEYS[BOB_PHONE].box_pk),),
        not_before=T0,
        not_after=T0 + 365 * DAY_MS,
    )
    return attestation.sign(bob, nacl.signing.SigningKey(AUTHORITY_SEED))


#: Who signs team records: user -> (device, attestation).
SIGNERS = {ALICE: (ALICE_PHONE, alice_att), BOB: (BOB_PHONE, bob_att)}


def team_record(
    state: teams.TeamState | None, op: str, user: str, by: str, at: int, **kw: Any
) -> teams.SignedRecord:
    """A record following ``state``, signed by ``by``'s phone (or the authority)."""
    if by == teams.AUTHORITY:
        r = teams.next_record(state, op, user, by=by, at=at, **kw)
        return teams.sign_record_authority(r, nacl.signing.SigningKey(AUTHORITY_SEED))
    device, att = SIGNERS[by]
    r = teams.next_record(state, op, user, by=by, device=device, att=att(), at=at, **kw)
    return teams.sign_record(r, KEYS[device])


def _key_twice(r: teams.TeamRecord, key: str, value: Any) -> teams.SignedRecord:
    """``r`` packed with ``key`` once more, last, as ``value``, signed by its
    device (Alice's phone): well signed, refused as malformed."""
    rec = teams.pack_record(r)
    assert 0x80 <= rec[0] < 0x8F
    rec = bytes([rec[0] + 1]) + rec[1:] + pack(key) + pack(value)
    return teams.SignedRecord(rec, KEYS[ALICE_PHONE].sign(teams.TEAM_CONTEXT + rec))


def main_chain() -> list[tuple[str, teams.SignedRecord, teams.TeamState]]:
    """The team of teams.json: every operation once, each with its state."""
    authority_pk = bytes(nacl.signing.SigningKey(AUTHORITY_SEED).verify_key)
    steps = [
        ("Alice creates the team from her phone; she is its first admin", "create", ALICE, ALICE,
         {"team": TEAM_ID, "name": "Cardiologie — garde de nuit", "org": "CHRU de Tours",
          "lifespan": 7 * DAY_MS}),
        ("Alice adds Bob", "add", BOB, ALICE, {}),
        ("Alice adds Carol", "add", CAROL, ALICE, {}),
        ("Alice makes Bob an admin", "promote", BOB, ALICE, {}),
        ("Bob makes Alice a member again (another admin remains)", "demote", ALICE, BOB, {}),
        ("Bob removes Carol", "remove", CAROL, BOB, {}),
        ("Alice leaves", "leave", ALICE, ALICE, {}),
    ]  # fmt: skip
    out: list[tuple[str, teams.SignedRecord, teams.TeamState]] = []
    state: teams.TeamState | None = None
    for i, (description, op, user, by, kw) in enumerate(steps):
        signed = team_record(state, op, user, by, T0 + DAY_MS + i * 60_000, **kw)
        state = teams.apply_record(state, signed, authority_pk, team=TEAM_ID)
        out.append((description, signed, state))
    return out


def jsonable(value: Any) -> Any:
    """Python wire value -> JSON, with bytes as {"bin": hex}."""
    if isinstance(value, bytes):
        return {"bin": value.hex()}
    if isinstance(value, Record):  # DeviceInfo, TeamHead, RoleInfo, Urgent...: its map, no "t"
        return jsonable(value.to_map())
    if isinstance(value, Presence):  # nested in 'watching': its fields, no "t"
        return jsonable(value.fields_map())
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


# --- frames.json ------------------------------------------------------------


def frame_vector(name: str, direction: str, description: str, frame: Frame) -> dict[str, Any]:
    fields = {
        key: jsonable(getattr(frame, attr)) for attr, key, _ in frame.WIRE if getattr(frame, attr) is not None
    }
    encoded = encode(frame)
    # The canonical form is exactly the wire map in the listed order.
    assert msgpack.packb({"t": frame.TYPE, **frame.to_map()}, use_bin_type=True) == encoded
    return {
        "name": name,
        "description": description,
        "direction": direction,
        "type": frame.TYPE,
        "fields": fields,
        "msgpack": encoded.hex(),
    }


def invalid_vector(name: str, description: str, data: bytes, decode_as: str, error: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "decode_as": decode_as,
        "msgpack": data.hex(),
        "error": error,
    }


def pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def sealed(plaintext: crypto.Plaintext, sender: str, recipient: str) -> bytes:
    return crypto.seal(
        crypto.pack_plaintext(plaintext), KEYS[sender], KEYS[recipient].box_pk, nonce=ENVELOPE_NONCE
    )


def authority_chain() -> list[tuple[str, teams.SignedRecord, teams.TeamState]]:
    """A team created by the deployment's administrators (``miss-admin team
    create``): a record signed by the authority key, naming Bob first admin."""
    authority_pk = bytes(nacl.signing.SigningKey(AUTHORITY_SEED).verify_key)
    signed = team_record(
        None, "create", BOB, teams.AUTHORITY, T0 + 2 * DAY_MS, team=AUTHORITY_TEAM_ID, name="Urgences"
    )
    state = teams.apply_record(None, signed, authority_pk, team=AUTHORITY_TEAM_ID)
    return [("the authority creates a team for Bob, its first admin", signed, state)]


def team_plaintext() -> crypto.Plaintext:
    """The team message of crypto.json sealed_bodies.valid[0]."""
    head = main_chain()[3][1].hash()
    return crypto.Plaintext(
        TEAM_MESSAGE_ID,
        ALICE,
        TEAM_ID,
        T0 + 9000,
        "text",
        "Lit 12 : INR à 4,2, je suspends la warfarine.",
        head=head,
        expires_at=T0 + 9000 + 7 * DAY_MS,
    )


def sealed_team_body() -> tuple[bytes, bytes]:
    """(packed plaintext padded to 256, sealed body) of the team message."""
    packed = crypto.pack_plaintext(team_plaintext(), pad_to=256)
    key, body = crypto.seal_body(packed, TEAM_MESSAGE_ID, KEYS[ALICE_PHONE], key=BODY_KEY, nonce=BODY_NONCE)
    assert key == BODY_KEY
    return packed, body


def urgent_plaintext() -> crypto.Plaintext:
    """Alice's urgent message to the role ROLE_ID (SPEC §14.5): ``to`` is the role."""
    return crypto.Plaintext(
        URGENT_MESSAGE_ID,
        ALICE,
        ROLE_ID,
        T0 + 12_000,
        "text",
        "Box 4 : douleur thoracique, sus-décalage ST en inférieur. Besoin d'un avis maintenant.",
        urgent=True,
    )


def sealed_urgent_body() -> tuple[bytes, bytes]:
    """(packed plaintext padded to 256, sealed body) of the urgent role message."""
    packed = crypto.pack_plaintext(urgent_plaintext(), pad_to=256)
    _, body = crypto.seal_body(
        packed, URGENT_MESSAGE_ID, KEYS[ALICE_PHONE], key=URGENT_BODY_KEY, nonce=URGENT_BODY_NONCE
    )
    return packed, body


def role_info(holders: tuple[str, ...] = (BOB,)) -> RoleInfo:
    """ROLE_ID as role_ok shows it: its policy's steps list their holders now."""
    policy = oncall.Policy(
        ROLE_POLICY.interval,
        (
            oncall.Step(300_000, role=BACKUP_ROLE_ID, holders=(CAROL,)),
            oncall.Step(600_000, user=DAN, holders=(DAN,)),
        ),
        ROLE_POLICY.final,
    )
    return RoleInfo(ROLE_ID, "Cardiologie — senior de garde", "CHRU de Tours", False, holders, policy)


def oncall_frame_vectors() -> list[dict[str, Any]]:
    """frames.json vectors of revision 4 (SPEC §14.3-§14.7)."""
    _, body = sealed_urgent_body()
    wrap = {
        d: crypto.wrap_key(URGENT_BODY_KEY, KEYS[ALICE_PHONE], KEYS[d].box_pk, nonce=ENVELOPE_NONCE)
        for d in (BOB_PHONE, ALICE_LAPTOP)
    }
    c, s = "client->hub", "hub->client"
    return [
        frame_vector(
            "role_search",
            c,
            "search roles by name or organisation (SPEC §14.3); mine is absent (false)",
            RoleSearch(rid=30, query="cardio"),
        ),
        frame_vector(
            "role_search_mine", c, "the roles this user holds now", RoleSearch(rid=31, query="", mine=True)
        ),
        frame_vector(
            "role_search_ok",
            s,
            "answer to 'role_search': one role; nested maps role, name, org, reserved, holders, policy "
            "{interval, steps [{delay, role | user, holders}], final}, with no 't'",
            RoleSearchOk(rid=30, roles=(role_info(),)),
        ),
        frame_vector("role_get", c, "one role with its holders now", RoleGet(rid=32, role=ROLE_ID)),
        frame_vector(
            "role_ok",
            s,
            "answer to 'role_get'/'role_take'/'role_leave': the role as it is now",
            RoleOk(rid=32, info=role_info()),
        ),
        frame_vector(
            "role_take",
            c,
            "Bob's phone takes the role: a handover (join absent), he becomes its only manual holder",
            RoleTake(rid=33, role=ROLE_ID),
        ),
        frame_vector(
            "role_take_join", c, "join the role's holders instead", RoleTake(rid=34, role=ROLE_ID, join=True)
        ),
        frame_vector(
            "role_leave",
            c,
            "stop holding the role manually; the answer shows no holder left",
            RoleLeave(rid=35, role=ROLE_ID),
        ),
        frame_vector(
            "role_ok_vacant",
            s,
            "answer to 'role_leave': nobody holds the role now",
            RoleOk(rid=35, info=role_info(())),
        ),
        frame_vector(
            "send_role_urgent",
            c,
            "Alice's phone sends crypto.json padded_plaintexts vector 'urgent' to the role, sealed once "
            "(key URGENT_BODY_KEY, nonce URGENT_BODY_NONCE of the description); envs: wraps for Bob's "
            "phone (the holder) and Alice's laptop; urgent overrides the interval only",
            Send(
                id=URGENT_MESSAGE_ID,
                sender=ALICE_PHONE,
                to=ROLE_ID,
                envs=wrap,
                body=body,
                urgent=Urgent(interval=60_000),
            ),
        ),
        frame_vector(
            "send_urgent_as_is",
            c,
            "the same send under the policy as it is: urgent is an empty map",
            Send(id=URGENT_MESSAGE_ID, sender=ALICE_PHONE, to=ROLE_ID, envs=wrap, body=body, urgent=Urgent()),
        ),
        frame_vector(
            "deliver_urgent_step",
            s,
            "a copy released at escalation step 1: role, urgent (true) and step follow body",
            Deliver(
                seq=60,
                id=URGENT_MESSAGE_ID,
                from_user=ALICE,
                from_device=ALICE_PHONE,
                ts=T0 + 12_100,
                env=wrap[BOB_PHONE],
                body=body,
                role=ROLE_ID,
                urgent=True,
                step=1,
            ),
        ),
        frame_vector(
            "deliver_urgent",
            s,
            "the primary copy for Bob's phone: no step",
            Deliver(
                seq=61,
                id=URGENT_MESSAGE_ID,
                from_user=ALICE,
                from_device=ALICE_PHONE,
                ts=T0 + 12_100,
                env=wrap[BOB_PHONE],
                body=body,
                role=ROLE_ID,
                urgent=True,
            ),
        ),
        frame_vector(
            "acknowledge",
            c,
            "Bob's phone acknowledges Alice's urgent message (SPEC §14.7)",
            Acknowledge(rid=36, id=URGENT_MESSAGE_ID, sender=ALICE),
        ),
        frame_vector(
            "acknowledge_ok",
            s,
            "answer to 'acknowledge': this request was the first acknowledgement",
            AcknowledgeOk(
                rid=36,
                id=URGENT_MESSAGE_ID,
                sender=ALICE,
                user=BOB,
                device=BOB_PHONE,
                at=T0 + 60_000,
                first=True,
            ),
        ),
        frame_vector(
            "urgent_status_escalated",
            s,
            "queued to Alice's devices: step 1 was released to the backup role",
            UrgentStatus(
                seq=62,
                id=URGENT_MESSAGE_ID,
                sender=ALICE,
                state="escalated",
                step=1,
                ts=T0 + 312_000,
                target=BACKUP_ROLE_ID,
            ),
        ),
        frame_vector(
            "urgent_status_acknowledged",
            s,
            "queued to the sender's and the released recipients' devices: Bob's phone acknowledged",
            UrgentStatus(
                seq=63,
                id=URGENT_MESSAGE_ID,
                sender=ALICE,
                state="acknowledged",
                step=1,
                ts=T0 + 320_000,
                user=BOB,
                device=BOB_PHONE,
            ),
        ),
        frame_vector(
            "urgent_status_unacknowledged",
            s,
            "queued to Alice's devices: nobody acknowledged by the end of the policy",
            UrgentStatus(
                seq=64, id=URGENT_MESSAGE_ID, sender=ALICE, state="unacknowledged", step=2, ts=T0 + 1_512_000
            ),
        ),
        frame_vector(
            "urgent_reminder",
            s,
            "pushed to the released recipients' connected devices: the second reminder",
            UrgentReminder(id=URGENT_MESSAGE_ID, sender=ALICE, n=2),
        ),
        frame_vector(
            "role_changed",
            s,
            "pushed to the users whose holdership changed: Carol handed the role over to Bob",
            RoleChanged(role=ROLE_ID, holders=(BOB,)),
        ),
        frame_vector(
            "error_role_vacant",
            s,
            "role_vacant answering a send to a role nobody holds: carries id and the role",
            Error(code="role_vacant", message=errors.RoleVacant.message, id=URGENT_MESSAGE_ID, role=ROLE_ID),
        ),
        frame_vector(
            "error_not_recipient",
            s,
            "not_recipient answering an acknowledge",
            Error(code="not_recipient", message=errors.NotRecipient.message, rid=36),
        ),
    ]


def oncall_invalid_vectors() -> list[dict[str, Any]]:
    mal = "malformed_frame"
    return [
        invalid_vector(
            "role_get_team_id",
            "a role id is 'r_' and 16 lowercase hex digits",
            pack({"t": "role_get", "rid": 1, "role": TEAM_ID}),
            "client",
            mal,
        ),
        invalid_vector(
            "send_urgent_not_a_map",
            "urgent is a map",
            pack(
                {
                    "t": "send",
                    "id": MESSAGE_ID,
                    "from": ALICE_PHONE,
                    "to": ROLE_ID,
                    "envs": {BOB_PHONE: b"w"},
                    "body": b"b",
                    "urgent": True,
                }
            ),
            "client",
            mal,
        ),
        invalid_vector(
            "deliver_step_zero",
            "a step is 1 or more",
            pack(
                {
                    "t": "deliver",
                    "seq": 1,
                    "id": MESSAGE_ID,
                    "from_user": ALICE,
                    "from_device": ALICE_PHONE,
                    "ts": T0,
                    "env": b"e",
                    "step": 0,
                }
            ),
            "server",
            mal,
        ),
        invalid_vector(
            "urgent_status_unknown_state",
            "state is escalated, acknowledged or unacknowledged",
            pack(
                {
                    "t": "urgent_status",
                    "seq": 1,
                    "id": MESSAGE_ID,
                    "sender": ALICE,
                    "state": "pending",
                    "step": 0,
                    "ts": T0,
                }
            ),
            "server",
            mal,
        ),
        invalid_vector(
            "role_ok_step_two_targets",
            "a policy step names exactly one of role and user",
            pack(
                {
                    "t": "role_ok",
                    "rid": 1,
                    "info": {
                        **role_info().to_map(),
                        "policy": {
                            "interval": 1,
                            "steps": [{"delay": 1, "role": ROLE_ID, "user": DAN, "holders": []}],
                            "final": 1,
                        },
                    },
                }
            ),
            "server",
            mal,
        ),
    ]


def frames_document() -> dict[str, Any]:
    text = crypto.Plaintext(MESSAGE_ID, ALICE, BOB, T0 + 1234, "text", "Bonjour, ECG reçu ?")
    env_bob = sealed(text, ALICE_PHONE, BOB_PHONE)
    env_laptop = sealed(text, ALICE_PHONE, ALICE_LAPTOP)
    auth_sig = KEYS[ALICE_PHONE].sign(crypto.auth_message(CHALLENGE_NONCE, ALICE_PHONE))
    bob = KEYS[BOB_PHONE]
    enroll_sig = bob.sign(crypto.enroll_message(CHALLENGE_NONCE, ENROLL_CODE, bob.sign_pk, bob.box_pk))
    chain = main_chain()
    authority_create = authority_chain()[0][1]
    _, team_body = sealed_team_body()
    wrap_bob = crypto.wrap_key(BODY_KEY, KEYS[ALICE_PHONE], KEYS[BOB_PHONE].box_pk, nonce=ENVELOPE_NONCE)
    wrap_laptop = crypto.wrap_key(
        BODY_KEY, KEYS[ALICE_PHONE], KEYS[ALICE_LAPTOP].box_pk, nonce=ENVELOPE_NONCE
    )
    c, s = "client->hub", "hub->client"
    valid = [
        frame_vector(
            "auth",
            c,
            "auth answering the challenge of vector 'challenge'; sig is crypto.json auth.signature",
            Auth(v=1, device=ALICE_PHONE, sig=auth_sig),
        ),
        frame_vector(
            "enroll",
            c,
            "enroll of Bob's phone with an invitation code; sig is crypto.json enroll.signature",
            Enroll(
                v=1, code=ENROLL_CODE, sign_pk=bob.sign_pk, box_pk=bob.box_pk, label="Pixel 8", sig=enroll_sig
            ),
        ),
        frame_vector(
            "enroll_empty_label",
            c,
            "enroll with an empty label (allowed: label may be empty)",
            Enroll(v=1, code=ENROLL_CODE, sign_pk=bob.sign_pk, box_pk=bob.box_pk, label="", sig=enroll_sig),
        ),
        frame_vector(
            "send",
            c,
            "send from Alice's phone to Bob: one envelope for Bob's phone, one for Alice's laptop "
            "(the sender's other device); the wire key of the sender is 'from'",
            Send(
                id=MESSAGE_ID, sender=ALICE_PHONE, to=BOB, envs={BOB_PHONE: env_bob, ALICE_LAPTOP: env_laptop}
            ),
        ),
        frame_vector(
            "ack",
            c,
            "ack of several seqs; shows the integer widths (fixint, uint8, uint16, uint32, uint64); "
            "the largest is 2**53 - 1, so that JSON parsers with float64 numbers read every vector exactly",
            Ack(seqs=(1, 200, 65535, 70_000, 4_294_967_296, 2**53 - 1)),
        ),
        frame_vector("ack_empty", c, "ack with an empty list (allowed)", Ack(seqs=())),
        frame_vector(
            "lookup_user",
            c,
            "lookup by user id; 'rpps' is absent, not nil",
            Lookup(rid=7, user=BOB),
        ),
        frame_vector(
            "lookup_rpps",
            c,
            "lookup by RPPS number; 'user' is absent, not nil",
            Lookup(rid=8, rpps="10101234567"),
        ),
        frame_vector("link_code", c, "ask for a code to enroll another device", LinkCode(rid=9)),
        frame_vector(
            "set_status",
            c,
            "set the clinician's status (SPEC §6.7); one of available, busy, on_call, off_duty",
            SetStatus(rid=10, status="on_call"),
        ),
        frame_vector(
            "watch",
            c,
            "follow the presence of two users, by user id; replaces the connection's previous list",
            Watch(rid=11, users=(BOB, CAROL)),
        ),
        frame_vector("watch_empty", c, "an empty list: stop watching anybody", Watch(rid=12, users=())),
        frame_vector(
            "challenge",
            s,
            "the first frame on every connection; nonce is crypto.json auth.nonce",
            Challenge(v=1, nonce=CHALLENGE_NONCE),
        ),
        frame_vector("welcome", s, "authentication succeeded", Welcome(user=ALICE, device=ALICE_PHONE)),
        frame_vector("accepted", s, "message durably stored", Accepted(id=MESSAGE_ID, dup=False)),
        frame_vector(
            "accepted_dup",
            s,
            "a resend of an already accepted id: no second copy",
            Accepted(id=MESSAGE_ID, dup=True),
        ),
        frame_vector(
            "deliver",
            s,
            "the message of vector 'send' delivered to Bob's phone; env is crypto.json "
            "envelopes.valid[0].envelope",
            Deliver(
                seq=42, id=MESSAGE_ID, from_user=ALICE, from_device=ALICE_PHONE, ts=T0 + 1300, env=env_bob
            ),
        ),
        frame_vector(
            "delivered",
            s,
            "receipt to Alice's devices: Bob's phone acked the message",
            Delivered(seq=43, id=MESSAGE_ID, user=BOB, device=BOB_PHONE, ts=T0 + 2000),
        ),
        frame_vector(
            "lookup_ok",
            s,
            "answer to 'lookup_user' for Alice, who has two devices",
            LookupOk(
                rid=7,
                user=ALICE,
                name="Dr Alice Martin",
                rpps="10101234567",
                profession="Médecin généraliste",
                organisation="CHRU de Tours",
                devices=tuple(
                    DeviceInfo(d, KEYS[d].sign_pk, KEYS[d].box_pk) for d in (ALICE_PHONE, ALICE_LAPTOP)
                ),
            ),
        ),
        frame_vector(
            "lookup_ok_attested",
            s,
            "lookup_ok of Alice with her attestation (crypto.json attestation.att)",
            LookupOk(
                rid=7,
                user=ALICE,
                name="Dr Alice Martin",
                rpps="10101234567",
                profession="Médecin généraliste",
                organisation="CHRU de Tours",
                devices=tuple(
                    DeviceInfo(d, KEYS[d].sign_pk, KEYS[d].box_pk) for d in (ALICE_PHONE, ALICE_LAPTOP)
                ),
                att=alice_att(),
            ),
        ),
        frame_vector("search", c, "directory search (SPEC §11.3)", Search(rid=13, query="martin")),
        frame_vector(
            "search_ok",
            s,
            "one verified clinician found: Alice's attestation",
            SearchOk(rid=13, atts=(alice_att(),)),
        ),
        frame_vector("search_ok_empty", s, "nobody found", SearchOk(rid=14, atts=())),
        frame_vector("devices", c, "list my devices (SPEC §11.4)", Devices(rid=15)),
        frame_vector(
            "devices_ok",
            s,
            "Alice's two devices; the laptop was linked after her last verification",
            DevicesOk(
                rid=15,
                devices=(
                    DeviceEntry(ALICE_PHONE, "Pixel 8", T0, True),
                    DeviceEntry(ALICE_LAPTOP, "", T0 + DAY_MS, False),
                ),
            ),
        ),
        frame_vector(
            "revoke", c, "revoke Alice's laptop from her phone", Revoke(rid=16, device=ALICE_LAPTOP)
        ),
        frame_vector("ok_revoke", s, "answer to 'revoke': the laptop is revoked", Ok(rid=16)),
        frame_vector(
            "error_forbidden_revoke",
            s,
            "forbidden answering a revoke of a device that is not one of the requester's own active devices",
            Error(code="forbidden", message="not allowed", rid=16),
        ),
        frame_vector(
            "error_rate_limited_auth",
            s,
            "rate_limited answering an auth over its address's attempt budget: fatal is false, yet the hub "
            "closes the connection next (close 1008, reason rate_limited); no id or rid (SPEC §2, §11.5)",
            Error(code="rate_limited", message="too many requests; retry later", retry_after=1500),
        ),
        frame_vector(
            "lookup_ok_no_devices",
            s,
            "a clinician with no active device yet: empty devices list, empty profession/organisation",
            LookupOk(
                rid=8,
                user=BOB,
                name="Dr Bob Durand",
                rpps="10107654321",
                profession="",
                organisation="",
                devices=(),
            ),
        ),
        frame_vector(
            "lookup_ok_service_no_replies",
            s,
            "a service account that does not accept replies (SPEC §17.1, §17.2): profession 'service', "
            "its svc: identifier in rpps, and replies false (the key is present only then)",
            LookupOk(
                rid=8,
                user="u_5e5e5e5e5e5e5e5e",
                name="CH Provins — Admissions",
                rpps="svc:provins-adt",
                profession="service",
                organisation="CH Provins",
                devices=(DeviceInfo(BOB_PHONE, KEYS[BOB_PHONE].sign_pk, KEYS[BOB_PHONE].box_pk),),
                replies=False,
            ),
        ),
        frame_vector(
            "error_replies_refused",
            s,
            "replies_refused answering a send to a service that does not accept replies: the send's id, "
            "nothing stored (SPEC §17.2, §17.5)",
            Error(code="replies_refused", message=errors.RepliesRefused.message, id=MESSAGE_ID),
        ),
        frame_vector(
            "link_code_ok",
            s,
            "a one-time link code expiring 15 min after T0 (absolute ms)",
            LinkCodeOk(rid=9, code="Q8ZD-4MNC-7T1V-KE2B", expires=T0 + 15 * 60 * 1000),
        ),
        frame_vector("ok", s, "answer to 'set_status': the status is stored", Ok(rid=10)),
        frame_vector(
            "watching",
            s,
            "answer to 'watch' with two entries, in the order of the request; nested presence maps are "
            "user, status, online, with no 't'",
            Watching(
                rid=11,
                presence=(
                    Presence(user=BOB, status="on_call", online=True),
                    Presence(user=CAROL, status="off_duty", online=False),
                ),
            ),
        ),
        frame_vector(
            "watching_empty",
            s,
            "answer to a 'watch' whose users are all unknown or not visible (or to 'watch_empty'): "
            "an empty presence list",
            Watching(rid=12, presence=()),
        ),
        frame_vector(
            "presence",
            s,
            "pushed to watchers of Bob: his status changed to busy while a device is connected",
            Presence(user=BOB, status="busy", online=True),
        ),
        frame_vector(
            "presence_offline",
            s,
            "pushed to watchers of Bob: his last device disconnected; the status is kept",
            Presence(user=BOB, status="available", online=False),
        ),
        frame_vector(
            "error_fatal",
            s,
            "a fatal error: only the three required keys",
            Error(code="auth_failed", message="authentication failed", fatal=True),
        ),
        frame_vector(
            "error_missing_devices",
            s,
            "missing_devices answering a send: carries id and missing",
            Error(
                code="missing_devices",
                message="envelopes missing for some active devices; refresh the device list and resend",
                id=MESSAGE_ID,
                missing=(ALICE_LAPTOP,),
            ),
        ),
        frame_vector(
            "error_unknown_user",
            s,
            "unknown_user answering a lookup: carries rid",
            Error(code="unknown_user", message="no such user", rid=8),
        ),
        frame_vector(
            "error_storage_unavailable",
            s,
            "a retryable error answering a send: carries id and retry_after (ms)",
            Error(
                code="storage_unavailable",
                message="storage unavailable; the request was not carried out, retry later",
                id=MESSAGE_ID_2,
                retry_after=500,
            ),
        ),
        frame_vector(
            "error_storage_unavailable_watch",
            s,
            "a retryable error answering a request with a rid (here the 'watch' of vector 'watch')",
            Error(
                code="storage_unavailable",
                message="storage unavailable; the request was not carried out, retry later",
                rid=11,
                retry_after=1000,
            ),
        ),
        # --- SPEC revision 2 (§12): capabilities, refusals, the enrollment check, the device cap
        frame_vector(
            "challenge_with_authority_and_caps",
            s,
            "a challenge from a hub configured with the authority key of crypto.json "
            "attestation.authority_pk, announcing the 'refusals' capability (SPEC §5.1, §10)",
            Challenge(
                v=1,
                nonce=CHALLENGE_NONCE,
                authority=bytes(nacl.signing.SigningKey(AUTHORITY_SEED).verify_key),
                caps=("refusals",),
            ),
        ),
        # --- SPEC revision 5 (§15): authority key rotation
        frame_vector(
            "challenge_with_rotations",
            s,
            "a challenge from a hub whose authority key was rotated: 'authority' is the new key "
            "(rotation.json seed 505152...6f) and 'rotations' the statement k1_to_k2 of rotation.json, "
            "signed by the key of crypto.json attestation.authority_pk (SPEC §15)",
            Challenge(
                v=1,
                nonce=CHALLENGE_NONCE,
                authority=bytes(nacl.signing.SigningKey(ROTATED_SEED).verify_key),
                caps=("refusals", "teams", "oncall", "rotation"),
                rotations=(
                    rotation.sign(
                        nacl.signing.SigningKey(AUTHORITY_SEED),
                        nacl.signing.SigningKey(ROTATED_SEED),
                        1_767_225_600_000,
                        1_769_817_600_000,
                    ),
                ),
            ),
        ),
        frame_vector(
            "auth_with_caps",
            c,
            "the auth of vector 'auth' from a client naming the 'refusals' capability (caps is not signed)",
            Auth(v=1, device=ALICE_PHONE, sig=auth_sig, caps=("refusals",)),
        ),
        frame_vector(
            "enroll_with_caps",
            c,
            "the enroll of vector 'enroll' from a client naming the 'refusals' capability",
            Enroll(
                v=1,
                code=ENROLL_CODE,
                sign_pk=bob.sign_pk,
                box_pk=bob.box_pk,
                label="Pixel 8",
                sig=enroll_sig,
                caps=("refusals",),
            ),
        ),
        frame_vector(
            "ack_with_refusal",
            c,
            "Bob's phone keeps the row of seq 42 and refuses the message of seq 44: it could not verify "
            "its sender (SPEC §6.3, §6.5)",
            Ack(seqs=(42,), refused=(Refusal(seq=44, reason="sender_unverified"),)),
        ),
        frame_vector(
            "ack_only_refusals",
            c,
            "an ack that only refuses: an empty seqs list and one refusal",
            Ack(seqs=(), refused=(Refusal(seq=46, reason="undecryptable"),)),
        ),
        frame_vector(
            "refused",
            s,
            "refusal receipt to Alice's devices: Bob's phone refused the message of vector 'send' "
            "(sent only to a connection that named the 'refusals' capability)",
            Refused(
                seq=47, id=MESSAGE_ID, user=BOB, device=BOB_PHONE, ts=T0 + 2500, reason="sender_unverified"
            ),
        ),
        frame_vector(
            "error_too_many_devices",
            s,
            "too_many_devices answering a link_code: the account has max_devices devices and link codes",
            Error(
                code="too_many_devices",
                message="this account has as many devices as it may; revoke one first",
                rid=9,
            ),
        ),
        frame_vector(
            "error_not_verified_lookup",
            s,
            "not_verified answering a lookup from a device its account's attestation does not vouch for",
            Error(
                code="not_verified",
                message="this account or device is not verified by the authority; ask an administrator",
                rid=7,
            ),
        ),
        # --- SPEC revision 3 (§13): care teams, sealed bodies, lifespan, recall
        frame_vector(
            "team_change",
            c,
            "Alice's phone adds Bob to the team: record seq 1 of teams.json chain 'main' (rec, sig)",
            TeamChange(rid=20, team=TEAM_ID, rec=chain[1][1].rec, sig=chain[1][1].sig),
        ),
        frame_vector(
            "team_ok",
            s,
            "answer to 'team_change': the chain now holds 2 records, head = hash of record seq 1",
            TeamOk(rid=20, team=TEAM_ID, seq=2, head=chain[1][1].hash()),
        ),
        frame_vector("teams", c, "list my teams (SPEC §13.4)", Teams(rid=21)),
        frame_vector(
            "teams_ok",
            s,
            "answer to 'teams': two teams with the hub's chain lengths and heads; nested maps are "
            "team, seq, head, with no 't'",
            TeamsOk(
                rid=21,
                teams=(
                    TeamHead(TEAM_ID, 4, chain[3][1].hash()),
                    TeamHead(AUTHORITY_TEAM_ID, 1, authority_create.hash()),
                ),
            ),
        ),
        frame_vector("teams_ok_empty", s, "a user in no team", TeamsOk(rid=22, teams=())),
        frame_vector(
            "team_chain",
            c,
            "fetch the team's records from seq 0 on; the wire key of from_seq is 'from'",
            TeamChain(rid=23, team=TEAM_ID, from_seq=0),
        ),
        frame_vector(
            "team_chain_ok",
            s,
            "answer to 'team_chain': records seq 0 and 1 of chain 'main'; more is true, others follow",
            TeamChainOk(
                rid=23,
                team=TEAM_ID,
                recs=tuple(ChainEntry(x[1].rec, x[1].sig) for x in chain[:2]),
                more=True,
            ),
        ),
        frame_vector(
            "team_changed",
            s,
            "pushed to members' connections that named 'teams': the chain grew to 4 records",
            TeamChanged(team=TEAM_ID, seq=4, head=chain[3][1].hash()),
        ),
        frame_vector(
            "send_team",
            c,
            "Alice's phone sends crypto.json sealed_bodies.valid[0] to the team: envs holds key wraps "
            "(for Bob's phone and Alice's laptop), then body, head (after 4 records) and ttl (7 days)",
            Send(
                id=TEAM_MESSAGE_ID,
                sender=ALICE_PHONE,
                to=TEAM_ID,
                envs={BOB_PHONE: wrap_bob, ALICE_LAPTOP: wrap_laptop},
                body=team_body,
                head=chain[3][1].hash(),
                ttl=7 * DAY_MS,
            ),
        ),
        frame_vector(
            "send_ttl",
            c,
            "the 1:1 send of vector 'send' with a lifespan of one hour (the smallest)",
            Send(
                id=MESSAGE_ID,
                sender=ALICE_PHONE,
                to=BOB,
                envs={BOB_PHONE: env_bob, ALICE_LAPTOP: env_laptop},
                ttl=3_600_000,
            ),
        ),
        frame_vector(
            "deliver_team",
            s,
            "the message of vector 'send_team' delivered to Bob's phone: env is its wrap, then body and team",
            Deliver(
                seq=48,
                id=TEAM_MESSAGE_ID,
                from_user=ALICE,
                from_device=ALICE_PHONE,
                ts=T0 + 9100,
                env=wrap_bob,
                body=team_body,
                team=TEAM_ID,
            ),
        ),
        frame_vector(
            "recall", c, "recall the message of vector 'send' (SPEC §13.6)", Recall(rid=24, id=MESSAGE_ID)
        ),
        frame_vector(
            "recall_ok",
            s,
            "answer to 'recall': one row not acked yet was deleted",
            RecallOk(rid=24, id=MESSAGE_ID, removed=1),
        ),
        frame_vector(
            "error_team_changed",
            s,
            "team_changed answering a team send whose head is not the hub's: carries id",
            Error(
                code="team_changed",
                message="the team changed; fetch its chain, verify it and resend",
                id=TEAM_MESSAGE_ID,
            ),
        ),
        frame_vector(
            "error_team_conflict",
            s,
            "team_conflict answering a team_change whose seq/prev do not follow the hub's head",
            Error(
                code="team_conflict",
                message="the team record does not follow the current head; fetch the chain and retry",
                rid=20,
            ),
        ),
    ]

    auth_map = {"t": "auth", "v": 1, "device": ALICE_PHONE, "sig": auth_sig}
    send_map = {"t": "send", "id": MESSAGE_ID, "from": ALICE_PHONE, "to": BOB, "envs": {BOB_PHONE: env_bob}}
    presence_map = {"user": BOB, "status": "busy", "online": True}
    mal, unk = "malformed_frame", "unknown_frame_type"
    invalid = [
        invalid_vector("not_msgpack", "0xc1 is never used by msgpack", b"\xc1", "any", mal),
        invalid_vector("empty", "zero bytes", b"", "any", mal),
        invalid_vector("truncated", "a map announcing 2 entries that stops early", b"\x82\xa1t", "any", mal),
        invalid_vector("not_a_map", "an array, not a map", pack(["auth", 1]), "any", mal),
        invalid_vector("no_type", "a map without 't'", pack({"v": 1}), "any", mal),
        invalid_vector("type_not_string", "'t' is an integer", pack({"t": 1}), "any", mal),
        invalid_vector("type_is_bin", "'t' is bin, not str", pack({"t": b"auth"}), "any", mal),
        invalid_vector("unknown_type", "'t' names no frame type", pack({"t": "bogus"}), "any", unk),
        invalid_vector(
            "server_frame_from_client",
            "a hub->client type sent by a client is unknown in that direction",
            pack({"t": "welcome", "user": ALICE, "device": ALICE_PHONE}),
            "client",
            unk,
        ),
        invalid_vector(
            "client_frame_from_hub",
            "a client->hub type sent by the hub is unknown in that direction",
            pack({"t": "ack", "seqs": [1]}),
            "server",
            unk,
        ),
        invalid_vector(
            "trailing_bytes",
            "a valid frame followed by one more byte",
            pack(auth_map) + b"\xc0",
            "any",
            mal,
        ),
        invalid_vector(
            "integer_map_key",
            "an otherwise valid link_code with an integer map key: keys must be strings",
            b"\x83" + pack("t") + pack("link_code") + pack("rid") + pack(1) + pack(1) + pack(2),
            "any",
            mal,
        ),
        invalid_vector("invalid_utf8", "a str that is not UTF-8", b"\x81\xa1t\xa2\xff\xfe", "any", mal),
        invalid_vector(
            "devices_key_twice",
            "a devices request with rid twice (1, then 2): a map never holds a key twice (SPEC §3.1)",
            b"\x83" + pack("t") + pack("devices") + pack("rid") + pack(1) + pack("rid") + pack(2),
            "client",
            mal,
        ),
        invalid_vector(
            "type_key_twice",
            "a link_code whose 't' comes twice, with the same value both times",
            b"\x83" + pack("t") + pack("link_code") + pack("rid") + pack(1) + pack("t") + pack("link_code"),
            "any",
            mal,
        ),
        invalid_vector(
            "watching_entry_key_twice",
            "a watching answer whose one presence entry holds 'online' twice: at any depth",
            b"\x83"
            + pack("t")
            + pack("watching")
            + pack("rid")
            + pack(11)
            + pack("presence")
            + b"\x91\x84"
            + pack("user")
            + pack(BOB)
            + pack("status")
            + pack("busy")
            + pack("online")
            + pack(True)
            + pack("online")
            + pack(False),
            "server",
            mal,
        ),
        invalid_vector(
            "unknown_key_twice",
            "a link_code with an unknown key whose map holds a key twice (unknown keys are ignored, "
            "but still read)",
            b"\x83"
            + pack("t")
            + pack("link_code")
            + pack("rid")
            + pack(1)
            + pack("x")
            + b"\x82"
            + pack("a")
            + pack(1)
            + pack("a")
            + pack(2),
            "any",
            mal,
        ),
        invalid_vector(
            "auth_missing_device",
            "a required key is absent",
            pack({"t": "auth", "v": 1, "sig": auth_sig}),
            "any",
            mal,
        ),
        invalid_vector(
            "auth_short_sig",
            "sig must be exactly 64 bytes",
            pack({**auth_map, "sig": auth_sig[:63]}),
            "any",
            mal,
        ),
        invalid_vector(
            "auth_sig_as_str", "sig must be bin, not str", pack({**auth_map, "sig": "x" * 64}), "any", mal
        ),
        invalid_vector(
            "auth_v_negative", "integers are non-negative", pack({**auth_map, "v": -1}), "any", mal
        ),
        invalid_vector(
            "auth_v_float", "1.0 is a float, not an integer", pack({**auth_map, "v": 1.0}), "any", mal
        ),
        invalid_vector(
            "auth_v_bool", "true is a boolean, not an integer", pack({**auth_map, "v": True}), "any", mal
        ),
        invalid_vector(
            "auth_v_nil", "nil is not accepted for a required key", pack({**auth_map, "v": None}), "any", mal
        ),
        invalid_vector(
            "auth_empty_device", "ids are non-empty", pack({**auth_map, "device": ""}), "any", mal
        ),
        invalid_vector(
            "auth_long_device",
            "ids are at most 128 characters",
            pack({**auth_map, "device": "d" * 129}),
            "any",
            mal,
        ),
        invalid_vector(
            "send_empty_envs", "envs has at least one entry", pack({**send_map, "envs": {}}), "any", mal
        ),
        invalid_vector(
            "send_short_id",
            "message ids are exactly 16 bytes",
            pack({**send_map, "id": MESSAGE_ID[:15]}),
            "any",
            mal,
        ),
        invalid_vector(
            "send_bin_device_key",
            "envs keys are str device ids",
            pack({**send_map, "envs": {BOB_PHONE.encode(): env_bob}}),
            "any",
            mal,
        ),
        invalid_vector(
            "send_too_many_envs",
            "at most 64 envelopes",
            pack({**send_map, "envs": {f"d_{i:016x}": b"\x00" * 40 for i in range(65)}}),
            "any",
            mal,
        ),
        invalid_vector("ack_str_seq", "seqs are integers", pack({"t": "ack", "seqs": [1, "2"]}), "any", mal),
        invalid_vector(
            "ack_too_many", "at most 1024 seqs", pack({"t": "ack", "seqs": list(range(1025))}), "any", mal
        ),
        invalid_vector(
            "ack_seq_too_big", "integers fit in 63 bits", pack({"t": "ack", "seqs": [2**64 - 1]}), "any", mal
        ),
        invalid_vector(
            "lookup_long_rpps",
            "rpps is at most 32 characters",
            pack({"t": "lookup", "rid": 1, "rpps": "1" * 33}),
            "any",
            mal,
        ),
        invalid_vector(
            "lookup_nul_in_user",
            "a str never holds U+0000 (SPEC §3.1): user 'u_a\\u0000b'",
            pack({"t": "lookup", "rid": 1, "user": "u_a\x00b"}),
            "any",
            mal,
        ),
        invalid_vector(
            "search_nul_in_query",
            "a search query holding U+0000",
            pack({"t": "search", "rid": 1, "query": "Du\x00pont"}),
            "client",
            mal,
        ),
        invalid_vector(
            "lookup_nil_user",
            "an optional key is omitted, never nil",
            pack({"t": "lookup", "rid": 1, "user": None}),
            "any",
            mal,
        ),
        invalid_vector(
            "enroll_long_label",
            "label is at most 64 characters",
            pack(
                {
                    "t": "enroll",
                    "v": 1,
                    "code": ENROLL_CODE,
                    "sign_pk": bob.sign_pk,
                    "box_pk": bob.box_pk,
                    "label": "x" * 65,
                    "sig": enroll_sig,
                }
            ),
            "any",
            mal,
        ),
        invalid_vector(
            "accepted_no_dup",
            "dup is required on the wire",
            pack({"t": "accepted", "id": MESSAGE_ID}),
            "any",
            mal,
        ),
        invalid_vector(
            "error_no_fatal",
            "fatal is required on the wire",
            pack({"t": "error", "code": "auth_failed", "message": "authentication failed"}),
            "any",
            mal,
        ),
        invalid_vector(
            "lookup_ok_short_key",
            "device keys are exactly 32 bytes",
            pack(
                {
                    "t": "lookup_ok",
                    "rid": 7,
                    "user": ALICE,
                    "name": "Dr Alice Martin",
                    "rpps": "10101234567",
                    "profession": "",
                    "organisation": "",
                    "devices": [{"device": ALICE_PHONE, "sign_pk": b"\x01" * 31, "box_pk": b"\x02" * 32}],
                }
            ),
            "any",
            mal,
        ),
        invalid_vector(
            "set_status_unknown_status",
            "status must be one of available, busy, on_call, off_duty",
            pack({"t": "set_status", "rid": 10, "status": "on_holiday"}),
            "any",
            mal,
        ),
        invalid_vector(
            "set_status_status_spelling",
            "status values are exact: 'on call' (with a space) is not 'on_call'",
            pack({"t": "set_status", "rid": 10, "status": "on call"}),
            "any",
            mal,
        ),
        invalid_vector(
            "set_status_status_as_bin",
            "status is str, not bin",
            pack({"t": "set_status", "rid": 10, "status": b"busy"}),
            "any",
            mal,
        ),
        invalid_vector(
            "watch_users_not_a_list",
            "users is an array, even for one user",
            pack({"t": "watch", "rid": 11, "users": BOB}),
            "any",
            mal,
        ),
        invalid_vector(
            "watch_users_map",
            "users is an array, not a map",
            pack({"t": "watch", "rid": 11, "users": {BOB: True}}),
            "any",
            mal,
        ),
        invalid_vector(
            "watch_empty_user",
            "user ids are non-empty",
            pack({"t": "watch", "rid": 11, "users": [BOB, ""]}),
            "any",
            mal,
        ),
        invalid_vector(
            "watch_too_many_users",
            "at most 512 users",
            pack({"t": "watch", "rid": 11, "users": [f"u_{i:016x}" for i in range(513)]}),
            "any",
            mal,
        ),
        invalid_vector(
            "presence_unknown_status",
            "a client refuses a status it does not know, too",
            pack({"t": "presence", **presence_map, "status": "away"}),
            "any",
            mal,
        ),
        invalid_vector(
            "presence_online_int",
            "online is a boolean, not 0/1",
            pack({"t": "presence", **presence_map, "online": 1}),
            "any",
            mal,
        ),
        invalid_vector(
            "watching_entry_not_a_map",
            "each entry of presence is a map, not a user id",
            pack({"t": "watching", "rid": 11, "presence": [BOB]}),
            "any",
            mal,
        ),
        invalid_vector(
            "watching_entry_missing_online",
            "each entry has user, status and online",
            pack({"t": "watching", "rid": 11, "presence": [{"user": BOB, "status": "busy"}]}),
            "any",
            mal,
        ),
        invalid_vector(
            "watch_from_hub",
            "a client->hub type (watch) sent by the hub is unknown in that direction",
            pack({"t": "watch", "rid": 11, "users": [BOB]}),
            "server",
            unk,
        ),
        invalid_vector(
            "presence_from_client",
            "a hub->client type (presence) sent by a client is unknown in that direction",
            pack({"t": "presence", **presence_map}),
            "client",
            unk,
        ),
        invalid_vector(
            "ack_refusal_reason_case",
            "a refusal reason is [a-z0-9_], 1 to 32 characters",
            pack({"t": "ack", "seqs": [], "refused": [{"seq": 44, "reason": "Sender_Unverified"}]}),
            "any",
            mal,
        ),
        invalid_vector(
            "ack_refusal_without_reason",
            "each refusal has seq and reason",
            pack({"t": "ack", "seqs": [], "refused": [{"seq": 44}]}),
            "any",
            mal,
        ),
        invalid_vector(
            "ack_too_many_refusals",
            "at most 64 refusals",
            pack(
                {
                    "t": "ack",
                    "seqs": [],
                    "refused": [{"seq": i, "reason": "undecryptable"} for i in range(65)],
                }
            ),
            "any",
            mal,
        ),
        invalid_vector(
            "auth_caps_not_a_list",
            "caps is an array of names, even for one",
            pack({**auth_map, "caps": "refusals"}),
            "any",
            mal,
        ),
        invalid_vector(
            "auth_too_many_caps",
            "at most 16 capabilities",
            pack({**auth_map, "caps": [f"cap_{i}" for i in range(17)]}),
            "any",
            mal,
        ),
        invalid_vector(
            "challenge_short_authority",
            "the authority key is exactly 32 bytes",
            pack({"t": "challenge", "v": 1, "nonce": CHALLENGE_NONCE, "authority": b"\x01" * 31}),
            "any",
            mal,
        ),
        invalid_vector(
            "refused_from_client",
            "a hub->client type (refused) sent by a client is unknown in that direction",
            pack(
                {
                    "t": "refused",
                    "seq": 47,
                    "id": MESSAGE_ID,
                    "user": BOB,
                    "device": BOB_PHONE,
                    "ts": T0 + 2500,
                    "reason": "undecryptable",
                }
            ),
            "client",
            unk,
        ),
        invalid_vector(
            "ext_type",
            "msgpack ext values are never valid",
            pack({"t": "link_code", "rid": msgpack.ExtType(1, b"\x00")}),
            "any",
            mal,
        ),
        # --- SPEC revision 3 (§13)
        invalid_vector(
            "send_too_many_envs_without_body",
            "without body, envs holds at most 64 envelopes (with body, up to 512 key wraps)",
            pack({**send_map, "envs": {f"d_{i:016x}": b"e" * 72 for i in range(65)}}),
            "any",
            mal,
        ),
        invalid_vector(
            "send_too_many_wraps",
            "with body, envs holds at most 512 key wraps",
            pack({**send_map, "envs": {f"d_{i:03x}": b"" for i in range(513)}, "body": b"\x00" * 104}),
            "any",
            mal,
        ),
        invalid_vector(
            "send_short_head",
            "head is exactly 32 bytes",
            pack({**send_map, "body": b"\x00" * 104, "head": b"\x00" * 31}),
            "any",
            mal,
        ),
        invalid_vector(
            "send_ttl_too_short",
            "ttl is 3,600,000 to 2,592,000,000 ms",
            pack({**send_map, "ttl": 3_599_999}),
            "any",
            mal,
        ),
        invalid_vector(
            "send_ttl_too_long",
            "ttl is 3,600,000 to 2,592,000,000 ms",
            pack({**send_map, "ttl": 2_592_000_001}),
            "any",
            mal,
        ),
        invalid_vector(
            "team_chain_bad_team_id",
            "a team id is 't_' and 16 lowercase hex digits",
            pack({"t": "team_chain", "rid": 1, "team": "t_C4A2D10000000001", "from": 0}),
            "any",
            mal,
        ),
        invalid_vector(
            "team_chain_from_seq_key",
            "the wire key is 'from', not 'from_seq'",
            pack({"t": "team_chain", "rid": 1, "team": TEAM_ID, "from_seq": 0}),
            "any",
            mal,
        ),
        invalid_vector(
            "team_change_short_sig",
            "sig is exactly 64 bytes",
            pack({"t": "team_change", "rid": 1, "team": TEAM_ID, "rec": b"\x80", "sig": b"\x00" * 63}),
            "any",
            mal,
        ),
        invalid_vector(
            "team_changed_from_client",
            "a hub->client type (team_changed) sent by a client is unknown in that direction",
            pack({"t": "team_changed", "team": TEAM_ID, "seq": 1, "head": b"\x00" * 32}),
            "client",
            unk,
        ),
    ]
    valid += oncall_frame_vectors()
    invalid += oncall_invalid_vectors()
    # Revision 6 (SPEC §16): in generate_attachments.py, beside attachments.json.
    from protocol.vectors import generate_attachments

    blob_valid, blob_invalid = generate_attachments.frame_vectors()
    valid += blob_valid
    invalid += blob_invalid
    # Revision 8 (SPEC §4.1): liveness.
    valid += [
        frame_vector("ping", c, "is the hub still there? (SPEC §4.1, capability 'ping')", Ping(rid=40)),
        frame_vector("ok_ping", s, "answer to 'ping': the hub is there", Ok(rid=40)),
    ]
    invalid += [
        invalid_vector("ping_without_rid", "rid is required", pack({"t": "ping"}), "client", mal),
        invalid_vector(
            "ping_rid_as_str", "rid is an integer", pack({"t": "ping", "rid": "40"}), "client", mal
        ),
    ]
    return {
        "description": (
            "MiSS protocol v1 frame vectors (SPEC.md §3). Each 'valid' vector gives a frame's type, "
            "its fields keyed by WIRE key in canonical order, and the exact msgpack bytes (hex) of its "
            "canonical encoding: a map whose first key is 't' (= type) followed by 'fields' in the "
            'listed order. A msgpack bin value is written {"bin": "<hex>"}; str, int, bool, array '
            "and map values are their JSON selves. An implementation MUST encode 'fields' to exactly "
            "'msgpack' and decode 'msgpack' back to 'fields'. Each 'invalid' vector gives bytes that a "
            "decoder MUST refuse with the named error code (SPEC.md §7); decode_as says which frame "
            "types the decoder admits: 'client' = client->hub types (as the hub decodes), 'server' = "
            "hub->client types (as a client decodes), 'any' = all types."
        ),
        "generator": "protocol/vectors/generate.py",
        "protocol": "miss.v1",
        "valid": valid,
        "invalid": invalid,
    }


# --- crypto.json -----------------------------------------------------------------


def crypto_document() -> dict[str, Any]:
    keys = [
        {
            "device": d,
            "sign_seed": k.sign_seed.hex(),
            "sign_pk": k.sign_pk.hex(),
            "box_secret": k.box_secret.hex(),
            "box_pk": k.box_pk.hex(),
        }
        for d, k in KEYS.items()
    ]
    alice, bob = KEYS[ALICE_PHONE], KEYS[BOB_PHONE]
    authority_pk = bytes(nacl.signing.SigningKey(AUTHORITY_SEED).verify_key)
    auth_msg = crypto.auth_message(CHALLENGE_NONCE, ALICE_PHONE)
    enroll_msg = crypto.enroll_message(CHALLENGE_NONCE, ENROLL_CODE, bob.sign_pk, bob.box_pk)

    def envelope_vector(description: str, p: crypto.Plaintext, sender: str, recipient: str) -> dict[str, Any]:
        packed = crypto.pack_plaintext(p)
        env = crypto.seal(packed, KEYS[sender], KEYS[recipient].box_pk, nonce=ENVELOPE_NONCE)
        assert crypto.open_envelope(env, KEYS[recipient], KEYS[sender].box_pk) == packed
        # Keyed as on the wire (SPEC §6.3), not as the Python dataclass names them.
        plaintext: dict[str, Any] = {
            "id": p.id.hex(),
            "from": p.from_user,
            "to": p.to_user,
            "sent_at": p.sent_at,
            "kind": p.kind,
            "body": p.body,
        }
        if p.reply_to is not None:
            plaintext["reply_to"] = p.reply_to.hex()
        return {
            "description": description,
            "sender_device": sender,
            "recipient_device": recipient,
            "nonce": ENVELOPE_NONCE.hex(),
            "plaintext": plaintext,
            "packed_plaintext": packed.hex(),
            "envelope": env.hex(),
        }

    text = crypto.Plaintext(MESSAGE_ID, ALICE, BOB, T0 + 1234, "text", "Bonjour, ECG reçu ?")
    reply = crypto.Plaintext(MESSAGE_ID_2, BOB, ALICE, T0 + 5678, "text", "Oui, RAS.", reply_to=MESSAGE_ID)
    envelopes = [
        envelope_vector(
            "Alice's phone -> Bob's phone (also vector 'deliver' of frames.json)",
            text,
            ALICE_PHONE,
            BOB_PHONE,
        ),
        envelope_vector("the same message, copy for Alice's own laptop", text, ALICE_PHONE, ALICE_LAPTOP),
        envelope_vector("Bob's reply, with reply_to", reply, BOB_PHONE, ALICE_PHONE),
    ]
    good_env = bytes.fromhex(envelopes[0]["envelope"])
    tampered = bytearray(good_env)
    tampered[-1] ^= 0x01
    bad_envelopes = [
        {
            "description": "last ciphertext byte flipped: the Poly1305 tag fails",
            "sender_device": ALICE_PHONE,
            "recipient_device": BOB_PHONE,
            "envelope": bytes(tampered).hex(),
        },
        {
            "description": "nonce byte flipped",
            "sender_device": ALICE_PHONE,
            "recipient_device": BOB_PHONE,
            "envelope": (bytes([good_env[0] ^ 0x80]) + good_env[1:]).hex(),
        },
        {
            "description": "opened by the wrong recipient (Alice's laptop instead of Bob's phone)",
            "sender_device": ALICE_PHONE,
            "recipient_device": ALICE_LAPTOP,
            "envelope": good_env.hex(),
        },
        {
            "description": "shorter than nonce + tag (39 bytes)",
            "sender_device": ALICE_PHONE,
            "recipient_device": BOB_PHONE,
            "envelope": good_env[:39].hex(),
        },
    ]
    base = {"v": 1, "id": MESSAGE_ID, "from": ALICE, "to": BOB, "sent_at": T0, "kind": "text", "body": "x"}

    def bad_plaintext(description: str, obj: Any) -> dict[str, Any]:
        return {"description": description, "packed_plaintext": pack(obj).hex()}

    bad_plaintexts = [
        bad_plaintext("version 2", {**base, "v": 2}),
        bad_plaintext("v is true, not the integer 1", {**base, "v": True}),
        bad_plaintext("id of 15 bytes", {**base, "id": MESSAGE_ID[:15]}),
        bad_plaintext("body missing", {k: v for k, v in base.items() if k != "body"}),
        bad_plaintext("body is bin, not str", {**base, "body": b"x"}),
        bad_plaintext("from is not a str", {**base, "from": 7}),
        bad_plaintext("sent_at is a str", {**base, "sent_at": "2026-01-01"}),
        bad_plaintext("reply_to is not a 16-byte id", {**base, "reply_to": b"\x00" * 8}),
        bad_plaintext("not a map", ["v", 1]),
        {"description": "not msgpack", "packed_plaintext": "c1"},
        {
            "description": "body twice ('x', then 'y'): a map never holds a key twice (SPEC §3.1)",
            "packed_plaintext": (
                bytes([pack(base)[0] + 1]) + pack(base)[1:] + pack("body") + pack("y")
            ).hex(),
        },
    ]

    message_ids: list[dict[str, Any]] = [
        {
            "description": "T0 + 1234 ms (vector 'send')",
            "now_ms": T0 + 1234,
            "rand": bytes(range(0xF0, 0xFA)).hex(),
        },
        {"description": "T0 + 5678 ms", "now_ms": T0 + 5678, "rand": bytes(range(0x10, 0x1A)).hex()},
        {
            "description": "all-ones random bits: version and variant still forced",
            "now_ms": T0,
            "rand": "ff" * 10,
        },
        {"description": "all-zero random bits, time 0", "now_ms": 0, "rand": "00" * 10},
        {"description": "largest 48-bit time", "now_ms": 2**48 - 1, "rand": "5a" * 10},
    ]
    for m in message_ids:
        mid = crypto.new_message_id(m["now_ms"], bytes.fromhex(m["rand"]))
        m["id"] = mid.hex()
        m["uuid"] = f"{mid[:4].hex()}-{mid[4:6].hex()}-{mid[6:8].hex()}-{mid[8:10].hex()}-{mid[10:].hex()}"

    def ident(k: crypto.DeviceKeys) -> bytes:
        return crypto.device_identity(k.sign_pk, k.box_pk)

    a_keys = [ident(KEYS[ALICE_LAPTOP]), ident(KEYS[ALICE_PHONE])]  # deliberately not sorted
    b_keys = [ident(KEYS[BOB_PHONE])]
    b_new = crypto.DeviceKeys(bytes(range(0xD0, 0xF0)), bytes(range(0xE0, 0x100)))  # Bob's new phone

    def safety(description: str, ua: str, ka: list[bytes], ub: str, kb: list[bytes]) -> dict[str, Any]:
        return {
            "description": description,
            "user_a": ua,
            "keys_a": [k.hex() for k in ka],
            "user_b": ub,
            "keys_b": [k.hex() for k in kb],
            "fingerprint_a": crypto._fingerprint(ua, ka),
            "fingerprint_b": crypto._fingerprint(ub, kb),
            "safety_number": crypto.safety_number(ua, ka, ub, kb),
        }

    safety_numbers = [
        safety("Alice (phone + laptop, keys given unsorted) and Bob (phone)", ALICE, a_keys, BOB, b_keys),
        safety("the same two users seen from Bob's side: the same number", BOB, b_keys, ALICE, a_keys),
        safety(
            "Alice without her laptop: the number changes", ALICE, [ident(KEYS[ALICE_PHONE])], BOB, b_keys
        ),
        safety("Bob's phone keys replaced: the number changes", ALICE, a_keys, BOB, [ident(b_new)]),
        safety(
            "only Bob's box (encryption) key substituted: the number changes",
            ALICE,
            a_keys,
            BOB,
            [crypto.device_identity(KEYS[BOB_PHONE].sign_pk, b_new.box_pk)],
        ),
    ]

    return {
        "description": (
            "MiSS protocol v1 crypto vectors (SPEC.md §5, §6, §8, §9). All byte strings are lowercase hex; "
            "every output is deterministic given the listed inputs (Ed25519 signatures are deterministic, "
            "envelopes use the fixed nonce given, instead of a random one). 'keys' are the test devices: "
            "Ed25519 public keys from 32-byte seeds (RFC 8032), X25519 public keys from 32-byte secrets."
        ),
        "generator": "protocol/vectors/generate.py",
        "protocol": "miss.v1",
        "users": {ALICE: [ALICE_PHONE, ALICE_LAPTOP], BOB: [BOB_PHONE]},
        "keys": keys,
        "auth": {
            "description": "auth_message = b'miss.v1/auth\\x00' || nonce(32) || UTF-8(device); "
            "signature = Ed25519(sign_seed of device, auth_message)",
            "nonce": CHALLENGE_NONCE.hex(),
            "device": ALICE_PHONE,
            "auth_message": auth_msg.hex(),
            "signature": alice.sign(auth_msg).hex(),
        },
        "enroll": {
            "description": "enroll_message = b'miss.v1/enroll\\x00' || nonce(32) || sign_pk(32) "
            "|| box_pk(32) || UTF-8(code exactly as sent); "
            "signature = Ed25519(new device's sign_seed, enroll_message)",
            "nonce": CHALLENGE_NONCE.hex(),
            "device": BOB_PHONE,
            "code": ENROLL_CODE,
            "sign_pk": bob.sign_pk.hex(),
            "box_pk": bob.box_pk.hex(),
            "enroll_message": enroll_msg.hex(),
            "signature": bob.sign(enroll_msg).hex(),
        },
        "envelopes": {
            "description": "packed_plaintext = msgpack map of the plaintext fields (SPEC §6.3): "
            "v = 1, then the keys of 'plaintext' in SPEC order (id and reply_to as bin, here in hex); "
            "envelope = nonce(24) || crypto_box(packed_plaintext, nonce, recipient box_pk, "
            "sender box_secret) (SPEC §6.1). "
            "'invalid' envelopes MUST fail to open; 'invalid_plaintexts' MUST be refused after opening.",
            "valid": envelopes,
            "invalid": bad_envelopes,
            "invalid_plaintexts": bad_plaintexts,
        },
        "message_ids": {
            "description": "new_message_id(now_ms, rand): 6-byte big-endian now_ms || rand(10), then "
            "byte 6 = 0x70 | (byte 6 & 0x0f) and byte 8 = 0x80 | (byte 8 & 0x3f) (UUIDv7, SPEC §9)",
            "vectors": message_ids,
        },
        "attestation": {
            "description": "SPEC §11.1: att = sig(64) || body; body = msgpack ['miss-att', 1, user, "
            "rpps, name, "
            "profession, organisation, [[device, sign_pk, box_pk] sorted by device id], not_before, "
            "not_after]; sig = Ed25519(authority seed, b'miss.v1/attestation\\x00' || body). Valid from "
            "not_before (inclusive) to not_after (exclusive). authority_key_text is the authority public "
            "key as configured and given to clinicians (standard base64, padded); authority_fingerprint "
            "is the first 16 bytes of SHA-256(b'miss.v1/authority\\x00' || authority_pk), in 8 groups of "
            "4 hex digits.",
            "authority_seed": AUTHORITY_SEED.hex(),
            "authority_pk": authority_pk.hex(),
            "authority_key_text": attestation.encode_authority_key(authority_pk),
            "authority_fingerprint": attestation.authority_fingerprint(authority_pk),
            "user": ALICE,
            "rpps": "10101234567",
            "name": "Dr Alice Martin",
            "profession": "Médecin généraliste",
            "organisation": "CHRU de Tours",
            "devices": [
                [d, KEYS[d].sign_pk.hex(), KEYS[d].box_pk.hex()] for d in (ALICE_PHONE, ALICE_LAPTOP)
            ],
            "not_before": T0,
            "not_after": T0 + 365 * DAY_MS,
            "att": alice_att().hex(),
        },
        "safety_numbers": {
            "description": "safety_number(user_a, keys_a, user_b, keys_b) (SPEC §8); each entry of "
            "keys_x is one device's sign_pk || box_pk (64 bytes); fingerprint_x is the 30-digit "
            "fingerprint of one user",
            "vectors": safety_numbers,
        },
        # --- SPEC revision 3 (§13.3, §13.5)
        "sealed_bodies": sealed_bodies_section(),
        "padded_plaintexts": padded_plaintexts_section(),
    }


# --- revision 3: sealed bodies, padding (crypto.json) and teams.json -------------


def plaintext_json(p: crypto.Plaintext) -> dict[str, Any]:
    """A plaintext keyed as on the wire (SPEC §6.3, §13.5), bytes in hex."""
    out: dict[str, Any] = {
        "id": p.id.hex(),
        "from": p.from_user,
        "to": p.to_user,
        "sent_at": p.sent_at,
        "kind": p.kind,
        "body": p.body,
    }
    if p.reply_to is not None:
        out["reply_to"] = p.reply_to.hex()
    if p.head is not None:
        out["head"] = p.head.hex()
    if p.expires_at is not None:
        out["expires_at"] = p.expires_at
    if p.refs is not None:
        out["refs"] = [r.hex() for r in p.refs]
    if p.team is not None:
        out["team"] = p.team
    if p.urgent:
        out["urgent"] = True
    return out


def sealed_bodies_section() -> dict[str, Any]:
    alice, bob = KEYS[ALICE_PHONE], KEYS[BOB_PHONE]
    packed, body = sealed_team_body()
    signed_message = crypto.BODY_CONTEXT + TEAM_MESSAGE_ID + packed
    wraps = []
    for recipient in (BOB_PHONE, ALICE_LAPTOP):
        wrap = crypto.wrap_key(BODY_KEY, alice, KEYS[recipient].box_pk, nonce=ENVELOPE_NONCE)
        assert crypto.unwrap_key(wrap, KEYS[recipient], alice.box_pk) == BODY_KEY
        wraps.append({"recipient_device": recipient, "nonce": ENVELOPE_NONCE.hex(), "wrap": wrap.hex()})
    assert crypto.open_body(body, BODY_KEY, TEAM_MESSAGE_ID, alice.sign_pk) == packed
    valid = [
        {
            "description": "Alice's phone -> the team of teams.json (after 4 records): the plaintext is "
            "padded to 256 bytes, sealed once, and its key wrapped for Bob's phone and Alice's laptop "
            "(vectors 'send_team' and 'deliver_team' of frames.json)",
            "sender_device": ALICE_PHONE,
            "message_id": TEAM_MESSAGE_ID.hex(),
            "key": BODY_KEY.hex(),
            "nonce": BODY_NONCE.hex(),
            "plaintext": plaintext_json(team_plaintext()),
            "pad_to": 256,
            "packed_plaintext": packed.hex(),
            "signed_message": signed_message.hex(),
            "signature": alice.sign(signed_message).hex(),
            "body": body.hex(),
            "wraps": wraps,
        }
    ]
    tampered = bytearray(body)
    tampered[-1] ^= 0x01
    other_text = crypto.pack_plaintext(
        crypto.Plaintext(TEAM_MESSAGE_ID, ALICE, TEAM_ID, T0 + 9000, "text", "Reprendre la warfarine."),
        pad_to=256,
    )
    # Bob knows K: he seals another plaintext under it and the same id, signed by his phone.
    _, forged = crypto.seal_body(other_text, TEAM_MESSAGE_ID, bob, key=BODY_KEY, nonce=BODY_NONCE)
    other_id = crypto.new_message_id(T0 + 9001, bytes(range(0x20, 0x2A)))

    def bad(
        description: str, b: bytes, key: bytes = BODY_KEY, mid: bytes = TEAM_MESSAGE_ID
    ) -> dict[str, Any]:
        try:
            crypto.open_body(b, key, mid, alice.sign_pk)
        except crypto.EnvelopeError:
            pass
        else:  # pragma: no cover - the generator checks its own vectors
            raise AssertionError(description)
        return {
            "description": description,
            "sender_device": ALICE_PHONE,
            "message_id": mid.hex(),
            "key": key.hex(),
            "body": b.hex(),
        }

    invalid = [
        bad("last byte flipped: the Poly1305 tag fails", bytes(tampered)),
        bad("opened under another message id (the associated data differs)", body, mid=other_id),
        bad("opened with another key", body, key=bytes(32)),
        bad("shorter than nonce + signature + tag (103 bytes)", body[:103]),
        bad(
            "insider forgery: Bob, a member who knows K, seals another plaintext under K and the same id; "
            "its signature is Bob's phone's, not Alice's, so it fails when checked as Alice's",
            forged,
        ),
    ]
    bad_wrap = crypto.seal(BODY_KEY[:31], alice, bob.box_pk, nonce=ENVELOPE_NONCE)
    invalid_wraps = [
        {
            "description": "the wrap for Bob's phone opened by Alice's laptop",
            "sender_device": ALICE_PHONE,
            "recipient_device": ALICE_LAPTOP,
            "wrap": wraps[0]["wrap"],
        },
        {
            "description": "an envelope of a 31-byte key (71 bytes): a wrap is 72 bytes",
            "sender_device": ALICE_PHONE,
            "recipient_device": BOB_PHONE,
            "wrap": bad_wrap.hex(),
        },
    ]
    return {
        "description": "SPEC §13.3: signature = Ed25519(sender sign_seed, b'miss.v1/body\\x00' || id || "
        "packed_plaintext) = signed_message's signature; body = nonce(24) || "
        "crypto_aead_xchacha20poly1305_ietf_encrypt(signature || packed_plaintext, ad = "
        "b'miss.v1/body\\x00' || id, nonce, key); each wrap = an envelope (SPEC §6.1) of key from the "
        "sender's box key to the recipient's, with the given nonce (72 bytes). 'invalid' bodies MUST "
        "fail to open (with the sender's sign_pk), 'invalid_wraps' MUST fail to unwrap.",
        "valid": valid,
        "invalid": invalid,
        "invalid_wraps": invalid_wraps,
    }


def padded_plaintexts_section() -> dict[str, Any]:
    read = crypto.Plaintext(
        NOTICE_ID, BOB, ALICE, T0 + 9500, "read", "", refs=(TEAM_MESSAGE_ID, MESSAGE_ID), team=TEAM_ID
    )
    recall = crypto.Plaintext(NOTICE_ID, ALICE, BOB, T0 + 9500, "recall", "", refs=(MESSAGE_ID,))
    long_text = crypto.Plaintext(MESSAGE_ID_2, BOB, ALICE, T0 + 5678, "text", "Oui, RAS. " * 30)
    vectors = []
    for description, p in (
        ("Bob's read notice to Alice about a team message and a 1:1 message", read),
        ("Alice's recall notice for the message of vector 'send'", recall),
        ("a text of 300 characters: padded to 512 bytes", long_text),
        (
            "urgent: Alice's urgent message to a role (SPEC §14.5); 'urgent' comes before 'pad'",
            urgent_plaintext(),
        ),
    ):
        packed = crypto.pack_plaintext(p, pad_to=256)
        vectors.append(
            {
                "description": description,
                "plaintext": plaintext_json(p),
                "pad_to": 256,
                "pad_bytes": len(msgpack.unpackb(packed, raw=False)["pad"]),
                "packed_plaintext": packed.hex(),
            }
        )
    return {
        "description": "SPEC §13.5: the plaintext's keys in order (v, id, from, to, sent_at, kind, body, "
        "reply_to, head, expires_at, refs, team), then 'pad': pad_bytes zero bytes (bin 8), the smallest "
        "count (0-255) that makes the packed length a multiple of pad_to",
        "vectors": vectors,
    }


def state_json(state: teams.TeamState) -> dict[str, Any]:
    return {
        "team": state.team,
        "name": state.name,
        "org": state.org,
        "lifespan": state.lifespan,
        "members": sorted(state.members),
        "admins": sorted(state.admins),
        "seq": state.seq,
        "head": state.head.hex(),
        "closed": state.closed,
    }


def record_json(r: teams.TeamRecord) -> dict[str, Any]:
    """A record keyed as on the wire, in canonical order, bytes as {"bin": hex}."""
    out: dict[str, Any] = jsonable(msgpack.unpackb(teams.pack_record(r), raw=False))
    return out


def chain_json(name: str, team: str, steps: list[tuple[str, teams.SignedRecord, teams.TeamState]]) -> Any:
    return {
        "name": name,
        "team": team,
        "records": [
            {
                "description": description,
                "record": record_json(signed.record()),
                "rec": signed.rec.hex(),
                "sig": signed.sig.hex(),
                "hash": signed.hash().hex(),
                "state": state_json(state),
            }
            for description, signed, state in steps
        ],
    }


def teams_document() -> dict[str, Any]:
    authority_pk = bytes(nacl.signing.SigningKey(AUTHORITY_SEED).verify_key)
    chain = main_chain()
    states = [x[2] for x in chain]
    late = T0 + 400 * DAY_MS  # past Alice's attestation (365 days)

    def invalid(name: str, description: str, after: int, signed: teams.SignedRecord, reason: str) -> Any:
        state = states[after - 1] if after else None
        try:
            teams.apply_record(state, signed, authority_pk, team=TEAM_ID)
        except teams.TeamChainError as exc:
            assert exc.reason == reason, (name, exc)
        else:  # pragma: no cover - the generator checks its own vectors
            raise AssertionError(name)
        return {
            "name": name,
            "description": description,
            "chain": "main",
            "after": after,
            "rec": signed.rec.hex(),
            "sig": signed.sig.hex(),
            "reason": reason,
        }

    # The record that closes the team, for the "after_closed" vector (its 'after' counts it).
    leave = team_record(states[6], "leave", BOB, BOB, T0 + 3 * DAY_MS)
    closed = teams.apply_record(states[6], leave, authority_pk, team=TEAM_ID)
    states.append(closed)
    s1 = chain[1][1]
    add_dan = teams.next_record(
        states[0], "add", DAN, by=ALICE, device=ALICE_PHONE, att=alice_att(), at=T0 + DAY_MS + 1
    )
    bad = [
        invalid(
            "bad_signature",
            "record seq 1 with its signature's last byte flipped",
            1,
            teams.SignedRecord(s1.rec, s1.sig[:-1] + bytes([s1.sig[-1] ^ 1])),
            "bad_signature",
        ),
        invalid(
            "signed_by_another_device",
            "record seq 1 signed by Bob's phone while naming Alice's phone and attestation",
            1,
            teams.sign_record(s1.record(), KEYS[BOB_PHONE]),
            "bad_signature",
        ),
        invalid(
            "broken_prev",
            "Alice adds Dan at seq 1 with prev = 32 zero bytes instead of the hash of record seq 0",
            1,
            teams.sign_record(replace(add_dan, prev=teams.ZERO_HEAD), KEYS[ALICE_PHONE]),
            "broken_chain",
        ),
        invalid(
            "wrong_seq",
            "Alice adds Dan after record seq 0 with seq 2 instead of 1 (prev right)",
            1,
            teams.sign_record(replace(add_dan, seq=2), KEYS[ALICE_PHONE]),
            "broken_chain",
        ),
        invalid(
            "non_admin_add",
            "after 3 records (Alice admin; Bob and Carol members), Bob, not an admin, adds Dan",
            3,
            team_record(states[2], "add", DAN, BOB, T0 + DAY_MS + 500_000),
            "forbidden",
        ),
        invalid(
            "last_admin_leaving",
            "after 3 records, Alice, the only admin, leaves while Bob and Carol remain",
            3,
            team_record(states[2], "leave", ALICE, ALICE, T0 + DAY_MS + 500_000),
            "forbidden",
        ),
        invalid(
            "attestation_not_valid_at_at",
            "after 1 record, Alice adds Bob with 'at' 400 days after T0: her attestation (T0 to T0 + 365 "
            "days) was not valid then",
            1,
            team_record(states[0], "add", BOB, ALICE, late),
            "bad_signature",
        ),
        invalid(
            "create_for_another",
            "Alice creates a team naming Bob as its first admin (only the authority may)",
            0,
            team_record(None, "create", BOB, ALICE, T0 + DAY_MS, team=TEAM_ID, name="X"),
            "forbidden",
        ),
        invalid(
            "after_closed",
            "after the 7 records (Bob, the last member, then leaves: closed), Bob adds Dan",
            8,
            team_record(closed, "add", DAN, BOB, T0 + 3 * DAY_MS + 1),
            "forbidden",
        ),
        invalid(
            "name_with_nul",
            "Alice creates a team named 'Réa\\u0000nuit': a str of a record never holds U+0000 "
            "(as in a frame, SPEC §3.1)",
            0,
            team_record(None, "create", ALICE, ALICE, T0 + DAY_MS, team=TEAM_ID, name="Réa\x00nuit"),
            "malformed",
        ),
        invalid(
            "user_twice",
            "Alice adds Dan at seq 1, the record holding 'user' twice (Dan, then Bob), validly signed: "
            "a map never holds a key twice (SPEC §3.1)",
            1,
            _key_twice(add_dan, "user", BOB),
            "malformed",
        ),
        invalid(
            "unknown_op",
            "op 'rename' is not an operation of SPEC §13.2",
            1,
            teams.sign_record(replace(add_dan, op="rename"), KEYS[ALICE_PHONE]),
            "malformed",
        ),
    ]
    return {
        "description": (
            "MiSS care team chains (SPEC.md §13.2). rec = msgpack map with keys in the order v, team, "
            "seq, prev, op, user, by, device, at, name, org, lifespan, att (absent ones omitted); sig = "
            "Ed25519(b'miss.v1/team\\x00' || rec) by the device named (its sign_pk from crypto.json keys) "
            "or by the authority key when by = 'authority'; hash = BLAKE2b-256(rec || sig); 'state' is the "
            "team after the record (members and admins sorted; seq = number of records; head = hash of the "
            "last). Each 'invalid' record MUST be refused, with the reason given, when applied after the "
            "first 'after' records of the named chain ('after' 8: the 7 records then 'closing_record'). "
            "Attestations are from authority_pk; Bob's is 'bob_att', Alice's is crypto.json attestation.att."
        ),
        "generator": "protocol/vectors/generate.py",
        "protocol": "miss.v1",
        "context": teams.TEAM_CONTEXT.hex(),
        "authority_pk": authority_pk.hex(),
        "bob_att": bob_att().hex(),
        "chains": [
            chain_json("main", TEAM_ID, chain),
            chain_json("authority", AUTHORITY_TEAM_ID, authority_chain()),
        ],
        "closing_record": {
            "description": "Bob, the last member, leaves after the 7 records of chain 'main': "
            "the team is closed",
            "rec": leave.rec.hex(),
            "sig": leave.sig.hex(),
            "hash": leave.hash().hex(),
            "state": state_json(closed),
        },
        "invalid": bad,
    }


# --- revision 4: oncall.json (SPEC §14.2) ---------------------------------------------


def oncall_document() -> dict[str, Any]:
    sent_at = T0 + 12_000
    one_step = oncall.Policy(60_000, (oncall.Step(60_000, user=DAN),), 60_000)
    five = oncall.Policy(100, tuple(oncall.Step(100, user=f"u_{i}") for i in range(5)), 100)
    valid = []
    for description, policy, min_ms, max_steps in (
        ("the role of frames.json vector 'role_ok': a role step, then a user step", ROLE_POLICY, 60_000, 3),
        ("the deployment default: no step", oncall.Policy(120_000, (), 600_000), 60_000, 3),
        ("every value at the hub's default floor", one_step, 60_000, 3),
        ("the protocol's bounds: 5 steps of 100 ms", five, 100, 5),
        (
            "the protocol's ceiling",
            oncall.Policy(oncall.MAX_ESCALATION_MS, (), oncall.MAX_ESCALATION_MS),
            60_000,
            3,
        ),
    ):
        policy.check(min_ms, max_steps)
        valid.append(
            {
                "description": description,
                "policy": policy.to_map(with_holders=False),
                "packed": oncall.pack_policy(policy).hex(),
                "min_ms": min_ms,
                "max_steps": max_steps,
                "deadlines": policy.deadlines(sent_at),
            }
        )
    out_of_bounds = "policy_out_of_bounds"
    invalid: list[dict[str, Any]] = []
    for description, m, min_ms, max_steps in (
        ("interval below the hub's floor", {"interval": 59_999, "steps": [], "final": 600_000}, 60_000, 3),
        (
            "a delay below the hub's floor",
            {**ROLE_POLICY.to_map(False), "steps": [{"delay": 1_000, "user": DAN}]},
            60_000,
            3,
        ),
        ("final above MAX_ESCALATION_MS", {"interval": 60_000, "steps": [], "final": 86_400_001}, 60_000, 3),
        (
            "below the protocol's floor, whatever the hub says",
            {"interval": 99, "steps": [], "final": 100},
            0,
            3,
        ),
        ("more steps than the hub allows", five.to_map(False), 100, 3),
        (
            "more steps than the protocol allows, whatever the hub says",
            {**five.to_map(False), "steps": five.to_map(False)["steps"] * 2},
            100,
            99,
        ),
    ):
        error = out_of_bounds
        try:
            oncall.Policy.from_map(m).check(min_ms, max_steps)
        except errors.PolicyOutOfBounds:
            pass
        except errors.MalformedFrame:
            error = "malformed_frame"
        else:
            raise AssertionError(description)
        invalid.append(
            {
                "description": description,
                "policy": m,
                "min_ms": min_ms,
                "max_steps": max_steps,
                "error": error,
            }
        )
    for description, m in (
        (
            "a step with both role and user",
            {"interval": 60_000, "steps": [{"delay": 60_000, "role": ROLE_ID, "user": DAN}], "final": 60_000},
        ),
        ("a step with neither", {"interval": 60_000, "steps": [{"delay": 60_000}], "final": 60_000}),
        (
            "a step's role is not a role id",
            {"interval": 60_000, "steps": [{"delay": 60_000, "role": DAN}], "final": 60_000},
        ),
        ("no final", {"interval": 60_000, "steps": []}),
        ("a negative interval", {"interval": -1, "steps": [], "final": 60_000}),
    ):
        try:
            oncall.Policy.from_map(m)
        except errors.MalformedFrame:
            pass
        else:
            raise AssertionError(description)
        invalid.append(
            {
                "description": description,
                "policy": m,
                "min_ms": 60_000,
                "max_steps": 3,
                "error": "malformed_frame",
            }
        )
    overrides = []
    for urgent in (Urgent(), Urgent(interval=60_000), Urgent(final=300_000), Urgent(60_000, 300_000)):
        p = ROLE_POLICY.with_override(urgent.interval, urgent.final)
        overrides.append(
            {
                "policy": ROLE_POLICY.to_map(False),
                "urgent": urgent.to_map(),
                "result": p.to_map(False),
                "deadlines": p.deadlines(sent_at),
            }
        )
    return {
        "description": (
            "SPEC §14.2: escalation policies. 'valid': a policy (store form: steps without holders), its "
            "canonical msgpack 'packed', the hub's bounds it passes (min_ms: escalation_min_interval_ms, "
            "max_steps: escalation_max_steps), and 'deadlines' for a send at sent_at: the release time of "
            "steps 1..n, then the final deadline (each the previous plus a delay; the first from sent_at). "
            "'invalid': a policy map and the error a hub answers with those bounds (policy_out_of_bounds) or "
            "a decoder raises (malformed_frame). 'overrides': send.urgent replaces interval and/or final, "
            "never steps."
        ),
        "generator": "protocol/vectors/generate.py",
        "protocol": "miss.v1",
        "sent_at": sent_at,
        "min_escalation_ms": oncall.MIN_ESCALATION_MS,
        "max_escalation_ms": oncall.MAX_ESCALATION_MS,
        "max_escalation_steps": oncall.MAX_ESCALATION_STEPS,
        "valid": valid,
        "invalid": invalid,
        "overrides": overrides,
    }


def write(name: str, document: dict[str, Any]) -> None:
    path = HERE / name
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def main() -> None:
    write("frames.json", frames_document())
    write("crypto.json", crypto_document())
    write("teams.json", teams_document())
    write("oncall.json", oncall_document())
    from protocol.vectors import generate_attachments, generate_notices

    generate_attachments.main()
    generate_notices.main()


if __name__ == "__main__":
    main()
