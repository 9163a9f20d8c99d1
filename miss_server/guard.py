"""Anti-abuse: the budgets of SPEC.md §11.5, applied by the connection handler.

:class:`Guard` owns the token buckets and says, for each attempt, whether it
may go on: it raises :class:`protocol.errors.RateLimited` (with the delay)
when not. The buckets:

* ``dev:<device>``: requests of one authenticated device (in this process:
  a device is connected to one node at a time);
* ``addr:<address>``: requests of every device behind one client address;
* ``auth:<address>``: authentication and enrollment attempts;
* ``fail:<address>`` and ``faildev:<device id>``: failed authentications and
  wrong enrollment codes. Once one is empty, attempts from that address (or
  for that device id) are refused *before* any check, so a guesser learns
  nothing more until it refills. Every refusal and every failure is audited.

Address, authentication and failure buckets are shared by all nodes through
Redis when Redis is the broker (``ratelimit.RedisLimiter``).
"""

from __future__ import annotations

from protocol import errors

from .audit import AuditTrail
from .config import Settings
from .metrics import Metrics
from .ratelimit import Limiter, MemoryLimiter, parse_rate

__all__ = ["Guard"]


class Guard:
    def __init__(self, settings: Settings, shared: Limiter, audit: AuditTrail, metrics: Metrics) -> None:
        self.local = MemoryLimiter()
        self.shared = shared
        self.audit = audit
        self.metrics = metrics
        self.device_rate = parse_rate(settings.rate_device)
        self.address_rate = parse_rate(settings.rate_address)
        self.auth_rate = parse_rate(settings.rate_auth)
        self.failed_rate = parse_rate(settings.rate_failed_auth)

    async def request(self, user_id: str, device_id: str, address: str) -> None:
        """One request of an authenticated device; raises RateLimited."""
        wait = self.local.take_now(f"dev:{device_id}", self.device_rate)
        bucket = "device"
        if not wait:
            wait = await self.shared.take(f"addr:{address}", self.address_rate)
            bucket = "address"
        if wait:
            self.metrics.throttled.labels(bucket).inc()
            self.audit.record(
                user_id,
                "rate_limited",
                user_id=user_id,
                device_id=device_id,
                address=address,
                detail=f"{bucket} budget spent",
                quiet_key=f"rl:{device_id}",
            )
            raise errors.RateLimited(bucket, retry_after_ms=wait)

    async def attempt(self, address: str, device_id: str | None) -> None:
        """An ``auth`` (of ``device_id``) or ``enroll`` (None) about to be
        checked; raises RateLimited if the address or the device id may not
        try now."""
        wait = await self.shared.take(f"auth:{address}", self.auth_rate)
        what = "attempts"
        if not wait:
            wait = await self.shared.peek(f"fail:{address}", self.failed_rate)
            what = "failures"
        if not wait and device_id is not None:
            wait = await self.shared.peek(f"faildev:{device_id}", self.failed_rate)
        if wait:
            self.metrics.throttled.labels("auth").inc()
            self.audit.record(
                "hub",
                "auth.throttled",
                device_id=device_id,
                address=address,
                detail=f"too many {what}",
                quiet_key=f"at:{address}",
            )
            raise errors.RateLimited("authentication", retry_after_ms=wait)

    async def failed(self, address: str, device_id: str | None, error: errors.ProtocolError) -> None:
        """An attempt failed (bad signature, unknown device, wrong code)."""
        await self.shared.take(f"fail:{address}", self.failed_rate)
        if device_id is not None:
            await self.shared.take(f"faildev:{device_id}", self.failed_rate)
        action = "enroll.failed" if device_id is None else "auth.failed"
        self.audit.record("hub", action, device_id=device_id, address=address, detail=error.code)
