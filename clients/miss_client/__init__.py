"""MiSS client SDK and terminal client.

Modules, from the bottom up:

* :mod:`.errors`: the SDK's own exceptions (hub errors are :mod:`protocol.errors`).
* :mod:`.models`: Peer, PeerChange, DirectoryEntry, OwnDevice, Message, Delivered,
  PresenceInfo, PresenceChanged, HistoryEntry.
* :mod:`.profile`: the passphrase-sealed profile directory (device keys, ids,
  the verification authority's public key).
* :mod:`.state`: the local SQLite state (history, seen ids, pinned peer keys,
  pending key changes, peers verified in person); :mod:`.state_schema` its
  tables and migrations.
* :mod:`.trust`: checking a lookup's attestation against the authority
  (SPEC §11.2), without I/O.
* :mod:`.retry`: :class:`RetryPolicy`, when a request is resent.
* :mod:`.connection`: WebSocket, challenge, auth/enroll; :func:`enroll`.
* :mod:`.requests`: the reader of one connection, matching answers to requests.
* :mod:`.peers`: verified clinicians: lookups, pins, key changes, safety numbers.
* :mod:`.presence`: our status and watched clinicians' presence.
* :mod:`.teams`: care teams (SPEC §13): verified chains of signed
  membership records, changes, team targets, tampered/diverged detection.
* :mod:`.outbox` / :mod:`.inbox`: sealing and sending ``send`` frames until
  accepted (team messages sealed once, keys wrapped per device); opening and
  checking ``deliver`` frames, notices (read, recall), store-then-ack, acks
  in batches.
* :mod:`.notice_keys`: notices (SPEC §17.3) sent idempotently by a key.
* :mod:`.client`: :class:`Client`, one authenticated connection, the facade
  over the modules above.
* :mod:`.reconnect`: profile locks, backoff, and reconnecting a long-lived
  connection.

The ``miss-chat`` terminal client, on top of the SDK:

* :mod:`.render`: messages, receipts, presence and history as terminal lines.
* :mod:`.cli_common`: what its commands share: passphrase prompts and
  unlocking, connecting, warnings, :class:`~.cli_common.EventPrinter`,
  error descriptions.
* :mod:`.chat_session`: the interactive ``chat`` (prompt or piped stdin,
  reconnecting).
* :mod:`.chat_commands`: the one-shot commands; :mod:`.chat_teams` those of
  revision 3 (team, recall, read, read-receipts).
* :mod:`.chat`: the parser and ``main`` (the ``miss-chat`` entry point).

Quick start::

    profile = await enroll("wss://hub/", "ABCD-EFGH-JKMN-PQRS", Path("~/.miss"), passphrase,
                           authority="<the administrator's authority key, base64>")
    async with Client.connect(profile) as client:
        client.on_key_change = warn_user                  # (peer, PeerChange)
        await client.send("10000000001", "Bonjour, une question sur M. X ?")
        # UnverifiedPeer: not a verified clinician; KeyChangePending: their
        # keys changed: compare client.safety_number(...), then client.accept_keys(...)
        [entry] = await client.search("Durand")          # verified clinicians only
        await client.watch(["10000000001"])        # presence pushes, SPEC §6.7
        async for event in client.events():        # Message, Delivered, PresenceChanged, ReadBy, ...
            ...
        team = await client.create_team("Cardio garde", lifespan_ms=24 * 3_600_000)   # SPEC §13
        await client.add_member(team, "10000000001")
        await client.send(team, "Lit 12 : avis ?")   # TeamTampered / TeamDiverged: the hub lies
        await client.mark_read("10000000001")        # read notices (client.set_read_receipts(False))
        await client.recall(message_id)              # "message retiré" wherever it arrived
        # An integration server (SPEC §17.3): a card, idempotent by the feed's key.
        await client.send_notice(Notice("Admission de M. X", "admission", at_ms, (("IPP", "123"),)),
                                 key="HL7-0001", rpps="10000000001")
"""

from protocol.notices import Notice

from .client import Client
from .connection import enroll
from .errors import (
    AuthorityNotSet,
    ClientError,
    KeyChangePending,
    RepliesNotAccepted,
    TeamDiverged,
    TeamProblem,
    TeamTampered,
    UnknownMessage,
    UnverifiedPeer,
)
from .models import (
    STATUSES,
    AuthorityRotated,
    Delivered,
    DirectoryEntry,
    Event,
    HistoryEntry,
    Message,
    OwnDevice,
    Peer,
    PeerChange,
    PresenceChanged,
    PresenceInfo,
    ReadBy,
    Recalled,
    RotationRefused,
    TeamEvent,
    TeamProblemFound,
    TeamView,
    format_id,
    is_team_id,
    parse_id,
)
from .profile import KDF_INTERACTIVE, KDF_MODERATE, KdfParams, Profile, load_profile, set_authority
from .retry import RetryPolicy

__all__ = [
    "KDF_INTERACTIVE",
    "KDF_MODERATE",
    "STATUSES",
    "AuthorityNotSet",
    "AuthorityRotated",
    "Client",
    "ClientError",
    "Delivered",
    "DirectoryEntry",
    "Event",
    "HistoryEntry",
    "KdfParams",
    "KeyChangePending",
    "Message",
    "Notice",
    "OwnDevice",
    "Peer",
    "PeerChange",
    "PresenceChanged",
    "PresenceInfo",
    "Profile",
    "ReadBy",
    "Recalled",
    "RepliesNotAccepted",
    "RetryPolicy",
    "RotationRefused",
    "TeamDiverged",
    "TeamEvent",
    "TeamProblem",
    "TeamProblemFound",
    "TeamTampered",
    "TeamView",
    "UnknownMessage",
    "UnverifiedPeer",
    "enroll",
    "format_id",
    "is_team_id",
    "load_profile",
    "parse_id",
    "set_authority",
]
