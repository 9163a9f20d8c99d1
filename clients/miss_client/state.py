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

The tables and their history: :mod:`miss_client.state_schema`. ``peers``
holds the **pins** of SPEC §11.2 step 3 for each verified peer (our own
user included).

Pinning (:meth:`LocalState.observe_peer`, on every verified lookup): an
attested device that is not pinned, or whose attested keys differ from the
pinned ones, or a substitute not acknowledged, is a key change: it is
recorded as pending (and clears ``verified_at``) until
:meth:`LocalState.accept_pending` pins that view. Pinned devices that the
attestation no longer names are dropped at once. If the attestation goes
back to the pinned keys, the pending change is dropped.

Revision 3 (SPEC §13): team chains (:meth:`LocalState.save_team`, only
verified records), recalls and lifespans. A recalled or expired message
keeps its row (the conversation shows "message retiré" / "message expiré")
but its text is replaced by an empty one, and the database runs with
``secure_delete`` and checkpoints its WAL after such a deletion, so the old
bytes leave the file.

Revision 6 (SPEC §16): a message's attachment descriptors (keys included)
are sealed with its text (:meth:`LocalState.set_attachments`), so a recall
or an expiry deletes them too; attachments still uploading are
:mod:`miss_client.upload_state`'s. Expiry uses :attr:`LocalState.clock` (tests inject
one); :meth:`LocalState.sweep_expired` runs on open, before every history
read, and periodically from the client.

Revision 7 (SPEC §17.3): a notice is sealed with its text too (the
``notice`` key of the sealed map, its wire map), so the card survives a
restart and leaves with the text; the idempotency keys of the notices sent
are :mod:`miss_client.notice_keys`'s.

Not thread-safe: use one LocalState from one thread (the event loop's).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import nacl.exceptions
import nacl.secret

from protocol.attachments import Attachment
from protocol.notices import Notice

from .errors import ProfileCorrupt
from .models import HistoryEntry, Message, now_ms
from .state_peers import Observation, PeerDirectory
from .state_schema import (
    SCHEMA_VERSION,
    attachment_from_row,
    attachment_row,
    open_db,
)
from .state_teams import TeamRecords

__all__ = ["SCHEMA_VERSION", "LocalState", "Observation"]

_MESSAGE_COLUMNS = (
    "from_user, id, peer, direction, from_device, sent_at, received_at, status, sealed, "
    "expires_at, gone, read_at, team"
)
_MESSAGE_PLACES = ", ".join("?" * 13)
_ENTRY_COLUMNS = (
    "from_user, id, peer, direction, sent_at, received_at, status, sealed, expires_at, gone, read_at, team"
)


class LocalState(PeerDirectory, TeamRecords):
    """The state DB of one profile. Open with :meth:`open`, close with :meth:`close`
    (or use it as a context manager)."""

    def __init__(self, db: sqlite3.Connection, storage_key: bytes, own_user: str, own_device: str) -> None:
        self._db = db
        self._box = nacl.secret.SecretBox(storage_key)
        self.own_user = own_user
        self.own_device = own_device
        #: ms since the epoch; what lifespans are measured against.
        self.clock: Callable[[], int] = now_ms

    @classmethod
    def open(cls, path: Path, storage_key: bytes, own_user: str, own_device: str) -> LocalState:
        """Open (creating with mode 0600 if needed) and migrate the state DB;
        deletes the texts whose lifespan is over."""
        state = cls(open_db(path), storage_key, own_user, own_device)
        state.sweep_expired()
        return state

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

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on this DB, for the modules that keep their
        own tables in it (:mod:`miss_client.oncall_state`)."""
        with self._tx() as db:
            yield db

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, for reads by those modules."""
        return self._db

    # --- sealing -------------------------------------------------------------

    def _seal(
        self,
        message_id: bytes,
        kind: str,
        body: str,
        atts: Sequence[Attachment] = (),
        notice: Notice | None = None,
    ) -> bytes:
        inner: dict[str, Any] = {"id": message_id, "kind": kind, "body": body}
        if atts:
            inner["atts"] = [attachment_row(a) for a in atts]
        if notice is not None:
            inner["notice"] = notice.to_wire()
        return bytes(self._box.encrypt(msgpack.packb(inner, use_bin_type=True)))

    def _open_all(
        self, message_id: bytes, sealed: bytes
    ) -> tuple[str, str, tuple[Attachment, ...], Notice | None]:
        try:
            m = msgpack.unpackb(self._box.decrypt(sealed), raw=False)
            if m["id"] != message_id:
                raise ValueError("sealed body belongs to another message")
            atts = tuple(attachment_from_row(row) for row in m.get("atts", ()))
            notice = Notice.from_wire(m["notice"]) if "notice" in m else None
            return m["kind"], m["body"], atts, notice
        except (nacl.exceptions.CryptoError, ValueError, KeyError, TypeError) as exc:
            raise ProfileCorrupt(f"a history row does not open: {type(exc).__name__}") from None

    def _open(self, message_id: bytes, sealed: bytes) -> tuple[str, str]:
        kind, body, _, _ = self._open_all(message_id, sealed)
        return kind, body

    def seal_data(self, message_id: bytes, data: dict[str, Any]) -> bytes:
        """``data`` (msgpack-able) sealed under the storage key, bound to
        ``message_id``: for the modules that keep secrets in their own
        tables (:mod:`miss_client.upload_state`)."""
        return bytes(self._box.encrypt(msgpack.packb({"id": message_id, "data": data}, use_bin_type=True)))

    def open_data(self, message_id: bytes, sealed: bytes) -> dict[str, Any]:
        """Inverse of :meth:`seal_data`; raises ProfileCorrupt."""
        try:
            m = msgpack.unpackb(self._box.decrypt(sealed), raw=False)
            if m["id"] != message_id or not isinstance(m["data"], dict):
                raise ValueError("sealed data belongs to another message")
            data: dict[str, Any] = m["data"]
            return data
        except (nacl.exceptions.CryptoError, ValueError, KeyError, TypeError) as exc:
            raise ProfileCorrupt(f"a sealed row does not open: {type(exc).__name__}") from None

    # --- messages ------------------------------------------------------------

    def is_seen(self, from_user: str, message_id: bytes) -> bool:
        """True if a message with this id from this sender was already recorded."""
        row = self._db.execute("SELECT 1 FROM seen WHERE from_user = ? AND id = ?", (from_user, message_id))
        return row.fetchone() is not None

    def mark_seen(self, from_user: str, message_id: bytes) -> bool:
        """Mark an id seen without a history row (notices, SPEC §13.5);
        False if it was seen before."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO seen (from_user, id, seen_at) VALUES (?, ?, ?)",
                (from_user, message_id, now_ms()),
            )
            return cur.rowcount > 0

    def record_incoming(self, message: Message) -> bool:
        """Durably record a received message (or own copy) and mark its id seen.

        Returns False, writing nothing, if ``(from_user, id)`` was seen before.
        The caller acks the delivery only after this returned.
        """
        now = now_ms()
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO seen (from_user, id, seen_at) VALUES (?, ?, ?)",
                (message.from_user, message.id, now),
            )
            if cur.rowcount == 0:
                return False
            recalled = db.execute(
                "SELECT 1 FROM recalled WHERE from_user = ? AND id = ?", (message.from_user, message.id)
            ).fetchone()
            if recalled is not None:
                return False  # its sender recalled it before it came: dropped (SPEC §13.5)
            expired = message.expires_at is not None and message.expires_at <= self.clock()
            db.execute(
                f"INSERT OR IGNORE INTO messages ({_MESSAGE_COLUMNS}) VALUES ({_MESSAGE_PLACES})",
                (
                    message.from_user,
                    message.id,
                    message.peer,
                    "out" if message.outgoing_copy else "in",
                    message.from_device,
                    message.sent_at,
                    message.received_at or now,
                    "received",
                    self._seal(
                        message.id,
                        message.kind,
                        "" if expired else message.body,
                        () if expired else message.attachments,
                        None if expired else message.notice,
                    ),
                    message.expires_at,
                    "expired" if expired else None,
                    None,
                    message.team,
                ),
            )
        return True

    def record_outgoing(
        self,
        message_id: bytes,
        to_user: str,
        sent_at: int,
        kind: str,
        body: str,
        *,
        expires_at: int | None = None,
        team: str | None = None,
        attachments: Sequence[Attachment] = (),
        notice: Notice | None = None,
        also: Callable[[sqlite3.Connection], object] | None = None,
    ) -> None:
        """Record a message this device is about to send (status ``pending``);
        ``to_user`` is the team id for a team message (``team`` too);
        ``attachments``, its descriptors, if known already; ``notice``, the
        notice it carries (SPEC §17.3). ``also`` runs in the same
        transaction (the uploads of its attachments:
        :mod:`miss_client.upload_state`; a notice's idempotency key:
        :mod:`miss_client.notice_keys`).

        Recording an id that is already there keeps the first row: a resend
        reuses the id and must not duplicate history.
        """
        with self._tx() as db:
            db.execute(
                f"INSERT OR IGNORE INTO messages ({_MESSAGE_COLUMNS}) VALUES ({_MESSAGE_PLACES})",
                (
                    self.own_user,
                    message_id,
                    to_user,
                    "out",
                    self.own_device,
                    sent_at,
                    sent_at,
                    "pending",
                    self._seal(message_id, kind, body, attachments, notice),
                    expires_at,
                    None,
                    None,
                    team,
                ),
            )
            db.execute(
                "INSERT OR IGNORE INTO seen (from_user, id, seen_at) VALUES (?, ?, ?)",
                (self.own_user, message_id, now_ms()),
            )
            if also is not None:
                also(db)

    def set_attachments(
        self,
        message_id: bytes,
        attachments: Sequence[Attachment],
        also: Callable[[sqlite3.Connection], object] | None = None,
    ) -> None:
        """Give our outgoing message ``message_id`` its descriptors (once
        its files are uploaded); ``also`` runs in the same transaction.
        Nothing changes for a message whose text is gone (recalled)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT sealed FROM messages WHERE from_user = ? AND id = ? AND gone IS NULL",
                (self.own_user, message_id),
            ).fetchone()
            if row is not None:
                kind, body, _, notice = self._open_all(message_id, row[0])
                db.execute(
                    "UPDATE messages SET sealed = ? WHERE from_user = ? AND id = ?",
                    (self._seal(message_id, kind, body, attachments, notice), self.own_user, message_id),
                )
            if also is not None:
                also(db)

    def set_status(self, message_id: bytes, status: str) -> None:
        """Mark an outgoing message ``accepted`` (the hub stored it) or ``failed``."""
        if status not in ("pending", "accepted", "failed"):
            raise ValueError(f"bad status {status!r}")
        with self._tx() as db:
            db.execute(
                "UPDATE messages SET status = ? WHERE from_user = ? AND id = ? AND direction = 'out'",
                (status, self.own_user, message_id),
            )

    def record_receipt(
        self, message_id: bytes, user: str, device: str, ts: int, reason: str | None = None
    ) -> bool:
        """Record that ``device`` of ``user`` kept our message (``reason``
        None) or refused it (``reason`` says why); False if that device's
        answer was known already."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO receipts (id, device, user, ts, reason) VALUES (?, ?, ?, ?, ?)",
                (message_id, device, user, ts, reason),
            )
            return cur.rowcount > 0

    def history(self, peer: str | None = None, limit: int = 100) -> list[HistoryEntry]:
        """The last ``limit`` messages (with ``peer``, a user or team id, if
        given), oldest first; texts whose lifespan is over are deleted first."""
        self.sweep_expired()
        where, args = ("WHERE peer = ?", [peer]) if peer is not None else ("", [])
        rows = self._db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM messages {where} ORDER BY sent_at DESC, id DESC LIMIT ?",
            [*args, limit],
        ).fetchall()
        return [self._entry(row) for row in reversed(rows)]

    def pending_outgoing(self) -> list[HistoryEntry]:
        """Messages this device recorded but never saw accepted (oldest first)."""
        rows = self._db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM messages "
            "WHERE from_user = ? AND from_device = ? AND status = 'pending' AND gone IS NULL "
            "ORDER BY sent_at, id",
            (self.own_user, self.own_device),
        ).fetchall()
        return [self._entry(row) for row in rows]

    def get_message(self, from_user: str, message_id: bytes) -> HistoryEntry | None:
        """One message of the history, if this device has it."""
        row = self._db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM messages WHERE from_user = ? AND id = ?", (from_user, message_id)
        ).fetchone()
        return None if row is None else self._entry(row)

    def find_message(self, message_id: bytes) -> HistoryEntry | None:
        """The message of the history with this id, whoever sent it (ids are
        UUIDv7 chosen by senders: another sender's message with the same id
        would be an attack; then the one received first)."""
        row = self._db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM messages WHERE id = ? ORDER BY received_at LIMIT 1", (message_id,)
        ).fetchone()
        return None if row is None else self._entry(row)

    # --- lifespan, recall, reads (SPEC §13.5, §13.6) ---------------------------------

    def _forget_text(self, db: sqlite3.Connection, from_user: str, message_id: bytes, gone: str) -> bool:
        row = db.execute(
            "SELECT sealed FROM messages WHERE from_user = ? AND id = ? AND gone IS NULL",
            (from_user, message_id),
        ).fetchone()
        if row is None:
            return False
        kind, _ = self._open(message_id, row[0])
        db.execute(
            "UPDATE messages SET sealed = ?, gone = ? WHERE from_user = ? AND id = ?",
            (self._seal(message_id, kind, ""), gone, from_user, message_id),
        )
        return True

    def _scrub(self) -> None:
        # secure_delete zeroes the freed cells of the main file; the WAL still
        # holds the old page images until a checkpoint copies them back and
        # truncates it.
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def sweep_expired(self, now: int | None = None) -> list[tuple[str, bytes]]:
        """Delete the texts of messages whose ``expires_at`` is past (by
        :attr:`clock`, or ``now``); returns their ``(from_user, id)``."""
        now = self.clock() if now is None else now
        rows = self._db.execute(
            "SELECT from_user, id FROM messages WHERE expires_at IS NOT NULL AND expires_at <= ? "
            "AND gone IS NULL",
            (now,),
        ).fetchall()
        if not rows:
            return []
        with self._tx() as db:
            for from_user, message_id in rows:
                self._forget_text(db, from_user, message_id, "expired")
        self._scrub()
        return [(u, i) for u, i in rows]

    def recall_message(self, from_user: str, message_id: bytes) -> str | None:
        """Apply a recall by ``from_user`` (the original sender) of
        ``message_id``: its text is deleted and the conversation returned;
        if this device does not have it, the id is remembered so that the
        message is dropped if it ever arrives (None)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT peer FROM messages WHERE from_user = ? AND id = ?", (from_user, message_id)
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT OR IGNORE INTO recalled (from_user, id, at) VALUES (?, ?, ?)",
                    (from_user, message_id, now_ms()),
                )
                return None
            self._forget_text(db, from_user, message_id, "recalled")
            conversation: str = row[0]
        self._scrub()
        return conversation

    def is_recalled(self, from_user: str, message_id: bytes) -> bool:
        """True if ``from_user`` recalled ``message_id`` (had it or not)."""
        if self._db.execute(
            "SELECT 1 FROM recalled WHERE from_user = ? AND id = ?", (from_user, message_id)
        ).fetchone():
            return True
        row = self._db.execute(
            "SELECT gone FROM messages WHERE from_user = ? AND id = ?", (from_user, message_id)
        ).fetchone()
        return row is not None and row[0] == "recalled"

    def unread(self, conversation: str) -> list[tuple[str, bytes]]:
        """``(from_user, id)`` of the incoming text messages of a conversation
        (a user or team id) not read yet, oldest first."""
        rows = self._db.execute(
            "SELECT from_user, id, sealed FROM messages WHERE peer = ? AND direction = 'in' AND gone IS NULL "
            "AND read_at IS NULL ORDER BY sent_at, id",
            (conversation,),
        ).fetchall()
        return [(u, i) for u, i, sealed in rows if self._open(i, sealed)[0] == "text"]

    def mark_read(self, ids: Iterable[bytes], from_user: str | None = None, at: int | None = None) -> int:
        """Mark incoming messages read (by ``from_user`` only, if given);
        returns how many were unread."""
        at = now_ms() if at is None else at
        count = 0
        with self._tx() as db:
            for message_id in ids:
                if from_user is None:
                    cur = db.execute(
                        "UPDATE messages SET read_at = ? WHERE id = ? AND direction = 'in' "
                        "AND read_at IS NULL",
                        (at, message_id),
                    )
                else:
                    cur = db.execute(
                        "UPDATE messages SET read_at = ? WHERE from_user = ? AND id = ? AND direction = 'in' "
                        "AND read_at IS NULL",
                        (at, from_user, message_id),
                    )
                count += cur.rowcount
        return count

    def record_reads(self, ids: Iterable[bytes], user: str, ts: int) -> list[bytes]:
        """Record that ``user`` read our messages ``ids`` (their read
        notice); returns the ids that are ours and were not known read by them."""
        new = []
        with self._tx() as db:
            for message_id in ids:
                own = db.execute(
                    "SELECT 1 FROM messages WHERE from_user = ? AND id = ?", (self.own_user, message_id)
                ).fetchone()
                if own is None:
                    continue
                cur = db.execute(
                    "INSERT OR IGNORE INTO reads (id, user, ts) VALUES (?, ?, ?)", (message_id, user, ts)
                )
                if cur.rowcount:
                    new.append(message_id)
        return new

    # --- settings ---------------------------------------------------------------

    def get_setting(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return default if row is None else msgpack.unpackb(row[0], raw=False)

    def set_setting(self, key: str, value: Any) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                (key, msgpack.packb(value, use_bin_type=True)),
            )

    def _entry(self, row: tuple[Any, ...]) -> HistoryEntry:
        (
            from_user,
            message_id,
            peer,
            direction,
            sent_at,
            received_at,
            status,
            sealed,
            expires_at,
            gone,
            read_at,
            team,
        ) = row
        kind, body, atts, notice = self._open_all(message_id, sealed)
        read_by: tuple[str, ...] = ()
        if from_user == self.own_user:
            read_by = tuple(
                r[0]
                for r in self._db.execute("SELECT user FROM reads WHERE id = ? ORDER BY ts", (message_id,))
            )
        delivered: list[str] = []
        refused: list[tuple[str, str]] = []
        if from_user == self.own_user:
            for device, reason in self._db.execute(
                "SELECT device, reason FROM receipts WHERE id = ? ORDER BY ts", (message_id,)
            ):
                if reason is None:
                    delivered.append(device)
                else:
                    refused.append((device, reason))
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
            delivered_to=tuple(delivered),
            refused_by=tuple(refused),
            team=team,
            expires_at=expires_at,
            gone=gone,
            read_at=read_at,
            read_by=read_by,
            attachments=atts,
            notice=notice,
        )
