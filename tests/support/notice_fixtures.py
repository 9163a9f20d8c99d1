"""Service accounts and notices for the client tests (SPEC §17): a service
recorded in the real hub's store as ``miss-admin service create`` does,
enrolled with the SDK (or given an enrollment code for ``miss-notify
enroll``), and attested by the tests' authority like any account."""

from __future__ import annotations

from pathlib import Path

from miss_client import KDF_INTERACTIVE, Profile, enroll

from miss_server.app import HubServer
from miss_server.codes import code_hash, new_code
from protocol.notices import Notice
from tests.support.authority import AUTHORITY_PK
from tests.support.client_fixtures import PASSPHRASE
from tests.support.clock import now_ms
from tests.support.verified_hubs import verify_on

__all__ = ["SERVICE_NAME", "SERVICE_ORG", "admission", "enroll_service", "invite_service"]

SERVICE_NAME = "CH Provins — Admissions"
SERVICE_ORG = "CH de Provins"


async def invite_service(hub: HubServer, ident: str = "svc:provins-adt", *, replies: bool = False) -> str:
    """Record a service (``replies``: whether clinicians may write to it) and
    an enrollment code for it; returns the code."""
    now = now_ms()
    user = await hub.store.create_service(SERVICE_NAME, ident, SERVICE_ORG, replies, now, 20)
    code = new_code()
    await hub.store.add_enrollment_code(user.user_id, code_hash(code), now + 3_600_000)
    return code


async def enroll_service(
    hub: HubServer, directory: Path, ident: str = "svc:provins-adt", *, replies: bool = False
) -> Profile:
    """A service enrolled with the SDK into ``directory`` and attested
    (profession ``service``, rpps ``ident``) by the tests' authority."""
    code = await invite_service(hub, ident, replies=replies)
    profile = await enroll(
        hub.url, code, directory, PASSPHRASE, "adt", authority=AUTHORITY_PK, kdf=KDF_INTERACTIVE
    )
    await verify_on(hub, profile.user_id)
    return profile


def admission(patient: str = "DUPONT Jean") -> Notice:
    """An admission notice with four fields and a reply line."""
    return Notice(
        f"Admission de M. {patient}",
        "admission",
        now_ms() - 60_000,
        (("Patient", patient), ("Né(e) le", "14/03/1951"), ("IPP", "000123456"), ("Service", "Cardiologie")),
        "Bureau des admissions : 01 64 60 40 00",
    )
