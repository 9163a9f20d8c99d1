"""On-call roles and escalation policies (protocol/oncall.py, SPEC §14)."""

from __future__ import annotations

import msgpack
import pytest

from protocol import crypto, errors
from protocol.oncall import (
    MAX_ESCALATION_MS,
    MAX_ESCALATION_STEPS,
    MAX_ROLE_HOLDERS,
    MIN_ESCALATION_MS,
    Policy,
    Step,
    is_role_id,
    new_role_id,
    pack_policy,
    unpack_policy,
)

ROLE = "r_0123456789abcdef"
POLICY = Policy(
    interval=120_000,
    steps=(Step(300_000, role=ROLE, holders=("u_3",)), Step(600_000, user="u_5")),
    final=600_000,
)


def test_role_ids() -> None:
    assert is_role_id(ROLE) and MAX_ROLE_HOLDERS == 16
    for bad in ("t_0123456789abcdef", "r_0123456789ABCDEF", "r_0123", ROLE + "0", "", "r_" + "g" * 16):
        assert not is_role_id(bad)
    fresh = {new_role_id() for _ in range(50)}
    assert len(fresh) == 50 and all(is_role_id(r) for r in fresh)


def test_deadlines_add_each_delay_then_final() -> None:
    assert POLICY.deadlines(1_000) == [301_000, 901_000, 1_501_000]
    assert Policy(60_000, (), 600_000).deadlines(5) == [600_005]


def test_maps_keep_the_canonical_order() -> None:
    assert list(POLICY.to_map()) == ["interval", "steps", "final"]
    assert POLICY.to_map()["steps"] == [
        {"delay": 300_000, "role": ROLE, "holders": ["u_3"]},
        {"delay": 600_000, "user": "u_5", "holders": []},
    ]
    assert POLICY.to_map(with_holders=False)["steps"][0] == {"delay": 300_000, "role": ROLE}
    assert Policy.from_map(POLICY.to_map()) == POLICY


def test_the_store_form_has_no_holders() -> None:
    packed = pack_policy(POLICY)
    assert msgpack.unpackb(packed) == POLICY.to_map(with_holders=False)
    assert unpack_policy(packed) == POLICY.without_holders()
    assert unpack_policy(packed).steps[0].holders == ()


@pytest.mark.parametrize(
    "bad",
    [
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"interval": 1, "steps": []}),
        msgpack.packb({"interval": -1, "steps": [], "final": 1}),
        msgpack.packb({"interval": 1, "steps": [{"delay": 1}], "final": 1}),
        msgpack.packb({"interval": 1, "steps": [{"delay": 1, "role": ROLE, "user": "u"}], "final": 1}),
        msgpack.packb({"interval": 1, "steps": [{"delay": 1, "role": "u_1"}], "final": 1}),
        msgpack.packb({"interval": 1, "steps": [{"delay": 1, "user": "u"}] * 6, "final": 1}),
    ],
)
def test_unpack_refuses_what_is_not_a_policy(bad: bytes) -> None:
    with pytest.raises(errors.MalformedFrame):
        unpack_policy(bad)


def test_check_applies_the_floor_the_ceiling_and_the_step_cap() -> None:
    POLICY.check(60_000, 3)
    with pytest.raises(errors.PolicyOutOfBounds):
        POLICY.check(300_001, 3)  # the interval is below the hub's floor
    with pytest.raises(errors.PolicyOutOfBounds):
        POLICY.check(60_000, 1)  # two steps, one allowed
    Policy(MIN_ESCALATION_MS, (), MAX_ESCALATION_MS).check(0, 3)  # the protocol's bounds are inclusive
    with pytest.raises(errors.PolicyOutOfBounds):
        Policy(MIN_ESCALATION_MS - 1, (), 1_000).check(0, 3)  # the protocol floor holds below the hub's
    with pytest.raises(errors.PolicyOutOfBounds):
        Policy(1_000, (), MAX_ESCALATION_MS + 1).check(0, 3)
    six = Policy(1_000, tuple(Step(1_000, user="u") for _ in range(MAX_ESCALATION_STEPS + 1)), 1_000)
    with pytest.raises(errors.PolicyOutOfBounds):
        six.check(0, 99)  # the protocol's step cap holds above the hub's
    assert errors.PolicyOutOfBounds.code == "policy_out_of_bounds"


def test_override_replaces_interval_and_final_not_steps() -> None:
    assert POLICY.with_override(None, None) == POLICY
    over = POLICY.with_override(60_000, None)
    assert (over.interval, over.steps, over.final) == (60_000, POLICY.steps, 600_000)
    assert POLICY.with_override(None, 1_000).final == 1_000


def test_a_step_names_one_target() -> None:
    assert Step(1, role=ROLE).target == ROLE and Step(1, user="u_1").target == "u_1"
    with pytest.raises(errors.MalformedFrame):
        Step(1)
    with pytest.raises(errors.MalformedFrame):
        Step(1, role=ROLE, user="u_1")


def test_urgent_plaintext_key_comes_before_pad() -> None:
    p = crypto.Plaintext(bytes(16), "u_1", ROLE, 5, body="Patient instable, lit 12")
    packed = crypto.pack_plaintext(p, pad_to=256, urgent=True)
    assert len(packed) % 256 == 0
    m = msgpack.unpackb(packed)
    assert list(m)[-2:] == ["urgent", "pad"] and m["urgent"] is True
    opened = crypto.unpack_plaintext(packed)
    assert opened.urgent and opened.to_user == ROLE
    assert crypto.pack_plaintext(opened, pad_to=256) == packed
    assert "urgent" not in msgpack.unpackb(crypto.pack_plaintext(p))
    assert not crypto.unpack_plaintext(crypto.pack_plaintext(p)).urgent
    bad = msgpack.packb({**msgpack.unpackb(crypto.pack_plaintext(p)), "urgent": 1})
    with pytest.raises(crypto.EnvelopeError):
        crypto.unpack_plaintext(bad)
