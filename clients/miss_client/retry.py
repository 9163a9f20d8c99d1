"""When a request that may be resent is resent: :class:`RetryPolicy` (SPEC §6.2, §9).

Two kinds of answers are worth another try, each with its own budget:

* ``storage_unavailable`` and ``rate_limited`` (:data:`RETRY_LATER`): the
  same request, after the ``retry_after`` the hub named (else
  ``default_delay``), at most ``max_delay`` seconds; ``attempts`` tries in all;
* ``missing_devices`` and ``unknown_device`` (:data:`DEVICES_CHANGED`), for a
  ``send`` only: at once, with freshly looked-up device lists and the same
  message id; at most ``refreshes`` times.

Anything else, and the last error of a spent budget, goes to the caller
unchanged. One loop serves every such request, in tenacity's idiom (like
:mod:`miss_client.reconnect`)::

    retrying = policy.retrying("retrying lookup")
    async for attempt in retrying:
        ...                        # errors here are not retried
        with attempt:
            return await request(refresh=retrying.refresh)
    raise AssertionError("unreachable")
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState

from protocol.errors import MissingDevices, ProtocolError, RateLimited, StorageUnavailable, UnknownDevice

__all__ = ["DEVICES_CHANGED", "RETRY_LATER", "RetryPolicy", "Retrying"]

log = logging.getLogger("miss_client")

#: Answers after which the same request may pass later.
RETRY_LATER: tuple[type[ProtocolError], ...] = (StorageUnavailable, RateLimited)
#: Answers to a ``send`` after which it may pass once the device lists are refreshed.
DEVICES_CHANGED: tuple[type[ProtocolError], ...] = (MissingDevices, UnknownDevice)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How :meth:`~miss_client.client.Client.send` retries (and, with
    ``attempts`` only, every other request that may be resent: lookup,
    search, devices, revoke, link code, status, watch).

    ``attempts``: total tries when the hub answers a retryable error
    (storage_unavailable, rate_limited), waiting its ``retry_after`` (or
    ``default_delay``), at most ``max_delay`` seconds, between tries.
    ``refreshes``: how many times a changed device list is refreshed and the
    message resent with the same id.
    """

    attempts: int = 5
    refreshes: int = 3
    default_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, exc: ProtocolError) -> float:
        """Seconds to wait before retrying after ``exc``."""
        seconds = exc.retry_after_ms / 1000 if exc.retry_after_ms else self.default_delay
        return min(max(seconds, 0.0), self.max_delay)

    def retrying(self, label: str, *, refresh_devices: bool = False) -> Retrying:
        """The tries of one request under this policy (see the module
        docstring); ``label`` starts each retry's log line ("retrying lookup",
        "resending <id>"). :data:`DEVICES_CHANGED` is retried only with
        ``refresh_devices``."""
        return Retrying(self, label, refresh_devices=refresh_devices)


class Retrying:
    """One request's tries: an async iterator of tenacity attempts.

    ``refresh`` turns True once a :data:`DEVICES_CHANGED` answer was retried:
    every later try must look the device lists up again. Iterate it once.
    """

    def __init__(self, policy: RetryPolicy, label: str, *, refresh_devices: bool = False) -> None:
        self.policy = policy
        self.label = label
        self.refresh_devices = refresh_devices
        self.refresh = False
        self._tries = 0  # RETRY_LATER answers so far
        self._refreshes = 0  # DEVICES_CHANGED answers so far
        self._delay: float | None = None  # before the next try; None: resend at once
        self._tenacity = AsyncRetrying(
            retry=self._retry, wait=self._wait, sleep=self._sleep, before_sleep=self._log, reraise=True
        )

    def __aiter__(self) -> AsyncRetrying:
        return self._tenacity.__aiter__()

    def _retry(self, state: RetryCallState) -> bool:
        # tenacity asks this once per finished try, so the budgets are kept here.
        exc = None if state.outcome is None else state.outcome.exception()
        if self.refresh_devices and isinstance(exc, DEVICES_CHANGED):
            self._refreshes += 1
            self.refresh = True
            self._delay = None
            return self._refreshes <= self.policy.refreshes
        if isinstance(exc, RETRY_LATER):
            self._tries += 1
            self._delay = self.policy.delay(exc)
            return self._tries < self.policy.attempts
        return False

    def _wait(self, state: RetryCallState) -> float:
        return self._delay or 0.0

    async def _sleep(self, seconds: float) -> None:
        # A refresh resends at once, without yielding to the loop first.
        if self._delay is not None:
            await asyncio.sleep(seconds)

    def _log(self, state: RetryCallState) -> None:
        exc = None if state.outcome is None else state.outcome.exception()
        assert isinstance(exc, ProtocolError)
        if self._delay is None:
            log.info("%s: device list changed (%s)", self.label, exc.code)
        else:
            log.info("%s in %.2f s: %s", self.label, self._delay, exc.code)
