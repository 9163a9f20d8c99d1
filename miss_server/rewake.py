"""Making up for wake-ups a failed publish lost.

A row is stored before its wake-up is published, so a lost wake-up never
loses the row; but the row then waits for something else to send it: the
device's next connection, another wake-up of the same device, or, when the
broker's subscriber connection drops, the drain every device gets after the
gap. A publish can fail while the subscriber stays up (the publisher's own
connection reset, a Redis failover seen first by the publisher, a full
output buffer): nothing else then happens, and a device that stays connected
and receives nothing more would not get the row until it reconnects.

:class:`Rewake` keeps the channels whose wake-ups were lost and publishes a
drain (``b"D"``, wakeup.py) on each of them, first after ``DELAYS[0]``, then
after each next delay while the broker still refuses, then every
``DELAYS[-1]`` until it accepts. A drain is the right make-up for any lost
wake-up: the device's node reads the device's rows from the store, in order,
skipping those already in flight, and sends what a refusal or a capability
does not hold back; a device connected nowhere ignores it (its next
connection drains). The set holds at most one entry per device channel, so
a long outage costs one entry per device that was to be woken.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from .broker.base import Broker, BrokerUnavailable
from .wakeup import DRAIN_WAKEUP

__all__ = ["DELAYS", "Rewake"]

log = logging.getLogger("miss.rewake")

#: Seconds before each try to publish the drains again; the last repeats.
DELAYS = (0.05, 0.5, 2.0, 10.0)


class Rewake:
    """The device channels owed a drain, and the task that publishes them."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._owed: set[str] = set()
        self._pending = asyncio.Event()

    def __len__(self) -> int:
        return len(self._owed)

    def add(self, channels: Iterable[str]) -> None:
        """Owe a drain to each of ``channels`` (device channels whose
        wake-ups were not published)."""
        before = len(self._owed)
        self._owed.update(channels)
        if len(self._owed) > before:
            self._pending.set()

    async def run_forever(self) -> None:
        """Publish the drains owed, retrying with :data:`DELAYS`; cancel to stop."""
        while True:
            await self._pending.wait()
            await self._publish_owed()

    async def _publish_owed(self) -> None:
        """Try until nothing is owed (channels added meanwhile included)."""
        attempt = 0
        while self._owed:
            await asyncio.sleep(DELAYS[min(attempt, len(DELAYS) - 1)])
            attempt += 1
            owed, self._owed = self._owed, set()
            self._pending.clear()
            try:
                await self._broker.publish_many([(channel, DRAIN_WAKEUP) for channel in sorted(owed)])
            except BrokerUnavailable as exc:
                self._owed |= owed
                log.warning("drains owed not published", extra={"count": len(self._owed), "error": str(exc)})
                continue
            log.info("drains published for lost wake-ups", extra={"count": len(owed), "attempt": attempt})
