"""Lines of the terminal client for receipts, refusals, held messages and
history (miss_client.render, miss_client.chat.EventPrinter)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
from miss_client.chat import EventPrinter
from miss_client.models import Delivered, HistoryEntry, MessageHeld, OwnDevice, Peer, Refused
from miss_client.profile import Profile
from miss_client.render import (
    MessageTexts,
    Names,
    excerpt,
    held_line,
    history_line,
    receipt_line,
    refused_line,
)
from miss_client.state import LocalState

from protocol.crypto import new_message_id

BOB = "u_00000000000000b0"
BOB_DEVICE = "d_1a2b3c4d5e6f7081"
TS = 1_780_000_000_000
WHEN = datetime.fromtimestamp(TS / 1000).strftime("%Y-%m-%d %H:%M")


@pytest.fixture
def state(make_profile: Callable[..., Profile]) -> Iterator[LocalState]:
    profile = make_profile("alice")
    with profile.open_state() as local:
        local.observe_peer(Peer(BOB, "Dr Bob Durand", "10000000012", "médecin", "CHRU", ()), ())
        yield local


def test_excerpts_are_short_one_line_and_safe() -> None:
    assert excerpt("Merci") == "«Merci»"
    assert excerpt("Bonjour, un avis sur le patient de la 12 ?") == "«Bonjour, un avis sur le…»"
    assert excerpt("deux\nlignes") == "«deux lignes»"
    assert excerpt("\x1b[2Jeffacé") == "«␛[2Jeffacé»"


def test_receipts_and_refusals_name_the_message_from_the_history(state: LocalState) -> None:
    sent = new_message_id()
    state.record_outgoing(sent, BOB, TS, "text", "Bonjour, un avis sur le patient de la 12 ?")
    names, texts = Names(state), MessageTexts(state)
    assert receipt_line(Delivered(sent, BOB, BOB_DEVICE, TS), names, texts) == (
        f"[{WHEN}] ✓ delivered to Dr Bob Durand (10000000012), device d_1a2b…: «Bonjour, un avis sur le…»"
    )
    line = refused_line(Refused(sent, BOB, BOB_DEVICE, TS, "sender_unverified"), names, texts)
    assert line == (
        f"[{WHEN}] ✗ NOT delivered: Dr Bob Durand (10000000012)'s device d_1a2b… refused "
        "«Bonjour, un avis sur le…» (reason: the sender could not be verified by that device)"
    )
    assert "delivered to" not in line and "✓" not in line
    line = refused_line(Refused(sent, BOB, BOB_DEVICE, TS, "undecryptable"), names, texts)
    assert line.endswith("(reason: that device could not decrypt or check it)")
    line = refused_line(Refused(sent, BOB, BOB_DEVICE, TS, "some_later_reason"), names, texts)
    assert line.endswith("(reason: some_later_reason)")
    texts.remember(other := new_message_id(), "remembered while sent")
    assert receipt_line(Delivered(other, BOB, BOB_DEVICE, TS), names, texts).endswith(
        "«remembered while sent»"
    )
    unknown = receipt_line(Delivered(new_message_id(), BOB, BOB_DEVICE, TS), names, texts)
    assert unknown.endswith(": a message not in this device's history")


def test_a_held_message_is_one_warning_without_content(state: LocalState) -> None:
    line = held_line(MessageHeld(new_message_id(), BOB, BOB_DEVICE, "sender lookup timed out"), Names(state))
    assert line == (
        "! a message from Dr Bob Durand (10000000012) could not be checked yet (sender lookup timed out); "
        "it will come again on the next connection"
    )


def entry(**kw: object) -> HistoryEntry:
    fields: dict[str, object] = {
        "id": new_message_id(),
        "from_user": "u_00000000000000a1",
        "peer": BOB,
        "direction": "out",
        "sent_at": TS,
        "received_at": TS,
        "kind": "text",
        "body": "Bonjour",
        "status": "accepted",
    }
    return HistoryEntry(**{**fields, **kw})  # type: ignore[arg-type]


def test_history_shows_refusals(state: LocalState) -> None:
    names = Names(state)
    me = f"[{WHEN}] me → Dr Bob Durand (10000000012): Bonjour"
    assert history_line(entry(), names) == me
    assert history_line(entry(delivered_to=(BOB_DEVICE,)), names) == f"{me} ✓"
    assert history_line(entry(status="pending"), names) == f"{me} (pending)"
    refused = (("d_99aa00bb11cc22dd", "sender_unverified"),)
    assert history_line(entry(refused_by=refused), names) == (
        f"{me} ✗ NOT delivered: refused by d_99aa… (the sender could not be verified by that device)"
    )
    assert history_line(entry(delivered_to=(BOB_DEVICE,), refused_by=refused), names) == (
        f"{me} ✓ ✗ refused by d_99aa… (the sender could not be verified by that device)"
    )


class OwnDevicesClient:
    """What EventPrinter asks of a Client, for a receipt naming our own device."""

    user_id = "u_00000000000000a1"
    closed = False

    def __init__(self) -> None:
        self.asked = 0

    async def lookup(self, *, user: str) -> None:
        return None

    async def devices(self) -> list[OwnDevice]:
        self.asked += 1
        return [OwnDevice("d_77ee00000000aa01", "laptop", 0, True, False)]


async def test_our_own_devices_are_named_by_their_label(state: LocalState) -> None:
    client = OwnDevicesClient()
    printer = EventPrinter(state)
    refusal = Refused(new_message_id(), client.user_id, "d_77ee00000000aa01", TS, "undecryptable")
    line = await printer.line(refusal, client)  # type: ignore[arg-type]
    assert "device d_77ee… (laptop) refused" in line
    await printer.line(refusal, client)  # type: ignore[arg-type]
    assert client.asked == 1, "looked up once"
