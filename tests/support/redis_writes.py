"""What a hub writes to Redis, counted: for the tests that check wake-ups
share writes (``broker/resp.py``, ``Waker.wake_together``)."""

from __future__ import annotations

import pytest

from miss_server.broker.resp import RespConnection

SPUBLISH = b"$8\r\nSPUBLISH\r\n"


def count_publishes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on (until ``monkeypatch`` undoes it), the number of SPUBLISH
    commands in each write to Redis that carries any, in write order."""
    writes: list[int] = []
    real = RespConnection.write_packed

    def counted(self: RespConnection, packed: bytes) -> None:
        if SPUBLISH in packed:
            writes.append(packed.count(SPUBLISH))
        real(self, packed)

    monkeypatch.setattr(RespConnection, "write_packed", counted)
    return writes
