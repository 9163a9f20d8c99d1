"""Hubs with verified clinicians, for the client SDK tests (SPEC §11).

* :class:`AttestedFakeHub`: the scripted fake hub of tests/support/fakehub.py,
  whose ``lookup_ok`` frames carry an attestation of each user's current
  devices by the tests' authority (tests/support/authority.py), so that the
  SDK, which refuses unverified clinicians, can talk to it. A test can make a
  user unverified (:attr:`AttestedFakeHub.unverified`) or serve a crafted
  attestation (:attr:`AttestedFakeHub.attestations`).
* :func:`enroll_clinician`: a clinician on the real in-process hub (the
  ``hub`` fixture), enrolled through the SDK and, by default, verified by
  the authority right after, as an administrator would.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from miss_client import KDF_INTERACTIVE, Profile, enroll
from websockets.asyncio.server import ServerConnection

from miss_server.app import HubServer
from protocol import attestation
from protocol import frames as f
from protocol.errors import ProtocolError, UnknownUser
from protocol.session import ServerSession, error_frame
from tests.support.authority import AUTHORITY, AUTHORITY_PK, DAY_MS, verify
from tests.support.client_fixtures import PASSPHRASE
from tests.support.fakehub import FakeHub
from tests.support.wire import invite

__all__ = [
    "AUTHORITY_PK",
    "PASSPHRASE",
    "AttestedFakeHub",
    "enroll_clinician",
    "enroll_linked",
    "fake_clinician",
    "hub_sql",
    "overwrite_device_keys",
]


class AttestedFakeHub(FakeHub):
    def __init__(self) -> None:
        super().__init__()
        #: Users whose lookups carry no attestation.
        self.unverified: set[str] = set()
        #: Attestations to serve instead of a fresh one, by user.
        self.attestations: dict[str, bytes] = {}
        #: Errors to answer the next lookups with, in order.
        self.lookup_errors: list[ProtocolError] = []

    def attest(self, user: str, devices: list[f.DeviceInfo] | None = None) -> bytes:
        """A fresh attestation of ``user`` and ``devices`` (default: their current devices)."""
        info = self.users[user]
        now = time.time_ns() // 1_000_000
        devices = tuple(
            attestation.AttestedDevice(d.device, d.sign_pk, d.box_pk)
            for d in (info.devices.values() if devices is None else devices)
        )
        att = attestation.Attestation(
            info.user, info.rpps, info.name, "médecin", "CHRU", devices, now - 60_000, now + DAY_MS
        )
        return attestation.sign(att, AUTHORITY)

    async def _frame(self, ws: ServerConnection, session: ServerSession, frame: f.Frame) -> None:
        if not isinstance(frame, f.Lookup) or self.fatal_on_lookup is not None:
            await super()._frame(ws, session, frame)
            return
        # FakeHub's lookup, with the attestation added.
        self.received.append(frame)
        for extra in self.before_reply:
            await ws.send(f.encode(extra))
        self.before_reply = []
        if self.lookup_errors:
            await ws.send(error_frame(self.lookup_errors.pop(0), rid=frame.rid))
            return
        found = self.users.get(frame.user or "") or next(
            (u for u in self.users.values() if u.rpps == frame.rpps), None
        )
        if found is None:
            await ws.send(error_frame(UnknownUser(), rid=frame.rid))
            return
        att = None
        if found.user not in self.unverified:
            att = self.attestations.get(found.user) or self.attest(found.user)
        reply = f.LookupOk(
            frame.rid,
            found.user,
            found.name,
            found.rpps,
            "médecin",
            "CHRU",
            tuple(found.devices.values()),
            att,
        )
        await ws.send(f.encode(reply))
        await self._after_reply(ws)


async def fake_clinician(hub: FakeHub, directory: Path, name: str, rpps: str) -> Profile:
    """``Dr <Name>`` enrolled with the SDK on the fake hub, in ``directory/name``."""
    user = hub.add_user(f"Dr {name.title()}", rpps)
    return await enroll(
        hub.url,
        hub.invite(user),
        directory / name,
        PASSPHRASE,
        name,
        authority=AUTHORITY_PK,
        kdf=KDF_INTERACTIVE,
    )


async def enroll_clinician(
    hub: HubServer,
    directory: Path,
    name: str,
    rpps: str,
    *,
    organisation: str = "CHRU Test",
    verified: bool = True,
    label: str = "desk",
) -> Profile:
    """Invite ``Dr <Name>`` on the real hub, enroll a device with the SDK
    into ``directory``, and (unless ``verified`` is false) have the
    authority attest the clinician and their devices."""
    _, code = await invite(hub, f"Dr {name.title()}", rpps, organisation, verified=False)
    profile = await enroll(
        hub.url, code, directory, PASSPHRASE, label, authority=AUTHORITY_PK, kdf=KDF_INTERACTIVE
    )
    if verified:
        await verify(hub.store, profile.user_id)
    return profile


async def enroll_linked(
    hub: HubServer, existing: Profile, directory: Path, label: str = "laptop", *, verified: bool = True
) -> Profile:
    """Link another device to ``existing``'s clinician (SPEC §5.3) and, unless
    ``verified`` is false, verify the clinician again so it is attested."""
    from miss_client import Client

    async with Client.connect(existing) as client:
        code, _ = await client.link_code()
    profile = await enroll(
        hub.url, code, directory, PASSPHRASE, label, authority=AUTHORITY_PK, kdf=KDF_INTERACTIVE
    )
    if verified:
        await verify(hub.store, profile.user_id)
    return profile


def hub_sql(hub: HubServer, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Run one statement on the running hub's SQLite database, behind its
    back, as a hostile operator would; the hub's account cache is dropped
    (its store reads users and devices from the tables on every lookup)."""
    db = sqlite3.connect(hub.settings.sqlite_path)
    try:
        with db:
            rows = db.execute(sql, args).fetchall()
    finally:
        db.close()
    hub.hub.accounts.forget_all()
    return rows


def overwrite_device_keys(hub: HubServer, device_id: str, *, box_pk: bytes) -> None:
    """What a hostile hub does: list its own box key for a device."""
    [_] = hub_sql(
        hub, "UPDATE devices SET box_pk = ? WHERE device_id = ? RETURNING device_id", box_pk, device_id
    )
