"""Reproduce every test vector in ``protocol/vectors/*.json`` byte for byte.

The vectors are what keeps the browser client and any other implementation
byte-compatible with this one (SPEC.md §3, §5, §6, §8, §9). Each value is
recomputed here from the inputs stored in the JSON, through the ``protocol``
package; ``generate.py`` is never called. Where SPEC.md gives a formula, the
test also recomputes the value from that formula, so the document and the
code cannot drift apart.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from pathlib import Path
from typing import Any

import msgpack
import nacl.bindings
import nacl.signing
import pytest

import protocol
from protocol import attestation, crypto, errors, oncall, teams
from protocol.frames import (
    CLIENT_FRAMES,
    SERVER_FRAMES,
    STATUSES,
    Ack,
    ChainEntry,
    DeviceEntry,
    DeviceInfo,
    DevicesOk,
    Error,
    Frame,
    LookupOk,
    Presence,
    Refusal,
    RoleInfo,
    RoleOk,
    RoleSearchOk,
    Send,
    TeamChainOk,
    TeamHead,
    TeamsOk,
    Urgent,
    Watching,
    decode,
    encode,
)
from protocol.session import ServerSession, State

PROTOCOL_DIR = Path(protocol.__file__).resolve().parent
VECTORS = PROTOCOL_DIR / "vectors"
FRAMES = json.loads((VECTORS / "frames.json").read_text(encoding="utf-8"))
CRYPTO = json.loads((VECTORS / "crypto.json").read_text(encoding="utf-8"))
TEAMS = json.loads((VECTORS / "teams.json").read_text(encoding="utf-8"))
ONCALL = json.loads((VECTORS / "oncall.json").read_text(encoding="utf-8"))
FRAME_TYPES: dict[str, type[Frame]] = {cls.TYPE: cls for cls in CLIENT_FRAMES + SERVER_FRAMES}
ALLOWED_BY_DIRECTION = {"client": CLIENT_FRAMES, "server": SERVER_FRAMES, "any": None}
KEYS = {k["device"]: k for k in CRYPTO["keys"]}


def from_json(value: Any) -> Any:
    """JSON vector value -> wire value ({"bin": hex} -> bytes)."""
    if isinstance(value, dict):
        if set(value) == {"bin"}:
            return bytes.fromhex(value["bin"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def build_frame(frame_type: str, fields: dict[str, Any]) -> Frame:
    """Build the dataclass from wire keys, without going through decode."""
    cls = FRAME_TYPES[frame_type]
    wire_keys = {key: attr for attr, key, _ in cls.WIRE}
    assert set(fields) <= set(wire_keys), f"vector has keys {set(fields) - set(wire_keys)} unknown to {cls}"
    kwargs: dict[str, Any] = {}
    for key, raw in fields.items():
        value = from_json(raw)
        if cls is LookupOk and key == "devices":
            value = tuple(DeviceInfo(**d) for d in value)
        elif cls is Watching and key == "presence":
            value = tuple(Presence(**d) for d in value)
        elif cls is DevicesOk and key == "devices":
            value = tuple(DeviceEntry(**d) for d in value)
        elif cls is Ack and key == "refused":
            value = tuple(Refusal(**d) for d in value)
        elif cls is TeamsOk and key == "teams":
            value = tuple(TeamHead(**d) for d in value)
        elif cls is TeamChainOk and key == "recs":
            value = tuple(ChainEntry(**d) for d in value)
        elif cls is RoleSearchOk and key == "roles":
            value = tuple(role_info(d) for d in value)
        elif cls is RoleOk and key == "info":
            value = role_info(value)
        elif cls is Send and key == "urgent":
            value = Urgent(value.get("interval"), value.get("final"))
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[wire_keys[key]] = value
    return cls(**kwargs)


def role_info(d: dict[str, Any]) -> RoleInfo:
    """A RoleInfo from its JSON map, built field by field (not via decode)."""
    steps = tuple(
        oncall.Step(s["delay"], s.get("role"), s.get("user"), tuple(s["holders"]))
        for s in d["policy"]["steps"]
    )
    policy = oncall.Policy(d["policy"]["interval"], steps, d["policy"]["final"])
    return RoleInfo(d["role"], d["name"], d["org"], d["reserved"], tuple(d["holders"]), policy)


def device_keys(device: str) -> crypto.DeviceKeys:
    k = KEYS[device]
    return crypto.DeviceKeys(bytes.fromhex(k["sign_seed"]), bytes.fromhex(k["box_secret"]))


def ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v.get("name") or v["description"][:40] for v in vectors]


# --- the files themselves -------------------------------------------------------


def test_files_describe_themselves() -> None:
    for doc in (FRAMES, CRYPTO, TEAMS, ONCALL):
        assert doc["protocol"] == protocol.SUBPROTOCOL
        assert doc["description"]
    every = (
        FRAMES["valid"] + FRAMES["invalid"] + CRYPTO["envelopes"]["valid"] + CRYPTO["message_ids"]["vectors"]
    )
    assert all(v["description"] for v in every)
    names = [v["name"] for v in FRAMES["valid"] + FRAMES["invalid"]]
    assert len(names) == len(set(names))


def test_every_frame_type_has_a_vector() -> None:
    assert {v["type"] for v in FRAMES["valid"]} == set(FRAME_TYPES)
    error_keys = set().union(*(v["fields"] for v in FRAMES["valid"] if v["type"] == "error"))
    assert {"id", "rid", "retry_after", "missing"} <= error_keys
    assert any(v["fields"]["devices"] for v in FRAMES["valid"] if v["type"] == "lookup_ok")
    # nested presence maps: a list of two, and an empty list
    assert {len(v["fields"]["presence"]) for v in FRAMES["valid"] if v["type"] == "watching"} >= {0, 2}
    statuses = {v["fields"]["status"] for v in FRAMES["valid"] if v["type"] in ("set_status", "presence")}
    statuses |= {
        p["status"] for v in FRAMES["valid"] if v["type"] == "watching" for p in v["fields"]["presence"]
    }
    assert statuses == set(STATUSES), "every status value appears in a vector"
    # SPEC revision 2: every optional key it added appears in a vector.
    added = {("challenge", "authority"), ("challenge", "caps"), ("auth", "caps"), ("enroll", "caps")}
    added |= {("ack", "refused")}
    assert added <= {(v["type"], k) for v in FRAMES["valid"] for k in v["fields"]}
    # SPEC revision 3 (§13.4): the optional keys of send and deliver.
    added = {("send", "body"), ("send", "head"), ("send", "ttl"), ("deliver", "body"), ("deliver", "team")}
    assert added <= {(v["type"], k) for v in FRAMES["valid"] for k in v["fields"]}
    codes = {v["fields"]["code"] for v in FRAMES["valid"] if v["type"] == "error"}
    assert {"too_many_devices", "not_verified", "team_changed", "team_conflict"} <= codes
    # SPEC revision 4 (§14.3, §14.5): the optional keys of send, deliver and error.
    added = {("send", "urgent"), ("deliver", "role"), ("deliver", "urgent"), ("deliver", "step")}
    added |= {("error", "role"), ("role_search", "mine"), ("role_take", "join")}
    added |= {("urgent_status", k) for k in ("user", "device", "target")}
    assert added <= {(v["type"], k) for v in FRAMES["valid"] for k in v["fields"]}
    assert {"role_vacant", "not_recipient"} <= codes
    states = {v["fields"]["state"] for v in FRAMES["valid"] if v["type"] == "urgent_status"}
    assert states == {"escalated", "acknowledged", "unacknowledged"}
    # SPEC revision 6 (§16.4): the optional keys of send, welcome and blob_begin, every new error.
    added = {("send", "blobs"), ("welcome", "att_max"), ("welcome", "blob_max"), ("blob_begin", "blob")}
    assert added <= {(v["type"], k) for v in FRAMES["valid"] for k in v["fields"]}
    assert {"blob_too_large", "blob_quota", "unknown_blob", "blob_offset", "blob_incomplete"} <= codes
    assert "too_many_attachments" in {v["fields"]["code"] for v in FRAMES["valid"] if v["type"] == "error"}
    assert {v["error"] for v in FRAMES["invalid"]} == {"malformed_frame", "unknown_frame_type"}


# --- frames.json -------------------------------------------------------------------


@pytest.mark.parametrize("vector", FRAMES["valid"], ids=ids(FRAMES["valid"]))
def test_valid_frame_vector(vector: dict[str, Any]) -> None:
    expected = bytes.fromhex(vector["msgpack"])
    frame = build_frame(vector["type"], vector["fields"])

    assert encode(frame) == expected
    assert decode(expected) == frame
    direction = CLIENT_FRAMES if vector["direction"] == "client->hub" else SERVER_FRAMES
    assert decode(expected, direction) == frame
    # Canonical = "t" first, then the keys in the order the vector lists them,
    # each in msgpack's shortest form: a generic packer must agree.
    wire_map = {"t": vector["type"], **from_json(vector["fields"])}
    assert msgpack.packb(wire_map, use_bin_type=True) == expected
    assert list(msgpack.unpackb(expected, raw=False)) == ["t", *vector["fields"]]


@pytest.mark.parametrize("vector", FRAMES["invalid"], ids=ids(FRAMES["invalid"]))
def test_invalid_frame_vector(vector: dict[str, Any]) -> None:
    expected = errors.error_class(vector["error"])
    assert expected is not errors.ProtocolError
    with pytest.raises(errors.FatalError) as caught:
        decode(bytes.fromhex(vector["msgpack"]), ALLOWED_BY_DIRECTION[vector["decode_as"]])
    assert type(caught.value) is expected
    assert caught.value.code == vector["error"]


@pytest.mark.parametrize(
    "vector", [v for v in FRAMES["invalid"] if v["decode_as"] == "client"], ids=lambda v: v["name"]
)
def test_hub_session_refuses_invalid_client_vectors(vector: dict[str, Any]) -> None:
    session = ServerSession()
    with pytest.raises(errors.FatalError) as caught:
        session.receive(bytes.fromhex(vector["msgpack"]))
    assert caught.value.code == vector["error"]
    assert session.state is State.CLOSED


def test_frame_vectors_use_the_crypto_vectors() -> None:
    by_name = {v["name"]: v for v in FRAMES["valid"]}
    assert by_name["challenge"]["fields"]["nonce"]["bin"] == CRYPTO["auth"]["nonce"]
    assert by_name["auth"]["fields"]["sig"]["bin"] == CRYPTO["auth"]["signature"]
    assert by_name["enroll"]["fields"]["sig"]["bin"] == CRYPTO["enroll"]["signature"]
    assert by_name["deliver"]["fields"]["env"]["bin"] == CRYPTO["envelopes"]["valid"][0]["envelope"]
    assert by_name["send"]["fields"]["id"]["bin"] == CRYPTO["message_ids"]["vectors"][0]["id"]
    # Revision 3: the team frames carry the sealed body, wraps and records of the other files.
    sealed = CRYPTO["sealed_bodies"]["valid"][0]
    wraps = {w["recipient_device"]: w["wrap"] for w in sealed["wraps"]}
    for name in ("send_team", "deliver_team"):
        assert by_name[name]["fields"]["body"]["bin"] == sealed["body"]
        assert by_name[name]["fields"]["id"]["bin"] == sealed["message_id"]
    assert {d: e["bin"] for d, e in by_name["send_team"]["fields"]["envs"].items()} == wraps
    main = TEAMS["chains"][0]["records"]
    assert by_name["send_team"]["fields"]["head"]["bin"] == main[3]["hash"] == sealed["plaintext"]["head"]
    assert by_name["team_change"]["fields"]["rec"]["bin"] == main[1]["rec"]
    assert by_name["team_ok"]["fields"]["head"]["bin"] == main[1]["hash"]
    assert [r["rec"]["bin"] for r in by_name["team_chain_ok"]["fields"]["recs"]] == [
        x["rec"] for x in main[:2]
    ]


# --- crypto.json: keys and signatures ----------------------------------------------------


@pytest.mark.parametrize("key", CRYPTO["keys"], ids=lambda k: k["device"])
def test_key_vector(key: dict[str, str]) -> None:
    keys = device_keys(key["device"])
    assert keys.sign_pk.hex() == key["sign_pk"]
    assert keys.box_pk.hex() == key["box_pk"]


def test_auth_vector() -> None:
    v = CRYPTO["auth"]
    nonce = bytes.fromhex(v["nonce"])
    message = crypto.auth_message(nonce, v["device"])
    assert message.hex() == v["auth_message"]
    assert message == b"miss.v1/auth\x00" + nonce + v["device"].encode("utf-8")  # SPEC §5.2
    keys = device_keys(v["device"])
    assert keys.sign(message).hex() == v["signature"]
    assert crypto.verify_signature(keys.sign_pk, message, bytes.fromhex(v["signature"]))

    # The vector's auth frame authenticates on a session holding the vector's nonce.
    auth_frame = next(f for f in FRAMES["valid"] if f["name"] == "auth")
    session = ServerSession(nonce=nonce)
    frame = session.receive(bytes.fromhex(auth_frame["msgpack"]))
    user = next(u for u, devices in CRYPTO["users"].items() if v["device"] in devices)
    session.authenticate(frame, user, keys.sign_pk)  # type: ignore[arg-type]
    assert (session.state, session.user_id, session.device_id) == (State.AUTHENTICATED, user, v["device"])


def test_enroll_vector() -> None:
    v = CRYPTO["enroll"]
    nonce, sign_pk, box_pk = (bytes.fromhex(v[k]) for k in ("nonce", "sign_pk", "box_pk"))
    keys = device_keys(v["device"])
    assert (keys.sign_pk, keys.box_pk) == (sign_pk, box_pk)
    message = crypto.enroll_message(nonce, v["code"], sign_pk, box_pk)
    assert message.hex() == v["enroll_message"]
    # SPEC §5.1
    assert message == b"miss.v1/enroll\x00" + nonce + sign_pk + box_pk + v["code"].encode("utf-8")
    assert keys.sign(message).hex() == v["signature"]

    enroll_frame = next(f for f in FRAMES["valid"] if f["name"] == "enroll")
    session = ServerSession(nonce=nonce)
    frame = session.receive(bytes.fromhex(enroll_frame["msgpack"]))
    session.check_enroll(frame)  # type: ignore[arg-type]
    assert session.state is State.CHALLENGED  # bound only once the hub has consumed the code


# --- crypto.json: envelopes and plaintexts -------------------------------------------------


def plaintext_of(fields: dict[str, Any]) -> crypto.Plaintext:
    def hex_or_none(key: str) -> bytes | None:
        return bytes.fromhex(fields[key]) if key in fields else None

    return crypto.Plaintext(
        id=bytes.fromhex(fields["id"]),
        from_user=fields["from"],
        to_user=fields["to"],
        sent_at=fields["sent_at"],
        kind=fields["kind"],
        body=fields["body"],
        reply_to=hex_or_none("reply_to"),
        head=hex_or_none("head"),
        expires_at=fields.get("expires_at"),
        refs=tuple(bytes.fromhex(r) for r in fields["refs"]) if "refs" in fields else None,
        team=fields.get("team"),
        urgent=fields.get("urgent", False),
    )


#: SPEC §6.3 and §13.5: the plaintext's keys in order, after "v" (then "pad").
PLAINTEXT_ORDER = [
    "id",
    "from",
    "to",
    "sent_at",
    "kind",
    "body",
    "reply_to",
    "head",
    "expires_at",
    "refs",
    "team",
    "urgent",
]


def plaintext_wire(fields: dict[str, Any]) -> dict[str, Any]:
    """The vector's plaintext as wire values (hex -> bytes), in its order."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if k in ("id", "reply_to", "head"):
            v = bytes.fromhex(v)
        elif k == "refs":
            v = [bytes.fromhex(r) for r in v]
        out[k] = v
    assert list(out) == [k for k in PLAINTEXT_ORDER if k in out]
    return {"v": 1, **out}


@pytest.mark.parametrize("vector", CRYPTO["envelopes"]["valid"], ids=ids(CRYPTO["envelopes"]["valid"]))
def test_envelope_vector(vector: dict[str, Any]) -> None:
    sender, recipient = device_keys(vector["sender_device"]), device_keys(vector["recipient_device"])
    nonce = bytes.fromhex(vector["nonce"])
    plaintext = plaintext_of(vector["plaintext"])
    packed = crypto.pack_plaintext(plaintext)
    assert packed.hex() == vector["packed_plaintext"]

    envelope = crypto.seal(packed, sender, recipient.box_pk, nonce=nonce)
    assert envelope.hex() == vector["envelope"]
    assert envelope[:24] == nonce  # SPEC §6.1 layout: nonce || ciphertext(len + 16)
    assert len(envelope) == 24 + 16 + len(packed)

    assert crypto.open_envelope(envelope, recipient, sender.box_pk) == packed
    assert crypto.unpack_plaintext(packed) == plaintext
    # SPEC §6.3: the vector's keys are the wire keys, in the table's order after "v".
    wire = {k: bytes.fromhex(v) if k in ("id", "reply_to") else v for k, v in vector["plaintext"].items()}
    spec_order = ["id", "from", "to", "sent_at", "kind", "body", "reply_to"]
    assert list(wire) == [k for k in spec_order if k in wire]
    assert msgpack.packb({"v": 1, **wire}, use_bin_type=True) == packed


@pytest.mark.parametrize("vector", CRYPTO["envelopes"]["invalid"], ids=ids(CRYPTO["envelopes"]["invalid"]))
def test_invalid_envelope_vector(vector: dict[str, Any]) -> None:
    sender, recipient = device_keys(vector["sender_device"]), device_keys(vector["recipient_device"])
    with pytest.raises(crypto.EnvelopeError):
        crypto.open_envelope(bytes.fromhex(vector["envelope"]), recipient, sender.box_pk)


@pytest.mark.parametrize(
    "vector", CRYPTO["envelopes"]["invalid_plaintexts"], ids=ids(CRYPTO["envelopes"]["invalid_plaintexts"])
)
def test_invalid_plaintext_vector(vector: dict[str, Any]) -> None:
    with pytest.raises(crypto.EnvelopeError):
        crypto.unpack_plaintext(bytes.fromhex(vector["packed_plaintext"]))


# --- crypto.json: sealed bodies and padding (SPEC §13.3, §13.5) --------------------------------


SEALED = CRYPTO["sealed_bodies"]


@pytest.mark.parametrize("vector", SEALED["valid"], ids=ids(SEALED["valid"]))
def test_sealed_body_vector(vector: dict[str, Any]) -> None:
    sender = device_keys(vector["sender_device"])
    mid, key, nonce = (bytes.fromhex(vector[k]) for k in ("message_id", "key", "nonce"))
    plaintext = plaintext_of(vector["plaintext"])
    packed = crypto.pack_plaintext(plaintext, pad_to=vector["pad_to"])
    assert packed.hex() == vector["packed_plaintext"] and len(packed) % vector["pad_to"] == 0
    assert crypto.unpack_plaintext(packed) == plaintext
    pad = msgpack.unpackb(packed, raw=False)["pad"]
    assert msgpack.packb({**plaintext_wire(vector["plaintext"]), "pad": pad}, use_bin_type=True) == packed

    k, body = crypto.seal_body(packed, mid, sender, key=key, nonce=nonce)
    assert (k, body.hex()) == (key, vector["body"])
    # SPEC §13.3, from the formula, with libsodium's calls.
    signed = b"miss.v1/body\x00" + mid + packed
    assert signed.hex() == vector["signed_message"]
    sig = sender.sign(signed)
    assert sig.hex() == vector["signature"]
    aead = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        sig + packed, b"miss.v1/body\x00" + mid, nonce, key
    )
    assert nonce + aead == body and len(body) == 24 + 64 + len(packed) + 16
    assert crypto.open_body(body, key, mid, sender.sign_pk) == packed

    for w in vector["wraps"]:
        recipient = device_keys(w["recipient_device"])
        wrap = crypto.wrap_key(key, sender, recipient.box_pk, nonce=bytes.fromhex(w["nonce"]))
        assert wrap.hex() == w["wrap"] and len(wrap) == 72
        assert wrap == crypto.seal(key, sender, recipient.box_pk, nonce=bytes.fromhex(w["nonce"]))
        assert crypto.unwrap_key(wrap, recipient, sender.box_pk) == key


@pytest.mark.parametrize("vector", SEALED["invalid"], ids=ids(SEALED["invalid"]))
def test_invalid_sealed_body_vector(vector: dict[str, Any]) -> None:
    sender = device_keys(vector["sender_device"])
    mid, key, body = (bytes.fromhex(vector[k]) for k in ("message_id", "key", "body"))
    with pytest.raises(crypto.EnvelopeError):
        crypto.open_body(body, key, mid, sender.sign_pk)


@pytest.mark.parametrize("vector", SEALED["invalid_wraps"], ids=ids(SEALED["invalid_wraps"]))
def test_invalid_wrap_vector(vector: dict[str, Any]) -> None:
    sender, recipient = device_keys(vector["sender_device"]), device_keys(vector["recipient_device"])
    with pytest.raises(crypto.EnvelopeError):
        crypto.unwrap_key(bytes.fromhex(vector["wrap"]), recipient, sender.box_pk)


PADDED = CRYPTO["padded_plaintexts"]["vectors"]


@pytest.mark.parametrize("vector", PADDED, ids=ids(PADDED))
def test_padded_plaintext_vector(vector: dict[str, Any]) -> None:
    plaintext = plaintext_of(vector["plaintext"])
    packed = crypto.pack_plaintext(plaintext, pad_to=vector["pad_to"])
    assert packed.hex() == vector["packed_plaintext"]
    assert crypto.unpack_plaintext(packed) == plaintext
    # SPEC §13.5: "pad" last, n zero bytes, the smallest n making a multiple of pad_to.
    wire = plaintext_wire(vector["plaintext"])
    n = vector["pad_bytes"]
    assert 0 <= n < 256
    assert msgpack.packb({**wire, "pad": bytes(n)}, use_bin_type=True) == packed
    assert len(packed) % vector["pad_to"] == 0
    assert all(len(msgpack.packb({**wire, "pad": bytes(m)}, use_bin_type=True)) % 256 for m in range(n))


# --- teams.json (SPEC §13.2) ---------------------------------------------------------------------

TEAM_AUTHORITY_PK = bytes.fromhex(TEAMS["authority_pk"])
CHAINS = {c["name"]: c for c in TEAMS["chains"]}


def test_teams_file_uses_the_crypto_vectors() -> None:
    assert TEAMS["authority_pk"] == CRYPTO["attestation"]["authority_pk"]
    assert bytes.fromhex(TEAMS["context"]) == b"miss.v1/team\x00" == teams.TEAM_CONTEXT
    ops = {r["record"]["op"] for c in TEAMS["chains"] for r in c["records"]}
    assert ops == set(teams.OPS)
    assert {r["record"]["by"] for r in CHAINS["authority"]["records"]} == {"authority"}
    reasons = {v["reason"] for v in TEAMS["invalid"]}
    assert reasons == set(teams.REASONS)


def _signer_pk(record: dict[str, Any]) -> bytes:
    if record["by"] == "authority":
        return TEAM_AUTHORITY_PK
    return bytes.fromhex(KEYS[record["device"]]["sign_pk"])


@pytest.mark.parametrize("chain", TEAMS["chains"], ids=lambda c: c["name"])
def test_team_chain_vector(chain: dict[str, Any]) -> None:
    state: teams.TeamState | None = None
    signed_records = []
    for entry in chain["records"]:
        rec, sig = bytes.fromhex(entry["rec"]), bytes.fromhex(entry["sig"])
        # The record's bytes from its fields, in the listed (canonical) order.
        fields = from_json(entry["record"])
        assert msgpack.packb(fields, use_bin_type=True) == rec
        assert list(fields) == [k for k in teams._KEYS if k in fields]
        record = teams.unpack_record(rec)
        assert teams.pack_record(record) == rec
        # SPEC §13.2 formulas: the signature and the hash.
        assert crypto.verify_signature(_signer_pk(entry["record"]), b"miss.v1/team\x00" + rec, sig)
        assert hashlib.blake2b(rec + sig, digest_size=32).hexdigest() == entry["hash"]
        signed = teams.SignedRecord(rec, sig)
        assert signed.hash().hex() == entry["hash"]
        state = teams.apply_record(state, signed, TEAM_AUTHORITY_PK, team=chain["team"])
        want = entry["state"]
        assert (state.team, state.name, state.org, state.lifespan) == (
            want["team"],
            want["name"],
            want["org"],
            want["lifespan"],
        )
        assert (sorted(state.members), sorted(state.admins)) == (want["members"], want["admins"])
        assert (state.seq, state.head.hex(), state.closed) == (want["seq"], want["head"], want["closed"])
        signed_records.append(signed)
    assert teams.verify_chain(signed_records, TEAM_AUTHORITY_PK, chain["team"]) == state


def test_team_closing_record_vector() -> None:
    main = [
        teams.SignedRecord(bytes.fromhex(r["rec"]), bytes.fromhex(r["sig"]))
        for r in CHAINS["main"]["records"]
    ]
    closing = TEAMS["closing_record"]
    main.append(teams.SignedRecord(bytes.fromhex(closing["rec"]), bytes.fromhex(closing["sig"])))
    state = teams.verify_chain(main, TEAM_AUTHORITY_PK, CHAINS["main"]["team"])
    assert (
        state.closed and not state.members and state.head.hex() == closing["hash"] == closing["state"]["head"]
    )


@pytest.mark.parametrize("vector", TEAMS["invalid"], ids=ids(TEAMS["invalid"]))
def test_invalid_team_record_vector(vector: dict[str, Any]) -> None:
    chain = CHAINS[vector["chain"]]
    prefix = [teams.SignedRecord(bytes.fromhex(r["rec"]), bytes.fromhex(r["sig"])) for r in chain["records"]]
    closing = TEAMS["closing_record"]
    prefix.append(teams.SignedRecord(bytes.fromhex(closing["rec"]), bytes.fromhex(closing["sig"])))
    state: teams.TeamState | None = None
    for signed in prefix[: vector["after"]]:
        state = teams.apply_record(state, signed, TEAM_AUTHORITY_PK, team=chain["team"])
    bad = teams.SignedRecord(bytes.fromhex(vector["rec"]), bytes.fromhex(vector["sig"]))
    with pytest.raises(teams.TeamChainError) as caught:
        teams.apply_record(state, bad, TEAM_AUTHORITY_PK, team=chain["team"])
    assert caught.value.reason == vector["reason"]
    # And the whole chain ending with it is refused.
    with pytest.raises(teams.TeamChainError):
        teams.verify_chain([*prefix[: vector["after"]], bad], TEAM_AUTHORITY_PK, chain["team"])


# --- crypto.json: message ids and safety numbers ---------------------------------------------


@pytest.mark.parametrize(
    "vector", CRYPTO["message_ids"]["vectors"], ids=ids(CRYPTO["message_ids"]["vectors"])
)
def test_message_id_vector(vector: dict[str, Any]) -> None:
    rand = bytes.fromhex(vector["rand"])
    message_id = crypto.new_message_id(vector["now_ms"], rand)
    assert message_id.hex() == vector["id"]
    # SPEC §9, from the formula.
    b = bytearray(vector["now_ms"].to_bytes(6, "big") + rand)
    b[6] = 0x70 | (b[6] & 0x0F)
    b[8] = 0x80 | (b[8] & 0x3F)
    assert bytes(b) == message_id
    as_uuid = uuid.UUID(bytes=message_id)
    assert str(as_uuid) == vector["uuid"]
    assert as_uuid.version == 7 and as_uuid.variant == uuid.RFC_4122
    assert crypto.message_id_time_ms(message_id) == vector["now_ms"]


def spec_fingerprint(user_id: str, identities: list[bytes]) -> str:
    """SPEC.md §8, step by step (each identity is sign_pk || box_pk)."""
    uid = user_id.encode("utf-8")
    digest = hashlib.sha512(
        b"miss.v1/safety\x00" + len(uid).to_bytes(2, "big") + uid + b"".join(sorted(identities))
    ).digest()
    return "".join(f"{int.from_bytes(digest[i : i + 5], 'big') % 100_000:05d}" for i in range(0, 30, 5))


@pytest.mark.parametrize(
    "vector", CRYPTO["safety_numbers"]["vectors"], ids=ids(CRYPTO["safety_numbers"]["vectors"])
)
def test_safety_number_vector(vector: dict[str, Any]) -> None:
    keys_a = [bytes.fromhex(k) for k in vector["keys_a"]]
    keys_b = [bytes.fromhex(k) for k in vector["keys_b"]]
    assert all(len(k) == 64 for k in keys_a + keys_b)  # both public keys of each device
    number = crypto.safety_number(vector["user_a"], keys_a, vector["user_b"], keys_b)
    assert number == vector["safety_number"]
    fa, fb = spec_fingerprint(vector["user_a"], keys_a), spec_fingerprint(vector["user_b"], keys_b)
    assert (fa, fb) == (vector["fingerprint_a"], vector["fingerprint_b"])
    digits = fa + fb if vector["user_a"].encode() <= vector["user_b"].encode() else fb + fa
    assert number == " ".join(digits[i : i + 5] for i in range(0, 60, 5))


def test_attestation_vector() -> None:
    """SPEC §11.1, recomputed from the spec's words with plain msgpack and
    PyNaCl, then checked by protocol.attestation."""
    v = CRYPTO["attestation"]
    authority = nacl.signing.SigningKey(bytes.fromhex(v["authority_seed"]))
    assert bytes(authority.verify_key).hex() == v["authority_pk"]
    devices = sorted([d, bytes.fromhex(s), bytes.fromhex(b)] for d, s, b in v["devices"])
    body = msgpack.packb(
        [
            "miss-att",
            1,
            v["user"],
            v["rpps"],
            v["name"],
            v["profession"],
            v["organisation"],
            devices,
            v["not_before"],
            v["not_after"],
        ],
        use_bin_type=True,
    )
    att = authority.sign(b"miss.v1/attestation\x00" + body).signature + body
    assert att.hex() == v["att"]
    checked = attestation.verify(att, bytes.fromhex(v["authority_pk"]), v["not_before"])
    assert checked.user == v["user"] and [d.device for d in checked.devices] == [d[0] for d in devices]
    # Valid from not_before (inclusive) to not_after (exclusive).
    with pytest.raises(attestation.AttestationNotYetValid):
        attestation.verify(att, bytes.fromhex(v["authority_pk"]), v["not_before"] - 1)
    attestation.verify(att, bytes.fromhex(v["authority_pk"]), v["not_after"] - 1)
    with pytest.raises(attestation.AttestationExpired):
        attestation.verify(att, bytes.fromhex(v["authority_pk"]), v["not_after"])
    lookup = next(x for x in FRAMES["valid"] if x["name"] == "lookup_ok_attested")
    assert lookup["fields"]["att"] == {"bin": v["att"]}


def test_authority_key_text_and_fingerprint_vector() -> None:
    """SPEC §11.1: the key's text form is padded standard base64 of its 32
    bytes; its fingerprint the first 16 bytes of a SHA-256, in groups of 4
    hex digits."""
    v = CRYPTO["attestation"]
    pk = bytes.fromhex(v["authority_pk"])
    assert base64.b64encode(pk).decode() == v["authority_key_text"] == attestation.encode_authority_key(pk)
    assert attestation.decode_authority_key(f"  {v['authority_key_text']}\n") == pk
    with pytest.raises(ValueError):
        attestation.decode_authority_key(v["authority_key_text"].rstrip("="))
    digest = hashlib.sha256(b"miss.v1/authority\x00" + pk).hexdigest()[:32]
    fingerprint = " ".join(digest[i : i + 4] for i in range(0, 32, 4))
    assert fingerprint == v["authority_fingerprint"] == attestation.authority_fingerprint(pk)
    spec = (PROTOCOL_DIR / "SPEC.md").read_text(encoding="utf-8")
    assert v["authority_key_text"] in spec and v["authority_fingerprint"] in spec


def test_safety_number_vectors_show_symmetry_and_change() -> None:
    numbers = [v["safety_number"] for v in CRYPTO["safety_numbers"]["vectors"]]
    assert numbers[0] == numbers[1]
    assert len({numbers[0], *numbers[2:]}) == len(numbers) - 1


# --- SPEC.md agrees with errors.py --------------------------------------------------------------


def test_spec_error_table_matches_errors_module() -> None:
    """Every row of the SPEC §7 table (and §13.7's) names the code, fatality,
    close code and retryability that errors.py gives it, and every error
    class has a row."""
    spec = (PROTOCOL_DIR / "SPEC.md").read_text(encoding="utf-8")
    section = spec.split("## 7.", 1)[1].split("\n## 8.", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| (yes|no) \| (\d{4}|—) \|[^|]*\|[^|]*\| (yes|no) \|", section, re.M)
    assert rows, "no error table found in SPEC §7"
    table = {
        code: (fatal == "yes", None if close == "—" else int(close), retry == "yes")
        for code, fatal, close, retry in rows
    }
    # Revision 3's errors have their own table (SPEC §13.7), without close
    # codes or retries: none is fatal or retryable.
    section_13_7 = spec.split("### 13.7", 1)[1].split("\n### 13.8", 1)[0]
    rows_13_7 = re.findall(r"^\| `([a-z_]+)` \| (yes|no) \|", section_13_7, re.M)
    assert len(rows_13_7) == 7, "no error table found in SPEC §13.7"
    for code, fatal in rows_13_7:
        assert code not in table, code
        table[code] = (fatal == "yes", None, False)
    # Revision 4's errors (SPEC §14.9), likewise none fatal or retryable.
    section_14_9 = spec.split("### 14.9", 1)[1].split("\n### 14.10", 1)[0]
    rows_14_9 = re.findall(r"^\| `([a-z_]+)` \| (yes|no) \|", section_14_9, re.M)
    assert len(rows_14_9) == 8, "no error table found in SPEC §14.9"
    for code, fatal in rows_14_9:
        assert code not in table, code
        table[code] = (fatal == "yes", None, False)
    # Revision 6's errors (SPEC §16.7), with a retryable column: none fatal.
    section_16_7 = spec.split("### 16.7", 1)[1].split("\n### 16.8", 1)[0]
    rows_16_7 = re.findall(r"^\| `([a-z_]+)` \| (yes|no) \| (yes|no) \|", section_16_7, re.M)
    assert len(rows_16_7) == 6, "no error table found in SPEC §16.7"
    for code, fatal, retry in rows_16_7:
        assert code not in table, code
        table[code] = (fatal == "yes", None, retry == "yes")
    # Revision 7's error (SPEC §17.5): not fatal, not retryable.
    section_17_5 = spec.split("### 17.5", 1)[1].split("\n### 17.6", 1)[0]
    rows_17_5 = re.findall(r"^\| `([a-z_]+)` \| (yes|no) \|", section_17_5, re.M)
    assert len(rows_17_5) == 1, "no error table found in SPEC §17.5"
    for code, fatal in rows_17_5:
        assert code not in table, code
        table[code] = (fatal == "yes", None, False)
    classes = {cls.code: cls for cls in _error_classes()}
    assert set(table) == set(classes)
    for code, cls in classes.items():
        assert table[code] == (issubclass(cls, errors.FatalError), cls.close_code, cls.retryable), code
        assert errors.error_class(code) is cls


def _error_classes() -> list[type[errors.ProtocolError]]:
    found: list[type[errors.ProtocolError]] = []
    todo: list[type[errors.ProtocolError]] = [errors.ProtocolError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.code not in ("protocol_error",) and "code" in cls.__dict__:
            found.append(cls)
    return found


def test_error_frame_message_matches_errors_module() -> None:
    for vector in (v for v in FRAMES["valid"] if v["type"] == "error"):
        frame = decode(bytes.fromhex(vector["msgpack"]))
        assert isinstance(frame, Error)
        cls = errors.error_class(frame.code)
        assert (frame.message, frame.fatal) == (cls.message, issubclass(cls, errors.FatalError))


# --- oncall.json (SPEC §14.2) ----------------------------------------------------------------


def test_oncall_file_names_the_protocol_bounds() -> None:
    assert ONCALL["min_escalation_ms"] == oncall.MIN_ESCALATION_MS == 100
    assert ONCALL["max_escalation_ms"] == oncall.MAX_ESCALATION_MS == 86_400_000
    assert ONCALL["max_escalation_steps"] == oncall.MAX_ESCALATION_STEPS == 5
    assert {v["error"] for v in ONCALL["invalid"]} == {"policy_out_of_bounds", "malformed_frame"}


@pytest.mark.parametrize("vector", ONCALL["valid"], ids=ids(ONCALL["valid"]))
def test_valid_policy_vector(vector: dict[str, Any]) -> None:
    policy = oncall.Policy.from_map(vector["policy"])
    packed = bytes.fromhex(vector["packed"])
    assert oncall.pack_policy(policy) == packed == msgpack.packb(vector["policy"], use_bin_type=True)
    assert oncall.unpack_policy(packed) == policy
    policy.check(vector["min_ms"], vector["max_steps"])
    assert policy.deadlines(ONCALL["sent_at"]) == vector["deadlines"]
    # SPEC §14.2: each deadline is the previous one plus a delay, the last plus final.
    t, expected = ONCALL["sent_at"], []
    for step in vector["policy"]["steps"]:
        t += step["delay"]
        expected.append(t)
    assert vector["deadlines"] == [*expected, t + vector["policy"]["final"]]


@pytest.mark.parametrize("vector", ONCALL["invalid"], ids=ids(ONCALL["invalid"]))
def test_invalid_policy_vector(vector: dict[str, Any]) -> None:
    expected = errors.error_class(vector["error"])
    with pytest.raises(expected):
        oncall.Policy.from_map(vector["policy"]).check(vector["min_ms"], vector["max_steps"])


@pytest.mark.parametrize("vector", ONCALL["overrides"], ids=lambda v: repr(v["urgent"]))
def test_override_vector(vector: dict[str, Any]) -> None:
    policy = oncall.Policy.from_map(vector["policy"])
    urgent = vector["urgent"]
    result = policy.with_override(urgent.get("interval"), urgent.get("final"))
    assert result.to_map(with_holders=False) == vector["result"]
    assert result.steps == policy.steps
    assert result.deadlines(ONCALL["sent_at"]) == vector["deadlines"]


def test_urgent_frames_carry_the_urgent_plaintext() -> None:
    by_name = {v["name"]: v for v in FRAMES["valid"]}
    urgent = next(v for v in PADDED if v["plaintext"].get("urgent"))
    assert urgent["plaintext"]["to"] == by_name["send_role_urgent"]["fields"]["to"]
    assert by_name["deliver_urgent"]["fields"]["role"] == urgent["plaintext"]["to"]
    assert by_name["send_role_urgent"]["fields"]["id"]["bin"] == urgent["plaintext"]["id"]
    policy = by_name["role_ok"]["fields"]["info"]["policy"]
    strip = [{k: v for k, v in s.items() if k != "holders"} for s in policy["steps"]]
    assert {**policy, "steps": strip} == ONCALL["valid"][0]["policy"]
