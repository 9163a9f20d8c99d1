"""The hub's side of one connection, as a state table (SPEC §4).

Theory of operation
-------------------
A :class:`ServerSession` does no I/O. The hub's connection handler feeds it
each received WebSocket message with :meth:`ServerSession.receive`, which
returns a checked frame or raises a :mod:`protocol.errors` exception. The
session owns the connection's challenge nonce and checks signatures; the
handler only fetches what needs a database (the device's public key) and
reports back with :meth:`authenticate` or :meth:`enrolled`.

The state table is :data:`ALLOWED`: a frame type not listed for the current
state is a :class:`~protocol.errors.FrameNotAllowed`. A challenge nonce
answers exactly one ``auth`` or ``enroll``; any failure closes the session,
so a captured signature is useless on any other connection. The handler
closes it too (:meth:`ServerSession.close`) when it refuses a device whose
signature was good: revoked, or of a suspended account.
"""

from __future__ import annotations

import enum
import os

from . import crypto
from .errors import (
    AuthFailed,
    FatalError,
    ForgedSender,
    FrameNotAllowed,
    MalformedFrame,
    MissingDevices,
    ProtocolError,
    RoleVacant,
    UnsupportedVersion,
)
from .frame_base import CAP_ROTATION
from .frames import (
    CLIENT_FRAMES,
    HUB_CAPS,
    MAX_ACK_BYTES,
    PROTOCOL_VERSION,
    Ack,
    Acknowledge,
    Auth,
    BlobBegin,
    BlobEnd,
    BlobLink,
    BlobPut,
    Challenge,
    Devices,
    Enroll,
    Error,
    Frame,
    LinkCode,
    Lookup,
    Ping,
    Recall,
    Revoke,
    RoleGet,
    RoleLeave,
    RoleSearch,
    RoleTake,
    Search,
    Send,
    SetStatus,
    TeamChain,
    TeamChange,
    Teams,
    Watch,
    decode,
    encode,
)

__all__ = ["ALLOWED", "ServerSession", "State", "error_frame"]


class State(enum.Enum):
    CHALLENGED = "challenged"  # challenge sent, waiting for auth or enroll
    AUTHENTICATED = "authenticated"  # a device is bound to the connection
    CLOSED = "closed"  # a fatal error was raised; nothing more is read


#: Which client frame types each state accepts (SPEC §4, table 2).
ALLOWED: dict[State, frozenset[type[Frame]]] = {
    State.CHALLENGED: frozenset({Auth, Enroll}),
    State.AUTHENTICATED: frozenset(
        {
            Send,
            Ack,
            Lookup,
            LinkCode,
            SetStatus,
            Watch,
            Search,
            Devices,
            Revoke,
            # revision 3 (SPEC §13.4); opt-in: the hub may refuse them from a
            # connection that did not name the ``teams`` capability.
            TeamChange,
            Teams,
            TeamChain,
            Recall,
            # revision 4 (SPEC §14.3); opt-in like the above, behind ``oncall``.
            RoleSearch,
            RoleGet,
            RoleTake,
            RoleLeave,
            Acknowledge,
            # revision 6 (SPEC §16.4); opt-in, behind ``blobs``.
            BlobBegin,
            BlobPut,
            BlobEnd,
            BlobLink,
            # revision 8 (SPEC §4.1); answered to any device, even one that did not name ``ping``.
            Ping,
        }
    ),
    State.CLOSED: frozenset(),
}


def error_frame(exc: ProtocolError, *, id: bytes | None = None, rid: int | None = None) -> bytes:
    """The ``error`` frame telling a peer about ``exc`` (never its details)."""
    missing = tuple(exc.missing) if isinstance(exc, MissingDevices) else None
    return encode(
        Error(
            code=exc.code,
            message=exc.message,
            fatal=isinstance(exc, FatalError),
            id=id,
            rid=rid,
            retry_after=exc.retry_after_ms,
            missing=missing,
            role=exc.role if isinstance(exc, RoleVacant) else None,
        )
    )


class ServerSession:
    """One connection's protocol state. Not thread-safe; one per connection."""

    __slots__ = ("authority", "caps", "device_id", "hub_caps", "nonce", "rotations", "state", "user_id")

    def __init__(
        self,
        nonce: bytes | None = None,
        authority: bytes | None = None,
        hub_caps: tuple[str, ...] = HUB_CAPS,
        rotations: tuple[bytes, ...] = (),
    ) -> None:
        self.state = State.CHALLENGED
        self.nonce = nonce if nonce is not None else os.urandom(32)
        #: The verification authority key the hub announces (SPEC §5.1).
        self.authority = authority
        self.user_id: str | None = None
        self.device_id: str | None = None
        #: Capabilities the client named in its ``auth``/``enroll`` (SPEC §10).
        self.caps: frozenset[str] = frozenset()
        #: Capabilities this hub announces in its ``challenge`` (a hub that
        #: implements less of the SPEC, like the tests' scripted one, names fewer).
        self.hub_caps = hub_caps
        #: The authority's rotation statements, oldest first, ending at
        #: ``authority`` (SPEC §15); sent in the challenge when not empty.
        self.rotations = rotations

    def challenge(self) -> bytes:
        """The first frame the hub sends on a new connection: the nonce, the
        authority key (if the hub has one), the hub's capabilities and the
        rotation statements (if any: then ``rotation`` is among the caps)."""
        rotations = self.rotations or None
        caps = self.hub_caps
        if rotations is not None and CAP_ROTATION not in caps:
            caps = (*caps, CAP_ROTATION)
        return encode(Challenge(PROTOCOL_VERSION, self.nonce, self.authority, caps, rotations))

    def receive(self, data: bytes) -> Frame:
        """Parse and admit one client frame.

        Raises MalformedFrame, UnknownFrameType, FrameNotAllowed,
        UnsupportedVersion or ForgedSender; after any of them the session is
        CLOSED and the caller must close the connection with the error's
        close code.
        """
        try:
            frame = decode(data, CLIENT_FRAMES)
            if type(frame) is Ack and len(data) > MAX_ACK_BYTES:
                raise MalformedFrame(f"ack of {len(data)} bytes")
            if type(frame) not in ALLOWED[self.state]:
                raise FrameNotAllowed(f"{frame.TYPE} in {self.state.value}")
            if type(frame) is Send:
                if frame.sender != self.device_id:
                    raise ForgedSender(f"from={frame.sender[:64]!r}")
            elif type(frame) in (Auth, Enroll):
                if frame.v != PROTOCOL_VERSION:  # type: ignore[attr-defined]
                    raise UnsupportedVersion(f"v={frame.v}")  # type: ignore[attr-defined]
                self.caps = frozenset(frame.caps or ())  # type: ignore[attr-defined]
        except FatalError:
            self.close()
            raise
        return frame

    def authenticate(self, frame: Auth, user_id: str | None, sign_pk: bytes | None) -> None:
        """Finish an ``auth``: ``sign_pk``/``user_id`` are the stored key and
        owner of ``frame.device``, or None if the device is unknown or revoked.
        Raises AuthFailed (and closes) unless the signature is good."""
        if (
            sign_pk is None
            or user_id is None
            or not crypto.verify_signature(sign_pk, crypto.auth_message(self.nonce, frame.device), frame.sig)
        ):
            self.close()
            raise AuthFailed(f"device {frame.device[:64]!r}")
        self._bind(user_id, frame.device)

    def check_enroll(self, frame: Enroll) -> None:
        """Check that the enrolling device holds the private key of ``sign_pk``
        (and binds ``box_pk`` to it). Raises AuthFailed (and closes)."""
        message = crypto.enroll_message(self.nonce, frame.code, frame.sign_pk, frame.box_pk)
        if not crypto.verify_signature(frame.sign_pk, message, frame.sig):
            self.close()
            raise AuthFailed("bad enrollment signature")

    def enrolled(self, user_id: str, device_id: str) -> None:
        """The store registered the device: the connection is now that device."""
        self._bind(user_id, device_id)

    def close(self) -> None:
        """Move to CLOSED, from any state: nothing more is admitted. The
        session does so itself on every fatal error it raises; the handler
        calls it before raising a fatal error of its own (a revoked device,
        a suspended account), and then closes the connection with that
        error's close code. ``user_id`` and ``device_id`` are kept, for the
        handler's logs."""
        self.state = State.CLOSED

    def _bind(self, user_id: str, device_id: str) -> None:
        if self.state is not State.CHALLENGED:
            self.close()  # like every fatal error (see receive)
            raise FrameNotAllowed("already authenticated")
        self.state = State.AUTHENTICATED
        self.user_id = user_id
        self.device_id = device_id
