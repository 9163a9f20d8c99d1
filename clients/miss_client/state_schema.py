"""The state DB's format: tables, migrations, and how rows encode devices and
pending key changes.

Tables (``PRAGMA user_version`` = 7):

``messages``  one row per message, keyed by ``(from_user, id)``: message ids
              are chosen by senders, so they are unique per sender only.
``seen``      ``(from_user, id)`` of every message recorded; survives
              deletion of history so that a redelivery is still dropped.
``receipts``  which recipient devices acknowledged our messages, or refused
              them (``reason`` set: SPEC §6.5).
``peers``     each verified peer (our own user included): the identity from
              their last attestation (``attested_until`` its end), and the
              **pins** of SPEC §11.2 step 3: ``devices``, the attested device
              keys the user accepted (the first seen: trust on first use),
              and ``substitutes``, devices listed by the hub with keys the
              authority never signed that the user acknowledged (never
              encrypted to; acknowledging only stops the warning).
              ``pending`` holds the key change awaiting acceptance (the view
              to pin on acceptance and what changed), NULL if none;
              ``verified_at`` when the user marked the peer verified in
              person (NULL if not, or since a key change);
              ``attested_from`` the start (``not_before``) of the newest
              attestation accepted for them: an older one is refused as
              stale (SPEC §11.2, step 1).

``team_records`` the verified chain of each team (SPEC §13.2): signed
              records by ``(team, seq)``, each with its hash; only records
              that verified from the creation on are written.
``teams``     each team's state as its chain says (name, organisation,
              default lifespan, members, admins, head, closed) and the
              ``problem`` this device found (``tampered``, ``diverged``),
              NULL if none.
``recalled``  ``(from_user, id)`` of messages recalled by their sender
              before they arrived here: dropped if they ever do (§13.5).
``reads``     who read our messages: ``(id, user)`` from their read notices.
``settings``  this device's settings (``read_receipts``, ...), msgpack values.

``messages`` gained (version 4) ``expires_at`` (ms, NULL: never),
``gone`` (NULL, ``recalled`` or ``expired``: the plaintext was deleted,
``sealed`` then holds an empty body), ``read_at`` (when this user read an
incoming message, here or on another device) and ``team`` (the team of a
team message; ``peer`` is then the team id too).

Version 5 (SPEC §14, :mod:`miss_client.oncall_state`) added ``oncall``
(per role or urgent message, by ``(from_user, id)``: the role it was sent
to, whether it is urgent, the escalation step of a backup's copy or the
last step released of ours, and its state: ``open``, ``escalated``,
``acknowledged`` by whom and when, ``unacknowledged``), ``oncall_log``
(each status recorded, once) and ``roles`` (roles this device saw: name,
organisation, holders, whether this user holds it). Metadata only, as the
hub sees it: no text.

Version 6 (SPEC §16, :mod:`miss_client.upload_state`) added ``uploads``:
one row per attachment of an outgoing message still being uploaded, by
``(id, idx)``: the spool file holding its ciphertext, the hub's ``blob``
id once ``blob_begin`` gave one, ``done`` once ``blob_end`` was answered,
and ``sealed``, its key, hash, size, type, name and thumbnail sealed under
the storage key. The descriptors of a message (received, or ours once
uploaded) live in the ``messages`` row's sealed map (``atts``), with its
text, and leave with it when it is recalled or expires.

Version 7 (SPEC §17.3, :mod:`miss_client.notice_keys`) added
``notice_keys``: the caller-given idempotency key of each notice this
profile sent (``key``), the message id chosen for it (``id``) and when it
was recorded (``at``, ms); written in the transaction that records the
message, kept 365 days. A notice itself lives in the ``messages`` row's
sealed map (``notice``, its wire map), with its text.

The database runs with ``secure_delete=ON``: deleted plaintexts are
overwritten in the file, not merely unlinked (SPEC §13.6).

Schema history: version 1 had ``peers`` without the last four columns, its
``devices`` being the keys of the last lookup (before attestations
existed). Opening such a DB adds the columns; those keys stay pinned, so
the first verified attestation is compared with them rather than trusted
blindly. Version 3 added ``receipts.reason`` and ``peers.attested_from``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import msgpack

from protocol.attachments import Attachment
from protocol.frames import DeviceInfo

from .errors import ProfileCorrupt
from .models import PeerChange

__all__ = [
    "PEER_COLUMNS",
    "SCHEMA_VERSION",
    "StateDatabase",
    "attachment_from_row",
    "attachment_row",
    "device_rows",
    "open_db",
    "pack_devices",
    "pack_pending",
    "pending_view",
    "unpack_devices",
    "unpack_pending",
]


class StateDatabase:
    """What the parts of :class:`~miss_client.state.LocalState` (its
    directory, its teams) use of it: the connection, and transactions on it."""

    _db: sqlite3.Connection

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # LocalState's


SCHEMA_VERSION = 7

_SCHEMA_V1 = """
CREATE TABLE messages (
    from_user   TEXT    NOT NULL,
    id          BLOB    NOT NULL,
    peer        TEXT    NOT NULL,
    direction   TEXT    NOT NULL CHECK (direction IN ('in', 'out')),
    from_device TEXT    NOT NULL,
    sent_at     INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    status      TEXT    NOT NULL,
    sealed      BLOB    NOT NULL,
    PRIMARY KEY (from_user, id)
) WITHOUT ROWID;
CREATE INDEX messages_by_peer ON messages (peer, sent_at);
CREATE TABLE seen (
    from_user TEXT    NOT NULL,
    id        BLOB    NOT NULL,
    seen_at   INTEGER NOT NULL,
    PRIMARY KEY (from_user, id)
) WITHOUT ROWID;
CREATE TABLE receipts (
    id     BLOB    NOT NULL,
    device TEXT    NOT NULL,
    user   TEXT    NOT NULL,
    ts     INTEGER NOT NULL,
    PRIMARY KEY (id, device)
) WITHOUT ROWID;
CREATE TABLE peers (
    user         TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    rpps         TEXT NOT NULL,
    profession   TEXT NOT NULL,
    organisation TEXT NOT NULL,
    devices      BLOB NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX peers_by_rpps ON peers (rpps);
"""

#: Each entry migrates from the version before it (index 0: from 1 to 2).
_MIGRATIONS = (
    """
ALTER TABLE peers ADD COLUMN substitutes BLOB NOT NULL DEFAULT x'90';
ALTER TABLE peers ADD COLUMN pending BLOB;
ALTER TABLE peers ADD COLUMN verified_at INTEGER;
ALTER TABLE peers ADD COLUMN attested_until INTEGER NOT NULL DEFAULT 0;
""",
    """
ALTER TABLE receipts ADD COLUMN reason TEXT;
ALTER TABLE peers ADD COLUMN attested_from INTEGER NOT NULL DEFAULT 0;
""",
    """
ALTER TABLE messages ADD COLUMN expires_at INTEGER;
ALTER TABLE messages ADD COLUMN gone TEXT;
ALTER TABLE messages ADD COLUMN read_at INTEGER;
ALTER TABLE messages ADD COLUMN team TEXT;
CREATE INDEX messages_by_expiry ON messages (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE team_records (
    team TEXT    NOT NULL,
    seq  INTEGER NOT NULL,
    rec  BLOB    NOT NULL,
    sig  BLOB    NOT NULL,
    hash BLOB    NOT NULL,
    PRIMARY KEY (team, seq)
) WITHOUT ROWID;
CREATE TABLE teams (
    team       TEXT PRIMARY KEY,
    name       TEXT    NOT NULL,
    org        TEXT,
    lifespan   INTEGER,
    members    BLOB    NOT NULL,
    admins     BLOB    NOT NULL,
    seq        INTEGER NOT NULL,
    head       BLOB    NOT NULL,
    closed     INTEGER NOT NULL DEFAULT 0,
    problem    TEXT,
    updated_at INTEGER NOT NULL
);
CREATE TABLE recalled (
    from_user TEXT    NOT NULL,
    id        BLOB    NOT NULL,
    at        INTEGER NOT NULL,
    PRIMARY KEY (from_user, id)
) WITHOUT ROWID;
CREATE TABLE reads (
    id   BLOB    NOT NULL,
    user TEXT    NOT NULL,
    ts   INTEGER NOT NULL,
    PRIMARY KEY (id, user)
) WITHOUT ROWID;
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
""",
    """
CREATE TABLE oncall (
    from_user   TEXT    NOT NULL,
    id          BLOB    NOT NULL,
    direction   TEXT    NOT NULL CHECK (direction IN ('in', 'out')),
    role        TEXT,
    urgent      INTEGER NOT NULL,
    step        INTEGER,
    target      TEXT,
    state       TEXT    NOT NULL,
    ack_user    TEXT,
    ack_device  TEXT,
    ack_at      INTEGER,
    reminders   INTEGER NOT NULL DEFAULT 0,
    interval_ms INTEGER,
    final_ms    INTEGER,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (from_user, id)
) WITHOUT ROWID;
CREATE INDEX oncall_open ON oncall (state) WHERE urgent = 1;
CREATE TABLE oncall_log (
    from_user TEXT    NOT NULL,
    id        BLOB    NOT NULL,
    state     TEXT    NOT NULL,
    step      INTEGER NOT NULL,
    target    TEXT,
    user      TEXT,
    device    TEXT,
    ts        INTEGER NOT NULL,
    PRIMARY KEY (from_user, id, state, step)
) WITHOUT ROWID;
CREATE TABLE roles (
    role       TEXT PRIMARY KEY,
    name       TEXT    NOT NULL,
    org        TEXT    NOT NULL,
    reserved   INTEGER NOT NULL,
    holders    BLOB    NOT NULL,
    updated_at INTEGER NOT NULL
);
""",
    """
CREATE TABLE uploads (
    id     BLOB    NOT NULL,
    idx    INTEGER NOT NULL,
    spool  TEXT    NOT NULL,
    blob   TEXT,
    done   INTEGER NOT NULL DEFAULT 0,
    sealed BLOB    NOT NULL,
    PRIMARY KEY (id, idx)
) WITHOUT ROWID;
""",
    """
CREATE TABLE notice_keys (
    key TEXT    PRIMARY KEY,
    id  BLOB    NOT NULL,
    at  INTEGER NOT NULL
);
CREATE INDEX notice_keys_by_age ON notice_keys (at);
""",
)

PEER_COLUMNS = (
    "user, name, rpps, profession, organisation, devices, substitutes, pending, verified_at, attested_until"
)


def attachment_row(att: Attachment) -> dict[str, Any]:
    """A descriptor as the sealed map of a ``messages`` row keeps it: its
    wire map (SPEC §16.2)."""
    return att.to_map()


def attachment_from_row(row: dict[str, Any]) -> Attachment:
    """Inverse of :func:`attachment_row`; AttachmentError (a ValueError) if
    it does not check."""
    return Attachment.from_map(row)


def device_rows(devices: Iterable[DeviceInfo]) -> list[list[Any]]:
    return [[d.device, d.sign_pk, d.box_pk] for d in sorted(devices, key=lambda d: d.device)]


def pack_devices(devices: Iterable[DeviceInfo]) -> bytes:
    packed: bytes = msgpack.packb(device_rows(devices), use_bin_type=True)
    return packed


def unpack_devices(blob: bytes) -> tuple[DeviceInfo, ...]:
    return tuple(DeviceInfo(d, s, b) for d, s, b in msgpack.unpackb(blob, raw=False))


def pack_pending(
    attested: Iterable[DeviceInfo], substitutes: Iterable[DeviceInfo], change: PeerChange
) -> bytes:
    """``peers.pending``: the view to pin on acceptance (the attested devices
    and the substitutes listed) and what changed."""
    packed: bytes = msgpack.packb(
        {
            "a": device_rows(attested),
            "s": device_rows(substitutes),
            "added": list(change.added),
            "changed": list(change.changed),
            "substituted": list(change.substituted),
        },
        use_bin_type=True,
    )
    return packed


def pending_view(blob: bytes) -> tuple[bytes, bytes]:
    """The ``devices`` and ``substitutes`` columns to pin from a ``pending`` blob."""
    view = msgpack.unpackb(blob, raw=False)
    devices: bytes = msgpack.packb(view["a"], use_bin_type=True)
    substitutes: bytes = msgpack.packb(view["s"], use_bin_type=True)
    return devices, substitutes


def unpack_pending(user: str, blob: bytes) -> PeerChange:
    """The change a ``pending`` blob of ``user`` records."""
    m = msgpack.unpackb(blob, raw=False)
    return PeerChange(
        user,
        added=tuple(m["added"]),
        changed=tuple(m["changed"]),
        substituted=tuple(m["substituted"]),
    )


def open_db(path: Path) -> sqlite3.Connection:
    """Open (creating with mode 0600 if needed) and migrate the state DB at
    ``path``, in autocommit mode, WAL, ``synchronous=FULL``. Raises
    ProfileCorrupt if it is unreadable or newer than this client."""
    path = Path(path)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    db = sqlite3.connect(path, isolation_level=None)
    try:
        # Deleted plaintexts (recalled, expired) must leave the file, not
        # linger in free pages (SPEC §13.6).
        db.execute("PRAGMA secure_delete=ON")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ProfileCorrupt(
                f"state DB schema {version} is newer than this client's ({SCHEMA_VERSION}): upgrade it"
            )
        if version < SCHEMA_VERSION:
            # One transaction from whatever version to the current one: a
            # crash leaves the old schema, never half of the new one.
            steps = [] if version else [_SCHEMA_V1]
            steps += _MIGRATIONS[max(version, 1) - 1 :]
            db.executescript(f"BEGIN; {''.join(steps)} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
    except sqlite3.DatabaseError as exc:
        db.close()
        raise ProfileCorrupt(f"state DB unreadable: {exc}") from None
    except BaseException:
        db.close()
        raise
    return db
