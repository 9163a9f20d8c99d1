"""The browser client's sources (clients/web/) against the bundle the hub
serves: ``npm run check`` (the committed miss_server/static/ is what the
sources build to), ``npm run typecheck`` and ``npm test``. ``npm ci`` runs
first when node_modules is missing or older than package-lock.json.

Node and npm are required: without them this test fails, it never skips
(``.ci/run`` checks for them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.web_client import installed_web_client, npm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def web_client() -> Path:
    """clients/web with its dependencies installed (``npm ci`` when needed)."""
    return installed_web_client()


def test_the_committed_bundle_is_built_from_the_sources(web_client: Path) -> None:
    npm("run", "check")


def test_the_sources_typecheck(web_client: Path) -> None:
    npm("run", "typecheck")


def test_the_web_clients_own_tests_pass(web_client: Path) -> None:
    npm("test")
