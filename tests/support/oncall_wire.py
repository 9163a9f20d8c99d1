"""On-call roles and urgent messages on the wire (SPEC §14), for the hub's
tests: a raw device that names ``oncall`` and records what it receives,
and what a client does to send to a role or urgently (a body sealed once,
one key wrap per device) and to open what it gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from protocol import crypto
from protocol.frames import (
    CAP_ONCALL,
    CAP_REFUSALS,
    CAP_TEAMS,
    Deliver,
    Delivered,
    Frame,
    Presence,
    Refused,
    RoleChanged,
    Send,
    TeamChanged,
    Urgent,
    UrgentReminder,
    UrgentStatus,
)
from tests.support.team_wire import TeamDevice, now_ms

#: Frames that are no answer to a request.
PUSHES = (Deliver, Delivered, Refused, Presence, TeamChanged, UrgentStatus, UrgentReminder, RoleChanged)


@dataclass
class OncallDevice(TeamDevice):
    """A raw device naming ``refusals``, ``teams`` and ``oncall``; a
    :meth:`record` task keeps every frame it receives, with its time."""

    caps: tuple[str, ...] | None = (CAP_REFUSALS, CAP_TEAMS, CAP_ONCALL)
    seen: list[tuple[float, Frame]] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    async def ask(self, frame: Frame) -> Frame:
        """Send a request; its answer. Rows and pushes that come first are held."""
        await self.send_frame(frame)
        skipped = []
        while True:
            reply = await self.recv()
            if isinstance(reply, PUSHES):
                skipped.append(reply)
                continue
            self.held[:0] = skipped
            return reply

    def record(self) -> None:
        """From now on, keep every frame received (held ones first) in :attr:`seen`."""
        started = time.monotonic()
        for frame in self.held:
            self.seen.append((started, frame))
        self.held.clear()

        async def read() -> None:
            with contextlib.suppress(Exception):
                while True:
                    frame = await self.recv(timeout=3600)
                    self.seen.append((time.monotonic(), frame))

        self._reader = asyncio.create_task(read())

    async def stop_recording(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None

    async def received(self, quiet: float = 0.3) -> list[Frame]:
        """Every frame held or received until none comes for ``quiet`` s."""
        out = list(self.held)
        self.held.clear()
        with contextlib.suppress(TimeoutError):
            while True:
                out.append(await self.recv(timeout=quiet))
        return out

    def of(self, kind: type[Any]) -> list[tuple[float, Any]]:
        return [(t, f) for t, f in self.seen if isinstance(f, kind)]


def keys(*users: list[OncallDevice], but: OncallDevice | None = None) -> dict[str, bytes]:
    return {d.device_id: d.keys.box_pk for devs in users for d in devs if d is not but}


def sealed(
    dev: OncallDevice,
    to: str,
    targets: dict[str, bytes],
    text: str,
    *,
    urgent: Urgent | None = None,
    mid: bytes | None = None,
) -> Send:
    """A ``send`` of ``text`` to ``to`` sealed once (SPEC §13.3), its key wrapped for each of ``targets``."""
    mid = mid or crypto.new_message_id()
    plain = crypto.Plaintext(mid, dev.user_id, to, now_ms(), "text", text, urgent=urgent is not None)
    key, body = crypto.seal_body(crypto.pack_plaintext(plain, pad_to=256), mid, dev.keys)
    wraps = {d: crypto.wrap_key(key, dev.keys, box_pk) for d, box_pk in targets.items()}
    return Send(mid, dev.device_id, to, wraps, body=body, urgent=urgent)


def opened(dev: OncallDevice, frame: Deliver, sender: OncallDevice) -> crypto.Plaintext:
    assert frame.body is not None
    key = crypto.unwrap_key(frame.env, dev.keys, sender.keys.box_pk)
    return crypto.unpack_plaintext(crypto.open_body(frame.body, key, frame.id, sender.keys.sign_pk))
