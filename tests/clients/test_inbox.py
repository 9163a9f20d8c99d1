"""Opening and checking deliveries, store-then-ack (miss_client.inbox), without a hub."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest
from miss_client.errors import ConnectionFailed, RequestTimeout, UnverifiedPeer
from miss_client.inbox import Inbox, Undecryptable, open_delivery
from miss_client.models import Delivered, Message, MessageHeld, Refused
from miss_client.profile import Profile
from miss_client.state import LocalState

from protocol import crypto
from protocol import frames as f

ME, BOB = "u_00000000000000a1", "u_bob"
BOB_KEYS = crypto.DeviceKeys.generate()
BOB_DEVICE = f.DeviceInfo("d_b1", BOB_KEYS.sign_pk, BOB_KEYS.box_pk)


def deliver(
    recipient: crypto.DeviceKeys,
    body: str = "bonjour",
    *,
    seq: int = 1,
    frame_id: bytes | None = None,
    inner_id: bytes | None = None,
    frame_from: str = BOB,
    inner_from: str = BOB,
    inner_to: str = ME,
    from_device: str = "d_b1",
    sender_keys: crypto.DeviceKeys = BOB_KEYS,
) -> f.Deliver:
    frame_id = frame_id or crypto.new_message_id()
    plain = crypto.Plaintext(inner_id or frame_id, inner_from, inner_to, 1234, "text", body)
    env = crypto.seal(crypto.pack_plaintext(plain), sender_keys, recipient.box_pk)
    return f.Deliver(seq, frame_id, frame_from, from_device, 99, env)


def test_open_delivery_checks_pass() -> None:
    me = crypto.DeviceKeys.generate()
    frame = deliver(me)
    message = open_delivery(frame, me, ME, BOB_DEVICE)
    assert message == Message(frame.id, BOB, "d_b1", ME, 1234, "bonjour", "text", False, 99)


def test_own_copy_from_another_device() -> None:
    me, my_phone = crypto.DeviceKeys.generate(), crypto.DeviceKeys.generate()
    phone = f.DeviceInfo("d_phone", my_phone.sign_pk, my_phone.box_pk)
    frame = deliver(
        me, frame_from=ME, inner_from=ME, inner_to=BOB, from_device="d_phone", sender_keys=my_phone
    )
    message = open_delivery(frame, me, ME, phone)
    assert message.outgoing_copy and message.peer == BOB and message.to_user == BOB


@pytest.mark.parametrize(
    "tamper",
    [
        {"inner_id": crypto.new_message_id()},  # hub replays a body under another id
        {"frame_from": "u_carol"},  # hub claims another sender
        {"inner_to": "u_carol"},  # a message for someone else, forwarded to us
        {"sender_keys": crypto.DeviceKeys.generate()},  # not sealed by the sender device
    ],
)
def test_open_delivery_rejects(tamper: dict[str, object]) -> None:
    me = crypto.DeviceKeys.generate()
    with pytest.raises(Undecryptable):
        open_delivery(deliver(me, **tamper), me, ME, BOB_DEVICE)  # type: ignore[arg-type]


class Harness:
    """An Inbox over a real state DB, recording acks, refusals and what was
    stored at ack time. ``lookup_fails`` makes the sender lookup raise."""

    def __init__(self, state: LocalState, keys: crypto.DeviceKeys) -> None:
        self.state = state
        self.acks: list[int] = []
        self.refused: list[tuple[int, str]] = []
        self.stored_when_acked: list[bool] = []
        self.lookup_fails: Exception | None = None
        self.inbox = Inbox(state, keys, ME, self.find_sender, self.ack, self.refuse)

    async def find_sender(self, user: str, device: str) -> f.DeviceInfo | None:
        if self.lookup_fails is not None:
            raise self.lookup_fails
        return BOB_DEVICE if (user, device) == (BOB, "d_b1") else None

    async def ack(self, seq: int) -> None:
        self.acks.append(seq)
        self.stored_when_acked.append(len(self.state.history()) > 0)

    async def refuse(self, seq: int, reason: str) -> None:
        self.refused.append((seq, reason))


@pytest.fixture
def harness(make_profile: Callable[..., Profile]) -> Iterator[Harness]:
    profile = make_profile(user_id=ME)
    with profile.open_state() as state:
        yield Harness(state, profile.keys)


async def test_store_then_ack_then_drop_duplicates(harness: Harness) -> None:
    frame = deliver(harness.inbox._keys, "une question")
    event = await harness.inbox.process(frame)
    assert isinstance(event, Message) and event.body == "une question"
    assert harness.acks == [1] and harness.stored_when_acked == [True]
    redelivered = f.Deliver(2, frame.id, frame.from_user, frame.from_device, frame.ts, frame.env)
    assert await harness.inbox.process(redelivered) is None
    assert harness.acks == [1, 2]
    assert len(harness.state.history()) == 1


async def test_what_cannot_be_accepted_is_refused_not_acked_and_logged_without_content(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """SPEC §6.3: acking would make the sender see a false "delivered"."""
    forged = deliver(harness.inbox._keys, "SECRET CONTENT", inner_to="u_carol", seq=7)
    unknown_device = deliver(harness.inbox._keys, "SECRET CONTENT", from_device="d_gone", seq=8)
    with caplog.at_level(logging.WARNING, logger="miss_client"):
        assert await harness.inbox.process(forged) is None
        assert await harness.inbox.process(unknown_device) is None
        harness.lookup_fails = UnverifiedPeer(BOB, "signature", "not signed by the verification authority")
        assert await harness.inbox.process(deliver(harness.inbox._keys, "SECRET", seq=9)) is None
    assert harness.acks == []
    assert harness.refused == [(7, "undecryptable"), (8, "sender_unverified"), (9, "sender_unverified")]
    assert harness.state.history() == []
    assert "refusing message" in caplog.text and "SECRET" not in caplog.text


async def test_without_refusals_at_the_hub_an_unacceptable_message_is_acked(
    make_profile: Callable[..., Profile],
) -> None:
    profile = make_profile(user_id=ME)
    with profile.open_state() as state:
        harness = Harness(state, profile.keys)
        harness.inbox = Inbox(state, profile.keys, ME, harness.find_sender, harness.ack)  # no refuse
        assert await harness.inbox.process(deliver(profile.keys, inner_to="u_carol", seq=3)) is None
        assert harness.acks == [3] and harness.refused == []


@pytest.mark.parametrize(
    "failure",
    [RequestTimeout("slow hub"), ConnectionFailed("the hub's answer could not be read (malformed_frame)")],
)
async def test_a_sender_that_cannot_be_resolved_yet_holds_the_message_and_not_the_queue(
    harness: Harness, failure: Exception
) -> None:
    held = deliver(harness.inbox._keys, "first", seq=1)
    harness.lookup_fails = failure
    event = await harness.inbox.process(held)
    assert event == MessageHeld(held.id, BOB, "d_b1", str(failure))
    assert harness.acks == [] and harness.refused == [], "kept for the next connection"
    harness.lookup_fails = None
    later = await harness.inbox.process(deliver(harness.inbox._keys, "second", seq=2))
    assert isinstance(later, Message) and later.body == "second" and harness.acks == [2]
    # Redelivered on the next connection, it is taken then.
    again = await harness.inbox.process(held)
    assert isinstance(again, Message) and again.body == "first" and harness.acks == [2, 1]


async def test_refusal_receipts_are_stored_acked_and_deduplicated(harness: Harness) -> None:
    mid = crypto.new_message_id()
    first = await harness.inbox.process(f.Refused(3, mid, BOB, "d_b1", 50, "sender_unverified"))
    assert first == Refused(mid, BOB, "d_b1", 50, "sender_unverified")
    assert await harness.inbox.process(f.Refused(4, mid, BOB, "d_b1", 50, "sender_unverified")) is None
    assert harness.acks == [3, 4]


async def test_receipts_are_stored_acked_and_deduplicated(harness: Harness) -> None:
    mid = crypto.new_message_id()
    first = await harness.inbox.process(f.Delivered(3, mid, BOB, "d_b1", 50))
    assert first == Delivered(mid, BOB, "d_b1", 50)
    assert await harness.inbox.process(f.Delivered(4, mid, BOB, "d_b1", 50)) is None
    assert harness.acks == [3, 4]
