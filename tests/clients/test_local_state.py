"""The local state DB (miss_client.state): dedupe, history, receipts, pinning, migration."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import msgpack
import pytest
from miss_client import state as state_module
from miss_client import state_schema
from miss_client.errors import ProfileCorrupt
from miss_client.models import Message, Peer, PeerChange
from miss_client.profile import Profile
from miss_client.state import Observation

from protocol.crypto import DeviceKeys, new_message_id
from protocol.frames import DeviceInfo


def device(name: str, keys: DeviceKeys | None = None) -> DeviceInfo:
    keys = keys or DeviceKeys.generate()
    return DeviceInfo(name, keys.sign_pk, keys.box_pk)


def bob(*devices: DeviceInfo) -> Peer:
    return Peer("u_bob", "Dr Bob Durand", "10000000002", "cardiologue", "CHRU", devices)


def incoming(profile: Profile, body: str, sent_at: int = 1, message_id: bytes | None = None) -> Message:
    return Message(message_id or new_message_id(), "u_bob", "d_b1", profile.user_id, sent_at, body)


def test_seen_ids_survive_a_restart(make_profile: Callable[..., Profile]) -> None:
    profile = make_profile()
    message = incoming(profile, "hello")
    with profile.open_state() as state:
        assert state.record_incoming(message) is True
    # a "crash" after storing and before acking: the hub redelivers
    with profile.open_state() as state:
        assert state.is_seen("u_bob", message.id)
        assert state.record_incoming(message) is False
        assert [e.body for e in state.history()] == ["hello"]


def test_ids_are_unique_per_sender_only(make_profile: Callable[..., Profile]) -> None:
    profile = make_profile()
    shared_id = new_message_id()
    with profile.open_state() as state:
        assert state.record_incoming(incoming(profile, "from bob", message_id=shared_id))
        other = Message(shared_id, "u_carol", "d_c1", profile.user_id, 2, "from carol")
        assert state.record_incoming(other), "another sender's id must not be dropped as a duplicate"
        assert len(state.history()) == 2


def test_history_order_filter_and_status(make_profile: Callable[..., Profile]) -> None:
    profile = make_profile()
    with profile.open_state() as state:
        state.record_incoming(incoming(profile, "first", sent_at=10))
        sent = new_message_id()
        state.record_outgoing(sent, "u_bob", 20, "text", "second")
        state.record_incoming(Message(new_message_id(), "u_carol", "d_c1", profile.user_id, 15, "carol"))
        assert [e.body for e in state.history()] == ["first", "carol", "second"]
        assert [e.body for e in state.history("u_bob")] == ["first", "second"]
        assert [e.body for e in state.history(limit=1)] == ["second"]
        assert [e.id for e in state.pending_outgoing()] == [sent]
        state.set_status(sent, "accepted")
        assert state.pending_outgoing() == []
        assert state.history("u_bob")[-1].status == "accepted"
        # a resend with the same id does not duplicate history
        state.record_outgoing(sent, "u_bob", 30, "text", "second")
        assert len(state.history("u_bob")) == 2


def test_own_copies_are_filed_under_the_peer(make_profile: Callable[..., Profile]) -> None:
    profile = make_profile()
    copy = Message(
        new_message_id(), profile.user_id, "d_other", "u_bob", 5, "from my phone", outgoing_copy=True
    )
    with profile.open_state() as state:
        state.record_incoming(copy)
        [entry] = state.history("u_bob")
    assert (entry.direction, entry.peer, entry.body) == ("out", "u_bob", "from my phone")


def test_receipts_are_recorded_once(make_profile: Callable[..., Profile]) -> None:
    profile = make_profile()
    sent = new_message_id()
    with profile.open_state() as state:
        state.record_outgoing(sent, "u_bob", 1, "text", "x")
        assert state.record_receipt(sent, "u_bob", "d_b1", 5) is True
        assert state.record_receipt(sent, "u_bob", "d_b1", 6) is False
        assert state.record_receipt(sent, "u_bob", "d_b2", 7) is True
        assert state.history()[0].delivered_to == ("d_b1", "d_b2")


def test_pins_trust_the_first_attestation_then_changes_wait_for_acceptance(
    make_profile: Callable[..., Profile],
) -> None:
    profile = make_profile()
    b1, b2 = device("d_b1"), device("d_b2")
    with profile.open_state() as state:
        first = state.observe_peer(bob(b1), [b1])
        assert first == Observation(None, None, False), "first seen: pinned without a warning"
        assert state.observe_peer(bob(b1), [b1]) == Observation(None, None, False), "same devices"

        grown = state.observe_peer(bob(b1, b2), [b1, b2])
        assert grown.report is not None and grown.report.added == ("d_b2",)
        assert grown.pending == PeerChange("u_bob", added=("d_b2",))
        assert state.get_peer("u_bob").devices == (b1,), "not pinned before it is accepted"  # type: ignore[union-attr]
        again = state.observe_peer(bob(b1, b2), [b1, b2])
        assert again.report is None and again.pending == grown.pending, "reported once, still pending"
        assert state.accept_pending("u_bob") == grown.pending
        assert state.accept_pending("u_bob") is None, "nothing left to accept"
        assert state.get_peer("u_bob").devices == (b1, b2)  # type: ignore[union-attr]

        rekeyed = device("d_b1")
        changed = state.observe_peer(bob(rekeyed, b2), [rekeyed, b2])
        assert changed.pending == PeerChange("u_bob", changed=("d_b1",))
        back = state.observe_peer(bob(b1, b2), [b1, b2])
        assert back.pending is None and state.pending_change("u_bob") is None, "back to the pinned keys"

        shrunk = state.observe_peer(bob(b2), [b2])
        assert shrunk.report == PeerChange("u_bob", removed=("d_b1",)) and shrunk.pending is None
        assert state.get_peer("u_bob").devices == (b2,), "removed devices are dropped without asking"  # type: ignore[union-attr]
        assert state.find_peer("10000000002").user == "u_bob"  # type: ignore[union-attr]
        assert state.get_peer("u_nobody") is None


def test_substituted_keys_are_a_change_until_acknowledged(make_profile: Callable[..., Profile]) -> None:
    profile = make_profile()
    b1 = device("d_b1")
    fake = DeviceInfo("d_b1", b1.sign_pk, DeviceKeys.generate().box_pk)
    with profile.open_state() as state:
        state.observe_peer(bob(b1), [b1])
        seen = state.observe_peer(bob(fake), [b1], [fake])
        assert seen.pending == PeerChange("u_bob", substituted=("d_b1",))
        assert seen.report is not None and seen.report.substituted == ("d_b1",)
        state.accept_pending("u_bob")
        assert state.get_peer("u_bob").devices == (b1,), "the attested keys stay pinned"  # type: ignore[union-attr]
        assert state.observe_peer(bob(fake), [b1], [fake]).pending is None, "acknowledged"
        other_fake = DeviceInfo("d_b1", b1.sign_pk, DeviceKeys.generate().box_pk)
        assert state.observe_peer(bob(other_fake), [b1], [other_fake]).pending is not None, "a new substitute"


def test_a_key_change_clears_verified_in_person(make_profile: Callable[..., Profile]) -> None:
    profile = make_profile()
    b1, b2 = device("d_b1"), device("d_b2")
    with profile.open_state() as state:
        state.observe_peer(bob(b1), [b1])
        state.set_verified("u_bob")
        assert state.get_peer("u_bob").verified  # type: ignore[union-attr]
        assert state.observe_peer(bob(b1), [b1]).verified, "no change: still verified"
        assert not state.observe_peer(bob(b1, b2), [b1, b2]).verified
        assert not state.get_peer("u_bob").verified  # type: ignore[union-attr]
        with pytest.raises(ValueError, match="pending"):
            state.set_verified("u_bob")
        state.accept_pending("u_bob")
        assert not state.get_peer("u_bob").verified, "accepting is not verifying"  # type: ignore[union-attr]


def test_this_device_never_has_to_accept_its_own_keys(make_profile: Callable[..., Profile]) -> None:
    profile = make_profile()
    me = DeviceInfo(profile.device_id, profile.keys.sign_pk, profile.keys.box_pk)
    phone, laptop = device("d_phone"), device("d_laptop")
    own = Peer(profile.user_id, "Dr Alice", "10000000001", "", "", ())
    with profile.open_state() as state:
        # this device enrolled (linked) but is not attested yet: the phone is pinned
        assert state.observe_peer(own, [phone], trusted=me).pending is None
        # the administrator verified the account again: this device appears, and is ours
        assert state.observe_peer(own, [phone, me], trusted=me) == Observation(None, None, False)
        later = state.observe_peer(own, [phone, me, laptop], trusted=me)
        assert later.pending == PeerChange(profile.user_id, added=("d_laptop",))


def test_a_version_1_state_is_migrated_and_keeps_its_pins(make_profile: Callable[..., Profile]) -> None:
    profile = make_profile()
    b1 = device("d_b1")
    db = sqlite3.connect(profile.state_path)
    db.executescript(f"{state_schema._SCHEMA_V1} PRAGMA user_version = 1;")  # as version 1 wrote it
    db.execute(
        "INSERT INTO peers VALUES (?, ?, ?, ?, ?, ?, ?)",
        ("u_bob", "Dr Bob", "10000000002", "", "", msgpack.packb([[b1.device, b1.sign_pk, b1.box_pk]]), 1),
    )
    db.commit()
    db.close()
    with profile.open_state() as state:
        assert state._db.execute("PRAGMA user_version").fetchone()[0] == state_module.SCHEMA_VERSION
        assert state.get_peer("u_bob").devices == (b1,)  # type: ignore[union-attr]
        rekeyed = device("d_b1")
        first_attested = state.observe_peer(bob(rekeyed), [rekeyed])
        assert first_attested.pending == PeerChange("u_bob", changed=("d_b1",)), (
            "keys pinned before attestations existed are compared, not replaced"
        )
    db = sqlite3.connect(profile.state_path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(ProfileCorrupt, match="newer"):
        profile.open_state()


def test_a_sealed_body_moved_to_another_row_does_not_open(make_profile: Callable[..., Profile]) -> None:
    profile = make_profile()
    with profile.open_state() as state:
        a, b = new_message_id(), new_message_id()
        state.record_outgoing(a, "u_bob", 1, "text", "A")
        state.record_outgoing(b, "u_bob", 2, "text", "B")
        db = state._db  # the attack is on the file, so go under the API
        sealed_a = db.execute("SELECT sealed FROM messages WHERE id = ?", (a,)).fetchone()[0]
        db.execute("UPDATE messages SET sealed = ? WHERE id = ?", (sealed_a, b))
        with pytest.raises(ProfileCorrupt):
            state.history()
