"""What the hub knows of an account when it routes a message (SPEC.md §6.2, §11).

An :class:`Account` says whether a user exists, is suspended, holds a valid
attestation of the verification authority, and which of their devices are
*targets*: active in the store **and** vouched for, with the same keys, by
that attestation. A device linked since the last verification, or one whose
keys in the store differ from the attested ones, is not a target: honest
clients encrypt nothing to it, and it may not send.

:class:`Accounts` caches them per user, the ``max_entries`` most recently
used (a clinician's account is about a kilobyte). The cache is a hint: the hub reloads
an entry before it refuses anything because of it, and drops entries when a
node announces a change (enrollment, revocation, verification, suspension).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from protocol import attestation
from protocol.rotation import AuthorityKeys

from .store.base import Device, Store, User

__all__ = ["Account", "Accounts"]

log = logging.getLogger("miss.accounts")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Account:
    user: User
    devices: tuple[Device, ...]  # active ones, oldest first
    targets: frozenset[str]  # active and attested device ids
    verified_until: int  # ms; 0 when there is no valid attestation

    @property
    def suspended(self) -> bool:
        return self.user.suspended

    def verified(self, now: int) -> bool:
        return not self.user.suspended and now < self.verified_until

    def may_send(self, device_id: str, now: int) -> bool:
        return self.verified(now) and device_id in self.targets


class Accounts:
    """Account records of one hub node, loaded from the store on demand."""

    def __init__(
        self, store: Store, authority_pk: bytes | AuthorityKeys | None, max_entries: int = 50_000
    ) -> None:
        """``authority_pk``: the authority key, or the keys of its rotation
        (an older one counts until its ``until``, SPEC §15)."""
        self.store = store
        self.authority_pk = authority_pk
        self.max_entries = max_entries
        self._cache: OrderedDict[str, Account | None] = OrderedDict()  # least recently used first

    async def get(self, user_id: str, *, refresh: bool = False) -> Account | None:
        """The account of ``user_id``, None if no such user. Raises StoreUnavailable."""
        if not refresh and user_id in self._cache:
            self._cache.move_to_end(user_id)
            return self._cache[user_id]
        user, devices = await self.store.get_account(user_id)
        account = None if user is None else self._build(user, devices)
        self._cache[user_id] = account
        self._cache.move_to_end(user_id)
        if len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return account

    def forget(self, user_id: str) -> None:
        self._cache.pop(user_id, None)

    def forget_all(self) -> None:
        """Forget every cached account (what a node restart does)."""
        self._cache.clear()

    def _build(self, user: User, devices: list[Device]) -> Account:
        targets: frozenset[str] = frozenset()
        verified_until = 0
        if user.attestation is not None and self.authority_pk is not None:
            try:
                # One signature check gives both the verdict and, for a rotation's
                # older key, the 'until' at which it stops counting (SPEC §15).
                att, counts_until = attestation.verify_counted(user.attestation, self.authority_pk, now_ms())
            except attestation.AttestationError as exc:
                log.info("attestation not valid", extra={"user": user.user_id, "error": str(exc)})
            else:
                if att.user == user.user_id:
                    verified_until = counts_until + 1
                    targets = frozenset(
                        d.device_id
                        for d in devices
                        if att.device(d.device_id)
                        == attestation.AttestedDevice(d.device_id, d.sign_pk, d.box_pk)
                    )
        return Account(user, tuple(devices), targets, verified_until)
