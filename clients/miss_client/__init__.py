"""MiSS client SDK and terminal client.

Modules, from the bottom up:

* :mod:`.errors`: the SDK's own exceptions (hub errors are :mod:`protocol.errors`).
* :mod:`.models`: Peer, Message, Delivered, PresenceInfo, PresenceChanged, HistoryEntry.
* :mod:`.profile`: the passphrase-sealed profile directory (device keys, ids).
* :mod:`.state`: the local SQLite state (history, seen ids, pinned peer keys).
* :mod:`.outbox` / :mod:`.inbox`: sealing ``send`` frames; opening and
  checking ``deliver`` frames, store-then-ack.
* :mod:`.connection`: WebSocket, challenge, auth/enroll; :func:`enroll`.
* :mod:`.client`: :class:`Client`, one authenticated connection.
* :mod:`.chat`: the ``miss-chat`` command.

Quick start::

    profile = await enroll("wss://hub/", "ABCD-EFGH-JKMN-PQRS", Path("~/.miss"), passphrase)
    async with Client.connect(profile) as client:
        await client.send("10000000001", "Bonjour, une question sur M. X ?")
        await client.watch(["10000000001"])        # presence pushes, SPEC §6.7
        async for event in client.events():        # Message, Delivered, PresenceChanged
            ...
"""

from .client import Client
from .connection import enroll
from .models import (
    STATUSES,
    Delivered,
    Event,
    HistoryEntry,
    Message,
    Peer,
    PeerChange,
    PresenceChanged,
    PresenceInfo,
    format_id,
    parse_id,
)
from .outbox import RetryPolicy
from .profile import KDF_INTERACTIVE, KDF_MODERATE, KdfParams, Profile, load_profile

__all__ = [
    "KDF_INTERACTIVE",
    "KDF_MODERATE",
    "STATUSES",
    "Client",
    "Delivered",
    "Event",
    "HistoryEntry",
    "KdfParams",
    "Message",
    "Peer",
    "PeerChange",
    "PresenceChanged",
    "PresenceInfo",
    "Profile",
    "RetryPolicy",
    "enroll",
    "format_id",
    "load_profile",
    "parse_id",
]
