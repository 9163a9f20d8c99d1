"""The client's side of one connection, as a state table (SPEC §4, §5, §7).

Theory of operation
-------------------
A :class:`ClientSession` is the mirror of :class:`~protocol.session.ServerSession`
and does no I/O either. Whoever owns the WebSocket (the SDK, the bench's
load generator, the tests' raw devices) feeds it every binary message the hub
sends, with :meth:`ClientSession.receive`, which returns an event or raises a
:mod:`protocol.errors` exception; and asks it for the bytes to send:
:meth:`~ClientSession.auth` or :meth:`~ClientSession.enroll` to answer the
challenge, :meth:`~ClientSession.request` and :meth:`~ClientSession.send`
afterwards. The answers to the challenge are built here and nowhere else
(:func:`answer_auth`, :func:`answer_enroll`).

The connection's life is :class:`ClientState`::

    AWAITING_CHALLENGE --challenge--> CHALLENGED --auth/enroll sent--> ANSWERED
        --welcome--> AUTHENTICATED        (any state --fatal error--> CLOSED)

:data:`RECEIVABLE` lists the hub frames each state admits and
:data:`SENDABLE` the client frames (the hub's own table,
:data:`protocol.session.ALLOWED`). A challenge whose ``v`` is not 1 is
:class:`~protocol.errors.UnsupportedVersion`; a hub frame the state does not
admit is :class:`~protocol.errors.UnexpectedFrame`; trying to send a frame
the state does not allow is :class:`~protocol.errors.FrameNotAllowed`, and
nothing is sent.

Once authenticated, every received frame is classified (SPEC §4: answers
are matched by ``rid`` or message ``id``, never by arrival order):

* :class:`Pushed`: a ``deliver``, ``delivered``, ``refused``, ``presence``,
  ``team_changed``, ``urgent_status``, ``urgent_reminder`` or
  ``role_changed`` the hub sent of its own accord;
* :class:`Answered`: the answer to an outstanding request, with its ``rid``
  (or, for ``accepted``, the id of the ``send``);
* :class:`Failed`: a request error answering an outstanding request, a
  non-fatal error that names none (e.g. about an ``ack``), or an answer to
  an outstanding request that does not decode or is of the wrong type.

The session allocates the ``rid``\\ s and remembers each outstanding request
until the hub answers it (the hub answers every request, or the
connection ends): a caller that stops waiting simply ignores the late answer.

Errors say who found them (``ProtocolError.remote``, see :mod:`protocol.errors`).
*Remote* errors are the hub's reports: an ``error`` frame
(:func:`error_from_frame`) or a close (:func:`error_from_close`, through
:meth:`ClientSession.connection_closed`). After ``welcome`` a request error
comes as a :class:`Failed` event; a fatal ``error`` frame, or any ``error``
frame before ``welcome``, is raised and the session is CLOSED: the hub
closes the connection next. *Local* errors come from this session's checks.
Before ``welcome`` they close the session too (the caller closes the
connection, ideally with the error's ``close_code``: SPEC §3.4 asks 4426 for
a wrong version). After ``welcome`` a frame that does not decode, that the
state does not admit, or that answers no outstanding request raises a local
error and is dropped, but the session stays AUTHENTICATED: one bad answer
about one sender must not cost the rest of the queue, so the caller decides
whether to read on.
"""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import msgpack

from . import crypto, rotation
from .errors import (
    FatalError,
    FrameNotAllowed,
    MissingDevices,
    ProtocolError,
    RoleVacant,
    UnexpectedFrame,
    UnsupportedVersion,
    error_class,
)
from .frames import (
    PROTOCOL_VERSION,
    SERVER_FRAMES,
    Accepted,
    Acknowledge,
    AcknowledgeOk,
    Auth,
    BlobBegin,
    BlobEnd,
    BlobLink,
    BlobLinkOk,
    BlobOk,
    BlobPut,
    Challenge,
    Deliver,
    Delivered,
    Devices,
    DevicesOk,
    Enroll,
    Error,
    Frame,
    LinkCode,
    LinkCodeOk,
    Lookup,
    LookupOk,
    Ok,
    Ping,
    Presence,
    Recall,
    RecallOk,
    Refused,
    Revoke,
    RoleChanged,
    RoleGet,
    RoleLeave,
    RoleOk,
    RoleSearch,
    RoleSearchOk,
    RoleTake,
    Search,
    SearchOk,
    Send,
    SetStatus,
    TeamChain,
    TeamChainOk,
    TeamChange,
    TeamChanged,
    TeamOk,
    Teams,
    TeamsOk,
    UrgentReminder,
    UrgentStatus,
    Watch,
    Watching,
    Welcome,
    decode,
    encode,
)
from .session import ALLOWED, State

__all__ = [
    "ANSWERS",
    "RECEIVABLE",
    "SENDABLE",
    "Answered",
    "Challenged",
    "ClientSession",
    "ClientState",
    "Event",
    "Failed",
    "Pushed",
    "PushedFrame",
    "Signer",
    "Welcomed",
    "WrongAuthority",
    "answer_auth",
    "answer_enroll",
    "check_authority",
    "error_from_close",
    "error_from_frame",
]


class ClientState(enum.Enum):
    AWAITING_CHALLENGE = "awaiting_challenge"  # connected; the hub speaks first
    CHALLENGED = "challenged"  # challenge read; our auth or enroll is due
    ANSWERED = "answered"  # auth or enroll sent; waiting for welcome
    AUTHENTICATED = "authenticated"  # welcomed: requests, answers and pushes
    CLOSED = "closed"  # a fatal error, or the connection ended


#: What each request expects for an answer (an ``error`` may answer any of
#: them). A ``send`` is matched by its message id, the others by ``rid``.
ANSWERS: dict[type[Frame], type[Frame]] = {
    Lookup: LookupOk,
    LinkCode: LinkCodeOk,
    SetStatus: Ok,
    Watch: Watching,
    Search: SearchOk,
    Devices: DevicesOk,
    Revoke: Ok,
    Send: Accepted,
    TeamChange: TeamOk,
    Teams: TeamsOk,
    TeamChain: TeamChainOk,
    Recall: RecallOk,
    RoleSearch: RoleSearchOk,
    RoleGet: RoleOk,
    RoleTake: RoleOk,
    RoleLeave: RoleOk,
    Acknowledge: AcknowledgeOk,
    BlobBegin: BlobOk,
    BlobPut: BlobOk,
    BlobEnd: BlobOk,
    BlobLink: BlobLinkOk,
    Ping: Ok,
}
#: Frames the hub sends of its own accord once the connection is authenticated.
PUSHED: frozenset[type[Frame]] = frozenset(
    {Deliver, Delivered, Refused, Presence, TeamChanged, UrgentStatus, UrgentReminder, RoleChanged}
)

#: Which hub frame types each state admits (SPEC §4, the client's side). An
#: ``error`` is admitted until the session is closed: the hub may report a
#: fatal error at any time (``auth_timeout`` while we have not answered).
RECEIVABLE: dict[ClientState, frozenset[type[Frame]]] = {
    ClientState.AWAITING_CHALLENGE: frozenset({Challenge, Error}),
    ClientState.CHALLENGED: frozenset({Error}),
    ClientState.ANSWERED: frozenset({Welcome, Error}),
    ClientState.AUTHENTICATED: PUSHED | frozenset(ANSWERS.values()) | {Error},
    ClientState.CLOSED: frozenset(),
}
#: Which client frame types each state lets us send (SPEC §4, table 2).
SENDABLE: dict[ClientState, frozenset[type[Frame]]] = {
    ClientState.AWAITING_CHALLENGE: frozenset(),
    ClientState.CHALLENGED: ALLOWED[State.CHALLENGED],
    ClientState.ANSWERED: frozenset(),
    ClientState.AUTHENTICATED: ALLOWED[State.AUTHENTICATED],
    ClientState.CLOSED: frozenset(),
}

# What the hub should have sent instead, for UnexpectedFrame's detail.
_WANTED = {
    ClientState.AWAITING_CHALLENGE: "instead of a challenge",
    ClientState.CHALLENGED: "before our answer to the challenge",
    ClientState.ANSWERED: "instead of welcome",
    ClientState.AUTHENTICATED: "after welcome",
    ClientState.CLOSED: "after the connection ended",
}
_AUTHENTICATED = ClientState.AUTHENTICATED
_CLOSED = ClientState.CLOSED

#: The frames :class:`Pushed` carries.
PushedFrame = (
    Deliver | Delivered | Refused | Presence | TeamChanged | UrgentStatus | UrgentReminder | RoleChanged
)


# --- events -------------------------------------------------------------------
# Not frozen: building a frozen dataclass costs three times as much, and the
# SDK and the bench build one for every frame they read. Treat them as read-only.


@dataclass(slots=True)
class Challenged:
    """The hub's challenge, of this protocol version: answer it with
    :meth:`ClientSession.auth` or :meth:`ClientSession.enroll`."""

    challenge: Challenge


@dataclass(slots=True)
class Welcomed:
    """The hub accepted our answer; after an ``enroll``, ``welcome.device``
    is the id it assigned, which the client must store (SPEC §5.1)."""

    welcome: Welcome


@dataclass(slots=True)
class Pushed:
    """A frame the hub sent of its own accord. ``deliver``, ``delivered``,
    ``refused`` and ``urgent_status`` are to be acked (SPEC §6.4, §14.6);
    ``presence``, ``team_changed``, ``urgent_reminder`` and ``role_changed``
    are not."""

    frame: PushedFrame


@dataclass(slots=True)
class Answered:
    """``frame`` answers the outstanding request ``request``: its ``rid``,
    or for an ``accepted``, the message id of the ``send``."""

    request: int | bytes
    frame: Frame


@dataclass(slots=True)
class Failed:
    """``request`` failed (its ``rid``, or the message id of a ``send``):
    the hub answered it with a request error (``error.remote``), or its
    answer does not decode or is of the wrong type (local). ``request`` is
    None for a non-fatal ``error`` that names no request (e.g. about an ``ack``)."""

    request: int | bytes | None
    error: ProtocolError


Event = Challenged | Welcomed | Pushed | Answered | Failed


# --- the answers to a challenge (SPEC §5) ---------------------------------------


class Signer(Protocol):
    """What signs for a device: :class:`protocol.crypto.DeviceKeys`, or
    anything with its public keys and a detached Ed25519 ``sign``."""

    @property
    def sign_pk(self) -> bytes: ...

    @property
    def box_pk(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


class WrongAuthority(Exception):
    """The hub announces another verification authority key than the one the
    user was given along with the code (SPEC §5.1), and no valid chain of
    rotation statements leads from it to the hub's (SPEC §15). Nothing was
    signed or sent: the code is unused. ``expected`` is the key given,
    ``announced`` the hub's; ``refusal`` is the RotationError that refused
    the hub's statements, None if it sent none."""

    def __init__(
        self, expected: bytes, announced: bytes, refusal: rotation.RotationError | None = None
    ) -> None:
        super().__init__("the hub announces another verification authority key")
        self.expected = expected
        self.announced = announced
        self.refusal = refusal


def check_authority(
    challenge: Challenge, trusted: bytes | rotation.AuthorityKeys, now_ms: int
) -> rotation.AuthorityKeys:
    """The authority keys to trust on this hub (SPEC §15.2): ``trusted``
    itself if the challenge announces its current key or none; if it
    announces another, the keys :func:`protocol.rotation.accept_chain`
    gives for ``challenge.rotations``, provided they end at the announced
    key. Raises WrongAuthority otherwise (the caller keeps its key and
    reports ``rotation_refused``)."""
    held = trusted if isinstance(trusted, rotation.AuthorityKeys) else rotation.AuthorityKeys(trusted)
    announced = challenge.authority
    if announced is None or announced == held.current:
        return held
    try:
        keys = rotation.accept_chain(held, challenge.rotations or (), now_ms)
    except rotation.RotationError as exc:
        raise WrongAuthority(held.current, announced, exc) from None
    if keys.current != announced:
        refusal = rotation.RotationNotTrusted("the statements do not end at the key the hub announces")
        raise WrongAuthority(held.current, announced, refusal if challenge.rotations else None)
    return keys


def answer_auth(
    challenge: Challenge, device_id: str, keys: Signer, caps: tuple[str, ...] | None = None
) -> Auth:
    """The ``auth`` of the enrolled device ``device_id`` answering
    ``challenge``: its signature over ``auth_message`` (SPEC §5.2). ``caps``
    names the capabilities the client speaks (SPEC §10); None omits the key."""
    sig = keys.sign(crypto.auth_message(challenge.nonce, device_id))
    return Auth(PROTOCOL_VERSION, device_id, sig, caps)


def answer_enroll(
    challenge: Challenge,
    code: str,
    keys: Signer,
    label: str = "",
    caps: tuple[str, ...] | None = None,
    *,
    authority: bytes | rotation.AuthorityKeys | None = None,
    now_ms: int | None = None,
) -> Enroll:
    """The ``enroll`` of a new device with an invitation or link code
    (SPEC §5.1, §5.3) answering ``challenge``: ``keys``' public keys, signed
    with the nonce and ``code`` exactly as sent.

    ``authority``: the verification authority key the user was given. If
    the challenge announces another one, raises WrongAuthority before
    signing anything, unless the challenge's rotation statements lead from
    ``authority`` to it at ``now_ms`` (:func:`check_authority`, SPEC §15);
    a hub that announces none is answered (SPEC §5.1).
    """
    if authority is not None:
        check_authority(challenge, authority, int(time.time() * 1000) if now_ms is None else now_ms)
    sign_pk, box_pk = keys.sign_pk, keys.box_pk
    sig = keys.sign(crypto.enroll_message(challenge.nonce, code, sign_pk, box_pk))
    return Enroll(PROTOCOL_VERSION, code, sign_pk, box_pk, label, sig, caps)


# --- the hub's reports (SPEC §7) -----------------------------------------------


def error_from_frame(frame: Error) -> ProtocolError:
    """The :mod:`protocol.errors` exception an ``error`` frame names
    (``remote``). A code this side does not know becomes a plain
    ProtocolError whose text keeps the code and the hub's message."""
    cls = error_class(frame.code)
    exc: ProtocolError
    if cls is MissingDevices:
        exc = MissingDevices(list(frame.missing or ()), frame.message)
    elif cls is RoleVacant:
        exc = RoleVacant(frame.role or "", frame.message, retry_after_ms=frame.retry_after)
    elif cls is ProtocolError:
        exc = ProtocolError(f"{frame.code}: {frame.message}", retry_after_ms=frame.retry_after)
    else:
        exc = cls(frame.message, retry_after_ms=frame.retry_after)
    exc.remote = True
    return exc


def error_from_close(code: int | None, reason: str | None) -> FatalError | None:
    """The fatal error (``remote``) a close by the hub stands for, or None.

    After a fatal error the hub closes with the error code as the reason
    (SPEC §2), so the reason names the class; without a known reason, the
    close code does (4410 DeviceRevoked, 4411 AccountSuspended...). Other
    closes (1000, 1001, 1009, 1011, 1013...) name no protocol error: None.
    """
    exc: FatalError | None = None
    if reason:
        cls = error_class(reason)
        if issubclass(cls, FatalError) and cls is not FatalError:
            exc = cls(f"connection closed by the hub ({code} {reason})")
    if exc is None and code is not None and code in _FATAL_BY_CLOSE_CODE:
        exc = _FATAL_BY_CLOSE_CODE[code](f"connection closed by the hub ({code})")
    if exc is not None:
        exc.remote = True
    return exc


def _fatal_by_close_code() -> dict[int, type[FatalError]]:
    out: dict[int, type[FatalError]] = {}
    pending: list[type[FatalError]] = list(FatalError.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        # Only the classes a wire code names: not this side's own refinements
        # (UnexpectedFrame shares frame_not_allowed's close code).
        if cls.close_code is not None and error_class(cls.code) is cls:
            out.setdefault(cls.close_code, cls)
    return out


#: Fatal error classes by close code (4400-4426), for closes without a reason.
_FATAL_BY_CLOSE_CODE = _fatal_by_close_code()


def _named_request(data: bytes) -> int | bytes | None:
    """The request a frame that does not decode seems to answer: its
    ``rid`` if it has an integer one, else the ``id`` of an ``accepted`` or
    ``error``."""
    try:
        m = msgpack.unpackb(data, raw=False)
    except Exception:  # msgpack raises several unrelated types
        return None
    if not isinstance(m, dict):
        return None
    rid = m.get("rid")
    if type(rid) is int:
        return rid
    mid = m.get("id")
    if type(mid) is bytes and m.get("t") in ("accepted", "error"):
        return mid
    return None


# --- the session ------------------------------------------------------------------


class ClientSession:
    """One connection's protocol state, on the client's side. Not
    thread-safe; one per connection, created when the WebSocket opens."""

    __slots__ = ("_requests", "_rids", "_sends", "challenge", "state", "welcome")

    def __init__(self) -> None:
        self.state = ClientState.AWAITING_CHALLENGE
        #: The hub's challenge, once received.
        self.challenge: Challenge | None = None
        #: The hub's welcome, once received.
        self.welcome: Welcome | None = None
        self._rids = itertools.count(1)
        self._requests: dict[int, type[Frame]] = {}  # outstanding rid -> its request type
        self._sends: dict[bytes, int] = {}  # message id -> sends of it not answered yet

    @property
    def hub_authority(self) -> bytes | None:
        """The verification authority key the challenge announced (SPEC §5.1)."""
        return self.challenge.authority if self.challenge is not None else None

    @property
    def hub_caps(self) -> frozenset[str]:
        """The capabilities the challenge announced (SPEC §10)."""
        return frozenset(self.challenge.caps or ()) if self.challenge is not None else frozenset()

    @property
    def outstanding(self) -> frozenset[int | bytes]:
        """The requests not answered yet: ``rid``\\ s, and message ids of sends."""
        return frozenset(self._requests) | frozenset(self._sends)

    # --- receiving ----------------------------------------------------------------

    def receive(self, data: bytes) -> Event:
        """Parse and classify one binary message from the hub.

        Returns Challenged, Welcomed, Pushed, Answered or Failed (see the
        module's docstring). Raises the hub's error (``remote``: a fatal
        ``error`` frame, or any ``error`` before ``welcome``), or a local
        MalformedFrame, UnknownFrameType, UnexpectedFrame or
        UnsupportedVersion. After a remote error, or a local one before
        ``welcome``, the session is CLOSED.
        """
        try:
            frame = decode(data, SERVER_FRAMES)
        except ProtocolError as exc:
            return self._unreadable(data, exc)
        kind = type(frame)
        if self.state is _AUTHENTICATED:
            if kind in PUSHED:
                return Pushed(frame)  # type: ignore[arg-type]
            if kind is Error:
                return self._error(frame)  # type: ignore[arg-type]
            if kind in RECEIVABLE[_AUTHENTICATED]:
                return self._answer(frame)
            raise UnexpectedFrame(frame.TYPE, f"the hub sent {frame.TYPE!r} {_WANTED[self.state]}")
        return self._handshake(frame)

    def _handshake(self, frame: Frame) -> Event:
        state = self.state
        if type(frame) not in RECEIVABLE[state]:
            self.state = _CLOSED
            raise UnexpectedFrame(frame.TYPE, f"the hub sent {frame.TYPE!r} {_WANTED[state]}")
        if isinstance(frame, Error):
            self.state = _CLOSED
            raise error_from_frame(frame)
        if isinstance(frame, Challenge):
            if frame.v != PROTOCOL_VERSION:
                self.state = _CLOSED
                raise UnsupportedVersion(f"hub speaks version {frame.v}")
            self.challenge = frame
            self.state = ClientState.CHALLENGED
            return Challenged(frame)
        assert isinstance(frame, Welcome)  # RECEIVABLE admits nothing else
        self.welcome = frame
        self.state = _AUTHENTICATED
        return Welcomed(frame)

    def _unreadable(self, data: bytes, exc: ProtocolError) -> Event:
        if self.state is not _AUTHENTICATED:
            self.state = _CLOSED
            raise exc
        request = _named_request(data)
        if request is not None and self._settle(request) is not None:
            return Failed(request, exc)
        raise exc

    def _error(self, frame: Error) -> Event:
        error = error_from_frame(frame)
        if frame.fatal:
            self.state = _CLOSED
            raise error
        request = frame.rid if frame.rid is not None else frame.id
        if request is None:
            return Failed(None, error)
        if self._settle(request) is None:
            raise UnexpectedFrame("error", f"the hub reported {frame.code!r} for a request not outstanding")
        return Failed(request, error)

    def _answer(self, frame: Frame) -> Event:
        request: int | bytes = frame.id if type(frame) is Accepted else frame.rid  # type: ignore[attr-defined]
        asked = self._settle(request)
        if asked is None:
            raise UnexpectedFrame(frame.TYPE, f"the hub sent {frame.TYPE!r} for a request not outstanding")
        if ANSWERS[asked] is not type(frame):
            return Failed(
                request, UnexpectedFrame(frame.TYPE, f"the hub answered {asked.TYPE!r} with {frame.TYPE!r}")
            )
        return Answered(request, frame)

    def _settle(self, request: int | bytes) -> type[Frame] | None:
        """Forget an outstanding request now answered; its type, or None if
        it was not outstanding."""
        if isinstance(request, int):
            return self._requests.pop(request, None)
        sends = self._sends.get(request)
        if sends is None:
            return None
        if sends == 1:
            del self._sends[request]
        else:
            self._sends[request] = sends - 1
        return Send

    # --- sending --------------------------------------------------------------------

    def auth(self, device_id: str, keys: Signer, caps: tuple[str, ...] | None = None) -> bytes:
        """The ``auth`` answering the challenge (:func:`answer_auth`), to send.
        Raises FrameNotAllowed unless CHALLENGED."""
        return self.send(answer_auth(self._challenged(), device_id, keys, caps))

    def enroll(
        self,
        code: str,
        keys: Signer,
        label: str = "",
        caps: tuple[str, ...] | None = None,
        *,
        authority: bytes | rotation.AuthorityKeys | None = None,
    ) -> bytes:
        """The ``enroll`` answering the challenge (:func:`answer_enroll`), to
        send. Raises FrameNotAllowed unless CHALLENGED, WrongAuthority (the
        session stays CHALLENGED: nothing is to be sent)."""
        return self.send(answer_enroll(self._challenged(), code, keys, label, caps, authority=authority))

    def request(self, build: Callable[[int], Frame]) -> tuple[int, bytes]:
        """Allocate a ``rid``, and return it with the bytes of ``build(rid)``,
        a request (``lookup``, ``link_code``, ``set_status``, ``watch``,
        ``search``, ``devices``, ``revoke``, ``team_change``, ``teams``,
        ``team_chain``, ``recall``, ``role_search``, ``role_get``,
        ``role_take``, ``role_leave``, ``acknowledge`` or a ``blob_*``) now
        outstanding. Raises
        FrameNotAllowed unless AUTHENTICATED."""
        rid = next(self._rids)
        while rid in self._requests:  # taken by a request sent with its own rid
            rid = next(self._rids)
        frame = build(rid)
        if getattr(frame, "rid", None) != rid:
            raise ValueError(f"build({rid}) made a {frame.TYPE!r} frame without that rid")
        return rid, self.send(frame)

    def send(self, frame: Frame) -> bytes:
        """The bytes of ``frame``, which the state must allow (:data:`SENDABLE`;
        else FrameNotAllowed, and nothing is to be sent).

        An ``auth`` or ``enroll`` moves the session to ANSWERED. A request
        becomes outstanding under its ``rid`` (ValueError if that rid already
        is), a ``send`` under its message id: a resend of an id still
        outstanding is answered once more (SPEC §6.2).
        """
        kind = type(frame)
        if kind not in SENDABLE[self.state]:
            raise FrameNotAllowed(f"sending {frame.TYPE} in {self.state.value}")
        if kind is Send:
            mid: bytes = frame.id  # type: ignore[attr-defined]
            self._sends[mid] = self._sends.get(mid, 0) + 1
        elif kind in ANSWERS:
            rid: int = frame.rid  # type: ignore[attr-defined]
            if rid in self._requests:
                raise ValueError(f"rid {rid} is already outstanding")
            self._requests[rid] = kind
        elif kind is Auth or kind is Enroll:
            self.state = ClientState.ANSWERED
        return encode(frame)

    def _challenged(self) -> Challenge:
        if self.state is not ClientState.CHALLENGED or self.challenge is None:
            raise FrameNotAllowed(f"answering a challenge in {self.state.value}")
        return self.challenge

    # --- the end ----------------------------------------------------------------------

    def connection_closed(self, code: int | None, reason: str | None) -> FatalError | None:
        """The WebSocket closed with ``code`` and ``reason`` (as received):
        the session is CLOSED. Returns the fatal error the close names
        (:func:`error_from_close`), or None."""
        self.state = _CLOSED
        return error_from_close(code, reason)

    def close(self) -> None:
        """Move to CLOSED, from any state: nothing more is admitted or sent."""
        self.state = _CLOSED
