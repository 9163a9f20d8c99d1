"""Time as the protocol counts it: whole milliseconds since the Unix epoch
(every ``ts``, ``not_before``, ``not_after`` and ``expires_at`` of SPEC.md)."""

from __future__ import annotations

import time

#: One day, in the protocol's unit (ms).
DAY_MS = 86_400_000


def now_ms() -> int:
    """The wall clock now, in ms since the epoch, as the hub and clients read it."""
    return time.time_ns() // 1_000_000
