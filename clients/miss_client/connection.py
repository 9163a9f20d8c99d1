"""Opening a MiSS connection: WebSocket, challenge, auth or enroll (SPEC §4, §5).

Theory of operation
-------------------
:func:`open_websocket` opens the WebSocket with the ``miss.v1`` subprotocol
and turns every way it can fail (bad URL, refused, TLS, HTTP status, no
subprotocol) into :class:`~miss_client.errors.ConnectionFailed`. It refuses
``ws://`` to any host but this machine's loopback (SPEC §2): without TLS a
man in the middle reads the metadata and answers for the hub.
:func:`handshake` then reads the hub's ``challenge``, sends the answer built
from it (an ``auth`` or an ``enroll`` frame, naming the capabilities this
client speaks, ``CLIENT_CAPS``) and returns the challenge and the
``welcome``; an ``error`` frame or a close surfaces as the
:mod:`protocol.errors` exception it names (:func:`close_error`).

:func:`enroll` is the one-shot use of the two: it registers a new device
with an invitation or link code and writes the profile, with the
verification authority's public key the administrator gave along with the
code (SPEC §11.1). It checks that the profile can be written, that the
passphrase is acceptable and that the authority key is well formed
*before* spending the code, since a code is single-use, and that the hub
announces the same authority key as the one given (SPEC §5.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from protocol import crypto
from protocol.errors import FatalError, MissingDevices, ProtocolError, UnsupportedVersion, error_class
from protocol.frames import (
    CAP_REFUSALS,
    MAX_FRAME_BYTES,
    MAX_ID_CHARS,
    PROTOCOL_VERSION,
    SERVER_FRAMES,
    SUBPROTOCOL,
    Challenge,
    Enroll,
    Error,
    Frame,
    Welcome,
    decode,
    encode,
)

from .errors import AuthorityMismatch, ConnectionFailed, ConnectionLost, MessageTooLarge
from .profile import (
    KDF_MODERATE,
    KdfParams,
    Profile,
    check_can_create,
    check_passphrase,
    create_profile,
    parse_authority,
)

__all__ = [
    "CLIENT_CAPS",
    "MAX_INCOMING_BYTES",
    "close_error",
    "enroll",
    "error_from_frame",
    "handshake",
    "open_websocket",
]

#: Largest frame we accept from the hub. A ``deliver`` carries one envelope of
#: a ``send`` that fit in MAX_FRAME_BYTES, plus a small header, so allow slack.
MAX_INCOMING_BYTES = 2 * MAX_FRAME_BYTES
#: The capabilities this client speaks (SPEC §10), named in ``auth``/``enroll``.
CLIENT_CAPS = (CAP_REFUSALS,)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def open_websocket(url: str, open_timeout: float = 10.0) -> ClientConnection:
    """Open a WebSocket speaking ``miss.v1``; raises ConnectionFailed (also
    for ``ws://`` to a host that is not this machine: SPEC §2)."""
    parts = urlsplit(url)
    if parts.scheme == "ws" and not _loopback(parts.hostname or ""):
        raise ConnectionFailed(
            f"refusing {url}: ws:// (without TLS) is only for a hub on this machine; use wss://"
        )
    try:
        ws = await connect(
            url,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            max_size=MAX_INCOMING_BYTES,
            compression=None,  # ciphertext does not compress; and no CRIME-style oracles
            open_timeout=open_timeout,
        )
    except InvalidURI:
        raise ConnectionFailed(f"invalid server URL {url!r} (expected ws://... or wss://...)") from None
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise ConnectionFailed(f"the server at {url} refused the connection (HTTP {status})") from None
    except InvalidHandshake as exc:
        raise ConnectionFailed(f"WebSocket handshake with {url} failed: {exc}") from None
    except TimeoutError:
        raise ConnectionFailed(f"timed out connecting to {url}") from None
    except ConnectionRefusedError:
        raise ConnectionFailed(f"cannot connect to {url}: connection refused (is the hub running?)") from None
    except OSError as exc:
        raise ConnectionFailed(f"cannot connect to {url}: {exc.strerror or exc}") from None
    if ws.subprotocol != SUBPROTOCOL:
        await ws.close()
        raise ConnectionFailed(f"the server at {url} does not speak {SUBPROTOCOL}")
    return ws


def error_from_frame(frame: Error) -> ProtocolError:
    """The :mod:`protocol.errors` exception an ``error`` frame names."""
    cls = error_class(frame.code)
    if cls is MissingDevices:
        return MissingDevices(list(frame.missing or ()), frame.message)
    if cls is ProtocolError:  # a code this client does not know: keep it readable
        return ProtocolError(f"{frame.code}: {frame.message}", retry_after_ms=frame.retry_after)
    return cls(frame.message, retry_after_ms=frame.retry_after)


def close_error(code: int | None, reason: str | None) -> Exception:
    """The exception a close by the hub stands for.

    The hub closes after a fatal error with the error code as the reason, so
    the reason is mapped back to its :mod:`protocol.errors` class (or, if
    the reason is missing or unknown, the close code: 4410 is DeviceRevoked,
    4411 AccountSuspended...); other closes become ConnectionLost (or
    MessageTooLarge for 1009).
    """
    if reason:
        cls = error_class(reason)
        if issubclass(cls, FatalError) and cls is not FatalError:
            return cls(f"connection closed by the hub ({code} {reason})")
    if code is not None and code in _FATAL_BY_CLOSE_CODE:
        return _FATAL_BY_CLOSE_CODE[code](f"connection closed by the hub ({code})")
    if code == 1009:
        return MessageTooLarge("the hub refused a frame over its size limit")
    if code == 1001:
        return ConnectionLost("the hub is shutting down; reconnect", code)
    if code == 1013:
        return ConnectionLost("the hub's storage is unavailable; try again later", code)
    if code == 1011:
        return ConnectionLost("the hub failed on this connection; reconnect", code)
    if code == 1000:
        return ConnectionLost("the hub closed the connection", code)
    return ConnectionLost(f"connection lost (close code {code})", code)


def _fatal_classes() -> dict[int, type[FatalError]]:
    out: dict[int, type[FatalError]] = {}
    pending: list[type[FatalError]] = list(FatalError.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.close_code is not None:
            out.setdefault(cls.close_code, cls)
    return out


#: Fatal error classes by close code (4400-4426), for closes without a reason.
_FATAL_BY_CLOSE_CODE = _fatal_classes()


async def recv_frame(ws: ClientConnection) -> Frame:
    """Receive one hub frame during the handshake; errors raised as exceptions."""
    try:
        data = await ws.recv()
    except ConnectionClosed:
        raise close_error(ws.close_code, ws.close_reason) from None
    if isinstance(data, str):
        raise ConnectionFailed("the hub sent a text frame; is this a MiSS hub?")
    try:
        frame = decode(data, SERVER_FRAMES)
    except ProtocolError as exc:
        raise ConnectionFailed(f"the hub sent an invalid frame ({exc.code})") from None
    if isinstance(frame, Error):
        raise error_from_frame(frame)
    return frame


async def handshake(
    ws: ClientConnection, answer: Callable[[Challenge], Frame], time_limit: float = 10.0
) -> tuple[Challenge, Welcome]:
    """Read the challenge, send ``answer(challenge)``, return the challenge
    and the ``welcome``. ``answer`` may raise to send nothing.

    Raises the hub's error (AuthFailed, InvalidCode, UnsupportedVersion...),
    ConnectionLost, or ConnectionFailed for a hub that does not follow SPEC §4.
    """
    try:
        async with asyncio.timeout(time_limit):
            challenge = await recv_frame(ws)
            if not isinstance(challenge, Challenge):
                raise ConnectionFailed(f"the hub sent {challenge.TYPE!r} instead of a challenge")
            if challenge.v != PROTOCOL_VERSION:
                raise UnsupportedVersion(f"hub speaks version {challenge.v}")
            try:
                await ws.send(encode(answer(challenge)))
            except ConnectionClosed:
                raise close_error(ws.close_code, ws.close_reason) from None
            welcome = await recv_frame(ws)
    except TimeoutError:
        raise ConnectionFailed("the hub did not complete the handshake in time") from None
    if not isinstance(welcome, Welcome):
        raise ConnectionFailed(f"the hub sent {welcome.TYPE!r} instead of welcome")
    return challenge, welcome


async def enroll(
    url: str,
    code: str,
    profile_dir: Path,
    passphrase: str,
    label: str = "",
    *,
    authority: bytes | str,
    kdf: KdfParams = KDF_MODERATE,
    open_timeout: float = 10.0,
) -> Profile:
    """Register a new device with a one-time code and write its profile (SPEC §5.1).

    ``authority`` is the verification authority's public key (32 bytes, or
    the base64 text ``miss-admin authority init``/``invite`` print): the
    profile trusts the clinicians it attests, and no one else.

    Generates the device keys, signs the hub's challenge with them, and on
    ``welcome`` seals the keys, user id, device id, ``url`` and authority
    key into ``profile_dir`` under ``passphrase``. Raises ValueError (a
    malformed code, label or authority key), ProfileExists or
    WeakPassphrase before any network traffic; AuthorityMismatch (the hub
    announces another authority key: nothing was sent, the code is
    unused), InvalidCode (the code is unknown, used or expired),
    TooManyDevices (the account has all the devices it may; the code is
    unused), ConnectionFailed or ConnectionLost after.
    """
    authority_pk = parse_authority(authority)
    code = code.strip()
    if not code or len(code) > MAX_ID_CHARS:
        raise ValueError("an enrollment code looks like XXXX-XXXX-XXXX-XXXX")
    if len(label) > 64:
        raise ValueError("a device label has at most 64 characters")
    check_passphrase(passphrase)
    profile_dir = Path(profile_dir)
    created_dir = not profile_dir.exists()
    check_can_create(profile_dir)
    keys = crypto.DeviceKeys.generate()

    def answer(challenge: Challenge) -> Enroll:
        if challenge.authority is not None and challenge.authority != authority_pk:
            raise AuthorityMismatch(authority_pk, challenge.authority)
        message = crypto.enroll_message(challenge.nonce, code, keys.sign_pk, keys.box_pk)
        return Enroll(
            v=PROTOCOL_VERSION,
            code=code,
            sign_pk=keys.sign_pk,
            box_pk=keys.box_pk,
            label=label,
            sig=keys.sign(message),
            caps=CLIENT_CAPS,
        )

    try:
        ws = await open_websocket(url, open_timeout)
        try:
            _, welcome = await handshake(ws, answer, open_timeout)
        finally:
            await ws.close()
    except BaseException:
        if created_dir:  # leave no empty profile directory behind a failed enrollment
            with contextlib.suppress(OSError):
                profile_dir.rmdir()
        raise
    return create_profile(
        profile_dir,
        passphrase,
        server=url,
        user_id=welcome.user,
        device_id=welcome.device,
        keys=keys,
        label=label,
        kdf=kdf,
        authority_pk=authority_pk,
    )
