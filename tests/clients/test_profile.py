"""The sealed profile directory (miss_client.profile)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import msgpack
import nacl.pwhash.argon2id as argon2id
import pytest
from miss_client import Client
from miss_client.errors import (
    AuthorityNotSet,
    ProfileCorrupt,
    ProfileExists,
    ProfileNotFound,
    WeakPassphrase,
    WrongPassphrase,
)
from miss_client.models import Message, Peer
from miss_client.profile import (
    KDF_INTERACTIVE,
    SEALED_FILE,
    KdfParams,
    Profile,
    change_passphrase,
    create_profile,
    load_profile,
    set_authority,
)

from protocol.attestation import authority_fingerprint
from protocol.crypto import DeviceKeys, new_message_id
from protocol.frames import DeviceInfo
from tests.support.authority import AUTHORITY_PK, AUTHORITY_TEXT
from tests.support.client_fixtures import PASSPHRASE


def test_round_trip(make_profile: Callable[..., Profile]) -> None:
    keys = DeviceKeys.generate()
    made = make_profile(keys=keys, user_id="u_0123456789abcdef", device_id="d_fedcba9876543210")
    loaded = load_profile(made.directory, PASSPHRASE)
    assert loaded == made
    assert loaded.keys.sign_pk == keys.sign_pk and loaded.keys.box_pk == keys.box_pk
    assert (loaded.user_id, loaded.device_id, loaded.server) == (
        "u_0123456789abcdef",
        "d_fedcba9876543210",
        "ws://127.0.0.1:1/",
    )


def test_repr_hides_private_keys(make_profile: Callable[..., Profile]) -> None:
    profile = make_profile()
    text = repr(profile)
    assert profile.keys.sign_seed.hex() not in text and repr(profile.keys.sign_seed) not in text
    assert repr(profile.storage_key) not in text


def test_wrong_passphrase_is_a_typed_error(make_profile: Callable[..., Profile]) -> None:
    profile = make_profile()
    with pytest.raises(WrongPassphrase):
        load_profile(profile.directory, PASSPHRASE + "!")


def test_tampered_file_does_not_open(make_profile: Callable[..., Profile]) -> None:
    profile = make_profile()
    path = profile.directory / SEALED_FILE
    outer = msgpack.unpackb(path.read_bytes())
    box = bytearray(outer["box"])
    box[-1] ^= 1
    outer["box"] = bytes(box)
    path.write_bytes(msgpack.packb(outer))
    with pytest.raises(WrongPassphrase):
        load_profile(profile.directory, PASSPHRASE)


def test_absurd_kdf_parameters_are_refused_before_hashing(make_profile: Callable[..., Profile]) -> None:
    profile = make_profile()
    path = profile.directory / SEALED_FILE
    outer = msgpack.unpackb(path.read_bytes())
    outer["memlimit"] = 1 << 40
    path.write_bytes(msgpack.packb(outer))
    with pytest.raises(ProfileCorrupt):
        load_profile(profile.directory, PASSPHRASE)


def test_garbage_file_is_corrupt(make_profile: Callable[..., Profile]) -> None:
    profile = make_profile()
    (profile.directory / SEALED_FILE).write_bytes(b"\x00not a profile")
    with pytest.raises(ProfileCorrupt):
        load_profile(profile.directory, PASSPHRASE)


def test_missing_existing_and_weak(tmp_path: Path, make_profile: Callable[..., Profile]) -> None:
    with pytest.raises(ProfileNotFound):
        load_profile(tmp_path / "nobody", PASSPHRASE)
    make_profile("alice")
    with pytest.raises(ProfileExists):
        make_profile("alice")
    with pytest.raises(WeakPassphrase):
        create_profile(
            tmp_path / "weak",
            "short",
            server="ws://x/",
            user_id="u_1",
            device_id="d_1",
            keys=DeviceKeys.generate(),
            kdf=KDF_INTERACTIVE,
        )


def test_passphrase_is_unicode_normalised(tmp_path: Path) -> None:
    composed, decomposed = "caf\u00e9 au lait", "cafe\u0301 au lait"
    create_profile(
        tmp_path / "p",
        composed,
        server="ws://x/",
        user_id="u_1",
        device_id="d_1",
        keys=DeviceKeys.generate(),
        kdf=KDF_INTERACTIVE,
    )
    assert load_profile(tmp_path / "p", decomposed).user_id == "u_1"


def test_change_passphrase_keeps_history_readable(make_profile: Callable[..., Profile]) -> None:
    profile = make_profile()
    with profile.open_state() as state:
        state.record_outgoing(new_message_id(), "u_bob", 1, "text", "keep me")
    change_passphrase(profile.directory, PASSPHRASE, "a whole new passphrase", KDF_INTERACTIVE)
    with pytest.raises(WrongPassphrase):
        load_profile(profile.directory, PASSPHRASE)
    reopened = load_profile(profile.directory, "a whole new passphrase")
    with reopened.open_state() as state:
        assert [e.body for e in state.history()] == ["keep me"]


def _sealed_kdf(directory: Path) -> KdfParams:
    outer = msgpack.unpackb((directory / SEALED_FILE).read_bytes())
    return KdfParams(outer["opslimit"], outer["memlimit"])


def test_change_passphrase_keeps_the_kdf_cost_unless_given(tmp_path: Path) -> None:
    # A low-memory device's profile must not become MODERATE (256 MiB) behind its back.
    directory = tmp_path / "p"
    create_profile(
        directory,
        PASSPHRASE,
        server="ws://x/",
        user_id="u_1",
        device_id="d_1",
        keys=DeviceKeys.generate(),
        kdf=KDF_INTERACTIVE,
    )
    change_passphrase(directory, PASSPHRASE, "a whole new passphrase")
    assert _sealed_kdf(directory) == KDF_INTERACTIVE
    assert load_profile(directory, "a whole new passphrase").user_id == "u_1"

    cheapest = KdfParams(argon2id.OPSLIMIT_MIN, argon2id.MEMLIMIT_MIN)
    change_passphrase(directory, "a whole new passphrase", "and yet another one", cheapest)
    assert _sealed_kdf(directory) == cheapest
    assert load_profile(directory, "and yet another one").user_id == "u_1"


def test_permissions(tmp_path: Path, make_profile: Callable[..., Profile]) -> None:
    old = os.umask(0o022)  # a typical, permissive umask must not leak into the profile
    try:
        profile = make_profile()
        with profile.open_state() as state:
            state.record_outgoing(new_message_id(), "u_bob", 1, "text", "x")
            files = sorted(profile.directory.iterdir())
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    finally:
        os.umask(old)
    assert stat.S_IMODE(profile.directory.stat().st_mode) == 0o700
    assert "profile.sealed" in modes and "state.db" in modes
    assert all(mode == 0o600 for mode in modes.values()), modes


def test_no_key_material_or_plaintext_on_disk(make_profile: Callable[..., Profile]) -> None:
    profile = make_profile()
    body_in = "Patient DUPONT Jean, INR 4.2, que faire ?"
    body_out = "Réduire la dose de moitié, contrôle demain"
    peer_keys = DeviceKeys.generate()
    with profile.open_state() as state:
        bob_device = DeviceInfo("d_b", peer_keys.sign_pk, peer_keys.box_pk)
        state.observe_peer(
            Peer("u_bob", "Dr Bob", "10000000002", "cardiologue", "CHRU", (bob_device,)), [bob_device]
        )
        state.record_incoming(Message(new_message_id(), "u_bob", "d_b", profile.user_id, 1, body_in))
        state.record_outgoing(new_message_id(), "u_bob", 2, "text", body_out)
        on_disk_while_open = {p.name: p.read_bytes() for p in profile.directory.iterdir()}
    on_disk_closed = {p.name: p.read_bytes() for p in profile.directory.iterdir()}
    secrets = {
        "sign seed": profile.keys.sign_seed,
        "box secret": profile.keys.box_secret,
        "storage key": profile.storage_key,
        "incoming body": body_in.encode(),
        "outgoing body": body_out.encode(),
        "body fragment": b"DUPONT",
        "passphrase": PASSPHRASE.encode(),
    }
    for files in (on_disk_while_open, on_disk_closed):
        for name, data in files.items():
            for what, secret in secrets.items():
                for form in (secret, secret.hex().encode(), secret.hex().upper().encode()):
                    assert form not in data, f"{what} found in {name}"
    # and the bodies are still there for the right key holder
    with load_profile(profile.directory, PASSPHRASE).open_state() as state:
        assert sorted(e.body for e in state.history()) == sorted([body_in, body_out])


def test_the_authority_key_is_sealed_in_the_profile(tmp_path: Path) -> None:
    made = create_profile(
        tmp_path / "p",
        PASSPHRASE,
        server="ws://x/",
        user_id="u_1",
        device_id="d_1",
        keys=DeviceKeys.generate(),
        kdf=KDF_INTERACTIVE,
        authority_pk=AUTHORITY_TEXT,  # the text form, as an administrator hands it out
    )
    loaded = load_profile(made.directory, PASSPHRASE)
    assert loaded == made and loaded.authority_pk == AUTHORITY_PK
    assert loaded.authority_fingerprint == authority_fingerprint(AUTHORITY_PK)
    assert AUTHORITY_PK not in (made.directory / SEALED_FILE).read_bytes(), "inside the sealed box"
    changed = change_passphrase(made.directory, PASSPHRASE, "a whole new passphrase", KDF_INTERACTIVE)
    assert changed.authority_pk == AUTHORITY_PK
    with pytest.raises(ValueError, match="32-byte"):
        create_profile(
            tmp_path / "q",
            PASSPHRASE,
            server="ws://x/",
            user_id="u_1",
            device_id="d_1",
            keys=DeviceKeys.generate(),
            authority_pk=b"short",
        )


async def test_a_profile_without_authority_cannot_connect_until_one_is_set(
    make_profile: Callable[..., Profile],
) -> None:
    old = make_profile("old", authority=False)  # as written before authorities existed
    header = msgpack.unpackb((old.directory / SEALED_FILE).read_bytes())
    assert load_profile(old.directory, PASSPHRASE).authority_pk is None
    with pytest.raises(AuthorityNotSet, match="miss-chat set-authority"):
        async with Client.connect(old):
            pass
    with pytest.raises(WrongPassphrase):
        set_authority(old.directory, "not the passphrase", AUTHORITY_TEXT)
    with pytest.raises(ValueError, match="base64"):
        set_authority(old.directory, PASSPHRASE, "not a key!")
    updated = set_authority(old.directory, PASSPHRASE, AUTHORITY_TEXT)
    assert load_profile(old.directory, PASSPHRASE) == updated
    assert updated.authority_pk == AUTHORITY_PK and updated.keys.sign_pk == old.keys.sign_pk
    after = msgpack.unpackb((old.directory / SEALED_FILE).read_bytes())
    assert (after["opslimit"], after["memlimit"]) == (header["opslimit"], header["memlimit"]), "same KDF cost"
