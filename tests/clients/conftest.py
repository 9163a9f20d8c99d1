"""Fixtures for the client SDK tests: profiles with a fast KDF, a fake hub
whose users are verified, and verified clinicians on the real hub."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from miss_client.profile import Profile, set_authority

from miss_server.app import HubServer
from tests.support.authority import AUTHORITY_PK
from tests.support.client_fixtures import PASSPHRASE, new_profile
from tests.support.verified_hubs import AttestedFakeHub, ClinicianFactory, enroll_clinician


@pytest.fixture
def make_profile(tmp_path: Path) -> Callable[..., Profile]:
    """``make_profile(name="alice", authority=True, **kw)`` creates a profile in
    ``tmp_path/name`` that trusts the tests' authority (or, with
    ``authority=False``, none: a profile from before authorities)."""

    def make(name: str = "alice", *, authority: bool = True, **kw: Any) -> Profile:
        profile = new_profile(tmp_path / name, **kw)
        if authority:
            profile = set_authority(profile.directory, PASSPHRASE, AUTHORITY_PK)
        return profile

    return make


@pytest.fixture
async def fakehub() -> AsyncIterator[AttestedFakeHub]:
    """The scripted fake hub; its lookups carry attestations by the tests' authority."""
    async with AttestedFakeHub() as hub:
        yield hub


@pytest.fixture
def clinician(hub: HubServer, tmp_path: Path) -> ClinicianFactory:
    """``await clinician("alice", "10000000001", verified=True)``: a clinician
    enrolled on the real ``hub`` (profile in ``tmp_path/alice``) and, by
    default, verified by the authority."""

    async def make(name: str, rpps: str, **kw: Any) -> Profile:
        return await enroll_clinician(hub, tmp_path / name, name, rpps, **kw)

    return make
