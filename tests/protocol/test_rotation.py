"""Authority key rotation statements (SPEC §15): the vectors of
``protocol/vectors/rotation.json`` recomputed byte for byte, and the rules of
:func:`protocol.rotation.accept_chain`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import nacl.signing
import pytest

import protocol
from protocol import attestation, rotation, teams
from protocol.client_session import WrongAuthority, check_authority
from protocol.frames import Challenge, decode

VECTORS = json.loads(
    (Path(protocol.__file__).resolve().parent / "vectors" / "rotation.json").read_text("utf-8")
)
STATEMENTS = {s["name"]: s for s in VECTORS["statements"]}
BAD = {b["name"]: b for b in VECTORS["bad_signatures"]}


def blob_of(name: str) -> bytes:
    return bytes.fromhex((STATEMENTS.get(name) or BAD[name])["blob"])


def sk(hex_seed: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes.fromhex(hex_seed))


def test_context_is_the_specs() -> None:
    assert bytes.fromhex(VECTORS["context"]) == b"miss.v1/authority-rotation\x00" == rotation.CONTEXT
    assert VECTORS["max_bytes"] == rotation.MAX_BYTES == 512
    assert VECTORS["max_statements"] == rotation.MAX_STATEMENTS == 8


@pytest.mark.parametrize("v", VECTORS["statements"], ids=lambda v: v["name"])
def test_statement_vectors(v: dict[str, Any]) -> None:
    old, new = sk(v["old_seed"]), sk(v["new_seed"])
    assert bytes(old.verify_key).hex() == v["old"] and bytes(new.verify_key).hex() == v["new"]
    body = bytes.fromhex(v["body"])
    # The body from the SPEC's formula, independently of Statement.body().
    by_formula = msgpack.packb(
        {
            "t": "miss-rot",
            "v": 1,
            "old": bytes.fromhex(v["old"]),
            "new": bytes.fromhex(v["new"]),
            "at": v["at"],
            "until": v["until"],
        },
        use_bin_type=True,
    )
    assert by_formula == body
    assert (
        rotation.Statement(bytes.fromhex(v["old"]), bytes.fromhex(v["new"]), v["at"], v["until"]).body()
        == body
    )
    blob = rotation.sign(old, new, v["at"], v["until"])
    assert blob.hex() == v["blob"]
    assert (
        blob
        == old.sign(rotation.CONTEXT + body).signature + new.sign(rotation.CONTEXT + body).signature + body
    )
    assert rotation.encode_text(blob) == v["text"] and rotation.decode_text(v["text"]) == blob
    s = rotation.verify(blob)
    assert (s.old.hex(), s.new.hex(), s.at, s.until) == (v["old"], v["new"], v["at"], v["until"])
    assert attestation.authority_fingerprint(s.new) == v["new_fingerprint"]


@pytest.mark.parametrize("v", VECTORS["bad_signatures"], ids=lambda v: v["name"])
def test_bad_signature_vectors(v: dict[str, Any]) -> None:
    blob = bytes.fromhex(v["blob"])
    assert rotation.peek(blob) == rotation.peek(blob_of(v["of"]))  # same body: only a signature differs
    with pytest.raises(getattr(rotation, v["error"])):
        rotation.verify(blob)


@pytest.mark.parametrize("v", VECTORS["chains"], ids=lambda v: v["name"])
def test_chain_vectors(v: dict[str, Any]) -> None:
    trusted = bytes.fromhex(v["trusted"])
    chain = [blob_of(n) for n in v["statements"]]
    if "error" in v:
        with pytest.raises(getattr(rotation, v["error"])):
            rotation.accept_chain(trusted, chain, v["now"])
        return
    keys = rotation.accept_chain(trusted, chain, v["now"])
    assert keys.current.hex() == v["current"]
    assert [{"key": p.key.hex(), "until": p.until} for p in keys.previous] == v["previous"]


def test_old_key_counts_until_its_until_and_not_after() -> None:
    s = STATEMENTS["k1_to_k2"]
    keys = rotation.accept_chain(bytes.fromhex(s["old"]), [blob_of("k1_to_k2")], s["at"])
    old = bytes.fromhex(s["old"])
    assert old in keys.valid_at(s["until"]) and old not in keys.valid_at(s["until"] + 1)
    assert keys.valid_at(s["until"] + 1) == (bytes.fromhex(s["new"]),)
    # Accepted after 'until': the new key only, the old one already lapsed.
    late = rotation.accept_chain(old, [blob_of("k1_to_k2")], s["until"] + 1)
    assert late.previous == () and late.current.hex() == s["new"]


def test_attestation_by_old_key_verifies_during_overlap_only() -> None:
    s = STATEMENTS["k1_to_k2"]
    old = sk(s["old_seed"])
    att = attestation.Attestation(
        "u", "10000000001", "Dr A", "médecin", "CHU", (), s["at"] - 1000, s["until"] + 10**9
    )
    blob = attestation.sign(att, old)
    keys = rotation.accept_chain(bytes.fromhex(s["old"]), [blob_of("k1_to_k2")], s["at"])
    assert attestation.verify(blob, keys, s["until"]).user == "u"
    with pytest.raises(attestation.AttestationSignatureInvalid):
        attestation.verify(blob, keys, s["until"] + 1)
    # Whoever caches the verdict (the hub's accounts) learns when it ends: the old key's 'until'.
    assert attestation.counts_until(blob, keys, s["at"]) == s["until"]
    assert attestation.counts_until(blob, bytes.fromhex(s["old"]), s["at"]) == att.not_after - 1
    renewed = attestation.sign(att, sk(s["new_seed"]))
    assert attestation.counts_until(renewed, keys, s["at"]) == att.not_after - 1
    # The hub's single check (accounts.py) says the same as verify + counts_until, and refuses alike.
    assert attestation.verify_counted(blob, keys, s["at"]) == (att, s["until"])
    assert attestation.verify_counted(renewed, keys, s["at"]) == (att, att.not_after - 1)
    assert attestation.verify_counted(blob, bytes.fromhex(s["old"]), s["at"]) == (att, att.not_after - 1)
    with pytest.raises(attestation.AttestationSignatureInvalid):
        attestation.verify_counted(blob, keys, s["until"] + 1)
    with pytest.raises(attestation.AttestationExpired):
        attestation.verify_counted(renewed, keys, att.not_after)
    with pytest.raises(attestation.AttestationNotYetValid):
        attestation.verify_counted(renewed, keys, att.not_before - 1)
    # A team record outlives 'until': it is judged at its own 'at' (contract change 1).
    rec = teams.next_record(None, "create", "alice", by=teams.AUTHORITY, at=s["until"], name="Garde")
    packed = teams.pack_record(rec)
    signed = teams.SignedRecord(packed, old.sign(teams.TEAM_CONTEXT + packed).signature)
    assert teams.verify_chain([signed], keys, rec.team).name == "Garde"
    rec_late = teams.next_record(None, "create", "alice", by=teams.AUTHORITY, at=s["until"] + 1, name="X")
    packed = teams.pack_record(rec_late)
    late = teams.SignedRecord(packed, old.sign(teams.TEAM_CONTEXT + packed).signature)
    with pytest.raises(teams.TeamChainError):
        teams.verify_chain([late], keys, rec_late.team)


def test_malformed_and_non_canonical_statements_are_refused() -> None:
    blob = blob_of("k1_to_k2")
    for bad in (b"", blob[:128], blob + b"\x00", b"\x00" * 600, blob[:128] + msgpack.packb([1, 2])):
        with pytest.raises(rotation.RotationMalformed):
            rotation.peek(bad)
    s = rotation.peek(blob)
    reordered = msgpack.packb(
        {"v": 1, "t": "miss-rot", "old": s.old, "new": s.new, "at": s.at, "until": s.until}, use_bin_type=True
    )
    with pytest.raises(rotation.RotationMalformed):
        rotation.peek(blob[:128] + reordered)
    with pytest.raises(ValueError):
        rotation.sign(sk(STATEMENTS["k1_to_k2"]["old_seed"]), sk(STATEMENTS["k1_to_k2"]["old_seed"]), 1, 2)
    with pytest.raises(ValueError):
        rotation.sign(sk(STATEMENTS["k1_to_k2"]["old_seed"]), sk(STATEMENTS["k1_to_k2"]["new_seed"]), 5, 5)
    with pytest.raises(rotation.RotationMalformed):
        rotation.decode_text("not base64!")


def test_too_long_a_chain_is_refused() -> None:
    with pytest.raises(rotation.RotationChainBroken):
        rotation.accept_chain(bytes(32), [blob_of("k1_to_k2")] * 9, 0)


def test_empty_chain_keeps_what_is_held() -> None:
    held = rotation.AuthorityKeys(b"\x01" * 32, (rotation.PreviousKey(b"\x02" * 32, 10),))
    assert rotation.accept_chain(held, [], 5) is held


def test_frames_vector_challenge_with_rotations_carries_the_statement_vector() -> None:
    frames = json.loads(
        (Path(protocol.__file__).resolve().parent / "vectors" / "frames.json").read_text("utf-8")
    )
    crypto = json.loads(
        (Path(protocol.__file__).resolve().parent / "vectors" / "crypto.json").read_text("utf-8")
    )
    (vector,) = [v for v in frames["valid"] if v["name"] == "challenge_with_rotations"]
    challenge = decode(bytes.fromhex(vector["msgpack"]))
    assert isinstance(challenge, Challenge) and "rotation" in (challenge.caps or ())
    assert challenge.rotations == (blob_of("k1_to_k2"),)
    # A client holding crypto.json's authority key follows it to the key announced.
    trusted = bytes.fromhex(crypto["attestation"]["authority_pk"])
    keys = check_authority(challenge, trusted, STATEMENTS["k1_to_k2"]["at"])
    assert keys.current == challenge.authority
    with pytest.raises(WrongAuthority) as refused:
        check_authority(challenge, bytes.fromhex(STATEMENTS["x_to_k2"]["old"]), STATEMENTS["k1_to_k2"]["at"])
    assert isinstance(refused.value.refusal, rotation.RotationNotTrusted)
