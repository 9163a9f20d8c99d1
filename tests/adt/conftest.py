"""Fixtures of the miss-adt tests: clinicians enrolled on the in-process hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from miss_client import Profile

from miss_server.app import HubServer
from tests.support.verified_hubs import ClinicianFactory, enroll_clinician


@pytest.fixture
def clinician(hub: HubServer, tmp_path: Path) -> ClinicianFactory:
    """``await clinician("dupont", "10003456789")``: a GP enrolled on ``hub`` and verified."""

    async def make(name: str, rpps: str, **kw: Any) -> Profile:
        return await enroll_clinician(hub, tmp_path / name, name, rpps, **kw)

    return make
