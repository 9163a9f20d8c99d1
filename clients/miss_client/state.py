"""The device's local state: history, seen message ids, pinned peer keys.

Theory of operation
-------------------
One SQLite file, ``state.db`` in the profile directory (mode 0600, WAL,
``synchronous=FULL``). Every method is one transaction, committed before it
returns, which is what lets the client ack a delivery only after
:meth:`LocalState.record_incoming` returned: a crash after that point loses
nothing, a crash before it gets the delivery again from the hub, and the
``seen`` table drops it if it was already recorded (SPEC §6.4).

Nothing here is readable without the profile's storage key:

* message bodies and kinds are sealed with ``nacl.secret.SecretBox`` under
  the profile's storage key (the sealed map also repeats the message id, and
  opening checks it, so a ciphertext moved onto another row does not open);
* what stays in clear is routing metadata the hub sees anyway (user and
  device ids, times, message ids) and the public directory (names, RPPS
  numbers, public keys).

Tables (``PRAGMA user_version`` = 1):

``messages``  one row per message, keyed by ``(from_user, id)``: message ids
              are chosen by senders, so they are unique per sender only.
``seen``      ``(from_user, id)`` of every message recorded; survives
              deletion of history so that a redelivery is still dropped.
``receipts``  which recipient devices acknowledged our messages.
``peers``     last directory entry of each peer, with device keys: they are
              the pinned keys that :meth:`LocalState.save_peer` compares with.

Not thread-safe: use one LocalState from one thread (the event loop's).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import nacl.exceptions
import nacl.secret

from protocol.frames import DeviceInfo

from .errors import ProfileCorrupt
from .models import HistoryEntry, Message, Peer, PeerChange

__all__ = ["SCHEMA_VERSION", "LocalState"]

SCHEMA_VERSION = 1

_SCHEMA = """
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


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class LocalState:
    """The state DB of one profile. Open with :meth:`open`, close with :meth:`close`
    (or use it as a context manager)."""

    def __init__(self, db: sqlite3.Connection, storage_key: bytes, own_user: str, own_device: str) -> None:
        self._db = db
        self._box = nacl.secret.SecretBox(storage_key)
        self.own_user = own_user
        self.own_device = own_device

    @classmethod
    def open(cls, path: Path, storage_key: bytes, own_user: str, own_device: str) -> LocalState:
        """Open (creating with mode 0600 if needed) and migrate the state DB."""
        path = Path(path)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
            elif version != SCHEMA_VERSION:
                raise ProfileCorrupt(f"state DB schema {version} is not {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            db.close()
            raise ProfileCorrupt(f"state DB unreadable: {exc}") from None
        except BaseException:
            db.close()
            raise
        return cls(db, storage_key, own_user, own_device)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LocalState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- sealing -------------------------------------------------------------

    def _seal(self, message_id: bytes, kind: str, body: str) -> bytes:
        inner = msgpack.packb({"id": message_id, "kind": kind, "body": body}, use_bin_type=True)
        return bytes(self._box.encrypt(inner))

    def _open(self, message_id: bytes, sealed: bytes) -> tuple[str, str]:
        try:
            m = msgpack.unpackb(self._box.decrypt(sealed), raw=False)
            if m["id"] != message_id:
                raise ValueError("sealed body belongs to another message")
            return m["kind"], m["body"]
        except (nacl.exceptions.CryptoError, ValueError, KeyError, TypeError) as exc:
            raise ProfileCorrupt(f"a history row does not open: {type(exc).__name__}") from None

    # --- messages ------------------------------------------------------------

    def is_seen(self, from_user: str, message_id: bytes) -> bool:
        """True if a message with this id from this sender was already recorded."""
        row = self._db.execute("SELECT 1 FROM seen WHERE from_user = ? AND id = ?", (from_user, message_id))
        return row.fetchone() is not None

    def record_incoming(self, message: Message) -> bool:
        """Durably record a received message (or own copy) and mark its id seen.

        Returns False, writing nothing, if ``(from_user, id)`` was seen before.
        The caller acks the delivery only after this returned.
        """
        now = _now_ms()
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO seen (from_user, id, seen_at) VALUES (?, ?, ?)",
                (message.from_user, message.id, now),
            )
            if cur.rowcount == 0:
                return False
            db.execute(
                "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message.from_user,
                    message.id,
                    message.peer,
                    "out" if message.outgoing_copy else "in",
                    message.from_device,
                    message.sent_at,
                    message.received_at or now,
                    "received",
                    self._seal(message.id, message.kind, message.body),
                ),
            )
        return True

    def record_outgoing(self, message_id: bytes, to_user: str, sent_at: int, kind: str, body: str) -> None:
        """Record a message this device is about to send (status ``pending``).

        Recording an id that is already there keeps the first row: a resend
        reuses the id and must not duplicate history.
        """
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, 'out', ?, ?, ?, 'pending', ?)",
                (
                    self.own_user,
                    message_id,
                    to_user,
                    self.own_device,
                    sent_at,
                    sent_at,
                    self._seal(message_id, kind, body),
                ),
            )
            db.execute(
                "INSERT OR IGNORE INTO seen (from_user, id, seen_at) VALUES (?, ?, ?)",
                (self.own_user, message_id, _now_ms()),
            )

    def set_status(self, message_id: bytes, status: str) -> None:
        """Mark an outgoing message ``accepted`` (the hub stored it) or ``failed``."""
        if status not in ("pending", "accepted", "failed"):
            raise ValueError(f"bad status {status!r}")
        with self._tx() as db:
            db.execute(
                "UPDATE messages SET status = ? WHERE from_user = ? AND id = ? AND direction = 'out'",
                (status, self.own_user, message_id),
            )

    def record_receipt(self, message_id: bytes, user: str, device: str, ts: int) -> bool:
        """Record that ``device`` of ``user`` acknowledged our message; False if known."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO receipts (id, device, user, ts) VALUES (?, ?, ?, ?)",
                (message_id, device, user, ts),
            )
            return cur.rowcount > 0

    def history(self, peer: str | None = None, limit: int = 100) -> list[HistoryEntry]:
        """The last ``limit`` messages (with ``peer`` if given), oldest first."""
        where, args = ("WHERE peer = ?", [peer]) if peer is not None else ("", [])
        rows = self._db.execute(
            "SELECT from_user, id, peer, direction, sent_at, received_at, status, sealed FROM messages "
            f"{where} ORDER BY sent_at DESC, id DESC LIMIT ?",
            [*args, limit],
        ).fetchall()
        return [self._entry(row) for row in reversed(rows)]

    def pending_outgoing(self) -> list[HistoryEntry]:
        """Messages this device recorded but never saw accepted (oldest first)."""
        rows = self._db.execute(
            "SELECT from_user, id, peer, direction, sent_at, received_at, status, sealed FROM messages "
            "WHERE from_user = ? AND from_device = ? AND status = 'pending' ORDER BY sent_at, id",
            (self.own_user, self.own_device),
        ).fetchall()
        return [self._entry(row) for row in rows]

    def _entry(self, row: tuple[Any, ...]) -> HistoryEntry:
        from_user, message_id, peer, direction, sent_at, received_at, status, sealed = row
        kind, body = self._open(message_id, sealed)
        delivered: tuple[str, ...] = ()
        if from_user == self.own_user:
            delivered = tuple(
                r[0]
                for r in self._db.execute(
                    "SELECT device FROM receipts WHERE id = ? ORDER BY ts", (message_id,)
                )
            )
        return HistoryEntry(
            id=message_id,
            from_user=from_user,
            peer=peer,
            direction=direction,
            sent_at=sent_at,
            received_at=received_at,
            kind=kind,
            body=body,
            status=status,
            delivered_to=delivered,
        )

    # --- directory -------------------------------------------------------------

    def save_peer(self, peer: Peer) -> PeerChange:
        """Store ``peer`` as the pinned entry and say how its devices changed."""
        devices = msgpack.packb([[d.device, d.sign_pk, d.box_pk] for d in peer.devices], use_bin_type=True)
        with self._tx() as db:
            old = self._get_peer(db, "user = ?", peer.user)
            db.execute(
                "INSERT OR REPLACE INTO peers VALUES (?, ?, ?, ?, ?, ?, ?)",
                (peer.user, peer.name, peer.rpps, peer.profession, peer.organisation, devices, _now_ms()),
            )
        if old is None:
            return PeerChange(peer.user, first_seen=True)
        before = {d.device: d for d in old.devices}
        after = {d.device: d for d in peer.devices}
        return PeerChange(
            peer.user,
            added=tuple(sorted(after.keys() - before.keys())),
            removed=tuple(sorted(before.keys() - after.keys())),
            changed=tuple(sorted(k for k in after.keys() & before.keys() if after[k] != before[k])),
        )

    def get_peer(self, user: str) -> Peer | None:
        """The pinned directory entry of ``user``, if any."""
        return self._get_peer(self._db, "user = ?", user)

    def find_peer(self, user_or_rpps: str) -> Peer | None:
        """A pinned entry by user id or RPPS number (most recently updated wins)."""
        return self._get_peer(self._db, "user = ? OR rpps = ?", user_or_rpps, user_or_rpps)

    @staticmethod
    def _get_peer(db: sqlite3.Connection, where: str, *args: str) -> Peer | None:
        row = db.execute(
            "SELECT user, name, rpps, profession, organisation, devices FROM peers "
            f"WHERE {where} ORDER BY updated_at DESC LIMIT 1",
            args,
        ).fetchone()
        if row is None:
            return None
        devices = tuple(DeviceInfo(d, s, b) for d, s, b in msgpack.unpackb(row[5], raw=False))
        return Peer(row[0], row[1], row[2], row[3], row[4], devices)
