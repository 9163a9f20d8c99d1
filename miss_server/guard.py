"""Anti-abuse: the budgets of SPEC.md §11.5, applied by the connection handler.

:class:`Guard` owns the token buckets and says, for each attempt, whether it
may go on: it raises :class:`protocol.errors.RateLimited` (with the delay)
when not, or says how long to wait. The buckets:

* ``dev:<device>``: requests of one authenticated device, acks excepted (in
  this process: a device is connected to one node at a time);
* ``svc:<device>``: instead of ``dev:``, the requests of a service
  account's device (SPEC §17.1: a feed sends more than a person);
* ``search:<device>``: its directory searches, on top of ``dev:``;
* ``ack:<device>``: its ``ack`` frames, weighed by size. An ack has no
  answer to carry ``rate_limited``: over budget, the frame waits for its
  tokens before it is handled, and the device's socket is not read
  meanwhile (:meth:`Guard.ack`);
* ``blob:<device>``: its ``blob_put`` frames (upload pieces), which spend
  neither ``dev:`` nor ``addr:``: an upload is hundreds of pieces, and must
  not eat the budget of the device's other requests nor of its address's
  other devices; over budget, the piece waits for its token, like an ack
  (:meth:`Guard.blob_put`);
* ``addr:<address>``: requests of every device behind one client address;
* ``auth:<address>``: authentication and enrollment attempts;
* ``fail:<address>``: failed authentications and wrong enrollment codes.
  Failures slow their address down and never refuse a correct attempt: once
  the bucket is empty, a failed ``auth`` is closed only after a pause
  (:meth:`Guard.failed`), and an ``enroll`` is held before its code is
  checked (:meth:`Guard.enroll_hold`). A device id named by failures is not
  slowed down at all: a signature cannot be guessed, so only its owner's
  correct ones would suffer. Every failure and refusal is audited.

Address, authentication and failure buckets are shared by all nodes through
Redis when Redis is the broker (``ratelimit_redis.RedisLimiter``). An
address's buckets are those of its :func:`~miss_server.admission.address_key`
(an IPv6 client's /64); the audit trail records the address itself.
"""

from __future__ import annotations

import asyncio

from protocol import errors

from .admission import address_key
from .audit import AuditTrail
from .config import Settings
from .metrics import Metrics
from .ratelimit import Limiter, MemoryLimiter, parse_rate

__all__ = ["ACK_BYTES_PER_TOKEN", "MAX_HOLD_SECONDS", "Guard"]

#: An ack frame costs one token, plus one per this many bytes.
ACK_BYTES_PER_TOKEN = 4096
#: Longest pause a failing address's attempt is held (s): within the time a
#: connection has to authenticate (SPEC §4).
MAX_HOLD_SECONDS = 3.0


class Guard:
    def __init__(self, settings: Settings, shared: Limiter, audit: AuditTrail, metrics: Metrics) -> None:
        self.local = MemoryLimiter()
        self.shared = shared
        self.audit = audit
        self.metrics = metrics
        self.device_rate = parse_rate(settings.rate_device)
        self.service_rate = parse_rate(settings.rate_service)
        self.search_rate = parse_rate(settings.rate_search)
        self.ack_rate = parse_rate(settings.rate_ack)
        self.address_rate = parse_rate(settings.rate_address)
        self.auth_rate = parse_rate(settings.rate_auth)
        self.failed_rate = parse_rate(settings.rate_failed_auth)
        self.blob_rate = parse_rate(settings.rate_blob)

    async def request(
        self, user_id: str, device_id: str, address: str, *, search: bool = False, service: bool = False
    ) -> None:
        """One request of an authenticated device (a directory search if
        ``search``; a service account's device, which spends ``rate_service``
        instead of ``rate_device``, if ``service``); raises RateLimited."""
        wait = 0
        if search:  # peeked first, taken last: a search refused costs no search token
            wait = self.local.peek_now(f"search:{device_id}", self.search_rate)
            bucket = "search"
        if not wait:
            if service:
                wait = self.local.take_now(f"svc:{device_id}", self.service_rate)
                bucket = "service"
            else:
                wait = self.local.take_now(f"dev:{device_id}", self.device_rate)
                bucket = "device"
        if not wait:
            wait = await self.shared.take(f"addr:{address_key(address)}", self.address_rate)
            bucket = "address"
        if not wait and search:
            self.local.take_now(f"search:{device_id}", self.search_rate)
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

    async def blob_put(self, device_id: str) -> None:
        """Pay for one ``blob_put`` before it is handled: over budget, wait
        (the device's socket is not read meanwhile) until the bucket holds
        a token, as for an ack. An upload is thus slowed down, never failed."""
        while wait := self.local.take_now(f"blob:{device_id}", self.blob_rate):
            self.metrics.throttled.labels("blob").inc()
            await asyncio.sleep(wait / 1000)

    async def ack(self, device_id: str, size: int) -> None:
        """Pay for one ``ack`` frame of ``size`` bytes before it is handled:
        over budget, wait (the device's socket is not read meanwhile) until
        the bucket holds the cost, so a device never gets more acks through
        than its budget."""
        cost = min(self.ack_rate.burst, 1 + size // ACK_BYTES_PER_TOKEN)
        while wait := self.local.take_now(f"ack:{device_id}", self.ack_rate, cost):
            self.metrics.throttled.labels("ack").inc()
            await asyncio.sleep(wait / 1000)

    async def attempt(self, address: str) -> None:
        """An ``auth`` or ``enroll`` about to be checked; raises RateLimited
        if the address has spent its attempts."""
        wait = await self.shared.take(f"auth:{address_key(address)}", self.auth_rate)
        if wait:
            self.metrics.throttled.labels("auth").inc()
            self.audit.record(
                "hub",
                "auth.throttled",
                address=address,
                detail="too many attempts",
                quiet_key=f"at:{address}",
            )
            raise errors.RateLimited("authentication", retry_after_ms=wait)

    async def enroll_hold(self, address: str) -> float:
        """How long (s) to hold an ``enroll`` from ``address`` before its code
        is checked: 0 unless the address has spent its failures."""
        wait = await self.shared.peek(f"fail:{address_key(address)}", self.failed_rate)
        if not wait:
            return 0.0
        hold = min(MAX_HOLD_SECONDS, wait / 1000)
        self.metrics.throttled.labels("failures").inc()
        self.audit.record(
            "hub",
            "auth.throttled",
            address=address,
            detail=f"too many failures: enrollment held {hold:.1f} s",
            quiet_key=f"at:{address}",
        )
        return hold

    async def failed(self, address: str, device_id: str | None, error: errors.ProtocolError) -> float:
        """An attempt failed (bad signature, unknown device, wrong code):
        the pause (s) before its connection is closed, 0 while the address
        has failures to spare."""
        wait = await self.shared.take(f"fail:{address_key(address)}", self.failed_rate)
        action = "enroll.failed" if device_id is None else "auth.failed"
        self.audit.record(
            "hub",
            action,
            device_id=device_id,
            address=address,
            detail=error.code,
            quiet_key=f"af:{address}:{device_id}" if wait else None,
        )
        if wait:
            self.metrics.throttled.labels("failures").inc()
        return min(MAX_HOLD_SECONDS, wait / 1000)
