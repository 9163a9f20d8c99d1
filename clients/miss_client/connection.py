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
:mod:`protocol.errors` exception it names (:func:`close_error`). The
protocol's side of it (the state table, the signatures, which error a frame
or a close names) is :class:`protocol.client_session.ClientSession`; this
module adds the I/O and the SDK's own errors (ConnectionFailed,
ConnectionLost, MessageTooLarge, AuthorityMismatch).
:func:`authenticator` builds the ``auth`` answer of an enrolled device.

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
from protocol.client_session import (
    ClientSession,
    Event,
    Signer,
    WrongAuthority,
    answer_auth,
    answer_enroll,
    check_authority,
    error_from_close,
    error_from_frame,
)
from protocol.errors import ProtocolError, UnexpectedFrame, UnsupportedVersion
from protocol.frames import (
    CAP_BLOBS,
    CAP_ONCALL,
    CAP_REFUSALS,
    CAP_TEAMS,
    MAX_FRAME_BYTES,
    MAX_ID_CHARS,
    SUBPROTOCOL,
    Auth,
    Challenge,
    Enroll,
    Frame,
    Welcome,
)
from protocol.rotation import AuthorityKeys

from .errors import AuthorityMismatch, ConnectionFailed, ConnectionLost, HubBusy, MessageTooLarge
from .models import check_frame_text
from .profile import (
    KDF_MODERATE,
    KdfParams,
    Profile,
    check_can_create,
    check_passphrase,
    create_profile,
    parse_authority,
    save_authority,
)

__all__ = [
    "CLIENT_CAPS",
    "MAX_INCOMING_BYTES",
    "authenticator",
    "close_error",
    "enroll",
    "error_from_frame",
    "handshake",
    "handshake_session",
    "open_websocket",
]

#: Largest frame we accept from the hub. A ``deliver`` carries one envelope of
#: a ``send`` that fit in MAX_FRAME_BYTES, plus a small header, so allow slack.
MAX_INCOMING_BYTES = 2 * MAX_FRAME_BYTES
#: The capabilities this client speaks (SPEC §10), named in ``auth``/``enroll``.
CLIENT_CAPS = (CAP_REFUSALS, CAP_TEAMS, CAP_ONCALL, CAP_BLOBS)


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
        if status == 503:  # a node draining for a restart (its /readyz says so), or overloaded
            raise HubBusy(
                f"the hub at {url} takes no new connections now (HTTP 503: restarting or busy); "
                "try again shortly"
            ) from None
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


def close_error(code: int | None, reason: str | None) -> Exception:
    """The exception a close by the hub stands for.

    The hub closes after a fatal error with the error code as the reason, so
    the reason is mapped back to its :mod:`protocol.errors` class (or, if
    the reason is missing or unknown, the close code: 4410 is DeviceRevoked,
    4411 AccountSuspended...: :func:`protocol.client_session.error_from_close`);
    other closes become ConnectionLost (or MessageTooLarge for 1009).
    """
    fatal = error_from_close(code, reason)
    if fatal is not None:
        return fatal
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


async def _handshake_event(ws: ClientConnection, session: ClientSession) -> Event:
    """The next hub frame of the handshake, through ``session``; what it
    refuses, as the SDK's errors."""
    try:
        data = await ws.recv()
    except ConnectionClosed:
        raise close_error(ws.close_code, ws.close_reason) from None
    if isinstance(data, str):
        raise ConnectionFailed("the hub sent a text frame; is this a MiSS hub?")
    try:
        return session.receive(data)
    except UnexpectedFrame as exc:
        raise ConnectionFailed(exc.detail) from None
    except ProtocolError as exc:
        if exc.remote or isinstance(exc, UnsupportedVersion):
            raise
        raise ConnectionFailed(f"the hub sent an invalid frame ({exc.code})") from None


async def handshake_session(
    ws: ClientConnection, answer: Callable[[Challenge], Frame], time_limit: float = 10.0
) -> ClientSession:
    """:func:`handshake`, returning the AUTHENTICATED session (its
    ``challenge`` and ``welcome`` included), for a caller that goes on
    speaking through it."""
    session = ClientSession()
    try:
        async with asyncio.timeout(time_limit):
            await _handshake_event(ws, session)
            assert session.challenge is not None  # or the session raised
            try:
                await ws.send(session.send(answer(session.challenge)))
            except ConnectionClosed:
                raise close_error(ws.close_code, ws.close_reason) from None
            await _handshake_event(ws, session)
    except TimeoutError:
        raise ConnectionFailed("the hub did not complete the handshake in time") from None
    assert session.welcome is not None  # or the session raised
    return session


async def handshake(
    ws: ClientConnection, answer: Callable[[Challenge], Frame], time_limit: float = 10.0
) -> tuple[Challenge, Welcome]:
    """Read the challenge, send ``answer(challenge)``, return the challenge
    and the ``welcome``. ``answer`` may raise to send nothing.

    Raises the hub's error (AuthFailed, InvalidCode, UnsupportedVersion...),
    ConnectionLost, or ConnectionFailed for a hub that does not follow SPEC §4.
    """
    session = await handshake_session(ws, answer, time_limit)
    assert session.challenge is not None and session.welcome is not None
    return session.challenge, session.welcome


def authenticator(keys: Signer, device_id: str) -> Callable[[Challenge], Auth]:
    """The ``answer`` for :func:`handshake` of the enrolled device
    ``device_id``: its ``auth``, signed with ``keys`` and naming ``CLIENT_CAPS``
    (SPEC §5.2)."""

    def answer(challenge: Challenge) -> Auth:
        return answer_auth(challenge, device_id, keys, CLIENT_CAPS)

    return answer


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
    code = check_frame_text(code.strip(), "an enrollment code")
    check_frame_text(label, "a device label")
    if not code or len(code) > MAX_ID_CHARS:
        raise ValueError("an enrollment code looks like XXXX-XXXX-XXXX-XXXX")
    if len(label) > 64:
        raise ValueError("a device label has at most 64 characters")
    check_passphrase(passphrase)
    profile_dir = Path(profile_dir)
    created_dir = not profile_dir.exists()
    check_can_create(profile_dir)
    keys = crypto.DeviceKeys.generate()

    #: The authority keys the hub's challenge proves (a rotation of the key given, SPEC §15).
    accepted: list[AuthorityKeys] = []

    def answer(challenge: Challenge) -> Enroll:
        try:
            accepted.append(check_authority(challenge, authority_pk, 0))  # every older key kept (rotation.py)
            return answer_enroll(challenge, code, keys, label, CLIENT_CAPS, authority=authority_pk)
        except WrongAuthority as exc:
            raise AuthorityMismatch(exc.expected, exc.announced) from None

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
    profile = create_profile(
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
    if accepted and accepted[-1].current != authority_pk:  # the key given was rotated: follow it now
        profile = save_authority(profile, accepted[-1])
    return profile
