"""The directory of clinicians, as the hub serves it: ``lookup`` of one user
and ``search`` of attestations (SPEC §11.3).

Contract: :class:`Directory` answers with the encoded reply frame, or raises
a :mod:`protocol.errors` request error (``unknown_user``), or
:class:`~miss_server.store.base.StoreUnavailable` for the caller to turn
into ``storage_unavailable``. It reads the store and the node's account
cache; it never writes. The caller checked that the requester may ask
(``hub.py``, SPEC §11.4).
"""

from __future__ import annotations

import time

from protocol import attestation, errors
from protocol.frames import (
    MAX_RECIPIENT_DEVICES,
    MAX_SEARCH_RESULTS,
    DeviceInfo,
    Lookup,
    LookupOk,
    Search,
    SearchOk,
    encode,
)

from .accounts import Accounts
from .store.base import Store

__all__ = ["Directory"]

#: Users a search asks the store for (MAX_SEARCH_RESULTS and some spare).
SEARCH_FETCH = MAX_SEARCH_RESULTS + 14


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Directory:
    """Lookups and searches over the store (see module doc)."""

    def __init__(self, store: Store, accounts: Accounts) -> None:
        self._store = store
        self._accounts = accounts

    async def lookup(self, requester: str, frame: Lookup) -> bytes:
        """A verified, unsuspended clinician or service (or the
        ``requester``'s own account) and their active devices, attested ones
        first; ``replies: false`` for a service that refuses replies."""
        if frame.user is not None:
            user_id = frame.user
        elif frame.rpps is not None:
            found = await self._store.find_user_by_rpps(frame.rpps)
            if found is None:
                raise errors.UnknownUser("no such user")
            user_id = found.user_id
        else:
            raise errors.UnknownUser("lookup names nobody")
        account = await self._accounts.get(user_id, refresh=True)
        if account is None or (user_id != requester and not account.verified(_now_ms())):
            raise errors.UnknownUser("no such user")  # hidden like one that does not exist
        user = account.user
        # Attested first (sorted is stable: oldest first within each); at most
        # what a lookup_ok carries, for accounts from before the device cap.
        listed = sorted(account.devices, key=lambda d: d.device_id not in account.targets)
        return encode(
            LookupOk(
                rid=frame.rid,
                user=user.user_id,
                name=user.name,
                rpps=user.rpps,
                profession=user.profession,
                organisation=user.organisation,
                devices=tuple(
                    DeviceInfo(d.device_id, d.sign_pk, d.box_pk) for d in listed[:MAX_RECIPIENT_DEVICES]
                ),
                att=user.attestation,
                replies=False if user.refuses_replies else None,  # SPEC §17.2
            )
        )

    async def search(self, frame: Search) -> bytes:
        """Attestations of matching clinicians (the store leaves services
        out, SPEC §17.1), leaving out those no client
        would accept (expired, or not readable): they would only take the
        places of valid ones."""
        # A few more than the answer holds: an expired attestation is skipped.
        users = await self._store.search_users(frame.query.strip(), SEARCH_FETCH)
        now = _now_ms()
        atts = []
        for user in users:
            try:
                if user.attestation is not None and attestation.peek(user.attestation).not_after > now:
                    atts.append(user.attestation)
            except attestation.AttestationError:
                continue
            if len(atts) == MAX_SEARCH_RESULTS:
                break
        return encode(SearchOk(frame.rid, tuple(atts)))
