"""The hub's side of the audit log: security events, written in the background.

Who, when, what: never message content, keys or codes (docs/ARCHITECTURE.md, guarantee
3). :class:`AuditTrail` queues events and a background task appends them to
the store in batches, so that a burst of failed authentications costs the
event loop a list append each, not a database write each. Repetitive events
(``rate_limited`` of one device, say) are recorded at most once per
``quiet_seconds`` per key, with the count of those folded in.

The queue is bounded: if the store stays unreachable, the oldest events are
dropped and a warning is logged (an audit outage must not become a memory
leak or stop clinicians from talking).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from .store.base import AuditEvent, Store, StoreUnavailable

__all__ = ["AuditTrail"]

log = logging.getLogger("miss.audit")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class AuditTrail:
    def __init__(self, store: Store, *, flush_seconds: float = 0.2, quiet_seconds: float = 60.0) -> None:
        self.store = store
        self.flush_seconds = flush_seconds
        self.quiet_seconds = quiet_seconds
        self._queue: deque[AuditEvent] = deque(maxlen=50_000)
        self._quiet: dict[str, tuple[float, int]] = {}  # key -> (until, folded count)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def record(
        self,
        actor: str,
        action: str,
        *,
        user_id: str | None = None,
        device_id: str | None = None,
        address: str | None = None,
        detail: str = "",
        quiet_key: str | None = None,
    ) -> None:
        """Queue one event. With ``quiet_key``, further events of that key
        within ``quiet_seconds`` are only counted, and the count goes into
        the next one recorded."""
        if quiet_key is not None:
            now = time.monotonic()
            until, folded = self._quiet.get(quiet_key, (0.0, 0))
            if now < until:
                self._quiet[quiet_key] = (until, folded + 1)
                return
            self._quiet[quiet_key] = (now + self.quiet_seconds, 0)
            if folded:
                detail = f"{detail} (+{folded} similar before)".strip()
            if len(self._quiet) > 100_000:
                self._quiet = {k: v for k, v in self._quiet.items() if v[0] > now}
        self._queue.append(AuditEvent(now_ms(), actor, action, user_id, device_id, address, detail))
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit")

    async def stop(self) -> None:
        """Write what is queued (best effort), then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def flush(self) -> None:
        while self._queue:
            batch = list(self._queue)
            try:
                await self.store.audit(batch)
            except StoreUnavailable as exc:
                log.warning("audit events not written yet", extra={"count": len(batch), "error": str(exc)})
                return
            for _ in batch:
                self._queue.popleft()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.flush_seconds)
            await self.flush()
            if self._queue:  # the store is down: try again later
                await asyncio.sleep(1.0)
                self._wake.set()
