"""A hostile operator: whoever controls the hub's host and edits what the hub
serves behind its back. The client tests that stand for a tampering hub (SPEC
§11.2, what a client checks before it encrypts) change the real in-process
hub (the ``hub`` fixture) only through :class:`HostileOperator`, one named
operation per kind of tampering, so that no client test holds SQL.

Theory of operation
-------------------
The Store protocol (miss_server/store/base.py) has no operation to rename a
clinician or to replace a device's keys: an honest hub does neither. An
operator with a shell on the host does it on the SQLite file itself, beside
the running hub, and so does this helper: one short transaction on a
connection of its own, which SQLite's locking (and the busy timeout)
serialises with the store's writer. Attestations are recorded the hub's own
way, :meth:`Store.set_attestation`: what the operator writes there is simply
not what the authority signed for that user.

Each operation then

* reads its effect back through the store's public reads, so that a test
  cannot pass because the tampering silently changed nothing;
* drops the hub's cached account of the user concerned, so that the next
  lookup serves what the tables now hold (as a restarted hub node would).

Only the SQLite store of the ``hub`` fixture is supported.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

from miss_server.app import HubServer
from protocol import attestation

#: The length of the authority's signature in front of an attestation's body.
SIGNATURE_BYTES = 64


class HostileOperator:
    """Tampers with what ``hub`` serves; every method raises
    ``AssertionError`` if the store does not show the change afterwards."""

    def __init__(self, hub: HubServer) -> None:
        self.hub = hub

    async def rename_user(self, user_id: str, name: str) -> None:
        """The directory names ``user_id`` ``name`` from now on; the
        attestation the authority signed still carries the real name."""
        self._execute("UPDATE users SET name = ? WHERE user_id = ?", name, user_id)
        user = await self.hub.store.get_user(user_id)
        assert user is not None and user.name == name, f"{user_id} was not renamed"
        self._forget(user_id)

    async def replace_box_key(self, device_id: str, box_pk: bytes) -> None:
        """The hub lists ``box_pk`` (a key of the operator's) as the box key
        of ``device_id``, so that what a client seals for that device is
        sealed to the operator."""
        self._execute("UPDATE devices SET box_pk = ? WHERE device_id = ?", box_pk, device_id)
        device = await self.hub.store.get_device(device_id)
        assert device is not None and device.box_pk == box_pk, f"{device_id} kept its box key"
        self._forget(device.user_id)

    async def give_attestation(self, user_id: str, signed: bytes) -> None:
        """The hub serves ``signed`` (say, another clinician's genuine
        attestation) as ``user_id``'s."""
        await self.hub.store.set_attestation(user_id, signed)
        user = await self.hub.store.get_user(user_id)
        assert user is not None and user.attestation == signed, f"{user_id}'s attestation is unchanged"
        self._forget(user_id)

    async def alter_attestation(self, user_id: str, **changes: Any) -> bytes:
        """Rewrite fields of ``user_id``'s stored attestation (``name=...``,
        see :class:`protocol.attestation.Attestation`) under the authority's
        original signature, which then no longer verifies; returns what the
        hub now serves."""
        user = await self.hub.store.get_user(user_id)
        assert user is not None and user.attestation is not None, f"{user_id} has no attestation"
        signature = user.attestation[:SIGNATURE_BYTES]
        altered = dataclasses.replace(attestation.peek(user.attestation), **changes)
        forged = signature + altered.body()
        await self.give_attestation(user_id, forged)
        return forged

    def _execute(self, sql: str, *args: object) -> None:
        """One statement in a transaction of its own, on the hub's database
        file; it must change exactly one row."""
        db = sqlite3.connect(self.hub.settings.sqlite_path)
        try:
            with db:
                changed = db.execute(sql, args).rowcount
        finally:
            db.close()
        assert changed == 1, f"{sql!r} changed {changed} rows"

    def _forget(self, user_id: str) -> None:
        self.hub.hub.accounts.forget(user_id)
