"""The wake-up format between hub nodes (miss_server/wakeup.py), and how a
device's link reads it (miss_server/delivery.py)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from miss_server import wakeup
from miss_server.delivery import RECEIPT_DELAY, DeviceLink
from miss_server.store.base import Kind, Queued, Store, StoreUnavailable
from protocol import errors
from protocol.frames import SERVER_FRAMES, Deliver, Delivered, Refused, decode

MID = bytes(range(16))
ROWS = [
    Queued(7, "d_bob", Kind.MESSAGE, MID, "u_alice", "d_alice", 1_700_000_000_000, b"e" * 40),
    Queued(2**40, "d_alice", Kind.RECEIPT, MID, "u_bob", "d_bob", 1_700_000_000_001, b""),
    Queued(9, "d_alice", Kind.REFUSAL, MID, "u_bob", "d_bob", 1_700_000_000_002, b"undecryptable"),
]
FRAMES = [
    Deliver(7, MID, "u_alice", "d_alice", 1_700_000_000_000, b"e" * 40),
    Delivered(2**40, MID, "u_bob", "d_bob", 1_700_000_000_001),
    Refused(9, MID, "u_bob", "d_bob", 1_700_000_000_002, "undecryptable"),
]


@pytest.mark.parametrize(
    ("row", "frame"), list(zip(ROWS, FRAMES, strict=True)), ids=["message", "receipt", "refusal"]
)
def test_a_row_wakeup_carries_the_frame_the_device_gets(row: Queued, frame: Any) -> None:
    payload = wakeup.row_wakeup(row)
    assert payload[:1] == {Kind.MESSAGE: b"Q", Kind.RECEIPT: b"R", Kind.REFUSAL: b"F"}[row.kind]
    tag, seq, body = wakeup.parse(payload)
    assert (tag, seq) == (payload[0], row.seq)
    assert body == wakeup.row_frame(row)
    assert decode(body, SERVER_FRAMES) == frame


def test_row_wakeups_go_to_each_rows_device_in_order() -> None:
    assert wakeup.row_wakeups(ROWS) == [
        ("dev:d_bob", wakeup.row_wakeup(ROWS[0])),
        ("dev:d_alice", wakeup.row_wakeup(ROWS[1])),
        ("dev:d_alice", wakeup.row_wakeup(ROWS[2])),
    ]


def test_drain_and_close_wakeups_round_trip() -> None:
    assert wakeup.parse(wakeup.DRAIN_WAKEUP) == (wakeup.TAG_DRAIN, 0, b"")
    fatal = [errors.SessionReplaced, errors.DeviceRevoked, errors.AccountSuspended]
    for error in fatal:
        tag, _, body = wakeup.parse(wakeup.close_wakeup(error))
        assert tag == wakeup.TAG_CLOSE and wakeup.close_error(body) is error


@pytest.mark.parametrize("code", [b"rate_limited", b"a_code_from_the_future", b"\xff\xfe", b""])
def test_a_close_wakeup_naming_no_fatal_error_names_nothing(code: bytes) -> None:
    assert wakeup.close_error(wakeup.parse(b"X" + code)[2]) is None


@pytest.mark.parametrize("payload", [b"", b"Q", b"R" + bytes(8), b"F" + bytes(5)])
def test_a_payload_that_is_no_wakeup_is_malformed(payload: bytes) -> None:
    with pytest.raises(wakeup.MalformedWakeup):
        wakeup.parse(payload)


def test_an_unknown_tag_is_returned_for_the_reader_to_ignore() -> None:
    assert wakeup.parse(b"Zsomething") == (ord("Z"), 0, b"something")


# --- what a link does with them ------------------------------------------------------------------


class PendingRows:
    """The one Store call a link makes: ``pending``, counted."""

    def __init__(self, rows: list[Queued]) -> None:
        self.rows = rows
        self.reads = 0

    async def pending(self, device_id: str, after_seq: int, limit: int, now: int) -> list[Queued]:
        self.reads += 1
        return [r for r in self.rows if r.device_id == device_id and r.seq > after_seq][:limit]


def _recording(store: PendingRows, *, refusals: bool = False) -> tuple[DeviceLink, list[bytes]]:
    """A link on ``store``, not started, and what it sends (a close as a line)."""
    sent: list[bytes] = []

    async def send(frames: list[bytes]) -> None:
        sent.extend(frames)

    async def close(code: int, reason: str) -> None:
        sent.append(f"close {code} {reason}".encode())

    return DeviceLink("d_alice", cast(Store, store), send, close, refusals=refusals), sent


async def _link(rows: list[Queued], *, refusals: bool = False) -> tuple[DeviceLink, PendingRows, list[bytes]]:
    store = PendingRows(rows)
    link, sent = _recording(store, refusals=refusals)
    link.start()
    await asyncio.sleep(0.01)  # the first drain
    return link, store, sent


async def test_a_link_sends_row_wakeups_and_drops_refusals_for_an_old_client() -> None:
    link, store, sent = await _link([])
    link.on_wakeup(wakeup.row_wakeup(ROWS[2]))  # a refusal: this client did not name the capability
    link.on_wakeup(wakeup.row_wakeup(ROWS[1]))
    await asyncio.sleep(RECEIPT_DELAY + 0.05)  # receipts wait up to RECEIPT_DELAY to share a write
    await link.stop()
    assert sent == [wakeup.row_frame(ROWS[1])] and store.reads == 1


async def test_a_held_receipt_rides_the_answer_to_the_device_and_is_not_sent_again() -> None:
    link, _, sent = await _link([])
    link.on_wakeup(wakeup.row_wakeup(ROWS[1]))  # held for RECEIPT_DELAY
    assert sent == []
    assert link.take_ready() == [wakeup.row_frame(ROWS[1])]
    assert link.take_ready() == []
    await asyncio.sleep(RECEIPT_DELAY + 0.05)  # nothing is left to send
    link.on_wakeup(wakeup.row_wakeup(ROWS[1]))  # the same row again (a drain met it): in flight
    assert link.take_ready() == []
    await link.stop()
    assert sent == []


async def test_no_row_rides_an_answer_while_a_drain_is_due() -> None:
    link, _, _ = await _link([])
    link.request_drain()  # rows in the store would come after the outbox's
    link.on_wakeup(wakeup.row_wakeup(ROWS[1]))
    assert link.take_ready() == []
    await asyncio.sleep(0.01)
    await link.stop()


async def test_no_row_rides_an_answer_while_the_link_is_writing() -> None:
    gate = asyncio.Event()
    sent: list[bytes] = []

    async def slow_send(frames: list[bytes]) -> None:
        await gate.wait()  # the socket takes its time
        sent.extend(frames)

    async def close(code: int, reason: str) -> None:
        pass

    message = Queued(5, "d_alice", Kind.MESSAGE, MID, "u_bob", "d_bob", 1_700_000_000_000, b"e" * 40)
    link = DeviceLink("d_alice", cast(Store, PendingRows([])), slow_send, close)
    link.start()
    await asyncio.sleep(0.01)
    link.on_wakeup(wakeup.row_wakeup(message))
    await asyncio.sleep(0.01)  # the link is writing the message
    link.on_wakeup(wakeup.row_wakeup(ROWS[1]))  # a newer row: must not overtake it
    assert link.take_ready() == []
    gate.set()
    await asyncio.sleep(RECEIPT_DELAY + 0.05)
    await link.stop()
    assert sent == [wakeup.row_frame(message), wakeup.row_frame(ROWS[1])]


async def test_an_unreadable_wakeup_makes_the_link_read_the_store() -> None:
    link, store, sent = await _link(ROWS[1:2])
    assert sent == [wakeup.row_frame(ROWS[1])] and store.reads == 1
    link.on_wakeup(b"Zfrom a newer node")  # ignored
    await asyncio.sleep(0.01)
    assert store.reads == 1
    link.on_wakeup(b"Q")
    await asyncio.sleep(0.01)
    await link.stop()
    assert store.reads == 2
    assert sent == [wakeup.row_frame(ROWS[1])]  # in flight already: sent once


async def test_a_close_wakeup_ends_the_connection_with_its_error() -> None:
    link, _, sent = await _link([])
    link.on_wakeup(wakeup.close_wakeup(errors.DeviceRevoked))
    await asyncio.sleep(0.01)
    await link.stop()
    error = decode(sent[0], SERVER_FRAMES)
    assert getattr(error, "code", None) == "device_revoked"
    assert sent[1:] == [b"close 4410 device_revoked"]


def test_a_session_replaced_wakeup_names_its_generation() -> None:
    tag, _, body = wakeup.parse(wakeup.close_wakeup(errors.SessionReplaced, 12))
    assert tag == wakeup.TAG_CLOSE and body == b"session_replaced/12"
    assert wakeup.close_error(body) is errors.SessionReplaced and wakeup.close_generation(body) == 12
    assert wakeup.close_generation(b"session_replaced") is None  # from an older node: every connection


async def test_a_link_ends_only_on_a_newer_generation() -> None:
    link, _, sent = await _link([])
    link.generation = 3
    for older in (
        wakeup.close_wakeup(errors.SessionReplaced, 2),
        wakeup.close_wakeup(errors.SessionReplaced, 3),
    ):
        link.on_wakeup(older)  # an older connection's, or its own
    await asyncio.sleep(0.01)
    assert sent == []
    link.on_wakeup(wakeup.close_wakeup(errors.SessionReplaced, 4))
    await asyncio.sleep(0.01)
    await link.stop()
    assert sent[1:] == [b"close 4409 session_replaced"]


class FailingRows(PendingRows):
    """A store that is unreachable for its first ``failures`` reads."""

    def __init__(self, rows: list[Queued], failures: int) -> None:
        super().__init__(rows)
        self.failures = failures

    async def pending(self, device_id: str, after_seq: int, limit: int, now: int) -> list[Queued]:
        if self.failures:
            self.failures -= 1
            self.reads += 1
            raise StoreUnavailable("down")
        return await super().pending(device_id, after_seq, limit, now)


async def test_a_link_whose_store_fails_retries_with_growing_random_delays_and_delivers() -> None:
    store = FailingRows(ROWS[1:2], failures=2)
    link, sent = _recording(store)
    started = asyncio.get_running_loop().time()
    link.start()
    # Delays of at most 1 s, then 2 s (STORE_RETRY_SECONDS doubling), not a fixed cadence.
    for _ in range(60):
        if sent:
            break
        await asyncio.sleep(0.1)
    await link.stop()
    assert sent == [wakeup.row_frame(ROWS[1])] and store.reads == 3
    assert asyncio.get_running_loop().time() - started < 3.5


async def test_a_gated_drain_reads_once_the_gate_has_a_slot_and_so_does_its_retry() -> None:
    """``request_drain(gate)`` (a drain of every device, waking.py): each
    read waits for a slot of the gate, the read that a failed one leaves
    owed as well; the row still arrives."""
    store = FailingRows(ROWS[1:2], failures=0)
    link, sent = _recording(store)
    link.start()
    await asyncio.sleep(0.01)  # the first drain, not gated
    assert store.reads == 1 and sent == [wakeup.row_frame(ROWS[1])]
    link.acked((ROWS[1].seq,))  # sent again by the next drain, as after a reconnection
    sent.clear()

    gate = asyncio.Semaphore(1)
    await gate.acquire()  # every slot taken by other links' reads
    link.request_drain(gate)
    await asyncio.sleep(0.05)
    assert store.reads == 1  # waiting for the gate

    store.failures = 1
    gate.release()
    await asyncio.sleep(0.02)
    assert store.reads == 2 and not sent  # read, failed; the slot is given back
    await gate.acquire()  # taken again before the retry's delay (at most 1 s) ends
    await asyncio.sleep(1.2)
    assert store.reads == 2 and not sent  # the retry waits for the gate too
    gate.release()
    await asyncio.sleep(0.05)
    await link.stop()
    assert store.reads == 3 and sent == [wakeup.row_frame(ROWS[1])]
