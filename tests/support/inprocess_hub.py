"""The in-process hub of the tests: what the ``hub`` fixture (tests/conftest.py)
and the ``make_hub`` fixture (tests/server/conftest.py) start."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from miss_server.app import HubServer
from miss_server.config import Settings, load_settings
from tests.support.authority import AUTHORITY_TEXT, UNLIMITED

#: ``make_hub``: ``await make_hub(**settings)`` starts a hub on :func:`hub_settings`.
HubFactory = Callable[..., Awaitable[HubServer]]


def hub_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """The embedded defaults on a free port, with a SQLite file in
    ``tmp_path``, 2 s to authenticate, trusting the tests' authority
    (authority.py), with budgets that only the rate-limit tests (which pass
    their own) reach; ``overrides`` replace any of these."""
    settings: dict[str, Any] = {
        "store": f"sqlite:///{tmp_path}/miss.db",
        "port": 0,
        "auth_timeout_seconds": 2,
        "authority_key": AUTHORITY_TEXT,
        **UNLIMITED,
    }
    return load_settings(**{**settings, **overrides})
