"""Every error the MiSS protocol can signal, in one place.

Theory of operation
-------------------
An error either ends the connection or it does not:

* **Fatal errors** are protocol violations (a frame that cannot be parsed, a
  frame the connection state does not allow, a failed authentication, a
  forged sender). The hub sends one ``error`` frame naming the code, then
  closes the WebSocket with the close code below and the error code as the
  close reason. Nothing the offender did is kept.
* **Request errors** answer one request (``send``, ``lookup``, ...). The hub
  sends an ``error`` frame carrying the request's ``id`` or ``rid`` and the
  connection stays open. Some are retryable and carry ``retry_after`` (ms).

The tree::

    ProtocolError                      base; .code (wire name), .close_code
    ├── FatalError                     the connection is closed
    │   ├── MalformedFrame             4400 malformed_frame
    │   ├── UnknownFrameType           4404 unknown_frame_type
    │   ├── FrameNotAllowed            4405 frame_not_allowed
    │   │   └── UnexpectedFrame        a peer's frame this side's state does not admit (local)
    │   ├── AuthFailed                 4401 auth_failed
    │   ├── InvalidCode                4402 invalid_code
    │   ├── AuthTimeout                4408 auth_timeout
    │   ├── ForgedSender               4403 forged_sender
    │   ├── UnsupportedVersion         4426 unsupported_version
    │   ├── SessionReplaced            4409 session_replaced
    │   ├── DeviceRevoked              4410 device_revoked    (for ever: enroll anew)
    │   └── AccountSuspended           4411 account_suspended
    └── RequestError                   the connection stays open
        ├── UnknownUser                unknown_user
        ├── UnknownDevice              unknown_device
        ├── NoDevices                  no_devices        (recipient has enrolled no device yet)
        ├── MissingDevices             missing_devices   (.missing: list of device ids)
        ├── StorageUnavailable         storage_unavailable (retryable)
        ├── RateLimited                rate_limited      (retryable, retry_after)
        ├── NotVerified                not_verified      (the sender's account or device)
        ├── RecipientNotVerified       recipient_not_verified
        ├── TooManyRecipients          too_many_recipients
        ├── TooManyDevices             too_many_devices  (the account's device cap; at enroll: close 1008)
        ├── TooManyConnections         too_many_connections (retryable; over the account's connection cap)
        ├── Forbidden                  forbidden         (e.g. revoking another's device)
        │   revision 3, care teams (SPEC §13.7):
        ├── UnknownTeam                unknown_team      (no team this user may see)
        ├── NotMember                  not_member        (a send to a team the sender is not in)
        ├── StaleTeamHead              team_changed      (the send's head is not the hub's)
        ├── TeamForbidden              team_forbidden    (a record breaks §13.2 rule 3; a recall of another's)
        ├── BadTeamRecord              bad_team_record   (a record breaks §13.2 rules 1-2)
        ├── TeamConflict               team_conflict     (seq/prev do not follow the hub's head)
        ├── TeamFull                   team_full         (max_team_members, max_teams_per_user)
        │   revision 4, on-call roles and urgent messages (SPEC §14.9):
        ├── UnknownRole                unknown_role      (no such role)
        ├── RoleVacant                 role_vacant       (.role: the role, which nobody holds now)
        ├── RoleReserved               role_reserved     (held only by the schedule and administrators)
        ├── RoleForbidden              role_forbidden    (a role of another organisation)
        ├── RoleFull                   role_full         (max_roles_per_user)
        ├── PolicyOutOfBounds          policy_out_of_bounds (an urgent override beyond the hub's caps)
        ├── UrgentLimit                urgent_limit      (max_open_urgent_per_user escalations still open)
        ├── NotRecipient               not_recipient     (acknowledging a message one did not receive)
        │   revision 6, encrypted attachments (SPEC §16.7):
        ├── BlobTooLarge               blob_too_large    (a blob_begin over the hub's largest file)
        ├── BlobQuota                  blob_quota        (uploads or stored bytes over a quota; retry_after)
        ├── UnknownBlob                unknown_blob      (no blob of that id usable by this device)
        ├── BlobOffset                 blob_offset       (blob_put.off is not what the hub holds)
        ├── BlobIncomplete             blob_incomplete   (blob_end before every byte)
        ├── TooManyAttachments         too_many_attachments (send.blobs over max_attachments)
        │   revision 7, services (SPEC §17.5):
        └── RepliesRefused             replies_refused   (a send to a service that does not accept replies)

A frame larger than the size limit is refused by the WebSocket layer itself
with close code 1009 (message too big) before it is parsed.

Local or remote: every error says who found it (``ProtocolError.remote``).
A *local* error (``remote`` False) comes from this side's own checks: the
peer sent something malformed or out of place (if the error is fatal, this
side closes the connection with ``close_code``), or this side tried to send
a frame its state does not allow (nothing is sent). A *remote* error (``remote`` True) is one
the peer reported, in an ``error`` frame or as the code and reason of its
close (``client_session.error_from_frame``, ``error_from_close``); if it is
fatal, the peer closes the connection.

As in python-websockets, the peer never sees exception details beyond the
code and a fixed, human-readable message: they may be security-sensitive.
See SPEC.md §7.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_TOO_BIG",
    "AccountSuspended",
    "AuthFailed",
    "AuthTimeout",
    "BadTeamRecord",
    "BlobIncomplete",
    "BlobOffset",
    "BlobQuota",
    "BlobTooLarge",
    "DeviceRevoked",
    "FatalError",
    "Forbidden",
    "ForgedSender",
    "FrameNotAllowed",
    "InvalidCode",
    "MalformedFrame",
    "MissingDevices",
    "NotMember",
    "NotRecipient",
    "NotVerified",
    "PolicyOutOfBounds",
    "ProtocolError",
    "RateLimited",
    "RecipientNotVerified",
    "RepliesRefused",
    "RequestError",
    "RoleForbidden",
    "RoleFull",
    "RoleReserved",
    "RoleVacant",
    "SessionReplaced",
    "StaleTeamHead",
    "StorageUnavailable",
    "TeamConflict",
    "TeamForbidden",
    "TeamFull",
    "TooManyAttachments",
    "TooManyConnections",
    "TooManyDevices",
    "TooManyRecipients",
    "UnexpectedFrame",
    "UnknownBlob",
    "UnknownDevice",
    "UnknownFrameType",
    "UnknownRole",
    "UnknownTeam",
    "UnknownUser",
    "UnsupportedVersion",
    "UrgentLimit",
    "error_class",
]

#: WebSocket close code for a frame over the size limit (RFC 6455).
CLOSE_TOO_BIG = 1009
#: WebSocket close code when the hub shuts down (RFC 6455).
CLOSE_GOING_AWAY = 1001


class ProtocolError(Exception):
    """Base class. ``code`` is the wire name; ``message`` is safe to show a peer."""

    code: ClassVar[str] = "protocol_error"
    close_code: ClassVar[int | None] = None
    message: ClassVar[str] = "protocol error"
    retryable: ClassVar[bool] = False
    #: True if the peer reported this error, False (the default) if this
    #: side found it (see "Local or remote" above).
    remote: bool = False

    def __init__(self, detail: str = "", *, retry_after_ms: int | None = None) -> None:
        # ``detail`` is for our logs only; it never goes on the wire.
        super().__init__(detail or self.message)
        self.detail = detail
        #: For retryable errors: how long the peer should wait, in ms.
        self.retry_after_ms = retry_after_ms


class FatalError(ProtocolError):
    """A protocol violation: the hub closes the connection with ``close_code``."""

    close_code: ClassVar[int | None] = 4400


class MalformedFrame(FatalError):
    code = "malformed_frame"
    close_code = 4400
    message = "frame is not a valid msgpack map for its type"


class UnknownFrameType(FatalError):
    code = "unknown_frame_type"
    close_code = 4404
    message = "unknown frame type"


class FrameNotAllowed(FatalError):
    code = "frame_not_allowed"
    close_code = 4405
    message = "frame not allowed in this connection state"


class UnexpectedFrame(FrameNotAllowed):
    """A well-formed frame that this side's state does not admit, found by
    this side: for a client, a hub frame SPEC §4 does not allow at this point
    of the connection. ``frame_type`` is its ``"t"``. Never built from a
    peer's report (``error_class`` maps ``frame_not_allowed`` to
    :class:`FrameNotAllowed`)."""

    def __init__(self, frame_type: str, detail: str = "") -> None:
        super().__init__(detail or f"unexpected {frame_type!r} frame")
        self.frame_type = frame_type


class AuthFailed(FatalError):
    code = "auth_failed"
    close_code = 4401
    message = "authentication failed"


class AuthTimeout(FatalError):
    code = "auth_timeout"
    close_code = 4408
    message = "no authentication in time"


class ForgedSender(FatalError):
    code = "forged_sender"
    close_code = 4403
    message = "'from' is not the authenticated device"


class UnsupportedVersion(FatalError):
    code = "unsupported_version"
    close_code = 4426
    message = "unsupported protocol version"


class SessionReplaced(FatalError):
    code = "session_replaced"
    close_code = 4409
    message = "the same device authenticated on another connection"


class DeviceRevoked(FatalError):
    code = "device_revoked"
    close_code = 4410
    message = "this device has been revoked; enroll it again with a new code"


class AccountSuspended(FatalError):
    code = "account_suspended"
    close_code = 4411
    message = "this account is suspended; contact your administrator"


class RequestError(ProtocolError):
    """An error answering one request; the connection stays open."""


class InvalidCode(FatalError):
    code = "invalid_code"
    close_code = 4402
    message = "enrollment code is unknown, used or expired"


class UnknownUser(RequestError):
    code = "unknown_user"
    message = "no such user"


class UnknownDevice(RequestError):
    code = "unknown_device"
    message = "envelope addressed to a device that is not an active device of the recipient or sender"


class NoDevices(RequestError):
    code = "no_devices"
    message = "the recipient has no enrolled device yet"


class MissingDevices(RequestError):
    code = "missing_devices"
    message = "envelopes missing for some active devices; refresh the device list and resend"

    def __init__(self, missing: list[str], detail: str = "") -> None:
        super().__init__(detail)
        self.missing = missing


class StorageUnavailable(RequestError):
    code = "storage_unavailable"
    message = "storage unavailable; the request was not carried out, retry later"
    retryable = True


class RateLimited(RequestError):
    code = "rate_limited"
    message = "too many requests; retry later"
    retryable = True


class NotVerified(RequestError):
    """The requesting (or sending) account has no valid attestation, or the
    device is not one it vouches for: such a device may only authenticate,
    ack and revoke itself (SPEC §11.4)."""

    code = "not_verified"
    message = "this account or device is not verified by the authority; ask an administrator"


class RecipientNotVerified(RequestError):
    code = "recipient_not_verified"
    message = "the recipient is not a verified clinician"


class TooManyRecipients(RequestError):
    code = "too_many_recipients"
    message = "more envelopes than this hub accepts in one message"


class TooManyDevices(RequestError):
    code = "too_many_devices"
    message = "this account has as many devices as it may; revoke one first"


class TooManyConnections(RequestError):
    """An authenticated connection over the account's cap of connections
    at once, on every node (SPEC §11.5): refused after ``auth``/``enroll``,
    then closed with 1008."""

    code = "too_many_connections"
    message = "this account has as many connections open as it may; close one or retry later"
    retryable = True


class Forbidden(RequestError):
    code = "forbidden"
    message = "not allowed"


class UnknownTeam(RequestError):
    code = "unknown_team"
    message = "no such team"


class NotMember(RequestError):
    code = "not_member"
    message = "the sender is not a member of this team"


class StaleTeamHead(RequestError):
    """A team ``send`` whose ``head`` is not the hub's: the team changed
    since the sender verified its chain (SPEC §13.4)."""

    code = "team_changed"
    message = "the team changed; fetch its chain, verify it and resend"


class TeamForbidden(RequestError):
    code = "team_forbidden"
    message = "this team change or recall is not allowed"


class BadTeamRecord(RequestError):
    code = "bad_team_record"
    message = "the team record is malformed or its signature does not verify"


class TeamConflict(RequestError):
    code = "team_conflict"
    message = "the team record does not follow the current head; fetch the chain and retry"


class TeamFull(RequestError):
    code = "team_full"
    message = "the team, or one of its members, has reached its limit"


class UnknownRole(RequestError):
    code = "unknown_role"
    message = "no such role"


class RoleVacant(RequestError):
    """A send to a role nobody holds now (SPEC §14.4). ``role`` is the
    role's id, carried by the ``error`` frame's ``role`` key."""

    code = "role_vacant"
    message = "nobody holds this role now; choose another recipient"

    def __init__(self, role: str, detail: str = "", *, retry_after_ms: int | None = None) -> None:
        super().__init__(detail, retry_after_ms=retry_after_ms)
        self.role = role


class RoleReserved(RequestError):
    code = "role_reserved"
    message = "this role is held only through the schedule or by an administrator"


class RoleForbidden(RequestError):
    code = "role_forbidden"
    message = "this role belongs to another organisation"


class RoleFull(RequestError):
    code = "role_full"
    message = "the role, or this user, has reached its limit of holders or roles"


class PolicyOutOfBounds(RequestError):
    code = "policy_out_of_bounds"
    message = "the escalation policy is beyond this hub's bounds"


class UrgentLimit(RequestError):
    """An urgent ``send`` while the sender's user already has
    ``max_open_urgent_per_user`` escalations open (SPEC §14.4)."""

    code = "urgent_limit"
    message = "too many of your urgent messages are still awaiting acknowledgement"


class NotRecipient(RequestError):
    """An ``acknowledge`` of a message this user did not receive, that was
    not urgent, or that does not exist: one error for all three, so that
    the answer reveals nothing (SPEC §14.7)."""

    code = "not_recipient"
    message = "no urgent message of this sender reached you under this id"


class BlobTooLarge(RequestError):
    """A ``blob_begin`` whose size is over ``cipher_size`` of the hub's
    ``max_attachment_bytes`` (SPEC §16.4)."""

    code = "blob_too_large"
    message = "this file is larger than this hub accepts"


class BlobQuota(RequestError):
    """A ``blob_begin`` over one of the device's or user's quotas: bytes or
    uploads begun today, uploads open at once, bytes stored (SPEC §16.6).
    ``retry_after`` (ms) when waiting helps (the next UTC day)."""

    code = "blob_quota"
    message = "upload quota reached; retry later or remove older attachments"
    retryable = True


class UnknownBlob(RequestError):
    """A blob this device cannot use: unknown, another's, not complete (in
    a ``send``), linked to another message, expired or recalled. One error
    for all of them, so that the answer is no oracle (SPEC §16.4)."""

    code = "unknown_blob"
    message = "no such attachment is available to you"


class BlobOffset(RequestError):
    """A ``blob_put`` whose ``off`` is not the bytes the hub holds, or that
    runs past the blob's size: resume with ``blob_begin {blob}``."""

    code = "blob_offset"
    message = "the upload is not at this offset; ask where it stands and resume"


class BlobIncomplete(RequestError):
    code = "blob_incomplete"
    message = "the upload is not complete"


class TooManyAttachments(RequestError):
    """A ``send`` naming more blobs than the hub's ``max_attachments``."""

    code = "too_many_attachments"
    message = "more attachments than this hub accepts in one message"


class RepliesRefused(RequestError):
    """A ``send`` whose target is a service (SPEC §17.1) that does not
    accept replies: nothing was stored. The client should tell its user
    whom to call instead (the ``reply`` line of the service's notices)."""

    code = "replies_refused"
    message = "this service does not accept replies"


_BY_CODE: dict[str, type[ProtocolError]] = {
    cls.code: cls
    for cls in (
        MalformedFrame,
        UnknownFrameType,
        FrameNotAllowed,
        AuthFailed,
        AuthTimeout,
        ForgedSender,
        UnsupportedVersion,
        SessionReplaced,
        DeviceRevoked,
        AccountSuspended,
        InvalidCode,
        UnknownUser,
        UnknownDevice,
        NoDevices,
        MissingDevices,
        StorageUnavailable,
        RateLimited,
        NotVerified,
        RecipientNotVerified,
        TooManyRecipients,
        TooManyDevices,
        TooManyConnections,
        Forbidden,
        UnknownTeam,
        NotMember,
        StaleTeamHead,
        TeamForbidden,
        BadTeamRecord,
        TeamConflict,
        TeamFull,
        UnknownRole,
        RoleVacant,
        RoleReserved,
        RoleForbidden,
        RoleFull,
        PolicyOutOfBounds,
        UrgentLimit,
        NotRecipient,
        BlobTooLarge,
        BlobQuota,
        UnknownBlob,
        BlobOffset,
        BlobIncomplete,
        TooManyAttachments,
        RepliesRefused,
    )
}


def error_class(code: str) -> type[ProtocolError]:
    """The exception class for a wire error code (``ProtocolError`` if unknown)."""
    return _BY_CODE.get(code, ProtocolError)
