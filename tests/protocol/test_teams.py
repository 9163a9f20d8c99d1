"""Care team chains (SPEC.md §13.1, §13.2): records, signatures with real
Ed25519 keys and real attestations, and every rule of ``verify_chain``."""

from __future__ import annotations

import dataclasses

import msgpack
import nacl.signing
import pytest

from protocol import attestation, crypto, errors, teams
from protocol.teams import (
    AUTHORITY,
    ZERO_HEAD,
    SignedRecord,
    TeamChainError,
    TeamRecord,
    TeamState,
    apply_record,
    next_record,
    sign_record,
    sign_record_authority,
    verify_chain,
)

AUTHORITY_KEY = nacl.signing.SigningKey(bytes(range(0x30, 0x50)))
AUTHORITY_PK = bytes(AUTHORITY_KEY.verify_key)
OTHER_AUTHORITY = nacl.signing.SigningKey(bytes(range(0x50, 0x70)))
T0 = 1_767_225_600_000
YEAR = 365 * 86_400_000
TEAM = "t_00112233445566aa"


@dataclasses.dataclass(frozen=True)
class Clinician:
    user: str
    device: str
    keys: crypto.DeviceKeys
    att: bytes


def clinician(n: int, *, not_before: int = T0, not_after: int = T0 + YEAR) -> Clinician:
    keys = crypto.DeviceKeys(bytes([n]) * 32, bytes([n + 100]) * 32)
    user, device = f"u_{n:016x}", f"d_{n:016x}"
    att = attestation.sign(
        attestation.Attestation(
            user=user,
            rpps=f"1010{n:07d}",
            name=f"Dr {n}",
            profession="Infirmier",
            organisation="CHRU de Tours",
            devices=(attestation.AttestedDevice(device, keys.sign_pk, keys.box_pk),),
            not_before=not_before,
            not_after=not_after,
        ),
        AUTHORITY_KEY,
    )
    return Clinician(user, device, keys, att)


ALICE, BOB, CAROL, DAN = clinician(1), clinician(2), clinician(3), clinician(4)


def signed(state: TeamState | None, op: str, who: Clinician, user: Clinician, **kw: object) -> SignedRecord:
    at = kw.pop("at", T0 + 1000 * (0 if state is None else state.seq + 1))
    record = next_record(
        state,
        op,
        user.user,
        by=who.user,
        device=who.device,
        att=who.att,
        at=at,  # type: ignore[arg-type]
        team=TEAM if state is None else None,
        **kw,  # type: ignore[arg-type]
    )
    return sign_record(record, who.keys)


def step(state: TeamState | None, s: SignedRecord) -> TeamState:
    return apply_record(state, s, AUTHORITY_PK, team=TEAM)


def create(by: Clinician = ALICE) -> tuple[list[SignedRecord], TeamState]:
    s = signed(None, "create", by, by, name="Cardio nuit", org="CHRU de Tours", lifespan=7 * 86_400_000)
    return [s], step(None, s)


def grown() -> tuple[list[SignedRecord], TeamState]:
    """Alice creates, adds Bob and Carol, promotes Bob."""
    chain, state = create()
    for op, user in (("add", BOB), ("add", CAROL), ("promote", BOB)):
        s = signed(state, op, ALICE, user)
        chain.append(s)
        state = step(state, s)
    return chain, state


#: The error a hub answers a team_change with, by reason (SPEC §13.7).
HUB_ERROR = {
    "malformed": errors.BadTeamRecord,
    "bad_signature": errors.BadTeamRecord,
    "broken_chain": errors.TeamConflict,
    "forbidden": errors.TeamForbidden,
}


def refused(state: TeamState | None, s: SignedRecord, reason: str) -> None:
    with pytest.raises(TeamChainError) as caught:
        step(state, s)
    assert caught.value.reason == reason, caught.value
    assert type(caught.value.request_error()) is HUB_ERROR[reason]


# --- ids and records -----------------------------------------------------------------------------


def test_team_ids() -> None:
    a, b = teams.new_team_id(), teams.new_team_id()
    assert a != b and teams.is_team_id(a) and teams.is_team_id(TEAM)
    for bad in ("u_00112233445566aa", "t_00112233445566AA", "t_0011", "t_00112233445566aa0", 7, None):
        assert not teams.is_team_id(bad)


def test_record_round_trip_and_canonical_order() -> None:
    r = next_record(
        None,
        "create",
        ALICE.user,
        by=ALICE.user,
        device=ALICE.device,
        att=ALICE.att,
        at=T0,
        team=TEAM,
        name="Cardio",
        org="",
        lifespan=teams.MIN_LIFESPAN_MS,
    )
    packed = teams.pack_record(r)
    assert teams.unpack_record(packed) == r
    keys = list(msgpack.unpackb(packed, raw=False))
    assert keys == [
        "v",
        "team",
        "seq",
        "prev",
        "op",
        "user",
        "by",
        "device",
        "at",
        "name",
        "org",
        "lifespan",
        "att",
    ]
    authority = TeamRecord(TEAM, 0, ZERO_HEAD, "create", ALICE.user, AUTHORITY, T0, name="Cardio")
    keys = " ".join(msgpack.unpackb(teams.pack_record(authority), raw=False))
    assert keys == "v team seq prev op user by at name"


def test_hash_is_blake2b_of_rec_and_sig() -> None:
    import nacl.encoding
    import nacl.hash

    s = create()[0][0]
    expected = nacl.hash.blake2b(s.rec + s.sig, digest_size=32, encoder=nacl.encoding.RawEncoder)
    assert s.hash() == expected and len(s.hash()) == 32


# --- a valid chain -----------------------------------------------------------------------------


def test_create_add_promote_remove_leave() -> None:
    chain, state = grown()
    assert state.members == {ALICE.user, BOB.user, CAROL.user}
    assert state.admins == {ALICE.user, BOB.user}
    assert (state.name, state.org, state.lifespan, state.seq) == (
        "Cardio nuit",
        "CHRU de Tours",
        604_800_000,
        4,
    )
    assert state.head == chain[-1].hash() and not state.closed
    # Bob (admin now) removes Carol; Alice leaves; Bob is the last member and leaves: closed.
    for op, who, user in (("remove", BOB, CAROL), ("leave", ALICE, ALICE), ("leave", BOB, BOB)):
        s = signed(state, op, who, user)
        chain.append(s)
        state = step(state, s)
    assert state.members == state.admins == frozenset() and state.closed and state.seq == 7
    assert verify_chain(chain, AUTHORITY_PK, TEAM) == state
    # Nothing after a closed team, not even a creation-like re-add.
    refused(state, signed(state, "add", BOB, DAN), "forbidden")


def test_demote_keeps_one_admin() -> None:
    _, state = grown()
    state = step(state, signed(state, "demote", BOB, ALICE))  # Bob demotes Alice
    assert state.admins == {BOB.user}
    refused(state, signed(state, "demote", BOB, BOB), "forbidden")  # the last admin
    refused(state, signed(state, "promote", ALICE, CAROL), "forbidden")  # Alice is no admin now


def test_authority_creates_a_team_for_a_first_admin() -> None:
    r = next_record(None, "create", ALICE.user, by=AUTHORITY, at=T0, team=TEAM, name="Urgences")
    s = sign_record_authority(r, AUTHORITY_KEY)
    state = step(None, s)
    assert state.members == state.admins == {ALICE.user}
    # The authority may manage any team without being a member.
    s2 = sign_record_authority(next_record(state, "add", BOB.user, by=AUTHORITY, at=T0 + 1), AUTHORITY_KEY)
    assert step(state, s2).members == {ALICE.user, BOB.user}
    # Signed by another authority key: refused.
    refused(None, sign_record_authority(r, OTHER_AUTHORITY), "bad_signature")


def test_the_last_member_may_leave_but_not_the_last_admin_of_others() -> None:
    _chain, state = create()
    state = step(state, signed(state, "add", ALICE, BOB))
    refused(state, signed(state, "leave", ALICE, ALICE), "forbidden")
    state = step(state, signed(state, "promote", ALICE, BOB))
    assert not step(state, signed(state, "leave", ALICE, ALICE)).closed


# --- each invalid case --------------------------------------------------------------------------


def test_bad_signature() -> None:
    s = create()[0][0]
    refused(None, SignedRecord(s.rec, bytes(64)), "bad_signature")
    # Signed by Bob's key while naming Alice's device.
    r = teams.unpack_record(s.rec)
    refused(None, sign_record(r, BOB.keys), "bad_signature")
    # Bob's attestation in a record by Alice.
    refused(None, sign_record(dataclasses.replace(r, att=BOB.att), ALICE.keys), "bad_signature")
    # A device the attestation does not list.
    refused(None, sign_record(dataclasses.replace(r, device="d_unknown"), ALICE.keys), "bad_signature")
    # An attestation signed by another authority.
    forged = attestation.sign(attestation.peek(ALICE.att), OTHER_AUTHORITY)
    refused(None, sign_record(dataclasses.replace(r, att=forged), ALICE.keys), "bad_signature")


def test_attestation_not_valid_at_at() -> None:
    expired = clinician(9, not_before=T0, not_after=T0 + 1000)
    refused(None, signed(None, "create", expired, expired, name="X", at=T0 + 1000), "bad_signature")
    refused(None, signed(None, "create", expired, expired, name="X", at=T0 - 1), "bad_signature")
    # Valid at `at`, though expired today: a record outlives its attestation.
    assert step(None, signed(None, "create", expired, expired, name="X", at=T0 + 999)).seq == 1


def test_broken_prev_and_wrong_seq() -> None:
    chain, state = grown()
    r = next_record(state, "add", DAN.user, by=ALICE.user, device=ALICE.device, att=ALICE.att, at=T0 + 9)
    refused(state, sign_record(dataclasses.replace(r, prev=bytes(32)), ALICE.keys), "broken_chain")
    refused(state, sign_record(dataclasses.replace(r, seq=state.seq + 1), ALICE.keys), "broken_chain")
    refused(state, sign_record(dataclasses.replace(r, seq=state.seq - 1), ALICE.keys), "broken_chain")
    # The whole chain is refused at a record that does not follow.
    with pytest.raises(TeamChainError) as caught:
        verify_chain([chain[0], chain[2]], AUTHORITY_PK, TEAM)
    assert caught.value.reason == "broken_chain"
    with pytest.raises(TeamChainError):
        verify_chain([], AUTHORITY_PK, TEAM)


def test_non_admin_add_and_other_forbidden_operations() -> None:
    _, state = grown()
    refused(state, signed(state, "add", CAROL, DAN), "forbidden")  # Carol is no admin
    refused(state, signed(state, "add", DAN, DAN), "forbidden")  # Dan is no member
    refused(state, signed(state, "add", ALICE, BOB), "forbidden")  # already a member
    refused(state, signed(state, "remove", ALICE, ALICE), "forbidden")  # remove oneself: leave instead
    refused(state, signed(state, "remove", ALICE, DAN), "forbidden")  # not a member
    refused(state, signed(state, "remove", CAROL, BOB), "forbidden")  # not an admin
    refused(state, signed(state, "leave", ALICE, CAROL), "forbidden")  # only oneself
    refused(state, signed(state, "leave", DAN, DAN), "forbidden")  # not a member
    refused(state, signed(state, "promote", ALICE, BOB), "forbidden")  # already an admin
    refused(state, signed(state, "promote", ALICE, DAN), "forbidden")  # not a member
    refused(state, signed(state, "demote", ALICE, CAROL), "forbidden")  # not an admin
    refused(state, signed(state, "demote", CAROL, ALICE), "forbidden")  # by a non-admin
    refused(state, signed(state, "create", ALICE, ALICE, name="again"), "forbidden")  # only at seq 0


def test_creation_rules() -> None:
    refused(None, signed(None, "create", ALICE, BOB, name="X"), "forbidden")  # for someone else
    refused(None, signed(None, "create", ALICE, ALICE), "forbidden")  # no name
    refused(None, signed(None, "add", ALICE, ALICE), "forbidden")  # seq 0 is a creation


def test_last_admin_leaving() -> None:
    _, state = create()
    state = step(state, signed(state, "add", ALICE, BOB))
    refused(state, signed(state, "leave", ALICE, ALICE), "forbidden")


@pytest.mark.parametrize(
    "change",
    [
        {"team": "t_ffffffffffffffff"},
        {"op": "rename"},
        {"v": 2},
        {"prev": b"\x00" * 31},
        {"seq": -1},
        {"at": "now"},
        {"user": AUTHORITY},
        {"name": ""},
        {"name": "n" * 65},
        {"name": "R\x00a"},
        {"org": "\x00"},
        {"user": "u_\x00"},
        {"by": "u_a\x00"},
        {"device": "d_\x00"},
        {"org": "o" * 129},
        {"lifespan": teams.MIN_LIFESPAN_MS - 1},
        {"lifespan": teams.MAX_LIFESPAN_MS + 1},
        {"extra": 1},
        {"device": None},
        {"att": None},
    ],
    ids=repr,
)
def test_malformed_records(change: dict[str, object]) -> None:
    s = create()[0][0]
    m = msgpack.unpackb(s.rec, raw=False)
    m.update(change)
    m = {k: v for k, v in m.items() if v is not None}
    rec = msgpack.packb(m, use_bin_type=True)
    refused(None, SignedRecord(rec, ALICE.keys.sign(teams.TEAM_CONTEXT + rec)), "malformed")


def test_malformed_bytes() -> None:
    for rec in (b"", b"\xc1", msgpack.packb([1, 2]), b"\x80", b"\x00" * (teams.MAX_RECORD_BYTES + 1)):
        refused(None, SignedRecord(rec, bytes(64)), "malformed")
    s = create()[0][0]
    refused(None, SignedRecord(s.rec, s.sig[:63]), "malformed")
    # Create-only keys on another operation.
    _, state = create()
    refused(state, signed(state, "add", ALICE, BOB, name="X"), "malformed")
    # The authority's record names no device.
    r = next_record(None, "create", ALICE.user, by=AUTHORITY, at=T0, team=TEAM, name="U", device="d_1")
    refused(None, sign_record_authority(r, AUTHORITY_KEY), "malformed")


def test_a_key_twice_is_malformed() -> None:
    """A record holding a key twice, validly signed, is refused (SPEC §3.1):
    a reader keeping the first ``user`` and one keeping the last would
    disagree on whom a signed record adds."""
    s = create()[0][0]
    assert 0x80 <= s.rec[0] < 0x8F
    user = msgpack.unpackb(s.rec, raw=False)["user"]
    for key, value in (("user", "u_mallory"), ("user", user), ("op", "create")):
        rec = bytes([s.rec[0] + 1]) + s.rec[1:] + msgpack.packb(key) + msgpack.packb(value)
        refused(None, SignedRecord(rec, ALICE.keys.sign(teams.TEAM_CONTEXT + rec)), "malformed")
        with pytest.raises(TeamChainError, match="a key twice"):
            teams.unpack_record(rec)


def test_fork_two_chains_from_one_prefix_have_different_heads() -> None:
    """The hub cannot show two members two histories with the same head."""
    _chain, state = grown()
    left = step(state, signed(state, "add", ALICE, DAN))
    right = step(state, signed(state, "remove", ALICE, CAROL))
    same_op_other_time = step(state, signed(state, "add", ALICE, DAN, at=T0 + 99_999))
    assert len({left.head, right.head, same_op_other_time.head}) == 3
    assert left.seq == right.seq == state.seq + 1
    # A record of one branch does not apply to the other.
    s = signed(left, "add", ALICE, clinician(5))
    refused(right, s, "broken_chain")


def test_apply_record_does_not_touch_the_state() -> None:
    _, state = grown()
    before = dataclasses.replace(state)
    with pytest.raises(TeamChainError):
        step(state, signed(state, "add", CAROL, DAN))
    step(state, signed(state, "add", ALICE, DAN))
    assert state == before
