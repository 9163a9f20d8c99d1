"""A clinician's own devices, as the hub serves them: ``devices`` (the list),
``link_code`` (a code to enroll one more, SPEC §5.3) and ``revoke`` (SPEC
§11.4). Enrollment itself happens before authentication (``hub.py``).

Contract: each method answers with the encoded reply frame, or raises a
:mod:`protocol.errors` request error, or
:class:`~miss_server.store.base.StoreUnavailable` for the caller to turn
into ``storage_unavailable``. The caller checked that the requester may ask
(``hub.py``; any device may revoke itself). A revocation is audited and
ends the revoked device's connection wherever it is
(``security_feed.py``).
"""

from __future__ import annotations

import logging
import time

from protocol import errors
from protocol.frames import DeviceEntry, Devices, DevicesOk, LinkCode, LinkCodeOk, Ok, Revoke, encode

from .accounts import Accounts
from .audit import AuditTrail
from .codes import code_hash, new_code
from .config import Settings
from .metrics import Metrics
from .security_feed import SecurityFeed
from .store.base import DeviceLimit, Store

__all__ = ["AccountDevices"]

log = logging.getLogger("miss.hub")  # every request handler of the hub logs under one name


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class AccountDevices:
    """The device requests of a signed-in clinician (see module doc)."""

    def __init__(
        self,
        store: Store,
        accounts: Accounts,
        security: SecurityFeed,
        audit: AuditTrail,
        metrics: Metrics,
        settings: Settings,
    ) -> None:
        self._store = store
        self._accounts = accounts
        self._security = security
        self._audit = audit
        self._metrics = metrics
        self._settings = settings

    async def devices(self, user_id: str, frame: Devices) -> bytes:
        """The user's active devices, oldest first, each marked attested or not."""
        account = await self._accounts.get(user_id, refresh=True)
        assert account is not None
        entries = tuple(
            DeviceEntry(d.device_id, d.label, d.created_at, d.device_id in account.targets)
            for d in account.devices
        )
        return encode(DevicesOk(frame.rid, entries))

    async def revoke(self, user_id: str, device_id: str, frame: Revoke) -> bytes:
        """Revoke one of the user's own devices, asked from ``device_id``.
        Raises Forbidden for any other device."""
        account = await self._accounts.get(user_id, refresh=True)
        if account is None or frame.device not in {d.device_id for d in account.devices}:
            raise errors.Forbidden("not one of your active devices")
        revoked = await self._store.revoke_device(frame.device, _now_ms())
        if revoked is not None:
            self._audit.record(
                user_id,
                "device.revoked",
                user_id=user_id,
                device_id=frame.device,
                detail=f"by its owner, from {device_id}",
            )
            self._metrics.revoked.inc()
            log.info("device revoked", extra={"user": user_id, "device": frame.device})
            await self._security.device_revoked(user_id, frame.device)
        return encode(Ok(frame.rid))

    async def link_code(self, user_id: str, device_id: str, frame: LinkCode) -> bytes:
        """A link code, asked from ``device_id``, if the user has room under
        the device cap; raises TooManyDevices otherwise."""
        code = new_code()
        now = _now_ms()
        expires = now + int(self._settings.link_code_ttl_minutes * 60_000)
        try:
            await self._store.add_link_code(
                user_id, code_hash(code), expires, now, self._settings.max_devices
            )
        except DeviceLimit:
            raise errors.TooManyDevices(user_id) from None
        log.info("link code issued", extra={"user": user_id, "device": device_id})
        return encode(LinkCodeOk(rid=frame.rid, code=code, expires=expires))
