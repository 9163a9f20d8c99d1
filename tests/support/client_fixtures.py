"""Constants and helpers shared by the client SDK tests (imported by name,
so the module name is unique across the test tree)."""

from __future__ import annotations

from pathlib import Path

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
