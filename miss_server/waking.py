"""Waking devices: a node's wake-ups on the broker, and the drains that
make up for those lost.

Theory of operation
-------------------
A row is stored before its device is woken (guarantee 1), so a lost
wake-up only delays; what is here bounds the delay.

* :meth:`Waker.wake` publishes without waiting for the broker. On Redis the
  wake-ups are on the publisher's socket when it returns
  (``RespPipeline.call_soon``), so a node killed right after its
  ``accepted`` has sent them.
* :meth:`Waker.wake_together` wakes the devices connected here at once and
  gathers the others' wake-ups of every request resumed in one turn of the
  loop (the sends and acks of one group commit) into one publish, made at
  the end of that turn: a write to Redis, and the pipeline's work, per
  batch rather than per message. A send awaits that write before its
  ``accepted``.
* A wake-up a failed publish lost makes its device owed a drain, published
  again until the broker takes it (``rewake.py``).
* A node killed before its wake-ups left (its publisher's connection being
  opened again, a full socket buffer) is noticed when its presence entries
  expire: the node whose sweep deletes them tells every node
  (:data:`TAG_NODE_LOST` on the control channel) to drain all its devices,
  at most once per :data:`NODE_LOST_DRAIN_INTERVAL`.
* A drain of every device (:meth:`Waker.drain_all`: a broker gap, a lost
  node) gates its store reads: at most ``bulk_reads`` of them at a time
  (half the store's pool by default). A node's thousands of devices would
  otherwise queue as many reads at once on the store's pool, and every
  group commit, every authentication, would wait behind all of them (a
  send's ``accepted`` up to 320 ms late for 3,000 devices, docs/PERFORMANCE.md;
  in proportion for more). The drains take as long as before (the pool was their
  limit already); the devices' requests, and a drain asked for one device
  alone, are not gated.
"""

from __future__ import annotations

import asyncio
import logging
import math

from .broker.base import CONTROL_CHANNEL, Broker, BrokerUnavailable
from .delivery import LocalLinks
from .metrics import Metrics
from .presence import PresenceService
from .rewake import Rewake

__all__ = ["NODE_LOST_DRAIN_INTERVAL", "TAG_NODE_LOST", "Waker"]

log = logging.getLogger("miss.waking")

#: Control message: presence entries of some node expired (it died, or
#: stalled for most of a TTL); every node drains its devices.
TAG_NODE_LOST = b"N"
#: Least time between two drains of every device of a node for it (s): a
#: dead node's entries expire over a few sweeps, and one drain covers them.
NODE_LOST_DRAIN_INTERVAL = 10.0


class Waker:
    """One node's wake-ups and drains (module doc)."""

    def __init__(
        self,
        broker: Broker,
        links: LocalLinks,
        presence: PresenceService,
        metrics: Metrics,
        *,
        bulk_reads: int = 5,
    ) -> None:
        self._broker = broker
        self._links = links
        self._metrics = metrics
        #: Drains owed to devices whose wake-ups a failed publish lost
        #: (rewake.py); the composition root runs its ``run_forever``.
        self.rewake = Rewake(broker)
        # The wake-ups of this turn of the loop, and the future their senders await.
        self._together: tuple[list[tuple[str, bytes]], asyncio.Future[None]] | None = None
        self._woken: asyncio.Future[None] | None = None  # a done one, for nothing to wait for
        presence.on_expired = self.on_entries_expired
        self._drained_all_at = -math.inf  # loop time of the last drain for a lost node
        self._drain_all_timer: asyncio.TimerHandle | None = None
        #: the store reads a drain of every device may have in flight (module doc)
        self.bulk_reads = asyncio.Semaphore(bulk_reads)

    # --- wake-ups ---------------------------------------------------------------

    def wake(self, wakeups: list[tuple[str, bytes]]) -> None:
        """Publish wake-ups, without waiting for the broker; on its socket
        when this returns (module doc)."""
        if wakeups:
            self._broker.publish_soon(wakeups, self._lost)

    def wake_together(self, wakeups: list[tuple[str, bytes]]) -> asyncio.Future[None]:
        """:meth:`wake`, the devices connected here at once, the others in
        this turn's one publish (module doc). Returns a future done once
        they are on the publisher's socket, done already when none left."""
        local: list[tuple[str, bytes]] = []
        remote: list[tuple[str, bytes]] = []
        for wakeup in wakeups:
            (local if self._broker.local(wakeup[0]) else remote).append(wakeup)
        self.wake(local)
        loop = asyncio.get_running_loop()
        if not remote:
            if self._woken is None:
                self._woken = loop.create_future()
                self._woken.set_result(None)
            return self._woken
        if self._together is None:
            self._together = ([], loop.create_future())
            loop.call_soon(self._wake_together_now)
        self._together[0].extend(remote)
        return self._together[1]

    def _wake_together_now(self) -> None:
        assert self._together is not None
        wakeups, done = self._together
        self._together = None
        try:
            self.wake(wakeups)
        finally:
            done.set_result(None)

    def _lost(self, channels: list[str], error: Exception) -> None:
        log.warning("wake-ups not published", extra={"count": len(channels), "error": str(error)})
        self.rewake.add(channels)

    # --- drains ------------------------------------------------------------------

    def drain_all(self) -> None:
        """Every local device reads the store again (wake-ups may have been
        lost), ``bulk_reads`` reads at a time (module doc)."""
        for link in self._links:
            link.request_drain(self.bulk_reads)

    async def on_entries_expired(self, count: int) -> None:
        """Presence's sweep deleted ``count`` entries their node stopped
        refreshing: it may have died with wake-ups unpublished, so every
        node is told to drain its devices (module doc)."""
        log.warning(
            "presence entries expired: a node stopped; every node drains its devices", extra={"count": count}
        )
        try:
            await self._broker.publish(CONTROL_CHANNEL, TAG_NODE_LOST)
        except BrokerUnavailable:
            self.drain_all_paced()  # and the others drain on their broker's gap

    def drain_all_paced(self) -> None:
        """:meth:`drain_all`, at most once per
        :data:`NODE_LOST_DRAIN_INTERVAL`: a call meanwhile is kept for the
        interval's end, so the store reads one drain of every device per
        interval whatever the number of nodes and sweeps."""
        if self._drain_all_timer is not None:
            return  # due already
        loop = asyncio.get_running_loop()
        wait = self._drained_all_at + NODE_LOST_DRAIN_INTERVAL - loop.time()
        if wait > 0:
            self._drain_all_timer = loop.call_later(wait, self._drain_all_for_lost_node)
        else:
            self._drain_all_for_lost_node()

    def _drain_all_for_lost_node(self) -> None:
        self._drain_all_timer = None
        self._drained_all_at = asyncio.get_running_loop().time()
        self._metrics.node_lost_drains.inc()
        self.drain_all()
