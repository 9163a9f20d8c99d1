"""The local state DB (miss_client.state): dedupe, history, receipts, pinning."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from miss_client.errors import ProfileCorrupt
from miss_client.models import Message, Peer
from miss_client.profile import Profile

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


def test_pinning_reports_device_changes(make_profile: Callable[..., Profile]) -> None:
    profile = make_profile()
    b1, b2 = device("d_b1"), device("d_b2")
    with profile.open_state() as state:
        first = state.save_peer(bob(b1))
        assert first.first_seen and not first
        assert not state.save_peer(bob(b1)), "same devices: no change"
        grown = state.save_peer(bob(b1, b2))
        assert grown.added == ("d_b2",) and not grown.changed
        rekeyed = state.save_peer(bob(device("d_b1"), b2))
        assert rekeyed.changed == ("d_b1",) and not rekeyed.added
        shrunk = state.save_peer(bob(b2))
        assert shrunk.removed == ("d_b1",)
        assert state.find_peer("10000000002") == bob(b2)
        assert state.find_peer("u_bob") == bob(b2)
        assert state.get_peer("u_nobody") is None


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
