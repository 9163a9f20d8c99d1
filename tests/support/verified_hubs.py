"""Hubs with verified clinicians, for the client SDK tests (SPEC §11).

* :class:`AttestedFakeHub`: the scripted fake hub of tests/support/fakehub.py,
  whose ``lookup_ok`` frames carry an attestation of each user's current
  devices by the tests' authority (tests/support/authority.py), so that the
  SDK, which refuses unverified clinicians, can talk to it. A test can make a
  user unverified (:attr:`AttestedFakeHub.unverified`) or serve a crafted
  attestation (:attr:`AttestedFakeHub.attestations`).
* :func:`fake_clinician`: a clinician enrolled with the SDK on that fake hub.
* :func:`enroll_clinician`: a clinician on the real in-process hub (the
  ``hub`` fixture), enrolled through the SDK and, by default, verified by
  the authority right after, as an administrator would;
  :func:`enroll_linked` links another device to one.

A real hub that turns hostile is tests/support/tamper.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nacl.signing
from miss_client import KDF_INTERACTIVE, Client, Profile, enroll

from miss_server.app import HubServer
from protocol import attestation
from protocol import frames as f
from tests.support.authority import AUTHORITY, AUTHORITY_PK, verify
from tests.support.client_fixtures import PASSPHRASE
from tests.support.clock import DAY_MS, now_ms
from tests.support.fakehub import FakeHub
from tests.support.wire import invite

__all__ = [
    "AttestedFakeHub",
    "ClinicianFactory",
    "enroll_clinician",
    "enroll_linked",
    "fake_clinician",
]

#: The ``clinician`` fixture (tests/clients/conftest.py):
#: ``await clinician(name, rpps, **enroll_clinician_options)``.
ClinicianFactory = Callable[..., Awaitable[Profile]]


class AttestedFakeHub(FakeHub):
    """The fake hub whose ``lookup_ok`` frames carry an attestation by the
    tests' authority of the user's current devices, fresh at each lookup."""

    def __init__(self) -> None:
        super().__init__()
        #: Users whose lookups carry no attestation.
        self.unverified: set[str] = set()
        #: Attestations to serve instead of a fresh one, by user.
        self.attestations: dict[str, bytes] = {}

    def attest(
        self,
        user: str,
        devices: list[f.DeviceInfo] | None = None,
        *,
        key: nacl.signing.SigningKey = AUTHORITY,
        not_before: int | None = None,
        not_after: int | None = None,
        as_user: str | None = None,
    ) -> bytes:
        """An attestation of ``user`` and ``devices`` (default: their current
        devices) signed by ``key``, valid from a minute ago for a day unless
        the bounds are given; ``as_user`` puts another user id in it (the
        rest stays ``user``'s)."""
        info = self.users[user]
        now = now_ms()
        attested = tuple(
            attestation.AttestedDevice(d.device, d.sign_pk, d.box_pk)
            for d in (info.devices.values() if devices is None else devices)
        )
        att = attestation.Attestation(
            as_user or info.user,
            info.rpps,
            info.name,
            "médecin",
            "CHRU",
            attested,
            now - 60_000 if not_before is None else not_before,
            now + DAY_MS if not_after is None else not_after,
        )
        return attestation.sign(att, key)

    def lookup_attestation(self, user: str) -> bytes | None:
        if user in self.unverified:
            return None
        return self.attestations.get(user) or self.attest(user)


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


async def verify_on(hub: HubServer, user_id: str, **kw: Any) -> bytes:
    """Attest ``user_id`` on the in-process ``hub``'s store (authority.verify,
    with its keyword arguments; returns the attestation), and make the hub
    forget its cached account at once, as it does within a second of
    ``miss-admin verify`` (its audit-log poll): a test that writes right
    after must not race that poll."""
    att = await verify(hub.store, user_id, **kw)
    hub.hub.accounts.forget(user_id)
    return att


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
        await verify_on(hub, profile.user_id)
    return profile


async def enroll_linked(
    hub: HubServer, existing: Profile, directory: Path, label: str = "laptop", *, verified: bool = True
) -> Profile:
    """Link another device to ``existing``'s clinician (SPEC §5.3) and, unless
    ``verified`` is false, verify the clinician again so it is attested."""
    async with Client.connect(existing) as client:
        code, _ = await client.link_code()
    profile = await enroll(
        hub.url, code, directory, PASSPHRASE, label, authority=AUTHORITY_PK, kdf=KDF_INTERACTIVE
    )
    if verified:
        await verify_on(hub, profile.user_id)
    return profile
