"""Guarantees 1 and 3 against a real ``miss-server`` process: an accepted
message survives SIGKILL, and no plaintext lands in the store or the logs."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from protocol.frames import Accepted, Deliver, Delivered
from tests.support.hubproc import HubProcess, enrolled_pair

pytestmark = pytest.mark.slow


async def test_accepted_message_survives_sigkill(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path)
    hub.start()
    try:
        a, b = await enrolled_pair(hub)
        lb = await a.lookup(b.user_id)
        await b.close()  # Bob is offline when the message is accepted
        send = a.message(lb, "survives kill -9")
        await a.send_frame(send)
        assert await a.recv() == Accepted(send.id)
        hub.kill()

        hub.start()  # same store, same port
        b.url = a.url = hub.url
        await b.auth()
        got = await b.recv()
        assert isinstance(got, Deliver) and got.id == send.id
        assert b.open_deliver(got, a.keys.box_pk).body == "survives kill -9"
        # Exactly once: nothing else arrives, before or after the ack.
        with pytest.raises(asyncio.TimeoutError):
            await b.recv(timeout=1.0)
        await b.ack(got.seq)
        await b.lookup(b.user_id)  # frames are handled in order: the ack is stored
        await b.close()
        await b.auth()
        with pytest.raises(asyncio.TimeoutError):
            await b.recv(timeout=1.0)
        # Alice reconnects after the crash and still gets her receipt.
        await a.auth()
        receipt = await a.recv()
        assert isinstance(receipt, Delivered) and receipt.id == send.id and receipt.device == b.device_id
    finally:
        await hub.stop_async()


async def test_marker_is_nowhere_in_store_or_logs(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path)
    hub.start()
    marker = "MARKER-" + secrets.token_hex(12)
    try:
        a, b = await enrolled_pair(hub)
        lb = await a.lookup(b.user_id)
        await b.close()
        send = a.message(lb, f"patient note {marker}")
        await a.send_frame(send)
        assert await a.recv() == Accepted(send.id)
        await b.auth()
        got = await b.recv()
        assert isinstance(got, Deliver)
        assert marker in b.open_deliver(got, a.keys.box_pk).body  # it did travel
    finally:
        await hub.stop_async()  # flush everything to disk before looking
    files = [p for p in tmp_path.rglob("*") if p.is_file()]  # noqa: ASYNC240 (the hub is stopped)
    assert any(p.name.startswith("miss.db") for p in files)
    assert hub.log_path in files and hub.log_path.stat().st_size > 0
    for path in files:
        assert marker.encode() not in path.read_bytes(), f"plaintext marker found in {path}"
