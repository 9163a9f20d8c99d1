"""Constants and helpers shared by the client SDK tests (imported by name,
so the module name is unique across the test tree)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from miss_client import Client
from miss_client.models import Event
from miss_client.profile import KDF_INTERACTIVE, Profile, create_profile

from protocol.crypto import DeviceKeys

PASSPHRASE = "correct horse battery staple"


def new_profile(
    directory: Path,
    *,
    user_id: str = "u_00000000000000a1",
    device_id: str = "d_00000000000000a1",
    keys: DeviceKeys | None = None,
    server: str = "ws://127.0.0.1:1/",
) -> Profile:
    """A profile sealed with PASSPHRASE and the fast INTERACTIVE KDF."""
    return create_profile(
        directory,
        PASSPHRASE,
        server=server,
        user_id=user_id,
        device_id=device_id,
        keys=keys or DeviceKeys.generate(),
        label="test",
        kdf=KDF_INTERACTIVE,
    )


async def next_event(client: Client, timeout: float = 5.0) -> Event:
    """The next event ``client`` receives (a message, receipt or presence
    change); ``TimeoutError`` if none comes within ``timeout`` seconds."""
    return await asyncio.wait_for(client.receive(), timeout)
