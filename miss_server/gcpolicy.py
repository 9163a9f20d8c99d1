"""The garbage collector's settings of a hub process (``miss-server`` and
each of its workers), applied once the node serves.

Why: CPython's cyclic collector runs a young collection every 700 net
allocations of container objects and, every 100 of those, a full one as
soon as the objects that survived since the last full one reach a quarter
of the old ones. Every authenticated connection leaves about a hundred
long-lived objects (its WebSocket, protocol, session, delivery link,
tasks...), so during a reconnection storm the heap grows by a quarter again
and again and each growth costs a full collection over every connection
held: measured on an auth storm of 3,000 devices, 0.82 s of the hub's
2.44 s of CPU (a third of each authentication) went to the collector, in
pauses of 120 ms.

What: the objects made while starting (modules, configuration, the
server's own structures, ~60,000 of them) are moved out of the collector's
sight (:func:`gc.freeze`): they live as long as the process and no
collection ever needs to look at them again. A young collection waits for
50,000 net allocations instead of 700: most objects of a request die
young by reference counting before any collection sees them, and a
connection's long-lived ones are visited a few times rather than dozens.
The older generations keep CPython's ratios (10 and 10), so cyclic garbage
(the reference cycles a closed connection leaves) is still collected, only
in larger, rarer batches: the same storm then spends 0.16 s in the
collector, in pauses of 20 ms, and a full collection is rare.

Tests that run a hub in-process do not call this: it changes the whole
interpreter's collector.
"""

from __future__ import annotations

import gc

__all__ = ["THRESHOLDS", "tune"]

#: gc.set_threshold arguments: net allocations before a young collection,
#: then young collections per middle one, middle ones per full one.
THRESHOLDS = (50_000, 10, 10)


def tune() -> None:
    """Freeze what exists now and set :data:`THRESHOLDS`; call once the
    process serves."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
