"""MiSS client SDK and terminal client.

Modules, from the bottom up:

* :mod:`.errors`: the SDK's own exceptions (hub errors are :mod:`protocol.errors`).
* :mod:`.models`: Peer, Message, Delivered, HistoryEntry.
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
        async for event in client.events():
            ...
"""

from .client import Client
from .connection import enroll
from .models import Delivered, Event, HistoryEntry, Message, Peer, PeerChange, format_id, parse_id
from .outbox import RetryPolicy
from .profile import KDF_INTERACTIVE, KDF_MODERATE, KdfParams, Profile, load_profile

__all__ = [
    "KDF_INTERACTIVE",
    "KDF_MODERATE",
    "Client",
    "Delivered",
    "Event",
    "HistoryEntry",
    "KdfParams",
    "Message",
    "Peer",
    "PeerChange",
    "Profile",
    "RetryPolicy",
    "enroll",
    "format_id",
    "load_profile",
    "parse_id",
]
