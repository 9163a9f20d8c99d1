"""Errors raised by the client SDK itself, as opposed to the hub.

What the hub signals (``error`` frames, close codes) surfaces as the
:mod:`protocol.errors` classes unchanged, so an application catches
``protocol.errors.UnknownUser`` whether it comes from a lookup or a send.
This module only holds what the protocol tree cannot express: local profile
problems and transport failures.

The tree::

    ClientError                 base of everything below
    ├── ProfileError            the local profile directory
    │   ├── ProfileNotFound     no profile in that directory
    │   ├── ProfileExists       refusing to overwrite an existing profile
    │   ├── WrongPassphrase     the passphrase does not open the profile
    │   ├── WeakPassphrase      refused when creating or changing a profile
    │   ├── ProfileCorrupt      files present but unreadable
    │   └── AuthorityNotSet     the profile holds no verification authority key
    ├── UnverifiedPeer          a peer whose attestation does not verify: nothing is encrypted to it
    ├── KeyChangePending        a peer's attested keys differ from the pinned ones: accept them first
    ├── AuthorityMismatch       enrolling: the hub uses another authority key than the one given
    ├── ConnectionFailed        could not open a MiSS connection (refused, TLS, HTTP status, no miss.v1)
    │   └── HubBusy             HTTP 503: the node is draining for a restart, or overloaded
    ├── ConnectionLost          the connection ended without a protocol error (network, hub shutdown)
    ├── RequestTimeout          the hub did not answer a request in time
    ├── BadRecipient            a recipient string that is neither an RPPS number nor a user id
    ├── MessageTooLarge         the ``send`` frame would exceed MAX_FRAME_BYTES
    ├── UnknownMessage          recall: no message of ours with that id in the local history
    ├── RepliesNotAccepted      a service that does not accept replies (SPEC §17.2): nothing encrypted
    ├── TeamProblem             the hub's view of a team is wrong: nothing is sent to it (SPEC §13.4)
    │   ├── TeamTampered        a membership nobody signed (a chain that does not verify, or
    │   │                       devices of a non-member asked for)
    │   └── TeamDiverged        members do not see the same chain (a head we never verified)
    └── AttachmentProblem       attachments (SPEC §16); messages in French, for the user
        ├── TooManyAttachments          more files than the hub's ``att_max`` (nothing uploaded)
        ├── AttachmentTooLarge          a file over the hub's ``blob_max`` (nothing uploaded)
        ├── AttachmentTypeNotAllowed    a file that is not JPEG, PNG, HEIC/HEIF or PDF (nothing uploaded)
        ├── AttachmentsNotSupported     the hub does not speak ``blobs``
        ├── AttachmentUnavailable       expired, recalled, or not for this device (``unknown_blob``, 404)
        └── AttachmentCorrupt           the bytes fetched do not verify: never saved

The hub's own ``too_many_attachments`` answer to a ``send`` is
:class:`protocol.errors.TooManyAttachments`, as every hub error; the SDK
raises this module's :class:`TooManyAttachments` before it gets there.

A team message refused because this user is not a member raises
:class:`protocol.errors.NotMember` (from the hub, or from the local chain).

Messages are meant to be shown to a user as is: they never contain key
material or message text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.attestation import authority_fingerprint

if TYPE_CHECKING:
    from .models import Peer, PeerChange

__all__ = [
    "AttachmentCorrupt",
    "AttachmentProblem",
    "AttachmentTooLarge",
    "AttachmentTypeNotAllowed",
    "AttachmentUnavailable",
    "AttachmentsNotSupported",
    "AuthorityMismatch",
    "AuthorityNotSet",
    "BadRecipient",
    "ClientError",
    "ConnectionFailed",
    "ConnectionLost",
    "HubBusy",
    "KeyChangePending",
    "MessageTooLarge",
    "ProfileCorrupt",
    "ProfileError",
    "ProfileExists",
    "ProfileNotFound",
    "RepliesNotAccepted",
    "RequestTimeout",
    "TeamDiverged",
    "TeamProblem",
    "TeamTampered",
    "TooManyAttachments",
    "UnknownMessage",
    "UnverifiedPeer",
    "WeakPassphrase",
    "WrongPassphrase",
]


class ClientError(Exception):
    """Base class of the SDK's own errors."""


class ProfileError(ClientError):
    """Something is wrong with the local profile directory."""


class ProfileNotFound(ProfileError):
    """The directory holds no profile (enroll first)."""


class ProfileExists(ProfileError):
    """The directory already holds a profile; enrolling again would lose its keys."""


class WrongPassphrase(ProfileError):
    """The passphrase does not open the profile (or the sealed file was altered)."""


class WeakPassphrase(ProfileError):
    """The passphrase is too short to protect device keys."""


class ProfileCorrupt(ProfileError):
    """Profile files exist but cannot be parsed."""


class AuthorityNotSet(ProfileError):
    """The profile was created before verification authorities existed (or
    without one): the client cannot check anyone's attestation, so it
    refuses to connect. Set the key your administrator gives you with
    ``miss-chat set-authority KEY`` (:func:`miss_client.profile.set_authority`)."""


class UnverifiedPeer(ClientError):
    """A clinician whose attestation (SPEC §11.2) is missing, malformed, not
    signed by the trusted authority, not yet valid, expired, or about
    another user: nothing is encrypted to them and they are not shown as a
    clinician. ``reason`` is one of ``REASONS``; ``own`` is true when the
    clinician is the profile's own user (so this device cannot send at all)."""

    REASONS = (
        "missing",
        "malformed",
        "signature",
        "not_yet_valid",
        "expired",
        "wrong_user",
        "device_not_attested",  # our own account is verified, but not this device (yet)
        "stale",  # older than an attestation of theirs already seen: a hub replaying it
    )

    def __init__(self, user: str, reason: str, detail: str, *, own: bool = False) -> None:
        who = "your own account" if own else user
        super().__init__(f"{who} is not a verified clinician: {detail}")
        self.user = user
        self.reason = reason
        self.detail = detail
        self.own = own


class KeyChangePending(ClientError):
    """The device keys the authority attests for ``peer`` differ from the ones
    pinned in this profile (a new device, new keys, or keys the hub lists
    that the authority never signed): nothing is encrypted to anyone of
    that peer until the user accepts the change
    (:meth:`miss_client.client.Client.accept_keys`, ``miss-chat trust``),
    ideally after comparing safety numbers. ``own`` is true when the change
    is in our own user's devices (then nothing is sent to anyone)."""

    def __init__(self, peer: Peer, change: PeerChange, *, own: bool = False) -> None:
        who = "your own account" if own else peer.display
        super().__init__(f"the devices of {who} changed ({change.describe()}); accept them first")
        self.peer = peer
        self.change = change
        self.own = own


class AuthorityMismatch(ClientError):
    """The hub announces another verification authority key than the one the
    user was given (SPEC §5.1): enrolling with it would make every clinician
    look unverified. Raised before the code is spent. ``given`` and ``hub``
    are the two keys."""

    def __init__(self, given: bytes, hub: bytes) -> None:
        super().__init__(
            "the authority key you were given (fingerprint "
            f"{authority_fingerprint(given)}) is not the one this hub uses ({authority_fingerprint(hub)}): "
            "check the key with your administrator; your code was not used"
        )
        self.given = given
        self.hub = hub


class ConnectionFailed(ClientError):
    """The WebSocket connection could not be opened or negotiated."""


class HubBusy(ConnectionFailed):
    """The hub answered the upgrade with HTTP 503: a node draining for a
    rolling restart (its ``/readyz`` says so), or one at its connection
    caps. Another try a moment later lands on a node that takes it."""


class ConnectionLost(ClientError):
    """The connection ended without a protocol error; ``close_code`` if known."""

    def __init__(self, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


class RequestTimeout(ClientError):
    """No answer to a request in time. A ``send`` may still have been accepted:
    resend with the same id to find out (the hub answers ``dup``)."""


class BadRecipient(ClientError):
    """A recipient must be an RPPS number (digits only) or a user id (``u_...``)."""


class MessageTooLarge(ClientError):
    """The message, once encrypted for every device, does not fit in one frame."""


class UnknownMessage(ClientError):
    """No message of ours with that id in this device's history."""


class RepliesNotAccepted(ClientError):
    """``user`` is a service that does not accept replies (its lookup said
    so, SPEC §17.2): nothing was encrypted nor recorded. ``reply`` is the
    reply line of its last notice on this device (whom to call instead), if
    any; ``str()`` is the French text to show."""

    def __init__(self, user: str, reply: str | None = None) -> None:
        text = "Ce service n'accepte pas de réponse"
        if reply:
            text += f". Pour toute question : {reply}"
        super().__init__(text)
        self.user = user
        self.reply = reply


class TeamProblem(ClientError):
    """This device found the hub's view of team ``team`` wrong (``problem``:
    ``tampered`` or ``diverged``); nothing is encrypted to the team while it
    lasts. The message says it in French, naming the team by ``name``."""

    problem = ""

    def __init__(self, team: str, name: str, text: str) -> None:
        super().__init__(text)
        self.team = team
        self.name = name


class TeamTampered(TeamProblem):
    """The hub presents for the team a membership that nobody signed."""

    problem = "tampered"


class TeamDiverged(TeamProblem):
    """The members of the team do not see the same chain: sending is blocked."""

    problem = "diverged"


class AttachmentProblem(ClientError):
    """Something about attachments (SPEC §16). The message is French, for
    the user; it names files, never their content or keys."""


class TooManyAttachments(AttachmentProblem):
    """More files than the hub allows in one message (``att_max`` of its
    ``welcome``): nothing was encrypted or uploaded."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"trop de pièces jointes : {count} (au plus {limit} par message)")
        self.count = count
        self.limit = limit


class AttachmentTooLarge(AttachmentProblem):
    """A file larger than the hub accepts (``blob_max`` of its ``welcome``,
    plaintext bytes): nothing was encrypted or uploaded."""

    def __init__(self, name: str, size: int, limit: int) -> None:
        from .attachments import describe_size  # it imports this module

        super().__init__(
            f"{name} est trop volumineux : {describe_size(size)} (au plus {describe_size(limit)} par fichier)"
        )
        self.name = name
        self.size = size
        self.limit = limit


class AttachmentTypeNotAllowed(AttachmentProblem):
    """A file whose bytes are not an image JPEG, PNG, HEIC/HEIF or a PDF
    (its name does not count): nothing was encrypted or uploaded."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"{name} : type de fichier non accepté (images JPEG, PNG, HEIC ou documents PDF seulement)"
        )
        self.name = name


class AttachmentsNotSupported(AttachmentProblem):
    """The hub does not take attachments (it does not speak ``blobs``)."""

    def __init__(self) -> None:
        super().__init__("ce hub n'accepte pas les pièces jointes (mettez-le à jour)")


class AttachmentUnavailable(AttachmentProblem):
    """The hub no longer has the attachment for this device: expired,
    recalled, or not sent to it (``unknown_blob``, HTTP 404: one answer)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"pièce jointe indisponible : {name} (expirée, retirée ou inconnue)")
        self.name = name


class AttachmentCorrupt(AttachmentProblem):
    """The bytes fetched for an attachment do not verify (length, hash, a
    chunk that does not decrypt, a missing final tag): it was not saved."""

    def __init__(self, name: str) -> None:
        super().__init__(f"pièce jointe altérée : {name} (non enregistrée)")
        self.name = name
