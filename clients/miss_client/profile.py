"""The local profile: one device's identity, sealed under a passphrase.

Theory of operation
-------------------
A profile is a directory (mode 0700) holding two files (mode 0600):

``profile.sealed``
    A msgpack map. In clear: a format version, the Argon2id salt (16 random
    bytes) and the opslimit/memlimit that derive the passphrase key; nothing
    secret. Under ``"box"``: the ``nacl.secret.SecretBox`` ciphertext, under
    that derived key, of another msgpack map holding the device's two private
    key seeds, user id, device id, server URL, device label, the public key
    of the verification authority (SPEC §11.1), and a random 32-byte
    *storage key*. The authority key is sealed with the rest, so that whoever
    can write the profile directory but lacks the passphrase cannot make the
    client trust another authority. Salt and ciphertext live in one file so that
    replacing it (passphrase change) is a single atomic rename.
``state.db``
    The SQLite state (:mod:`miss_client.state`): history, seen ids, peer
    directory. Message bodies in it are sealed with the storage key, so
    nothing on disk is readable without the passphrase, and changing the
    passphrase only re-seals ``profile.sealed``.
``authority.sealed`` (only after a key rotation, SPEC §15)
    The authority keys the client moved to when the hub showed statements
    signed by the key it trusted: the current key and the older ones with
    their ``until``, a msgpack map sealed with the storage key (SecretBox,
    so whoever lacks the passphrase can neither read nor alter it). It
    overrides the key in ``profile.sealed``, and is written without the
    passphrase (at connect time); :func:`set_authority` removes it.

A wrong passphrase fails the SecretBox MAC check and raises
:class:`~miss_client.errors.WrongPassphrase`; so does any alteration of the
sealed file or of its KDF parameters. The file is replaced atomically (write
to a temporary file, fsync, rename), so a crash leaves the old profile or
the new one, never half of each.

Profiles written before verification authorities existed have no authority
key: they still load (``authority_pk`` is None), but
:meth:`miss_client.client.Client.connect` refuses them with
:class:`~miss_client.errors.AuthorityNotSet` until :func:`set_authority`
(``miss-chat set-authority KEY``) has stored one.

The KDF cost defaults to libsodium's MODERATE (about 1 s and 256 MiB);
callers may pass :data:`KDF_INTERACTIVE` (tests, low-memory devices).
Stored parameters are bounds-checked when read, so an edited header cannot
make the client allocate absurd memory.
"""

from __future__ import annotations

import os
import time
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgpack
import nacl.exceptions
import nacl.pwhash.argon2id as argon2id
import nacl.secret
import nacl.utils

from protocol import attestation
from protocol.crypto import DeviceKeys
from protocol.rotation import AuthorityKeys, PreviousKey

from .errors import (
    AuthorityNotSet,
    ProfileCorrupt,
    ProfileExists,
    ProfileNotFound,
    WeakPassphrase,
    WrongPassphrase,
)
from .state import LocalState

__all__ = [
    "KDF_INTERACTIVE",
    "KDF_MODERATE",
    "MIN_PASSPHRASE_CHARS",
    "KdfParams",
    "Profile",
    "change_passphrase",
    "check_can_create",
    "check_passphrase",
    "create_profile",
    "load_profile",
    "parse_authority",
    "profile_exists",
    "save_authority",
    "set_authority",
    "with_saved_authority",
    "write_private_file",
]

SEALED_FILE = "profile.sealed"
ROTATION_FILE = "authority.sealed"
STATE_FILE = "state.db"
#: Passphrases shorter than this are refused when a profile is created.
MIN_PASSPHRASE_CHARS = 8
_FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id cost parameters (libsodium ``opslimit``/``memlimit``)."""

    opslimit: int
    memlimit: int

    def check(self) -> None:
        """Raise ProfileCorrupt unless within libsodium's MIN..SENSITIVE bounds."""
        if not (argon2id.OPSLIMIT_MIN <= self.opslimit <= argon2id.OPSLIMIT_SENSITIVE) or not (
            argon2id.MEMLIMIT_MIN <= self.memlimit <= argon2id.MEMLIMIT_SENSITIVE
        ):
            raise ProfileCorrupt("KDF parameters out of range")


KDF_MODERATE = KdfParams(argon2id.OPSLIMIT_MODERATE, argon2id.MEMLIMIT_MODERATE)
KDF_INTERACTIVE = KdfParams(argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE)


@dataclass(frozen=True, slots=True)
class Profile:
    """An opened profile. Holds private keys: never log it (its repr hides them)."""

    directory: Path
    server: str
    user_id: str
    device_id: str
    label: str
    keys: DeviceKeys = field(repr=False)
    #: SecretBox key sealing message bodies in the state DB.
    storage_key: bytes = field(repr=False)
    created_at: int = 0
    #: Ed25519 public key of the verification authority (SPEC §11.1); None
    #: in a profile from before authorities (refused at connect time).
    authority_pk: bytes | None = None
    #: Older authority keys after a rotation (SPEC §15), newest first: each
    #: still counts for what it signed until its ``until``.
    authority_previous: tuple[PreviousKey, ...] = ()

    @property
    def authority(self) -> AuthorityKeys:
        """The authority keys to verify with (the current one, and the older
        ones of a rotation while they count); raises AuthorityNotSet if the
        profile has none."""
        if self.authority_pk is None:
            raise AuthorityNotSet(
                "this profile has no verification authority key, so no clinician can be checked: "
                "set the key your administrator gives you with `miss-chat set-authority KEY`"
            )
        return AuthorityKeys(self.authority_pk, self.authority_previous)

    @property
    def authority_fingerprint(self) -> str | None:
        """The authority key's fingerprint, for people to compare (or None)."""
        return None if self.authority_pk is None else attestation.authority_fingerprint(self.authority_pk)

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    def open_state(self) -> LocalState:
        """Open this profile's state DB (the caller closes it)."""
        return LocalState.open(self.state_path, self.storage_key, self.user_id, self.device_id)


def profile_exists(directory: Path) -> bool:
    """True if ``directory`` holds a sealed profile."""
    return (Path(directory) / SEALED_FILE).exists()


def check_can_create(directory: Path) -> None:
    """Raise ProfileExists if a profile is already there, OSError if the
    directory cannot be created or written. Call before spending an
    enrollment code, so the code is not burnt for a profile we cannot write."""
    directory = Path(directory)
    if profile_exists(directory):
        raise ProfileExists(f"a profile already exists in {directory}")
    _make_private_dir(directory)
    probe = directory / ".write-probe"
    write_private_file(probe, b"")
    probe.unlink()


def create_profile(
    directory: Path,
    passphrase: str,
    *,
    server: str,
    user_id: str,
    device_id: str,
    keys: DeviceKeys,
    label: str = "",
    kdf: KdfParams = KDF_MODERATE,
    authority_pk: bytes | str | None = None,
) -> Profile:
    """Write a new profile and return it opened.

    ``authority_pk`` is the verification authority's public key (32 bytes,
    or its base64 text form); without it the profile cannot connect until
    :func:`set_authority`. Raises ProfileExists if one is there,
    WeakPassphrase if the passphrase has fewer than MIN_PASSPHRASE_CHARS
    characters, ValueError for a malformed authority key.
    """
    directory = Path(directory)
    check_passphrase(passphrase)
    authority = None if authority_pk is None else parse_authority(authority_pk)
    if profile_exists(directory):
        raise ProfileExists(f"a profile already exists in {directory}")
    _make_private_dir(directory)
    profile = Profile(
        directory=directory,
        server=server,
        user_id=user_id,
        device_id=device_id,
        label=label,
        keys=keys,
        storage_key=nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE),
        created_at=time.time_ns() // 1_000_000,
        authority_pk=authority,
    )
    _seal(profile, passphrase, kdf)
    return profile


def load_profile(directory: Path, passphrase: str) -> Profile:
    """Open the profile in ``directory``.

    Raises ProfileNotFound, WrongPassphrase (also for a tampered file) or
    ProfileCorrupt.
    """
    directory = Path(directory)
    salt, sealed, kdf = _read_header(directory)
    box = nacl.secret.SecretBox(_derive(passphrase, salt, kdf))
    try:
        m = msgpack.unpackb(box.decrypt(sealed), raw=False)
    except nacl.exceptions.CryptoError:
        raise WrongPassphrase("wrong passphrase") from None
    except Exception:
        raise ProfileCorrupt("sealed profile is not readable") from None
    try:
        if m["v"] != _FORMAT_VERSION:
            raise ProfileCorrupt(f"unknown profile format {m['v']!r}")
        authority = m.get("authority_pk")
        if authority is not None and (type(authority) is not bytes or len(authority) != 32):
            raise ProfileCorrupt("the sealed authority key is not a 32-byte key")
        profile = Profile(
            directory=directory,
            server=m["server"],
            user_id=m["user"],
            device_id=m["device"],
            label=m["label"],
            keys=DeviceKeys(m["sign_seed"], m["box_secret"]),
            storage_key=m["storage_key"],
            created_at=m["created_at"],
            authority_pk=authority,
        )
    except (KeyError, TypeError) as exc:
        raise ProfileCorrupt(f"sealed profile lacks {exc}") from None
    return with_saved_authority(profile)


def with_saved_authority(profile: Profile) -> Profile:
    """``profile`` with the authority keys of its ``authority.sealed``, if
    a rotation wrote one (another connection may have, since ``profile``
    was loaded). Raises ProfileCorrupt for a file that does not open."""
    path = profile.directory / ROTATION_FILE
    try:
        sealed = path.read_bytes()
    except FileNotFoundError:
        return profile
    except OSError as exc:
        raise ProfileCorrupt(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        m = msgpack.unpackb(nacl.secret.SecretBox(profile.storage_key).decrypt(sealed), raw=False)
        current = m["current"]
        previous = tuple(PreviousKey(k, u) for k, u in m["previous"])
        if m["v"] != 1 or type(current) is not bytes or len(current) != 32:
            raise ValueError("key")
        if any(type(p.key) is not bytes or len(p.key) != 32 or type(p.until) is not int for p in previous):
            raise ValueError("previous")
    except (nacl.exceptions.CryptoError, ValueError, TypeError, KeyError, msgpack.UnpackException):
        raise ProfileCorrupt(f"{path} is not this profile's authority file") from None
    return replace(profile, authority_pk=current, authority_previous=previous)


def save_authority(profile: Profile, keys: AuthorityKeys) -> Profile:
    """Make ``keys`` the profile's authority keys (after a rotation its
    challenge proved, SPEC §15): written to ``authority.sealed``, sealed
    with the storage key, atomically. Returns the updated profile."""
    content = {"v": 1, "current": keys.current, "previous": [[p.key, p.until] for p in keys.previous]}
    box = nacl.secret.SecretBox(profile.storage_key)
    write_private_file(profile.directory / ROTATION_FILE, bytes(box.encrypt(msgpack.packb(content))))
    return replace(profile, authority_pk=keys.current, authority_previous=keys.previous)


def change_passphrase(directory: Path, old: str, new: str, kdf: KdfParams | None = None) -> Profile:
    """Re-seal the profile under a new passphrase (and fresh salt).

    The KDF cost stays the profile's unless ``kdf`` is given. The storage
    key is kept, so the state DB needs no rewrite. Raises like
    :func:`load_profile`, and WeakPassphrase for a short new passphrase.
    """
    check_passphrase(new)
    _, _, current = _read_header(Path(directory))
    profile = load_profile(directory, old)
    _seal(profile, new, current if kdf is None else kdf)
    return profile


def set_authority(directory: Path, passphrase: str, authority_pk: bytes | str) -> Profile:
    """Store the verification authority's public key (32 bytes or its base64
    text, as ``miss-admin authority init`` prints it) in the profile,
    re-sealed under the same passphrase and KDF cost. Raises like
    :func:`load_profile`, and ValueError for a malformed key."""
    key = parse_authority(authority_pk)
    _, _, kdf = _read_header(Path(directory))
    profile = replace(load_profile(directory, passphrase), authority_pk=key, authority_previous=())
    _seal(profile, passphrase, kdf)
    # An out-of-band key (a compromised one replaced) ends every rotation followed so far.
    (Path(directory) / ROTATION_FILE).unlink(missing_ok=True)
    return profile


def parse_authority(authority_pk: bytes | str) -> bytes:
    """An authority public key from bytes or base64 text; ValueError if malformed."""
    if isinstance(authority_pk, str):
        return attestation.decode_authority_key(authority_pk)
    if type(authority_pk) is not bytes or len(authority_pk) != 32:
        raise ValueError("the authority key is not a 32-byte Ed25519 public key")
    return authority_pk


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, mode 0600, fsynced."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to an existing file
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def check_passphrase(passphrase: str) -> None:
    """Raise WeakPassphrase unless the passphrase is long enough to seal a profile."""
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise WeakPassphrase(f"passphrase must have at least {MIN_PASSPHRASE_CHARS} characters")


# --- internals ----------------------------------------------------------------


def _read_header(directory: Path) -> tuple[bytes, bytes, KdfParams]:
    """Salt, sealed box and KDF cost of the profile file (nothing secret)."""
    sealed_path = directory / SEALED_FILE
    if not sealed_path.exists():
        raise ProfileNotFound(f"no profile in {directory} (run enroll first)")
    try:
        outer = msgpack.unpackb(sealed_path.read_bytes(), raw=False)
        salt, sealed = outer["salt"], outer["box"]
        kdf = KdfParams(int(outer["opslimit"]), int(outer["memlimit"]))
        if outer["v"] != _FORMAT_VERSION or type(salt) is not bytes or type(sealed) is not bytes:
            raise ValueError("bad header")
    except Exception as exc:  # OSError, msgpack's several error types, KeyError...
        raise ProfileCorrupt(f"cannot read the profile in {directory}: {type(exc).__name__}") from None
    if len(salt) != argon2id.SALTBYTES:
        raise ProfileCorrupt("bad salt length")
    kdf.check()
    return salt, sealed, kdf


def _derive(passphrase: str, salt: bytes, kdf: KdfParams) -> bytes:
    # NFC so that the same passphrase typed on two keyboards gives one key.
    secret = unicodedata.normalize("NFC", passphrase).encode()
    return argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, secret, salt, opslimit=kdf.opslimit, memlimit=kdf.memlimit
    )


def _seal(profile: Profile, passphrase: str, kdf: KdfParams) -> None:
    kdf.check()
    salt = nacl.utils.random(argon2id.SALTBYTES)
    box = nacl.secret.SecretBox(_derive(passphrase, salt, kdf))
    content: dict[str, Any] = {
        "v": _FORMAT_VERSION,
        "server": profile.server,
        "user": profile.user_id,
        "device": profile.device_id,
        "label": profile.label,
        "sign_seed": profile.keys.sign_seed,
        "box_secret": profile.keys.box_secret,
        "storage_key": profile.storage_key,
        "created_at": profile.created_at,
    }
    if profile.authority_pk is not None:  # absent, not nil: older readers never see a new key
        content["authority_pk"] = profile.authority_pk
    sealed = bytes(box.encrypt(msgpack.packb(content, use_bin_type=True)))
    header = {
        "v": _FORMAT_VERSION,
        "kdf": "argon2id13",
        "salt": salt,
        "opslimit": kdf.opslimit,
        "memlimit": kdf.memlimit,
    }
    write_private_file(profile.directory / SEALED_FILE, msgpack.packb({**header, "box": sealed}))


def _make_private_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
