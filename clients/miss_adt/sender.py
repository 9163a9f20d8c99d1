"""What miss-adt needs of the hub, and the connection that provides it.

:class:`NoticeSender` is the three calls of the SDK's
:class:`miss_client.Client` the listener uses (``send_notice``,
``notice_id``, ``recall``): the listener is written against it, so its
parsing, ACK and spool logic run in tests against a scripted sender.
:class:`HubLink` keeps one connection of the service's profile open with
the real client, reconnecting with backoff, and drains what the hub
delivers to the service (read notices) so that its queue does not grow.

:func:`classify` sorts what a send or a recall raised: **transient** (the
hub is unreachable or busy, or this service cannot send right now: keep
the operation in the spool and retry), or a **refusal** for good of this
message (``unknown_rpps``, ``unverified_gp``...: answer ``AE``, or, from
the spool, drop it with an audit event). A problem of the service itself
(its device not attested, revoked, suspended) is transient: every message
would fail alike, so they wait in the spool, bounded, while an
administrator fixes it, rather than be refused one by one.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from miss_client import Client
from miss_client.errors import (
    BadRecipient,
    ClientError,
    ConnectionFailed,
    ConnectionLost,
    KeyChangePending,
    MessageTooLarge,
    RequestTimeout,
    UnknownMessage,
    UnverifiedPeer,
)
from miss_client.profile import Profile

from protocol.errors import (
    FatalError,
    NoDevices,
    NotVerified,
    ProtocolError,
    RecipientNotVerified,
    UnknownUser,
)
from protocol.notices import Notice, NoticeError

__all__ = ["HubLink", "HubUnavailable", "NoticeSender", "Refusal", "StaticLink", "classify"]

log = logging.getLogger("miss_adt")


class NoticeSender(Protocol):
    """The calls of :class:`miss_client.Client` miss-adt uses."""

    async def send_notice(self, notice: Notice, *, key: str, rpps: str | None = None) -> bytes: ...

    def notice_id(self, key: str) -> bytes | None: ...

    async def recall(self, message_id: bytes) -> int: ...


class Link(Protocol):
    """Where the listener finds a sender: ``sender`` is None while the hub
    is unreachable; ``on_up`` is called each time it becomes reachable."""

    @property
    def sender(self) -> NoticeSender | None: ...

    on_up: Callable[[], None]


class HubUnavailable(Exception):
    """No connection to the hub right now."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refusal for good: ``reason`` (ERR-5, stable), ``code`` (HL7 table
    0357, ERR-3), ``detail`` (French, ERR-8), ``location`` (ERR-2)."""

    reason: str
    code: int
    detail: str
    location: str = ""


def classify(exc: BaseException, rpps: str | None = None) -> Refusal | None:
    """None if ``exc`` is transient (spool and retry), else the refusal."""
    who = f"RPPS {rpps}" if rpps else "le destinataire"
    if isinstance(exc, HubUnavailable | ConnectionFailed | ConnectionLost | RequestTimeout | OSError):
        return None
    if isinstance(exc, UnknownUser):
        # The hub does not tell an unverified clinician from an unknown one (SPEC §11.3).
        return Refusal("unknown_rpps", 204, f"médecin traitant inconnu de MiSS ou pas encore vérifié ({who})")
    if isinstance(exc, UnverifiedPeer):
        if exc.own:
            return None  # this service is not attested: fixed by an administrator, not per message
        return Refusal("unverified_gp", 207, f"attestation du médecin traitant invalide ou expirée ({who})")
    if isinstance(exc, RecipientNotVerified):
        return Refusal("unverified_gp", 207, f"médecin traitant non vérifié dans MiSS ({who})")
    if isinstance(exc, KeyChangePending):
        if exc.own:
            return None
        return Refusal("gp_keys_changed", 207, f"appareils du médecin traitant non confirmés ({who})")
    if isinstance(exc, NoDevices):
        return Refusal("gp_no_device", 207, f"le médecin traitant n'a aucun appareil MiSS ({who})")
    if isinstance(exc, BadRecipient):
        return Refusal("bad_rpps", 102, f"RPPS du médecin traitant invalide ({who})")
    if isinstance(exc, NoticeError | MessageTooLarge):
        return Refusal("notice_invalid", 207, "l'avis dépasse les limites de MiSS (gabarits du mapping)")
    if isinstance(exc, NotVerified | FatalError):
        return None  # the service's own account or device: an administrator must act
    if isinstance(exc, ProtocolError):
        if type(exc).retryable:
            return None
        return Refusal(exc.code, 207, f"refusé par le hub MiSS ({exc.code})")
    if isinstance(exc, UnknownMessage):
        return Refusal("unknown_message", 204, "avis inconnu de ce profil")
    if isinstance(exc, ClientError):
        return Refusal("client_error", 207, f"erreur du client MiSS ({type(exc).__name__})")
    return Refusal("internal_error", 207, f"erreur interne de miss-adt ({type(exc).__name__})")


class StaticLink:
    """A link to a sender that is up, or down while ``sender`` is None
    (tests, and a caller that manages its own connection)."""

    def __init__(self, sender: NoticeSender | None) -> None:
        self._sender = sender
        self.on_up: Callable[[], None] = lambda: None

    @property
    def sender(self) -> NoticeSender | None:
        return self._sender

    def set(self, sender: NoticeSender | None) -> None:
        self._sender = sender
        if sender is not None:
            self.on_up()


class _ClientSender:
    """The real client as a :class:`NoticeSender`; an attested key change
    of a GP is accepted (an unattended service has nobody to compare
    safety numbers: the authority's attestation is the check) and logged."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def send_notice(self, notice: Notice, *, key: str, rpps: str | None = None) -> bytes:
        client = self.client
        try:
            return await client.send_notice(notice, key=key, rpps=rpps)
        except KeyChangePending as exc:
            if exc.change.substituted:
                raise
            log.warning("accepting attested device change of %s: %s", exc.peer.user, exc.change.describe())
            await client.accept_keys(exc.peer.user, exc.change)
            return await client.send_notice(notice, key=key, rpps=rpps)

    def notice_id(self, key: str) -> bytes | None:
        return self.client.notice_id(key)

    async def recall(self, message_id: bytes) -> int:
        return await self.client.recall(message_id)


class HubLink:
    """One connection of the service's ``profile``, kept open by :meth:`run`:
    after a drop, reconnects after 0.5 s, doubling to ``reconnect_max``
    seconds, with jitter (half to all of each wait)."""

    def __init__(
        self, profile: Profile, *, request_timeout: float = 10.0, reconnect_max: float = 30.0
    ) -> None:
        self.profile = profile
        self.request_timeout = request_timeout
        self.reconnect_max = reconnect_max
        self.on_up: Callable[[], None] = lambda: None
        self._sender: _ClientSender | None = None
        #: Set while connected (tests and ``miss-adt`` wait on it).
        self.connected = asyncio.Event()

    @property
    def sender(self) -> NoticeSender | None:
        return self._sender

    async def run(self) -> None:
        """Connect, drain, reconnect, until cancelled."""
        delay = 0.5
        while True:
            try:
                async with Client.connect(self.profile, request_timeout=self.request_timeout) as client:
                    self._sender = _ClientSender(client)
                    self.connected.set()
                    delay = 0.5
                    log.info("connected to the hub as %s/%s", client.user_id, client.device_id)
                    self.on_up()
                    async for _ in client.events():
                        pass  # read notices and the like: stored and acked by the SDK
            except (ClientError, ProtocolError, OSError) as exc:
                level = logging.ERROR if isinstance(exc, FatalError) else logging.WARNING
                log.log(level, "hub connection: %s (%s)", type(exc).__name__, exc)
            finally:
                self._sender = None
                self.connected.clear()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.reconnect_max)
