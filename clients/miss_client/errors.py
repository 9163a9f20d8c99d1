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
    │   └── ProfileCorrupt      files present but unreadable
    ├── ConnectionFailed        could not open a MiSS connection (refused, TLS, HTTP status, no miss.v1)
    ├── ConnectionLost          the connection ended without a protocol error (network, hub shutdown)
    ├── RequestTimeout          the hub did not answer a request in time
    ├── BadRecipient            a recipient string that is neither an RPPS number nor a user id
    └── MessageTooLarge         the ``send`` frame would exceed MAX_FRAME_BYTES

Messages are meant to be shown to a user as is: they never contain key
material or message text.
"""

from __future__ import annotations

__all__ = [
    "BadRecipient",
    "ClientError",
    "ConnectionFailed",
    "ConnectionLost",
    "MessageTooLarge",
    "ProfileCorrupt",
    "ProfileError",
    "ProfileExists",
    "ProfileNotFound",
    "RequestTimeout",
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


class ConnectionFailed(ClientError):
    """The WebSocket connection could not be opened or negotiated."""


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
