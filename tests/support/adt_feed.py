"""A hospital's ADT feed for the miss-adt tests: the PAM-FR messages of
tests/adt/messages (each encoded in the character set its MSH-18 names),
variants of them, an MLLP client, ACK reading, a scripted
:class:`~miss_adt.sender.NoticeSender`, and miss-adt itself on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hl7.mllp import open_hl7_connection
from miss_adt.audit import AuditLog
from miss_adt.mapping import Mapping, load_mapping
from miss_adt.sender import Link, StaticLink
from miss_adt.server import start_mllp
from miss_adt.service import AdtService
from miss_adt.store import AdtStore
from miss_client.errors import ConnectionLost

from protocol.errors import UnknownUser
from protocol.notices import Notice

__all__ = [
    "MESSAGES",
    "Ack",
    "AdtRunning",
    "FakeSender",
    "MllpClient",
    "message",
    "parse_ack",
    "running_adt",
]

MESSAGES = Path(__file__).resolve().parent.parent / "adt" / "messages"


def message(name: str, **subs: str) -> bytes:
    """The message ``tests/adt/messages/<name>.hl7`` with each ``old=new``
    of ``subs`` replaced (``CHP000101="X1"`` gives it another MSH-10,
    ``MVT000101=...`` another movement, ``4000123456=...`` another IPP)."""
    data = (MESSAGES / f"{name}.hl7").read_bytes()
    codec = "latin-1" if b"|8859/1|" in data else "utf-8"  # as its MSH-18 says
    for old, new in subs.items():
        assert old.encode(codec) in data, f"{old} is not in {name}"
        data = data.replace(old.encode(codec), new.encode(codec))
    return data


@dataclass(frozen=True)
class Ack:
    """An ACK as read back: MSA-1..3, and ERR-2, ERR-3.1, ERR-5.1, ERR-8."""

    text: str
    code: str
    control_id: str
    note: str
    err_location: str = ""
    err_code: str = ""
    err_reason: str = ""
    err_text: str = ""
    msh: tuple[str, ...] = ()


def parse_ack(text: str) -> Ack:
    segments = {s.split("|", 1)[0]: s.split("|") for s in text.split("\r") if s}
    msa = segments["MSA"] + [""] * 4
    err = segments.get("ERR", []) + [""] * 10
    return Ack(
        text,
        msa[1],
        msa[2],
        msa[3],
        err[2],
        err[3].split("^")[0],
        err[5].split("^")[0],
        err[8],
        tuple(segments["MSH"]),
    )


class MllpClient:
    """One MLLP connection of the feed (the ``hl7`` library's client)."""

    def __init__(self, reader: Any, writer: Any) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> MllpClient:
        reader, writer = await open_hl7_connection(host, port)
        return cls(reader, writer)

    async def send(self, block: bytes, timeout: float = 15.0) -> Ack:
        """Send one message and wait for its ACK."""
        self.writer.writeblock(block)
        await self.writer.drain()
        raw = await asyncio.wait_for(self.reader.readblock(), timeout)
        return parse_ack(raw.decode("latin-1" if b"8859/1" in raw else "utf-8"))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@dataclass
class FakeSender:
    """A scripted hub: idempotent by key like the SDK; ``unknown`` RPPS
    numbers raise UnknownUser; ``fail_next`` errors are raised by the next
    sends (one each)."""

    unknown: set[str] = field(default_factory=set)
    fail_next: list[BaseException] = field(default_factory=list)
    sent: list[tuple[str, str | None, Notice]] = field(default_factory=list)
    ids: dict[str, bytes] = field(default_factory=dict)
    recalled: list[bytes] = field(default_factory=list)

    async def send_notice(self, notice: Notice, *, key: str, rpps: str | None = None) -> bytes:
        if self.fail_next:
            raise self.fail_next.pop(0)
        if rpps in self.unknown:
            raise UnknownUser("no such RPPS")
        if key in self.ids:
            return self.ids[key]
        self.ids[key] = uuid.uuid4().bytes
        self.sent.append((key, rpps, notice))
        return self.ids[key]

    def notice_id(self, key: str) -> bytes | None:
        return self.ids.get(key)

    async def recall(self, message_id: bytes) -> int:
        if self.fail_next:
            raise self.fail_next.pop(0)
        self.recalled.append(message_id)
        return 1


def lost() -> ConnectionLost:
    return ConnectionLost("hub gone")


@dataclass
class AdtRunning:
    service: AdtService
    store: AdtStore
    audit: AuditLog
    port: int
    link: Link


@contextlib.asynccontextmanager
async def running_adt(
    tmp_path: Path,
    link: Link | None = None,
    *,
    mapping: Mapping | None = None,
    spool_max: int = 100_000,
    retry_max: float = 2.0,
    audit_path: Path | None = None,
) -> AsyncIterator[AdtRunning]:
    """miss-adt serving MLLP on a free port of 127.0.0.1, its database in
    ``tmp_path``, its audit log in memory (or at ``audit_path``), the spool
    retried in the background."""
    store = AdtStore(tmp_path / "adt" / "miss-adt.db")
    audit = AuditLog(audit_path)
    link = link or StaticLink(FakeSender())
    service = AdtService(
        store, mapping or load_mapping(), link, audit, spool_max=spool_max, retry_max=retry_max
    )
    server = await start_mllp(service, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    spool = asyncio.create_task(service.run_spool())
    try:
        yield AdtRunning(service, store, audit, port, link)
    finally:
        spool.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await spool
        server.close()
        await server.wait_closed()
        store.close()
        audit.close()
