"""The hub cannot tell a read notice from a message (SPEC §13.5).

Bob reads Alice's short message, and his device sends her a read notice.
Everything the hub sees of the two, the ``send`` frames it decodes, the
rows it stores and the lines it logs, is compared: same keys, same value
types, same sizes (the plaintexts are padded to 256 bytes). Only ids, keys'
values and times differ. A recipient who turned receipts off sends nothing
to the sender at all.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from miss_client import Client, Message
from miss_client.models import ReadBy

from miss_server.app import HubServer
from protocol import frames as f
from protocol.session import ServerSession
from tests.support.client_fixtures import next_event
from tests.support.verified_hubs import enroll_clinician


def shape(value: Any) -> Any:
    """What a value reveals besides its content: its type and size."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()} if len(value) <= 8 else ("map", len(value))
    if isinstance(value, bytes | str):
        return (type(value).__name__, len(value))
    if isinstance(value, list | tuple):
        return ("list", [shape(v) for v in value])
    return type(value).__name__


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[f.Send]]:
    """Every ``send`` frame the hub decodes, as the hub decoded it."""
    seen: list[f.Send] = []
    original = ServerSession.receive

    def receive(self: ServerSession, data: bytes) -> f.Frame:
        frame = original(self, data)
        if isinstance(frame, f.Send):
            seen.append(frame)
        return frame

    monkeypatch.setattr(ServerSession, "receive", receive)
    yield seen


def frame_shape(frame: f.Send) -> dict[str, Any]:
    m = frame.to_map()
    # envs maps device ids (same length for every device) to envelopes
    m["envs"] = sorted(shape(v) for v in frame.envs.values())
    return {k: shape(v) if k != "envs" else v for k, v in m.items()}


def queued_rows(db: Path, message_id: bytes) -> list[tuple[Any, ...]]:
    """The hub's queued rows of one message, each as (column, type, size) triples."""
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM queue WHERE message_id = ? ORDER BY seq", (message_id,)).fetchall()
    return [
        tuple(
            (k, type(row[k]).__name__, len(row[k]) if isinstance(row[k], bytes | str) else None)
            for k in row.keys()
            if k not in ("seq", "device_id", "peer_user", "peer_device", "recipient_user", "ts", "expires_at")
        )
        for row in rows
    ]


def hub_logs(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    """The hub's own log lines (the WebSocket library's frame dumps aside)."""
    return [(r.name, r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("miss_server")]


async def test_a_read_notice_looks_like_a_message_to_the_hub(
    hub: HubServer, tmp_path: Path, sends: list[f.Send], caplog: pytest.LogCaptureFixture
) -> None:
    alice = await enroll_clinician(hub, tmp_path / "alice", "alice martin", "10000000001")
    bob = await enroll_clinician(hub, tmp_path / "bob", "bob durand", "10000000002")
    db = Path(hub.settings.sqlite_path)
    caplog.set_level(logging.DEBUG)

    # Alice goes offline after writing, so the hub holds both of Bob's
    # sends to her: a short answer and the read notice.
    async with Client.connect(bob) as b:
        async with Client.connect(alice) as a:
            message_id = await a.send(bob.user_id, "ok")
        got = await next_event(b)
        assert isinstance(got, Message) and got.id == message_id
        caplog.clear()
        answer_id = await b.send(alice.user_id, "vu")
        answer_logs = hub_logs(caplog)
        caplog.clear()
        assert await b.mark_read(alice.user_id) == 1
        notice_logs = hub_logs(caplog)

    from_bob = [s for s in sends if s.sender == bob.device_id]
    assert len(from_bob) == 2
    answer_send, notice_send = from_bob
    assert answer_send.id == answer_id and notice_send.id != answer_id
    assert frame_shape(answer_send) == frame_shape(notice_send)
    # the hub's rows for Alice's device: one answer, one notice, same shape
    answer_rows, notice_rows = queued_rows(db, answer_id), queued_rows(db, notice_send.id)
    assert len(answer_rows) == len(notice_rows) == 1
    assert answer_rows == notice_rows
    # what the hub logs of each is the same
    assert [(n, lvl) for n, lvl, _ in answer_logs] == [(n, lvl) for n, lvl, _ in notice_logs]
    for _, _, text in answer_logs + notice_logs:
        assert "read" not in text.lower() and "notice" not in text.lower()

    # Alice's device shows who read it
    async with Client.connect(alice) as a:
        events = await a.drain(idle=0.5, limit=10)
    assert any(isinstance(e, ReadBy) and e.user == bob.user_id and message_id in e.ids for e in events)


async def test_no_read_notice_reaches_the_sender_with_receipts_off(hub: HubServer, tmp_path: Path) -> None:
    alice = await enroll_clinician(hub, tmp_path / "alice", "alice martin", "10000000001")
    bob = await enroll_clinician(hub, tmp_path / "bob", "bob durand", "10000000002")
    async with Client.connect(alice) as a, Client.connect(bob) as b:
        b.set_read_receipts(False)
        message_id = await a.send(bob.user_id, "Patient vu, RAS.")
        got = await next_event(b)
        assert isinstance(got, Message) and got.id == message_id
        assert await b.mark_read(alice.user_id) == 1
        events = await a.drain(idle=1.0, limit=10)
    assert not any(isinstance(e, ReadBy) for e in events), events
    assert not any(isinstance(e, Message) for e in events), events
